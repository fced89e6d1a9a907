"""Node lists and node URLs: parsing, round trips, sizes, and errors that name the node."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import ConfigError
from shared.nodes.url import (
    NodeSpec,
    NodeState,
    format_node_list,
    parse_node,
    parse_node_list,
    parse_size,
)

# -- parse_node ---------------------------------------------------------------------


def test_parse_plain_file_node() -> None:
    spec = parse_node("disk1=file:///srv/disk1")
    assert spec == NodeSpec(name="disk1", url="file:///srv/disk1")
    assert spec.scheme == "file"
    assert spec.cost is None
    assert spec.weight == 1.0
    assert spec.zone is None
    assert spec.maxsize is None
    assert spec.state is NodeState.ACTIVE
    assert spec.params == {}


def test_common_attributes_are_split_from_backend_params() -> None:
    spec = parse_node(
        "eu-1=s3://bucket/prefix?endpoint=http://127.0.0.1:9000&region=eu&cost=150"
        "&weight=2.5&zone=rack-a&maxsize=1GiB&state=readonly&chunk=50MiB"
    )
    assert spec.name == "eu-1"
    assert spec.url == "s3://bucket/prefix"
    assert spec.scheme == "s3"
    assert spec.cost == 150
    assert spec.weight == 2.5
    assert spec.zone == "rack-a"
    assert spec.maxsize == 1024**3
    assert spec.state is NodeState.READONLY
    assert spec.params == {"endpoint": "http://127.0.0.1:9000", "region": "eu", "chunk": "50MiB"}


@pytest.mark.parametrize(
    ("url", "bare"),
    [
        ("sftp://user@host:2222/~/annex", "sftp://user@host:2222/~/annex"),
        ("sftp://host/srv/x", "sftp://host/srv/x"),
        ("annex+ssh://host/srv/repo", "annex+ssh://host/srv/repo"),
        ("annex:///srv/repo", "annex:///srv/repo"),
        ("gateway+ssh://gw:22/target-1", "gateway+ssh://gw:22/target-1"),
        ("file:///srv/with%20space", "file:///srv/with%20space"),
        ("file:relative/path", "file:relative/path"),
    ],
)
def test_every_scheme_parses_and_url_is_kept(url: str, bare: str) -> None:
    spec = parse_node(f"n={url}")
    assert spec.url == bare
    assert spec.scheme == url.split(":", 1)[0]


@pytest.mark.parametrize("state", ["active", "readonly", "drain"])
def test_states(state: str) -> None:
    spec = parse_node(f"n=file:///x?state={state}")
    assert spec.state.value == state
    assert spec.state.takes_new_data is (state == "active")


def test_weight_zero_is_allowed() -> None:
    assert parse_node("n=file:///x?weight=0").weight == 0.0


def test_empty_zone_is_none() -> None:
    assert parse_node("n=file:///x?zone=").zone is None


@pytest.mark.parametrize("name", ["a", "A9", "disk.1", "disk_1", "disk-1", "x" * 64, "9lives"])
def test_good_names(name: str) -> None:
    assert parse_node(f"{name}=file:///x").name == name


# -- errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["-disk", ".disk", "_disk", "disk/1", "disk:1", "dísk", "x" * 65, "a b", "a%b"],
)
def test_bad_names(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_node(f"{name}=file:///x")
    assert repr(name) in str(info.value)


@pytest.mark.parametrize("entry", ["disk1", "disk1=", ""])
def test_not_name_equals_url(entry: str) -> None:
    with pytest.raises(ConfigError, match="NAME=URL"):
        parse_node(entry)


def test_empty_name() -> None:
    with pytest.raises(ConfigError, match="node name '' is invalid"):
        parse_node("=file:///x")


def _error(entry: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_node(entry)
    return str(info.value)


@pytest.mark.parametrize(
    "url",
    ["http://host/x", "ftp://host/x", "/srv/disk", "srv/disk", "s4://b", "ssh://host/x"],
)
def test_unknown_scheme_names_node_and_lists_schemes(url: str) -> None:
    msg = _error(f"disk7={url}")
    assert "disk7" in msg
    assert "file://" in msg
    assert "sftp://" in msg


@pytest.mark.parametrize(
    ("query", "what"),
    [
        ("cost=cheap", "cost"),
        ("cost=1.5", "cost"),
        ("cost=", "cost"),
        ("weight=heavy", "weight"),
        ("weight=-1", "weight"),
        ("weight=nan", "weight"),
        ("weight=inf", "weight"),
        ("weight=-inf", "weight"),
        ("state=offline", "state"),
        ("state=ACTIVE", "state"),
        ("state=", "state"),
        ("maxsize=lots", "size"),
        ("maxsize=-1", "size"),
        ("maxsize=5XB", "size"),
    ],
)
def test_bad_attributes_name_the_node(query: str, what: str) -> None:
    msg = _error(f"disk7=file:///srv/x?{query}")
    assert "disk7" in msg
    assert what in msg


def test_fragment_is_refused() -> None:
    assert "disk7" in _error("disk7=file:///srv/x#frag")


# -- parse_node_list ----------------------------------------------------------------


def test_node_list_whitespace_separated() -> None:
    specs = parse_node_list("  a=file:///a\n\tb=file:///b?cost=5   c=sftp://h/c \n")
    assert [s.name for s in specs] == ["a", "b", "c"]
    assert specs[1].cost == 5


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_node_list(text: str) -> None:
    with pytest.raises(ConfigError, match="no nodes"):
        parse_node_list(text)


def test_duplicate_names_are_refused_and_named() -> None:
    with pytest.raises(ConfigError) as info:
        parse_node_list("a=file:///a dup=file:///b dup=file:///c")
    assert "dup" in str(info.value)
    assert "twice" in str(info.value)


def test_error_in_list_names_the_offending_node() -> None:
    with pytest.raises(ConfigError) as info:
        parse_node_list("a=file:///a bad1=file:///b?weight=x c=file:///c")
    assert "bad1" in str(info.value)


# -- to_entry round trip ------------------------------------------------------------


@pytest.mark.parametrize(
    "entry",
    [
        "d=file:///srv/d",
        "d=file:///srv/with%20space?cost=50",
        "eu=s3://bucket/prefix?endpoint=http%3A%2F%2F127.0.0.1%3A9000&chunk=1MiB&weight=3"
        "&zone=z1&maxsize=1000&state=drain",
        "h=sftp://u@host:2222/~/annex?state=readonly&weight=0",
        "g=gateway+ssh://gw/target?cost=0",
        "r=file:relative",
    ],
)
def test_to_entry_round_trip(entry: str) -> None:
    spec = parse_node(entry)
    again = parse_node(spec.to_entry())
    assert again == spec
    assert again.to_entry() == spec.to_entry()


def test_to_entry_of_defaults_has_no_query() -> None:
    assert parse_node("d=file:///srv/d").to_entry() == "d=file:///srv/d"


def test_format_node_list_round_trip() -> None:
    text = "a=file:///a?weight=2 b=sftp://h/b?state=drain&cost=7 c=annex:///c?zone=x&maxsize=5MiB"
    specs = parse_node_list(text)
    assert parse_node_list(format_node_list(specs)) == specs


_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp")),
    min_size=1,
    max_size=12,
)


@given(
    name=_names,
    path=st.lists(st.from_regex(r"[A-Za-z0-9._~-]{1,8}", fullmatch=True), min_size=1, max_size=4),
    cost=st.none() | st.integers(min_value=0, max_value=10**6),
    weight=st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False),
    zone=st.none() | _text,
    maxsize=st.none() | st.integers(min_value=0, max_value=10**15),
    state=st.sampled_from(list(NodeState)),
    params=st.dictionaries(st.sampled_from(["endpoint", "region", "chunk", "x"]), _text),
)
def test_to_entry_round_trip_property(
    name: str,
    path: list[str],
    cost: int | None,
    weight: float,
    zone: str | None,
    maxsize: int | None,
    state: NodeState,
    params: dict[str, str],
) -> None:
    spec = NodeSpec(
        name=name,
        url="sftp://host/" + "/".join(path),
        cost=cost,
        weight=weight,
        zone=zone,
        maxsize=maxsize,
        state=state,
        params=params,
    )
    entry = spec.to_entry()
    assert not any(c.isspace() for c in entry), "an entry must survive the whitespace-split list"
    assert parse_node(entry) == spec


# -- parse_size ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 0),
        ("1048576", 1048576),
        ("1GiB", 1024**3),
        ("1gib", 1024**3),
        ("500MB", 500 * 1000**2),
        ("500mb", 500 * 1000**2),
        ("10 MiB", 10 * 1024**2),
        (" 2k ", 2000),
        ("1.5KiB", 1536),
        ("3b", 3),
        ("2T", 2 * 1000**4),
        ("1TiB", 1024**4),
        ("1PiB", 1024**5),
        ("7p", 7 * 1000**5),
        # What git-annex 10.20261026 itself made of these as chunk= (its chunk keys'
        # -S): a double times the unit, rounded half to even; units as its lookupUnit.
        ("1.1MiB", 1153434),
        ("0.0015MiB", 1573),
        ("0.7kB", 700),
        ("1.5e3KiB", 1536000),
        ("2.5e-1KiB", 256),
        ("1 mi", 1048576),
        ("1kbit", 125),
        ("3.3 kilobytes", 3300),
        ("1.0000005KiB", 1024),
        ("1e6", 1000000),
        ("2.5", 2),
        ("3.5", 4),
        ("1e", 1000**6),  # "e" is "eb" without its "b": exabytes, as in git-annex
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text",
    ["", "GiB", "-1", "1XB", "1 G i B", "one", "1,5MB", "5.MiB", ".5", "10MiB/s", "1e400"],
)
def test_parse_size_errors(text: str) -> None:
    """Refused, including what git-annex reads otherwise than it looks ("5.MiB" is 5
    bytes to git-annex, "10MiB/s" 10 MiB): an error is better than a surprise."""
    with pytest.raises(ConfigError, match="size") as info:
        parse_size(text)
    assert "\n" not in str(info.value)
