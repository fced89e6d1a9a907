"""Issue 18's sequences end to end, with real git-annex: a rotten replica must never
cost an intact one, and a retried store must never report fewer copies than required.

1. A rotten replica: three nodes, ``copies=2``, costs 10/20/30 so that reads try
   the nodes in a known order. The replica on the holder read first rots (a few
   bytes flipped, same size; or a 0-byte leftover). ``git annex get`` must bring
   the right content and say which node's copy is bad, ``git annex fsck --from``
   must never remove the intact replica (git-annex answers bad content with
   REMOVE, which reaches every node) nor make git-annex forget the remote holds
   the file, and the maintenance commands (``fsck``, ``repair``, ``rebalance
   --apply``, ``fsck --repair``) must report and replace the bad copy and keep
   every intact one. On every node type: ``file://`` (with both git-annex
   clients), ``sftp://`` and ``annex+ssh://`` (one cluster), ``s3://`` plain and
   encrypted+chunked (one cluster).
2. The same through the gateway, with the proxy remote and with a stock git-annex
   client using the gateway as its annex-shell. Bytes stream to the client as the
   gateway reads them, so the first get may fail (the gateway says INVALID once
   it knows); the second must succeed, and the gateway must never say VALID for
   bad bytes.
3. A retried store with a node that cannot store (its disk is full): every copy
   fails until the node recovers, then one completes the placement; a local drop
   never counts the under-replicated cluster.

Each file's content is picked so that placement puts its two copies on the nodes
the test wants (the rot on the cheapest holder, n1 or n2; the intact copy on n3),
which is how one cluster covers two node types.

The programs git-annex starts (the remotes, the gateway, the maintenance
commands) get this run's PYTHONPATH, so that running this file with PYTHONPATH
pointing at another checkout tests that checkout's code.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

import pytest
from conftest import Client, Repo, make_repo
from s3server import S3Server, s3_environ
from sshd import SSHDFactory, ssh_config_for
from test_e2e_file_cluster import init_cluster
from test_operators import accept_remote
from test_proxy import PROXY, proxy_cli, session

from shared.annex.keys import Key
from shared.cluster.placement import rendezvous_order

pytestmark = pytest.mark.timeout(300)

COSTS = {"n1": 10, "n2": 20, "n3": 30}  # reads try the holders in this order
NODES = tuple(COSTS)
SIZE = 300 * 1024


@dataclass(frozen=True)
class Case:
    """How one file's replica rots, what reads it first after that (a get, or
    git annex fsck --from: issue 18's own sequence), and on which node it rots."""

    how: str  # "flip": a few bytes flipped, same size; "zero": a 0-byte leftover
    first_read: str  # "get" or "fsck"
    rots_on: str  # the cheapest holder; the other holder is n3


FILES = {
    "flip-get.bin": Case("flip", "get", "n1"),
    "zero-fsck.bin": Case("zero", "fsck", "n1"),
    "flip-fsck.bin": Case("flip", "fsck", "n2"),
    "zero-get.bin": Case("zero", "get", "n2"),
}

Run = Callable[..., subprocess.CompletedProcess[str]]


def code_env() -> dict[str, str]:
    """This run's PYTHONPATH, for the programs our programs start: their environment
    is built from scratch (the client's, sshd's), and without it they would import
    the installed code rather than the code under test."""
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": path} if path else {}


def env_prefix() -> str:
    """``env PYTHONPATH=...`` for a command line run over ssh (sshd sets PATH only)."""
    return "".join(f"env {k}={quote(v, safe='/:')} " for k, v in code_env().items())


def with_code(client: Client) -> Client:
    return replace(client, env={**client.env, **code_env()})


class Named:
    def __init__(self, name: str) -> None:
        self.name = name


def holders_of(key: str) -> set[str]:
    """The two nodes a store of ``key`` picks (equal weights, no zones)."""
    order = rendezvous_order(key, [Named(n) for n in NODES], [1.0] * len(NODES))
    return {n.name for n in order[:2]}


def content_for(case: Case, size: int = SIZE) -> bytes:
    """Random content whose key placement stores on ``case.rots_on`` and n3."""
    while True:
        data = os.urandom(size)
        key = f"SHA256E-s{size}--{hashlib.sha256(data).hexdigest()}.bin"
        if holders_of(key) == {case.rots_on, "n3"}:
            return data


# -- where replicas live, per node type ------------------------------------------------


class Storage(Protocol):
    """Node storage seen from outside: its objects, readable and writable behind the
    remote's back (how bit rot or a careless operator changes them)."""

    def plain(self, node: str) -> bool:
        """Whether an object on ``node`` is a key's content as is, under its name."""
        ...

    def names(self, node: str) -> set[str]: ...

    def read(self, node: str, name: str) -> bytes | None: ...

    def write(self, node: str, name: str, data: bytes) -> None: ...


def is_object(name: str) -> bool:
    """Keys, chunk keys and HMAC names all contain "--"; owner markers do not."""
    return "--" in name


@dataclass
class Tree:
    """Node directories (``file://``, ``sftp://``) and node repositories' object
    directories (``annex+ssh://``): each holds a key's content under its name."""

    roots: dict[str, Path]

    def plain(self, node: str) -> bool:
        return True

    def names(self, node: str) -> set[str]:
        root = self.roots[node]
        return {
            str(p.relative_to(root))
            for p in root.rglob("*")
            if p.is_file() and is_object(p.name) and "tmp" not in p.relative_to(root).parts
        }

    def read(self, node: str, name: str) -> bytes | None:
        try:
            return (self.roots[node] / name).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, node: str, name: str, data: bytes) -> None:
        """Write as the owner would, then give back the modes (git-annex freezes
        objects and their directories read-only)."""
        path = self.roots[node] / name
        modes = {p: p.stat().st_mode for p in (path.parent, path)}
        for p, mode in modes.items():
            p.chmod(mode | stat.S_IWUSR)
        path.write_bytes(data)
        for p, mode in reversed(modes.items()):
            p.chmod(stat.S_IMODE(mode))


@dataclass
class Bucket:
    """``s3://`` nodes, one prefix per node in one bucket; ``layered`` nodes chunk
    and encrypt (HMAC-named chunks)."""

    s3: S3Server
    bucket: str
    layered: set[str]

    def plain(self, node: str) -> bool:
        return node not in self.layered

    def names(self, node: str) -> set[str]:
        return {n for n in self.s3.list_keys(self.bucket, f"{node}/") if is_object(n)}

    def read(self, node: str, name: str) -> bytes | None:
        try:
            return self.s3.get(self.bucket, name)
        except self.s3.client().exceptions.NoSuchKey:
            return None

    def write(self, node: str, name: str, data: bytes) -> None:
        self.s3.put(self.bucket, name, data)


@dataclass
class Replicas:
    """One file's copies on the nodes, as the store wrote them."""

    file: str
    data: bytes
    key: str
    case: Case
    copies: dict[str, dict[str, bytes]] = field(default_factory=dict)  # node -> objects

    @property
    def first(self) -> str:
        """The holder a read tries first: the one that rots."""
        return self.case.rots_on

    @property
    def intact(self) -> str:
        return "n3"


def store_files(repo: Repo, remote: str, storage: Storage) -> dict[str, Replicas]:
    """Add FILES and move them to ``remote`` (the replicas then rot at rest, with no
    other copy around), recording the objects each replica is made of. Objects of a
    plain node are named by their key; a layered node's are not, so the files it
    holds (those that rot there) are moved one at a time and their objects are what
    each move added there."""
    for name, case in FILES.items():
        repo.write(name, content_for(case))
    repo.annex("add", *FILES)
    repo.run("git", "commit", "-qm", "files")
    reps = {
        name: Replicas(name, (repo.path / name).read_bytes(), repo.lookupkey(name), case)
        for name, case in FILES.items()
    }
    alone = [n for n, c in FILES.items() if not storage.plain(c.rots_on)]
    batches = [[n for n in FILES if n not in alone], *([n] for n in alone)]
    for batch in (b for b in batches if b):
        before = {n: storage.names(n) for n in NODES if not storage.plain(n)}
        repo.annex("move", "--to", remote, *batch)
        for rep in (reps[n] for n in batch):
            for node in NODES:
                if storage.plain(node):
                    new = {o for o in storage.names(node) if Key.parse(rep.key).file_name in o}
                else:
                    new = storage.names(node) - before[node]
                if new:
                    rep.copies[node] = {o: storage.read(node, o) or b"" for o in new}
            assert set(rep.copies) == {rep.first, rep.intact}, (
                f"{rep.file}: placement should store it on {rep.first} and {rep.intact}, "
                f"not {sorted(rep.copies)}"
            )
    return reps


def rot(storage: Storage, rep: Replicas, how: str) -> None:
    """Spoil the replica on the holder read first: flip a few bytes of one of its
    objects (same size), or leave a 0-byte object in its place."""
    name, data = sorted(rep.copies[rep.first].items())[0]
    if how == "zero":
        spoilt = b""
    else:
        raw = bytearray(data)
        for i in (len(raw) // 7, len(raw) // 2, len(raw) - 3):
            raw[i] ^= 0x5A
        spoilt = bytes(raw)
    storage.write(rep.first, name, spoilt)


def assert_intact(storage: Storage, reps: dict[str, Replicas], when: str) -> None:
    """Every intact replica is still on its node, byte for byte as it was stored."""
    for rep in reps.values():
        for name, data in rep.copies[rep.intact].items():
            now = storage.read(rep.intact, name)
            assert now == data, (
                f"after {when}\nthe intact replica of {rep.file} on node {rep.intact} "
                f"({name}) is {'gone' if now is None else 'changed'}"
            )


def out(proc: subprocess.CompletedProcess[str]) -> str:
    return proc.stdout + proc.stderr


def has_content(repo: Repo, rep: Replicas) -> bool:
    """Whether git-annex holds the file's content (its symlink resolves), which must
    then be the right one."""
    path = repo.path / rep.file
    if not path.exists():
        return False
    assert path.read_bytes() == rep.data, f"git-annex holds wrong content for {rep.file}"
    return True


def get(repo: Repo, reps: dict[str, Replicas], names: list[str], tries: int) -> str:
    """``git annex get`` of ``names``, at most ``tries`` times; after every attempt,
    what git-annex holds is the right content (a failed get holds none)."""
    said, left = "", list(names)
    for _ in range(tries):
        proc = repo.annex("get", *left, check=False)
        said += out(proc)
        left = [n for n in left if not has_content(repo, reps[n])]
        if not left:
            return said
    raise AssertionError(
        f"get failed {tries} time(s) for {left}, though n3 holds an intact replica "
        f"(the bad one is on {[reps[n].first for n in left]}):\n{said[-4000:]}"
    )


def fsck_from(
    repo: Repo, remote: str, storage: Storage, reps: dict[str, Replicas], names: list[str]
) -> subprocess.CompletedProcess[str]:
    """``git annex fsck --from``: whatever it says, it must keep every intact replica
    and git-annex must still know that the remote holds the files."""
    proc = repo.annex("fsck", "--from", remote, *names, check=False)
    said = f"git annex fsck --from {remote} {' '.join(names)}:\n{out(proc)}"
    assert_intact(storage, reps, said)
    listed = repo.annex("find", "--in", remote, *names, check=False).stdout.split()
    assert sorted(listed) == sorted(names), (
        f"after {said}\ngit-annex no longer lists {remote} for "
        f"{sorted(set(names) - set(listed))}, though n3 holds an intact replica"
    )
    return proc


def rotten_replica_sequence(
    repo: Repo, remote: str, storage: Storage, maintain: Run, *, through_gateway: bool
) -> dict[str, Replicas]:
    """Issue 18's first sequence; ``maintain`` runs the maintenance commands on the
    remote (the cluster's, or the gateway's on its target).

    The cluster remote checks a node's copy before git-annex relies on a byte of
    it: a get succeeds at once (git-annex retries the attempt that read the bad
    copy, and the right content is in place for it), fsck --from may fail that one
    attempt, and git-annex is told of the bad copy. Through a gateway, an attempt
    that read the bad copy ends with INVALID: one retry is allowed, and fsck --from
    may fail, but never at an intact replica's expense."""
    reps = store_files(repo, remote, storage)
    for rep in reps.values():
        rot(storage, rep, rep.case.how)
    tries = 2 if through_gateway else 1

    # (a) get reads the intact replica, and tells the user of the bad one.
    got = [n for n, c in FILES.items() if c.first_read == "get"]
    said = get(repo, reps, got, tries)
    if not through_gateway:
        for rep in (reps[n] for n in got):
            assert any(
                "bad copy" in line and f"node {rep.first}" in line and rep.key in line
                for line in said.splitlines()
            ), f"get {rep.file} does not tell of node {rep.first}'s bad copy:\n{said}"
    assert_intact(storage, reps, "get")

    # (b) fsck --from: the first read since the rot of half the files, the second
    # of the others. (It checks the remote's copy whether the file is here or not.)
    proc = fsck_from(repo, remote, storage, reps, list(FILES))
    if not through_gateway and proc.returncode != 0:
        # The attempt that read a bad copy fails (git-annex hashed its bytes as they
        # came) with the right content in place; the next one passes.
        said = out(proc)
        failed = [n for n in FILES if f"{n}: failed to download" in said]
        assert failed, said
        for rep in (reps[n] for n in failed):
            assert f"node {rep.first} holds a bad copy" in said, said
        again = fsck_from(repo, remote, storage, reps, list(FILES))
        assert again.returncode == 0, f"fsck --from failed twice:\n{out(proc)}\n{out(again)}"

    # (c) the maintenance commands.
    report = maintain("fsck", "--json", check=False)
    assert report.returncode == 1, f"fsck passed with bad copies:\n{out(report)}"
    found = json.loads(report.stdout)
    problems = {(p["key"], p["node"]): p["status"] for p in found["problems"]}
    for rep in reps.values():
        if through_gateway and rep.key in found["short_of_copies"]:
            # A stock client's fsck --from answered the bad bytes with REMOVE: the
            # gateway removed the bad copy only (and failed the REMOVE).
            assert (rep.key, rep.first) not in problems, out(report)
            continue
        assert problems.get((rep.key, rep.first)) == "corrupt", (
            f"fsck does not report {rep.file}'s bad copy on {rep.first}:\n{out(report)}"
        )
    maintain("repair")
    assert_intact(storage, reps, "repair")
    maintain("rebalance", "--apply")
    assert_intact(storage, reps, "rebalance --apply")
    repaired = maintain("fsck", "--repair", check=False)
    assert_intact(storage, reps, "fsck --repair")
    assert repaired.returncode == 0, f"fsck --repair left bad copies:\n{out(repaired)}"
    for rep in reps.values():
        if storage.plain(rep.first):
            for name, data in rep.copies[rep.first].items():
                assert storage.read(rep.first, name) == data, (
                    f"fsck --repair did not put {rep.file}'s content back on {rep.first}"
                )
    if not all(storage.plain(n) for n in NODES):
        # Encrypted copies are new ciphertext: git-annex reads them (from the repaired
        # node first) and finds nothing bad.
        final = repo.annex("fsck", "--from", remote, *FILES, check=False)
        assert final.returncode == 0 and "bad copy" not in out(final), (
            f"git annex fsck --from after fsck --repair:\n{out(final)}"
        )
    return reps


def cluster_cli(repo: Repo) -> Run:
    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return repo.run("git-annex-remote-cluster", args[0], "cl", *args[1:], check=check)

    return run


def costed(urls: dict[str, str]) -> str:
    """A nodes= value, each node with its cost."""
    return " ".join(
        f"{n}={url}{'&' if '?' in url else '?'}cost={COSTS[n]}" for n, url in urls.items()
    )


def node_dirs(root: Path, names: tuple[str, ...] = NODES) -> dict[str, Path]:
    dirs = {n: root / n for n in names}
    for d in dirs.values():
        d.mkdir(parents=True)
    return dirs


# -- 1. the cluster remote, node type by node type ---------------------------------------


@pytest.fixture
def repo(tmp_path: Path, client: Client) -> Repo:
    return make_repo(tmp_path / "repo", with_code(client))


@pytest.fixture
def prepo(tmp_path: Path, pypi_client: Client) -> Repo:
    return make_repo(tmp_path / "repo", with_code(pypi_client))


def test_rotten_replica_on_file_nodes(tmp_path: Path, repo: Repo) -> None:
    """The node type run with both git-annex clients: how each treats a remote's
    INFO, a get's content and fsck --from's bad content is the client's part."""
    dirs = node_dirs(tmp_path / "nodes")
    init_cluster(repo, costed({n: d.as_uri() for n, d in dirs.items()}), "encryption=none",
                 "copies=2")  # fmt: skip
    rotten_replica_sequence(repo, "cl", Tree(dirs), cluster_cli(repo), through_gateway=False)


def test_rotten_replica_on_sftp_and_repository_nodes(
    tmp_path: Path, prepo: Repo, sshd_factory: SSHDFactory, ssh_client_key: Path
) -> None:
    """n1 and n3 are sftp:// directories, n2 an annex+ssh:// bare repository served
    by git-annex-shell, each on its own sshd. n2's objects rot inside the node
    repository's annex/objects (it may refuse to send them: what matters is that the
    cluster reads the intact replica, and that fsck --from never costs it)."""
    hosts = {f"h{n[1]}": sshd_factory(f"h{n[1]}") for n in NODES}
    ssh_config_for(Path(prepo.client.env["HOME"]), hosts, ssh_client_key)
    dirs = node_dirs(tmp_path / "nodes", ("n1", "n3"))
    bare = tmp_path / "nodes" / "n2.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    subprocess.run(["git", "annex", "init", "-q", "n2"], cwd=bare, env=prepo.client.env,
                   check=True, capture_output=True)  # fmt: skip
    shell = quote(str(prepo.client.bindir / "git-annex-shell"), safe="/")
    urls = {
        "n1": f"sftp://h1{dirs['n1']}",
        "n2": f"annex+ssh://h2{bare}?shell={shell}",
        "n3": f"sftp://h3{dirs['n3']}",
    }
    init_cluster(prepo, costed(urls), "encryption=none", "copies=2")
    storage = Tree({**dirs, "n2": bare / "annex" / "objects"})
    rotten_replica_sequence(prepo, "cl", storage, cluster_cli(prepo), through_gateway=False)


def test_rotten_replica_on_s3_nodes(tmp_path: Path, pypi_client: Client, s3: S3Server) -> None:
    """n1 and n3 are plain s3:// nodes, n2 chunks and encrypts (encryption=shared,
    chunk=100KiB: a 300 KiB file is 3 chunks). Objects rot in the bucket, as a faulty
    disk or a careless hand behind the endpoint would; a rotten encrypted chunk does
    not decrypt."""
    client = replace(pypi_client, env=s3_environ(with_code(pypi_client).env))
    repo = make_repo(tmp_path / "repo", client)
    s3.create_bucket("rot")
    layers = {"n2": "&chunk=100KiB&encryption=shared"}
    urls = {n: f"s3://rot/{n}/?endpoint={s3.endpoint}{layers.get(n, '')}" for n in NODES}
    init_cluster(repo, costed(urls), "encryption=none", "copies=2")
    storage = Bucket(s3, "rot", set(layers))
    rotten_replica_sequence(repo, "cl", storage, cluster_cli(repo), through_gateway=False)


# -- 2. through the gateway ----------------------------------------------------------


@dataclass
class Gateway:
    config: Path
    dirs: dict[str, Path]
    command: str  # what the client runs over ssh

    def cli(self) -> Run:
        def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
            return proxy_cli(args[0], "pool", *args[1:], config=self.config, check=check)

        return run


@pytest.fixture
def gateway(tmp_path: Path, pypi_client: Client, sshd_factory: SSHDFactory,
            ssh_client_key: Path) -> Gateway:  # fmt: skip
    """Target "pool" of three file:// nodes (copies=2) on a gateway host "gw" behind
    a real sshd; the gateway keeps its bad-copies journal beside its config."""
    ssh_config_for(Path(pypi_client.env["HOME"]), {"gw": sshd_factory("gw")}, ssh_client_key)
    config = tmp_path / "gw" / "gw.toml"
    config.parent.mkdir()
    dirs = node_dirs(tmp_path / "nodes")
    nodes = costed({n: d.as_uri() for n, d in dirs.items()}).split()
    proxy_cli("add", "pool", *nodes, "--copies", "2", config=config)
    return Gateway(config, dirs, f"{env_prefix()}{PROXY} serve --config {config}")


def test_rotten_replica_through_the_proxy_remote(prepo: Repo, gateway: Gateway) -> None:
    prepo.annex(
        "initremote", "gw", "type=external", "externaltype=proxy", "encryption=none",
        "gateway=ssh://gw", "target=pool", f"gatewaycommand={gateway.command}",
    )  # fmt: skip
    storage = Tree(gateway.dirs)
    reps = rotten_replica_sequence(prepo, "gw", storage, gateway.cli(), through_gateway=True)

    # The rule itself, in the protocol: the gateway never says VALID for bad bytes.
    rep = reps["flip-get.bin"]
    rot(storage, rep, "flip")
    answers = []
    for _ in range(2):
        p2p = session(gateway.config, "pool")
        sink = io.BytesIO()
        try:
            _, valid = p2p.get(Key.parse(rep.key), sink)
        finally:
            p2p.close()  # the serve process ends on EOF; close() waits for it
        answers.append(valid)
        assert not valid or sink.getvalue() == rep.data, "the gateway said VALID for bad bytes"
    assert answers[-1], "the second GET (a new session) did not read the intact replica"


def test_rotten_replica_through_a_stock_client(
    tmp_path: Path, prepo: Repo, gateway: Gateway
) -> None:
    """A stock git-annex remote whose annex-shell is our gateway: nothing of ours on
    the client, git-annex's own P2P client and its own fsck --from."""
    bare = tmp_path / "srv" / "pool.git"  # git wants a repository at the path
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    prepo.run("git", "remote", "add", "pool", f"gw:{bare}")
    prepo.run("git", "config", "remote.pool.annex-shell", gateway.command)
    ssh_config = Path(prepo.client.env["HOME"]) / ".ssh" / "config"
    prepo.run("git", "config", "remote.pool.annex-ssh-options", f"-F {ssh_config}")
    rotten_replica_sequence(prepo, "pool", Tree(gateway.dirs), gateway.cli(),
                            through_gateway=True)  # fmt: skip


# -- 3. a retried store with a node that cannot store -----------------------------------


def test_retried_store_tops_up_or_fails(tmp_path: Path, repo: Repo) -> None:
    """Two nodes, copies=2; n2 still answers presence checks but is full (it cannot
    keep its ``reserve``). No copy may say ok until both nodes hold the key, and no
    drop may count the cluster before then."""
    dirs = node_dirs(tmp_path / "nodes", ("n1", "n2"))
    full = "?reserve=1000TB"  # no disk here has that much free space
    init_cluster(repo, f"n1={dirs['n1'].as_uri()} n2={dirs['n2'].as_uri()}{full}",
                 "encryption=none", "copies=2")  # fmt: skip
    data = os.urandom(SIZE)
    repo.write("f.bin", data)
    repo.annex("add", "f.bin")
    repo.run("git", "commit", "-qm", "f")
    key = Key.parse(repo.lookupkey("f.bin"))
    storage = Tree(dirs)

    def holders() -> list[str]:
        return [n for n in dirs if any(key.file_name in o for o in storage.names(n))]

    def in_cluster() -> bool:
        return repo.annex("find", "--in", "cl", "f.bin").stdout.strip() == "f.bin"

    first = repo.annex("copy", "--to", "cl", "f.bin", check=False)
    assert first.returncode != 0 and "n2" in out(first), out(first)
    assert holders() == ["n1"] and not in_cluster()
    again = repo.annex("copy", "--to", "cl", "f.bin", check=False)
    assert again.returncode != 0, (
        f"a retried copy said ok while the key is on {holders()} only, copies=2:\n{out(again)}"
    )
    assert not in_cluster(), "git-annex records the cluster as holding an under-replicated key"
    drop = repo.annex("drop", "f.bin", check=False)
    assert drop.returncode != 0, f"drop counted an under-replicated cluster:\n{out(drop)}"
    assert (repo.path / "f.bin").read_bytes() == data

    repo.run("git-annex-remote-cluster", "nodes", "set", "cl", "n2", "reserve=")  # recovered
    repo.annex("copy", "--to", "cl", "f.bin")
    assert holders() == ["n1", "n2"] and in_cluster()
    for n in dirs:
        (name,) = storage.names(n)
        assert storage.read(n, name) == data, f"node {n} holds wrong content"
    repo.annex("drop", "f.bin")
    repo.annex("get", "f.bin")
    assert (repo.path / "f.bin").read_bytes() == data


# -- 4. a git-annex proxying the cluster remote ---------------------------------------


def test_rotten_replica_through_a_git_annex_proxy(
    tmp_path: Path, prepo: Repo, sshd_factory: SSHDFactory, ssh_client_key: Path
) -> None:
    """A git-annex repository proxies our cluster remote (``annex-proxy``,
    ``updateproxy``) to a stock client. The cluster remote is ORDERED, and a proxy
    streams its temp file while it grows and says VALID whatever the outcome: so
    there the remote writes beside that file until the bytes proved right, and a
    client, even one that does not verify, never gets a bad copy's bytes."""
    env = prepo.client.env
    host = sshd_factory("px", path=[str(prepo.client.bindir), "/usr/bin", "/bin"])
    ssh_config_for(Path(env["HOME"]), {"px": host}, ssh_client_key)
    proxy = make_repo(tmp_path / "px", prepo.client)
    dirs = node_dirs(tmp_path / "nodes")
    init_cluster(proxy, costed({n: d.as_uri() for n, d in dirs.items()}), "encryption=none",
                 "copies=2")  # fmt: skip
    proxy.run("git", "config", "remote.cl.annex-proxy", "true")
    proxy.annex("updateproxy")
    proxy.run("git", "config", "receive.denyCurrentBranch", "updateInstead")

    prepo.run("git", "remote", "add", "px", f"px:{proxy.path}")
    ssh_config = Path(env["HOME"]) / ".ssh" / "config"
    prepo.run("git", "config", "core.sshCommand", f"ssh -F {ssh_config}")
    prepo.run("git", "config", "remote.px.annex-ssh-options", f"-F {ssh_config}")
    prepo.annex("sync", "--no-content", "--quiet")
    accept_remote(prepo, "px-cl")
    # git-annex 10.20261026's verifyremote also writes remote.px-cl.annex-verified, and
    # any remote.px-cl.* setting hides the proxied remote; its log keeps the verdict.
    prepo.run("git", "config", "--remove-section", "remote.px-cl", check=False)
    case = Case("flip", "fsck", "n1")
    data = content_for(case, 32 * 1024 * 1024)  # big enough to stream while it is written
    prepo.write("f.bin", data)
    prepo.annex("add", "f.bin")
    prepo.run("git", "commit", "-qm", "f")
    key = prepo.lookupkey("f.bin")
    prepo.annex("move", "--to", "px-cl", "f.bin")
    storage = Tree(dirs)
    rep = Replicas("f.bin", data, key, case)
    for node in NODES:
        if objs := {o for o in storage.names(node) if Key.parse(key).file_name in o}:
            rep.copies[node] = {o: storage.read(node, o) or b"" for o in objs}
    assert set(rep.copies) == {"n1", "n3"}, rep.copies
    rot(storage, rep, "flip")

    # Not even a client that does not verify may get the bad bytes: with it,
    # fsck --from could only take them for the content.
    prepo.run("git", "config", "annex.verify", "false")
    fsck = prepo.annex("fsck", "--from", "px-cl", "f.bin", check=False)
    assert_intact(storage, {"f.bin": rep}, f"fsck --from through the proxy:\n{out(fsck)}")
    assert fsck.returncode == 0, out(fsck)
    assert prepo.annex("find", "--in", "px-cl", "f.bin").stdout.split() == ["f.bin"], out(fsck)
    prepo.annex("get", "f.bin")
    assert (prepo.path / "f.bin").read_bytes() == data
    assert_intact(storage, {"f.bin": rep}, "get through the proxy")
