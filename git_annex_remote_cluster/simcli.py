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
from shared.nodecli import human_size, table
from shared.simulate import (
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
        "our rendezvous placement and for git-annex's balanced= preferred content. "
        "Scenario format: docs/simulator.md.",
    )
    p.add_argument("scenario", nargs="?", type=Path, help="a TOML scenario file")
    p.add_argument("--keys", type=int, help="quick form: number of keys")
    p.add_argument("--nodes", type=int, help="quick form: nodes to start with")
    p.add_argument("--add", type=int, default=1, help="quick form: nodes to add (default 1)")
    p.add_argument("--copies", type=int, default=1, help="quick form: copies (default 1)")
    p.add_argument("--size", default="1MiB", help="quick form: key sizes (default 1MiB)")
    p.add_argument("--seed", type=int, default=1, help="quick form: random seed (default 1)")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="draw fill per node per event")
    return p


def run(args: Any) -> int:
    scenario = _scenario(args)
    reports = Simulation(scenario).run()
    if args.plot is not None:
        from shared.simplot import plot

        plot(reports, args.plot)
    if args.json:
        print(json.dumps(_json(scenario, reports), indent=2))
    else:
        _print(scenario, reports)
        if args.plot is not None:
            print(f"plot written to {args.plot}")
    return 0


def _scenario(args: Any) -> Scenario:
    if args.scenario is not None:
        if args.keys is not None or args.nodes is not None:
            raise ConfigError("give a scenario file or --keys/--nodes, not both")
        return load_scenario(args.scenario)
    if args.keys is None or args.nodes is None:
        raise ConfigError("give a scenario file, or --keys N --nodes M [--add K] [--copies C]")
    return quick_scenario(args.keys, args.nodes, args.add, args.copies, args.size, args.seed)


def _json(scenario: Scenario, reports: list[EventReport]) -> dict[str, Any]:
    events = [
        {"event": r.event, "keys": r.keys, **{a: asdict(x) for a, x in r.algorithms.items()}}
        for r in reports
    ]
    last = reports[-1]
    summary = {
        a: {
            "moved_fraction": round(
                sum(r.algorithms[a].moved_copies for r in reports[1:])
                / max(1, _copies_held(reports[0], a)),
                4,
            ),
            "moved_copies": sum(r.algorithms[a].moved_copies for r in reports[1:]),
            "moved_bytes": sum(r.algorithms[a].moved_bytes for r in reports[1:]),
            "balance": last.algorithms[a].balance,
            "short": last.algorithms[a].short,
            "lost": last.algorithms[a].lost,
        }
        for a in ALGORITHMS
    }
    return {
        "scenario": {
            "keys": scenario.keys,
            "size": scenario.size,
            "copies": scenario.copies,
            "seed": scenario.seed,
            "nodes": [asdict(n) for n in scenario.nodes],
            "events": scenario.events,
        },
        **summary,
        "events": events,
    }


def _copies_held(initial: EventReport, algo: str) -> int:
    return sum(f["keys"] for f in initial.algorithms[algo].fill.values())


def _print(scenario: Scenario, reports: list[EventReport]) -> None:
    print(
        f"{scenario.keys} keys of {scenario.size}, copies={scenario.copies}, "
        f"seed {scenario.seed}; rendezvous is ours, balanced is git-annex's balanced= "
        "(after a --rebalance pass)"
    )
    for r in reports:
        print(f"\n== {r.event} ({r.keys} keys)")
        names = list(dict.fromkeys(n for x in r.algorithms.values() for n in x.fill))
        rows = [
            (
                "NODE",
                *(f"{a.upper()} KEYS" for a in ALGORITHMS),
                *(f"{a.upper()} FILL" for a in ALGORITHMS),
            )
        ]
        for name in names:
            fills = [r.algorithms[a].fill.get(name, {}) for a in ALGORITHMS]
            rows.append(
                (
                    name,
                    *(str(f.get("keys", "-")) for f in fills),
                    *(_fill(f) for f in fills),
                )
            )
        table(rows)
        for a in ALGORITHMS:
            x = r.algorithms[a]
            line = (
                f"{a}: moved {x.moved_copies} key copies ({100 * x.moved_fraction:.1f}%, "
                f"{human_size(x.moved_bytes)}), balance {x.balance:.3f} (fullest/mean), "
                f"{x.short} key(s) short of copies"
            )
            if x.short_after_event:
                line += f" ({x.short_after_event} right after the event)"
            if x.lost:
                line += f"; {x.lost} key(s) lost with every copy"
            print(line)


def _fill(f: dict[str, Any]) -> str:
    if not f:
        return "-"
    text = human_size(f["bytes"])
    return (
        f"{text} ({f['percent_of_maxsize']}%)" if f.get("percent_of_maxsize") is not None else text
    )
