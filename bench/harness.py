"""What the benchmarks share: the scratch world's processes, timing, and cleanup.

Every command runs in its own process group with the benchmark's isolated
environment, so cleanup (a finally block, atexit, or a signal) can kill git
*and* git-annex, end the ssh ControlMasters git-annex leaves behind, and stop
the private sshd hosts by pid.
"""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from subprocess import DEVNULL, PIPE, Popen, TimeoutExpired
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from sshd import SSHD  # tests/sshd.py: private sshd, stopped by pid

REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
HZ = os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / HZ, v[7] / HZ


def load_average() -> str:
    """The 1-minute load average, printed with the results: a busy machine skews them."""
    return Path("/proc/loadavg").read_text().split()[0]


def print_targets(
    results: Sequence[dict[str, Any]], digits: Callable[[str], int] = lambda _target: 2
) -> None:
    """The targets' verdicts as a markdown table; ``digits(target)``: decimals shown."""
    print("\n| target | measured | limit | result |\n|---|---|---|---|")
    for t in results:
        v = "-" if t["value"] is None else f"{t['value']:.{digits(t['target'])}f}"
        print(f"| {t['target']} | {v} | {t['limit']} | {t['result']} |")


def write_results(
    path: Path, args: argparse.Namespace, samples: Sequence[Any], **fields: object
) -> None:
    """The raw results as JSON: ``fields`` (version, load, targets, ...), the options the
    run had and every sample."""
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    doc = {**fields, "config": config, "samples": [asdict(s) for s in samples]}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nraw results: {path}")


def real_git_annex() -> Path:
    spec = importlib.util.find_spec("git_annex")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the PyPI git-annex package is missing from this Python: run make venv")
    return Path(next(iter(spec.submodule_search_locations))) / "git-annex"


def fresh_scratch(directory: Path) -> Path:
    """The scratch directory, emptied; refuses places that must never be wiped."""
    scratch = directory.resolve()
    if scratch in (Path("/"), Path.home(), REPO) or REPO.is_relative_to(scratch):
        sys.exit(f"refusing to wipe {scratch}")
    shutil.rmtree(scratch, ignore_errors=True)
    return scratch


def contenders_of(known: Sequence[str]) -> Callable[[str], list[str]]:
    """An argparse type: "a,c" -> those contenders, in the order of ``known``."""

    def parse(text: str) -> list[str]:
        names = {n.strip() for n in text.split(",") if n.strip()}
        if not names or names - set(known):
            raise argparse.ArgumentTypeError(f"choose among {', '.join(known)}, not {text!r}")
        return [c for c in known if c in names]

    return parse


# GNU time (Debian's "time"): without it, peak RSS figures include the harness's.
TIME = shutil.which("time", path="/usr/bin:/bin")


@dataclass(frozen=True)
class Usage:
    """The parts of a command tree's rusage the benchmarks report; ``ru_maxrss`` (KiB)
    is GNU time's figure for the command when it ran under time (see Harness.measured)."""

    ru_utime: float
    ru_stime: float
    ru_maxrss: int

    @classmethod
    def of(cls, ru: Any, rss_file: Path) -> Usage:
        try:
            maxrss = int(rss_file.read_text().split()[-1])
        except (OSError, ValueError, IndexError):
            maxrss = ru.ru_maxrss
        return cls(ru.ru_utime, ru.ru_stime, maxrss)


class Harness:
    """The scratch world: tools, HOME, sshd hosts, and every process we started.

    ``timeout`` (seconds, or None): a command running longer is killed and fails the run.
    """

    def __init__(self, scratch: Path, timeout: float | None = None) -> None:
        self.scratch, self.timeout = scratch, timeout
        self.bin, self.srvbin = scratch / "bin", scratch / "srvbin"
        self.home, self.logs = scratch / "home", scratch / "logs"
        self.sshds: list[SSHD] = []
        self.current: Popen[Any] | None = None
        self.ssh_dirs: list[Path] = []  # where git-annex keeps ssh ControlMaster sockets
        self.ga = real_git_annex()
        self.env = {
            "PATH": f"{self.bin}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "GIT_CONFIG_NOSYSTEM": "1",
            "MAGIC": str(self.ga.parent / "magic.mgc"),
            "TMPDIR": str(scratch / "tmp"),
        }

    def install_cleanup(self) -> None:
        """Clean up at exit, and turn SIGINT/SIGTERM/SIGHUP into an orderly exit."""
        atexit.register(self.cleanup)

        def on_signal(signum: int, _frame: object) -> None:
            raise SystemExit(128 + signum)

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, on_signal)

    # -- processes ------------------------------------------------------------

    def spawn(self, argv: list[str], cwd: Path | None, out: Any, err: Any, **kw: Any) -> Popen[Any]:
        """Start a command in its own process group, so cleanup can kill git *and* git-annex."""
        kw.update(cwd=cwd, env=self.env, stdin=DEVNULL, stdout=out, stderr=err, process_group=0)
        self.current = Popen(argv, **kw)
        return self.current

    def kill_current(self) -> None:
        if self.current is not None:
            with suppress(ProcessLookupError):
                os.killpg(self.current.pid, signal.SIGKILL)

    def run(self, *cmd: str | Path, cwd: Path | None = None, check: bool = True) -> str:
        """An untimed step; its output goes to logs/setup.log, stdout is returned."""
        argv = [str(c) for c in cmd]
        p = self.spawn(argv, cwd, PIPE, PIPE, text=True)
        try:
            out, err = p.communicate(timeout=self.timeout)
        except TimeoutExpired:
            self.kill_current()
            out, err = p.communicate()
            err += f"\n(killed after {self.timeout:g} s)"
            p.returncode = -signal.SIGKILL
        self.current = None
        with open(self.logs / "setup.log", "a") as log:
            log.write(f"$ {' '.join(argv)}  (in {cwd})\n{out}{err}")
        if check and p.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {p.returncode}:\n{err}")
        return str(out)

    def git(self, cwd: Path | None, *args: str | Path) -> str:
        return self.run("git", *args, cwd=cwd)

    def measured(self, cmd: list[str], label: str) -> tuple[list[str], Path]:
        """``cmd`` started by GNU time, which writes the peak RSS of its tree to the
        returned file. Needed because wait4's ru_maxrss of a child we fork counts the
        pages the child shared with this harness before its exec: every figure would
        be at least this process's own RSS (it read 133 MiB for a 27 MiB command)."""
        out = self.logs / f"{label}.rss"
        out.unlink(missing_ok=True)
        if TIME is None:
            return cmd, out
        return [TIME, "-q", "-f", "%M", "-o", str(out), *cmd], out

    def timed(
        self,
        cmd: list[str],
        cwd: Path,
        label: str,
        on_start: Callable[[int], object] | None = None,
    ) -> tuple[float, float, float, Any]:
        """Run cmd after a sync: wall s, busy and steal machine CPU s, the tree's rusage.

        ``on_start(pid)`` runs once the command has started (pid is also its process
        group): a watcher of processes that wait4 cannot reach starts there.
        """
        os.sync()
        b0, s0 = machine_cpu()
        t0 = time.monotonic()
        argv, rss_file = self.measured(cmd, label)
        with open(self.logs / f"{label}.log", "w") as log:
            p = self.spawn(argv, cwd, log, log)
            if on_start is not None:
                on_start(p.pid)
            watchdog = None
            if self.timeout is not None:  # a hang ends the run
                watchdog = threading.Timer(self.timeout, self.kill_current)
                watchdog.daemon = True  # a signal's SystemExit must not wait for it
                watchdog.start()
            try:
                _, status, ru = os.wait4(p.pid, 0)
            finally:
                if watchdog is not None:
                    watchdog.cancel()
            p.returncode = os.waitstatus_to_exitcode(status)
            self.current = None
        wall = time.monotonic() - t0
        b1, s1 = machine_cpu()
        if p.returncode != 0:
            tail = (self.logs / f"{label}.log").read_text()[-2000:]
            hung = (
                f" (killed after {self.timeout:g} s)"
                if self.timeout is not None and wall >= self.timeout
                else ""
            )
            raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}{hung}:\n{tail}")
        return wall, b1 - b0, s1 - s0, Usage.of(ru, rss_file)

    def close_masters(self) -> None:
        """End the ssh ControlMasters git-annex leaves behind (ControlPersist), so that
        every measurement starts cold and nothing outlives the run."""
        for d in self.ssh_dirs:
            for sock in d.glob("*"):
                if sock.is_socket():
                    self.run("ssh", "-S", sock, "-O", "exit", sock.name, check=False)

    def cleanup(self) -> None:
        """Idempotent: the finally block, atexit and signals may all get here."""
        self.kill_current()
        self.current = None
        self.close_masters()
        for server in self.sshds:
            server.stop()  # by pid: the listener and its connection children
