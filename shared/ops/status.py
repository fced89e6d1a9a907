"""``status``: each node's health and the keys' health, for a cluster remote
(``git-annex-remote-cluster status REMOTE``) and a gateway's target
(``git-annex-remote-proxy gateway status TARGET``): the same probe, table, lines and
exit status; each program says what it shows (``Shown``).

The keys' health (how many keys are short of ``copies`` or ``mincopies``, the bad
copies reads noted) is ``shared.ops.maintaincli.key_health``, from one listing of every
node.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from shared.errors import ClusterError
from shared.nodes import open_node
from shared.nodes.owner import plain
from shared.nodes.url import NodeSpec
from shared.ops.nodecli import human_size, table
from shared.ops.nodeedit import describe


@dataclass
class Shown:
    """What ``status`` reports on: ``kind`` and ``name`` (``remote archive``, ``target
    archive``), its nodes as it opens them, its UUID (the nodes' owner), how its
    commands are run (``git-annex-remote-cluster``, ``git-annex-remote-proxy
    gateway``), and how to name another owner."""

    kind: str
    name: str
    specs: list[NodeSpec]
    uuid: str
    copies: int
    command: str
    describe: Callable[[str], str] = plain


def probe(spec: NodeSpec, shown: Shown) -> dict[str, Any]:
    """One node's health: reachable (with the error), latency, free space, owner."""
    out: dict[str, Any] = describe(spec)
    out.update(reachable=False, error=None, latency_ms=None, free=None, total=None, owner=None)
    try:
        node = open_node(spec, shown.uuid)
    except ClusterError as e:
        out["error"] = str(e)
        return out
    try:
        start = time.monotonic()
        node.check()
        out["latency_ms"] = round((time.monotonic() - start) * 1000, 1)
        out["reachable"] = True
        usage = node.usage()
        if usage is not None:
            out["free"], out["total"] = usage.free, usage.total
        if node.records_owner:
            out["owner"] = owner = node.owner()
            if owner is not None and owner != shown.uuid:
                out["error"] = (
                    f"belongs to {shown.describe(owner)}, not to this {shown.kind}: nothing "
                    "is written to or removed from it"
                )
    except ClusterError as e:
        out["error"] = str(e).removeprefix(f"node {spec.name}: ")
    finally:
        node.close()
    return out


def probe_all(shown: Shown) -> list[dict[str, Any]]:
    specs = shown.specs
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(specs)))) as pool:
        return list(pool.map(lambda s: probe(s, shown), specs))


def summary(shown: Shown, results: list[dict[str, Any]], health: dict[str, Any]) -> dict[str, Any]:
    """The counts ``status`` prints last (and ``--json`` gives as ``summary``)."""
    return {
        shown.kind: shown.name,
        "nodes": len(results),
        "reachable": sum(r["reachable"] for r in results),
        "taking_new_data": sum(
            1 for r in results if r["reachable"] and r["state"] == "active" and r["weight"] > 0
        ),
        "free": sum(r["free"] or 0 for r in results),
        "copies": shown.copies,
        "keys": health["keys"],
        "short_of_copies": health["short_of_copies"],
        "short_of_mincopies": health["short_of_mincopies"],
        "bad_copies_noted": len(health["bad_copies_noted"]),
    }


def healthy(results: list[dict[str, Any]], health: dict[str, Any]) -> bool:
    """Every node reachable, no key short of copies, no bad copy noted, every node
    listed: ``status`` exits 0 only then."""
    return all(r["reachable"] for r in results) and not (
        health["short_of_copies"] or health["bad_copies_noted"] or health["unlisted"]
    )


def as_json(shown: Shown, results: list[dict[str, Any]], health: dict[str, Any]) -> dict[str, Any]:
    return {"summary": summary(shown, results, health), "nodes": results, "keys": health}


def show(shown: Shown, results: list[dict[str, Any]], health: dict[str, Any]) -> None:
    """The table of nodes, their errors, and the summary lines."""
    rows = [("NAME", "REACHABLE", "LATENCY", "FREE", "MAXSIZE", "STATE", "ZONE", "WEIGHT")]
    for r in results:
        rows.append(
            (
                r["name"],
                "yes" if r["reachable"] else "NO",
                f"{r['latency_ms']:.0f} ms" if r["latency_ms"] is not None else "-",
                human_size(r["free"]),
                human_size(r["maxsize"]),
                r["state"],
                r["zone"] or "-",
                f"{r['weight']:g}",
            )
        )
    table(rows)
    for r in results:
        if r["error"]:
            print(f"{r['name']}: {r['error']}")
    s = summary(shown, results, health)
    name = shown.name
    print(
        f"{name}: {s['reachable']} of {len(results)} node(s) reachable, "
        f"{s['taking_new_data']} taking new data, copies={s['copies']}, "
        f"{human_size(s['free'])} free where known"
    )
    listed = " (on the nodes that could be listed)" if health["unlisted"] else ""
    print(
        f"{name}: {health['keys']} key(s){listed}; {health['short_of_copies']} short of "
        f"copies={s['copies']}, {health['short_of_mincopies']} of them below mincopies"
    )
    if health["short_of_copies"]:
        print(f"  run {shown.command} repair {name} to give them their copies")
    for entry in health["bad_copies_noted"][:20]:
        print(f"  bad copy of {entry['key']} on node {entry['node']}: {entry['why']}")
    if health["bad_copies_noted"]:
        print(
            f"  {len(health['bad_copies_noted'])} bad copy(ies) found by reads; "
            f"run {shown.command} fsck {name} --repair to replace them"
        )


def report(
    shown: Shown, health: Callable[[], dict[str, Any]], json_out: bool
) -> tuple[bool, dict[str, Any]]:
    """Probe the nodes, then count the keys (``health``); print the report unless
    ``json_out`` (then the caller prints what is returned). (healthy, the JSON)."""
    results = probe_all(shown)
    keys = health()
    if not json_out:
        show(shown, results, keys)
    return healthy(results, keys), as_json(shown, results, keys)


def print_json(data: object) -> None:
    print(json.dumps(data, indent=2))
