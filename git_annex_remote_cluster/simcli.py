"""``git-annex-remote-cluster sim``: the placement simulator's command line.

``sim SCENARIO.toml`` runs a scenario file; ``sim --keys N --nodes M --add K``
answers the common question (what does adding K nodes to M move) directly. Both
print a table per event, or one JSON document with ``--json``, and can draw the
nodes' fill after each event into a PNG (``--plot``, needs matplotlib).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from shared.errors import ConfigError
from shared.ops.nodecli import human_size, table
from shared.sim.simulate import (
    ALGORITHMS,
    EventReport,
    Scenario,
    Simulation,
    load_scenario,
    quick_scenario,
)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "sim",
        help="simulate placement changes, ours against git-annex's balanced= (no data touched)",
        description="Simulate a cluster without touching data: place keys, apply events (add, "
        "drain, lose a node, change a weight, add keys) and report, after each, the key "
        "copies moved, the fill of every node, the balance and the keys short of copies, for "
        "our rendezvous placement and for git-annex's balanced= preferred content (as a "
        "--rebalance pass places them). Scenario format: docs/simulator.md.",
    )
    p.add_argument("scenario", nargs="?", type=Path, help="a TOML scenario file")
    p.add_argument("--keys", type=int, help="quick form: number of keys")
    p.add_argument("--nodes", type=int, help="quick form: nodes to start with (n1, n2, ...)")
    p.add_argument("--add", type=int, help="quick form: nodes to add (default 1)")
    p.add_argument("--copies", type=int, help="quick form: copies of each key (default 1)")
    p.add_argument(
        "--size", help="quick form: key sizes, SIZE, MIN..MAX or lognormal:MEDIAN (default 1MiB)"
    )
    p.add_argument("--seed", type=int, help="quick form: random seed (default 1)")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="draw fill per node per event")
    return p


def run(args: Any) -> int:
    scenario = _scenario(args)
    reports = Simulation(scenario).run()
    if args.plot is not None:
        from shared.sim.plot import plot

        plot(reports, args.plot)
    if args.json:
        print(json.dumps(as_json(scenario, reports), indent=2))
    else:
        _print(scenario, reports)
        if args.plot is not None:
            print(f"\nplot written to {args.plot}")
    return 0


def _scenario(args: Any) -> Scenario:
    quick = {"--keys": args.keys, "--nodes": args.nodes, "--add": args.add}
    quick |= {"--copies": args.copies, "--size": args.size, "--seed": args.seed}
    given = [flag for flag, value in quick.items() if value is not None]
    if args.scenario is not None:
        if given:
            raise ConfigError(
                f"{', '.join(given)}: the quick form's options do not go with a scenario file"
            )
        return load_scenario(args.scenario)
    if args.keys is None or args.nodes is None:
        raise ConfigError("give a scenario file, or --keys N --nodes M [--add K] [--copies C]")
    return quick_scenario(
        args.keys,
        args.nodes,
        1 if args.add is None else args.add,
        1 if args.copies is None else args.copies,
        args.size or "1MiB",
        1 if args.seed is None else args.seed,
    )


def as_json(scenario: Scenario, reports: list[EventReport]) -> dict[str, Any]:
    """The documented ``--json`` document (docs/simulator.md)."""
    events = [
        {
            "event": r.event,
            "keys": r.keys,
            "nodes": r.nodes,
            **{a: asdict(x) for a, x in r.algorithms.items()},
        }
        for r in reports
    ]
    held = {a: sum(f["keys"] for f in reports[0].algorithms[a].fill.values()) for a in ALGORITHMS}
    summary = {}
    for a in ALGORITHMS:
        moved = [r.algorithms[a] for r in reports[1:]]
        last = reports[-1].algorithms[a]
        summary[a] = {
            "moved_fraction": round(sum(x.moved_copies for x in moved) / held[a], 4)
            if held[a]
            else 0.0,
            "moved_keys": sum(x.moved_keys for x in moved),
            "moved_copies": sum(x.moved_copies for x in moved),
            "moved_bytes": sum(x.moved_bytes for x in moved),
            "balance": last.balance,
            "short": last.short,
            "lost": last.lost,
        }
    return {
        "scenario": {
            "keys": scenario.keys,
            "size": scenario.size,
            "copies": scenario.copies,
            "seed": scenario.seed,
            "nodes": reports[0].nodes,
            "events": scenario.events,
        },
        **summary,
        "events": events,
    }


def _print(scenario: Scenario, reports: list[EventReport]) -> None:
    print(
        f"{scenario.keys} keys of {scenario.size}, copies={scenario.copies}, seed "
        f"{scenario.seed}. rendezvous: ours; balanced: git-annex's balanced=group:"
        f"{scenario.copies}, as a --rebalance pass places keys."
    )
    for r in reports:
        print(f"\n== {r.event} ({r.keys} keys)")
        rows = [("NODE", *(f"{a.upper()} {c}" for a in ALGORITHMS for c in ("KEYS", "FILL")))]
        for node in r.nodes:
            fills = [r.algorithms[a].fill[node["name"]] for a in ALGORITHMS]
            rows.append(
                (
                    node["name"] + _notes(node),
                    *(c for f in fills for c in (str(f["keys"]), _fill(f))),
                )
            )
        table(rows)
        for a in ALGORITHMS:
            print(_summary(a, r.algorithms[a], first=r is reports[0]))


def _notes(node: dict[str, Any]) -> str:
    notes = [f"{k}={node[k]:g}" for k in ("weight",) if node[k] != 1]
    notes += [f"zone={node['zone']}"] * (node["zone"] is not None)
    notes += ["drain"] * (node["state"] == "drain")
    return f" ({', '.join(notes)})" if notes else ""


def _fill(f: dict[str, Any]) -> str:
    text = human_size(f["bytes"])
    pct = f.get("percent_of_maxsize")
    return f"{text} ({pct}%)" if pct is not None else text


def _summary(algo: str, x: Any, first: bool) -> str:
    if first:
        line = f"{algo}: stored {x.stored_copies} key copies"
    else:
        line = (
            f"{algo}: moved {x.moved_copies} key copies of {x.moved_keys} keys "
            f"({100 * x.moved_fraction:.1f}% of copies, {human_size(x.moved_bytes)})"
        )
        if x.stored_copies:
            line += f", stored {x.stored_copies} new"
    line += f"; balance {x.balance:.3f} (fullest/mean); {x.short} key(s) short of copies"
    if x.short_after_event:
        line += f" ({x.short_after_event} right after the event)"
    if x.lost:
        line += f"; {x.lost} key(s) lost with every copy"
    return line
