#!/usr/bin/env python3
"""How our costs grow: node count, clients, single-file latency, object size, key count.

One run on this machine measures ours against native git-annex where both exist
(issue 22), and writes ``table.md``, ``results.json`` and one PNG per section
into ``--out``. Every world lives under a scratch directory wiped at start:

- **nodes**: for each node count N, our cluster remote over N ``sftp://`` nodes
  (N private sshd) with ``copies=2``, and native git-annex's cluster of N node
  repos behind a gateway, whose nodes' preferred content splits the files so that
  each is stored twice, as ours (see ``two_of``). Small-file and big-file copy and
  get, one timed command each.
- **clients**: 1, 4, 16 client repositories run the same command at once through
  a gateway: ours (``git-annex-remote-proxy serve`` under a forced-command key,
  reached by the proxy remote, and by a stock git-annex ssh remote) and a native
  git-annex gateway in front of its cluster. Each node set is 3 local
  directories with 2 copies.
- **latency**: one 4 KiB file, ``git annex copy --to`` and ``get``, cold ssh.
- **size**: peak RSS (VmHWM) of our remote process and of the gateway's serve
  process while objects of growing size are copied and fetched.
- **keys**: bench/scale_keys.py (maintenance commands at 10k..1M keys).

See bench/README.md for how to read the plots.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import DEVNULL, PIPE, Popen
from typing import Any

from harness import MIB, REPO, Harness, fresh_scratch, load_average
from scale_report import SECTIONS, report
from sshd import SSHD, ssh_config_for  # tests/sshd.py: private sshd, stopped by pid

from shared.nodes.url import parse_size

SMALL, BIG = "small", "big.bin"
Row = dict[str, Any]


@dataclass
class World:
    """One client repository and the remote measured through it."""

    impl: str
    client: Path
    remote: str
    node_dirs: list[Path]  # where the nodes keep objects (empty: not checked)
    keys: dict[str, set[str]] = field(default_factory=dict)  # SMALL / BIG -> keys
    sums: dict[str, str] = field(default_factory=dict)  # file -> sha256


@dataclass
class ClientRun:
    """One client's command in a concurrent round."""

    start: float
    end: float = 0.0
    stamps: list[float] = field(default_factory=list)  # when each file's JSON line came
    failed: list[str] = field(default_factory=list)
    rc: int = 0


class Scale(Harness):
    """The scratch world: sshd hosts (nodes, our gateway, native gateway) and clients."""

    def __init__(self, scratch: Path, timeout: float) -> None:
        super().__init__(scratch, timeout)
        self.gw_home = scratch / "gw-home"
        self.gw_config = self.gw_home / ".config/git-annex-remote-proxy/gateway.toml"
        self.key = scratch / "client_key"
        self.hosts: dict[str, SSHD] = {}
        self.running: list[Popen[Any]] = []  # concurrent clients, killed by cleanup
        self.gateway: dict[str, list[World]] = {}  # impl -> clients, built on demand
        self.cluster3: World | None = None

    # -- the world ----------------------------------------------------------------

    def setup_tools(self) -> None:
        for d in (self.bin, self.srvbin, self.home, self.gw_home, self.logs, self.scratch / "tmp"):
            d.mkdir(parents=True, exist_ok=True)
        for name in ("git-annex", "git-annex-shell", "git-remote-annex"):
            (self.bin / name).symlink_to(self.ga)  # the multicall binary, not the Python wrapper
        for name in ("git-annex-remote-cluster", "git-annex-remote-proxy"):
            (self.bin / name).symlink_to(REPO / ".venv/bin" / name)
        wrappers = {self.bin / "ssh": 'exec /usr/bin/ssh -F "$HOME/.ssh/config" "$@"'}
        env = " ".join(f"{k}={self.env[k]}" for k in ("HOME", "GIT_CONFIG_NOSYSTEM", "MAGIC"))
        for name in ("git-annex", "git-annex-shell"):  # server side: isolated HOME there too
            wrappers[self.srvbin / name] = f'export {env}\nexec {self.bin / name} "$@"'
        for path, body in wrappers.items():
            path.write_text(f"#!/bin/sh\n{body}\n")
            path.chmod(0o755)
        gitconfig = "[user]\n\tname = bench\n\temail = bench@localhost\n"
        for home in (self.home, self.gw_home):
            (home / ".gitconfig").write_text(gitconfig + "[init]\n\tdefaultBranch = main\n")
        self.run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", self.key)

    def start_hosts(self, nodes: int, gateways: bool) -> None:
        """benchhost1..N for nodes; ourgw (forced command: serve) and nativegw for gateways."""
        path = (str(self.srvbin), str(self.bin), "/usr/local/bin", "/usr/bin", "/bin")
        names = [f"benchhost{i}" for i in range(1, nodes + 1)]
        names += ["ourgw", "nativegw"] if gateways else []
        for name in names:
            env = {"HOME": str(self.gw_home)} if name == "ourgw" else None
            server = SSHD(self.scratch / "hosts" / name, self.key, path=path, name=name, env=env)
            if name == "ourgw":  # the key serves targets only, as in docs/gateway.md
                server.authorize([('command="git-annex-remote-proxy serve",restrict', self.key)])
            self.sshds.append(server)
            self.hosts[name] = server
            server.start()
        ssh_config_for(self.home, self.hosts, self.key)
        for name in names:
            if name != "ourgw":
                self.run("ssh", name, "command -v git-annex-shell >/dev/null")

    def make_files(self, where: Path, small: int, big: int, tag: str) -> dict[str, str]:
        """`small` random 4 KiB files under where/small and a `big`-byte where/big.bin."""
        sums: dict[str, str] = {}
        (where / SMALL).mkdir(parents=True, exist_ok=True)
        for n in range(small):
            block = os.urandom(4096)
            (where / SMALL / f"{tag}{n:05d}.bin").write_bytes(block)
            sums[f"{SMALL}/{tag}{n:05d}.bin"] = hashlib.sha256(block).hexdigest()
        if big:
            sums[BIG] = random_file(where / BIG, big)
        return sums

    def add_files(self, w: World, small: int, big: int) -> None:
        w.sums = self.make_files(w.client, small, big, w.client.name[-6:])
        what = [SMALL, BIG] if big else [SMALL]
        self.git(w.client, "annex", "add", "--quiet", *what)
        self.git(w.client, "commit", "-qm", "data")
        fmt = "--format=${key}\\n"
        w.keys = {x: set(self.git(w.client, "annex", "find", fmt, x).split()) for x in what}

    def new_client(self, client: Path) -> None:
        client.mkdir(parents=True)
        self.ssh_dirs.append(client / ".git/annex/ssh")
        self.git(client, "init", "-q")
        self.git(client, "annex", "init", "-q", client.name)

    def our_cluster(self, impl: str, client: Path, hosts: list[str], dirs: list[Path]) -> World:
        """Our cluster remote IMPL in `client`, copies=2, one sftp:// node per (host, dir)."""
        for d in dirs:
            d.mkdir(parents=True)
        urls = [f"n{i}=sftp://{h}{d}" for i, (h, d) in enumerate(zip(hosts, dirs, strict=True), 1)]
        init = "type=external externaltype=cluster encryption=none copies=2"
        self.git(client, "annex", "initremote", impl, *init.split(), f"nodes={' '.join(urls)}")
        return World(impl, client, impl, dirs)

    def native_cluster(self, host: str, base: Path, n: int, clients: list[Path]) -> list[World]:
        """As anchors/native-cluster.sh, with N nodes that together want each file twice:
        a gateway repo on `host` proxying N node repos (path remotes); ssh clients."""
        gw, nodes = base / "native-gateway", [base / f"native-node{i}" for i in range(1, n + 1)]
        first = clients[0]
        self.git(None, "init", "-q", "--bare", gw)
        self.git(gw, "annex", "init", "-q", "gateway")
        self.git(None, "clone", "-q", f"{host}:{gw}", first)
        self.ssh_dirs.append(first / ".git/annex/ssh")
        self.git(first, "annex", "init", "-q", first.name)
        self.git(first, "commit", "-q", "--allow-empty", "-m", "init")
        self.git(first, "annex", "sync", "-q", "--no-content", "origin")
        for i, node in enumerate(nodes, 1):
            self.git(None, "clone", "-q", "--bare", gw, node)
            self.git(node, "annex", "init", "-q", f"node{i}")
        self.git(gw, "annex", "initcluster", "mycluster")
        for i, node in enumerate(nodes, 1):
            self.git(gw, "remote", "add", f"node{i}", node)
            self.git(gw, "config", f"remote.node{i}.annex-cluster-node", "mycluster")
            self.git(gw, "config", f"remote.node{i}.annex-proxy", "true")
        self.git(gw, "fetch", "-q", "--all")
        self.git(gw, "annex", "updatecluster")
        self.git(gw, "config", "annex.jobs", "cpus")
        self.git(first, "fetch", "-q", "origin")
        self.git(first, "annex", "sync", "-q", "--no-content", "origin")
        # Two copies, as ours' copies=2 (tips/clusters: per-node preferred content).
        for i in range(n):
            self.git(first, "annex", "wanted", f"origin-node{i + 1}", two_of(i, n))
        self.git(first, "annex", "wanted", "origin", "nothing")
        self.git(first, "annex", "sync", "-q", "--no-content", "origin")
        for client in clients[1:]:
            self.git(None, "clone", "-q", f"{host}:{gw}", client)
            self.ssh_dirs.append(client / ".git/annex/ssh")
            self.git(client, "annex", "init", "-q", client.name)
            self.git(client, "annex", "sync", "-q", "--no-content", "origin")
        objects = [nd / "annex/objects" for nd in nodes]
        return [World("native", c, "origin-mycluster", objects) for c in clients]

    # -- the gateway world (clients, latency, size) ----------------------------------

    def gateway_world(self, count: int, small: int, big: int) -> dict[str, list[World]]:
        """`count` clients each of ours-proxy, ours-stock and native (3-node clusters,
        2 copies, behind a gateway on its own sshd); client 1 of ours-proxy also has
        ours-cluster (3 sftp:// nodes on benchhost1..3). Built once, grown on demand."""
        if not self.gateway:
            self.build_gateways()
        have = len(self.gateway["ours-proxy"])
        for k in range(have + 1, count + 1):
            for impl in ("ours-proxy", "ours-stock", "native"):
                w = self.gateway_client(impl, k)
                self.add_files(w, small, big)
                if self.cluster3 is not None and self.cluster3.client == w.client:
                    self.cluster3.sums, self.cluster3.keys = w.sums, w.keys  # one repo, two remotes
                self.gateway[impl].append(w)
        return self.gateway

    def build_gateways(self) -> None:
        base = self.scratch / "hosts/ourgw"
        dirs = [base / f"node{i}" for i in (1, 2, 3)]
        for d in dirs:
            d.mkdir(parents=True)
        urls = [f"n{i}=file://{d}" for i, d in enumerate(dirs, 1)]
        proxy = self.bin / "git-annex-remote-proxy"
        self.run(proxy, "gateway", "add", "--config", self.gw_config, "--copies", "2", "t", *urls)
        self.git(
            None,
            "init",
            "-q",
            "--bare",
            "--initial-branch=main",
            self.gw_config.parent / "git/t.git",
        )
        self.our_dirs = dirs
        self.native_base = self.scratch / "hosts/nativegw/repos"
        self.native_base.mkdir(parents=True)
        self.gateway = {"ours-proxy": [], "ours-stock": [], "native": []}

    def gateway_client(self, impl: str, k: int) -> World:
        client = self.scratch / f"gwclients/{impl}-{k:02d}"
        if impl == "ours-proxy":
            self.new_client(client)
            init = "type=external externaltype=proxy encryption=none gateway=ssh://ourgw target=t"
            self.git(client, "annex", "initremote", "gw", *init.split())
            if k == 1:  # the cluster remote over 3 sftp nodes, for latency and size
                hosts = [f"benchhost{i}" for i in (1, 2, 3)]
                dirs = [self.scratch / f"hosts/{h}/cl3-node" for h in hosts]
                self.cluster3 = self.our_cluster("cl3", client, hosts, dirs)
                self.cluster3.impl = "ours-cluster"
            return World(impl, client, "gw", self.our_dirs)
        if impl == "ours-stock":  # a stock git-annex ssh remote through the forced command
            client.parent.mkdir(parents=True, exist_ok=True)
            self.git(None, "clone", "-q", "ourgw:t", client)
            self.ssh_dirs.append(client / ".git/annex/ssh")
            self.git(client, "annex", "init", "-q", client.name)
            return World(impl, client, "origin", self.our_dirs)
        client.parent.mkdir(parents=True, exist_ok=True)
        if k == 1:
            return self.native_cluster("nativegw", self.native_base, 3, [client])[0]
        self.git(None, "clone", "-q", f"nativegw:{self.native_base / 'native-gateway'}", client)
        self.ssh_dirs.append(client / ".git/annex/ssh")
        self.git(client, "annex", "init", "-q", client.name)
        self.git(client, "annex", "sync", "-q", "--no-content", "origin")
        objects = [self.native_base / f"native-node{i}/annex/objects" for i in (1, 2, 3)]
        return World("native", client, "origin-mycluster", objects)

    # -- timed commands -----------------------------------------------------------

    def prepare(self, w: World, op: str, what: Sequence[str], remote: str | None = None) -> None:
        """Before a copy: content local, not on the remote. Before a get: not local."""
        remote = remote or w.remote
        if op == "copy":
            self.git(w.client, "annex", "get", "-J4", *what)
            self.git(w.client, "annex", "drop", "-J4", "--force", "--from", remote, *what)
        else:
            self.git(w.client, "annex", "drop", "-J4", "--force", *what)

    def command(
        self,
        w: World,
        op: str,
        jobs: int,
        what: Sequence[str],
        remote: str | None = None,
        json: bool = False,
    ) -> list[str]:
        where = ["--to" if op == "copy" else "--from", remote or w.remote]
        return ["git", "annex", op, *(["--json"] if json else []), f"-J{jobs}", *where, *what]

    def verify(self, w: World, op: str, what: str, copies: int = 2) -> float:
        """After a copy, each key on at least `copies` of the world's nodes; after a get,
        every file's hash. Returns the mean number of copies (copy) or 0."""
        if op == "get":
            for name, want in w.sums.items():
                if (name == what or name.startswith(f"{what}/")) and sha256(
                    w.client / name
                ) != want:
                    raise RuntimeError(f"{w.client.name}: {name} has the wrong content after get")
            return 0.0
        if not w.node_dirs:
            return 0.0
        held = [object_names(d) for d in w.node_dirs]
        counts = [sum(k in h for h in held) for k in w.keys[what]]
        if short := [c for c in counts if c < copies]:
            raise RuntimeError(f"{w.impl}: {len(short)} key(s) on fewer than {copies} nodes")
        return statistics.mean(counts)

    def concurrent(self, worlds: list[World], op: str, what: str, label: str) -> list[ClientRun]:
        """Each world's `git annex OP --json -J1 WHAT` at once; each file's JSON line
        timestamped as it arrives (its per-file latency: time since the previous line,
        the first since the command started, so process start counts there)."""
        self.close_masters()
        os.sync()
        runs, threads = [], []
        for i, w in enumerate(worlds):
            cmd = self.command(w, op, 1, [what], json=True)
            log = open(self.logs / f"{label}-{i}.log", "w")  # noqa: SIM115 (closed by the thread)
            run = ClientRun(time.monotonic())
            p = Popen(
                cmd,
                cwd=w.client,
                env=self.env,
                stdin=DEVNULL,
                stdout=PIPE,
                stderr=log,
                text=True,
                process_group=0,
            )
            self.running.append(p)
            t = threading.Thread(target=follow, args=(p, run, log), daemon=True)
            t.start()
            runs.append(run)
            threads.append(t)
        for t in threads:
            t.join(self.timeout)
        for p in self.running:
            if p.poll() is None:
                kill_group(p.pid)
        self.running.clear()
        for i, run in enumerate(runs):
            if run.rc != 0 or run.failed:
                tail = (self.logs / f"{label}-{i}.log").read_text()[-1500:]
                raise RuntimeError(
                    f"{label} client {i + 1} exited {run.rc}, failed {run.failed[:3]}:\n{tail}"
                )
        return runs

    def cleanup(self) -> None:
        for p in self.running:
            kill_group(p.pid)
        self.running.clear()
        super().cleanup()


def two_of(i: int, n: int) -> str:
    """Node i's preferred content (of n): together, the nodes want each file twice.

    Files are split by the last two digits of their names (``small/TAGnnnnn.bin``):
    class c goes to nodes c mod n and c+1 mod n; big.bin to nodes 0 and 1. Not
    git-annex's ``balanced=GROUP:2``, which needs live repository-size updates in a
    sqlite database: at -J4 through the gateway they hit "database is locked" and the
    copy hung (git-annex 10.20261026, this machine, load 12).
    """
    classes = [c for c in range(100) if i in (c % n, (c + 1) % n)]
    terms = [f"include=*{c:02d}.bin" for c in classes] + (["include=big.bin"] if i < 2 else [])
    return " or ".join(terms)


def follow(p: Popen[Any], run: ClientRun, log: Any) -> None:
    assert p.stdout is not None
    for line in p.stdout:
        run.stamps.append(time.monotonic())
        with suppress(ValueError):
            doc = json.loads(line)
            if not doc.get("success", True):
                run.failed.append(str(doc.get("file")))
    _, status, _ = os.wait4(p.pid, 0)
    p.returncode = run.rc = os.waitstatus_to_exitcode(status)
    run.end = time.monotonic()
    log.close()


def kill_group(pid: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def random_file(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for off in range(0, size, MIB):
            block = os.urandom(min(MIB, size - off))
            h.update(block)
            f.write(block)
    return h.hexdigest()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MIB):
            h.update(block)
    return h.hexdigest()


def object_names(node_dir: Path) -> set[str]:
    """Files under a node's object directory, tmp/ excluded: an object is named after its key."""
    names: set[str] = set()
    for _top, dirs, files in os.walk(node_dir):
        dirs[:] = [d for d in dirs if d != "tmp"]
        names.update(files)
    return names


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


# -- peak RSS of processes we did not start ---------------------------------------


class PeakWatch:
    """Polls /proc for our remote processes (the client command's process group) and the
    gateway's serve process (under our gateway's sshd) and keeps each one's VmHWM: git-annex
    starts the remote as its child, and sshd the serve process, so wait4 reaches neither."""

    def __init__(self, pgid: int, gateway_sshd: int | None, interval: float = 0.05) -> None:
        self.pgid, self.gateway_sshd, self.interval = pgid, gateway_sshd, interval
        self.peak = {"client": 0.0, "gateway": 0.0}
        # pid -> (comm, role or None: not ours). comm changes on exec: sshd's child
        # becomes the serve process under the same pid, so "not ours" is kept per comm.
        self.seen: dict[int, tuple[str, str | None]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self) -> None:
        while not self.stop.is_set():
            self.poll()
            self.stop.wait(self.interval)
        self.poll()

    def poll(self) -> None:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            known = self.seen.get(pid)
            if known is None or known[0] != comm:
                known = self.seen[pid] = (comm, self.role(pid, stat))
            if known[1] is not None:
                hwm = vm_hwm(pid)
                if hwm is not None:
                    self.peak[known[1]] = max(self.peak[known[1]], hwm)

    def role(self, pid: int, stat: str) -> str | None:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        names = (b"git-annex-remote-cluster", b"git-annex-remote-proxy")
        if not any(a.endswith(names) for a in argv):
            return None
        if b"serve" in argv:
            return "gateway" if self.under(pid, self.gateway_sshd) else None
        return "client" if int(stat.rsplit(")", 1)[1].split()[2]) == self.pgid else None

    @staticmethod
    def under(pid: int, ancestor: int | None) -> bool:
        while ancestor is not None and pid > 1:
            if pid == ancestor:
                return True
            try:
                pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                return False
        return False

    def finish(self) -> dict[str, float]:
        self.stop.set()
        self.thread.join()
        return self.peak


def watcher(into: list[PeakWatch], gateway_sshd: int | None) -> Callable[[int], None]:
    """An on_start hook for Harness.timed: starts a PeakWatch on the command's group."""
    return lambda pid: into.append(PeakWatch(pid, gateway_sshd))


def vm_hwm(pid: int) -> float | None:
    """The process's peak resident set size in MiB, None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


# -- sections -------------------------------------------------------------------------


def measure(b: Scale, w: World, op: str, jobs: int, what: str, label: str, **extra: Any) -> Row:
    """One timed copy or get of `what` (SMALL: every small file, BIG: the big file)."""
    b.prepare(w, op, [what])
    b.close_masters()  # every measurement starts without a warm ssh connection
    wall, busy, _steal, ru = b.timed(b.command(w, op, jobs, [what]), w.client, label)
    copies = b.verify(w, op, what)
    small = what == SMALL
    units = len(w.keys[SMALL]) if small else (w.client / BIG).stat().st_size
    rate = units / wall if small else units / wall / MIB
    print(f"  {label}: {wall:.2f} s, {rate:.1f} {'files' if small else 'MiB'}/s", flush=True)
    return dict(
        impl=w.impl,
        op=f"{'small' if small else 'big'}-{op}",
        jobs=jobs,
        units=units,
        wall_s=round(wall, 3),
        client_cpu_s=round(ru.ru_utime + ru.ru_stime, 2),
        machine_cpu_s=round(busy, 2),
        rate=round(rate, 2),
        mean_copies=round(copies, 2),
        **extra,
    )


def section_nodes(b: Scale, args: argparse.Namespace) -> list[Row]:
    """Per node count: ours (sftp:// nodes, copies=2) and native (two copies), alternating."""
    rows: list[Row] = []
    for n in args.node_counts:
        print(f"nodes: building {n}-node clusters", flush=True)
        base = b.scratch / f"nodes-{n}"
        hosts = [f"benchhost{i}" for i in range(1, n + 1)]
        b.new_client(base / "client-ours")
        dirs = [b.scratch / f"hosts/{h}/nodes{n}" for h in hosts]
        ours = b.our_cluster("ours", base / "client-ours", hosts, dirs)
        native = b.native_cluster("benchhost1", base, n, [base / "client-native"])[0]
        for w in (ours, native):
            b.add_files(w, args.small_count, args.big_size)
        jobs = (1, 4) if n == min(args.node_counts) else (1,)
        for j in jobs:
            for what in (SMALL, BIG):
                for rep in range(1, args.repeat + 1):
                    for w in (ours, native) if rep % 2 else (native, ours):
                        for op in ("copy", "get"):
                            label = f"nodes{n}-{w.impl}-{what.split('.')[0]}-{op}-J{j}-{rep}"
                            rows.append(measure(b, w, op, j, what, label, nodes=n, rep=rep))
        b.close_masters()
        b.ssh_dirs = [d for d in b.ssh_dirs if not d.is_relative_to(base)]
        shutil.rmtree(base, ignore_errors=True)
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
    return rows


GATEWAY_IMPLS = ("ours-proxy", "ours-stock", "native")


def section_clients(b: Scale, args: argparse.Namespace) -> list[Row]:
    """K clients at once through our gateway (proxy remote, stock client) and native's."""
    worlds = b.gateway_world(max(args.client_counts), args.client_small, args.client_big)
    rows: list[Row] = []
    for k in args.client_counts:
        for what in (SMALL, BIG):
            for rep in range(1, args.repeat + 1):
                shift = (rep - 1) % len(GATEWAY_IMPLS)
                for impl in GATEWAY_IMPLS[shift:] + GATEWAY_IMPLS[:shift]:
                    ws = worlds[impl][:k]
                    for op in ("copy", "get"):
                        for w in ws:
                            b.prepare(w, op, [what])
                        label = f"clients{k}-{impl}-{what.split('.')[0]}-{op}-{rep}"
                        runs = b.concurrent(ws, op, what, label)
                        for w in ws:
                            b.verify(w, op, what)
                        rows.append(client_row(ws, runs, impl, op, what, k, rep))
                        r = rows[-1]
                        print(
                            f"  {label}: {r['wall_s']:.2f} s, {r['files_per_s']:.1f} files/s, "
                            f"{r['mib_per_s']:.1f} MiB/s, p50 {r['p50_ms']:.0f} ms, "
                            f"p99 {r['p99_ms']:.0f} ms",
                            flush=True,
                        )
    return rows


def client_row(
    ws: list[World], runs: list[ClientRun], impl: str, op: str, what: str, k: int, rep: int
) -> Row:
    wall = max(r.end for r in runs) - min(r.start for r in runs)
    files = sum(len(w.keys[what]) for w in ws)
    size = sum(
        (w.client / name).stat().st_size
        for w in ws
        for name in w.sums
        if name == what or name.startswith(f"{what}/")
    )
    lat = []
    for r in runs:
        prev = r.start
        for s in r.stamps:
            lat.append(s - prev)
            prev = s
    return dict(
        impl=impl,
        op=f"{'small' if what == SMALL else 'big'}-{op}",
        clients=k,
        rep=rep,
        files=files,
        bytes=size,
        wall_s=round(wall, 3),
        files_per_s=round(files / wall, 2),
        mib_per_s=round(size / wall / MIB, 2),
        p50_ms=round(percentile(lat, 50) * 1000, 1),
        p99_ms=round(percentile(lat, 99) * 1000, 1),
    )


def latency_contenders(b: Scale) -> list[tuple[str, World, str]]:
    g = b.gateway
    assert b.cluster3 is not None
    return [
        ("ours-cluster", b.cluster3, "cl3"),
        ("ours-proxy", g["ours-proxy"][0], "gw"),
        ("ours-stock", g["ours-stock"][0], "origin"),
        ("native-cluster", g["native"][0], "origin-mycluster"),
        ("native-proxy", g["native"][0], "origin-node1"),
    ]


def section_latency(b: Scale, args: argparse.Namespace) -> list[Row]:
    """One 4 KiB file, copy --to then get --from, cold ssh; contenders interleaved."""
    b.gateway_world(1, args.client_small, args.client_big)
    rows: list[Row] = []
    contenders = latency_contenders(b)
    for rep in range(1, args.latency_repeat + 1):
        shift = (rep - 1) % len(contenders)
        for impl, w, remote in contenders[shift:] + contenders[:shift]:
            one = min(n for n in w.sums if n.startswith(f"{SMALL}/"))
            for op in ("copy", "get"):
                b.prepare(w, op, [one], remote)
                b.close_masters()
                label = f"latency-{impl}-{op}-{rep}"
                cmd = b.command(w, op, 1, [one], remote)
                wall, _busy, _steal, ru = b.timed(cmd, w.client, label)
                if op == "get" and sha256(w.client / one) != w.sums[one]:
                    raise RuntimeError(f"{impl}: {one} has the wrong content after get")
                cpu = ru.ru_utime + ru.ru_stime
                rows.append(
                    dict(
                        impl=impl, op=op, rep=rep, wall_s=round(wall, 3), client_cpu_s=round(cpu, 3)
                    )
                )
                print(f"  {label}: {wall * 1000:.0f} ms", flush=True)
    return rows


def section_size(b: Scale, args: argparse.Namespace) -> list[Row]:
    """Peak RSS of our remote and of the gateway's serve, per object size, copy and get."""
    b.gateway_world(1, args.client_small, args.client_big)
    assert b.cluster3 is not None
    client = b.cluster3.client
    contenders = [("ours-cluster", "cl3"), ("ours-proxy", "gw")]
    gw_sshd = b.hosts["ourgw"].pid
    rows: list[Row] = []
    for size in args.sizes:
        name = f"size-{size // MIB}MiB.bin"
        print(f"size: {size / MIB:g} MiB", flush=True)
        want = random_file(client / name, size)
        b.git(client, "annex", "add", "--quiet", name)
        b.git(client, "commit", "-qm", name)
        w = World("size", client, "", [])
        for impl, remote in contenders:
            for op in ("copy", "get"):
                b.prepare(w, op, [name], remote)
                b.close_masters()
                watch: list[PeakWatch] = []
                wall, _b, _s, ru = b.timed(
                    b.command(w, op, 1, [name], remote),
                    client,
                    f"size-{impl}-{size // MIB}MiB-{op}",
                    on_start=watcher(watch, gw_sshd),
                )
                peak = watch[0].finish()
                if op == "get" and sha256(client / name) != want:
                    raise RuntimeError(f"{impl}: {name} has the wrong content after get")
                rows.append(
                    dict(
                        impl=impl,
                        op=op,
                        size_mib=size / MIB,
                        wall_s=round(wall, 3),
                        client_rss_mib=round(peak["client"], 1),
                        gateway_rss_mib=round(peak["gateway"], 1),
                        tree_rss_mib=round(ru.ru_maxrss / 1024, 1),
                    )
                )
                r = rows[-1]
                print(
                    f"  {impl} {op}: {wall:.2f} s, remote {r['client_rss_mib']} MiB, "
                    f"serve {r['gateway_rss_mib']} MiB, client tree {r['tree_rss_mib']} MiB",
                    flush=True,
                )
        for remote in ("cl3", "gw"):
            b.git(client, "annex", "drop", "--force", "--from", remote, name)
        b.git(client, "annex", "drop", "--force", name)
    return rows


def section_keys(b: Scale, args: argparse.Namespace) -> list[Row]:
    """bench/scale_keys.py, written separately; skipped when it is not there yet."""
    if importlib.util.find_spec("scale_keys") is None:
        print("keys: bench/scale_keys.py is not there yet; section skipped", flush=True)
        return []
    import scale_keys

    measure_keys: Callable[..., list[Row]] = scale_keys.measure
    return measure_keys(b.scratch / "keys", args.key_counts, nodes=12)


RUNNERS: dict[str, Callable[[Scale, argparse.Namespace], list[Row]]] = {
    "nodes": section_nodes,
    "clients": section_clients,
    "latency": section_latency,
    "size": section_size,
    "keys": section_keys,
}


# -- main -----------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    return sorted({int(parse_size(t.strip())) for t in text.split(",") if t.strip()})


def sections_of(text: str) -> list[str]:
    """The sections to run, in the order given (the report is written after each)."""
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names or set(names) - set(SECTIONS):
        raise argparse.ArgumentTypeError(f"choose among {','.join(SECTIONS)}, not {text!r}")
    return names


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", type=sections_of, default=list(SECTIONS), help=",".join(SECTIONS))
    ap.add_argument("--quick", action="store_true", help="smaller counts and sizes: a smoke run")
    ap.add_argument("--repeat", type=int, default=1, help="repetitions of nodes and clients")
    ap.add_argument("--latency-repeat", type=int, help="single-file repetitions (default 5)")
    ap.add_argument("--out", type=Path, default=REPO / "bench/results/scale", help="results dir")
    ap.add_argument(
        "--dir", type=Path, default=Path("/tmp/scale-bench"), help="scratch dir (wiped)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir afterwards")
    ap.add_argument("--node-counts", type=int_list, help="default 3,6,12,24 (quick: 3,6)")
    ap.add_argument(
        "--small-count", type=int, help="4 KiB files per node-count run (1000; quick 100)"
    )
    ap.add_argument("--big-size", type=parse_size, help="big file (200MiB; quick 32MiB)")
    ap.add_argument("--client-counts", type=int_list, help="default 1,4,16 (quick: 1,4)")
    ap.add_argument("--client-small", type=int, help="4 KiB files per client (50; quick 10)")
    ap.add_argument("--client-big", type=parse_size, help="big file per client (32MiB; quick 4MiB)")
    ap.add_argument("--sizes", type=int_list, help="object sizes (1MiB,16MiB,256MiB,1GiB,4GiB)")
    ap.add_argument("--max-size", type=parse_size, help="drop sizes above this (quick: 64MiB)")
    ap.add_argument(
        "--key-counts", type=int_list, help="default 10000,100000,1000000 (quick 1000,10000)"
    )
    ap.add_argument("--timeout", type=float, default=1800, help="seconds before a command is hung")
    a = ap.parse_args()
    q = a.quick
    a.node_counts = a.node_counts or ([3, 6] if q else [3, 6, 12, 24])
    a.small_count = a.small_count or (100 if q else 1000)
    a.big_size = a.big_size or (32 * MIB if q else 200 * MIB)
    a.client_counts = a.client_counts or ([1, 4] if q else [1, 4, 16])
    a.client_small = a.client_small or (10 if q else 50)
    a.client_big = a.client_big or (4 * MIB if q else 32 * MIB)
    a.sizes = a.sizes or [MIB, 16 * MIB, 256 * MIB, 1024 * MIB, 4096 * MIB]
    a.max_size = a.max_size or (64 * MIB if q else None)
    if a.max_size:
        a.sizes = [s for s in a.sizes if s <= a.max_size] or [min(a.sizes)]
    a.key_counts = a.key_counts or ([1000, 10000] if q else [10000, 100000, 1000000])
    a.latency_repeat = a.latency_repeat or (3 if q else 5)
    return a


def main() -> int:
    args = parse_args()
    scratch = fresh_scratch(args.dir)
    b = Scale(scratch, args.timeout)
    b.install_cleanup()
    t0, load = time.monotonic(), load_average()
    results: dict[str, list[Row]] = {}
    errors: dict[str, str] = {}
    meta: dict[str, Any] = dict(load_start=load, cpus=os.cpu_count())
    try:
        b.setup_tools()
        print(f"setting up under {scratch} (logs in {b.logs})", flush=True)
        gateways = bool({"clients", "latency", "size"} & set(args.sections))
        nodes = max(args.node_counts) if "nodes" in args.sections else 0
        b.start_hosts(max(nodes, 3 if gateways else 0), gateways)
        meta["git_annex"] = b.run("git", "annex", "version", "--raw").strip()
        for section in args.sections:
            print(f"== {section} (load {load_average()})", flush=True)
            s0 = time.monotonic()
            try:
                results[section] = RUNNERS[section](b, args)
            except RuntimeError as e:
                errors[section] = str(e).splitlines()[0]
                args.keep = True
                print(f"{section} failed: {e}\n(keeping {scratch} for its logs)", file=sys.stderr)
            meta[f"{section}_s"] = round(time.monotonic() - s0)
            meta["load_end"] = load_average()
            meta["total_s"] = round(time.monotonic() - t0)
            report(args.out, results, meta, errors, vars(args))
    finally:
        b.cleanup()
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
