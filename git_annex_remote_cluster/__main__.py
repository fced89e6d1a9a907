"""``git-annex-remote-cluster``: the external special remote, or a command for people.

git-annex runs it with no arguments and speaks the external special remote
protocol on stdin/stdout. With arguments it is a command line for users and
operators.
"""

from __future__ import annotations

import argparse
import sys

from git_annex_remote_cluster import __version__


def _protocol() -> int:
    from git_annex_remote_cluster.remote import ClusterRemote
    from shared import annexproto

    return annexproto.run(ClusterRemote)


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
    parser = argparse.ArgumentParser(
        prog="git-annex-remote-cluster",
        description="A git-annex external special remote that stores content on a cluster of "
        "nodes. git-annex runs it with no arguments; see docs/ for the tutorial and reference.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.parse_args(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
