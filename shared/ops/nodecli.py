"""The ``nodes`` command line, shared by the cluster remote (``git-annex-remote-cluster
nodes ... REMOTE``) and the gateway (``git-annex-remote-proxy gateway nodes ... TARGET``):
the same actions, flags and output; only where the list is kept differs."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from shared.errors import ConfigError, NodeError, NotOwner, Unsupported
from shared.nodes import LAYER_PARAMS, Node, open_node, open_storage
from shared.nodes.owner import Ownership, refusal
from shared.nodes.url import NodeSpec
from shared.ops.nodeedit import (
    add_node,
    describe,
    export_nodes,
    import_nodes,
    remove_node,
    set_node,
)


def add_parsers(sub: Any, owner: str) -> None:
    """The ``nodes`` actions under ``sub``; ``owner`` names the list's holder (remote, target)."""
    add = sub.add_parser("add", help="add a node")
    add.add_argument(owner)
    add.add_argument("name")
    add.add_argument("url", help="the node URL, e.g. sftp://host/srv/annex")
    add.add_argument("--cost", type=int)
    add.add_argument("--weight", type=float)
    add.add_argument("--zone")
    add.add_argument("--maxsize", help="most bytes the node may hold, e.g. 4TiB")
    add.add_argument("--reserve", help="free space to keep (default 100MB), e.g. 10GiB")
    add.add_argument("--state", choices=("active", "readonly", "drain"))
    add.add_argument(
        "--force", action="store_true", help="take the node over if another remote owns it"
    )
    setp = sub.add_parser("set", help="change a node: KEY=VALUE (an empty VALUE: the default)")
    setp.add_argument(owner)
    setp.add_argument("name")
    setp.add_argument("assignments", nargs="+", metavar="KEY=VALUE")
    setp.add_argument(
        "--force",
        action="store_true",
        help="change chunk=/encryption=/mac= of a node holding content; take over nodes "
        "another remote owns",
    )
    rm = sub.add_parser("remove", help="remove a node that holds nothing (or --force)")
    rm.add_argument(owner)
    rm.add_argument("name")
    rm.add_argument("--force", action="store_true", help="even if it still holds content")
    ls = sub.add_parser("list", help="list the nodes")
    ls.add_argument(owner)
    imp = sub.add_parser("import", help="replace the node list with a file's (text or TOML)")
    imp.add_argument(owner)
    imp.add_argument("file", help="the file, or - for standard input")
    imp.add_argument("--format", choices=("text", "toml"))
    imp.add_argument(
        "--force",
        action="store_true",
        help="drop nodes that still hold content; take over nodes another remote owns",
    )
    exp = sub.add_parser("export", help="print the node list (text, TOML or JSON)")
    exp.add_argument(owner)
    exp.add_argument("--format", choices=("text", "toml", "json"), default="text")
    for each in (add, setp, rm, ls, imp, exp):
        each.add_argument("--json", action="store_true", help="machine-readable output")


def edit(
    args: argparse.Namespace, specs: list[NodeSpec], check_empty: Callable[[str], None]
) -> tuple[list[NodeSpec], str] | None:
    """The new list and what changed, or None for the read-only actions (done here).
    ``check_empty(name)`` raises unless the node may go (unless --force)."""
    if args.action == "list":
        print_nodes(specs, args.json)
        return None
    if args.action == "export":
        sys.stdout.write(export_nodes(specs, "json" if args.json else args.format))
        return None
    if args.action == "add":
        attrs = {
            k: str(v)
            for k, v in (
                ("cost", args.cost),
                ("weight", args.weight),
                ("zone", args.zone),
                ("maxsize", args.maxsize),
                ("reserve", args.reserve),
                ("state", args.state),
            )
            if v is not None
        }
        return add_node(specs, args.name, args.url, attrs), f"added node {args.name}"
    if args.action == "set":
        new = set_node(specs, args.name, args.assignments)
        if not args.force:
            _check_layout_kept(specs, new, check_empty)
        return new, f"changed node {args.name}"
    if args.action == "remove":
        new = remove_node(specs, args.name)
        if not args.force:
            check_empty(args.name)
        return new, f"removed node {args.name} (its storage was not touched)"
    if args.action == "import":
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
        fmt = args.format or ("toml" if str(args.file).endswith(".toml") else "text")
        new = import_nodes(text, fmt)
        if not args.force:
            kept = {n.name for n in new}
            for s in specs:
                if s.name not in kept:
                    check_empty(s.name)
            _check_layout_kept(specs, new, check_empty)
        return new, f"imported {len(new)} node(s)"
    raise ConfigError(f"unknown action {args.action}")  # argparse allows no other


def _check_layout_kept(
    old: list[NodeSpec], new: list[NodeSpec], check_empty: Callable[[str], None]
) -> None:
    """chunk=, encryption= and mac= decide the names a node's objects are stored under:
    changed on a node that holds content, they hide it (absent to git-annex, and a
    removal that leaves it in place)."""
    before = {s.name: s for s in old}
    for spec in new:
        was = before.get(spec.name)
        if was is None:
            continue  # a new node holds nothing yet
        changed = [p for p in LAYER_PARAMS if was.params.get(p) != spec.params.get(p)]
        if not changed:
            continue
        try:
            check_empty(spec.name)
        except ConfigError as e:
            what = ", ".join(f"{p}=" for p in changed)
            raise ConfigError(
                f"changing {what} of node {spec.name} would hide what it holds: {e}"
            ) from None


def takes_over(args: argparse.Namespace) -> bool:
    """Whether the operator's ``--force`` also takes over nodes another remote owns: for
    the actions that write a node list with new or changed nodes (add, set, import),
    never for ``remove`` (whose --force is about content)."""
    return bool(getattr(args, "force", False)) and args.action in ("add", "set", "import")


def check_owners(
    specs: list[NodeSpec],
    ownership: Ownership,
    *,
    claim: bool = False,
    take_over: bool = False,
    warn: Callable[[str], None] | None = None,
) -> None:
    """Refuse (one line naming the owner) a node of ``specs`` whose storage another
    remote or gateway target owns, unless ``take_over``; with ``claim``, record
    ``ownership.uuid`` as the owner of each (taking over with ``take_over``). A node
    that cannot be asked now is left to its first write, which claims it or is
    refused; ``warn`` says so."""
    nodes: list[tuple[NodeSpec, Node]] = []
    try:
        for spec in specs:
            try:
                node = open_storage(spec)
            except ConfigError:
                continue  # the node list itself is checked elsewhere, with its own message
            nodes.append((spec, node))
        unclaimed = []
        for spec, node in nodes:  # every node is checked before any is claimed
            known, owner = _owner(spec, node, warn)
            if not known or owner == ownership.uuid:
                continue
            if owner is not None and not take_over:
                raise ConfigError(refusal(spec.name, spec.url, owner, ownership))
            unclaimed.append((spec, node))
        for spec, node in unclaimed if claim else []:
            try:
                now = node.claim(ownership.uuid, take_over=take_over)
            except NodeError as e:
                raise ConfigError(str(e)) from None
            if now != ownership.uuid:  # another claim came just before
                raise ConfigError(refusal(spec.name, spec.url, now, ownership))
    finally:
        for _, node in nodes:
            node.close()


def _owner(
    spec: NodeSpec, node: Node, warn: Callable[[str], None] | None
) -> tuple[bool, str | None]:
    """(known, the node's recorded owner: None when unowned). Not known: the node
    records none (a repository), or cannot be asked now; its first write claims it,
    or is refused."""
    if not node.records_owner:
        return False, None
    try:
        return True, node.owner()
    except NotOwner as e:  # a record that names no owner
        raise ConfigError(str(e)) from None
    except NodeError as e:
        if warn is not None:
            why = str(e).removeprefix(f"node {spec.name}: ")
            warn(
                f"node {spec.name}: cannot check its owner now ({why}); its first write "
                "claims it, or is refused if another remote owns it"
            )
        return False, None


def report(args: argparse.Namespace, owner: str, what: str, specs: list[NodeSpec]) -> None:
    if args.json:
        nodes = [describe(s) for s in specs]
        print(json.dumps({"owner": owner, "result": what, "nodes": nodes}, indent=2))
    else:
        print(f"{owner}: {what}")


def check_empty(spec: NodeSpec, client_uuid: str | None, how_to_drain: str) -> None:
    """Raise unless the node verifiably holds nothing."""
    try:
        node = open_node(spec, client_uuid)
        try:
            first = next(iter(node.list_names()), None)
        finally:
            node.close()
    except Unsupported:
        raise ConfigError(
            f"node {spec.name} cannot tell what it holds ({spec.scheme}:// nodes cannot "
            "list); make sure it holds nothing still needed, then use --force"
        ) from None
    except NodeError as e:
        raise ConfigError(
            f"cannot check whether node {spec.name} still holds content ({e}); "
            "use --force to remove it anyway"
        ) from None
    if first is not None:
        raise ConfigError(
            f"node {spec.name} still holds content (e.g. {first:.80}); drain it first "
            f"({how_to_drain}, then move its content), or use --force if it is lost "
            "or its content is safe elsewhere"
        )


def print_nodes(specs: list[NodeSpec], as_json: bool) -> None:
    if as_json:
        print(json.dumps([describe(s) for s in specs], indent=2))
        return
    rows = [("NAME", "STATE", "WEIGHT", "ZONE", "COST", "MAXSIZE", "URL")]
    for s in specs:
        rows.append(
            (
                s.name,
                s.state.value,
                f"{s.weight:g}",
                s.zone or "-",
                str(s.cost) if s.cost is not None else "-",
                human_size(s.maxsize),
                s.url,
            )
        )
    table(rows)


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # unreachable


def table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
