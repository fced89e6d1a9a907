"""How the maintenance commands scale with the number of keys (issue 22, key count).

For each key count N, a git-annex repository gets a cluster remote of ``nodes``
``file://`` nodes with ``copies=2``, and N small keys are written straight into
the nodes' directory layout (``<root>/<hashdirlower>/<keyfile>/<keyfile>``, as
``shared.nodes.file`` stores them), each on the two nodes a store would pick
(``shared.cluster.placement``). The git-annex branch gets a location log per key
saying the cluster holds it, so ``fsck`` compares the nodes with the branch as it
would in a real repository. Then, each timed with ``os.wait4`` (wall, CPU, peak
RSS of the command's process tree):

- ``status``: ``git-annex-remote-cluster status cl``;
- ``repair-dry-run``: ``repair cl --dry-run``;
- ``fsck-sample``: ``fsck cl --sample 1% --seed 1``;
- ``rebalance-plan``: after ``nodes add cl nN+1`` (an empty node), ``rebalance
  cl`` (the plan only); the node is removed again afterwards.

Why the branch is written with ``git fast-import``: ``git annex setpresentkey
--batch`` writes one journal file per key and commits them all at the end, which
takes minutes at a million keys; a location log is a small text file at a fixed
place (``aaa/bbb/KEY.log``, lines ``<time>s 1 <uuid>``), so one fast-import
stream of N distinct blobs (each its own timestamp, as real logs have) on top of
the branch's tip writes the same tree in seconds. git-annex takes the new tip like
any other branch update (its index is brought up to date on its next command);
``git annex whereis --key`` of a sample key proves that it reads the logs.

Populated trees are cached (``--cache``, by default ``/tmp/scale-keys-cache``),
one directory per node and key count, since a million keys take minutes and
about 25 GB of directory blocks to write; ``--no-cache`` builds under ``--work``
and removes the tree afterwards.

Run it: ``.venv/bin/python bench/scale_keys.py --counts 10000,100000,1000000``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import REPO, Harness, load_average

from shared.cluster.placement import Ranker

DEFAULT_CACHE = Path("/tmp/scale-keys-cache")
COPIES = 2
COMMANDS = ("status", "rebalance-plan", "repair-dry-run", "fsck-sample")
CLUSTER = REPO / ".venv" / "bin" / "git-annex-remote-cluster"
STAMP = 1_700_000_000  # location logs' base time (each key gets its own on top)


class _Named:
    def __init__(self, name: str) -> None:
        self.name = name


def key_of(i: int) -> tuple[str, bytes]:
    """Key i's text and content: tiny, distinct, with a real SHA256E hash."""
    data = b"scale-keys %d\n" % i
    return f"SHA256E-s{len(data)}--{hashlib.sha256(data).hexdigest()}.bin", data


def hashdir(key: str) -> str:
    """git-annex's hashDirLower of a key without chunk fields: ``aaa/bbb``."""
    digest = hashlib.md5(key.encode()).hexdigest()
    return f"{digest[:3]}/{digest[3:6]}"


def node_names(nodes: int) -> list[str]:
    return [f"n{i:02d}" for i in range(1, nodes + 1)]


def populate_nodes(root: Path, count: int, names: Sequence[str]) -> None:
    """Write ``count`` keys into the node directories under ``root``, each on the
    ``COPIES`` nodes placement picks, as ``FileNode`` stores them (object 0444)."""
    ranker = Ranker([_Named(n) for n in names], [1.0] * len(names))
    made: list[set[str]] = [set() for _ in names]
    index = {n: i for i, n in enumerate(names)}
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    start = time.monotonic()
    for i in range(count):
        key, data = key_of(i)
        where = hashdir(key)
        top = where[:3]
        for node in ranker.order(key)[:COPIES]:
            n = index[node.name]
            base = f"{root}/{node.name}"
            if where not in made[n]:
                if top not in made[n]:
                    os.makedirs(f"{base}/{top}", exist_ok=True)
                    made[n].add(top)
                os.makedirs(f"{base}/{where}", exist_ok=True)
                made[n].add(where)
            keydir = f"{base}/{where}/{key}"
            os.mkdir(keydir)
            fd = os.open(f"{keydir}/{key}", flags, 0o444)
            os.write(fd, data)
            os.close(fd)
        if i and i % 100_000 == 0:
            print(f"  {i} keys written ({time.monotonic() - start:.0f} s)", file=sys.stderr)


def import_location_logs(h: Harness, repo: Path, count: int, uuid: str) -> None:
    """A commit on top of the git-annex branch with a location log per key saying
    ``uuid`` holds it, written by one ``git fast-import`` (see the module docstring)."""
    tip = h.git(repo, "rev-parse", "refs/heads/git-annex").strip()
    stream = h.scratch / "tmp" / "location-logs.fast-import"
    with open(stream, "wb") as out:
        for i in range(count):
            text = b"%d.%09ds 1 %s\n" % (STAMP + i // 1000, i % 1000 * 1000, uuid.encode())
            out.write(b"blob\nmark :%d\ndata %d\n%s\n" % (i + 1, len(text), text))
        out.write(
            b"commit refs/heads/git-annex\ncommitter scale <scale@localhost> %d +0000\n"
            b"data 24\nscale-keys location logs\nfrom %s\n" % (STAMP, tip.encode())
        )
        for i in range(count):
            key, _ = key_of(i)
            out.write(b"M 100644 :%d %s/%s.log\n" % (i + 1, hashdir(key).encode(), key.encode()))
        out.write(b"\n")
    try:
        with open(stream, "rb") as src, open(h.logs / "setup.log", "a") as log:
            proc = subprocess.run(
                ["git", "fast-import", "--quiet"], cwd=repo, env=h.env, stdin=src,
                stdout=log, stderr=log, check=False,
            )  # fmt: skip
    finally:
        stream.unlink()
    if proc.returncode != 0:
        raise RuntimeError(f"git fast-import exited {proc.returncode}: see {h.logs}/setup.log")


def tools(work: Path) -> Harness:
    """The harness over ``work``: git-annex and our remote on PATH, a HOME of its own."""
    work.mkdir(parents=True, exist_ok=True)
    h = Harness(work, timeout=3600)
    for d in (h.bin, h.home, h.logs, work / "tmp"):
        d.mkdir(parents=True, exist_ok=True)
    for name, target in (
        ("git-annex", h.ga),
        ("git-annex-shell", h.ga),
        ("git-annex-remote-cluster", CLUSTER),
    ):
        link = h.bin / name
        if not link.is_symlink():
            link.symlink_to(target)
    (h.home / ".gitconfig").write_text(
        "[user]\n\tname = Scale\n\temail = scale@localhost\n[init]\n\tdefaultBranch = main\n"
    )
    return h


def build(h: Harness, tree: Path, count: int, nodes: int) -> None:
    """The repository and its populated nodes under ``tree`` (see the module docstring);
    ``tree/complete`` marks a finished build, which later runs reuse."""
    if (tree / "complete").exists():
        return
    shutil.rmtree(tree, ignore_errors=True)
    repo, names = tree / "repo", node_names(nodes + 1)
    for name in names:
        (tree / "nodes" / name).mkdir(parents=True)
    repo.mkdir(parents=True)
    t0 = time.monotonic()
    h.git(repo, "init", "-q")
    h.run("git", "annex", "init", "-q", "scale", cwd=repo)
    spec = " ".join(f"{n}={(tree / 'nodes' / n).as_uri()}" for n in names[:nodes])
    h.run("git", "annex", "initremote", "cl", "type=external", "externaltype=cluster",
          f"nodes={spec}", "encryption=none", f"copies={COPIES}", cwd=repo)  # fmt: skip
    uuid = h.git(repo, "config", "remote.cl.annex-uuid").strip()
    print(f"populating {count} keys x {COPIES} copies on {nodes} nodes in {tree}", file=sys.stderr)
    populate_nodes(tree / "nodes", count, names[:nodes])
    t1 = time.monotonic()
    import_location_logs(h, repo, count, uuid)
    t2 = time.monotonic()
    first, _ = key_of(0)
    where = h.run("git", "annex", "whereis", f"--key={first}", cwd=repo, check=False)
    if "[cl]" not in where:
        raise RuntimeError(f"git-annex does not read the imported location logs:\n{where}")
    t3 = time.monotonic()
    print(
        f"  nodes {t1 - t0:.0f} s, location logs {t2 - t1:.0f} s, git-annex takes the branch "
        f"{t3 - t2:.0f} s",
        file=sys.stderr,
    )
    (tree / "complete").write_text(f"{count} keys, {nodes} nodes, copies={COPIES}\n")


def _nodes_listed(h: Harness, repo: Path, program: Path) -> list[str]:
    out = h.run(str(program), "nodes", "list", "cl", "--json", cwd=repo)
    return [str(n["name"]) for n in json.loads(out)]


def _timed(
    h: Harness, repo: Path, program: Path, command: str, keys: int, argv: list[str]
) -> dict[str, Any]:
    wall, busy, _steal, ru = h.timed([str(program), *argv], repo, f"{command}-{keys}")
    return {
        "command": command,
        "keys": keys,
        "wall_s": round(wall, 3),
        "cpu_s": round(ru.ru_utime + ru.ru_stime, 3),
        "machine_busy_s": round(busy, 1),
        "peak_rss_mib": round(ru.ru_maxrss / 1024, 1),
        "per_key_us": round(wall / keys * 1e6, 3),
    }


def measure_one(
    h: Harness, tree: Path, count: int, nodes: int, program: Path = CLUSTER
) -> list[dict[str, Any]]:
    """The four commands on one populated tree; the tree is left as it was found."""
    repo = tree / "repo"
    extra = node_names(nodes + 1)[-1]
    if extra in _nodes_listed(h, repo, program):  # an interrupted run left it
        h.run(str(program), "nodes", "remove", "cl", extra, cwd=repo)
    fsck = ["fsck", "cl", "--sample", "1%", "--seed", "1"]
    rows = [
        _timed(h, repo, program, "status", count, ["status", "cl"]),
        _timed(h, repo, program, "repair-dry-run", count, ["repair", "cl", "--dry-run"]),
        _timed(h, repo, program, "fsck-sample", count, fsck),
    ]
    shutil.rmtree(tree / "nodes" / extra, ignore_errors=True)
    (tree / "nodes" / extra).mkdir()
    h.run(str(program), "nodes", "add", "cl", extra, (tree / "nodes" / extra).as_uri(), cwd=repo)
    try:
        plan = ["rebalance", "cl", "--dry-run"]
        rows.insert(1, _timed(h, repo, program, "rebalance-plan", count, plan))
    finally:
        h.run(str(program), "nodes", "remove", "cl", extra, cwd=repo)
    return rows


def measure(
    work: Path,
    counts: Sequence[int],
    nodes: int = 12,
    cache: Path | None = DEFAULT_CACHE,
    program: Path = CLUSTER,
) -> list[dict[str, Any]]:
    """Rows ``{"command", "keys", "wall_s", "peak_rss_mib", "per_key_us"}`` (plus
    ``cpu_s``: the command's user+system CPU, and ``machine_busy_s``) for each key
    count and each of ``COMMANDS``. ``cache``: where populated trees are kept between
    runs (None: built under ``work`` and removed afterwards). ``program``: the
    ``git-annex-remote-cluster`` to measure (another build's, to compare)."""
    h = tools(work)
    rows: list[dict[str, Any]] = []
    try:
        for count in counts:
            tree = (cache or work / "trees") / f"{nodes}x{count}"
            build(h, tree, count, nodes)
            try:
                rows += measure_one(h, tree, count, nodes, program)
            finally:
                if cache is None:
                    _remove_tree(tree)
    finally:
        h.cleanup()
    return rows


def _remove_tree(tree: Path) -> None:
    """Objects are read-only, in writable directories: rmtree removes them."""
    shutil.rmtree(tree, ignore_errors=True)


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    head = ("COMMAND", "KEYS", "WALL s", "CPU s", "PEAK RSS MiB", "us/KEY")
    lines = [head] + [
        (r["command"], str(r["keys"]), f"{r['wall_s']:.2f}", f"{r['cpu_s']:.2f}",
         f"{r['peak_rss_mib']:.0f}", f"{r['per_key_us']:.1f}")
        for r in sorted(rows, key=lambda r: (COMMANDS.index(r["command"]), r["keys"]))
    ]  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    for line in lines:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                        enumerate(zip(line, widths, strict=True))))  # fmt: skip
    counts = sorted({r["keys"] for r in rows})
    if len(counts) > 1:
        lo, hi = counts[0], counts[-1]
        for command in COMMANDS:
            by = {r["keys"]: r for r in rows if r["command"] == command}
            if lo in by and hi in by:
                ratio = by[hi]["per_key_us"] / by[lo]["per_key_us"]
                print(
                    f"{command}: per-key time at {hi} keys is {ratio:.2f}x that at {lo} "
                    f"(target 1.5x); peak RSS {by[hi]['peak_rss_mib']:.0f} MiB (target 300)"
                )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--counts", default="10000,100000,1000000", help="key counts, comma-separated")
    ap.add_argument("--nodes", type=int, default=12)
    ap.add_argument("--work", type=Path, default=Path("/tmp/scale-keys-work"))
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="populated trees kept here")
    ap.add_argument("--no-cache", action="store_true", help="build under --work, remove after")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    ap.add_argument(
        "--program", type=Path, default=CLUSTER, help="the git-annex-remote-cluster to measure"
    )
    args = ap.parse_args()
    counts = [int(c) for c in args.counts.split(",") if c.strip()]
    rows = measure(
        args.work, counts, args.nodes, None if args.no_cache else args.cache, args.program
    )
    print(f"load average {load_average()} (2 cores shared with other work)")
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps({"load": load_average(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
