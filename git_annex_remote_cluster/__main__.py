"""``git-annex-remote-cluster``: the external special remote, or a command for people.

git-annex runs it with no arguments and speaks the external special remote
protocol on stdin/stdout. With arguments it is a command line for users and
operators.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from shared.errors import ClusterError


def _protocol() -> int:
    from git_annex_remote_cluster.remote import ClusterRemote
    from shared.annex import protocol as annexproto
    from shared.quickexit import exit_quickly

    exit_quickly(annexproto.run(ClusterRemote))  # git-annex waits for our exit


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        if sys.stdin.isatty():
            print(
                "git-annex-remote-cluster is run by git-annex. Set it up with:\n"
                "  git annex initremote NAME type=external externaltype=cluster \\\n"
                "      encryption=none \\\n"
                '      nodes="a=file:///srv/a b=file:///srv/b c=file:///srv/c" copies=2\n'
                "See --help for more.",
                file=sys.stderr,
            )
            return 2
        return _protocol()
    parser = _parser()
    ns = parser.parse_args(args)
    try:
        from git_annex_remote_cluster import operators

        if ns.command == "status":
            return operators.cmd_status(ns)
        if ns.command == "sim":
            from git_annex_remote_cluster import simcli

            return simcli.run(ns)
        if ns.command in ("rebalance", "repair", "fsck"):
            from git_annex_remote_cluster import maintain

            return maintain.run(ns)
        return operators.cmd_nodes(ns)
    except (ClusterError, OSError) as e:
        if ns.debug:
            traceback.print_exc()
        text = " ".join(str(e).split())
        print(f"git-annex-remote-cluster: {text}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("git-annex-remote-cluster: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    # Imported here, not at the top: git-annex waits for the remote's start-up.
    from shared.ops import nodecli
    from shared.version import VersionAction

    p = argparse.ArgumentParser(
        prog="git-annex-remote-cluster",
        description="A git-annex external special remote that stores content on a cluster of "
        "nodes. git-annex runs it with no arguments; with arguments, the operators' commands "
        "act on a cluster remote of the repository in the current directory. See docs/.",
    )
    p.add_argument("--version", action=VersionAction)
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = p.add_subparsers(dest="command", required=True)

    nodes = sub.add_parser("nodes", help="register, change, list and retire nodes")
    nodecli.add_parsers(nodes.add_subparsers(dest="action", required=True), "remote")

    status = sub.add_parser("status", help="reachability, latency, free space of every node")
    status.add_argument("remote")
    status.add_argument("--json", action="store_true")

    from git_annex_remote_cluster import maintain, simcli

    maintain.add_parsers(sub)
    simcli.add_parser(sub)
    return p


if __name__ == "__main__":
    sys.exit(main())
