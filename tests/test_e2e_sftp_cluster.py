"""The cluster remote over sftp:// nodes on three real sshd "hosts", driven by git-annex.

A host going down is simulated by stopping its sshd (the listener and every
session process), before or during a transfer.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Client, Repo, make_repo
from sshd import SSHD, SSHDFactory, ssh_config_for
from test_e2e_file_cluster import init_cluster, objects_in, summary_of_testremote

from shared.annex.keys import Key
from shared.cluster.placement import rendezvous_order

pytestmark = pytest.mark.timeout(600)
HOSTS = ("h1", "h2", "h3")


class Named:
    def __init__(self, name: str) -> None:
        self.name = name


class SFTPCluster:
    """Three node directories, each reached through its own sshd."""

    def __init__(self, root: Path, hosts: dict[str, SSHD]) -> None:
        self.hosts = hosts
        self.dirs = [root / f"n{i}" for i in (1, 2, 3)]
        for d in self.dirs:
            d.mkdir(parents=True)

    @property
    def nodes(self) -> str:
        return " ".join(f"n{i}=sftp://h{i}{d}" for i, d in enumerate(self.dirs, 1))

    def host_of(self, node: str) -> SSHD:
        return self.hosts["h" + node.removeprefix("n")]

    def order(self, key: str) -> list[str]:
        """The key's placement order, as the remote computes it."""
        return [
            n.name for n in rendezvous_order(key, [Named(f"n{i}") for i in (1, 2, 3)], [1.0] * 3)
        ]


@pytest.fixture
def cluster(
    tmp_path: Path, client: Client, sshd_factory: SSHDFactory, ssh_client_key: Path
) -> SFTPCluster:
    hosts = {name: sshd_factory(name) for name in HOSTS}
    ssh_config_for(Path(client.env["HOME"]), hosts, ssh_client_key)
    return SFTPCluster(tmp_path / "nodes", hosts)


def add_file(repo: Repo, name: str, size: int) -> str:
    with open(repo.path / name, "wb") as f:
        f.write(os.urandom(size))
    repo.annex("add", name)
    repo.run("git", "commit", "-qm", name)
    return repo.lookupkey(name)


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def tmp_files(node_dir: Path) -> list[Path]:
    return (
        [p for p in (node_dir / "tmp").rglob("*") if p.is_file()]
        if (node_dir / "tmp").exists()
        else []
    )


def key_objects(node_dir: Path, key: str) -> list[Path]:
    return [p for p in objects_in(node_dir) if p.name == Key.parse(key).file_name]


@pytest.mark.parametrize("copies", ["3", "2"])
@pytest.mark.parametrize(
    "crypto",
    [
        pytest.param(("encryption=none",), id="plain"),
        pytest.param(("encryption=shared", "chunk=1MiB"), id="shared-chunked"),
    ],
)
def test_testremote_fast(
    repo: Repo, cluster: SFTPCluster, copies: str, crypto: tuple[str, ...]
) -> None:
    init_cluster(repo, cluster.nodes, f"copies={copies}", *crypto)
    proc = repo.annex("testremote", "cl", "--fast", check=False, timeout=600)
    passed, total = summary_of_testremote(proc.stdout + proc.stderr)
    assert proc.returncode == 0 and passed == total, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert all(objects_in(d) == [] and tmp_files(d) == [] for d in cluster.dirs)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # thousands of chunk round trips over three ssh hosts
def test_testremote_full(repo: Repo, cluster: SFTPCluster) -> None:
    init_cluster(repo, cluster.nodes, "copies=2", "encryption=none")
    proc = repo.annex("testremote", "cl", check=False, timeout=3600)
    passed, total = summary_of_testremote(proc.stdout + proc.stderr)
    assert proc.returncode == 0 and passed == total, proc.stdout[-4000:] + proc.stderr[-4000:]


def test_host_down_before_transfer(repo: Repo, cluster: SFTPCluster) -> None:
    init_cluster(repo, cluster.nodes, "encryption=none", "copies=3", "mincopies=2")
    key_a = add_file(repo, "a.bin", 300_000)
    repo.annex("copy", "--to", "cl", "a.bin")
    assert all(key_objects(d, key_a) for d in cluster.dirs)
    cluster.hosts["h3"].stop()

    # get: comes from a surviving node.
    repo.annex("drop", "a.bin")
    repo.annex("get", "a.bin")
    # copy --fast of a new file: stored on 2 of 3, the failed node is named.
    add_file(repo, "b.bin", 300_000)
    proc = repo.annex("copy", "--fast", "--to", "cl", "b.bin")
    out = proc.stdout + proc.stderr
    assert "stored on 2 of 3" in out and "node n3" in out
    # drop from the cluster cannot reach n3: it fails and names it.
    proc = repo.annex("drop", "--from", "cl", "a.bin", check=False)
    assert proc.returncode != 0 and "n3" in proc.stdout + proc.stderr
    # back up: the drop completes everywhere.
    cluster.hosts["h3"].start()
    repo.annex("drop", "--from", "cl", "a.bin", "b.bin")
    assert all(objects_in(d) == [] for d in cluster.dirs)


def test_checkpresent_unknown_when_only_holder_is_down(repo: Repo, cluster: SFTPCluster) -> None:
    init_cluster(repo, cluster.nodes, "encryption=none", "copies=1")
    key = add_file(repo, "x.bin", 10_000)
    repo.annex("copy", "--to", "cl", "x.bin")
    holder = cluster.order(key)[0]
    cluster.host_of(holder).stop()
    proc = repo.annex("fsck", "--fast", "--from", "cl", "x.bin", check=False)
    assert proc.returncode != 0 and f"node {holder}" in proc.stdout + proc.stderr
    cluster.host_of(holder).start()
    repo.annex("fsck", "--fast", "--from", "cl", "x.bin")
    assert "cl" in repo.annex("whereis", "x.bin").stdout


def test_host_dies_during_copy(repo: Repo, cluster: SFTPCluster) -> None:
    init_cluster(repo, cluster.nodes, "encryption=none", "copies=3", "mincopies=2")
    add_file(repo, "big.bin", 150 * 1024 * 1024)
    copy = subprocess.Popen(
        ["git", "annex", "copy", "--to", "cl", "big.bin"],
        cwd=repo.path,
        env=repo.client.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_for(lambda: bool(tmp_files(cluster.dirs[1])), "the upload to n2 to start")
    cluster.hosts["h2"].stop()
    out, _ = copy.communicate(timeout=300)
    assert copy.returncode == 0, out
    assert "stored on 2 of 3" in out and "node n2" in out
    key = repo.lookupkey("big.bin")
    assert key_objects(cluster.dirs[0], key) and key_objects(cluster.dirs[2], key)
    assert not key_objects(cluster.dirs[1], key)  # the partial upload never became visible


def test_get_fails_over_and_resumes(repo: Repo, cluster: SFTPCluster) -> None:
    init_cluster(repo, cluster.nodes, "encryption=none", "copies=2")
    key = add_file(repo, "big.bin", 150 * 1024 * 1024)
    repo.annex("copy", "--to", "cl", "big.bin")
    repo.annex("drop", "big.bin")
    first = cluster.order(key)[0]  # equal costs: the get starts on the key's first node
    get = subprocess.Popen(
        ["git", "annex", "--debug", "get", "big.bin"],
        cwd=repo.path,
        env=repo.client.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    partial = repo.path / ".git" / "annex" / "tmp" / Key.parse(key).file_name
    wait_for(lambda: partial.exists() and partial.stat().st_size > 1024 * 1024, "the download")
    cluster.host_of(first).stop()
    out, _ = get.communicate(timeout=300)
    assert get.returncode == 0, out[-3000:]
    starts = re.findall(r"from node (n\d), starting at byte (\d+)", out)
    assert starts[0] == (first, "0")
    assert starts[-1][0] != first and int(starts[-1][1]) > 0, starts  # resumed, not restarted
    repo.annex("fsck", "big.bin")


def test_changed_host_key_is_refused(repo: Repo, cluster: SFTPCluster) -> None:
    init_cluster(repo, cluster.nodes, "encryption=none", "copies=3", "mincopies=1")
    add_file(repo, "k.bin", 1000)
    cluster.hosts["h1"].restart(new_host_key=True)
    proc = repo.annex("copy", "--fast", "--to", "cl", "k.bin")
    out = proc.stdout + proc.stderr
    assert "node n1" in out and "changed" in out.lower() and "ssh-keygen -R" in out
    assert not objects_in(cluster.dirs[0])


def test_killed_copy_leaves_no_partial_object(repo: Repo, cluster: SFTPCluster) -> None:
    init_cluster(repo, cluster.nodes, "encryption=none", "copies=3")
    key = add_file(repo, "big.bin", 150 * 1024 * 1024)
    copy = subprocess.Popen(
        ["git", "annex", "copy", "--to", "cl", "big.bin"],
        cwd=repo.path,
        env=repo.client.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_for(lambda: all(tmp_files(d) for d in cluster.dirs), "uploads to all nodes")
    os.killpg(copy.pid, signal.SIGKILL)  # git-annex and the remote, mid-transfer
    copy.wait()
    time.sleep(0.5)
    assert not any(key_objects(d, key) for d in cluster.dirs)
    # The next copy stores the object and clears what the killed one left in tmp/.
    repo.annex("copy", "--to", "cl", "big.bin")
    for d in cluster.dirs:
        assert key_objects(d, key) and tmp_files(d) == []


def test_home_relative_paths(
    tmp_path: Path, client: Client, sshd_factory: SSHDFactory, ssh_client_key: Path
) -> None:
    """``sftp://host/~/path``: relative to the login directory (root's home here)."""
    hosts = {"h1": sshd_factory("h1")}
    ssh_config_for(Path(client.env["HOME"]), hosts, ssh_client_key)
    rel = f"cluster-test-{os.getpid()}-{tmp_path.name}"
    home_dir = Path(os.path.expanduser("~root")) / rel
    home_dir.mkdir()
    try:
        repo = make_repo(tmp_path / "repo", client)
        init_cluster(repo, f"n1=sftp://h1/~/{rel}", "encryption=none")
        key = add_file(repo, "h.bin", 5000)
        repo.annex("copy", "--to", "cl", "h.bin")
        assert key_objects(home_dir, key)
        repo.annex("drop", "--from", "cl", "h.bin")
    finally:
        subprocess.run(["rm", "-rf", str(home_dir)], check=True)
