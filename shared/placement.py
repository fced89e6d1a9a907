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
