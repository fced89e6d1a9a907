"""``git-annex-remote-proxy``: the proxy remote (run by git-annex with no arguments), the
gateway server (``serve``), and the gateway's configuration (``gateway``)."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from git_annex_remote_proxy import __version__
from shared import maintaincli, nodecli
from shared.errors import ClusterError

if TYPE_CHECKING:
    from git_annex_remote_proxy.config import GatewayConfig, Target


def _protocol() -> int:
    from git_annex_remote_proxy.remote import ProxyRemote
    from shared import annexproto

    return annexproto.run(ProxyRemote)


PROG = "git-annex-remote-proxy"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="A git-annex remote reaching storage through one gateway, and the "
        "gateway itself. git-annex runs it with no arguments.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
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
        "--allow", nargs="+", default=[], metavar="TARGET", help="serve only these targets"
    )
    serve.add_argument(
        "request",
        nargs=argparse.REMAINDER,
        help="TARGET, or git-annex-shell's p2pstdio/configlist arguments",
    )

    gw = sub.add_parser("gateway", help="manage the gateway's targets")
    gw.add_argument("--config", type=Path, help="gateway configuration (TOML)")
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
    maintaincli.add_parsers(gsub, "target")
    return p


def _gateway_nodes(args: argparse.Namespace) -> int:
    from git_annex_remote_proxy.config import GatewayConfig

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
    config.add(target.name, [s.to_entry() for s in new], target.copies, target.mincopies)
    _claim(config, config.target(target.name), nodecli.takes_over(args))
    config.save()
    nodecli.report(args, f"target {target.name}", f"{what} in {config.path}", new)
    return 0


def _claim(config: GatewayConfig, target: Target, take_over: bool) -> None:
    """Record the target as the owner of its nodes before the configuration is written;
    refuse, naming the owner, a node another remote or target owns (unless
    ``take_over``). A node that cannot be reached now is claimed by its first write."""
    nodecli.check_owners(
        target.specs(),
        config.ownership(target),
        claim=True,
        take_over=take_over,
        warn=lambda line: print(f"{PROG}: warning: {line}", file=sys.stderr),
    )


def _gateway_maintain(args: argparse.Namespace) -> int:
    """rebalance, repair and fsck of a target: the gateway has no git-annex repository,
    so encrypted nodes cannot be listed there (their names are HMACs of keys)."""
    from git_annex_remote_proxy.config import GatewayConfig
    from git_annex_remote_proxy.gateway import bad_copies_path
    from shared.badcopies import BadCopies
    from shared.nodes import Node, open_node

    config = GatewayConfig.load(args.config)
    target = config.target(args.target)
    specs = target.specs()
    nodes: dict[str, Node] = {}
    try:
        ownership = config.ownership(target)
        for spec in specs:
            nodes[spec.name] = open_node(
                spec, target.uuid, trusted_source=False, ownership=ownership
            )
        subject = maintaincli.Subject(
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
        return maintaincli.run(args.action, args, subject)
    finally:
        for node in nodes.values():
            node.close()


def _gateway(args: argparse.Namespace) -> int:
    from git_annex_remote_proxy.config import GatewayConfig

    if args.action == "nodes":
        return _gateway_nodes(args)
    if args.action in ("rebalance", "repair", "fsck"):
        return _gateway_maintain(args)
    if args.action == "add":
        config = GatewayConfig.load(args.config, missing_ok=True)
        target = config.add(args.target, args.nodes, args.copies, args.mincopies)
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
    args = _parser().parse_args(args_list)
    try:
        if args.command == "serve":
            from git_annex_remote_proxy.gateway import serve

            return serve(args.request, args.config, args.readonly, args.appendonly, args.allow)
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
