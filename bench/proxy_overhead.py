#!/usr/bin/env python3
"""Proxy overhead: our gateway against reaching the same storage directly, in one run.

Two private sshd "hosts" on 127.0.0.1, gwhost and nodehost. Our contenders use one
client repo with two remotes: "direct" (the cluster remote with one ``sftp://`` node
on nodehost) and "gateway" (the proxy remote, through ``git-annex-remote-proxy serve``
on gwhost, whose target is one ``sftp://`` node on nodehost). For reference, native
git-annex's own proxy: a gateway repo on gwhost proxying a node repo on nodehost
("native-proxy") against the node repo as a plain ssh remote ("native-direct"). Each
measurement times one ``git annex copy``/``get`` of one big random file and reports
wall time, client CPU, the client's peak RSS and whole-machine CPU; then the ratio
via/direct of each pair. See bench/README.md.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import (
    MIB,
    REPO,
    Harness,
    contenders_of,
    fresh_scratch,
    load_average,
    print_targets,
    write_results,
)
from sshd import SSHD, ssh_config_for  # tests/sshd.py: private sshd, stopped by pid

from shared.nodes.url import parse_size

GW, NODE = "gwhost", "nodehost"
BIG = "big.bin"
OPS = ("copy", "get")
JOBS = 1
# (via, direct, label): the ratio via/direct is the proxy overhead of that design.
PAIRS = (("gateway", "direct", "ours"), ("native-proxy", "native-direct", "native"))
CONTENDERS = ("direct", "gateway", "native-direct", "native-proxy")
LIMIT = 1.05  # our gateway's wall time at most 5 % above direct access
Medians = dict[tuple[str, str], dict[str, float]]  # (impl, op) -> figures


@dataclass
class Sample:
    impl: str  # one of CONTENDERS
    op: str  # one of OPS
    rep: int
    bytes: int
    wall_s: float
    client_cpu_s: float  # user+sys of the client tree (waited-for children included)
    client_rss_mib: float  # largest single process of the client tree (like GNU time %M)
    machine_cpu_s: float  # /proc/stat busy delta, steal excluded
    steal_s: float


@dataclass
class Contender:
    impl: str
    client: Path
    remote: str
    node_dir: Path  # where the node keeps its objects (annex/objects of a node repo)
    key: str


class Bench(Harness):
    """The scratch world: tools, two HOMEs, two sshd hosts, and every process we started."""

    def __init__(self, scratch: Path, timeout: float) -> None:
        super().__init__(scratch, timeout)
        self.gw_home = scratch / "gw-home"
        self.proxy = REPO / ".venv/bin/git-annex-remote-proxy"

    # -- the world --------------------------------------------------------------

    def setup_tools(self) -> None:
        for d in (self.bin, self.srvbin, self.home, self.gw_home, self.logs, self.scratch / "tmp"):
            d.mkdir(parents=True, exist_ok=True)
        for name in ("git-annex", "git-annex-shell", "git-remote-annex"):
            (self.bin / name).symlink_to(self.ga)  # the multicall binary, not the Python wrapper
        for name in ("git-annex-remote-cluster", "git-annex-remote-proxy"):
            (self.bin / name).symlink_to(REPO / ".venv/bin" / name)
        # OpenSSH reads the passwd home, not $HOME: point it at the benchmark's config.
        wrappers = {self.bin / "ssh": 'exec /usr/bin/ssh -F "$HOME/.ssh/config" "$@"'}
        # Server side: git-annex-shell runs with the gateway's HOME, whose ssh config reaches
        # nodehost (the native gateway's ssh to its node goes through bin/ssh above).
        env = f"HOME={self.gw_home} " + " ".join(
            f"{k}={self.env[k]}" for k in ("GIT_CONFIG_NOSYSTEM", "MAGIC")
        )
        for name in ("git-annex", "git-annex-shell"):
            wrappers[self.srvbin / name] = f'export {env}\nexec {self.bin / name} "$@"'
        for path, body in wrappers.items():
            path.write_text(f"#!/bin/sh\n{body}\n")
            path.chmod(0o755)
        gitconfig = "[user]\n\tname = bench\n\temail = bench@localhost\n"
        for home in (self.home, self.gw_home):
            (home / ".gitconfig").write_text(gitconfig + "[init]\n\tdefaultBranch = main\n")

    def start_hosts(self) -> None:
        """gwhost and nodehost (tests/sshd.py) on 127.0.0.1. The client's HOME reaches both,
        the gateway's HOME (its own ssh config and known_hosts) reaches nodehost."""
        key = self.scratch / "client_key"
        self.run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", key)
        path = (str(self.srvbin), str(self.bin), "/usr/local/bin", "/usr/bin", "/bin")
        for name in (GW, NODE):
            self.sshds.append(SSHD(self.scratch / name, key, path=path, name=name))
            self.sshds[-1].start()
        hosts = {s.name: s for s in self.sshds}
        ssh_config_for(self.home, hosts, key)
        ssh_config_for(self.gw_home, {NODE: hosts[NODE]}, key)
        for s in self.sshds:  # also proves the server side finds git-annex-shell on its PATH
            self.run("ssh", s.name, "command -v git-annex-shell && git-annex version --raw")
        # The gateway host reaches nodehost with the gateway's HOME, and only with it.
        self.run("ssh", GW, f"HOME={self.gw_home} ssh {NODE} true")

    def make_data(self, size: int) -> str:
        """big.bin (random, `size` bytes); its sha256."""
        data = self.scratch / "data"
        data.mkdir()
        h = hashlib.sha256()
        with open(data / BIG, "wb") as f:
            for off in range(0, size, MIB):
                block = os.urandom(min(MIB, size - off))
                h.update(block)
                f.write(block)
        return h.hexdigest()

    def add_data(self, client: Path) -> str:
        shutil.copy(self.scratch / "data" / BIG, client / BIG)
        self.git(client, "annex", "add", "--quiet", BIG)
        self.git(client, "commit", "-qm", "data")
        return self.git(client, "annex", "find", "--format=${key}\\n", BIG).strip()

    def build_ours(self) -> list[Contender]:
        """client-ours with two remotes over sibling directories on nodehost:
        direct (cluster remote, one sftp:// node) and gw (proxy remote via gwhost)."""
        node = self.scratch / NODE
        direct_dir, gw_dir = node / "node-direct", node / "node-gw"
        for d in (direct_dir, gw_dir):
            d.mkdir()
        config = self.scratch / GW / "gateway.toml"  # the gateway's file, on "gwhost"
        self.run(self.proxy, "gateway", "--config", config, "add", "t", f"n=sftp://{NODE}{gw_dir}")
        client = self.scratch / "client-ours"
        client.mkdir()
        self.ssh_dirs.append(client / ".git/annex/ssh")
        self.git(client, "init", "-q")
        self.git(client, "annex", "init", "-q", "client-ours")
        init = ["type=external", "externaltype=cluster", "encryption=none"]
        self.git(
            client, "annex", "initremote", "direct", *init, f"nodes=n=sftp://{NODE}{direct_dir}"
        )
        command = f"env HOME={self.gw_home} {self.proxy} serve --config {config}"
        init = ["type=external", "externaltype=proxy", "encryption=none"]
        init += [f"gateway=ssh://{GW}", "target=t", f"gatewaycommand={command}"]
        self.git(client, "annex", "initremote", "gw", *init)
        key = self.add_data(client)
        return [
            Contender("direct", client, "direct", direct_dir, key),
            Contender("gateway", client, "gw", gw_dir, key),
        ]

    def build_native(self) -> list[Contender]:
        """A native gateway repo on gwhost proxying a node repo on nodehost over ssh
        (annex-proxy, updateproxy); client-native, cloned from the gateway over ssh, uses
        origin-node (proxied) and node (the same node repo as a plain ssh remote)."""
        gw, node = self.scratch / GW / "native-gateway.git", self.scratch / NODE / "native-node.git"
        client = self.scratch / "client-native"
        self.git(None, "init", "-q", "--bare", gw)
        self.git(gw, "annex", "init", "-q", "gateway")
        self.git(None, "clone", "-q", "--bare", gw, node)
        self.git(node, "annex", "init", "-q", "node")
        self.git(gw, "remote", "add", "node", f"{NODE}:{node}")
        self.git(gw, "fetch", "-q", "node")
        uuid = self.git(node, "config", "annex.uuid").strip()
        self.git(gw, "config", "remote.node.annex-uuid", uuid)
        self.git(gw, "config", "remote.node.annex-proxy", "true")
        self.git(gw, "annex", "updateproxy")
        self.ssh_dirs.append(gw / "annex/ssh")
        self.git(None, "clone", "-q", f"{GW}:{gw}", client)
        self.ssh_dirs.append(client / ".git/annex/ssh")
        self.git(client, "annex", "init", "-q", "client-native")
        self.git(client, "remote", "add", "node", f"{NODE}:{node}")
        key = self.add_data(client)
        for remote in ("origin", "node"):  # learn UUIDs and the proxied remote now, not timed
            self.git(client, "annex", "sync", "-q", "--no-content", remote)
        info = self.git(client, "annex", "info", "--fast", "origin-node")
        if "proxied: true" not in info:
            raise RuntimeError(f"client-native has no proxied remote origin-node:\n{info}")
        objects = node / "annex/objects"
        return [
            Contender("native-direct", client, "node", objects, key),
            Contender("native-proxy", client, "origin-node", objects, key),
        ]

    # -- one measurement ------------------------------------------------------

    def clear_node(self, c: Contender) -> None:
        """Before a copy: the content is local and the node does not hold it."""
        self.git(c.client, "annex", "get", BIG)
        self.git(c.client, "annex", "drop", "--force", "--from", c.remote, BIG)
        if held(c):
            raise RuntimeError(f"{c.impl}: {c.key} still under {c.node_dir} before the copy")

    def measure(self, c: Contender, op: str, rep: int, sha: str) -> Sample:
        if op == "copy":  # the node must not have it, or copy is skipped
            self.clear_node(c)
            cmd = ["git", "annex", "copy", f"-J{JOBS}", "--to", c.remote, BIG]
        else:
            self.git(c.client, "annex", "drop", "--force", BIG)
            cmd = ["git", "annex", "get", f"-J{JOBS}", "--from", c.remote, BIG]
        self.close_masters()  # every measurement starts without a warm ssh connection
        label = f"{c.impl}-{op}-{rep}"
        wall, busy, steal, ru = self.timed(cmd, c.client, label)
        if op == "copy":
            if not held(c):
                raise RuntimeError(f"{c.impl}: no {c.key} under {c.node_dir} after the copy")
        else:
            check_content(c.client / BIG, sha)
        cpu, rss = round(ru.ru_utime + ru.ru_stime, 2), round(ru.ru_maxrss / 1024, 1)
        busy, steal, wall = round(busy, 2), round(steal, 2), round(wall, 3)
        size = (c.client / BIG).stat().st_size
        sample = Sample(c.impl, op, rep, size, wall, cpu, rss, busy, steal)
        print(f"  {label}: {wall:.2f} s wall, {sample.machine_cpu_s:.1f} s machine CPU", flush=True)
        return sample


def held(c: Contender) -> bool:
    """Whether a file named after the key is under the node's directory, tmp/ excluded
    (the directory remote layout of our nodes, any hash layout of annex/objects)."""
    for _top, dirs, files in os.walk(c.node_dir):
        dirs[:] = [d for d in dirs if d != "tmp"]
        if c.key in files:
            return True
    return False


def check_content(path: Path, want: str) -> None:
    """After a get, the file hashes to what was recorded when it was made."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MIB):
            h.update(block)
    if h.hexdigest() != want:
        raise RuntimeError(f"{path} has the wrong content after get")


# -- reporting ------------------------------------------------------------------


def medians(samples: list[Sample]) -> Medians:
    out: Medians = {}
    for key in {(s.impl, s.op) for s in samples}:
        group = [s for s in samples if (s.impl, s.op) == key]
        med = {
            f: statistics.median(getattr(s, f) for s in group)
            for f in ("wall_s", "client_cpu_s", "machine_cpu_s", "bytes")
        }
        med["client_rss_mib"] = max(s.client_rss_mib for s in group)
        med["rate"] = med["bytes"] / med["wall_s"] / MIB
        out[key] = med
    return out


def direct_of(impl: str) -> str | None:
    return next((d for v, d, _ in PAIRS if v == impl), None)


def table(med: Medians, size: int) -> str:
    """One row per operation and contender; via rows also show via/direct."""
    head = ["operation", "contender", "wall s", "CPU s client/machine", "rate"]
    head += ["peak RSS MiB", "/direct wall", "/direct machine CPU"]
    rows = [head, ["---"] * len(head)]
    for op in OPS:
        for impl in CONTENDERS:
            if (m := med.get((impl, op))) is None:
                continue
            d = med.get((direct, op)) if (direct := direct_of(impl)) else None
            wall = "-" if d is None else f"{m['wall_s'] / d['wall_s']:.3f}"
            cpu = "-" if d is None else f"{m['machine_cpu_s'] / d['machine_cpu_s']:.2f}"
            rows.append(
                [
                    f"{op} {size / MIB:g} MiB -J{JOBS}",
                    impl,
                    f"{m['wall_s']:.2f}",
                    f"{m['client_cpu_s']:.1f} / {m['machine_cpu_s']:.1f}",
                    f"{m['rate']:.1f} MiB/s",
                    f"{m['client_rss_mib']:.0f}",
                    wall,
                    cpu,
                ]
            )
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def targets(med: Medians) -> list[dict[str, Any]]:
    """Per operation: ours' wall via/direct against LIMIT; native's, for reference only."""
    out = []
    for via, direct, label in PAIRS:
        for op in OPS:
            v, d = med.get((via, op)), med.get((direct, op))
            value = v["wall_s"] / d["wall_s"] if v and d else None
            if label == "ours":
                ok = None if value is None else operator.le(value, LIMIT)
                result = "n/a" if ok is None else "PASS" if ok else "FAIL"
                limit = f"<= {LIMIT:g}"
            else:
                result, limit = ("n/a" if value is None else "reference"), "-"
            name = f"{label}: {op} wall {via}/{direct}"
            out.append(dict(target=name, op=op, value=value, limit=limit, result=result))
    return out


# -- main ------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/proxy-bench"), help="scratch dir")
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir afterwards")
    ap.add_argument("--size", type=parse_size, help="file size (default 500MiB)")
    ap.add_argument("--repeat", type=int, default=1, help="repetitions; the table shows medians")
    ap.add_argument(
        "--contenders",
        type=contenders_of(CONTENDERS),
        default=list(CONTENDERS),
        help=f"comma-separated, from {','.join(CONTENDERS)} (default: all)",
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: 50 MiB")
    ap.add_argument("--json", type=Path, help="write the raw samples and targets here")
    ap.add_argument(
        "--timeout", type=float, default=1200, help="seconds before a command counts as hung"
    )
    args = ap.parse_args()
    args.size = args.size or (50 * MIB if args.quick else 500 * MIB)
    return args


def main() -> int:
    args = parse_args()
    scratch = fresh_scratch(args.dir)
    bench = Bench(scratch, args.timeout)
    bench.install_cleanup()
    t0, load = time.monotonic(), load_average()
    try:
        bench.setup_tools()
        print(f"setting up under {scratch} (logs in {bench.logs})", flush=True)
        bench.start_hosts()
        sha = bench.make_data(args.size)
        built: list[Contender] = []
        if {"direct", "gateway"} & set(args.contenders):
            built += bench.build_ours()
        if {"native-direct", "native-proxy"} & set(args.contenders):
            built += bench.build_native()
        chosen = [c for c in built if c.impl in args.contenders]
        print(f"setup done in {time.monotonic() - t0:.0f} s; measuring", flush=True)
        # Each contender's get follows its own copy. The two of a pair alternate which goes
        # first (direct first on odd repetitions), so a drift in load hits both alike.
        samples = []
        for rep in range(1, args.repeat + 1):
            for via, direct, _ in PAIRS:
                pair = [c for name in (direct, via) for c in chosen if c.impl == name]
                for c in pair if rep % 2 else pair[::-1]:
                    samples += [bench.measure(c, op, rep, sha) for op in OPS]
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
    end_load = load_average()
    print(
        f"\ngit-annex {version}, {os.cpu_count()} CPUs, medians of {args.repeat}, "
        f"load at start {load}, at end {end_load}, total {time.monotonic() - t0:.0f} s\n"
    )
    print(table(med, args.size))
    print_targets(results, lambda _target: 3)
    if args.json:
        write_results(args.json, args, samples, git_annex=version, load=load, targets=results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
