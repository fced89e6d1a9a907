"""Where every key should be, and the moves that get it there: pure, no I/O.

A key belongs on the nodes a store would pick for it today: its rendezvous order
over the nodes that take new data, spread over zones, skipping nodes whose
``maxsize`` it would overflow. Copies on ``readonly`` nodes stay where they are
and count; copies on ``drain`` and ``weight=0`` nodes move off.

A move adds the key to the nodes that should hold it and lacks it, and then
removes it from holders that should not, but never so many that fewer than
``copies`` would remain: where the cluster cannot place ``copies`` copies
(too few nodes with room), extra copies stay put. ``repair`` plans only the
additions a key short of ``copies`` needs.

The plan's cost per key is one rendezvous ranking and a few small lists; what
repeats across keys (the rankers, each holders mask's node names, whether a node
has a ``maxsize`` to keep track of) is worked out once. Moves are kept (they are
the plan), nothing else per key.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from shared.cluster.placement import Ranker, spread_over_zones
from shared.nodes.url import NodeSpec, NodeState
from shared.ops.inventory import Inventory


@dataclass(frozen=True, slots=True)
class Move:
    key: str
    size: int | None  # None: unknown here (learned from a node when it is copied)
    holders: tuple[str, ...]
    add: tuple[str, ...]
    remove: tuple[str, ...]


@dataclass
class NodeTotals:
    keys_in: int = 0
    bytes_in: int = 0
    keys_out: int = 0
    bytes_out: int = 0
    held: int = 0  # keys held before
    held_after: int = 0


@dataclass
class Plan:
    copies: int
    moves: list[Move] = field(default_factory=list)
    nodes: dict[str, NodeTotals] = field(default_factory=dict)
    short: dict[str, str] = field(default_factory=dict)  # key -> why it stays short of copies
    keys: int = 0  # keys looked at

    @property
    def bytes_to_copy(self) -> int:
        return sum((m.size or 0) * len(m.add) for m in self.moves)

    @property
    def copies_to_add(self) -> int:
        return sum(len(m.add) for m in self.moves)

    @property
    def copies_of_unknown_size(self) -> int:
        """Copies to add whose size ``bytes_to_copy`` cannot count: only a node can
        tell it (an HMAC name, on a gateway that has no repository to match it)."""
        return sum(len(m.add) for m in self.moves if m.size is None)

    @property
    def copies_to_remove(self) -> int:
        return sum(len(m.remove) for m in self.moves)


def make_plan(
    specs: Sequence[NodeSpec],
    copies: int,
    inventory: Inventory,
    *,
    repair_only: bool = False,
    unusable: Mapping[str, str] | None = None,
) -> Plan:
    """Moves for every key of ``inventory``. ``unusable``: nodes not to copy to (not
    reachable); ``repair_only``: add copies to keys short of ``copies``, remove none."""
    unusable = unusable or {}
    by_name = {s.name: s for s in specs}
    takers = [
        s for s in specs if s.state.takes_new_data and s.weight > 0 and s.name not in unusable
    ]
    ranker = Ranker(takers, [s.weight for s in takers])
    everyone = Ranker(list(specs), [s.weight for s in specs])  # (for _removable)
    zoned = any(s.zone is not None for s in takers)
    plan = Plan(copies, nodes={s.name: NodeTotals() for s in specs})
    for mask, count in Counter(inventory.holders.values()).items():
        for name in inventory.names_of(mask):
            if name in plan.nodes:
                plan.nodes[name].held += count
    used = {s.name: 0 for s in specs}
    limited = any(s.maxsize is not None for s in specs)
    if limited:  # bytes held only matter where a node has a maxsize
        for text, mask in inventory.holders.items():
            size = inventory.size_of(text) or 0
            for name in inventory.names_of(mask):
                if name in used:
                    used[name] += size

    def room(spec: NodeSpec, size: int) -> bool:
        return spec.maxsize is None or used[spec.name] + size <= spec.maxsize

    holding: dict[int, tuple[tuple[str, ...], set[str], list[str]]] = {}  # per holders mask
    for text, mask in inventory.holders.items():
        plan.keys += 1
        key_size = inventory.size_of(text)  # a chunk's own share, not its file's
        size = key_size or 0
        if mask not in holding:
            names = tuple(n for n in inventory.names_of(mask) if n in by_name)
            readonly = [n for n in names if by_name[n].state is NodeState.READONLY]
            holding[mask] = (names, set(names), readonly)
        holders, held, kept = holding[mask]
        want = list(kept)
        order = ranker.order(text)
        for spec in spread_over_zones(order) if zoned else order:
            if len(want) >= copies:
                break
            if spec.name in held or room(spec, size):
                want.append(spec.name)
        if repair_only:
            missing = max(0, copies - len(held))
            add = [n for n in want if n not in held][:missing]
            remove: list[str] = []
        else:
            add = [n for n in want if n not in held]
            remove = _removable(
                text, holders, want, by_name, everyone, copies, len(held) + len(add)
            )
        after = len(held) + len(add) - len(remove)
        if after < copies:
            plan.short[text] = (
                f"{after} of {copies} copies: not enough nodes that take new data and have room"
            )
        if add or remove:
            move = Move(text, key_size, holders, tuple(add), tuple(remove))
            plan.moves.append(move)
            for name in add:
                used[name] += size
                plan.nodes[name].keys_in += 1
                plan.nodes[name].bytes_in += size
            for name in remove:
                used[name] -= size
                plan.nodes[name].keys_out += 1
                plan.nodes[name].bytes_out += size
    for totals in plan.nodes.values():
        totals.held_after = totals.held + totals.keys_in - totals.keys_out
    return plan


def _removable(
    key: str,
    holders: Sequence[str],
    want: list[str],
    by_name: Mapping[str, NodeSpec],
    everyone: Ranker[NodeSpec],
    copies: int,
    total: int,
) -> list[str]:
    """Holders that should not hold the key, those on drain/weight-0 nodes first, then
    the key's least preferred (``everyone``: the ranking over all nodes); as many as
    leave ``copies`` copies."""
    extra = [n for n in holders if n not in want]
    spare = max(0, total - copies)
    if not extra or not spare:
        return []
    rank = {s.name: i for i, s in enumerate(everyone.order(key))}

    def leaving(name: str) -> bool:
        spec = by_name[name]
        return spec.state is NodeState.DRAIN or spec.weight <= 0

    extra.sort(key=lambda n: (not leaving(n), -rank[n]))
    return extra[:spare]
