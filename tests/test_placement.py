"""Weighted rendezvous placement: deterministic everywhere, proportional, minimal movement."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.cluster.placement import rendezvous_order, score

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class N:
    name: str


def names(key: str, nodes: list[str], weights: list[float] | None = None) -> list[str]:
    ns = [N(n) for n in nodes]
    ws = weights if weights is not None else [1.0] * len(ns)
    return [n.name for n in rendezvous_order(key, ns, ws)]


FIVE = ["a", "b", "c", "d", "e"]
KEYS = [f"SHA256E-s{i}--{i:064x}.bin" for i in range(2000)]

# Pinned results: a change of hash function, of its input encoding or of the score
# formula moves keys between nodes on every existing cluster, so it must show up here.
PINNED = [
    ("SHA256E-s5--abc.txt", FIVE, None, ["a", "b", "c", "e", "d"]),
    ("WORM-s1-m2--x", FIVE, None, ["c", "d", "a", "e", "b"]),
    ("URL--http://example.com/a&b", FIVE, None, ["c", "d", "b", "e", "a"]),
    (
        "SHA256E-s5--abc.txt",
        ["disk1", "disk2", "disk3"],
        [1.0, 2.0, 0.5],
        ["disk2", "disk1", "disk3"],
    ),
]


@pytest.mark.parametrize(("key", "nodes", "weights", "expected"), PINNED)
def test_pinned_orders(
    key: str, nodes: list[str], weights: list[float] | None, expected: list[str]
) -> None:
    assert names(key, nodes, weights) == expected


def test_pinned_score() -> None:
    assert score("SHA256E-s5--abc.txt", "a", 1.0) == pytest.approx(9.028085129824326, rel=1e-12)
    assert score("SHA256E-s5--abc.txt", "a", 2.0) == pytest.approx(2 * 9.028085129824326)


def test_order_does_not_depend_on_input_order() -> None:
    for key in KEYS[:200]:
        assert names(key, FIVE) == names(key, list(reversed(FIVE)))


def test_order_is_a_permutation() -> None:
    for key in KEYS[:200]:
        assert sorted(names(key, FIVE)) == FIVE


_SCRIPT = """
import json, sys
from shared.cluster.placement import rendezvous_order
class N:
    def __init__(self, name): self.name = name
keys, nodes = json.load(sys.stdin)
print(json.dumps([[n.name for n in rendezvous_order(k, [N(x) for x in nodes], [1.0] * len(nodes))]
                  for k in keys]))
"""


@pytest.mark.parametrize("seed", ["0", "1", "4242"])
def test_same_order_in_another_process(seed: str) -> None:
    keys = [*KEYS[:300], "URL--http://h/ä€", "WORM--\udcff"]
    env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        input=json.dumps([keys, FIVE]),
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    assert json.loads(out.stdout) == [names(k, FIVE) for k in keys]


def test_weight_zero_is_never_first() -> None:
    weights = [1.0, 0.0, 1.0, 0.0, 3.0]
    for key in KEYS:
        order = names(key, FIVE, weights)
        assert order[0] not in ("b", "d")
        assert set(order[-2:]) == {"b", "d"}, "weight-0 nodes come last"


def test_weight_zero_still_ordered_when_all_zero() -> None:
    assert sorted(names("k", FIVE, [0.0] * 5)) == FIVE


def test_first_choice_proportional_to_weight() -> None:
    weights = [1.0, 2.0, 3.0, 4.0, 10.0]
    total = sum(weights)
    n = 20000
    first = Counter(names(f"WORM--key-{i}", FIVE, weights)[0] for i in range(n))
    for node, w in zip(FIVE, weights, strict=True):
        assert first[node] / n == pytest.approx(w / total, abs=0.015), (node, first)


def test_equal_weights_spread_evenly() -> None:
    n = 20000
    first = Counter(names(f"SHA256--{i:x}", FIVE)[0] for i in range(n))
    for node in FIVE:
        assert first[node] / n == pytest.approx(0.2, abs=0.015), first


def test_adding_a_node_moves_about_one_in_n_plus_one_and_only_to_it() -> None:
    ten = [f"node{i:02d}" for i in range(10)]
    eleven = [*ten, "node10"]
    n = 20000
    moved = 0
    for i in range(n):
        key = f"SHA256E-s{i}--{i:064x}"
        before = names(key, ten)
        after = names(key, eleven)
        if before[0] != after[0]:
            moved += 1
            assert after[0] == "node10", "a key may only move to the new node"
        # The relative order of the old nodes is unchanged.
        assert [x for x in after if x != "node10"] == before
    assert moved / n == pytest.approx(1 / 11, rel=0.1)


def test_renaming_url_does_not_matter_only_name() -> None:
    @dataclass(frozen=True)
    class Spec:
        name: str
        url: str

    a = [Spec("a", "file:///x"), Spec("b", "file:///y")]
    b = [Spec("a", "sftp://h/x"), Spec("b", "s3://bucket/y")]
    for key in KEYS[:100]:
        assert [s.name for s in rendezvous_order(key, a, [1.0, 1.0])] == [
            s.name for s in rendezvous_order(key, b, [1.0, 1.0])
        ]


def test_mismatched_weights_are_an_error() -> None:
    with pytest.raises(ValueError):
        rendezvous_order("k", [N("a"), N("b")], [1.0])


# -- properties (hypothesis) -----------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from shared.cluster.placement import spread_over_zones  # noqa: E402


@dataclass(frozen=True)
class ZN:
    name: str
    zone: str | None = None


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 12), copies=st.integers(1, 4), seed=st.integers(0, 10**6))
def test_adding_a_node_moves_only_copies_to_it(n: int, copies: int, seed: int) -> None:
    """For any cluster size and copies: a key's copy set changes only by the new node
    taking the place of one old node, and about 1/(n+1) of the key copies move (the new
    node is among a key's first ``copies`` for copies/(n+1) of the keys, taking one)."""
    copies = min(copies, n)
    old = [f"n{seed}-{i}" for i in range(n)]
    new = [*old, f"n{seed}-new"]
    moved = 0
    keys = [f"SHA256E-s{i}--{seed:x}{i:060x}" for i in range(600)]
    for key in keys:
        before = set(names(key, old)[:copies])
        after = set(names(key, new)[:copies])
        gone = before - after
        assert after - before <= {new[-1]}
        assert len(gone) == len(after - before) <= 1
        moved += len(gone)
    expected = 1 / (n + 1)
    assert moved / (len(keys) * copies) == pytest.approx(expected, abs=0.07)


@settings(max_examples=30, deadline=None)
@given(weights=st.lists(st.sampled_from([0.5, 1.0, 2.0, 3.0]), min_size=2, max_size=6))
def test_first_choice_share_follows_weights(weights: list[float]) -> None:
    nodes = [f"w{i}" for i in range(len(weights))]
    n = 6000
    first = Counter(names(f"SHA256--{i:x}", nodes, weights)[0] for i in range(n))
    total = sum(weights)
    for node, w in zip(nodes, weights, strict=True):
        # Rendezvous shares are proportional to weight only approximately when weights
        # differ a lot; the tolerance covers that and sampling noise.
        assert first[node] / n == pytest.approx(w / total, abs=0.06), (first, weights)


zones_strategy = st.lists(st.sampled_from(["a", "b", "c", None]), min_size=1, max_size=9)


@settings(max_examples=80, deadline=None)
@given(zones=zones_strategy, copies=st.integers(1, 5), key=st.text(min_size=1, max_size=20))
def test_copies_span_as_many_zones_as_there_are(
    zones: list[str | None], copies: int, key: str
) -> None:
    nodes = [ZN(f"z{i}", z) for i, z in enumerate(zones)]
    order = spread_over_zones(rendezvous_order(key, nodes, [1.0] * len(nodes)))
    assert sorted(n.name for n in order) == sorted(n.name for n in nodes)  # a permutation
    assert order[0] == rendezvous_order(key, nodes, [1.0] * len(nodes))[0]  # first unchanged
    copies = min(copies, len(nodes))
    distinct = {n.zone if n.zone is not None else n.name for n in nodes}
    chosen = {n.zone if n.zone is not None else n.name for n in order[:copies]}
    assert len(chosen) == min(copies, len(distinct))


def test_zone_spread_is_the_same_in_another_process() -> None:
    nodes = [ZN(f"z{i}", "ab"[i % 2] if i < 6 else None) for i in range(8)]
    here = [
        [n.name for n in spread_over_zones(rendezvous_order(k, nodes, [1.0] * 8))]
        for k in KEYS[:200]
    ]
    code = (
        "import json, sys; sys.path.insert(0, 'tests'); sys.path.insert(0, '.');"
        "from test_placement import ZN, KEYS;"
        "from shared.cluster.placement import rendezvous_order, spread_over_zones;"
        "nodes = [ZN(f'z{i}', 'ab'[i % 2] if i < 6 else None) for i in range(8)];"
        "print(json.dumps([[n.name for n in spread_over_zones(rendezvous_order(k, nodes, "
        "[1.0] * 8))] for k in KEYS[:200]]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout) == here
