#!/usr/bin/env python3
"""Our S3 node against git-annex's native S3 remote, on one loopback S3 endpoint, in one run.

One private ``moto_server`` on 127.0.0.1 (tests/s3server.py) serves four buckets, and one
client repo has four remotes, one per contender: git-annex's own ``type=S3`` remote with
``chunk=8MiB``, ``encryption=none`` ("native-plain") and ``encryption=shared``
("native-enc"), as anchors/s3-native.sh measured it, and our cluster remote with one
``s3://`` node with ``chunk=8MiB``, plain ("ours-plain") and encrypting at the node in
git-annex's format ("ours-enc"). Each measurement times one ``git annex copy``/``get`` of one
big random file and reports wall time, throughput, client CPU, the S3 server's CPU, machine
CPU, the client's peak RSS and the peak RSS of our remote process; then the throughput
ratios of ours against native and a separate memory run (a 2 GiB file through ours-enc).
A contender that fails is reported as FAILED and the others still run. See bench/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import operator
import os
import re
import shutil
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import (
    HZ,
    MIB,
    REPO,
    Harness,
    contenders_of,
    fresh_scratch,
    load_average,
    print_targets,
    write_results,
)

sys.path.insert(0, str(REPO))  # the checkout this script is in is the code under test
from s3server import S3Server, s3_environ  # tests/s3server.py: moto_server, stopped by pid

from shared.nodes.url import parse_size

BIG, MEM = "big.bin", "mem.bin"
OPS = ("copy", "get")
MEM_OPS = ("mem-copy", "mem-get")  # the memory run: a --memory-size file through ours-enc
CHUNK = 8 * MIB
PREFIX = "p/"  # our nodes' object prefix in their buckets
CONTENDERS = ("native-plain", "native-enc", "ours-plain", "ours-enc")
PEER = {"ours-plain": "native-plain", "ours-enc": "native-enc"}  # ours -> native counterpart
PAIRS = (("native-plain", "ours-plain"), ("native-enc", "ours-enc"))
MEMORY_IMPL = "ours-enc"
MEMORY_LIMIT = 200  # MiB, peak RSS of our remote process for a --memory-size object
# (contender, native counterpart, op, comparison, bound) on contender/native MiB/s
TARGETS = (
    ("ours-enc", "native-enc", "copy", ">=", 3.0),
    ("ours-plain", "native-plain", "copy", ">=", 1.0),
    ("ours-plain", "native-plain", "get", ">=", 1.0),
    ("ours-enc", "native-enc", "get", None, None),  # reference only
)
COMPARE = {">=": operator.ge, "<": operator.lt}
POLL, SCAN = 0.05, 0.25  # seconds between VmHWM reads of our remote, and /proc scans for it
REMOTE_MARKS = (b"git-annex-remote-cluster", b"git_annex_remote_cluster")
REMOTE_ARGS = '-m git_annex_remote_cluster "$@"'  # what bin/git-annex-remote-cluster runs
Medians = dict[tuple[str, str], dict[str, Any]]  # (impl, op) -> figures


@dataclass
class Sample:
    impl: str  # one of CONTENDERS
    op: str  # one of OPS or MEM_OPS
    rep: int
    bytes: int
    wall_s: float
    client_cpu_s: float  # user+sys of the client tree (waited-for children included)
    client_rss_mib: float  # largest single process of the client tree (like GNU time %M)
    remote_rss_mib: float | None  # peak VmHWM of our remote process(es); None for native
    remote_cpu_s: float | None  # user+sys of our remote process(es), as last polled
    server_cpu_s: float  # user+sys of moto_server during the command
    machine_cpu_s: float  # /proc/stat busy delta, steal excluded
    steal_s: float


@dataclass
class Contender:
    impl: str
    bucket: str
    prefix: str = ""
    baseline: set[str] = field(default_factory=set)  # objects with nothing stored (annex-uuid)

    @property
    def ours(self) -> bool:
        return self.impl.startswith("ours")

    @property
    def encrypted(self) -> bool:
        return self.impl.endswith("-enc")


class RemoteWatch:
    """While a timed command runs: the peak RSS (VmHWM) of every process of our remote under it.

    A thread scans /proc for the command's descendants whose command line names
    git-annex-remote-cluster (and their own children), and reads their VmHWM every POLL
    seconds. VmHWM only grows, so the last read before a process exits is its peak, give
    or take what it allocated in its last POLL seconds.
    """

    def __init__(self, bench: Harness) -> None:
        self.bench = bench
        self.peaks: dict[int, int] = {}  # pid -> VmHWM kB
        self.cpu: dict[int, float] = {}  # pid -> user+sys CPU s, as last seen
        self.cmdlines: dict[int, bytes] = {}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def __enter__(self) -> RemoteWatch:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stopping.set()
        self.thread.join()

    @property
    def peak_mib(self) -> float | None:
        return round(max(self.peaks.values()) / 1024, 1) if self.peaks else None

    @property
    def cpu_s(self) -> float | None:
        return round(sum(self.cpu.values()), 2) if self.cpu else None

    def loop(self) -> None:
        pids: set[int] = set()
        last_scan = 0.0
        while not self.stopping.is_set():
            current = self.bench.current
            if current is not None and time.monotonic() - last_scan >= SCAN:
                pids |= self.remotes_under(current.pid)
                last_scan = time.monotonic()
            for pid in list(pids):
                kb = vm_hwm(pid)
                if kb is None:
                    pids.discard(pid)
                else:
                    self.peaks[pid] = max(kb, self.peaks.get(pid, 0))
                    self.cpu[pid] = proc_cpu(pid)
            self.stopping.wait(POLL)

    def remotes_under(self, root: int) -> set[int]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat", "rb") as f:
                        stat = f.read()
                except OSError:
                    continue
                ppid = int(stat[stat.rfind(b")") + 2 :].split()[1])
                children.setdefault(ppid, []).append(int(entry))
        found: set[int] = set()
        todo = [(root, False)]
        while todo:
            pid, inside = todo.pop()
            inside = inside or self.is_remote(pid)
            if inside:
                found.add(pid)
            todo += [(c, inside) for c in children.get(pid, ())]
        return found

    def is_remote(self, pid: int) -> bool:
        if pid not in self.cmdlines:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    self.cmdlines[pid] = f.read()
            except OSError:
                return False
        return any(m in self.cmdlines[pid] for m in REMOTE_MARKS)


def vm_hwm(pid: int) -> int | None:
    """A process's peak RSS in kB, None once it is gone (or a zombie)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def proc_cpu(pid: int | None) -> float:
    """user+sys CPU seconds of one process so far (all its threads)."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / HZ


class Bench(Harness):
    """The scratch world: tools, HOME, the S3 server, one client repo, and every process we
    started."""

    def __init__(self, scratch: Path, timeout: float) -> None:
        super().__init__(scratch, timeout)
        self.env = s3_environ(self.env)  # the dummy AWS credentials, no user config
        self.server = S3Server(scratch / "s3", name="moto")
        self.client = scratch / "client"

    # -- the world --------------------------------------------------------------

    def setup_tools(self) -> None:
        for d in (self.bin, self.home, self.logs, self.scratch / "tmp"):
            d.mkdir(parents=True, exist_ok=True)
        for name in ("git-annex", "git-remote-annex"):
            (self.bin / name).symlink_to(self.ga)  # the multicall binary, not the Python wrapper
        # Our remote runs from this checkout (REPO), whatever the virtualenv's editable
        # install points at: so a copy of the tree can be benchmarked while it is edited.
        for name, args in (("bench-python", '"$@"'), ("git-annex-remote-cluster", REMOTE_ARGS)):
            path = self.bin / name
            path.write_text(
                f"#!/bin/sh\nexport PYTHONPATH={REPO}${{PYTHONPATH:+:$PYTHONPATH}}\n"
                f"exec {sys.executable} {args}\n"
            )
            path.chmod(0o755)
        (self.home / ".gitconfig").write_text(
            "[user]\n\tname = bench\n\temail = bench@localhost\n[init]\n\tdefaultBranch = main\n"
        )

    def code_under_test(self) -> str:
        """Where the remote's ``shared`` package comes from (checks the wrapper)."""
        probe = "import shared, git_annex_remote_cluster as g; print(shared.__file__)"
        where = self.run(self.bin / "bench-python", "-c", probe).strip()
        if not Path(where).is_relative_to(REPO):
            raise RuntimeError(f"our remote would import {where}, not the code under {REPO}")
        return str(Path(where).parent)

    def start_server(self, buckets: list[str]) -> None:
        self.server.start()
        for bucket in buckets:
            self.server.create_bucket(bucket)

    def make_client(self) -> None:
        self.client.mkdir()
        self.git(self.client, "init", "-q")
        self.git(self.client, "annex", "init", "-q", "s3client")
        # git-annex refuses http to loopback unless allowed (anchors' pitfall).
        self.git(self.client, "config", "annex.security.allowed-ip-addresses", "127.0.0.1")

    def add_file(self, name: str, size: int) -> str:
        """A random file of `size` bytes in the client, annexed and committed; its sha256."""
        h = hashlib.sha256()
        with open(self.client / name, "wb") as f:
            for off in range(0, size, MIB):
                block = os.urandom(min(MIB, size - off))
                h.update(block)
                f.write(block)
        self.git(self.client, "annex", "add", "--quiet", name)
        self.git(self.client, "commit", "-qm", name)
        return h.hexdigest()

    def build(self, c: Contender) -> None:
        """The contender's remote in the client repo, over its own bucket."""
        if c.ours:
            c.prefix = PREFIX
            url = f"s3://{c.bucket}/{c.prefix}?endpoint={self.server.endpoint}&chunk=8MiB"
            url += "&encryption=shared" if c.encrypted else ""
            init = ["type=external", "externaltype=cluster", "encryption=none", f"nodes=s={url}"]
        else:
            init = ["type=S3", "host=127.0.0.1", f"port={self.server.port}", "protocol=http"]
            init += ["requeststyle=path", "chunk=8MiB", f"bucket={c.bucket}"]
            init += [f"encryption={'shared' if c.encrypted else 'none'}"]
        self.git(self.client, "annex", "initremote", c.impl, *init)
        c.baseline = set(self.server.list_keys(c.bucket, c.prefix))

    # -- one measurement ------------------------------------------------------

    def stored(self, c: Contender) -> set[str]:
        """The objects in the contender's bucket (under its prefix) beyond the baseline."""
        return set(self.server.list_keys(c.bucket, c.prefix)) - c.baseline

    def drop_from(self, c: Contender, name: str) -> None:
        self.git(self.client, "annex", "drop", "--force", "--from", c.impl, name)

    def measure(self, c: Contender, op: str, rep: int, name: str, sha: str) -> Sample:
        path = self.client / name
        if op.endswith("copy"):  # the bucket must not have it, or copy is skipped
            self.git(self.client, "annex", "get", name)
            self.drop_from(c, name)
            if left := self.stored(c):
                raise RuntimeError(f"{len(left)} object(s) still in {c.bucket} before the copy")
            cmd = ["git", "annex", "copy", "--to", c.impl, name]
        else:
            self.git(self.client, "annex", "drop", "--force", name)
            cmd = ["git", "annex", "get", "--from", c.impl, name]
        label = f"{c.impl}-{op}-{rep}"
        server0 = proc_cpu(self.server.pid)
        with RemoteWatch(self) as watch:
            wall, busy, steal, ru = self.timed(cmd, self.client, label)
        server = proc_cpu(self.server.pid) - server0
        size = path.stat().st_size
        if op.endswith("copy"):
            want, got = math.ceil(size / CHUNK), len(self.stored(c))
            if got != want:  # chunk=8MiB: one object per chunk, for every contender
                raise RuntimeError(f"{got} objects in {c.bucket} after the copy, not {want}")
        else:
            check_content(path, sha)
        cpu, rss = round(ru.ru_utime + ru.ru_stime, 2), round(ru.ru_maxrss / 1024, 1)
        remote, remote_cpu = (watch.peak_mib, watch.cpu_s) if c.ours else (None, None)
        if c.ours and remote is None:
            raise RuntimeError("no git-annex-remote-cluster process was seen during the command")
        sample = Sample(
            c.impl,
            op,
            rep,
            size,
            round(wall, 3),
            cpu,
            rss,
            remote,
            remote_cpu,
            round(server, 2),
            round(busy, 2),
            round(steal, 2),
        )
        rate = size / wall / MIB
        print(
            f"  {label}: {wall:.2f} s wall, {rate:.1f} MiB/s, {busy:.1f} s machine CPU",
            flush=True,
        )
        return sample

    def cleanup(self) -> None:
        super().cleanup()
        self.server.stop()  # by pid; idempotent


def check_content(path: Path, want: str) -> None:
    """After a get, the file hashes to what was recorded when it was made."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MIB):
            h.update(block)
    if h.hexdigest() != want:
        raise RuntimeError(f"{path.name} has the wrong content after get")


GENERIC = re.compile(
    r"^(failed|ok|\(recording state in git\.\.\.\)|(copy|get|drop): \d+ failed"
    r"|.* exited -?\d+.*:|\(Delaying .*\)|git-annex: \w+: \d+ failed)$"
)


def last_line(e: BaseException) -> str:
    """The most telling last line of an error: git-annex's own summary lines skipped."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    telling = [line for line in lines if not GENERIC.match(line)]
    text = (telling or lines or [type(e).__name__])[-1]
    return text if len(text) <= 200 else text[:197] + "..."


# -- reporting ------------------------------------------------------------------


def medians(samples: list[Sample]) -> Medians:
    out: Medians = {}
    for key in {(s.impl, s.op) for s in samples}:
        group = [s for s in samples if (s.impl, s.op) == key]
        med: dict[str, Any] = {
            f: statistics.median(getattr(s, f) for s in group)
            for f in ("wall_s", "client_cpu_s", "server_cpu_s", "machine_cpu_s", "bytes")
        }
        med["client_rss_mib"] = max(s.client_rss_mib for s in group)
        remote = [s.remote_rss_mib for s in group if s.remote_rss_mib is not None]
        med["remote_rss_mib"] = max(remote, default=None)
        remote_cpu = [s.remote_cpu_s for s in group if s.remote_cpu_s is not None]
        med["remote_cpu_s"] = statistics.median(remote_cpu) if remote_cpu else None
        med["rate"] = med["bytes"] / med["wall_s"] / MIB
        out[key] = med
    return out


def op_name(op: str, size: int) -> str:
    return f"{op.removeprefix('mem-')} {size / MIB:g} MiB"


def table(med: Medians, sizes: dict[str, int], failed: dict[str, str]) -> str:
    """One row per operation and contender; ours' rows also show their rate / native's."""
    head = ["operation", "contender", "wall s", "rate", "CPU s client/remote/server/machine"]
    head += ["peak RSS MiB client/remote", "rate /native"]
    rows = [head, ["---"] * len(head)]
    for op in OPS + MEM_OPS:
        impls = (MEMORY_IMPL,) if op in MEM_OPS else CONTENDERS
        for impl in impls:
            m = med.get((impl, op))
            if m is None:
                if impl in failed and op in OPS:
                    rows.append([op_name(op, sizes[op]), impl, "FAILED"] + ["-"] * 4)
                continue
            n = med.get((PEER[impl], op)) if impl in PEER and op in OPS else None
            remote = "-" if m["remote_rss_mib"] is None else f"{m['remote_rss_mib']:.0f}"
            remote_cpu = "-" if m["remote_cpu_s"] is None else f"{m['remote_cpu_s']:.1f}"
            rows.append(
                [
                    op_name(op, sizes[op]),
                    f"{impl} (FAILED)" if impl in failed else impl,
                    f"{m['wall_s']:.2f}",
                    f"{m['rate']:.1f} MiB/s",
                    f"{m['client_cpu_s']:.1f} / {remote_cpu} / {m['server_cpu_s']:.1f} / "
                    f"{m['machine_cpu_s']:.1f}",
                    f"{m['client_rss_mib']:.0f} / {remote}",
                    "-" if n is None else f"{m['rate'] / n['rate']:.2f}",
                ]
            )
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def verdict(
    name: str, value: float | None, cmp: str | None, bound: float | None, why: str = ""
) -> dict[str, Any]:
    if cmp is None or bound is None:
        result, limit = ("n/a" if value is None else "reference"), "-"
    else:
        ok = None if value is None else COMPARE[cmp](value, bound)
        result = why or ("n/a" if ok is None else "PASS" if ok else "FAIL")
        limit = f"{cmp} {bound:g}"
    return dict(target=name, value=value, limit=limit, result=result)


def targets(
    med: Medians, chosen: list[str], failed: dict[str, str], memory_size: int, mem_error: str
) -> list[dict[str, Any]]:
    """The issue's targets. A failed contender of ours FAILs its targets; a target whose
    native counterpart failed or was not run is n/a."""
    out = []
    for impl, peer, op, cmp, bound in TARGETS:
        name = f"{impl}/{peer} {op} MiB/s"
        o, n = med.get((impl, op)), med.get((peer, op))
        value = o["rate"] / n["rate"] if o and n else None
        why = ""
        if impl in failed and peer in chosen and peer not in failed and cmp is not None:
            why = "FAIL (failed)"
        out.append(verdict(name, value, cmp, bound, why))
    name = f"{MEMORY_IMPL} remote peak RSS MiB, {memory_size / MIB:g} MiB copy+get"
    remote = [m["remote_rss_mib"] for op in MEM_OPS if (m := med.get((MEMORY_IMPL, op)))]
    value = max((r for r in remote if r is not None), default=None)
    why = ""
    if memory_size and MEMORY_IMPL in chosen and (MEMORY_IMPL in failed or mem_error):
        why = "FAIL (failed)"
    out.append(verdict(name, value, "<", MEMORY_LIMIT, why))
    return out


# -- main ------------------------------------------------------------------------


def size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except Exception as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/s3-bench"), help="scratch dir")
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir afterwards")
    ap.add_argument("--size", type=size_arg, default=500 * MIB, help="file size (500MiB)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions; the table shows medians")
    ap.add_argument(
        "--memory-size",
        type=size_arg,
        default=2048 * MIB,
        help=f"file size of the memory run through {MEMORY_IMPL} (2GiB; 0 skips it)",
    )
    ap.add_argument(
        "--contenders",
        type=contenders_of(CONTENDERS),
        default=list(CONTENDERS),
        help=f"comma-separated, from {','.join(CONTENDERS)} (default: all)",
    )
    ap.add_argument("--json", type=Path, help="write the raw samples and targets here")
    ap.add_argument(
        "--timeout", type=float, default=1200, help="seconds before a command counts as hung"
    )
    args = ap.parse_args()
    if args.reps < 1 or args.size < 1:
        ap.error("--reps and --size must be at least 1")
    return args


def main() -> int:
    args = parse_args()
    scratch = fresh_scratch(args.dir)
    bench = Bench(scratch, args.timeout)
    bench.install_cleanup()
    t0, load = time.monotonic(), load_average()
    samples: list[Sample] = []
    failed: dict[str, str] = {}  # impl -> where and why
    mem_error = ""
    try:
        bench.setup_tools()
        print(f"setting up under {scratch} (logs in {bench.logs})", flush=True)
        code = bench.code_under_test()
        bench.start_server(list(args.contenders))
        print(f"moto_server pid {bench.server.pid} at {bench.server.endpoint}", flush=True)
        bench.make_client()
        sha = bench.add_file(BIG, args.size)
        built: dict[str, Contender] = {}
        for impl in args.contenders:
            c = Contender(impl, bucket=impl)
            try:
                bench.build(c)
                built[impl] = c
            except Exception as e:
                failed[impl] = f"initremote: {last_line(e)}"
                print(f"  {impl} FAILED at initremote: {last_line(e)}", flush=True)
        print(f"setup done in {time.monotonic() - t0:.0f} s; measuring", flush=True)
        # Each contender's get follows its own copy. Native and ours of a pair alternate
        # which goes first (native first on odd repetitions), so a drift in load hits both.
        for rep in range(1, args.reps + 1):
            for pair in PAIRS:
                chosen = [built[i] for i in pair if i in built]
                for c in chosen if rep % 2 else chosen[::-1]:
                    for op in OPS:
                        if c.impl in failed:
                            break
                        try:
                            samples.append(bench.measure(c, op, rep, BIG, sha))
                        except Exception as e:
                            failed[c.impl] = f"{op} rep {rep}: {last_line(e)}"
                            print(f"  {c.impl} FAILED at {op} rep {rep}: {last_line(e)}")
        mem = built.get(MEMORY_IMPL)
        if args.memory_size and mem is not None and mem.impl not in failed:
            print(f"memory run: {args.memory_size / MIB:g} MiB through {mem.impl}", flush=True)
            try:
                bench.drop_from(mem, BIG)  # the bucket holds the memory file only
                mem_sha = bench.add_file(MEM, args.memory_size)
                for op in MEM_OPS:
                    samples.append(bench.measure(mem, op, 1, MEM, mem_sha))
                bench.drop_from(mem, MEM)
            except Exception as e:
                mem_error = f"memory run: {last_line(e)}"
                print(f"  {mem.impl} FAILED in the {mem_error}", flush=True)
        version = bench.run("git", "annex", "version", "--raw").strip()
    except RuntimeError as e:
        args.keep = True
        print(f"benchmark failed: {e}\n(kept {scratch} for its logs)", file=sys.stderr)
        return 1
    finally:
        bench.cleanup()
        if not args.keep:
            if failed or mem_error:  # keep the logs of the failures, not the data
                for p in scratch.iterdir():
                    if p != bench.logs:
                        shutil.rmtree(p, ignore_errors=True)
            else:
                shutil.rmtree(scratch, ignore_errors=True)
    med = medians(samples)
    results = targets(med, args.contenders, failed, args.memory_size, mem_error)
    end_load = load_average()
    print(
        f"\ngit-annex {version}, {os.cpu_count()} CPUs, moto_server on 127.0.0.1, chunk=8MiB, "
        f"medians of {args.reps}, load at start {load}, at end {end_load}, "
        f"total {time.monotonic() - t0:.0f} s\nour remote runs the code in {code}\n"
    )
    sizes = {"copy": args.size, "get": args.size}
    sizes |= {op: args.memory_size for op in MEM_OPS}
    print(table(med, sizes, failed))
    errors = dict(failed)
    if mem_error:
        errors[f"{MEMORY_IMPL} (memory run)"] = mem_error
    for impl, why in errors.items():
        print(f"\nFAILED {impl}: {why}", end="")
    if errors:
        print(f"\n(kept the log of every command in {bench.logs})")
    print_targets(results, lambda target: 1 if "RSS" in target else 2)
    if args.json:
        write_results(
            args.json,
            args,
            samples,
            git_annex=version,
            load=load,
            code=code,
            failed=errors,
            targets=results,
        )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
