"""Placement simulated: what node changes would move, for our placement and git-annex's.

Nothing here touches data. A scenario is a number of keys with a size
distribution, a node list (weights, zones, maxsizes) and a script of events: add a
node, drain one, lose one, change a weight, fill with more keys. After each event
both algorithms go over every key as a ``rebalance`` (ours) or a ``git annex ...
--rebalance`` pass (git-annex's ``fullybalanced=``) would, and the report says how
many key copies had to move, how full each node is, and how many keys are short of
``copies``. As both real passes do, a key never drops below ``copies`` (git-annex's
numcopies is taken to be ``copies``), a node that holds a key keeps room for it, and
nodes fill up in the order keys are visited.

- ``rendezvous`` is ours: the first ``copies`` nodes of the key's weighted
  rendezvous order over the nodes that take new data, spread over zones, passing
  over nodes a key would overfill (``shared.cluster.placement``, the code stores use).
- ``balanced`` is git-annex's ``balanced=group:copies`` (``Annex/Balanced.hs``,
  ``Limit.hs``; see ``BalancedPicker``). Weights and zones do not exist there. A
  drained or lost node is taken out of the group (``git annex ungroup``).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import math
import random
import tomllib
import uuid
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from shared.cluster.placement import _encode, _score, spread_over_zones
from shared.errors import ConfigError
from shared.nodes.url import parse_size

ALGORITHMS = ("rendezvous", "balanced")
ACTIONS = ("add", "drain", "lose", "weight", "fill")
# git-annex's annex.fullybalancedthreshhold default: a member this full counts as full
FULLY_BALANCED_THRESHOLD = 0.9
_UUID_NS = uuid.UUID("6ba7b811-9dad-11d1-80b4-00c04fd430c8")  # RFC 4122's URL namespace


@dataclass
class SimNode:
    name: str
    weight: float = 1.0
    zone: str | None = None
    maxsize: int | None = None
    draining: bool = False

    @functools.cached_property
    def uuid(self) -> str:
        """Stable per name, so that runs repeat (git-annex's pick hashes the UUIDs)."""
        return str(uuid.uuid5(_UUID_NS, f"git-annex-remote-cluster-sim:{self.name}"))

    @property
    def takes_data(self) -> bool:
        return not self.draining and self.weight > 0


@dataclass
class Scenario:
    keys: int
    size: str = "1MiB"
    copies: int = 1
    seed: int = 1
    nodes: list[SimNode] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)


# -- keys ---------------------------------------------------------------------------


def sizes(spec: str, count: int, rng: random.Random) -> list[int]:
    """``SIZE`` (fixed), ``MIN..MAX`` (uniform) or ``lognormal:MEDIAN[:SIGMA]``."""
    try:
        if spec.startswith("lognormal:"):
            median, _, sigma = spec.removeprefix("lognormal:").partition(":")
            mu, s = math.log(max(1, parse_size(median))), float(sigma or 1.0)
            if s < 0:
                raise ConfigError("sigma must be at least 0")
            return [max(1, int(rng.lognormvariate(mu, s))) for _ in range(count)]
        if ".." in spec:
            low, high = (parse_size(p) for p in spec.split("..", 1))
            if low > high:
                raise ConfigError(f"{low} is more than {high}")
            return [rng.randint(low, high) for _ in range(count)]
        return [parse_size(spec)] * count
    except (ConfigError, ValueError) as e:
        raise ConfigError(
            f"size {spec!r}: {e}; write SIZE, MIN..MAX or lognormal:MEDIAN[:SIGMA]"
        ) from e


def make_keys(count: int, size_spec: str, seed: int, start: int = 0) -> list[tuple[str, int]]:
    """Keys that look like git-annex's (SHA256E), deterministic in ``seed``."""
    rng = random.Random(f"{seed}:{start}")
    out = []
    for i, size in enumerate(sizes(size_spec, count, rng), start):
        digest = hashlib.sha256(f"{seed}:{i}".encode()).hexdigest()
        out.append((f"SHA256E-s{size}--{digest}", size))
    return out


# -- the two algorithms ---------------------------------------------------------------


class BalancedPicker:
    """git-annex's pick for ``balanced=group:N``: A = the group's UUIDs, ascending; n =
    HMAC-SHA256 keyed with A's UUIDs concatenated, of the key, read as a big-endian
    number; with B the members that have room for the key (a subset of A, ascending),
    the key belongs to B[(n + i) mod |B|] for i below N. The HMAC key is the whole
    group, so adding or removing a member re-picks almost every key."""

    def __init__(self, uuids: Iterable[str]) -> None:
        self.members = sorted(set(uuids))
        self._mac = hmac.new("".join(self.members).encode(), digestmod=hashlib.sha256)

    @property
    def secret(self) -> str:
        return "".join(self.members)

    def number(self, key: str) -> int:
        mac = self._mac.copy()
        mac.update(key.encode("utf-8", "surrogateescape"))
        return int.from_bytes(mac.digest(), "big")

    def pick(self, key: str, count: int, candidates: Sequence[str] | None = None) -> list[str]:
        """``candidates``: the members with room, ascending (default: all)."""
        among = self.members if candidates is None else candidates
        return choose(self.number(key), among, count) if among else []


T = TypeVar("T")


def choose(n: int, among: Sequence[T], count: int) -> list[T]:
    """B[(n + i) mod |B|] for i below ``count``: each member at most once."""
    return [among[(n + i) % len(among)] for i in range(min(count, len(among)))]


def rank(row: Sequence[float]) -> list[int]:
    """Indexes of ``row``, one key's scores of nodes sorted by name, in
    ``placement.Ranker``'s order: highest score first, ties by name (the sort is
    stable). Ranking from kept scores is what lets a pass after adding one node hash
    one score per key instead of one per node."""
    return sorted(range(len(row)), key=row.__getitem__, reverse=True)


class _Scores:
    """Each node's rendezvous score for every key, per (name, weight): hashing is
    what a simulation spends its time on, so each is computed once."""

    def __init__(self) -> None:
        self._columns: dict[tuple[str, float], array[float]] = {}
        self._keys: list[bytes] = []  # the keys, encoded as placement encodes them

    def columns(self, nodes: Sequence[SimNode], keys: Sequence[str]) -> list[array[float]]:
        self._keys.extend(_encode(k) for k in keys[len(self._keys) :])
        cols = []
        for node in nodes:
            col = self._columns.setdefault((node.name, node.weight), array("d"))
            if len(col) < len(keys):
                # placement.score(key, name, weight), with the name encoded once
                prefix, weight = _encode(f"{node.name}\0"), node.weight
                col.extend([_score(prefix + k, weight) for k in self._keys[len(col) :]])
            cols.append(col)
        return cols


@dataclass
class _Room:
    """Bytes on each node, kept up to date while a pass goes over the keys."""

    nodes: dict[str, SimNode]
    used: dict[str, int]

    def fits(self, node: SimNode, size: int, holds: bool) -> bool:
        """Ours: a holder always has room for its key (``plan.make_plan``)."""
        return holds or node.maxsize is None or self.used[node.name] + size <= node.maxsize

    def annex_fits(self, node: SimNode, size: int, holds: bool) -> bool:
        """git-annex's ``repoHasSpace``: a holder must not be past its maxsize."""
        if node.maxsize is None:
            return True
        return self.used[node.name] + (0 if holds else size) <= node.maxsize


# (key index, size, its holders, room, a rebalance (not a store)) -> the nodes to hold it
Pick = Callable[[int, int, tuple[str, ...], _Room, bool], tuple[str, ...]]


# -- running a scenario --------------------------------------------------------------


@dataclass
class AlgoReport:
    moved_keys: int = 0  # keys that got a copy on a node that did not hold them
    moved_copies: int = 0  # such copies (each also removed from a node that should not hold it)
    moved_bytes: int = 0
    moved_fraction: float = 0.0  # moved_copies / the key copies held before the pass
    removed_copies: int = 0
    stored_copies: int = 0  # copies of keys stored for the first time (not moves)
    short_after_event: int = 0  # keys below copies right after the event (a lost node)
    short: int = 0  # keys below copies after the pass (nodes full, too few nodes)
    lost: int = 0  # keys whose every copy was on lost nodes
    balance: float = 0.0  # fullest node's bytes / mean, over nodes taking data
    fill: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class EventReport:
    event: str
    keys: int
    algorithms: dict[str, AlgoReport]
    nodes: list[dict[str, Any]] = field(default_factory=list)  # as they were after the event


class Simulation:
    def __init__(self, scenario: Scenario) -> None:
        if scenario.copies < 1:
            raise ConfigError("copies must be at least 1")
        if scenario.keys < 0:
            raise ConfigError("keys must be at least 0")
        if not scenario.nodes:
            raise ConfigError("a scenario needs at least one node")
        _unique([n.name for n in scenario.nodes])
        self.s = scenario
        self.nodes = list(scenario.nodes)
        made = make_keys(scenario.keys, scenario.size, scenario.seed)
        self.keys = [k for k, _ in made]
        self.sizes = [s for _, s in made]
        # per algorithm, each key's holders; None: not stored (yet), (): lost
        self.holders: dict[str, list[tuple[str, ...] | None]] = {
            a: [None] * len(self.keys) for a in ALGORITHMS
        }
        self._scores = _Scores()
        self._numbers: tuple[str, list[int]] = ("", [])  # balanced: HMAC numbers, last group

    def run(self) -> list[EventReport]:
        reports = [self._pass("initial placement", {a: 0 for a in ALGORITHMS})]
        for event in self.s.events:
            reports.append(self._apply(event))
        return reports

    def _node(self, event: dict[str, Any]) -> SimNode:
        name = event.get("node")
        for n in self.nodes:
            if n.name == name:
                return n
        raise ConfigError(
            f"event {event.get('action')} names node {name!r}, which the cluster does not have"
        )

    def _apply(self, event: dict[str, Any]) -> EventReport:
        check_event(event)
        action = event["action"]
        short_now = {a: 0 for a in ALGORITHMS}
        if action == "add":  # one node (name, weight, zone, maxsize) or several (names)
            names = event.get("names")
            if names is not None and not isinstance(names, list):
                raise ConfigError(f"event {event}: names must be a list of node names")
            fields = {k: v for k, v in event.items() if k in NODE_FIELDS}
            new = [node_of({**fields, "name": n}) for n in names] if names else [node_of(fields)]
            _unique([n.name for n in self.nodes] + [n.name for n in new])
            self.nodes.extend(new)
            label = f"add {', '.join(n.name for n in new)}"
        elif action == "drain":
            self._node(event).draining = True
            label = f"drain {event.get('node')}"
        elif action == "weight":
            node = self._node(event)
            node.weight = _weight(event.get("weight", 1.0))
            label = f"weight {node.name}={event.get('weight', 1.0)}"
        elif action == "lose":
            lost = self._node(event)
            self.nodes.remove(lost)
            for a in ALGORITHMS:
                self.holders[a] = [
                    None if h is None else tuple(n for n in h if n != lost.name)
                    for h in self.holders[a]
                ]
                short_now[a] = sum(
                    1 for h in self.holders[a] if h is not None and len(h) < self.s.copies
                )
            label = f"lose {lost.name}"
        else:
            count = _count(event.get("keys", 0))
            more = make_keys(
                count, str(event.get("size", self.s.size)), self.s.seed, len(self.keys)
            )
            self.keys.extend(k for k, _ in more)
            self.sizes.extend(s for _, s in more)
            for a in ALGORITHMS:
                self.holders[a].extend(None for _ in more)
            label = f"fill {count} keys"
        return self._pass(label, short_now)

    # -- one pass over every key ------------------------------------------------------

    def _pass(self, label: str, short_now: dict[str, int]) -> EventReport:
        """Each algorithm goes over every key: stores the keys not stored yet, moves
        the others to the nodes it picks today, and the report counts what moved."""
        out: dict[str, AlgoReport] = {}
        by_name = {n.name: n for n in self.nodes}
        copies = self.s.copies
        for algo in ALGORITHMS:
            before = self.holders[algo]
            room = _Room(by_name, dict.fromkeys(by_name, 0))
            report = AlgoReport(short_after_event=short_now[algo])
            held = sum(len(h) for h in before if h)
            if any(n.maxsize is not None for n in self.nodes if n.takes_data):
                # each pick depends on the room the keys before it left: one at a time
                for h, size in zip(before, self.sizes, strict=True):
                    for n in h or ():
                        room.used[n] += size
                pick = self._rendezvous() if algo == "rendezvous" else self._balanced()
                after = [
                    old
                    if old == ()
                    or old == (want := pick(i, self.sizes[i], old or (), room, bool(old)))
                    else self._settle(i, old, want, room, report)
                    for i, old in enumerate(before)
                ]
            else:  # picks do not depend on room: all at once, the fast way
                wants = self._rendezvous_all() if algo == "rendezvous" else self._balanced_all()
                after = [
                    old
                    if old == want
                    else (want or None)
                    if old is None
                    else self._settle(i, old, want, room, report)
                    for i, (old, want) in enumerate(zip(before, wants, strict=True))
                ]
            self.holders[algo] = after
            report.stored_copies = sum(
                len(h) for h, b in zip(after, before, strict=True) if b is None and h
            )
            report.lost = sum(1 for h in after if h == ())
            report.short = sum(1 for h in after if h is None or len(h) < copies)
            report.moved_fraction = round(report.moved_copies / held, 4) if held else 0.0
            self._report_fill(report, after)
            out[algo] = report
        nodes = [
            {
                "name": n.name,
                "uuid": n.uuid,
                "weight": n.weight,
                "zone": n.zone,
                "maxsize": n.maxsize,
                "state": "drain" if n.draining else "active",
            }
            for n in self.nodes
        ]
        return EventReport(label, len(self.keys), out, nodes)

    def _settle(
        self,
        i: int,
        old: tuple[str, ...] | None,
        want: tuple[str, ...],
        room: _Room,
        report: AlgoReport,
    ) -> tuple[str, ...] | None:
        """Key ``i``'s holders after the pass, the room and the counts updated."""
        if old == ():  # every copy went with lost nodes: nothing to copy from
            return old
        size = self.sizes[i]
        if old is None:  # a store; nowhere to go leaves the key unstored
            for n in want:
                room.used[n] += size
            return want or None
        add = [n for n in want if n not in old]
        if len(want) >= self.s.copies:
            remove = [n for n in old if n not in want]
        else:  # never below copies: drop the extras on nodes leaving first, then the last
            extra = sorted(
                (n for n in old if n not in want),
                key=lambda n: (room.nodes[n].takes_data, -old.index(n)),
            )
            remove = extra[: max(0, len(old) + len(add) - self.s.copies)]
        for n in add:
            room.used[n] += size
        for n in remove:
            room.used[n] -= size
        if add:
            report.moved_keys += 1
            report.moved_copies += len(add)
            report.moved_bytes += len(add) * size
        report.removed_copies += len(remove)
        return want + tuple(n for n in old if n not in want and n not in remove)

    def _rendezvous_all(self) -> list[tuple[str, ...]]:
        """Every key's first ``copies`` nodes, when no node has a maxsize."""
        takers = sorted((n for n in self.nodes if n.takes_data), key=lambda n: n.name)
        rows = zip(*self._scores.columns(takers, self.keys), strict=True)
        copies = self.s.copies
        if not takers:
            return [() for _ in self.keys]
        if any(n.zone is not None for n in takers):
            spread = _spreader(takers)
            return [tuple(takers[j].name for j in spread(rank(row))[:copies]) for row in rows]
        pick = [n.name for n in takers].__getitem__
        return [tuple(map(pick, rank(row)[:copies])) for row in rows]

    def _balanced_all(self) -> list[tuple[str, ...]]:
        """Every key's members, when no member has a maxsize: ``choose`` over all of
        them, sliced out of the list twice over (the fast way)."""
        group = sorted((n for n in self.nodes if n.takes_data), key=lambda n: n.uuid)
        numbers = self._balanced_numbers(BalancedPicker(n.uuid for n in group))
        names, m = [n.name for n in group] * 2, len(group)
        c = min(self.s.copies, m)
        return [tuple(names[r : r + c]) for r in (n % m for n in numbers)] if m else []

    def _rendezvous(self) -> Pick:
        takers = sorted((n for n in self.nodes if n.takes_data), key=lambda n: n.name)
        columns = self._scores.columns(takers, self.keys)
        spread = _spreader(takers) if any(n.zone is not None for n in takers) else None
        copies = self.s.copies

        def pick(i: int, size: int, old: tuple[str, ...], room: _Room, _: bool) -> tuple[str, ...]:
            order = rank([c[i] for c in columns])
            want: list[str] = []
            for j in spread(order) if spread else order:
                n = takers[j]
                if room.fits(n, size, n.name in old):
                    want.append(n.name)
                    if len(want) == copies:
                        break
            return tuple(want)

        return pick

    def _balanced(self) -> Pick:
        group = sorted((n for n in self.nodes if n.takes_data), key=lambda n: n.uuid)
        numbers = self._balanced_numbers(BalancedPicker(n.uuid for n in group))
        copies = self.s.copies

        def pick(
            i: int, size: int, old: tuple[str, ...], room: _Room, rebalance: bool
        ) -> tuple[str, ...]:
            if rebalance and copies > 1:
                # git-annex's fullybalanced under --rebalance: with too many members
                # past the threshold, it picks by free space instead (fullysizebalanced)
                full = sum(
                    1
                    for m in group
                    if m.maxsize and room.used[m.name] >= m.maxsize * FULLY_BALANCED_THRESHOLD
                )
                if copies > len(group) - full:
                    return _size_balanced(group, copies, size, old, room)
            fits = [m.name for m in group if room.annex_fits(m, size, m.name in old)]
            return tuple(choose(numbers[i], fits, copies))

        return pick

    def _balanced_numbers(self, picker: BalancedPicker) -> list[int]:
        """Each key's HMAC number for this group, kept while the group stays the same."""
        secret, numbers = self._numbers
        if secret != picker.secret:
            numbers = []
        numbers.extend(picker.number(k) for k in self.keys[len(numbers) :])
        self._numbers = (picker.secret, numbers)
        return numbers

    def _report_fill(self, report: AlgoReport, holders: list[tuple[str, ...] | None]) -> None:
        counts = {n.name: 0 for n in self.nodes}
        used = dict(counts)
        for h, size in zip(holders, self.sizes, strict=True):
            for n in h or ():
                counts[n] += 1
                used[n] += size
        for node in self.nodes:
            b = used[node.name]
            pct = round(100 * b / node.maxsize, 1) if node.maxsize else None
            report.fill[node.name] = {
                "keys": counts[node.name],
                "bytes": b,
                "percent_of_maxsize": pct,
            }
        takers = [used[n.name] for n in self.nodes if n.takes_data]
        mean = sum(takers) / len(takers) if takers else 0
        report.balance = round(max(takers) / mean, 3) if mean else 0.0


def _spreader(takers: Sequence[SimNode]) -> Callable[[list[int]], tuple[int, ...]]:
    """``spread_over_zones`` of an order of ``takers`` (as indexes), remembered: few
    orders recur among many keys when there are few nodes."""
    memo: dict[tuple[int, ...], tuple[int, ...]] = {}
    where = {id(n): j for j, n in enumerate(takers)}

    def spread(order: list[int]) -> tuple[int, ...]:
        key = tuple(order)
        got = memo.get(key)
        if got is None:
            got = memo[key] = tuple(
                where[id(n)] for n in spread_over_zones([takers[j] for j in key])
            )
        return got

    return spread


def _size_balanced(
    group: list[SimNode], copies: int, size: int, old: tuple[str, ...], room: _Room
) -> tuple[str, ...]:
    """git-annex's fullysizebalanced: the members with maxsize and room that would be
    proportionally least full, most free first (ties: the later UUID)."""
    free: list[tuple[float, SimNode]] = []
    for m in group:  # ascending UUIDs
        holds = m.name in old
        if m.maxsize and room.annex_fits(m, size, holds):
            left = m.maxsize - room.used[m.name] + (size if holds else 0)
            free.append((left / m.maxsize, m))
    free.sort(key=lambda t: t[0])  # stable, then reversed as git-annex does
    return tuple(m.name for _, m in reversed(free))[:copies]


def _unique(names: list[str]) -> None:
    seen = set()
    for n in names:
        if n in seen:
            raise ConfigError(f"node name {n!r} appears twice")
        seen.add(n)


def _weight(value: Any) -> float:
    try:
        weight = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"weight {value!r} is not a number") from None
    if not weight >= 0:
        raise ConfigError(f"weight {value!r} must be 0 or more")
    return weight


def _count(value: Any) -> int:
    if not isinstance(value, int) or value < 0:
        raise ConfigError(f"keys {value!r} must be a whole number, 0 or more")
    return value


NODE_FIELDS = {"name", "weight", "zone", "maxsize", "state"}
EVENT_FIELDS = {
    "add": NODE_FIELDS | {"names"},
    "drain": {"node"},
    "lose": {"node"},
    "weight": {"node", "weight"},
    "fill": {"keys", "size"},
}


def check_event(event: dict[str, Any]) -> None:
    """Fields a scenario's event may not have or lacks, said before anything runs."""
    action = event.get("action")
    if action not in EVENT_FIELDS:
        raise ConfigError(f"event {event}: action must be one of {', '.join(ACTIONS)}")
    unknown = set(event) - EVENT_FIELDS[action] - {"action"}
    if unknown:
        raise ConfigError(f"event {event}: {action} takes no {', '.join(sorted(unknown))}")
    if action in ("drain", "lose", "weight") and "node" not in event:
        raise ConfigError(f"event {event}: {action} needs node = NAME")
    if action == "add" and "name" not in event and "names" not in event:
        raise ConfigError(f"event {event}: add needs name = NAME or names = [...]")


def node_of(table: dict[str, Any]) -> SimNode:
    unknown = set(table) - NODE_FIELDS
    if unknown:
        raise ConfigError(f"node {table}: unknown field(s) {', '.join(sorted(unknown))}")
    name = table.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{table}: a node needs a name")
    maxsize = table.get("maxsize")
    zone = table.get("zone")
    state = table.get("state", "active")
    if state not in ("active", "drain"):
        raise ConfigError(f"node {name}: state {state!r} must be active or drain")
    return SimNode(
        name=name,
        weight=_weight(table.get("weight", 1.0)),
        zone=str(zone) if zone is not None else None,
        maxsize=parse_size(str(maxsize)) if maxsize is not None else None,
        draining=state == "drain",
    )


def load_scenario(path: Path) -> Scenario:
    """A TOML scenario (docs/simulator.md): ``keys``, ``size``, ``copies``, ``seed``,
    ``[[nodes]]`` (name, weight, zone, maxsize, state) and ``[[events]]`` (action, ...)."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read scenario {path}: {e.strerror}") from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"scenario {path} is not valid TOML: {e}") from e
    try:
        unknown = set(data) - {"keys", "size", "copies", "seed", "nodes", "events"}
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        nodes, events = data.get("nodes", []), data.get("events", [])
        if not isinstance(nodes, list) or not all(isinstance(t, dict) for t in nodes):
            raise ConfigError("nodes must be [[nodes]] tables")
        if not isinstance(events, list) or not all(isinstance(t, dict) for t in events):
            raise ConfigError("events must be [[events]] tables")
        for event in events:
            check_event(event)
        scenario = Scenario(
            keys=_count(data.get("keys", 10000)),
            size=str(data.get("size", "1MiB")),
            copies=int(data.get("copies", 1)),
            seed=int(data.get("seed", 1)),
            nodes=[node_of(t) for t in nodes],
            events=events,
        )
        sizes(scenario.size, 0, random.Random())  # a bad size fails here, with the file
        return scenario
    except (ConfigError, TypeError, ValueError) as e:
        raise ConfigError(f"scenario {path}: {e}") from e


def quick_scenario(keys: int, nodes: int, add: int, copies: int, size: str, seed: int) -> Scenario:
    """``sim --keys N --nodes M --add K``: M nodes, then K added at once."""
    if nodes < 1 or add < 0 or keys < 0:
        raise ConfigError("--nodes must be at least 1, --keys and --add at least 0")
    if not 1 <= copies <= nodes:
        raise ConfigError(f"--copies must be 1 to the {nodes} node(s)")
    return Scenario(
        keys=keys,
        size=size,
        copies=copies,
        seed=seed,
        nodes=[SimNode(f"n{i}") for i in range(1, nodes + 1)],
        events=[{"action": "add", "names": [f"n{nodes + i}" for i in range(1, add + 1)]}]
        if add
        else [],
    )
