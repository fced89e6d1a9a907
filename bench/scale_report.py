"""bench/scale.py's report: medians, the issue's targets, table.md, results.json, PNGs.

Kept apart from the measuring so a partial run (one section failed, or only some
sections chosen) still gets a report of what it measured: every function here takes
whatever rows exist and shows ``-``/``n/a`` for the rest.
"""

from __future__ import annotations

import json
import operator
import statistics
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

SECTIONS = ("nodes", "clients", "latency", "size", "keys")
Row = dict[str, Any]
COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
}
LATENCY_PAIRS = (  # ours -> the native contender doing the same work (see bench/README.md)
    ("ours-cluster", "native-cluster"),
    ("ours-proxy", "native-cluster"),
    ("ours-stock", "native-cluster"),
)
RSS_FLAT = 1.25  # peak RSS at the largest object at most this times the smallest's


def median_of(rows: Iterable[Row], fields: Iterable[str], **match: Any) -> Row | None:
    """The median of each field over the rows whose keys equal `match`; None if none."""
    group = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    if not group:
        return None
    return {f: statistics.median(r[f] for r in group) for f in fields}


def verdict(name: str, value: float | None, cmp: str, bound: float, note: str = "") -> Row:
    ok = None if value is None else COMPARE[cmp](value, bound)
    result = "n/a" if ok is None else "PASS" if ok else "FAIL"
    return dict(target=name, value=value, limit=f"{cmp} {bound:g}", result=result, note=note)


def fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def md(head: list[str], rows: list[list[str]]) -> str:
    lines = [head, ["---"] * len(head), *rows]
    return "\n".join("| " + " | ".join(r) + " |" for r in lines)


# -- nodes ------------------------------------------------------------------------------

NODE_FIELDS = ("wall_s", "rate", "client_cpu_s", "units", "mean_copies")


def get(m: Row | None, f: str) -> float | None:
    return None if m is None else float(m[f])


def per_unit(m: Row | None, f: str, per: str) -> float | None:
    """Field f in ms per file (per="file") or per MiB."""
    if m is None:
        return None
    units = float(m["units"]) if per == "file" else float(m["units"]) / 2**20
    return float(m[f]) / units * 1000


def nodes_table(rows: list[Row]) -> str:
    head = ["op", "-J", "nodes", "ours rate", "native rate", "ours/native"]
    head += [
        "ours ms/unit",
        "native ms/unit",
        "client CPU ms/unit ours/native",
        "copies ours/native",
    ]
    out = []
    for op in ("small-copy", "small-get", "big-copy", "big-get"):
        unit = "files/s" if op.startswith("small") else "MiB/s"
        per = "file" if op.startswith("small") else "MiB"
        for j in sorted({r["jobs"] for r in rows}):
            for n in sorted({r["nodes"] for r in rows}):
                o = median_of(rows, NODE_FIELDS, impl="ours", op=op, jobs=j, nodes=n)
                v = median_of(rows, NODE_FIELDS, impl="native", op=op, jobs=j, nodes=n)
                if o is None and v is None:
                    continue
                cpu = " / ".join(fmt(per_unit(m, "client_cpu_s", per)) for m in (o, v))
                out.append(
                    [
                        op,
                        str(j),
                        str(n),
                        f"{fmt(get(o, 'rate'), 1)} {unit}",
                        f"{fmt(get(v, 'rate'), 1)} {unit}",
                        fmt(o["rate"] / v["rate"] if o and v else None),
                        fmt(per_unit(o, "wall_s", per)),
                        fmt(per_unit(v, "wall_s", per)),
                        cpu,
                        f"{fmt(get(o, 'mean_copies'), 1)} / {fmt(get(v, 'mean_copies'), 1)}",
                    ]
                )
    return md(head, out)


def nodes_targets(rows: list[Row]) -> list[Row]:
    out: list[Row] = []
    counts = sorted({r["nodes"] for r in rows})
    if not counts:
        return out
    lo, hi = counts[0], counts[-1]
    for impl in ("ours", "native"):
        a = median_of(rows, ("wall_s", "units"), impl=impl, op="small-get", jobs=1, nodes=lo)
        z = median_of(rows, ("wall_s", "units"), impl=impl, op="small-get", jobs=1, nodes=hi)
        value = (z["wall_s"] / z["units"]) / (a["wall_s"] / a["units"]) if a and z else None
        name = f"{impl}: small-file get wall per file, {hi} nodes / {lo} nodes (-J1)"
        t = verdict(name, value, "<=", 1.2)
        if impl == "native":
            t["result"] = "reference"
        out.append(t)
    for j in sorted({r["jobs"] for r in rows}):
        o = median_of(rows, ("rate",), impl="ours", op="small-get", jobs=j, nodes=lo)
        v = median_of(rows, ("rate",), impl="native", op="small-get", jobs=j, nodes=lo)
        value = o["rate"] / v["rate"] if o and v else None
        name = f"small-file get files/s ours/native, {lo} nodes, -J{j}"
        out.append(verdict(name, value, ">=", 1.0))
    return out


def nodes_plot(rows: list[Row], path: Path) -> None:
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for ax, op in zip(axes.flat, ("small-copy", "small-get", "big-copy", "big-get"), strict=True):
        for impl, style in (("ours", "o-"), ("native", "s--")):
            for j in sorted({r["jobs"] for r in rows}):
                pts = [
                    (n, m["rate"])
                    for n in sorted({r["nodes"] for r in rows})
                    if (m := median_of(rows, ("rate",), impl=impl, op=op, jobs=j, nodes=n))
                ]
                if pts:
                    xs, ys = zip(*pts, strict=True)
                    ax.plot(xs, ys, style, label=f"{impl} -J{j}", alpha=1.0 if j == 1 else 0.6)
        ax.set_title(op)
        ax.set_xlabel("nodes")
        ax.set_ylabel("files/s" if op.startswith("small") else "MiB/s")
        ax.set_xscale("log", base=2)
        ax.set_xticks(
            sorted({r["nodes"] for r in rows}), [str(n) for n in sorted({r["nodes"] for r in rows})]
        )
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Throughput against node count (copies=2): ours (sftp:// nodes) vs native cluster")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- clients ----------------------------------------------------------------------------

CLIENT_FIELDS = ("wall_s", "files_per_s", "mib_per_s", "p50_ms", "p99_ms")
GATEWAYS = ("ours-proxy", "ours-stock", "native")


def clients_table(rows: list[Row]) -> str:
    head = ["op", "clients", *[f"{g} rate (p50 / p99 ms)" for g in GATEWAYS]]
    out = []
    for op in ("small-copy", "small-get", "big-copy", "big-get"):
        f, unit = ("files_per_s", "files/s") if op.startswith("small") else ("mib_per_s", "MiB/s")
        for k in sorted({r["clients"] for r in rows}):
            cells = []
            for g in GATEWAYS:
                m = median_of(rows, CLIENT_FIELDS, impl=g, op=op, clients=k)
                cells.append(
                    "-"
                    if m is None
                    else f"{m[f]:.1f} {unit} ({m['p50_ms']:.0f} / {m['p99_ms']:.0f})"
                )
            if any(c != "-" for c in cells):
                out.append([op, str(k), *cells])
    return md(head, out)


def clients_targets(rows: list[Row]) -> list[Row]:
    out: list[Row] = []
    if not rows:
        return out
    k = max(r["clients"] for r in rows)
    for impl in GATEWAYS[:2]:
        for op in ("small-copy", "small-get", "big-copy", "big-get"):
            f = "files_per_s" if op.startswith("small") else "mib_per_s"
            o = median_of(rows, (f,), impl=impl, op=op, clients=k)
            v = median_of(rows, (f,), impl="native", op=op, clients=k)
            value = o[f] / v[f] if o and v else None
            out.append(
                verdict(f"{k} clients aggregate {op} {impl}/native gateway", value, ">=", 1.0)
            )
    return out


def clients_plot(rows: list[Row], path: Path) -> None:
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    ks = sorted({r["clients"] for r in rows})
    panels = [
        ("small-copy", "files_per_s", "aggregate files/s"),
        ("small-get", "files_per_s", "aggregate files/s"),
        ("small-get", "p99_ms", "p99 per-file latency, ms"),
        ("big-copy", "mib_per_s", "aggregate MiB/s"),
        ("big-get", "mib_per_s", "aggregate MiB/s"),
        ("small-copy", "p99_ms", "p99 per-file latency, ms"),
    ]
    for ax, (op, f, label) in zip(axes.flat, panels, strict=True):
        for g, style in zip(GATEWAYS, ("o-", "^-", "s--"), strict=True):
            pts = [(k, m[f]) for k in ks if (m := median_of(rows, (f,), impl=g, op=op, clients=k))]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, style, label=g)
        ax.set_title(f"{op}: {label}")
        ax.set_xlabel("concurrent clients")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        "Concurrent clients through one gateway: ours (proxy remote, stock client) vs native"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- latency ----------------------------------------------------------------------------

LATENCY_IMPLS = ("ours-cluster", "ours-proxy", "ours-stock", "native-cluster", "native-proxy")


def latency_table(rows: list[Row]) -> str:
    head = [
        "op",
        "contender",
        "median wall ms",
        "min ms",
        "max ms",
        "client CPU ms",
        "/native-cluster",
    ]
    out = []
    for op in ("copy", "get"):
        ref = median_of(rows, ("wall_s",), impl="native-cluster", op=op)
        for impl in LATENCY_IMPLS:
            group = [r for r in rows if r["impl"] == impl and r["op"] == op]
            if not group:
                continue
            walls = [r["wall_s"] for r in group]
            med = statistics.median(walls)
            cpu = statistics.median(r["client_cpu_s"] for r in group)
            ratio = fmt(med / ref["wall_s"]) if ref and not impl.startswith("native") else "-"
            out.append(
                [
                    op,
                    impl,
                    f"{med * 1000:.0f}",
                    f"{min(walls) * 1000:.0f}",
                    f"{max(walls) * 1000:.0f}",
                    f"{cpu * 1000:.0f}",
                    ratio,
                ]
            )
    return md(head, out)


def latency_targets(rows: list[Row]) -> list[Row]:
    out = []
    for ours, native in LATENCY_PAIRS:
        for op in ("copy", "get"):
            o = median_of(rows, ("wall_s",), impl=ours, op=op)
            v = median_of(rows, ("wall_s",), impl=native, op=op)
            value = o["wall_s"] / v["wall_s"] if o and v else None
            out.append(verdict(f"single-file {op} wall {ours}/{native}", value, "<=", 1.0))
    return out


def latency_plot(rows: list[Row], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(10, 5))
    impls = [i for i in LATENCY_IMPLS if any(r["impl"] == i for r in rows)]
    width = 0.8 / max(1, len(impls))
    for n, impl in enumerate(impls):
        meds, errs = [], []
        for op in ("copy", "get"):
            walls = [r["wall_s"] * 1000 for r in rows if r["impl"] == impl and r["op"] == op]
            med = statistics.median(walls) if walls else 0.0
            meds.append(med)
            errs.append((med - min(walls, default=0.0), max(walls, default=0.0) - med))
        xs = [i + (n - (len(impls) - 1) / 2) * width for i in range(2)]
        ax.bar(xs, meds, width, label=impl, yerr=list(zip(*errs, strict=True)), capsize=3)
    ax.set_xticks([0, 1], ["git annex copy --to R ONEFILE", "git annex get --from R ONEFILE"])
    ax.set_ylabel("wall ms (median; bars: min..max)")
    ax.set_title("Single-file command latency, cold ssh (4 KiB file)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- size -------------------------------------------------------------------------------


def size_series(rows: list[Row]) -> list[tuple[str, str, str, str]]:
    """(impl, op, field, label) for every process role measured."""
    out = []
    for impl in ("ours-cluster", "ours-proxy"):
        for op in ("copy", "get"):
            if any(r["impl"] == impl and r["op"] == op for r in rows):
                out.append((impl, op, "client_rss_mib", f"{impl} remote, {op}"))
                if impl == "ours-proxy":
                    out.append((impl, op, "gateway_rss_mib", f"gateway serve, {op}"))
    return out


def size_table(rows: list[Row]) -> str:
    sizes = sorted({r["size_mib"] for r in rows})
    head = ["process (op)", *[f"{s:g} MiB" for s in sizes]]
    out = []
    for impl, op, f, label in size_series(rows):
        cells = []
        for s in sizes:
            m = [r[f] for r in rows if r["impl"] == impl and r["op"] == op and r["size_mib"] == s]
            cells.append(fmt(max(m), 0) if m else "-")
        out.append([label, *cells])
    for impl in ("ours-cluster", "ours-proxy"):
        for op in ("copy", "get"):
            cells = []
            for s in sizes:
                m = [r for r in rows if r["impl"] == impl and r["op"] == op and r["size_mib"] == s]
                cells.append(f"{s / m[0]['wall_s']:.0f} MiB/s" if m else "-")
            if any(c != "-" for c in cells):
                out.append([f"{impl} {op} rate", *cells])
    return md(head, out)


def size_targets(rows: list[Row]) -> list[Row]:
    out: list[Row] = []
    sizes = sorted({r["size_mib"] for r in rows})
    if len(sizes) < 2:
        return out
    for impl, op, f, label in size_series(rows):
        lo = [
            r[f] for r in rows if r["impl"] == impl and r["op"] == op and r["size_mib"] == sizes[0]
        ]
        hi = [
            r[f] for r in rows if r["impl"] == impl and r["op"] == op and r["size_mib"] == sizes[-1]
        ]
        value = max(hi) / max(lo) if lo and hi and max(lo) > 0 else None
        note = f"{max(lo, default=0):.0f} -> {max(hi, default=0):.0f} MiB"
        name = f"peak RSS flat: {label}, {sizes[-1]:g} MiB / {sizes[0]:g} MiB object"
        out.append(verdict(name, value, "<=", RSS_FLAT, note))
    return out


def size_plot(rows: list[Row], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(10, 6))
    sizes = sorted({r["size_mib"] for r in rows})
    for impl, op, f, label in size_series(rows):
        pts = [
            (s, max(m))
            for s in sizes
            if (
                m := [
                    r[f] for r in rows if r["impl"] == impl and r["op"] == op and r["size_mib"] == s
                ]
            )
        ]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, "o-" if op == "copy" else "s--", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [f"{s:g}" for s in sizes])
    ax.set_xlabel("object size, MiB (log)")
    ax.set_ylabel("peak RSS (VmHWM), MiB")
    ax.set_ylim(bottom=0)
    ax.set_title("Peak RSS against object size: flat lines mean streaming")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- keys -------------------------------------------------------------------------------


def keys_table(rows: list[Row]) -> str:
    head = ["command", "keys", "wall s", "per key us", "peak RSS MiB"]
    out = [
        [
            r["command"],
            str(r["keys"]),
            fmt(r["wall_s"]),
            fmt(r["per_key_us"], 1),
            fmt(r["peak_rss_mib"], 0),
        ]
        for r in sorted(rows, key=lambda r: (r["command"], r["keys"]))
    ]
    return md(head, out)


def keys_targets(rows: list[Row]) -> list[Row]:
    out: list[Row] = []
    counts = sorted({r["keys"] for r in rows})
    if not counts:
        return out
    lo, hi = counts[0], counts[-1]
    plan = {r["keys"]: r["per_key_us"] for r in rows if r["command"] == "rebalance-plan"}
    value = plan[hi] / plan[lo] if lo in plan and hi in plan and lo != hi else None
    out.append(verdict(f"rebalance plan time per key, {hi} / {lo} keys", value, "<=", 1.5))
    top = [r["peak_rss_mib"] for r in rows if r["keys"] == hi]
    note = "" if hi >= 1_000_000 else f"measured at {hi} keys, not 1M"
    out.append(
        verdict(f"peak RSS MiB, {hi} keys x 12 nodes (max of commands)", max(top), "<", 300, note)
    )
    return out


def keys_plot(rows: list[Row], path: Path) -> None:
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 5))
    for cmd in sorted({r["command"] for r in rows}):
        pts = sorted(
            (r["keys"], r["per_key_us"], r["peak_rss_mib"]) for r in rows if r["command"] == cmd
        )
        xs = [p[0] for p in pts]
        a1.plot(xs, [p[1] for p in pts], "o-", label=cmd)
        a2.plot(xs, [p[2] for p in pts], "o-", label=cmd)
    for ax, label in ((a1, "wall per key, us"), (a2, "peak RSS, MiB")):
        ax.set_xscale("log")
        ax.set_xlabel("keys (log)")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    a1.set_title("Wall per key: flat lines mean linear cost")
    a2.set_title("Peak RSS against key count (12 nodes)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the report -------------------------------------------------------------------------

PARTS: dict[
    str,
    tuple[
        Callable[[list[Row]], str],
        Callable[[list[Row]], list[Row]],
        Callable[[list[Row], Path], None],
        str,
    ],
] = {
    "nodes": (nodes_table, nodes_targets, nodes_plot, "scale-nodes.png"),
    "clients": (clients_table, clients_targets, clients_plot, "scale-clients.png"),
    "latency": (latency_table, latency_targets, latency_plot, "scale-latency.png"),
    "size": (size_table, size_targets, size_plot, "scale-size-rss.png"),
    "keys": (keys_table, keys_targets, keys_plot, "scale-keys.png"),
}


def report(
    out: Path,
    results: dict[str, list[Row]],
    meta: dict[str, Any],
    errors: dict[str, str],
    config: dict[str, Any],
) -> None:
    """Write table.md, results.json and the plots of every section that has rows; print table.md."""
    out.mkdir(parents=True, exist_ok=True)
    parts = [
        "# Scaling run (bench/scale.py)\n",
        f"git-annex {meta.get('git_annex', '?')}, {meta.get('cpus')} CPUs, load average "
        f"{meta.get('load_start')} at start, {meta.get('load_end')} at end, "
        f"total {meta.get('total_s')} s; machine shared with other work.\n",
    ]
    targets: list[Row] = []
    for section in SECTIONS:
        if section in errors:
            parts.append(f"## {section}\n\nFAILED: {errors[section]}\n")
        rows = results.get(section)
        if not rows:
            continue
        table, target, plot, png = PARTS[section]
        plot(rows, out / png)
        t = target(rows)
        targets += [{"section": section, **x} for x in t]
        parts.append(
            f"## {section} ({meta.get(f'{section}_s', '?')} s, plot: {png})\n\n{table(rows)}\n"
        )
    if targets:
        lines = [
            [t["section"], t["target"], fmt(t["value"]), t["limit"], t["result"], t["note"]]
            for t in targets
        ]
        parts.append(
            "## Targets\n\n"
            + md(["section", "target", "measured", "limit", "result", "note"], lines)
            + "\n"
        )
    text = "\n".join(parts)
    (out / "table.md").write_text(text)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in config.items()}
    doc = {**meta, "errors": errors, "config": config, "targets": targets, "results": results}
    (out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\n{text}\nwritten: {out}/table.md, results.json and the PNGs", flush=True)
