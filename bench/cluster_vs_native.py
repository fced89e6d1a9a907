#!/usr/bin/env python3
"""Our cluster special remote against git-annex's native cluster, on the same machine, in one run.

Three private sshd "hosts" on 127.0.0.1 carry both clusters: the native one
(a gateway repo on host1 proxying three node repos, reached by the client over
ssh) and ours (``externaltype=cluster`` with one ``sftp://`` node per host).
Each measurement times one ``git annex copy``/``get`` and reports wall time,
client CPU, the client's peak RSS and whole-machine CPU. See bench/README.md.
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import importlib.util
import json
import operator
import os
import shutil
import signal
import statistics
import sys
import time
from argparse import SUPPRESS
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from subprocess import DEVNULL, PIPE, Popen
from typing import Any

from shared.nodeurl import parse_size

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from sshd import SSHD, ssh_config_for  # tests/sshd.py: private sshd, stopped by pid

REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
HZ = os.sysconf("SC_CLK_TCK")
HOSTS = (1, 2, 3)
BIG, SMALL = "big.bin", "small"
OPS = ("big-copy", "big-get", "small-copy", "small-get")
JOBS = (1, 4)
Medians = dict[tuple[str, str, int], dict[str, float]]  # (impl, op, jobs) -> figures


@dataclass
class Sample:
    impl: str  # native | ours
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
    node_dirs: list[Path]
    keys: dict[str, set[str]]  # BIG / SMALL -> annex keys


def machine_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / HZ, v[7] / HZ


def real_git_annex() -> Path:
    spec = importlib.util.find_spec("git_annex")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the PyPI git-annex package is missing from this Python: run make venv")
    return Path(next(iter(spec.submodule_search_locations))) / "git-annex"


class Bench:
    """The scratch world: tools, HOME, sshd hosts, and every process we started."""

    def __init__(self, scratch: Path, our_scheme: str) -> None:
        self.scratch, self.our_scheme = scratch, our_scheme
        self.bin, self.srvbin = scratch / "bin", scratch / "srvbin"
        self.home, self.logs = scratch / "home", scratch / "logs"
        self.sshds: list[SSHD] = []
        self.current: Popen[Any] | None = None
        self.clients: list[Path] = []
        self.ga = real_git_annex()
        self.env = {
            "PATH": f"{self.bin}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "GIT_CONFIG_NOSYSTEM": "1",
            "MAGIC": str(self.ga.parent / "magic.mgc"),
            "TMPDIR": str(scratch / "tmp"),
        }

    # -- processes ------------------------------------------------------------

    def spawn(self, argv: list[str], cwd: Path | None, out: Any, err: Any, **kw: Any) -> Popen[Any]:
        """Start a command in its own process group, so cleanup can kill git *and* git-annex."""
        kw.update(cwd=cwd, env=self.env, stdin=DEVNULL, stdout=out, stderr=err, process_group=0)
        self.current = Popen(argv, **kw)
        return self.current

    def run(self, *cmd: str | Path, cwd: Path | None = None, check: bool = True) -> str:
        """An untimed step; its output goes to logs/setup.log, stdout is returned."""
        argv = [str(c) for c in cmd]
        p = self.spawn(argv, cwd, PIPE, PIPE, text=True)
        out, err = p.communicate()
        self.current = None
        with open(self.logs / "setup.log", "a") as log:
            log.write(f"$ {' '.join(argv)}  (in {cwd})\n{out}{err}")
        if check and p.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {p.returncode}:\n{err}")
        return str(out)

    def git(self, cwd: Path | None, *args: str | Path) -> str:
        return self.run("git", *args, cwd=cwd)

    def timed(self, cmd: list[str], cwd: Path, label: str) -> tuple[float, float, float, Any]:
        """Run cmd after a sync: wall s, busy and steal machine CPU s, the tree's rusage."""
        os.sync()
        b0, s0 = machine_cpu()
        t0 = time.monotonic()
        with open(self.logs / f"{label}.log", "w") as log:
            p = self.spawn(cmd, cwd, log, log)
            _, status, ru = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            self.current = None
        wall = time.monotonic() - t0
        b1, s1 = machine_cpu()
        if p.returncode != 0:
            tail = (self.logs / f"{label}.log").read_text()[-2000:]
            raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}:\n{tail}")
        return wall, b1 - b0, s1 - s0, ru

    def close_masters(self) -> None:
        """git-annex leaves ssh ControlMasters (ControlPersist) behind after -J runs: end them."""
        for client in self.clients:
            for sock in (client / ".git/annex/ssh").glob("*"):
                if sock.is_socket():
                    self.run("ssh", "-S", sock, "-O", "exit", sock.name, check=False)

    def cleanup(self) -> None:
        """Idempotent: the finally block, atexit and signals may all get here."""
        if self.current is not None:
            with suppress(ProcessLookupError):
                os.killpg(self.current.pid, signal.SIGKILL)
            self.current = None
        self.close_masters()
        for server in self.sshds:
            server.stop()  # by pid: the listener and its connection children

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

    def build_native(self) -> Cluster:
        """As anchors/native-cluster.sh: gateway on host1 proxying 3 node repos; ssh client."""
        gw, client = self.scratch / "host1/gateway", self.scratch / "client-native"
        nodes = [self.scratch / f"host{i}/native-node{i}" for i in HOSTS]
        self.git(None, "init", "-q", "--bare", gw)
        self.git(gw, "annex", "init", "-q", "gateway")
        self.git(None, "clone", "-q", f"benchhost1:{gw}", client)
        self.clients.append(client)
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
        return Cluster("native", client, "origin-mycluster", nodes, keys)

    def build_ours(self) -> Cluster:
        client = self.scratch / "client-ours"
        nodes = [self.scratch / f"host{i}/ours-node{i}" for i in HOSTS]
        for d in (client, *nodes):
            d.mkdir()
        self.clients.append(client)
        self.git(client, "init", "-q")
        self.git(client, "annex", "init", "-q", "client-ours")
        if self.our_scheme == "sftp":
            urls = [f"sftp://benchhost{i}{d}" for i, d in zip(HOSTS, nodes, strict=True)]
        else:
            urls = [f"file://{d}" for d in nodes]
        node_list = " ".join(f"n{i}={u}" for i, u in zip(HOSTS, urls, strict=True))
        init = "annex initremote ours type=external externaltype=cluster encryption=none copies=3"
        self.git(client, *init.split(), f"nodes={node_list}")
        return Cluster("ours", client, "ours", nodes, self.add_data(client))

    # -- one measurement ------------------------------------------------------

    def measure(self, cl: Cluster, op: str, jobs: int, rep: int, sums: dict[str, str]) -> Sample:
        what = BIG if op.startswith("big") else SMALL
        if op.endswith("copy"):  # the cluster must not have it, or copy is skipped
            self.git(cl.client, "annex", "get", "-J4", what)
            self.git(cl.client, "annex", "drop", "-J4", "--from", cl.remote, what)
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


def check_nodes(cl: Cluster, what: str) -> None:
    """After a copy, each of the 3 node directories holds every object (temp dirs excluded)."""
    for node in cl.node_dirs:
        names: set[str] = set()
        for _top, dirs, files in os.walk(node):
            dirs[:] = [d for d in dirs if d != "tmp"]
            names.update(files)
        missing = cl.keys[what] - names
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
    def cells(m: dict[str, float] | None, op: str) -> list[str]:
        if m is None:
            return ["-"] * 4
        unit = "MiB/s" if op.startswith("big") else "files/s"
        return [
            f"{m['wall_s']:.2f}",
            f"{m['client_cpu_s']:.1f} / {m['machine_cpu_s']:.1f}",
            f"{m['rate']:.1f} {unit}",
            f"{m['client_rss_mib']:.0f}",
        ]

    cols = ("wall s", "CPU s client/machine", "rate", "peak RSS MiB")
    head = ["operation", "-J", *(f"{i} {c}" for i in ("native", "ours") for c in cols)]
    head.append("ours/native wall")
    rows = [head, ["---"] * len(head)]
    for op in OPS:
        for j in JOBS:
            n, o = med.get(("native", op, j)), med.get(("ours", op, j))
            if n is None and o is None:
                continue
            ratio = f"{o['wall_s'] / n['wall_s']:.2f}" if n and o else "-"
            rows.append([op_name(op, size, count), str(j), *cells(n, op), *cells(o, op), ratio])
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


COMPARE = {"<=": operator.le, ">=": operator.ge, "<": operator.lt}
TARGETS = (  # the targets as (name, op, field, comparison, bound) on ours/native
    ("big copy wall ours/native", "big-copy", "wall_s", "<=", 0.5),
    ("big get wall ours/native", "big-get", "wall_s", "<=", 1.0),
    ("small copy files/s ours/native", "small-copy", "rate", ">=", 2.0),
)


def verdict(name: str, jobs: int, value: float | None, cmp: str, bound: float) -> dict[str, Any]:
    ok = None if value is None else COMPARE[cmp](value, bound)
    result = "n/a" if ok is None else "PASS" if ok else "FAIL"
    return dict(target=name, jobs=jobs, value=value, limit=f"{cmp} {bound:g}", result=result)


def targets(med: Medians) -> list[dict[str, Any]]:
    """Each target per -J; n/a where a side was not measured."""
    out = []
    for j in JOBS:
        for name, op, field, cmp, bound in TARGETS:
            n, o = med.get(("native", op, j)), med.get(("ours", op, j))
            out.append(verdict(name, j, o[field] / n[field] if n and o else None, cmp, bound))
        rss = [m["client_rss_mib"] for op in OPS[:2] if (m := med.get(("ours", op, j)))]
        out.append(verdict("ours peak RSS MiB, big file", j, max(rss, default=None), "<", 200))
    return out


# -- main ------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/cluster-bench"), help="scratch dir")
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir afterwards")
    ap.add_argument("--size", type=parse_size, help="big file size (default 500MiB)")
    ap.add_argument("--small-count", type=int, help="number of 4 KiB files (default 1000)")
    ap.add_argument("--repeat", type=int, default=1, help="repetitions; the table shows medians")
    ap.add_argument("--only", choices=("ours", "native"), help="measure one side only")
    ap.add_argument("--quick", action="store_true", help="smoke run: 50 MiB and 100 files")
    ap.add_argument("--json", type=Path, help="write the raw samples and targets here")
    ap.add_argument("--our-scheme", choices=("sftp", "file"), default="sftp", help=SUPPRESS)
    args = ap.parse_args()
    args.size = args.size or (50 * MIB if args.quick else 500 * MIB)
    args.small_count = args.small_count or (100 if args.quick else 1000)
    return args


def main() -> int:
    args = parse_args()
    scratch: Path = args.dir.resolve()
    if scratch in (Path("/"), Path.home(), REPO) or REPO.is_relative_to(scratch):
        sys.exit(f"refusing to wipe {scratch}")
    shutil.rmtree(scratch, ignore_errors=True)
    bench = Bench(scratch, args.our_scheme)
    atexit.register(bench.cleanup)

    def on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    t0, load = time.monotonic(), Path("/proc/loadavg").read_text().split()[0]
    try:
        bench.setup_tools()
        print(f"setting up under {scratch} (logs in {bench.logs})", flush=True)
        bench.start_hosts()
        sums = bench.make_data(args.size, args.small_count)
        clusters = []
        if args.only != "ours":
            clusters.append(bench.build_native())
        if args.only != "native":
            clusters.append(bench.build_ours())
        print(f"setup done in {time.monotonic() - t0:.0f} s; measuring", flush=True)
        samples = [
            bench.measure(cl, op, j, rep, sums)
            for j in JOBS
            for op in OPS
            for rep in range(1, args.repeat + 1)
            for cl in clusters
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
    results = targets(med)
    print(
        f"\ngit-annex {version}, {os.cpu_count()} CPUs, ours over {args.our_scheme}://, "
        f"medians of {args.repeat}, load at start {load}, total {time.monotonic() - t0:.0f} s\n"
    )
    print(table(med, args.size, args.small_count))
    print("\n| target | -J | measured | limit | result |\n|---|---|---|---|---|")
    for t in results:
        v = "-" if t["value"] is None else f"{t['value']:.2f}"
        print(f"| {t['target']} | {t['jobs']} | {v} | {t['limit']} | {t['result']} |")
    if args.json:
        config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        samples_ = [asdict(s) for s in samples]
        doc = dict(git_annex=version, load=load, config=config, samples=samples_, targets=results)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"\nraw results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
