"""The placement simulator: both algorithms, the events, and the command line."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import sys
from pathlib import Path

import pytest

from git_annex_remote_cluster.__main__ import main
from shared.cluster.placement import rendezvous_order, spread_over_zones
from shared.errors import ConfigError
from shared.sim.simulate import (
    BalancedPicker,
    EventReport,
    Scenario,
    SimNode,
    Simulation,
    _Room,
    load_scenario,
    quick_scenario,
    sizes,
)

MiB = 2**20


def run(s: Scenario) -> list[EventReport]:
    return Simulation(s).run()


def nodes(*names: str, **attrs: object) -> list[SimNode]:
    return [SimNode(n, **attrs) for n in names]  # type: ignore[arg-type]


# -- the two algorithms ------------------------------------------------------------


def test_adding_a_node_moves_a_share_for_us_and_most_for_balanced() -> None:
    reports = run(quick_scenario(6000, 10, 1, 2, "1MiB", 1))
    added = reports[1].algorithms
    ours, theirs = added["rendezvous"], added["balanced"]
    assert 0.07 < ours.moved_fraction < 0.115  # about 1/11
    assert theirs.moved_fraction > 0.6
    # ours moves exactly what the new node takes, one copy per key moved
    assert ours.fill["n11"]["keys"] == ours.moved_copies == ours.moved_keys
    assert ours.moved_bytes == ours.moved_copies * MiB
    assert ours.removed_copies == ours.moved_copies
    for a in added.values():
        assert a.short == 0 and a.lost == 0 and a.balance < 1.15
        assert sum(f["keys"] for f in a.fill.values()) == 2 * 6000


def test_our_picks_are_the_placement_code_s() -> None:
    """The simulator ranks from kept scores; that must give placement's own order,
    weights and zones included."""
    cluster = [
        SimNode("a", weight=2.0, zone="r1"),
        SimNode("b", zone="r1"),
        SimNode("c", weight=0.5, zone="r2"),
        SimNode("d"),
        SimNode("e", weight=3.0, zone="r2"),
    ]
    sim = Simulation(Scenario(keys=400, copies=2, nodes=cluster))
    sim.run()
    for key, held in zip(sim.keys, sim.holders["rendezvous"], strict=True):
        order = spread_over_zones(rendezvous_order(key, cluster, [n.weight for n in cluster]))
        assert held == tuple(n.name for n in order[:2])


def test_balanced_pick_matches_git_annex_s_own_test() -> None:
    """git-annex's prop_balanced_stable (Annex/Balanced.hs): UUIDs "1".."500",
    key WORM--test."""
    picker = BalancedPicker(str(i) for i in range(1, 501))
    assert picker.pick("WORM--test", 1) == ["332"]
    assert picker.pick("WORM--test", 3) == ["332", "333", "334"]


def test_balanced_pick_by_hand() -> None:
    """HMAC-SHA256 keyed with the sorted UUIDs, of the key, mod the members with room."""
    members = nodes("x", "y", "z")
    sim = Simulation(Scenario(keys=50, copies=2, nodes=members))
    sim.run()
    ordered = sorted(members, key=lambda n: n.uuid)
    secret = "".join(n.uuid for n in ordered).encode()
    for key, held in zip(sim.keys, sim.holders["balanced"], strict=True):
        n = int.from_bytes(hmac.new(secret, key.encode(), hashlib.sha256).digest(), "big")
        assert held == (ordered[n % 3].name, ordered[(n + 1) % 3].name)
    key = sim.keys[0]
    n = BalancedPicker(m.uuid for m in members).number(key)
    with_room = [ordered[0].uuid, ordered[2].uuid]  # the middle one full
    assert BalancedPicker(m.uuid for m in members).pick(key, 1, with_room) == [with_room[n % 2]]


def test_balanced_turns_to_free_space_when_members_are_nearly_full() -> None:
    """fullybalanced under --rebalance, copies > members under 90%: the members with
    the most free space in proportion (git-annex's fullysizebalanced)."""
    group = [SimNode(n, maxsize=100) for n in ("a", "b", "c")]
    sim = Simulation(Scenario(keys=1, copies=2, nodes=group))
    room = _Room({n.name: n for n in group}, {"a": 95, "b": 50, "c": 96})
    pick = sim._balanced()
    assert pick(0, 1, ("a",), room, True) == ("b", "a")  # a: 5% free + its own copy, c: 4%
    assert len(pick(0, 1, ("a",), room, False)) == 2  # a store is the plain pick


def test_drain_empties_the_node_and_loses_nothing() -> None:
    events = [{"action": "drain", "node": "n1"}]
    reports = run(Scenario(keys=2000, copies=2, nodes=nodes("n1", "n2", "n3", "n4"), events=events))
    held = reports[0].algorithms["rendezvous"].fill["n1"]["keys"]
    for algo, a in reports[1].algorithms.items():
        assert a.fill["n1"]["keys"] == 0 and a.short == 0 and a.lost == 0, algo
        assert sum(f["keys"] for f in a.fill.values()) == 4000
    assert reports[1].algorithms["rendezvous"].moved_copies == held


def test_a_drain_never_leaves_keys_short_of_copies() -> None:
    """With as many copies as nodes, the drained node keeps what it holds."""
    events = [{"action": "drain", "node": "c"}]
    reports = run(Scenario(keys=300, copies=3, nodes=nodes("a", "b", "c"), events=events))
    for a in reports[1].algorithms.values():
        assert a.fill["c"]["keys"] == 300 and a.short == 0 and a.removed_copies == 0


def test_losing_a_node_counts_short_keys_then_re_replicates() -> None:
    events = [{"action": "lose", "node": "n2"}]
    cluster = nodes("n1", "n2", "n3", "n4", "n5")
    reports = run(Scenario(keys=2000, copies=2, nodes=cluster, events=events))
    for algo, a in reports[1].algorithms.items():
        on_n2 = reports[0].algorithms[algo].fill["n2"]["keys"]
        assert a.short_after_event == on_n2 > 0  # its copies vanished with it...
        assert a.short == 0 and a.lost == 0  # ...and the pass re-replicated them
        assert "n2" not in a.fill
    ours_before, ours_after = (r.algorithms["rendezvous"] for r in reports)
    assert ours_after.moved_copies == ours_before.fill["n2"]["keys"]  # those, no more
    single = run(Scenario(keys=1000, copies=1, nodes=cluster[:3], events=events))[1]
    for a in single.algorithms.values():  # copies=1: what was only on n2 is gone
        assert a.lost == a.short_after_event == a.short > 0


def test_maxsize_is_respected_by_both() -> None:
    cluster = [*nodes("a", "b"), SimNode("small", maxsize=100 * MiB)]
    reports = run(Scenario(keys=900, size="1MiB", copies=2, nodes=cluster))
    for a in reports[0].algorithms.values():
        assert 99 * MiB <= a.fill["small"]["bytes"] <= 100 * MiB
        assert a.fill["small"]["percent_of_maxsize"] >= 99
        assert a.short == 0


def test_a_full_cluster_leaves_keys_unstored_until_a_node_comes() -> None:
    tiny = nodes("a", "b", maxsize=10 * MiB)
    events = [{"action": "add", "name": "c"}]
    reports = run(Scenario(keys=30, size="1MiB", copies=1, nodes=tiny, events=events))
    for a in reports[0].algorithms.values():
        assert a.short == 10 and a.stored_copies == 20
        assert all(f["bytes"] <= 10 * MiB for f in a.fill.values())
    for a in reports[1].algorithms.values():
        assert a.short == 0 and a.stored_copies >= 10


def test_zones_spread_our_copies() -> None:
    cluster = [*nodes("a0", "a1", "a2", zone="A"), SimNode("b0", zone="B")]
    reports = run(Scenario(keys=500, copies=2, nodes=cluster))
    assert reports[0].algorithms["rendezvous"].fill["b0"]["keys"] == 500  # one copy in B each


def test_weights_sizes_and_fill() -> None:
    cluster = [SimNode("big", weight=3.0), SimNode("small")]
    events = [{"action": "fill", "keys": 500, "size": "1KiB..2KiB"}]
    s = Scenario(keys=2000, size="lognormal:1MiB:0.5", copies=1, nodes=cluster, events=events)
    reports = run(s)
    fill = reports[0].algorithms["rendezvous"].fill
    assert 2.4 < fill["big"]["keys"] / fill["small"]["keys"] < 3.7
    assert reports[1].keys == 2500
    for a in reports[1].algorithms.values():  # new keys are stored, not moved
        assert a.moved_copies == 0 and a.stored_copies == 500


def test_size_distributions() -> None:
    rng = random.Random(1)
    assert sizes("4KiB", 3, rng) == [4096] * 3
    assert all(MiB <= s <= 100 * MiB for s in sizes("1MiB..100MiB", 200, rng))
    logn = sorted(sizes("lognormal:10MiB", 2001, rng))
    assert 7 * MiB < logn[1000] < 14 * MiB  # the median
    for bad in ("1MiB..1KiB", "lognormal:", "lognormal:1MiB:x", "big"):
        with pytest.raises(ConfigError, match=r"SIZE, MIN\.\.MAX or lognormal"):
            sizes(bad, 1, rng)


def test_runs_repeat_with_a_seed() -> None:
    def fills(seed: int) -> list[object]:
        reports = run(quick_scenario(500, 4, 1, 1, "1KiB..1MiB", seed))
        return [r.algorithms[a].fill for r in reports for a in r.algorithms]

    assert fills(7) == fills(7)
    assert fills(7) != fills(8)


def test_scenario_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    cases = {
        "keys = [\n": "not valid TOML",
        'keys = 10\nbogus = 1\n[[nodes]]\nname = "a"\n': "unknown setting",
        'keys = 10\n[[nodes]]\nname = "a"\nwieght = 2\n': "unknown field",
        'keys = 10\n[[nodes]]\nname = "a"\n[[events]]\naction = "explode"\n': "action must be",
        '[[nodes]]\nname = "a"\n[[events]]\naction = "drain"\n': "drain needs node",
        '[[nodes]]\nname = "a"\n[[events]]\naction = "fill"\nnode = "a"\n': "fill takes no node",
        '[[nodes]]\nname = "a"\nstate = "readonly"\n': "must be active or drain",
        'size = "huge"\n[[nodes]]\nname = "a"\n': "write SIZE",
    }
    for text, message in cases.items():
        bad.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_scenario(bad)
    bad.write_text('[[nodes]]\nname = "a"\n[[events]]\naction = "lose"\nnode = "b"\n')
    with pytest.raises(ConfigError, match="names node 'b', which the cluster does not have"):
        Simulation(load_scenario(bad)).run()


# -- the command line ------------------------------------------------------------


def test_quick_form_json_has_the_fraction_moved_per_algorithm(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["sim", "--keys", "3000", "--nodes", "10", "--add", "1", "--copies", "2", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    ours, theirs = out["rendezvous"], out["balanced"]
    assert 0.06 < ours["moved_fraction"] < 0.12 and theirs["moved_fraction"] > 0.6
    assert ours["moved_keys"] == ours["moved_copies"] > 0
    assert ours["moved_bytes"] == ours["moved_copies"] * MiB
    assert out["events"][1]["event"] == "add n11"
    assert out["events"][1]["rendezvous"]["fill"]["n11"]["keys"] == ours["moved_copies"]
    assert [n["name"] for n in out["scenario"]["nodes"]] == [f"n{i}" for i in range(1, 11)]


def test_quick_form_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--keys", "1000", "--nodes", "3", "--add", "2"]) == 0
    out = capsys.readouterr().out
    assert "== add n4, n5" in out and "RENDEZVOUS KEYS" in out and "BALANCED FILL" in out
    assert "rendezvous: moved" in out and "balanced: moved" in out


def test_scenario_file_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text(
        'keys = 1000\nsize = "1MiB"\ncopies = 2\n'
        '[[nodes]]\nname = "a"\nzone = "r1"\n[[nodes]]\nname = "b"\nzone = "r2"\n'
        '[[nodes]]\nname = "c"\nmaxsize = "800MiB"\n'
        '[[events]]\naction = "add"\nname = "d"\nweight = 2\n'
        '[[events]]\naction = "weight"\nnode = "a"\nweight = 0.5\n'
        '[[events]]\naction = "lose"\nnode = "b"\n'
    )
    png = tmp_path / "fill.png"
    assert main(["sim", str(scenario), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "== lose b" in out and "a (weight=0.5, zone=r1)" in out and "%)" in out
    assert "plot written" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_what_to_install(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    args = ["sim", "--keys", "10", "--nodes", "2", "--plot", str(tmp_path / "p.png")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "pip install 'git-annex-remote-cluster[plot]'" in err
    assert len(err.strip().splitlines()) == 1


def test_bad_use_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[nodes]]\nname = "a"\n[[events]]\naction = "explode"\n')
    cases = {
        ("sim", "--keys", "10"): "give a scenario file, or --keys N --nodes M",
        ("sim", str(tmp_path / "missing.toml")): "cannot read scenario",
        ("sim", str(bad)): f"scenario {bad}: event",
        ("sim", str(bad), "--copies", "2"): "--copies: the quick form's options",
        ("sim", "--keys", "10", "--nodes", "2", "--copies", "3"): "--copies must be 1 to",
        ("sim", "--keys", "10", "--nodes", "2", "--size", "1..2..3"): "size '1..2..3'",
    }
    for args, message in cases.items():
        assert main(list(args)) == 1, args
        err = capsys.readouterr().err
        assert err.startswith("git-annex-remote-cluster: ") and message in err, err
        assert len(err.strip().splitlines()) == 1
