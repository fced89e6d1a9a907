#!/usr/bin/env python3
"""Our HTTP server against native ``git annex p2phttp``, on the same machine, in one run.

Two servers on 127.0.0.1, plain HTTP, basic auth on both, the same ``--jobs``:
native ``git annex p2phttp`` serving a bare git-annex repository on this machine's
disk, and ``git-annex-remote-proxy http`` serving a gateway with two targets: "ours"
(one ``file://`` node, a directory on the same disk) and "ours-annex" (one
``annex:///`` node, a bare git-annex repository like native's, reached through a
local ``git-annex-shell p2pstdio``). The same stock git-annex client repositories use
all three through ``remote.NAME.annexUrl``. Each measurement times ``git annex
copy``/``get`` and reports wall time, the rate, the CPU of the server's process tree
and of the client, and whole-machine CPU. See bench/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import operator
import os
import secrets
import shutil
import signal
import statistics
import sys
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import DEVNULL, PIPE, Popen, TimeoutExpired
from typing import Any

from harness import (
    HZ,
    MIB,
    REPO,
    Harness,
    Usage,
    contenders_of,
    fresh_scratch,
    load_average,
    machine_cpu,
    print_targets,
    write_results,
)
from loopback import accepts, on_a_port, spawn  # tests/loopback.py

from git_annex_remote_proxy.config import GatewayConfig
from shared.nodes.url import parse_size

CONTENDERS = ("native", "ours", "ours-annex")  # native first: the others are measured against it
OURS = CONTENDERS[1:]
USER = "bench"
JOBS = 16  # --jobs of both servers: 16 clients at once are served at once
# (case, each client's -J): the big file at -J1, the small files at -J1 and -J4,
# then --clients clients at once, each with its own files.
CASES = (("big", 1), ("small", 1), ("small", 4), ("multi", 1))
BIG, SMALL, MINE = "big.bin", "small", "mine"
Medians = dict[tuple[str, str, int], dict[str, float]]  # (impl, op, jobs) -> figures


# --profile: our server's every thread under cProfile, timed in CPU seconds of the
# thread (the server mostly waits on clients: wall time would show the waits); the
# merged stats are written when the server exits (after SIGTERM, once its workers
# have stopped).
PROFILE_SHIM = """\
import atexit, cProfile, pstats, sys, threading, time
done = []
inner = threading.Thread._bootstrap_inner  # runs run(), whatever subclass overrides it
def profiled(self):
    p = cProfile.Profile({timer})
    p.enable()
    try:
        inner(self)
    finally:
        p.disable()
        done.append(p)
threading.Thread._bootstrap_inner = profiled
main = cProfile.Profile({timer})
main.enable()
def dump():
    main.disable()
    pstats.Stats(main, *done).dump_stats({out!r})
atexit.register(dump)
from git_annex_remote_proxy.__main__ import main as entry
sys.exit(entry())
"""


@dataclass
class Sample:
    impl: str  # one of CONTENDERS
    op: str  # CASE-copy or CASE-get
    jobs: int  # each client's -J
    clients: int
    rep: int
    bytes: int
    files: int
    wall_s: float
    server_cpu_s: float  # user+sys of the server's process tree during the command
    client_cpu_s: float  # user+sys of the client trees (waited-for children included)
    client_rss_mib: float  # largest single client process (like GNU time %M)
    machine_cpu_s: float  # /proc/stat busy delta, steal excluded
    steal_s: float
    server_rss_mib: float  # the server process's VmHWM after the command (it only grows)
    load: float  # the 1-minute load average right after the command


@dataclass
class Server:
    """One HTTP server we started, by pid."""

    name: str
    argv: list[str]
    cwd: Path
    env: dict[str, str]
    log: Path
    port: int = 0
    proc: Popen[bytes] | None = None
    grace: float = 5.0  # seconds between SIGTERM and SIGKILL

    def start(self) -> None:
        self.port = on_a_port(self.name, 0, self._spawn_on, self.log)

    def _spawn_on(self, port: int) -> bool:
        self.port = port
        argv = [a.replace("{port}", str(port)) for a in self.argv]
        return (
            spawn(
                self.name,
                argv,
                self.log,
                lambda _: accepts(port, timeout=1),
                started=self._started,
                stop=self.stop,
                timeout=30,
                cwd=self.cwd,
                env=self.env,
            )
            is not None
        )

    def _started(self, proc: Popen[bytes] | None) -> None:
        self.proc = proc

    @property
    def pid(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} is not running; see {self.log}")
        return self.proc.pid

    def stop(self) -> None:
        """SIGTERM to the pid we started, SIGKILL after ``grace`` seconds."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=self.grace)
            except TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None


@dataclass
class Contender:
    impl: str
    server: Server
    uuid: str
    objects: Path  # where the server side keeps the objects (any layout, tmp/ excluded)
    keys: dict[str, set[str]] = field(default_factory=dict)  # what -> keys


def tree_cpu(root: int) -> float:
    """user+sys CPU seconds of a process and all its descendants, the exited children
    they waited for included (so a child that exits between two reads is not lost)."""
    stats: dict[int, list[bytes]] = {}
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry)
        stats[pid] = fields
        children.setdefault(int(fields[1]), []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        if (found := stats.get(pid)) is not None:
            total += sum(int(x) for x in found[11:15])  # utime stime cutime cstime
            todo += children.get(pid, [])
    return total / HZ


def vm_hwm_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def object_names(where: Path) -> set[str]:
    """Files under a node directory or annex/objects, temp dirs excluded: an object is
    a file named after its key in every layout."""
    names: set[str] = set()
    for _top, dirs, files in os.walk(where):
        dirs[:] = [d for d in dirs if d != "tmp"]
        names.update(files)
    return names


class Bench(Harness):
    """The scratch world: tools, HOME, the two servers, the client repos, and every
    process we started."""

    def __init__(self, scratch: Path, timeout: float, jobs: int, profile: Path | None) -> None:
        super().__init__(scratch, timeout)
        self.jobs, self.profile = jobs, profile
        self.password = secrets.token_hex(12)
        self.client = scratch / "client"
        self.multi: list[Path] = []
        self.contenders: dict[str, Contender] = {}
        self.servers: list[Server] = []
        self.running: list[Popen[bytes]] = []  # the parallel clients

    # -- the world --------------------------------------------------------------

    def setup_tools(self) -> None:
        for d in (self.bin, self.home, self.logs, self.scratch / "tmp"):
            d.mkdir(parents=True, exist_ok=True)
        for name in ("git-annex", "git-annex-shell", "git-remote-annex"):
            (self.bin / name).symlink_to(self.ga)  # the multicall binary, not the Python wrapper
        # Our server runs the code of this checkout, whatever the editable install says.
        py = self.bin / "bench-python"
        py.write_text(
            f"#!/bin/sh\nexport PYTHONPATH={REPO}${{PYTHONPATH:+:$PYTHONPATH}}\n"
            f'exec {sys.executable} "$@"\n'
        )
        py.chmod(0o755)
        creds = self.home / "git-credentials"
        (self.home / ".gitconfig").write_text(
            "[user]\n\tname = bench\n\temail = bench@localhost\n"
            "[init]\n\tdefaultBranch = main\n"
            f"[credential]\n\thelper = store --file={creds}\n\tuseHttpPath = false\n"
            # git-annex refuses http to loopback unless allowed.
            '[annex "security"]\n\tallowed-ip-addresses = 127.0.0.1\n'
        )

    def code_under_test(self) -> str:
        probe = "import shared, git_annex_remote_proxy; print(git_annex_remote_proxy.__file__)"
        where = self.run(self.bin / "bench-python", "-c", probe).strip()
        if not Path(where).is_relative_to(REPO):
            raise RuntimeError(f"our server would import {where}, not the code under {REPO}")
        return str(Path(where).parent)

    def bare_repo(self, path: Path, description: str) -> str:
        self.git(None, "init", "-q", "--bare", path)
        self.git(path, "annex", "init", "-q", description)
        return self.git(path, "config", "annex.uuid").strip()

    def start_native(self) -> None:
        repo = self.scratch / "native.git"
        uuid = self.bare_repo(repo, "native")
        env = dict(self.env, **{f"GIT_ANNEX_P2PHTTP_PASSWORD_{USER}": self.password})
        argv = [str(self.bin / "git-annex"), "p2phttp", "--bind", "127.0.0.1"]
        argv += ["--port", "{port}", f"--jobs={self.jobs}", "--authenv-http"]
        server = Server("native p2phttp", argv, repo, env, self.logs / "native-server.log")
        self.servers.append(server)
        server.start()
        self.contenders["native"] = Contender("native", server, uuid, repo / "annex/objects")

    def start_ours(self, impls: list[str]) -> None:
        """One server, a target per contender of ours (each with one node)."""
        config = self.scratch / "gw/gw.toml"
        config.parent.mkdir()
        proxy: list[str | Path] = [self.bin / "bench-python", "-m", "git_annex_remote_proxy"]
        add: list[str | Path] = [*proxy, "gateway", "--config", config, "add"]
        objects = {}
        if "ours" in impls:
            node = self.scratch / "ours-node"
            node.mkdir()
            self.run(*add, "ours", f"n1=file://{node}")
            objects["ours"] = node
        if "ours-annex" in impls:
            node = self.scratch / "ours-annex-node.git"
            uuid = self.bare_repo(node, "ours-annex-node")
            self.run(*add, "ours-annex", f"n1=annex://{node}?uuid={uuid}")
            objects["ours-annex"] = node / "annex/objects"
        users = [*proxy, "http-users", "--config", config, "add", USER, "--access", "readwrite"]
        self.run_with_input(users, f"{self.password}\n")  # the password on stdin
        if self.profile is not None:  # the same server, under cProfile in every thread
            shim = self.bin / "profiled.py"
            out, timer = str(self.profile.resolve()), "time.thread_time"
            shim.write_text(PROFILE_SHIM.format(out=out, timer=timer))
            proxy = [self.bin / "bench-python", shim]
        argv = [str(a) for a in (*proxy, "http", "--config", config, "--bind", "127.0.0.1")]
        argv += ["--port", "{port}", "--jobs", str(self.jobs), "--auth-http"]
        server = Server("our http server", argv, self.scratch, self.env, self.logs / "ours.log")
        server.grace = 5.0 if self.profile is None else 120.0  # the stats take a while
        self.servers.append(server)
        server.start()
        gateway = GatewayConfig.load(config)
        for impl, where in objects.items():
            self.contenders[impl] = Contender(impl, server, gateway.target(impl).uuid, where)

    def run_with_input(self, argv: list[str | Path], text: str) -> None:
        p = Popen(
            [str(a) for a in argv],
            env=self.env,
            stdin=PIPE,
            stdout=PIPE,
            stderr=PIPE,
            text=True,
            process_group=0,
        )
        self.current = p
        _out, err = p.communicate(text, timeout=self.timeout)
        self.current = None
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, argv))} exited {p.returncode}:\n{err}")

    def write_credentials(self) -> None:
        lines = [
            f"{scheme}://{USER}:{self.password}@127.0.0.1:{s.port}\n"
            for s in self.servers
            for scheme in ("http", "https")
        ]
        creds = self.home / "git-credentials"
        creds.write_text("".join(lines))
        creds.chmod(0o600)

    def add_remotes(self, repo: Path) -> None:
        for c in self.contenders.values():
            url = f"http://127.0.0.1:{c.server.port}/git/{c.impl}"
            self.git(repo, "remote", "add", c.impl, url)
            annex_url = f"annex+http://127.0.0.1:{c.server.port}/git-annex/"
            self.git(repo, "config", f"remote.{c.impl}.annexUrl", annex_url)
            self.git(repo, "config", f"remote.{c.impl}.annex-uuid", c.uuid)

    def make_files(self, repo: Path, where: str, sizes: list[int]) -> dict[str, str]:
        """Random files under repo/where, added and committed; relative name -> sha256."""
        sums = {}
        if len(sizes) > 1:
            (repo / where).mkdir(parents=True)
        for n, size in enumerate(sizes):
            name = f"{where}/f{n:05d}.bin" if len(sizes) > 1 else where
            h = hashlib.sha256()
            with open(repo / name, "wb") as f:
                for off in range(0, size, MIB):
                    block = os.urandom(min(MIB, size - off))
                    h.update(block)
                    f.write(block)
            sums[name] = h.hexdigest()
        self.git(repo, "annex", "add", "--quiet", where)
        self.git(repo, "commit", "-qm", where)
        return sums

    def make_clients(self, args: argparse.Namespace) -> dict[str, str]:
        """client/ (big.bin and the small files), then --clients clones, each with its
        own files under mine/; path relative to the scratch dir -> sha256."""
        self.client.mkdir()
        self.git(self.client, "init", "-q")
        self.git(self.client, "annex", "init", "-q", "client")
        self.add_remotes(self.client)
        sums: dict[str, str] = {}
        big = self.make_files(self.client, BIG, [args.size])
        small = self.make_files(self.client, SMALL, [4096] * args.small_count)
        sums |= {f"client/{k}": v for k, v in (big | small).items()}
        for i in range(args.clients):
            clone = self.scratch / f"multi/c{i:02d}"
            self.git(None, "clone", "-q", self.client, clone)
            self.git(clone, "annex", "init", "-q", f"c{i:02d}")
            self.add_remotes(clone)
            sizes = [args.client_size] + [4096] * args.client_files
            mine = self.make_files(clone, MINE, sizes)
            sums |= {f"multi/c{i:02d}/{k}": v for k, v in mine.items()}
            self.multi.append(clone)
        fmt = "--format=${key}\\n"
        keys = {
            "big": set(self.git(self.client, "annex", "find", fmt, BIG).split()),
            "small": set(self.git(self.client, "annex", "find", fmt, SMALL).split()),
            "multi": {
                k for c in self.multi for k in self.git(c, "annex", "find", fmt, MINE).split()
            },
        }
        for c in self.contenders.values():
            c.keys = keys
        return sums

    # -- processes --------------------------------------------------------------

    def parallel(self, cmds: list[tuple[list[str], Path]], label: str) -> tuple[float, Any]:
        """Run the commands at once; wall s until the last ended, (CPU s, max RSS kB) summed
        over their trees. Any failure ends the run."""
        t0 = time.monotonic()
        procs, rss_files = [], []
        for i, (cmd, cwd) in enumerate(cmds):
            argv, rss_file = self.measured(cmd, f"{label}-{i:02d}")
            rss_files.append(rss_file)
            with open(self.logs / f"{label}-{i:02d}.log", "w") as log:
                procs.append(
                    Popen(
                        argv,
                        cwd=cwd,
                        env=self.env,
                        stdin=DEVNULL,
                        stdout=log,
                        stderr=log,
                        process_group=0,
                    )
                )
            self.running.append(procs[-1])
        watchdog = threading.Timer(self.timeout or 1e9, self.kill_running)
        watchdog.start()
        cpu, rss, failed = 0.0, 0, []
        try:
            for i, p in enumerate(procs):
                _, status, ru = os.wait4(p.pid, 0)
                p.returncode = os.waitstatus_to_exitcode(status)
                usage = Usage.of(ru, rss_files[i])
                cpu += usage.ru_utime + usage.ru_stime
                rss = max(rss, usage.ru_maxrss)
                if p.returncode != 0:
                    failed.append(i)
        finally:
            watchdog.cancel()
            self.running = []
        wall = time.monotonic() - t0
        if failed:
            tail = (self.logs / f"{label}-{failed[0]:02d}.log").read_text()[-2000:]
            raise RuntimeError(f"{label}: {len(failed)} client(s) failed, the first:\n{tail}")
        return wall, (cpu, rss)

    def kill_running(self) -> None:
        for p in self.running:
            with suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)

    def cleanup(self) -> None:
        self.kill_running()
        super().cleanup()
        for server in self.servers:
            server.stop()  # by pid; idempotent

    # -- one measurement --------------------------------------------------------

    def repos(self, case: str, clients: int) -> list[tuple[Path, str]]:
        if case == "multi":
            return [(c, MINE) for c in self.multi[:clients]]
        return [(self.client, BIG if case == "big" else SMALL)]

    def on_server(self, c: Contender, case: str) -> set[str]:
        return c.keys[case] & object_names(c.objects)

    def prepare(self, c: Contender, case: str, step: str, clients: int) -> list[list[str]]:
        """Untimed: content local and not on the server before a copy; not local before a
        get. Returns the timed command of each client repo."""
        targets = self.repos(case, clients)
        if step == "copy":
            self.parallel([(["git", "annex", "get", "-J4", w], r) for r, w in targets], "prep")
            drop = ["git", "annex", "drop", "-J4", "--force", "--from", c.impl]
            self.parallel([([*drop, w], r) for r, w in targets], "prep")
            if left := self.on_server(c, case):  # or copy would skip them
                raise RuntimeError(f"{c.impl}: {len(left)} object(s) still there before copy")
            return [["git", "annex", "copy", "--to", c.impl, w] for _r, w in targets]
        drop = ["git", "annex", "drop", "-J4", "--force"]
        self.parallel([([*drop, w], r) for r, w in targets], "prep")
        return [["git", "annex", "get", "--from", c.impl, w] for _r, w in targets]

    def measure(
        self,
        c: Contender,
        case: str,
        step: str,
        jobs: int,
        clients: int,
        rep: int,
        sums: dict[str, str],
    ) -> Sample:
        cmds = self.prepare(c, case, step, clients)
        cmds = [[*cmd[:3], f"-J{jobs}", *cmd[3:]] for cmd in cmds]
        targets = self.repos(case, clients)
        label = f"{c.impl}-{case}-{step}-J{jobs}-{rep}"
        os.sync()
        server0, (b0, s0) = tree_cpu(c.server.pid), machine_cpu()
        if len(cmds) == 1:
            wall, _busy, _steal, ru = self.timed(cmds[0], targets[0][0], label)
            cpu, rss = ru.ru_utime + ru.ru_stime, ru.ru_maxrss
        else:
            wall, (cpu, rss) = self.parallel(
                [(cmd, r) for cmd, (r, _w) in zip(cmds, targets, strict=True)], label
            )
        server, (b1, s1) = tree_cpu(c.server.pid) - server0, machine_cpu()
        if step == "copy" and (missing := c.keys[case] - self.on_server(c, case)):
            raise RuntimeError(f"{c.impl}: {len(missing)} object(s) missing after {label}")
        names = files_of(self.scratch, targets, sums)
        if step == "get":
            check_content(self.scratch, names, sums)
        size = sum((self.scratch / n).stat().st_size for n in names)
        sample = Sample(
            c.impl,
            f"{case}-{step}",
            jobs,
            clients,
            rep,
            size,
            len(names),
            round(wall, 3),
            round(server, 2),
            round(cpu, 2),
            round(rss / 1024, 1),
            round(b1 - b0, 2),
            round(s1 - s0, 2),
            vm_hwm_mib(c.server.pid),
            float(load_average()),
        )
        print(
            f"  {label}: {wall:.2f} s wall, server CPU {server:.2f} s, "
            f"machine CPU {b1 - b0:.1f} s, load {sample.load:.1f}",
            flush=True,
        )
        return sample


def files_of(scratch: Path, targets: list[tuple[Path, str]], sums: dict[str, str]) -> list[str]:
    """The files (relative to the scratch dir) that the commands on ``targets`` move."""
    prefixes = [f"{repo.relative_to(scratch)}/{what}" for repo, what in targets]
    return [n for n in sums if any(n == p or n.startswith(f"{p}/") for p in prefixes)]


def check_content(scratch: Path, names: list[str], sums: dict[str, str]) -> None:
    """After a get, every file fetched hashes to what was recorded when it was made."""
    for name in names:
        h = hashlib.sha256()
        with open(scratch / name, "rb") as f:
            while block := f.read(MIB):
                h.update(block)
        if h.hexdigest() != sums[name]:
            raise RuntimeError(f"{name} has the wrong content after get")


# -- reporting ------------------------------------------------------------------


def medians(samples: list[Sample]) -> Medians:
    out: Medians = {}
    for key in {(s.impl, s.op, s.jobs) for s in samples}:
        group = [s for s in samples if (s.impl, s.op, s.jobs) == key]
        fields = ("wall_s", "server_cpu_s", "client_cpu_s", "machine_cpu_s", "bytes", "files")
        med = {f: float(statistics.median(getattr(s, f) for s in group)) for f in fields}
        med["client_rss_mib"] = max(s.client_rss_mib for s in group)
        med["server_rss_mib"] = max(s.server_rss_mib for s in group)
        med["mib_s"] = med["bytes"] / med["wall_s"] / MIB
        med["files_s"] = med["files"] / med["wall_s"]
        out[key] = med
    return out


def case_of(op: str) -> str:
    return op.split("-")[0]


def rate_field(op: str) -> str:
    """What a case is judged by: MiB/s for the big file, files/s for small files; the
    clients at once by their aggregate MiB/s (the same ratio as their files/s)."""
    return "files_s" if case_of(op) == "small" else "mib_s"


def op_name(op: str, jobs: int, args: argparse.Namespace) -> str:
    case, step = op.split("-")
    if case == "big":
        what = f"{args.size / MIB:g} MiB"
    elif case == "small":
        what = f"{args.small_count} x 4 KiB, -J{jobs}"
    else:
        what = (
            f"{args.clients} clients x ({args.client_size / MIB:g} MiB + "
            f"{args.client_files} x 4 KiB)"
        )
    return f"{step} {what}"


def table(med: Medians, args: argparse.Namespace) -> str:
    """One row per measurement and contender; ours' rows show their rate and server
    CPU against native's."""
    head = ["operation", "contender", "wall s", "rate", "server CPU s", "client CPU s"]
    head += ["machine CPU s", "server RSS MiB", "rate /native", "server CPU /native"]
    rows = [head, ["---"] * len(head)]
    for case, jobs in CASES:
        for step in ("copy", "get"):
            op = f"{case}-{step}"
            n = med.get(("native", op, jobs))
            for impl in CONTENDERS:
                if (m := med.get((impl, op, jobs))) is None:
                    continue
                if case == "multi":
                    rate = f"{m['mib_s']:.1f} MiB/s, {m['files_s']:.1f} files/s"
                elif case == "big":
                    rate = f"{m['mib_s']:.1f} MiB/s"
                else:
                    rate = f"{m['files_s']:.1f} files/s"
                field = rate_field(op)
                ours = n is not None and impl != "native"
                ratio = f"{m[field] / n[field]:.2f}" if ours and n else "-"
                cpu = (
                    f"{m['server_cpu_s'] / n['server_cpu_s']:.2f}"
                    if ours and n and n["server_cpu_s"] > 0
                    else "-"
                )
                rows.append(
                    [
                        op_name(op, jobs, args),
                        impl,
                        f"{m['wall_s']:.2f}",
                        rate,
                        f"{m['server_cpu_s']:.2f}",
                        f"{m['client_cpu_s']:.1f}",
                        f"{m['machine_cpu_s']:.1f}",
                        f"{m['server_rss_mib']:.0f}",
                        ratio,
                        cpu,
                    ]
                )
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


COMPARE = {">=": operator.ge}
BOUNDS = {"big": 1.0, "small": 1.5, "multi": 1.0}  # the targets on IMPL/native rate


def targets(med: Medians, contenders: list[str]) -> list[dict[str, Any]]:
    """Each target for each of ours that was run; n/a where native was not measured."""
    out = []
    for impl in (c for c in OURS if c in contenders):
        for case, jobs in CASES:
            for step in ("copy", "get"):
                op = f"{case}-{step}"
                field = rate_field(op)
                n, o = med.get(("native", op, jobs)), med.get((impl, op, jobs))
                value = o[field] / n[field] if n and o else None
                unit = "files/s" if field == "files_s" else "MiB/s"
                where = f" -J{jobs}" if case == "small" else ""
                agg = " aggregate" if case == "multi" else ""
                name = f"{impl}/native {case} {step}{where}{agg} {unit}"
                bound = BOUNDS[case]
                ok = None if value is None else value >= bound
                result = "n/a" if ok is None else "PASS" if ok else "FAIL"
                out.append(dict(target=name, value=value, limit=f">= {bound:g}", result=result))
    return out


# -- main ------------------------------------------------------------------------


def size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except Exception as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/http-bench"), help="scratch dir")
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir afterwards")
    ap.add_argument("--size", type=size_arg, help="big file size (default 500MiB)")
    ap.add_argument("--small-count", type=int, help="number of 4 KiB files (default 1000)")
    ap.add_argument("--clients", type=int, default=16, help="clients at once (default 16)")
    ap.add_argument("--client-size", type=size_arg, help="each client's big file (8MiB)")
    ap.add_argument("--client-files", type=int, help="each client's 4 KiB files (default 20)")
    ap.add_argument("--jobs", type=int, default=JOBS, help=f"both servers' --jobs ({JOBS})")
    ap.add_argument("--repeat", type=int, default=1, help="repetitions; the table shows medians")
    ap.add_argument(
        "--contenders",
        type=contenders_of(CONTENDERS),
        default=list(CONTENDERS),
        help=f"comma-separated, from {','.join(CONTENDERS)} (default: all)",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 50 MiB, 100 files, clients with 1 MiB + 5 files",
    )
    ap.add_argument("--json", type=Path, help="write the raw samples and targets here")
    ap.add_argument("--profile", type=Path, help="run our server under cProfile, stats here")
    ap.add_argument(
        "--timeout", type=float, default=1800, help="seconds before a command counts as hung"
    )
    args = ap.parse_args()
    quick = args.quick
    args.size = args.size or (50 * MIB if quick else 500 * MIB)
    args.small_count = args.small_count or (100 if quick else 1000)
    args.client_size = args.client_size or (1 * MIB if quick else 8 * MIB)
    args.client_files = args.client_files if args.client_files is not None else 5 if quick else 20
    if min(args.repeat, args.size, args.small_count, args.clients, args.jobs) < 1:
        ap.error("--repeat, --size, --small-count, --clients and --jobs must be at least 1")
    return args


def main() -> int:
    args = parse_args()
    scratch = fresh_scratch(args.dir)
    bench = Bench(scratch, args.timeout, args.jobs, args.profile)
    bench.install_cleanup()
    t0, load = time.monotonic(), load_average()
    samples: list[Sample] = []
    try:
        bench.setup_tools()
        print(f"setting up under {scratch} (logs in {bench.logs})", flush=True)
        code = bench.code_under_test()
        bench.start_native()
        ours = [c for c in args.contenders if c in OURS]
        if ours:
            bench.start_ours(ours)
        bench.write_credentials()
        for s in bench.servers:
            print(f"{s.name}: pid {s.pid}, port {s.port}", flush=True)
        sums = bench.make_clients(args)
        chosen = [bench.contenders[c] for c in args.contenders]
        print(f"setup done in {time.monotonic() - t0:.0f} s; measuring", flush=True)
        # Each contender's get follows its own copy; the order of the contenders turns
        # with each repetition and case, so a drift in load hits all of them.
        turn = 0
        for rep in range(1, args.repeat + 1):
            for case, jobs in CASES:
                clients = args.clients if case == "multi" else 1
                order = chosen[turn % len(chosen) :] + chosen[: turn % len(chosen)]
                turn += 1
                for c in order:
                    for step in ("copy", "get"):
                        samples.append(bench.measure(c, case, step, jobs, clients, rep, sums))
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
    print(
        f"\ngit-annex {version}, {os.cpu_count()} CPUs, both servers --jobs {args.jobs}, "
        f"plain HTTP on 127.0.0.1 with basic auth, medians of {args.repeat}, "
        f"load at start {load}, at end {load_average()}, total {time.monotonic() - t0:.0f} s\n"
        f"our server runs the code in {code}\n"
    )
    print(table(med, args))
    print_targets(results)
    if args.json:
        write_results(args.json, args, samples, git_annex=version, load=load, targets=results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
