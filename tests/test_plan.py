"""The rebalance/repair planner (pure): where keys belong, what moves, and the safety
rules (never fewer than copies, readonly keeps, drain empties, maxsize holds)."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st
from test_keys import valid_key_texts

from shared.annex.keys import Key
from shared.cluster.placement import rendezvous_order, spread_over_zones
from shared.nodes.url import NodeSpec, NodeState, parse_node
from shared.ops.inventory import Inventory, content_size
from shared.ops.plan import make_plan


def key(i: int, size: int = 1000) -> str:
    return str(Key("SHA256E", hashlib.sha256(str(i).encode()).hexdigest(), size=size))


def specs(n: int, **attrs: str) -> list[NodeSpec]:
    out = []
    for i in range(1, n + 1):
        extra = attrs.get(f"n{i}", "")
        out.append(parse_node(f"n{i}=file:///srv/n{i}" + (f"?{extra}" if extra else "")))
    return out


def placed(nodes: list[NodeSpec], keys: list[str], copies: int) -> Inventory:
    """Keys where a store would have put them."""
    inv = Inventory([s.name for s in nodes])
    takers = [s for s in nodes if s.state.takes_new_data and s.weight > 0]
    for k in keys:
        order = spread_over_zones(rendezvous_order(k, takers, [s.weight for s in takers]))
        for s in order[:copies]:
            inv.holders[k] = inv.holders.get(k, 0) | inv.bit(s.name)
    return inv


def after(inv: Inventory, moves: list, names: list[str]) -> dict[str, set[str]]:  # type: ignore[type-arg]
    state = {k: set(inv.holders_of(k)) for k in inv.key_texts()}
    for m in moves:
        state[m.key] |= set(m.add)
        state[m.key] -= set(m.remove)
    return state


def test_a_placed_cluster_needs_no_moves() -> None:
    nodes = specs(4)
    keys = [key(i) for i in range(300)]
    plan = make_plan(nodes, 2, placed(nodes, keys, 2))
    assert plan.moves == [] and plan.short == {} and plan.keys == 300


def test_adding_a_node_moves_only_what_the_new_node_wins() -> None:
    old, new = specs(10), specs(11)
    keys = [key(i) for i in range(3000)]
    inv = placed(old, keys, 2)
    inv.names.append("n11")
    plan = make_plan(new, 2, inv)
    # every move puts one copy on n11 and takes one off an old node
    assert all(m.add == ("n11",) and len(m.remove) == 1 for m in plan.moves)
    fraction = plan.copies_to_add / (2 * len(keys))
    assert 0.07 < fraction < 0.12  # n11 wins 1/11 of the key copies
    assert plan.nodes["n11"].keys_in == plan.copies_to_add


def test_drain_empties_the_node_and_readonly_keeps_its_keys() -> None:
    nodes = specs(4)
    keys = [key(i) for i in range(400)]
    inv = placed(nodes, keys, 2)
    changed = specs(4, n1="state=drain", n2="state=readonly")
    plan = make_plan(changed, 2, inv)
    state = after(inv, plan.moves, inv.names)
    assert not any("n1" in h for h in state.values())
    assert all("n2" in state[k] for k in keys if "n2" in inv.holders_of(k))
    assert all(len(h) >= 2 for h in state.values())
    assert plan.nodes["n1"].held_after == 0


def test_never_removes_below_copies_when_placement_cannot_reach_copies() -> None:
    nodes = specs(3, n2="state=drain", n3="state=drain")
    inv = placed(specs(3), [key(i) for i in range(50)], 3)
    plan = make_plan(nodes, 3, inv)
    assert plan.moves == []  # nowhere to go: the drained copies stay
    assert plan.nodes["n2"].held_after == plan.nodes["n3"].held_after == 50
    lost = inv.bit("n2")
    inv.holders = {k: m & ~lost for k, m in inv.holders.items()}
    plan = make_plan(nodes, 3, inv)
    assert len(plan.short) == 50 and plan.moves == []
    assert "2 of 3 copies: not enough nodes" in next(iter(plan.short.values()))


def test_maxsize_is_respected() -> None:
    nodes = specs(3)
    keys = [key(i, size=1000) for i in range(300)]
    inv = placed(nodes, keys, 1)
    small = specs(4, n4="maxsize=20000")
    inv.names.append("n4")
    plan = make_plan(small, 1, inv)
    assert plan.nodes["n4"].bytes_in <= 20000
    assert plan.nodes["n4"].keys_in == 20  # it wins about 75, room for 20


def test_repair_only_adds_to_short_keys() -> None:
    nodes = specs(4)
    keys = [key(i) for i in range(200)]
    inv = placed(nodes, keys, 2)
    lost = inv.bit("n3")
    inv.holders = {k: m & ~lost for k, m in inv.holders.items()}
    plan = make_plan(nodes, 2, inv, repair_only=True, unusable={"n3": "unreachable"})
    assert plan.copies_to_remove == 0
    assert all("n3" not in m.add and len(m.add) == 1 for m in plan.moves)
    state = after(inv, plan.moves, inv.names)
    assert all(len(h) == 2 for h in state.values())


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(2, 6),
    copies=st.integers(1, 3),
    states=st.lists(st.sampled_from(["active", "drain", "readonly"]), min_size=6, max_size=6),
    holders=st.lists(st.integers(1, 63), min_size=1, max_size=40),
)
def test_no_key_ever_loses_a_copy_it_needs(
    n: int, copies: int, states: list[str], holders: list[int]
) -> None:
    """Whatever the starting state, after the plan each key has min(copies, what it had
    or can get) copies, and removals never go below copies."""
    copies = min(copies, n)
    nodes = [parse_node(f"n{i}=file:///srv/n{i}?state={states[i]}") for i in range(n)]
    inv = Inventory([s.name for s in nodes])
    for i, mask in enumerate(holders):
        mask &= (1 << n) - 1
        if mask:
            inv.holders[key(i)] = mask
    plan = make_plan(nodes, copies, inv)
    state = after(inv, plan.moves, inv.names)
    active = sum(1 for s in nodes if s.state is NodeState.ACTIVE)
    for k, mask in inv.holders.items():
        before = bin(mask).count("1")
        assert len(state[k]) >= min(copies, before)
        for m in plan.moves:
            if m.key == k and m.remove:
                assert len(state[k]) >= copies
        if active >= copies:
            assert len(state[k]) >= copies


@given(valid_key_texts())
@settings(max_examples=300)
def test_a_size_read_off_a_key_text_is_the_parsed_keys(text: str) -> None:
    """Plans read sizes off the inventory's texts instead of parsing every key again."""
    assert content_size(text) == Key.parse(text).content_size


def test_a_text_that_says_no_size_has_none() -> None:
    for text in ("GPGHMACSHA1--0123abcd", "SHA256E--x.bin", "no-key-here", "", "--x", "A-s1x--y"):
        assert content_size(text) is None
    assert content_size("SHA256E-s100-S30-C4--x") == 10  # a chunk's own share
