"""rebalance, repair and fsck end to end: real git-annex repositories, real nodes, the
command line as operators run it, and the safety rule checked at every removal."""

from __future__ import annotations

import _thread
import io
import json
import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import VENV_BIN, Client, Repo, make_repo
from node_conformance import make_key
from sshd import SSHDFactory, ssh_config_for
from test_e2e_file_cluster import init_cluster, objects_in

from git_annex_remote_cluster import maintain
from git_annex_remote_cluster.__main__ import main
from git_annex_remote_proxy.config import GatewayConfig
from shared.annex.keys import Key
from shared.cluster.core import Cluster
from shared.nodes import open_node
from shared.nodes.base import Layer, Node
from shared.streams import Readable

pytestmark = pytest.mark.timeout(600)
CLUSTER = str(VENV_BIN / "git-annex-remote-cluster")


def cli(repo: Repo, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return repo.run(CLUSTER, *args, check=check)


def cli_json(repo: Repo, *args: str, rc: int = 0) -> dict:  # type: ignore[type-arg]
    proc = cli(repo, *args, "--json", check=False)
    assert proc.returncode == rc, proc.stdout + proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def populate(repo: Repo, count: int = 24) -> list[str]:
    """Files of different sizes, added and copied to the cluster remote; their keys."""
    for i in range(count):
        repo.write(f"f{i:03d}.bin", os.urandom(1000 + 997 * i))
    repo.annex("add", ".")
    repo.run("git", "commit", "-qm", "files")
    repo.annex("copy", "--to", "cl", ".")
    return [repo.lookupkey(f"f{i:03d}.bin") for i in range(count)]


def on_disk(dirs: dict[str, Path]) -> dict[str, set[str]]:
    """key file name -> file:// nodes holding it, read from the directories."""
    out: dict[str, set[str]] = {}
    for name, d in dirs.items():
        for p in objects_in(d):
            out.setdefault(p.name, set()).add(name)
    return out


@pytest.fixture
def prepo(tmp_path: Path, pypi_client: Client) -> Repo:
    return make_repo(tmp_path / "repo", pypi_client)


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    out = {f"n{i}": tmp_path / "nodes" / f"n{i}" for i in range(1, 5)}
    for d in out.values():
        d.mkdir(parents=True)
    return out


def test_add_a_node_then_rebalance(repo: Repo, dirs: dict[str, Path]) -> None:
    """Plan first (nothing moves), then --apply: the new node gets its share, every key
    keeps exactly copies=2, and git-annex still gets every file back."""
    init_cluster(repo, [dirs["n1"], dirs["n2"], dirs["n3"]], "encryption=none", "copies=2")
    keys = populate(repo)
    before = on_disk(dirs)
    cli(repo, "nodes", "add", "cl", "n4", dirs["n4"].as_uri())
    plan = cli_json(repo, "rebalance", "cl")
    assert plan["applied"] is False and plan["keys"] == len(keys)
    moves = plan["plan"]
    assert moves["keys_to_move"] > 0 and moves["copies_to_add"] == moves["copies_to_remove"]
    assert moves["nodes"]["n4"]["keys_in"] == moves["copies_to_add"]
    assert on_disk(dirs) == before  # a plan touches nothing
    table = cli(repo, "rebalance", "cl").stdout
    assert "n4" in table and f"{moves['keys_to_move']} to move" in table and "--apply" in table

    done = cli_json(repo, "rebalance", "cl", "--apply")
    assert done["result"]["finished"] and not done["result"]["failed"]
    assert done["result"]["copies_added"] == moves["copies_to_add"]
    after = on_disk(dirs)
    assert all(len(after[k]) == 2 for k in keys)
    assert sum(1 for k in keys if "n4" in after[k]) == moves["copies_to_add"]
    assert cli_json(repo, "rebalance", "cl")["plan"]["keys_to_move"] == 0
    # git-annex finds everything where placement now says it is
    repo.annex("drop", ".")
    repo.annex("get", ".")
    assert cli(repo, "fsck", "cl", check=False).returncode == 0


def test_remote_level_encryption_and_chunking(prepo: Repo, dirs: dict[str, Path]) -> None:
    """git-annex itself chunks and encrypts (the remote's encryption=shared chunk=):
    nodes hold HMAC-named chunks, one node encrypts again. The keys are still found,
    moved, checked, and a lost file is named by its own key."""
    nodes = f"n1={dirs['n1'].as_uri()} n2={dirs['n2'].as_uri()}?encryption=shared"
    init_cluster(prepo, nodes, "encryption=shared", "chunk=4KiB", "copies=1")
    keys = populate(prepo, 10)
    cli(prepo, "nodes", "add", "cl", "n3", dirs["n3"].as_uri())
    plan = cli_json(prepo, "rebalance", "cl")
    assert plan["unlisted"] == {} and plan["keys"] > len(keys)  # chunks
    assert plan["plan"]["nodes"]["n2"]["held"] > 0
    # HMAC names hide their sizes: the repository's keys tell them (chunks' shares).
    moving = plan["plan"]
    assert 0 < moving["bytes_to_copy"] <= moving["copies_to_add"] * 4096
    assert moving["copies_of_unknown_size"] == 0
    applied = cli(prepo, "rebalance", "cl", "--apply")
    assert progress_done(applied.stderr, "rebalance") == (moving["copies_to_add"], 100)
    assert objects_in(dirs["n3"])
    checked = cli(prepo, "fsck", "cl", "--json")
    assert json.loads(checked.stdout)["lost"] == []
    assert progress_done(checked.stderr, "fsck")[1] == 100
    for p in objects_in(dirs["n3"]):  # every chunk that moved to n3 is gone
        p.parent.chmod(0o755)
        shutil.rmtree(p.parent)
    lost = cli_json(prepo, "fsck", "cl", rc=1)["lost"]
    assert lost and set(lost) <= set(keys)
    # git-annex agrees: it cannot drop its own copy of a lost file for want of another
    assert prepo.annex("drop", ".", check=False).returncode != 0


def progress_done(stderr: str, what: str) -> tuple[int, int]:
    """The last progress line's keys (or copies) done and its percentage of bytes,
    checking that its bytes done are its total (``X of X``)."""
    line = [ln for ln in stderr.splitlines() if ln.startswith(f"{what}: ")][-1]
    m = re.fullmatch(rf"{what}: (\d+)/\d+ \w+, (\S+ \S+) of (\S+ \S+) \((\d+)%\).*", line)
    assert m and m.group(2) == m.group(3), line
    return int(m.group(1)), int(m.group(4))


def test_progress_and_plans_count_each_copy_once(
    prepo: Repo, dirs: dict[str, Path], tmp_path: Path
) -> None:
    """A copy whose first source proves bad is read again from the next: its bytes count
    once. Chunk keys (the remote's own chunk=) count their chunk, not their file."""
    n1, n2, n3 = (dirs[n].as_uri() for n in ("n1", "n2", "n3"))
    init_cluster(prepo, f"n1={n1}?cost=50 n2={n2} n3={n3}?state=readonly", "encryption=none",
                 "copies=2")  # fmt: skip
    chunked = {n: tmp_path / n for n in ("c1", "c2", "c3")}
    for d in chunked.values():
        d.mkdir()
    init_cluster(prepo, [chunked["c1"], chunked["c2"]], "encryption=none", "chunk=8KiB",
                 "copies=1", name="ck")  # fmt: skip
    for i in range(2):  # two blocks each: a bad source is read a block before it fails
        prepo.write(f"big{i}", os.urandom(1_300_000 + i))
    populate(prepo, 5)
    # The big files too: with some 300 chunk keys, adding c3 moves some for sure (five
    # keys alone stayed where they were one time in eight, and the test failed).
    prepo.annex("copy", "--to", "ck", "big0", "big1", *(f"f{i:03d}.bin" for i in range(5)))
    for victim in objects_in(dirs["n1"]):  # every copy's first source: rotten, same size
        victim.parent.chmod(0o755)
        victim.chmod(0o644)
        victim.write_bytes(b"r" * victim.stat().st_size)
    (tmp_path / "nodes.txt").write_text(f"n1={n1}?cost=50&state=drain\nn2={n2}\nn3={n3}\n")
    cli(prepo, "nodes", "import", "cl", str(tmp_path / "nodes.txt"))  # n1 drains to n3
    applied = cli(prepo, "rebalance", "cl", "--apply", check=False)
    assert progress_done(applied.stderr, "rebalance") == (7, 100), applied.stdout

    cli(prepo, "nodes", "add", "ck", "c3", chunked["c3"].as_uri())
    plan = cli_json(prepo, "rebalance", "ck")["plan"]
    applied = cli(prepo, "rebalance", "ck", "--apply")
    assert progress_done(applied.stderr, "rebalance")[1] == 100
    moved = sum(p.stat().st_size for p in objects_in(chunked["c3"]))
    assert plan["nodes"]["c3"]["bytes_in"] == plan["bytes_to_copy"] == moved > 0


def test_drain_a_node_to_empty_then_remove_it(prepo: Repo, dirs: dict[str, Path]) -> None:
    init_cluster(prepo, [dirs["n1"], dirs["n2"], dirs["n3"]], "encryption=none", "copies=2")
    keys = populate(prepo)
    assert objects_in(dirs["n1"])
    refused = cli(prepo, "nodes", "remove", "cl", "n1", check=False)
    assert refused.returncode == 1 and "state=drain" in refused.stderr
    cli(prepo, "nodes", "set", "cl", "n1", "state=drain")
    out = cli(prepo, "rebalance", "cl", "--apply").stdout
    assert "0 key(s) with failures" in out
    assert objects_in(dirs["n1"]) == []
    after = on_disk(dirs)
    assert all(after[k] == {"n2", "n3"} for k in keys)
    cli(prepo, "nodes", "remove", "cl", "n1")  # empty now: no --force needed
    prepo.annex("drop", ".")
    prepo.annex("get", ".")


def test_drain_that_cannot_complete_says_so(prepo: Repo, dirs: dict[str, Path]) -> None:
    """copies=2 over two nodes: nowhere to move the drained node's copies, so they stay."""
    init_cluster(prepo, [dirs["n1"], dirs["n2"]], "encryption=none", "copies=2")
    populate(prepo, 5)
    cli(prepo, "nodes", "set", "cl", "n1", "state=drain")
    proc = cli(prepo, "rebalance", "cl", "--apply", check=False)
    assert "node n1 (drain) will still hold 5 key(s)" in proc.stdout
    assert len(objects_in(dirs["n1"])) == 5


def test_lose_a_node_and_repair(prepo: Repo, dirs: dict[str, Path], tmp_path: Path) -> None:
    init_cluster(prepo, [dirs["n1"], dirs["n2"], dirs["n3"]], "encryption=none", "copies=2")
    keys = populate(prepo)
    lost = {k for k, where in on_disk(dirs).items() if "n2" in where}
    shutil.rmtree(dirs["n2"])
    dirs["n2"].mkdir()  # the disk was replaced: reachable, empty
    dry = cli_json(prepo, "repair", "cl", "--dry-run")
    assert dry["plan"]["copies_to_add"] == len(lost) and dry["plan"]["copies_to_remove"] == 0
    assert objects_in(dirs["n2"]) == []
    fsck = cli(prepo, "fsck", "cl", check=False)
    assert fsck.returncode == 1 and "1 of 2 copies (run git-annex-remote-cluster repair cl)" in (
        fsck.stdout
    )
    cli(prepo, "repair", "cl")
    assert all(len(where) == 2 for where in on_disk(dirs).values())
    assert set(on_disk(dirs)) == set(keys)

    # A node that cannot be reached: rebalance refuses, repair works around it.
    away = tmp_path / "n3-away"
    dirs["n3"].rename(away)
    proc = cli(prepo, "rebalance", "cl", check=False)
    assert proc.returncode == 1 and "node n3" in proc.stderr and "repair cl" in proc.stderr
    out = cli(prepo, "repair", "cl").stdout
    assert "node n3 could not be listed" in out
    reachable = on_disk({"n1": dirs["n1"], "n2": dirs["n2"]})
    assert all(reachable[k] == {"n1", "n2"} for k in keys)
    away.rename(dirs["n3"])  # it comes back: its copies are now extra
    done = cli_json(prepo, "rebalance", "cl", "--apply")
    assert done["result"]["copies_removed"] > 0
    assert all(len(where) == 2 for where in on_disk(dirs).values())


@pytest.mark.parametrize(
    "params",
    [
        pytest.param("", id="plain"),
        pytest.param("?encryption=shared&chunk=8KiB", id="encrypted-chunked"),
    ],
)
def test_fsck_finds_a_corrupt_copy_and_repairs_it(
    prepo: Repo, dirs: dict[str, Path], params: str
) -> None:
    nodes = " ".join(f"{n}={dirs[n].as_uri()}{params}" for n in ("n1", "n2", "n3"))
    init_cluster(prepo, nodes, "encryption=none", "copies=2")
    populate(prepo, 8)
    assert cli(prepo, "fsck", "cl").returncode == 0
    victim = max(objects_in(dirs["n1"]), key=lambda p: p.stat().st_size)
    victim.parent.chmod(0o755)
    victim.chmod(0o644)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one bit flip in the middle, size unchanged
    victim.write_bytes(bytes(data))
    found = cli_json(prepo, "fsck", "cl", rc=1)
    assert found["counts"]["corrupt"] == 1
    (problem,) = found["problems"]
    assert problem["node"] == "n1" and problem["status"] == "corrupt"
    fixed = cli(prepo, "fsck", "cl", "--repair").stdout
    assert "repaired from" in fixed
    assert cli_json(prepo, "fsck", "cl")["counts"]["corrupt"] == 0
    prepo.annex("drop", ".")
    prepo.annex("get", ".")


def test_fsck_sample_and_lost_keys(prepo: Repo, dirs: dict[str, Path]) -> None:
    init_cluster(prepo, [dirs["n1"], dirs["n2"]], "encryption=none", "copies=1")
    keys = populate(prepo, 20)
    sampled = cli_json(prepo, "fsck", "cl", "--sample", "5", "--seed", "1")
    assert sampled["keys"] == 5 and sampled["copies_checked"] == 5
    assert cli_json(prepo, "fsck", "cl", "--sample", "50%")["keys"] == 10
    bad = cli(prepo, "fsck", "cl", "--sample", "many", check=False)
    assert bad.returncode == 1 and "--sample many" in bad.stderr
    for d in dirs.values():
        for p in objects_in(d):
            if p.name == keys[0]:
                p.parent.chmod(0o755)
                shutil.rmtree(p.parent)
    lost = cli_json(prepo, "fsck", "cl", rc=1)
    assert lost["lost"] == [keys[0]]
    assert "git annex fsck --from cl --fast" in cli(prepo, "fsck", "cl", check=False).stdout


# -- interrupted and resumed, with the rule checked at every removal ----------------


class Watched(Layer):
    """Checks, at every removal, that ``copies`` other nodes hold the key; interrupts the
    command (as Ctrl-C does) after ``stop_after`` stores."""

    def __init__(self, inner: Node, world: World) -> None:
        super().__init__(inner)
        self.world = world
        world.nodes[inner.name] = self

    def present(self, key: Key) -> int | None:
        return self.inner.present(key)

    def store(self, key: Key, source: Readable, size: int) -> bool:
        wrote = self.inner.store(key, source, size)
        self.world.stored()
        return wrote

    def retrieve(self, key: Key, sink: object, offset: int = 0) -> None:
        self.inner.retrieve(key, sink, offset)  # type: ignore[arg-type]

    def remove(self, key: Key) -> None:
        others = [
            n for n in self.world.nodes.values() if n is not self and n.present(key) is not None
        ]
        if len(others) < self.world.copies:
            self.world.violations.append(f"{key} removed from {self.name}, held by {others}")
        self.inner.remove(key)


class World:
    def __init__(self, copies: int, stop_after: int | None) -> None:
        self.copies, self.stop_after = copies, stop_after
        self.nodes: dict[str, Watched] = {}
        self.violations: list[str] = []
        self.stores = 0
        self.lock = threading.Lock()

    def stored(self) -> None:
        with self.lock:
            self.stores += 1
            if self.stop_after is not None and self.stores == self.stop_after:
                _thread.interrupt_main()  # what Ctrl-C does


@pytest.fixture
def in_repo(prepo: Repo, monkeypatch: pytest.MonkeyPatch) -> Iterator[Repo]:
    monkeypatch.chdir(prepo.path)
    for k, v in prepo.client.env.items():
        monkeypatch.setenv(k, v)
    yield prepo


def run_watched(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    world: World,
    *args: str,
) -> tuple[int, str, str]:
    """The command in this process, its nodes watched by ``world``."""
    with monkeypatch.context() as m:
        real = maintain.open_node
        m.setattr(maintain, "open_node", lambda *a, **k: Watched(real(*a, **k), world))
        rc = main(list(args))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.fixture
def ctrl_c_raises() -> Iterator[None]:
    """Ctrl-C as in a terminal: KeyboardInterrupt. A shell without job control starts
    background commands (pytest among them) with SIGINT ignored, and then a simulated
    Ctrl-C does nothing at all."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.mark.usefixtures("ctrl_c_raises")
def test_interrupted_rebalance_resumes_and_never_drops_below_copies(
    in_repo: Repo,
    dirs: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    init_cluster(in_repo, [dirs["n1"], dirs["n2"], dirs["n3"]], "encryption=none", "copies=2")
    keys = populate(in_repo, 30)
    cli(in_repo, "nodes", "add", "cl", "n4", dirs["n4"].as_uri())
    cli(in_repo, "nodes", "set", "cl", "n1", "state=drain")
    planned = cli_json(in_repo, "rebalance", "cl")["plan"]["keys_to_move"]
    assert planned > 10

    world = World(copies=2, stop_after=4)
    apply = ("rebalance", "cl", "--apply", "--jobs")
    rc, out, err = run_watched(monkeypatch, capsys, world, *apply, "1")
    assert rc == 130, out + err
    assert world.violations == []
    assert "interrupted: no copy was lost" in err
    left = cli_json(in_repo, "rebalance", "cl")["plan"]["keys_to_move"]
    assert 0 < left < planned
    assert all(len(where) >= 2 for where in on_disk(dirs).values())

    world = World(copies=2, stop_after=None)
    rc, out, err = run_watched(monkeypatch, capsys, world, *apply, "3")
    assert rc == 0, out + err
    assert world.violations == []
    assert objects_in(dirs["n1"]) == []
    assert all(len(on_disk(dirs)[k]) == 2 for k in keys)
    assert cli_json(in_repo, "rebalance", "cl")["plan"]["keys_to_move"] == 0


# -- every kind of node listed ---------------------------------------------------------


def test_rebalance_over_every_kind_of_node(
    tmp_path: Path,
    prepo: Repo,
    pypi_client: Client,
    sshd_factory: SSHDFactory,
    ssh_client_key: Path,
) -> None:
    """annex+ssh (listed with find over ssh), annex:/// (walked), sftp://, and an
    encrypted file:// node (matched against the branch's keys) in one cluster."""
    hosts = {"h1": sshd_factory("h1")}
    ssh_config_for(Path(pypi_client.env["HOME"]), hosts, ssh_client_key)
    shell = str(pypi_client.bindir / "git-annex-shell")
    repos = [tmp_path / "a1.git", tmp_path / "a2.git"]
    for r in repos:
        subprocess.run(["git", "init", "-q", "--bare", str(r)], check=True)
        subprocess.run(
            ["git", "annex", "init", "-q", r.stem], cwd=r, env=pypi_client.env, check=True
        )
    sftp_dir, enc_dir, new_dir = (tmp_path / n for n in ("sftp", "enc", "new"))
    for d in (sftp_dir, enc_dir, new_dir):
        d.mkdir()
    nodes = (
        f"a=annex+ssh://h1{repos[0]}?shell={shell} b=annex://{repos[1]}?shell={shell} "
        f"s=sftp://h1{sftp_dir} e={enc_dir.as_uri()}?encryption=shared"
    )
    init_cluster(prepo, nodes, "encryption=none", "copies=2")
    keys = populate(prepo, 16)
    cli(prepo, "nodes", "add", "cl", "n", new_dir.as_uri())
    plan = cli_json(prepo, "rebalance", "cl")
    assert plan["unlisted"] == {} and plan["asked_key_by_key"] == []
    held = {n: t["held"] for n, t in plan["plan"]["nodes"].items()}
    assert sum(held.values()) == 2 * len(keys) and all(held[n] for n in "abse")
    done = cli_json(prepo, "rebalance", "cl", "--apply")
    assert not done["result"]["failed"]
    assert cli_json(prepo, "rebalance", "cl")["plan"]["keys_to_move"] == 0
    assert cli_json(prepo, "fsck", "cl")["counts"]["ok"] == 2 * len(keys)
    prepo.annex("drop", ".")
    prepo.annex("get", ".")


def test_commands_read_the_branch_from_a_subdirectory(prepo: Repo, dirs: dict[str, Path]) -> None:
    """Where users are: in a subdirectory of the work tree. ``git ls-tree`` there lists
    only that directory's part of a tree, so the location logs went unread: the
    encrypted node, whose copies are matched against the branch's keys, looked empty
    to the plan (a move onto it would have taken a copy away), and fsck missed lost
    keys."""
    n1, n2, e = dirs["n1"].as_uri(), dirs["n2"].as_uri(), dirs["n3"].as_uri()
    nodes = f"n1={n1} n2={n2} e={e}?encryption=shared"
    init_cluster(prepo, nodes, "encryption=none", "copies=2")
    keys = populate(prepo, 12)
    sub = prepo.path / "sub" / "deeper"
    sub.mkdir(parents=True)

    def here(*args: str) -> dict:  # type: ignore[type-arg]
        proc = subprocess.run(
            [str(CLUSTER), *args, "--json"], cwd=sub, env=prepo.client.env,
            capture_output=True, text=True,
        )  # fmt: skip
        return json.loads(proc.stdout)  # type: ignore[no-any-return]

    held = {n: t["held"] for n, t in here("rebalance", "cl")["plan"]["nodes"].items()}
    top = cli_json(prepo, "rebalance", "cl")["plan"]["nodes"]
    assert held == {n: t["held"] for n, t in top.items()}
    assert held["e"] > 0 and sum(held.values()) == 2 * len(keys)
    for d in (dirs["n1"], dirs["n2"], dirs["n3"]):  # every copy gone
        shutil.rmtree(d)
        d.mkdir()
    assert len(here("fsck", "cl")["lost"]) == len(keys)


# -- a gateway's target ------------------------------------------------------------------


def test_gateway_target_rebalance_and_fsck(tmp_path: Path) -> None:
    """The same commands on a gateway's target, whose nodes only the gateway reaches.
    There is no repository there, so an encrypted node cannot be listed: said, and
    rebalance refuses rather than guess."""
    config = tmp_path / "gw.toml"
    node_dirs = [tmp_path / f"d{i}" for i in range(4)]
    for d in node_dirs:
        d.mkdir()
    proxy = str(VENV_BIN / "git-annex-remote-proxy")

    def gw(*args: str, rc: int = 0) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [proxy, "gateway", "--config", str(config), *args], capture_output=True, text=True
        )
        assert proc.returncode == rc, proc.stdout + proc.stderr
        return proc

    gw("add", "t", *(f"n{i}={d.as_uri()}" for i, d in enumerate(node_dirs[:3])), "--copies", "2")
    target = GatewayConfig.load(config).target("t")
    cluster = Cluster([open_node(s) for s in target.specs()], copies=2)
    for i in range(12):
        data = os.urandom(500 + 100 * i)
        cluster.store_stream(make_key(data), io.BytesIO(data), len(data))
    cluster.close()
    gw("nodes", "add", "t", "n3", node_dirs[3].as_uri())
    out = gw("rebalance", "t").stdout
    assert "git-annex-remote-proxy gateway --config" in out and "--apply" in out
    done = json.loads(gw("rebalance", "t", "--apply", "--json").stdout)
    assert done["result"]["copies_added"] > 0 and not done["result"]["failed"]
    assert json.loads(gw("rebalance", "t", "--json").stdout)["plan"]["keys_to_move"] == 0
    checked = json.loads(gw("fsck", "t", "--json").stdout)
    assert checked["counts"]["ok"] == 24 and checked["lost"] == []

    enc = tmp_path / "enc"
    enc.mkdir()
    gw("nodes", "add", "t", "e", f"{enc.as_uri()}?encryption=shared")
    refused = gw("rebalance", "t", rc=1)
    assert "node e" in refused.stderr and "encrypted" in refused.stderr
