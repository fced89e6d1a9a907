"""The placement simulator: both algorithms, the events, and the command line."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest

from git_annex_remote_cluster.__main__ import main
from shared.errors import ConfigError
from shared.simulate import (
    Scenario,
    SimNode,
    Simulation,
    _Room,
    balanced_placer,
    load_scenario,
    quick_scenario,
)


def run(s: Scenario) -> list:  # type: ignore[type-arg]
    return Simulation(s).run()


def test_adding_a_node_moves_a_share_for_us_and_most_for_balanced() -> None:
    reports = run(quick_scenario(6000, 10, 1, 2, "1MiB", 1))
    added = reports[1].algorithms
    assert 0.07 < added["rendezvous"].moved_fraction < 0.115  # about 1/11
    assert added["balanced"].moved_fraction > 0.6
    assert added["rendezvous"].fill["n11"]["keys"] == added["rendezvous"].moved_copies
    for a in added.values():
        assert a.short == 0 and a.balance < 1.15


def test_drain_empties_the_node_and_lose_counts_short_keys() -> None:
    nodes = [SimNode(f"n{i}") for i in range(1, 6)]
    events = [{"action": "drain", "node": "n1"}, {"action": "lose", "node": "n2"}]
    reports = run(Scenario(keys=2000, copies=2, nodes=nodes, events=events))
    drained, lost = reports[1].algorithms, reports[2].algorithms
    for a in drained.values():
        assert a.fill["n1"]["keys"] == 0 and a.short == 0
    for a in lost.values():
        assert a.short_after_event > 0  # n2's copies vanished with it...
        assert a.short == 0 and a.lost == 0  # ...and the pass re-replicated them
        assert "n2" not in a.fill
    single = run(Scenario(keys=1000, copies=1, nodes=nodes[:3], events=events[1:]))[1]
    for a in single.algorithms.values():  # copies=1: what was only on n2 is gone
        assert a.lost == a.short_after_event > 0 and a.short == a.lost


def test_maxsize_is_respected_and_full_clusters_leave_keys_short() -> None:
    nodes = [SimNode("a"), SimNode("b"), SimNode("small", maxsize=100 * 2**20)]
    reports = run(Scenario(keys=900, size="1MiB", copies=2, nodes=nodes))
    for a in reports[0].algorithms.values():
        assert a.fill["small"]["bytes"] <= 100 * 2**20
        assert a.fill["small"]["percent_of_maxsize"] is not None
    tiny = [SimNode("a", maxsize=10 * 2**20), SimNode("b", maxsize=10 * 2**20)]
    for a in run(Scenario(keys=30, size="1MiB", copies=1, nodes=tiny))[0].algorithms.values():
        assert a.short == 10


def test_zones_spread_our_copies() -> None:
    nodes = [SimNode(f"a{i}", zone="A") for i in range(3)] + [SimNode("b0", zone="B")]
    reports = run(Scenario(keys=500, copies=2, nodes=nodes))
    assert reports[0].algorithms["rendezvous"].fill["b0"]["keys"] == 500  # one copy in B each


def test_weights_and_sizes_and_fill() -> None:
    nodes = [SimNode("big", weight=3.0), SimNode("small")]
    events = [{"action": "fill", "keys": 500, "size": "1KiB..2KiB"}]
    s = Scenario(keys=2000, size="lognormal:1MiB:0.5", copies=1, nodes=nodes, events=events)
    reports = run(s)
    fill = reports[0].algorithms["rendezvous"].fill
    assert 2.4 < fill["big"]["keys"] / fill["small"]["keys"] < 3.7
    assert reports[1].keys == 2500
    assert all(a.moved_copies == 0 for a in reports[1].algorithms.values())


def test_runs_repeat_with_a_seed() -> None:
    one = run(quick_scenario(500, 4, 1, 1, "1KiB..1MiB", 7))
    two = run(quick_scenario(500, 4, 1, 1, "1KiB..1MiB", 7))
    assert [r.algorithms["balanced"].fill for r in one] == [
        r.algorithms["balanced"].fill for r in two
    ]


def test_balanced_pick_is_git_annexs_formula() -> None:
    """HMAC-SHA256 keyed with the sorted members' UUIDs, read as a number, mod the
    members with room, consecutive members for further copies."""
    members = [SimNode("x"), SimNode("y"), SimNode("z")]
    key = "SHA256E-s5--abc"
    ordered = sorted(members, key=lambda n: n.uuid)
    secret = "".join(n.uuid for n in ordered).encode()
    n = int.from_bytes(hmac.new(secret, key.encode(), hashlib.sha256).digest(), "big")
    expect = [ordered[n % 3].name, ordered[(n + 1) % 3].name]
    room = _Room(members)
    assert balanced_placer(members, 2)(key, 5, room) == expect


def test_scenario_file_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("keys = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_scenario(bad)
    bad.write_text('keys = 10\nbogus = 1\n[[nodes]]\nname = "a"\n')
    with pytest.raises(ConfigError, match="unknown setting"):
        load_scenario(bad)
    bad.write_text('keys = 10\n[[nodes]]\nname = "a"\n[[events]]\naction = "explode"\n')
    with pytest.raises(ConfigError, match="action must be one of"):
        Simulation(load_scenario(bad)).run()


# -- the command line ------------------------------------------------------------


def test_quick_form_json_has_the_fraction_moved_per_algorithm(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert (
        main(["sim", "--keys", "3000", "--nodes", "10", "--add", "1", "--copies", "2", "--json"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert 0.06 < out["rendezvous"]["moved_fraction"] < 0.12
    assert out["balanced"]["moved_fraction"] > 0.6
    assert out["rendezvous"]["moved_copies"] > 0 and out["events"][1]["event"] == "add n11"


def test_quick_form_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--keys", "1000", "--nodes", "3", "--add", "2"]) == 0
    out = capsys.readouterr().out
    assert "== add n4, n5" in out and "rendezvous: moved" in out and "balanced: moved" in out


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
    assert "== lose b" in out and "plot written" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_use_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["sim", "--keys", "10"]) == 1
    assert "give a scenario file, or --keys N --nodes M" in capsys.readouterr().err
    assert main(["sim", str(tmp_path / "missing.toml")]) == 1
    err = capsys.readouterr().err
    assert "cannot read scenario" in err and len(err.strip().splitlines()) == 1
