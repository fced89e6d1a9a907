"""The simulator's optional PNG: each node's fill after each event, both algorithms.

matplotlib is optional (``pip install 'git-annex-remote-cluster[plot]'``), imported
only when a plot is asked for.
"""

from __future__ import annotations

from pathlib import Path

from shared.errors import ConfigError
from shared.simulate import ALGORITHMS, EventReport


def plot(reports: list[EventReport], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ConfigError(
            "--plot needs matplotlib: pip install 'git-annex-remote-cluster[plot]'"
        ) from e
    fig, axes = plt.subplots(
        len(reports),
        len(ALGORITHMS),
        figsize=(6 * len(ALGORITHMS), 2.6 * len(reports)),
        squeeze=False,
    )
    for row, report in enumerate(reports):
        for col, algo in enumerate(ALGORITHMS):
            ax = axes[row][col]
            fill = report.algorithms[algo].fill
            names = list(fill)
            ax.bar(
                names, [fill[n]["bytes"] / 2**20 for n in names], color="C0" if col == 0 else "C1"
            )
            a = report.algorithms[algo]
            ax.set_title(f"{report.event}: {algo}, moved {100 * a.moved_fraction:.1f}%", fontsize=9)
            ax.set_ylabel("MiB")
            ax.tick_params(axis="x", labelsize=7, rotation=90)
    fig.tight_layout()
    try:
        fig.savefig(path, format="png", dpi=80)
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror}") from e
    finally:
        plt.close(fig)
