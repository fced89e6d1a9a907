"""Placement simulated: what node changes would move, for our placement and git-annex's.

Nothing here touches data. A scenario is a number of keys with a size
distribution, a node list (weights, zones, maxsizes) and a script of events: add a
node, drain one, lose one, change a weight, fill with more keys. After each event
both algorithms place every key again, as a ``rebalance`` (ours) or a ``git annex
... --rebalance`` pass (git-annex's ``fullybalanced=``) would, and the report says
how many key copies had to move, how full each node is, and how many keys are
short of ``copies``.

- ``rendezvous`` is ours: the first ``copies`` nodes of the key's weighted
  rendezvous order over the nodes that take new data, spread over zones, passing
  over nodes a key would overfill (``shared.placement``; the same code stores use).
- ``balanced`` is git-annex's ``balanced=group:copies``: A = the UUIDs of the
  group's members, sorted; n = HMAC-SHA256 of the key, keyed with A's UUIDs
  concatenated, read as a number; B = A without the members the key would
  overfill; the key goes to B[(n + i) mod |B|] for i below ``copies``. Weights and
  zones do not exist there. Adding a member changes both the HMAC key and |B|, so
  almost every key moves.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import math
import random
import tomllib
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.errors import ConfigError
from shared.nodeurl import parse_size
from shared.placement import Ranker, spread_over_zones

ALGORITHMS = ("rendezvous", "balanced")
ACTIONS = ("add", "drain", "lose", "weight", "fill")
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
        """Stable per name, so that runs repeat."""
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
            mu, s = math.log(parse_size(median)), float(sigma or 1.0)
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


class _Room:
    """Bytes placed per node while one pass places every key."""

    def __init__(self, nodes: Sequence[SimNode]) -> None:
        self.used = {n.name: 0 for n in nodes}
        self.limit = {n.name: n.maxsize for n in nodes}

    def fits(self, name: str, size: int) -> bool:
        limit = self.limit[name]
        return limit is None or self.used[name] + size <= limit

    def take(self, names: list[str], size: int) -> None:
        for n in names:
            self.used[n] += size


Placer = Callable[[str, int, _Room], list[str]]


def rendezvous_placer(nodes: Sequence[SimNode], copies: int) -> Placer:
    takers = [n for n in nodes if n.takes_data]
    ranker = Ranker(takers, [n.weight for n in takers])
    zoned = any(n.zone is not None for n in takers)
    limited = any(n.maxsize is not None for n in takers)

    def place(key: str, size: int, room: _Room) -> list[str]:
        order = ranker.order(key)
        if zoned:
            order = spread_over_zones(order)
        if not limited:
            return [n.name for n in order[:copies]]
        return [n.name for n in order if room.fits(n.name, size)][:copies]

    return place


def balanced_placer(nodes: Sequence[SimNode], copies: int) -> Placer:
    """git-annex's pick (see the module docstring), for the members taking data."""
    group = sorted((n for n in nodes if n.takes_data), key=lambda n: n.uuid)
    secret = "".join(n.uuid for n in group).encode()

    def place(key: str, size: int, room: _Room) -> list[str]:
        digest = hmac.new(secret, key.encode(), hashlib.sha256).digest()
        number = int.from_bytes(digest, "big")
        fits = [n for n in group if room.fits(n.name, size)]
        if not fits:
            return []
        return [fits[(number + i) % len(fits)].name for i in range(min(copies, len(fits)))]

    return place


PLACERS: dict[str, Callable[[Sequence[SimNode], int], Placer]] = {
    "rendezvous": rendezvous_placer,
    "balanced": balanced_placer,
}


# -- running a scenario --------------------------------------------------------------


@dataclass
class AlgoReport:
    moved_copies: int = 0
    moved_bytes: int = 0
    moved_fraction: float = 0.0  # of the key copies held before the event
    short_after_event: int = 0  # keys below copies right after it (a lost node)
    short: int = 0  # keys below copies after the pass
    lost: int = 0  # keys whose every copy was on lost nodes
    balance: float = 0.0  # fullest node's bytes / mean, over nodes taking data
    fill: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class EventReport:
    event: str
    keys: int
    algorithms: dict[str, AlgoReport]


class Simulation:
    def __init__(self, scenario: Scenario) -> None:
        if scenario.copies < 1:
            raise ConfigError("copies must be at least 1")
        if not scenario.nodes:
            raise ConfigError("a scenario needs at least one node")
        _unique([n.name for n in scenario.nodes])
        self.s = scenario
        self.nodes = list(scenario.nodes)
        self.keys = make_keys(scenario.keys, scenario.size, scenario.seed)
        # per algorithm, each key's holders; None for a key not stored yet
        self.holders: dict[str, list[list[str] | None]] = {a: [] for a in ALGORITHMS}

    def run(self) -> list[EventReport]:
        reports = [self._pass("initial placement", {a: 0 for a in ALGORITHMS})]
        for event in self.s.events:
            reports.append(self._apply(event))
        return reports

    def _node(self, name: str) -> SimNode:
        for n in self.nodes:
            if n.name == name:
                return n
        raise ConfigError(f"event names node {name!r}, which the cluster does not have")

    def _apply(self, event: dict[str, Any]) -> EventReport:
        action = event.get("action")
        if action not in ACTIONS:
            raise ConfigError(f"event {event}: action must be one of {', '.join(ACTIONS)}")
        short_now = {a: 0 for a in ALGORITHMS}
        if action == "add":  # one node (name, weight, zone, maxsize) or several (names)
            names = event.get("names")
            new = (
                [node_of({**event, "name": n}) for n in names]
                if isinstance(names, list)
                else [node_of(event)]
            )
            _unique([n.name for n in self.nodes] + [n.name for n in new])
            self.nodes.extend(new)
            label = f"add {', '.join(n.name for n in new)}"
        elif action == "drain":
            self._node(str(event.get("node"))).draining = True
            label = f"drain {event.get('node')}"
        elif action == "weight":
            self._node(str(event.get("node"))).weight = float(event.get("weight", 1.0))
            label = f"weight {event.get('node')}={event.get('weight')}"
        elif action == "lose":
            lost = self._node(str(event.get("node")))
            self.nodes.remove(lost)
            for a in ALGORITHMS:
                self.holders[a] = [
                    None if h is None else [n for n in h if n != lost.name] for h in self.holders[a]
                ]
                short_now[a] = sum(
                    1 for h in self.holders[a] if h is not None and len(h) < self.s.copies
                )
            label = f"lose {lost.name}"
        else:
            count = int(event.get("keys", 0))
            more = make_keys(
                count, str(event.get("size", self.s.size)), self.s.seed, len(self.keys)
            )
            self.keys.extend(more)
            for a in ALGORITHMS:
                self.holders[a].extend(None for _ in more)
            label = f"fill {count} keys"
        return self._pass(label, short_now)

    def _pass(self, label: str, short_now: dict[str, int]) -> EventReport:
        """Place every key again with each algorithm; count what moved."""
        out: dict[str, AlgoReport] = {}
        for algo in ALGORITHMS:
            place = PLACERS[algo](self.nodes, self.s.copies)
            before = self.holders[algo]
            held = sum(len(h) for h in before if h is not None)
            room = _Room(self.nodes)
            report = AlgoReport(short_after_event=short_now[algo])
            after: list[list[str] | None] = []
            for i, (key, size) in enumerate(self.keys):
                old = before[i] if i < len(before) else None  # None: not stored yet
                if old is not None and not old:  # every copy went with lost nodes
                    report.lost += 1
                    report.short += 1
                    after.append([])
                    continue
                want = place(key, size, room)
                if not want:  # nowhere to go: what is there stays
                    want = [n for n in old or () if n in room.used]
                room.take(want, size)
                if old is not None:  # a first placement is a store, not a move
                    new = [n for n in want if n not in old]
                    report.moved_copies += len(new)
                    report.moved_bytes += len(new) * size
                report.short += len(want) < self.s.copies
                after.append(want)
            self.holders[algo] = after
            report.moved_fraction = report.moved_copies / held if held else 0.0
            report.fill = self._fill(after, room)
            takers = [report.fill[n.name]["bytes"] for n in self.nodes if n.takes_data]
            mean = sum(takers) / len(takers) if takers else 0
            report.balance = round(max(takers) / mean, 3) if mean else 0.0
            out[algo] = report
        return EventReport(label, len(self.keys), out)

    def _fill(self, holders: list[list[str] | None], room: _Room) -> dict[str, dict[str, Any]]:
        counts = {n.name: 0 for n in self.nodes}
        for h in holders:
            for n in h or ():
                counts[n] += 1
        out: dict[str, dict[str, Any]] = {}
        for node in self.nodes:
            used = room.used[node.name]
            pct = round(100 * used / node.maxsize, 1) if node.maxsize else None
            out[node.name] = {"keys": counts[node.name], "bytes": used, "percent_of_maxsize": pct}
        return out


def _unique(names: list[str]) -> None:
    seen = set()
    for n in names:
        if n in seen:
            raise ConfigError(f"node name {n!r} appears twice")
        seen.add(n)


def node_of(table: dict[str, Any]) -> SimNode:
    name = table.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{table}: a node needs a name")
    maxsize = table.get("maxsize")
    return SimNode(
        name=name,
        weight=float(table.get("weight", 1.0)),
        zone=table.get("zone"),
        maxsize=parse_size(str(maxsize)) if maxsize is not None else None,
        draining=table.get("state", "active") == "drain",
    )


def load_scenario(path: Path) -> Scenario:
    """A TOML scenario (docs/simulator.md): ``keys``, ``size``, ``copies``, ``seed``,
    ``[[nodes]]`` (name, weight, zone, maxsize, state) and ``[[events]]`` (action, ...)."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read scenario {path}: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"scenario {path} is not valid TOML: {e}") from e
    try:
        nodes = [node_of(t) for t in data.get("nodes", [])]
        events = list(data.get("events", []))
        unknown = set(data) - {"keys", "size", "copies", "seed", "nodes", "events"}
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return Scenario(
            keys=int(data.get("keys", 10000)),
            size=str(data.get("size", "1MiB")),
            copies=int(data.get("copies", 1)),
            seed=int(data.get("seed", 1)),
            nodes=nodes,
            events=events,
        )
    except (ConfigError, TypeError, ValueError) as e:
        raise ConfigError(f"scenario {path}: {e}") from e


def quick_scenario(keys: int, nodes: int, add: int, copies: int, size: str, seed: int) -> Scenario:
    """``sim --keys N --nodes M --add K``: M nodes, then K added at once."""
    if nodes < 1 or add < 0 or keys < 0:
        raise ConfigError("--nodes must be at least 1, --keys and --add at least 0")
    if copies > nodes:
        raise ConfigError(f"--copies {copies} is more than the {nodes} node(s)")
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


def iter_events(reports: list[EventReport]) -> Iterator[tuple[EventReport, str, AlgoReport]]:
    for r in reports:
        for algo, a in r.algorithms.items():
            yield r, algo, a
