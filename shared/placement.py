"""Which nodes should hold a key: pure functions, no I/O.

Weighted rendezvous (highest-random-weight) hashing: every node gets a score
``-weight / ln(u)`` where ``u`` in (0, 1) is a hash of (node name, key). The
nodes sorted by score are the key's preference order. Adding a node moves only
the key copies the new node wins, about 1/(n+1) of them, and nothing else; the
hash is blake2b, so the order is the same in every process and on every machine.
Nodes are identified by name, so moving a node to a new URL moves no keys.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Protocol, TypeVar


class Placeable(Protocol):
    @property
    def name(self) -> str: ...


N = TypeVar("N", bound="Placeable")


def score(key: str, node: str, weight: float) -> float:
    if weight <= 0:
        return 0.0
    digest = hashlib.blake2b(f"{node}\0{key}".encode("utf-8", "surrogateescape"), digest_size=8)
    u = (int.from_bytes(digest.digest(), "big") + 0.5) / 2.0**64
    return -weight / math.log(u)


def rendezvous_order(key: str, nodes: Sequence[N], weights: Sequence[float]) -> list[N]:
    """Nodes in the key's preference order; ties (equal scores) broken by name for determinism."""
    scored = sorted(
        zip(nodes, weights, strict=True),
        key=lambda nw: (-score(key, nw[0].name, nw[1]), nw[0].name),
    )
    return [n for n, _ in scored]


class Zoned(Placeable, Protocol):
    @property
    def zone(self) -> str | None: ...


Z = TypeVar("Z", bound="Zoned")


def spread_over_zones(order: Sequence[Z]) -> list[Z]:
    """``order`` rearranged so that each next node is, where possible, in a zone not used
    yet: the first ``copies`` nodes then span as many zones as there are, and a node
    replacing one that failed comes from a new zone too. Within that, the order stays
    the key's rendezvous order, so the first choice never changes. A node without a
    zone is a zone of its own."""
    rest = list(order)
    out: list[Z] = []
    used: set[str] = set()
    while rest:
        pick = next((n for n in rest if _zone(n) not in used), None)
        if pick is None:  # every zone has a copy: start a new round
            used.clear()
            continue
        rest.remove(pick)
        out.append(pick)
        used.add(_zone(pick))
    return out


def _zone(node: Zoned) -> str:
    return f"zone:{node.zone}" if node.zone is not None else f"node:{node.name}"
