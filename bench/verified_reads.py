#!/usr/bin/env python3
"""What verified reads cost: a big ``git annex get`` from our 3-node sftp cluster,
this checkout against a baseline checkout (one without them), in one run.

The two variants share everything (hosts, nodes, repository, file) but the
remote's code: the baseline runs our remote with ``PYTHONPATH`` pointing at the
baseline checkout. Runs alternate (baseline, current, baseline, ...), each after
a drop and with cold ssh connections, and the table shows medians of wall time
and of the client's CPU (git-annex and our remote), and the added CPU per GiB.

    git worktree add --detach /tmp/baseline c97dc61
    .venv/bin/python bench/verified_reads.py --baseline /tmp/baseline --repeat 3
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

from cluster_vs_native import BIG, Bench, check_content
from harness import MIB, REPO, fresh_scratch, load_average

from shared.nodes.url import parse_size


def use(bench: Bench, baseline: Path | None) -> None:
    """Point the client's ``git-annex-remote-cluster`` at this checkout or the baseline."""
    remote = bench.bin / "git-annex-remote-cluster"
    remote.unlink()
    program = REPO / ".venv/bin/git-annex-remote-cluster"
    if baseline is None:
        remote.symlink_to(program)
    else:
        remote.write_text(f'#!/bin/sh\nPYTHONPATH={baseline} exec {program} "$@"\n')
        remote.chmod(0o755)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, required=True, help="checkout without the change")
    ap.add_argument("--size", type=parse_size, default=500 * MIB, help="file size (500MiB)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per variant (medians)")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/verified-reads-bench"))
    args = ap.parse_args()
    if not (args.baseline / "shared" / "cluster.py").exists():
        ap.error(f"--baseline {args.baseline}: not a checkout of this project")
    scratch = fresh_scratch(args.dir)
    bench = Bench(scratch, "sftp")
    bench.install_cleanup()
    load = load_average()
    results: dict[str, list[tuple[float, float]]] = {"baseline": [], "current": []}
    try:
        bench.setup_tools()
        bench.start_hosts()
        sums = bench.make_data(args.size, 1)
        cl = bench.build_ours()
        bench.git(cl.client, "annex", "copy", "--to", cl.remote, BIG)
        for rep in range(args.repeat):
            for variant in ("baseline", "current"):
                use(bench, args.baseline if variant == "baseline" else None)
                bench.git(cl.client, "annex", "drop", "--force", BIG)
                bench.close_masters()
                cmd = ["git", "annex", "get", "--from", cl.remote, BIG]
                wall, _busy, _steal, ru = bench.timed(cmd, cl.client, f"{variant}-{rep}")
                check_content(cl.client, BIG, sums)
                cpu = ru.ru_utime + ru.ru_stime
                results[variant].append((wall, cpu))
                print(f"  {variant} {rep + 1}: {wall:.2f} s wall, {cpu:.2f} s client CPU")
    finally:
        bench.cleanup()
        shutil.rmtree(scratch, ignore_errors=True)
    gib = args.size / (1024 * MIB)
    med = {
        v: (statistics.median(w for w, _ in r), statistics.median(c for _, c in r))
        for v, r in results.items()
    }
    (bw, bc), (cw, cc) = med["baseline"], med["current"]
    print(f"\n{args.size / MIB:.0f} MiB get, 3 sftp nodes, medians of {args.repeat}, load {load}")
    print("| variant | wall s | MiB/s | client CPU s |\n|---|---|---|---|")
    for v, (w, c) in med.items():
        print(f"| {v} | {w:.2f} | {args.size / MIB / w:.1f} | {c:.2f} |")
    print(f"\nwall time: {cw / bw:.3f}x the baseline (target: within 1.10x)")
    print(f"added client CPU: {(cc - bc) / gib:.2f} s per GiB")
    print(f"finished at {time.strftime('%H:%M:%S')}")
    return 0 if cw / bw <= 1.10 else 1


if __name__ == "__main__":
    sys.exit(main())
