"""Node lists and node URLs: one syntax for the cluster remote, the gateway and the CLI.

A node list is whitespace-separated ``NAME=URL`` entries. Attributes common to
every backend (cost, weight, zone, maxsize, reserve, state) ride in the URL's query
string and are split off here, so backends only ever see their own parameters.
"""

from __future__ import annotations

import enum
import itertools
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit

from shared.errors import ConfigError

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
COMMON_ATTRS = ("cost", "weight", "zone", "maxsize", "reserve", "state")
KNOWN_SCHEMES = (
    "file",
    "sftp",
    "annex",
    "annex+ssh",
    "annex+http",
    "annex+https",
    "s3",
    "gateway+ssh",
)

# git-annex's units (Utility/DataUnits.hs, ``dataUnits``), in its lookup order: the
# first unit whose abbreviation, name, plural, or abbreviation minus its final "b"
# matches (case-insensitively) wins, so "m" and "mb" are megabytes (10**6), "mi" and
# "mib" mebibytes, and bit rates are spelled "Mbit".
_UNITS: tuple[tuple[int, str, str], ...] = (
    *(
        (1000**n, abbrev, name)
        for n, abbrev, name in (
            (10, "QB", "quettabyte"),
            (9, "RB", "ronnabyte"),
            (8, "YB", "yottabyte"),
            (7, "ZB", "zettabyte"),
            (6, "EB", "exabyte"),
            (5, "PB", "petabyte"),
            (4, "TB", "terabyte"),
            (3, "GB", "gigabyte"),
            (2, "MB", "megabyte"),
            (1, "kB", "kilobyte"),
            (0, "B", "byte"),
        )
    ),
    *(
        (1024**n, abbrev, name)
        for n, abbrev, name in (
            (8, "YiB", "yobibyte"),
            (7, "ZiB", "zebibyte"),
            (6, "EiB", "exbibyte"),
            (5, "PiB", "pebibyte"),
            (4, "TiB", "tebibyte"),
            (3, "GiB", "gibibyte"),
            (2, "MiB", "mebibyte"),
            (1, "KiB", "kibibyte"),
        )
    ),
    *(
        (1000**n // 8, abbrev, name)
        for n, abbrev, name in (
            (8, "Ybit", "yottabit"),
            (7, "Zbit", "zettabit"),
            (6, "Ebit", "exabit"),
            (5, "Pbit", "petabit"),
            (4, "Tbit", "terabit"),
            (3, "Gbit", "gigabit"),
            (2, "Mbit", "megabit"),
            (1, "kbit", "kilobit"),
        )
    ),
)
# A number as Haskell's ``reads :: Double`` takes it (decimal; a fraction needs digits
# after the dot; an exponent needs digits), without the sign: sizes are not negative.
_NUMBER_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)")


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
    """Parse ``1GiB``, ``500MB``, ``1.1MiB``, ``1048576`` exactly as git-annex does
    (``Utility.DataUnits.readSize dataUnits``, which reads chunk=, partsize=,
    annex.diskreserve and the like): the number as a double, times the unit, rounded
    half to even; the unit is optional (bytes) and matched case-insensitively.

    Two sides that parse ``chunk=1.1MiB`` differently by one byte find none of each
    other's chunks, so the arithmetic is git-annex's own: the product is a double
    (``1.1 * 1048576`` is 1153433.6000000001) and rounds to 1153434. What git-annex
    reads differently from how it looks (text after the unit, ``5.MiB``, which it
    takes for 5 bytes) and negative sizes are refused instead."""
    bad = f"invalid size {text!r}: use a number with an optional unit like 500MiB or 1.5GB"
    m = _NUMBER_RE.match(text)
    if not m:
        raise ConfigError(bad)
    rest = text[m.end() :].lstrip()
    unit = _leading_letters(rest)
    if rest[len(unit) :].strip():
        raise ConfigError(bad)
    multiplier = _unit_size(unit)
    if multiplier is None:
        raise ConfigError(
            f"invalid size {text!r}: unknown unit {unit!r}; use B, kB, MB, GB, TB (powers "
            "of 1000) or KiB, MiB, GiB, TiB (powers of 1024)"
        )
    try:
        return round(float(m.group(1)) * float(multiplier))
    except OverflowError:
        raise ConfigError(f"invalid size {text!r}: too large") from None


def _leading_letters(text: str) -> str:
    """Haskell's ``takeWhile isAlpha``."""
    for i, ch in enumerate(text):
        if not ch.isalpha():
            return text[:i]
    return text


def _unit_size(unit: str) -> int | None:
    """git-annex's ``lookupUnit``: no unit means bytes."""
    if not unit:
        return 1
    v = unit.lower()
    for size, abbrev, name in _UNITS:
        a, n = abbrev.lower(), name.lower()
        if v in (a, n, n + "s") or a == v + "b":
            return size
    return None


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
    joined = _JOINED.search(url)
    if joined:
        raise ConfigError(
            f"node {name}: {url!r} runs into the next node ({joined.group(1)}=...): separate "
            'nodes with spaces, not commas, e.g. nodes="a=file:///srv/a b=file:///srv/b"'
        )
    parts = urlsplit(url)
    if parts.scheme not in KNOWN_SCHEMES:
        raise ConfigError(f"node {name}: {_scheme_hint(url)}")
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


# A node list written with commas: "a=file:///x,b=file:///y" (a comma, then NAME=).
_JOINED = re.compile(r",\s*([A-Za-z0-9][A-Za-z0-9._-]{0,63})=")
# scp's "host:path" and "user@host:path", which name an ssh host, not a URL.
_SCP_LIKE = re.compile(r"((?:[^@/:\s]+@)?([A-Za-z0-9][A-Za-z0-9.-]*)):(?!//)(.*)")


def _scheme_hint(url: str) -> str:
    """Why ``url`` is no node URL, and what to write instead."""
    schemes = ", ".join(f"{s}://" for s in KNOWN_SCHEMES)
    if url.startswith("/"):
        return (
            f"{url!r} is a path, not a URL: write file://{url} for a local directory "
            f"(node URLs start with {schemes})"
        )
    if url.startswith("~") or url.startswith("."):
        return f"{url!r} is a path, not a URL: write file:///ABSOLUTE/PATH for a local directory"
    scp = _SCP_LIKE.fullmatch(url)
    if scp and scp.group(2) not in KNOWN_SCHEMES:
        where, path = scp.group(1), scp.group(3)
        path = path if path.startswith("/") else f"/~/{path}"  # scp's: from the home
        return (
            f"{url!r} is not a URL: write sftp://{where}{path} for a directory on that ssh "
            f"host, or annex+ssh://{where}{path} for a git-annex repository there"
        )
    return f"unknown URL scheme in {url!r}; expected one of {schemes}"


def parse_node_list(text: str) -> list[NodeSpec]:
    """Parse the ``nodes`` parameter; names must be unique."""
    entries = text.split()
    for entry, after in itertools.pairwise(entries):
        if entry.endswith(",") and "=" in after:  # "a=file:///x, b=file:///y"
            raise ConfigError(
                f"node entry {entry!r} ends with a comma: separate nodes with spaces, not "
                'commas, e.g. nodes="a=file:///srv/a b=file:///srv/b"'
            )
    specs = [parse_node(entry) for entry in entries]
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
