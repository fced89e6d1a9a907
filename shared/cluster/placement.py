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
from typing import Generic, Protocol, TypeVar


class Placeable(Protocol):
    @property
    def name(self) -> str: ...


N = TypeVar("N", bound="Placeable")


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _score(data: bytes, weight: float) -> float:
    """``data`` is the node name, a NUL and the key, encoded."""
    if weight <= 0:
        return 0.0
    digest = hashlib.blake2b(data, digest_size=8).digest()
    return -weight / math.log((int.from_bytes(digest, "big") + 0.5) / 2.0**64)


def score(key: str, node: str, weight: float) -> float:
    return _score(_encode(f"{node}\0{key}"), weight)


def rendezvous_order(key: str, nodes: Sequence[N], weights: Sequence[float]) -> list[N]:
    """Nodes in the key's preference order; ties (equal scores) broken by name for determinism."""
    return Ranker(nodes, weights).order(key)


class Ranker(Generic[N]):
    """``rendezvous_order`` over a fixed node list, prepared once for many keys (the
    simulator places millions)."""

    def __init__(self, nodes: Sequence[N], weights: Sequence[float]) -> None:
        self._nodes = [
            (_encode(f"{n.name}\0"), w, n.name, n) for n, w in zip(nodes, weights, strict=True)
        ]

    def order(self, key: str) -> list[N]:
        k = _encode(key)
        scored = sorted(
            (-_score(p + k, w), name, i) for i, (p, w, name, _) in enumerate(self._nodes)
        )
        return [self._nodes[i][3] for _, _, i in scored]


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
    if all(n.zone is None for n in order):
        return list(order)  # every node its own zone: the order is already spread
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
