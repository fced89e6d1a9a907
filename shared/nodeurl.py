"""Node lists and node URLs: one syntax for the cluster remote, the gateway and the CLI.

A node list is whitespace-separated ``NAME=URL`` entries. Attributes common to
every backend (cost, weight, zone, maxsize, reserve, state) ride in the URL's query
string and are split off here, so backends only ever see their own parameters.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit

from shared.errors import ConfigError

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
COMMON_ATTRS = ("cost", "weight", "zone", "maxsize", "reserve", "state")
KNOWN_SCHEMES = ("file", "sftp", "annex", "annex+ssh", "s3", "gateway+ssh")

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
    "p": 1000**5,
    "pb": 1000**5,
    "pib": 1024**5,
}


# Free space a node keeps for itself unless ``reserve=`` says otherwise: git-annex's
# own default annex.diskreserve.
DEFAULT_RESERVE = 100 * 1000**2


class NodeState(enum.Enum):
    """What an operator allows a node to do. Every state still serves reads and removes."""

    ACTIVE = "active"
    READONLY = "readonly"
    DRAIN = "drain"

    @property
    def takes_new_data(self) -> bool:
        return self is NodeState.ACTIVE


def parse_size(text: str) -> int:
    """Parse ``1GiB``, ``500MB``, ``1048576`` the way git-annex users write sizes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise ConfigError(f"invalid size {text!r}: use a number with an optional unit like 500MiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


@dataclass(frozen=True)
class NodeSpec:
    """A parsed ``NAME=URL`` entry: where the node is and how the operator wants it used."""

    name: str
    url: str  # the URL without the common attributes
    cost: int | None = None
    weight: float = 1.0
    zone: str | None = None
    maxsize: int | None = None
    reserve: int | None = None  # free space to keep; None: DEFAULT_RESERVE
    state: NodeState = NodeState.ACTIVE
    params: dict[str, str] = field(default_factory=dict)  # backend-specific query parameters

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme

    def to_entry(self) -> str:
        """The ``NAME=URL`` form, with attributes, that parses back to this spec."""
        attrs: list[tuple[str, str]] = list(self.params.items())
        if self.cost is not None:
            attrs.append(("cost", str(self.cost)))
        if self.weight != 1.0:
            # repr round-trips exactly (":g" keeps only 6 digits: 1000001 -> 1e+06)
            attrs.append(("weight", repr(self.weight).removesuffix(".0")))
        if self.zone is not None:
            attrs.append(("zone", self.zone))
        if self.maxsize is not None:
            attrs.append(("maxsize", str(self.maxsize)))
        if self.reserve is not None:
            attrs.append(("reserve", str(self.reserve)))
        if self.state is not NodeState.ACTIVE:
            attrs.append(("state", self.state.value))
        # Not urlunsplit: it rewrites "file:rel" to "file:///rel" and "annex:///p" to "annex:/p".
        query = urlencode(attrs)
        return f"{self.name}={self.url}?{query}" if query else f"{self.name}={self.url}"


def parse_node(entry: str) -> NodeSpec:
    """Parse one ``NAME=URL`` entry; errors name the entry and say what to write instead."""
    name, sep, url = entry.partition("=")
    if not sep or not url:
        raise ConfigError(f"node entry {entry!r} is not NAME=URL, e.g. disk1=file:///srv/disk1")
    if not NAME_RE.fullmatch(name):
        raise ConfigError(
            f"node name {name!r} is invalid: use letters, digits, '.', '_' or '-' (max 64)"
        )
    parts = urlsplit(url)
    if parts.scheme not in KNOWN_SCHEMES:
        raise ConfigError(
            f"node {name}: unknown URL scheme in {url!r}; expected one of "
            + ", ".join(f"{s}://" for s in KNOWN_SCHEMES)
        )
    if parts.fragment:
        raise ConfigError(f"node {name}: URL {url!r} must not have a #fragment")
    query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False)
    common: dict[str, str] = {}
    params: dict[str, str] = {}
    for k, v in query:
        (common if k in COMMON_ATTRS else params)[k] = v
    # The URL as written, minus the query (no fragment, checked above). Not urlunsplit, which
    # would turn "file:rel/path" into "file:///rel/path" and "annex:///p" into "annex:/p".
    bare = url.partition("?")[0]
    try:
        cost = int(common["cost"]) if "cost" in common else None
        weight = float(common.get("weight", "1"))
    except ValueError as e:
        raise ConfigError(f"node {name}: cost must be an integer and weight a number") from e
    if weight < 0 or weight != weight or weight == float("inf"):
        raise ConfigError(f"node {name}: weight must be a finite number >= 0")
    try:
        state = NodeState(common.get("state", "active"))
    except ValueError as e:
        raise ConfigError(
            f"node {name}: state must be active, readonly or drain, not {common['state']!r}"
        ) from e
    try:
        maxsize = parse_size(common["maxsize"]) if common.get("maxsize") else None
        reserve = parse_size(common["reserve"]) if common.get("reserve") else None
    except ConfigError as e:
        raise ConfigError(f"node {name}: maxsize/reserve: {e}") from e
    return NodeSpec(
        name=name,
        url=bare,
        cost=cost,
        weight=weight,
        zone=common.get("zone") or None,
        maxsize=maxsize,
        reserve=reserve,
        state=state,
        params=params,
    )


def parse_node_list(text: str) -> list[NodeSpec]:
    """Parse the ``nodes`` parameter; names must be unique."""
    specs = [parse_node(entry) for entry in text.split()]
    if not specs:
        raise ConfigError(
            'no nodes given: set nodes="NAME=URL ...", e.g. nodes="a=file:///srv/a b=file:///srv/b"'
        )
    seen: set[str] = set()
    for s in specs:
        if s.name in seen:
            raise ConfigError(f"node name {s.name!r} is used twice in the node list")
        seen.add(s.name)
    return specs


def format_node_list(specs: list[NodeSpec]) -> str:
    return " ".join(s.to_entry() for s in specs)
