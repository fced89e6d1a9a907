"""The version of this distribution, for ``--version``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any


def version() -> str:
    """Looked up when asked for, never at import: importlib.metadata costs a program
    a few tens of ms of start-up that git-annex (or an ssh client) waits for."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("git-annex-remote-cluster")
    except PackageNotFoundError:  # running from a checkout
        return "0.0.0+checkout"


class VersionAction(argparse.Action):
    """``--version``, as argparse's, but the version is looked up only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.setdefault("help", "show the program's version and exit")
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        print(f"{parser.prog} {version()}")  # on stdout, as argparse's
        parser.exit()
