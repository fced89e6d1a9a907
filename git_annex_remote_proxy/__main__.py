"""``git-annex-remote-proxy``: the proxy remote (run by git-annex with no arguments), the
gateway server (``serve``), and the gateway's configuration (``gateway``)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from shared.errors import ClusterError, ConfigError

T = TypeVar("T")

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from git_annex_remote_proxy.config import GatewayConfig, Target
    from shared.ops import maintaincli

# The operators' command modules (shared.ops.maintaincli, nodecli) and the package's
# version are imported where used: git-annex waits for the proxy remote's start-up
# (no arguments) and a client for the gateway's (``serve``, once per ssh session),
# and neither needs them (about 90 ms of imports).


def _protocol() -> int:
    from git_annex_remote_proxy.remote import ProxyRemote
    from shared.annex import protocol as annexproto
    from shared.quickexit import exit_quickly

    exit_quickly(annexproto.run(ProxyRemote))  # git-annex waits for our exit


PROG = "git-annex-remote-proxy"


def _parser(gateway: bool = True) -> argparse.ArgumentParser:
    """``gateway``: with the ``gateway`` command's subcommands (not needed to parse the
    other commands' arguments)."""
    from shared.version import VersionAction

    p = argparse.ArgumentParser(
        prog=PROG,
        description="A git-annex remote reaching storage through one gateway, and the "
        "gateway itself. git-annex runs it with no arguments.",
    )
    p.add_argument("--version", action=VersionAction)
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve",
        help="serve a target over P2P on stdin/stdout (as an ssh command or forced command)",
    )
    serve.add_argument("--config", type=Path, help="gateway configuration (TOML)")
    mode = serve.add_mutually_exclusive_group()
    mode.add_argument("--readonly", action="store_true", help="refuse uploads and removals")
    mode.add_argument("--appendonly", action="store_true", help="refuse removals")
    serve.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="TARGET",
        help="serve only this target (repeat for more: --allow a --allow b)",
    )
    serve.add_argument(
        "request",
        nargs=argparse.REMAINDER,
        help="TARGET, or git-annex-shell's p2pstdio/configlist arguments; none as an ssh "
        "forced command (the client's command is read from SSH_ORIGINAL_COMMAND)",
    )

    _http_parsers(sub)

    gw = sub.add_parser("gateway", help="manage the gateway's targets")
    if gateway:
        _gateway_parsers(gw)
    return p


def _gateway_parsers(gw: argparse.ArgumentParser) -> None:
    from shared.ops import maintaincli, nodecli

    gsub = gw.add_subparsers(dest="action", required=True)
    add = gsub.add_parser("add", help="add a target, or change an existing one's nodes")
    add.add_argument("target")
    add.add_argument("nodes", nargs="+", metavar="NAME=URL")
    add.add_argument("--copies", type=int)
    add.add_argument("--mincopies", type=int)
    add.add_argument(
        "--force", action="store_true", help="take over nodes another remote or target owns"
    )
    ls = gsub.add_parser("list", help="list the targets")
    ls.add_argument("--json", action="store_true")
    rm = gsub.add_parser("remove", help="remove a target (its nodes keep their data)")
    rm.add_argument("target")
    nodes = gsub.add_parser("nodes", help="register, change, list and retire a target's nodes")
    nodecli.add_parsers(nodes.add_subparsers(dest="nodes_action", required=True), "target")
    status = gsub.add_parser(
        "status",
        help="each node reachable or not, keys short of copies, bad copies noted "
        "(exit status 1 unless all is well)",
    )
    status.add_argument("target", nargs="?", help="the target (default: every target)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    maintaincli.add_parsers(gsub, "target")
    _config_everywhere(gw)


def _http_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``http`` (git-annex p2phttp's option names) and ``http-users``."""
    http = sub.add_parser(
        "http",
        help="serve every target over git-annex's P2P protocol over HTTP (annex+http)",
    )
    http.add_argument("--config", type=Path, help="gateway configuration (TOML)")
    http.add_argument(
        "--users", type=Path, help="users file (default: http-users.json beside the config)"
    )
    http.add_argument("--bind", default="0.0.0.0", help="address to listen on (default: all)")
    http.add_argument("--port", type=int, default=9417, help="port (default: 9417)")
    http.add_argument("--socket", type=Path, help="listen on this unix socket instead")
    http.add_argument("--certfile", type=Path, help="TLS certificate (with --privatekeyfile)")
    http.add_argument("--privatekeyfile", type=Path, help="TLS private key")
    http.add_argument("--chainfile", type=Path, help="TLS certificate chain")
    http.add_argument(
        "--jobs", "-J", type=int, default=16, help="concurrent requests (default: 16)"
    )
    http.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds a connection may stay silent mid-request (default: 60)",
    )
    http.add_argument(
        "--metrics",
        choices=("auth", "open", "off"),
        default="auth",
        help="who may read /metrics: auth (default: a user who may read every target), "
        "open (anyone: for a listener only the operator reaches), off",
    )
    http.add_argument(
        "--access-log",
        type=Path,
        metavar="FILE",
        help="append the access log (JSON, one request a line) to FILE (default: stderr)",
    )
    for flag, text in (
        ("--auth-http", "accept credentials over plain HTTP too (insecure: basic auth is not "
         "encrypted)"),
        ("--wideopen", "anyone may do anything, no credentials"),
        ("--unauth-readonly", "anyone may read without credentials"),
        ("--unauth-appendonly", "anyone may read and store without credentials"),
        ("--unauth-nolocking", "with --unauth-*: no content locking without credentials"),
    ):  # fmt: skip
        http.add_argument(flag, action="store_true", help=text)

    users = sub.add_parser("http-users", help="manage the users of 'http'")
    users.add_argument("--config", type=Path, help="gateway configuration (TOML)")
    users.add_argument(
        "--users", type=Path, help="users file (default: http-users.json beside the config)"
    )
    usub = users.add_subparsers(dest="action", required=True)
    add = usub.add_parser(
        "add",
        help="add a user or change one (the password is read from stdin, one line, or "
        "asked on the terminal)",
    )
    add.add_argument("user")
    add.add_argument(
        "--access", choices=("readwrite", "appendonly", "readonly"), default="readwrite"
    )
    add.add_argument(
        "--target",
        action="append",
        default=[],
        help="limit the user to this target (repeat for more; default: every target)",
    )
    rm = usub.add_parser("remove", help="remove a user")
    rm.add_argument("user")
    usub.add_parser("list", help="list the users (never their passwords)")


def _from_args(cls: Callable[..., T], args: argparse.Namespace, **given: Any) -> T:
    """A dataclass of options, its fields from the command line's of the same names."""
    names = {f.name for f in dataclasses.fields(cls)} - given.keys()  # type: ignore[arg-type]
    return cls(**{n: v for n, v in vars(args).items() if n in names}, **given)


def _http(args: argparse.Namespace) -> int:
    from git_annex_remote_proxy import httpserver, httpusers

    policy = _from_args(httpusers.Policy, args)
    opts = _from_args(httpserver.Options, args, jobs=max(1, args.jobs), policy=policy)
    return httpserver.run(opts)


def _http_users(args: argparse.Namespace) -> int:
    from git_annex_remote_proxy import httpusers
    from git_annex_remote_proxy.config import GatewayConfig, default_path

    config_path = args.config or default_path()
    path = args.users or httpusers.users_path(config_path)
    if args.action == "add":
        if args.target:
            known = GatewayConfig.load(args.config).targets
            unknown = [t for t in args.target if t not in known]
            if unknown:
                raise ConfigError(
                    f"unknown target {', '.join(unknown)} in {config_path}: "
                    "add it with 'gateway add' first"
                )
        if sys.stdin.isatty():
            import getpass

            password = getpass.getpass(f"password for {args.user}: ")
        else:
            password = sys.stdin.readline().rstrip("\n")
        user = httpusers.add(path, args.user, password, args.access, tuple(args.target))
        where = f" (targets: {', '.join(user.targets)})" if user.targets else ""
        print(f"user {user.name}: {user.access}{where} in {path}")
        return 0
    if args.action == "remove":
        httpusers.remove(path, args.user)
        print(f"removed user {args.user} from {path}")
        return 0
    users = httpusers.read(path) if path.exists() else {}
    for u in sorted(users.values(), key=lambda u: u.name):
        print(f"{u.name}  {u.access}  {','.join(u.targets) or '*'}")
    return 0


def _config_everywhere(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` on ``parser`` and on every command below it, so that it may
    come before or after the subcommand (``gateway --config F add ...``, ``gateway add
    ... --config F``, ``gateway nodes list T --config F``). Defaults are suppressed at
    every level, so a subcommand's parser never overwrites what an outer one read
    (``_config_of`` reads the result)."""
    parser.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="the gateway configuration (TOML; default: $GIT_ANNEX_REMOTE_PROXY_CONFIG, "
        "else ~/.config/git-annex-remote-proxy/gateway.toml)",
    )
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                _config_everywhere(sub)


def _gateway_nodes(args: argparse.Namespace) -> int:
    from git_annex_remote_proxy.config import GatewayConfig
    from shared.ops import nodecli

    config = GatewayConfig.load(args.config)
    target = config.target(args.target)
    args.action = args.nodes_action

    def empty(name: str) -> None:
        spec = next(s for s in target.specs() if s.name == name)
        nodecli.check_empty(
            spec, target.uuid, f"gateway nodes set {target.name} {name} state=drain"
        )

    result = nodecli.edit(args, target.node_list(), empty)
    if result is None:
        return 0
    new, what = result
    changed = config.add(target.name, [s.to_entry() for s in new], target.copies, target.mincopies)
    _check_usable(config, changed, target)
    _claim(config, changed, nodecli.takes_over(args))
    config.save()
    nodecli.report(args, f"target {target.name}", f"{what} in {config.path}", new)
    return 0


def _check_usable(config: GatewayConfig, target: Target, before: Target | None) -> None:
    """Refuse, in one line, nodes the target could not use: each node that is new, or
    whose storage changed (its URL or parameters), is opened as ``serve`` opens it and
    asked whether it can be used now, as the cluster remote's initremote/enableremote
    asks each node before its list is written. A node only re-weighted, drained or
    marked readonly is not asked (it may be down: that may be why it is drained)."""
    from shared.nodes import open_node

    old = {s.name: (s.url, s.params) for s in before.node_list()} if before else {}
    fresh = {s.name for s in target.node_list() if old.get(s.name) != (s.url, s.params)}
    problems = []
    for spec in target.specs():
        if spec.name not in fresh:
            continue
        try:
            node = open_node(spec, target.uuid, trusted_source=False)
            try:
                node.check()
            finally:
                node.close()
        except ClusterError as e:
            why = " ".join(str(e).split()).removeprefix(f"node {spec.name}: ")
            problems.append(f"node {spec.name} ({spec.url}): {why}")
    if problems:
        what = "; ".join(problems)
        end = " " if what.endswith(("?", ".")) else ". "
        raise ConfigError(
            f"target {target.name} not {'changed' if before else 'added'}: {what}{end}"
            f"Nothing was written to {config.path}: correct the node's URL, or make the "
            "node reachable from this host, and run the command again"
        )


def _claim(config: GatewayConfig, target: Target, take_over: bool) -> None:
    """Record the target as the owner of its nodes before the configuration is written;
    refuse, naming the owner, a node another remote or target owns (unless
    ``take_over``). A node that cannot be reached now is claimed by its first write."""
    from shared.ops import nodecli

    nodecli.check_owners(
        target.specs(),
        config.ownership(target),
        claim=True,
        take_over=take_over,
        warn=lambda line: print(f"{PROG}: warning: {line}", file=sys.stderr),
    )


@contextlib.contextmanager
def _subject(
    config: GatewayConfig, target: Target, args: argparse.Namespace
) -> Iterator[maintaincli.Subject]:
    """A target's nodes, opened as ``serve`` opens them, for the operators' commands:
    the gateway has no git-annex repository, so encrypted nodes cannot be listed there
    (their names are HMACs of keys)."""
    from git_annex_remote_proxy.gateway import bad_copies_path
    from shared.cluster.badcopies import BadCopies
    from shared.nodes import Node, open_node
    from shared.ops import maintaincli

    specs = target.specs()
    nodes: dict[str, Node] = {}
    try:
        ownership = config.ownership(target)
        for spec in specs:
            nodes[spec.name] = open_node(
                spec, target.uuid, trusted_source=False, ownership=ownership
            )
        yield maintaincli.Subject(
            name=target.name,
            specs=specs,
            nodes=nodes,
            copies=target.copies or len(specs),
            command=f"{PROG} gateway" + (f" --config {args.config}" if args.config else ""),
            mincopies=target.mincopies,
            bad=BadCopies(bad_copies_path(config.path, target.uuid)),
            owner=target.uuid,
            describe=config.describe,
        )
    finally:
        for node in nodes.values():
            node.close()


def _gateway_maintain(args: argparse.Namespace) -> int:
    """rebalance, repair and fsck of a target (``shared.ops.maintaincli``)."""
    from git_annex_remote_proxy.config import GatewayConfig
    from shared.ops import maintaincli

    config = GatewayConfig.load(args.config)
    with _subject(config, config.target(args.target), args) as subject:
        return maintaincli.run(args.action, args, subject)


def _gateway_status(args: argparse.Namespace) -> int:
    """``status`` of one target, or of every target: as ``git-annex-remote-cluster
    status`` reports a cluster remote (``shared.ops.status``); 1 unless all is well."""
    from git_annex_remote_proxy.config import GatewayConfig
    from shared.ops import maintaincli, status

    config = GatewayConfig.load(args.config)
    if args.target:
        targets = [config.target(args.target)]
    else:
        targets = sorted(config.targets.values(), key=lambda t: t.name)
    if not targets:
        raise ConfigError(
            f"no targets in {config.path}: add one with '{PROG} gateway add TARGET NAME=URL ...'"
        )
    healthy, reports = True, []
    for i, target in enumerate(targets):
        if i and not args.json:
            print()
        with _subject(config, target, args) as subject:
            shown = status.Shown(
                kind="target",
                name=target.name,
                specs=subject.specs,
                uuid=target.uuid,
                copies=subject.copies,
                command=subject.command,
                describe=config.describe,
            )
            ok, data = status.report(shown, lambda: maintaincli.key_health(subject), args.json)
        healthy = healthy and ok
        reports.append(data)
    if args.json:
        status.print_json(
            reports[0] if args.target else {"config": str(config.path), "targets": reports}
        )
    return 0 if healthy else 1


def _gateway(args: argparse.Namespace) -> int:
    from git_annex_remote_proxy.config import GatewayConfig

    if not hasattr(args, "config"):  # (see _config_everywhere)
        args.config = None
    if args.action == "nodes":
        return _gateway_nodes(args)
    if args.action in ("rebalance", "repair", "fsck"):
        return _gateway_maintain(args)
    if args.action == "status":
        return _gateway_status(args)
    if args.action == "add":
        config = GatewayConfig.load(args.config, missing_ok=True)
        before = config.targets.get(args.target)
        target = config.add(args.target, args.nodes, args.copies, args.mincopies)
        _check_usable(config, target, before)
        _claim(config, target, args.force)
        config.save()
        print(f"target {target.name} ({target.uuid}) in {config.path}")
        return 0
    config = GatewayConfig.load(args.config, missing_ok=args.action == "list")
    if args.action == "remove":
        config.remove(args.target)
        config.save()
        print(f"removed target {args.target} from {config.path} (its nodes keep their data)")
        return 0
    targets = [
        {"name": t.name, **t.as_dict()}
        for t in sorted(config.targets.values(), key=lambda t: t.name)
    ]
    if args.json:
        print(json.dumps({"config": str(config.path), "targets": targets}, indent=2))
    else:
        for t in targets:
            nodes = " ".join(str(n) for n in t["nodes"])  # type: ignore[attr-defined]
            extra = "".join(f" {k}={t[k]}" for k in ("copies", "mincopies") if k in t)
            print(f"{t['name']}  {t['uuid']}{extra}  {nodes}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if not args_list:
        if sys.stdin.isatty():
            print(
                "git-annex-remote-proxy is run by git-annex. Set it up with:\n"
                "  git annex initremote NAME type=external externaltype=proxy encryption=none \\\n"
                "      gateway=ssh://user@gateway.example.org target=archive\n"
                "See --help for the gateway commands.",
                file=sys.stderr,
            )
            return 2
        return _protocol()
    args = _parser(gateway=args_list[0] != "serve").parse_args(args_list)
    try:
        if args.command == "serve":
            from git_annex_remote_proxy import request

            asked = request.of(args.request, os.environ)  # refusals end here, quickly
            from git_annex_remote_proxy.access import serve
            from shared.quickexit import exit_quickly

            # The client's ssh session ends when we have exited.
            exit_quickly(serve(asked, args.config, args.readonly, args.appendonly, args.allow))
        if args.command == "http":
            return _http(args)
        if args.command == "http-users":
            return _http_users(args)
        return _gateway(args)
    except (ClusterError, OSError) as e:
        if args.debug:
            traceback.print_exc()
        print(f"git-annex-remote-proxy: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("git-annex-remote-proxy: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
