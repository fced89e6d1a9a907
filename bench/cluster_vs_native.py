#!/usr/bin/env python3
"""Our cluster special remote against git-annex's native cluster, on the same machine, in one run.

Three private sshd "hosts" on 127.0.0.1 carry three contenders: the native
cluster (a gateway repo on host1 proxying three node repos, reached by the
client over ssh), "ours" (``externaltype=cluster`` with one ``sftp://`` node per
host) and "ours-annex" (our cluster remote with one ``annex+ssh://`` node per
host: the native cluster's own node repos). Each measurement times one
``git annex copy``/``get`` and reports wall time, client CPU, the client's peak
RSS and whole-machine CPU. See bench/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import operator
import os
import shutil
import statistics
import sys
import time
from argparse import SUPPRESS
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from harness import (
    MIB,
    REPO,
    Harness,
    contenders_of,
    fresh_scratch,
    load_average,
    write_results,
)
from sshd import SSHD, ssh_config_for  # tests/sshd.py: private sshd, stopped by pid

from shared.nodes.url import parse_size

HOSTS = (1, 2, 3)
BIG, SMALL = "big.bin", "small"
OPS = ("big-copy", "big-get", "small-copy", "small-get")
JOBS = (1, 4)
CONTENDERS = ("native", "ours", "ours-annex")  # native first: the others are measured against it
OURS = CONTENDERS[1:]
Medians = dict[tuple[str, str, int], dict[str, float]]  # (impl, op, jobs) -> figures


@dataclass
class Sample:
    impl: str  # one of CONTENDERS
    op: str  # one of OPS
    jobs: int
    rep: int
    units: int  # bytes (big) or files (small)
    wall_s: float
    client_cpu_s: float  # user+sys of the client tree (waited-for children included)
    client_rss_mib: float  # largest single process of the client tree (like GNU time %M)
    machine_cpu_s: float  # /proc/stat busy delta, steal excluded
    steal_s: float


@dataclass
class Cluster:
    impl: str
    client: Path
    remote: str
    node_dirs: list[Path]  # where each node keeps its objects (annex/objects of a node repo)
    keys: dict[str, set[str]]  # BIG / SMALL -> annex keys


class Bench(Harness):
    """The scratch world: tools, HOME, three sshd hosts, and every process we started."""

    def __init__(self, scratch: Path, our_scheme: str) -> None:
        super().__init__(scratch)
        self.our_scheme = our_scheme
        self.clusters: list[Cluster] = []  # every contender built, measured or not

    # -- the world --------------------------------------------------------------

    def setup_tools(self) -> None:
        for d in (self.bin, self.srvbin, self.home, self.logs, self.scratch / "tmp"):
            d.mkdir(parents=True, exist_ok=True)
        for name in ("git-annex", "git-annex-shell", "git-remote-annex"):
            (self.bin / name).symlink_to(self.ga)  # the multicall binary, not the Python wrapper
        remote = REPO / ".venv/bin/git-annex-remote-cluster"
        (self.bin / "git-annex-remote-cluster").symlink_to(remote)
        # OpenSSH reads the passwd home, not $HOME: point it at the benchmark's config.
        wrappers = {self.bin / "ssh": 'exec /usr/bin/ssh -F "$HOME/.ssh/config" "$@"'}
        for name in ("git-annex", "git-annex-shell"):  # server side: isolated HOME there too
            env = " ".join(f"{k}={self.env[k]}" for k in ("HOME", "GIT_CONFIG_NOSYSTEM", "MAGIC"))
            wrappers[self.srvbin / name] = f'export {env}\nexec {self.bin / name} "$@"'
        for path, body in wrappers.items():
            path.write_text(f"#!/bin/sh\n{body}\n")
            path.chmod(0o755)
        (self.home / ".gitconfig").write_text(
            "[user]\n\tname = bench\n\temail = bench@localhost\n[init]\n\tdefaultBranch = main\n"
        )

    def start_hosts(self) -> None:
        """Three private sshd (tests/sshd.py) on 127.0.0.1: aliases benchhost1..3 in $HOME/.ssh."""
        key = self.scratch / "client_key"
        self.run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", key)
        path = (str(self.srvbin), str(self.bin), "/usr/local/bin", "/usr/bin", "/bin")
        for i in HOSTS:
            self.sshds.append(SSHD(self.scratch / f"host{i}", key, path=path, name=f"benchhost{i}"))
            self.sshds[-1].start()
        ssh_config_for(self.home, {s.name: s for s in self.sshds}, key)
        for s in self.sshds:  # also proves the server side finds git-annex-shell on its PATH
            self.run("ssh", s.name, "command -v git-annex-shell && git-annex version --raw")

    def make_data(self, size: int, count: int) -> dict[str, str]:
        """big.bin (random, `size` bytes) and `count` random 4 KiB files; name -> sha256."""
        data, sums = self.scratch / "data", {}
        (data / SMALL).mkdir(parents=True)
        h = hashlib.sha256()
        with open(data / BIG, "wb") as f:
            for off in range(0, size, MIB):
                block = os.urandom(min(MIB, size - off))
                h.update(block)
                f.write(block)
        sums[BIG] = h.hexdigest()
        for n in range(count):
            block = os.urandom(4096)
            (data / SMALL / f"f{n:05d}.bin").write_bytes(block)
            sums[f"{SMALL}/f{n:05d}.bin"] = hashlib.sha256(block).hexdigest()
        return sums

    def add_data(self, client: Path) -> dict[str, set[str]]:
        shutil.copy(self.scratch / "data" / BIG, client / BIG)
        shutil.copytree(self.scratch / "data" / SMALL, client / SMALL)
        self.git(client, "annex", "add", "--quiet", BIG, SMALL)
        self.git(client, "commit", "-qm", "data")
        fmt = "--format=${key}\\n"
        return {w: set(self.git(client, "annex", "find", fmt, w).split()) for w in (BIG, SMALL)}

    def native_nodes(self) -> list[Path]:
        return [self.scratch / f"host{i}/native-node{i}" for i in HOSTS]

    def build_native(self) -> Cluster:
        """As anchors/native-cluster.sh: gateway on host1 proxying 3 node repos; ssh client."""
        gw, client = self.scratch / "host1/gateway", self.scratch / "client-native"
        nodes = self.native_nodes()
        self.git(None, "init", "-q", "--bare", gw)
        self.git(gw, "annex", "init", "-q", "gateway")
        self.git(None, "clone", "-q", f"benchhost1:{gw}", client)
        self.ssh_dirs.append(client / ".git/annex/ssh")
        self.git(client, "annex", "init", "-q", "client-native")
        self.git(client, "commit", "-q", "--allow-empty", "-m", "init")
        self.git(client, "annex", "sync", "-q", "--no-content", "origin")
        for i, node in zip(HOSTS, nodes, strict=True):
            self.git(None, "clone", "-q", "--bare", gw, node)
            self.git(node, "annex", "init", "-q", f"node{i}")
        self.git(gw, "annex", "initcluster", "mycluster")
        for i, node in zip(HOSTS, nodes, strict=True):
            self.git(gw, "remote", "add", f"node{i}", node)
            self.git(gw, "config", f"remote.node{i}.annex-cluster-node", "mycluster")
            self.git(gw, "config", f"remote.node{i}.annex-proxy", "true")
        self.git(gw, "fetch", "-q", "--all")
        self.git(gw, "annex", "updatecluster")
        self.git(gw, "config", "annex.jobs", "cpus")
        self.git(client, "fetch", "-q", "origin")
        self.git(client, "annex", "sync", "-q", "--no-content", "origin")
        self.git(client, "annex", "wanted", "origin", "nothing")
        keys = self.add_data(client)
        self.git(client, "annex", "sync", "-q", "--no-content", "origin")
        objects = [n / "annex/objects" for n in nodes]
        return self.add_cluster(Cluster("native", client, "origin-mycluster", objects, keys))

    def build_ours(self) -> Cluster:
        """Our cluster remote over 3 plain directories, one per host, next to the native nodes."""
        nodes = [self.scratch / f"host{i}/ours-node{i}" for i in HOSTS]
        for d in nodes:
            d.mkdir()
        if self.our_scheme == "sftp":
            urls = [f"sftp://benchhost{i}{d}" for i, d in zip(HOSTS, nodes, strict=True)]
        else:
            urls = [f"file://{d}" for d in nodes]
        return self.build_our_client("ours", urls, nodes)

    def build_ours_annex(self) -> Cluster:
        """Our cluster remote over the native cluster's own node repos, via git-annex-shell."""
        nodes = self.native_nodes()
        urls = []
        for i, node in zip(HOSTS, nodes, strict=True):
            uuid = self.git(node, "config", "annex.uuid").strip()  # saves a configlist per process
            where = f"annex+ssh://benchhost{i}" if self.our_scheme == "sftp" else "annex://"
            urls.append(f"{where}{quote(str(node))}?uuid={uuid}")
        return self.build_our_client("ours-annex", urls, [n / "annex/objects" for n in nodes])

    def build_our_client(self, impl: str, urls: list[str], node_dirs: list[Path]) -> Cluster:
        """client-IMPL with our cluster remote IMPL (copies=3) over these node URLs."""
        client = self.scratch / f"client-{impl}"
        client.mkdir()
        self.ssh_dirs.append(client / ".git/annex/ssh")
        self.git(client, "init", "-q")
        self.git(client, "annex", "init", "-q", f"client-{impl}")
        node_list = " ".join(f"n{i}={u}" for i, u in zip(HOSTS, urls, strict=True))
        init = "type=external externaltype=cluster encryption=none copies=3"
        self.git(client, "annex", "initremote", impl, *init.split(), f"nodes={node_list}")
        return self.add_cluster(Cluster(impl, client, impl, node_dirs, self.add_data(client)))

    def add_cluster(self, cl: Cluster) -> Cluster:
        self.clusters.append(cl)
        return cl

    # -- one measurement ------------------------------------------------------

    def clear_nodes(self, cl: Cluster, what: str) -> None:
        """Before a copy: the content is local and no node of cl holds it, whoever stored it.

        ours-annex and native share their node repos. A contender's drop only removes
        what its own location log knows about, so what the other one stored there is
        dropped through the other one's client.
        """
        self.git(cl.client, "annex", "get", "-J4", what)
        self.git(cl.client, "annex", "drop", "-J4", "--force", "--from", cl.remote, what)
        sharing = [o for o in self.clusters if o is not cl and set(o.node_dirs) & set(cl.node_dirs)]
        for other in sharing:
            if held(cl, what):
                self.git(
                    other.client, "annex", "drop", "-J4", "--force", "--from", other.remote, what
                )
        if left := held(cl, what):
            where = ", ".join(f"{d}: {len(k)}" for d, k in left.items())
            raise RuntimeError(f"{cl.impl}: objects still on the nodes before the copy ({where})")

    def measure(self, cl: Cluster, op: str, jobs: int, rep: int, sums: dict[str, str]) -> Sample:
        what = BIG if op.startswith("big") else SMALL
        if op.endswith("copy"):  # the cluster must not have it, or copy is skipped
            self.clear_nodes(cl, what)
            cmd = ["git", "annex", "copy", f"-J{jobs}", "--to", cl.remote, what]
        else:
            self.git(cl.client, "annex", "drop", "-J4", "--force", what)
            cmd = ["git", "annex", "get", f"-J{jobs}", "--from", cl.remote, what]
        self.close_masters()  # every measurement starts without a warm ssh connection
        label = f"{cl.impl}-{op}-J{jobs}-{rep}"
        wall, busy, steal, ru = self.timed(cmd, cl.client, label)
        if op.endswith("copy"):
            check_nodes(cl, what)
        else:
            check_content(cl.client, what, sums)
        units = len(cl.keys[SMALL]) if what == SMALL else (cl.client / BIG).stat().st_size
        cpu, rss = round(ru.ru_utime + ru.ru_stime, 2), round(ru.ru_maxrss / 1024, 1)
        busy, steal, wall = round(busy, 2), round(steal, 2), round(wall, 3)
        sample = Sample(cl.impl, op, jobs, rep, units, wall, cpu, rss, busy, steal)
        print(f"  {label}: {wall:.2f} s wall, {sample.machine_cpu_s:.1f} s machine CPU", flush=True)
        return sample


def object_names(node_dir: Path) -> set[str]:
    """The names of all files under a node's object directory, temp dirs excluded.

    An object is a file named after its key: ours' directory layout, and any hash
    layout of a repo's annex/objects.
    """
    names: set[str] = set()
    for _top, dirs, files in os.walk(node_dir):
        dirs[:] = [d for d in dirs if d != "tmp"]
        names.update(files)
    return names


def held(cl: Cluster, what: str) -> dict[Path, set[str]]:
    """The keys of `what` that each node of cl holds; only nodes holding some."""
    found = {d: cl.keys[what] & object_names(d) for d in cl.node_dirs}
    return {d: keys for d, keys in found.items() if keys}


def check_nodes(cl: Cluster, what: str) -> None:
    """After a copy, each of the 3 node directories holds every object."""
    for node in cl.node_dirs:
        missing = cl.keys[what] - object_names(node)
        if missing:
            raise RuntimeError(f"{cl.impl}: {len(missing)} object(s) missing on {node}")


def check_content(client: Path, what: str, sums: dict[str, str]) -> None:
    """After a get, every file hashes to what was recorded when it was made."""
    for name, want in sums.items():
        if name == what or name.startswith(f"{what}/"):
            h = hashlib.sha256()
            with open(client / name, "rb") as f:
                while block := f.read(MIB):
                    h.update(block)
            if h.hexdigest() != want:
                raise RuntimeError(f"{client.name}: {name} has the wrong content after get")


# -- reporting ------------------------------------------------------------------


def medians(samples: list[Sample]) -> Medians:
    out: Medians = {}
    for key in {(s.impl, s.op, s.jobs) for s in samples}:
        group = [s for s in samples if (s.impl, s.op, s.jobs) == key]
        med = {
            f: statistics.median(getattr(s, f) for s in group)
            for f in ("wall_s", "client_cpu_s", "machine_cpu_s", "units")
        }
        med["client_rss_mib"] = max(s.client_rss_mib for s in group)
        med["rate"] = med["units"] / med["wall_s"] / (MIB if key[1].startswith("big") else 1)
        out[key] = med
    return out


def op_name(op: str, size: int, count: int) -> str:
    what = f"{size / MIB:g} MiB" if op.startswith("big") else f"{count} x 4 KiB"
    return f"{op.split('-')[1]} {what}"


def table(med: Medians, size: int, count: int) -> str:
    """One row per operation, -J and contender measured; the last column is IMPL/native wall."""
    head = ["operation", "-J", "contender", "wall s", "CPU s client/machine", "rate"]
    head += ["peak RSS MiB", "/native wall"]
    rows = [head, ["---"] * len(head)]
    for op in OPS:
        unit = "MiB/s" if op.startswith("big") else "files/s"
        for j in JOBS:
            n = med.get(("native", op, j))
            for impl in CONTENDERS:
                if (m := med.get((impl, op, j))) is None:
                    continue
                ratio = "-" if n is None or impl == "native" else f"{m['wall_s'] / n['wall_s']:.2f}"
                rows.append(
                    [
                        op_name(op, size, count),
                        str(j),
                        impl,
                        f"{m['wall_s']:.2f}",
                        f"{m['client_cpu_s']:.1f} / {m['machine_cpu_s']:.1f}",
                        f"{m['rate']:.1f} {unit}",
                        f"{m['client_rss_mib']:.0f}",
                        ratio,
                    ]
                )
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


COMPARE = {"<=": operator.le, ">=": operator.ge, "<": operator.lt}
TARGETS = (  # the targets as (name, op, field, comparison, bound) on IMPL/native
    ("big copy wall {}/native", "big-copy", "wall_s", "<=", 0.5),
    ("big get wall {}/native", "big-get", "wall_s", "<=", 1.0),
    ("small copy files/s {}/native", "small-copy", "rate", ">=", 2.0),
)


def verdict(
    name: str, impl: str, jobs: int, value: float | None, cmp: str, bound: float
) -> dict[str, Any]:
    ok = None if value is None else COMPARE[cmp](value, bound)
    result = "n/a" if ok is None else "PASS" if ok else "FAIL"
    limit = f"{cmp} {bound:g}"
    return dict(target=name, contender=impl, jobs=jobs, value=value, limit=limit, result=result)


def targets(med: Medians, contenders: list[str]) -> list[dict[str, Any]]:
    """Each target per -J, for each of ours that was run; n/a where native was not measured."""
    out = []
    for impl in (c for c in OURS if c in contenders):
        for j in JOBS:
            for name, op, field, cmp, bound in TARGETS:
                n, o = med.get(("native", op, j)), med.get((impl, op, j))
                value = o[field] / n[field] if n and o else None
                out.append(verdict(name.format(impl), impl, j, value, cmp, bound))
            rss = [m["client_rss_mib"] for op in OPS[:2] if (m := med.get((impl, op, j)))]
            name = f"{impl} peak RSS MiB, big file"
            out.append(verdict(name, impl, j, max(rss, default=None), "<", 200))
    return out


# -- main ------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/cluster-bench"), help="scratch dir")
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir afterwards")
    ap.add_argument("--size", type=parse_size, help="big file size (default 500MiB)")
    ap.add_argument("--small-count", type=int, help="number of 4 KiB files (default 1000)")
    ap.add_argument("--repeat", type=int, default=1, help="repetitions; the table shows medians")
    which = ap.add_mutually_exclusive_group()
    which.add_argument(
        "--contenders",
        type=contenders_of(CONTENDERS),
        default=list(CONTENDERS),
        help=f"comma-separated, from {','.join(CONTENDERS)} (default: all)",
    )
    which.add_argument("--only", choices=CONTENDERS, help="measure this contender only")
    ap.add_argument("--quick", action="store_true", help="smoke run: 50 MiB and 100 files")
    ap.add_argument("--json", type=Path, help="write the raw samples and targets here")
    ap.add_argument("--our-scheme", choices=("sftp", "file"), default="sftp", help=SUPPRESS)
    args = ap.parse_args()
    if args.only:
        args.contenders = [args.only]
    args.size = args.size or (50 * MIB if args.quick else 500 * MIB)
    args.small_count = args.small_count or (100 if args.quick else 1000)
    return args


def main() -> int:
    args = parse_args()
    scratch = fresh_scratch(args.dir)
    bench = Bench(scratch, args.our_scheme)
    bench.install_cleanup()
    t0, load = time.monotonic(), load_average()
    try:
        bench.setup_tools()
        print(f"setting up under {scratch} (logs in {bench.logs})", flush=True)
        bench.start_hosts()
        sums = bench.make_data(args.size, args.small_count)
        # ours-annex uses the native cluster's node repos: they are built whenever it runs.
        if {"native", "ours-annex"} & set(args.contenders):
            bench.build_native()
        if "ours" in args.contenders:
            bench.build_ours()
        if "ours-annex" in args.contenders:
            bench.build_ours_annex()
        clusters = [cl for cl in bench.clusters if cl.impl in args.contenders]
        print(f"setup done in {time.monotonic() - t0:.0f} s; measuring", flush=True)
        # Each contender's get follows its own copy: the next contender's copy may empty
        # the shared node repos.
        samples = [
            bench.measure(cl, f"{what}-{step}", j, rep, sums)
            for j in JOBS
            for what in ("big", "small")
            for rep in range(1, args.repeat + 1)
            for cl in clusters
            for step in ("copy", "get")
        ]
        version = bench.run("git", "annex", "version", "--raw").strip()
    except RuntimeError as e:
        args.keep = True
        print(f"benchmark failed: {e}\n(kept {scratch} for its logs)", file=sys.stderr)
        return 1
    finally:
        bench.cleanup()
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    med = medians(samples)
    results = targets(med, args.contenders)
    annex = "annex+ssh" if args.our_scheme == "sftp" else "annex"
    print(
        f"\ngit-annex {version}, {os.cpu_count()} CPUs, ours over {args.our_scheme}://, "
        f"ours-annex over {annex}://, medians of {args.repeat}, load at start {load}, "
        f"total {time.monotonic() - t0:.0f} s\n"
    )
    print(table(med, args.size, args.small_count))
    print("\n| target | -J | measured | limit | result |\n|---|---|---|---|---|")
    for t in results:
        v = "-" if t["value"] is None else f"{t['value']:.2f}"
        print(f"| {t['target']} | {t['jobs']} | {v} | {t['limit']} | {t['result']} |")
    if args.json:
        write_results(args.json, args, samples, git_annex=version, load=load, targets=results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
