"""``git-annex-remote-cluster sim``: placeholder, being written."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser("sim", help="simulate placement (no data touched)")
    return p


def run(args: Any) -> int:
    raise NotImplementedError
