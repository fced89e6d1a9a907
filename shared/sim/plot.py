"""The simulator's optional PNG: each node's fill after each event, both algorithms.

matplotlib is optional (``pip install 'git-annex-remote-cluster[plot]'``), imported
only when a plot is asked for.
"""

from __future__ import annotations

from pathlib import Path

from shared.errors import ConfigError
from shared.sim.simulate import ALGORITHMS, EventReport

_UNITS = (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10), ("B", 1))


def plot(reports: list[EventReport], path: Path) -> None:
    """One row per event, one column per algorithm, a bar per node; a node's
    maxsize is a black tick, so a full node shows as a bar reaching it."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ConfigError(
            "--plot needs matplotlib: pip install 'git-annex-remote-cluster[plot]'"
        ) from e
    most = max(
        (f["bytes"] for r in reports for a in r.algorithms.values() for f in a.fill.values()),
        default=0,
    )
    unit, scale = next(((u, s) for u, s in _UNITS if most >= 2 * s), _UNITS[-1])
    fig, axes = plt.subplots(
        len(reports),
        len(ALGORITHMS),
        figsize=(6 * len(ALGORITHMS), 2.6 * len(reports)),
        squeeze=False,
        sharey="row",
    )
    for row, report in enumerate(reports):
        names = [n["name"] for n in report.nodes]
        maxsizes = [n["maxsize"] for n in report.nodes]
        for col, algo in enumerate(ALGORITHMS):
            ax = axes[row][col]
            a = report.algorithms[algo]
            ax.bar(names, [a.fill[n]["bytes"] / scale for n in names], color=f"C{col}")
            limited = [(i, m / scale) for i, m in enumerate(maxsizes) if m is not None]
            if limited:
                xs, ys = zip(*limited, strict=True)
                ax.scatter(xs, ys, marker="_", s=400, color="black", zorder=3)
            title = f"{report.event}: {algo}"
            if row:
                title += f", moved {100 * a.moved_fraction:.1f}% of copies"
            ax.set_title(title, fontsize=9)
            ax.set_ylabel(unit)
            ax.tick_params(axis="x", labelsize=8, rotation=90 if len(names) > 12 else 0)
    fig.tight_layout()
    try:
        fig.savefig(path, format="png", dpi=80)
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror}") from e
    finally:
        plt.close(fig)
