"""The cluster remote over git-annex repositories (annex+ssh:// and annex:///), driven by git-annex.

Node repositories are served by either git-annex-shell (PyPI's, P2P v4, or
Debian's, v1), whatever the client's git-annex is; a host going down is its
sshd stopped.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import Client, Repo
from sshd import SSHD, SSHDFactory, ssh_config_for
from test_e2e_file_cluster import init_cluster, summary_of_testremote
from test_e2e_sftp_cluster import add_file

pytestmark = pytest.mark.timeout(900)
HOSTS = ("h1", "h2", "h3")


@pytest.fixture(params=["pypi", pytest.param("debian", marks=pytest.mark.oldannex)])
def server(request: pytest.FixtureRequest) -> Client:
    """The git-annex whose git-annex-shell serves the node repositories."""
    return request.getfixturevalue(f"{request.param}_client")  # type: ignore[no-any-return]


class AnnexCluster:
    """Three bare node repositories, each behind its own sshd."""

    def __init__(self, root: Path, hosts: dict[str, SSHD], server: Client) -> None:
        self.hosts, self.server = hosts, server
        self.repos = [root / f"n{i}.git" for i in (1, 2, 3)]
        for repo in self.repos:
            subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
            self.git_annex(repo, "init", "-q", repo.stem)

    def git_annex(self, repo: Path, *args: str, check: bool = True) -> str:
        proc = subprocess.run(
            ["git", "annex", *args],
            cwd=repo,
            env=self.server.env,
            capture_output=True,
            text=True,
            check=check,
        )
        return proc.stdout

    @property
    def shell(self) -> str:
        return quote(str(self.server.bindir / "git-annex-shell"), safe="/")

    def url(self, i: int, extra: str = "") -> str:
        return f"annex+ssh://h{i + 1}{self.repos[i]}?shell={self.shell}{extra}"

    @property
    def nodes(self) -> str:
        return " ".join(f"n{i + 1}={self.url(i)}" for i in range(3))

    def holders(self, key: str) -> list[str]:
        """Which node repositories hold the key, by their own fsck-able annex."""
        return [
            r.stem
            for r in self.repos
            if any(p.name == key for p in (r / "annex" / "objects").rglob("*") if p.is_file())
        ]


@pytest.fixture
def cluster(
    tmp_path: Path,
    client: Client,
    server: Client,
    sshd_factory: SSHDFactory,
    ssh_client_key: Path,
) -> AnnexCluster:
    hosts = {name: sshd_factory(name) for name in HOSTS}
    ssh_config_for(Path(client.env["HOME"]), hosts, ssh_client_key)
    return AnnexCluster(tmp_path / "nodes", hosts, server)


def test_testremote_fast(repo: Repo, cluster: AnnexCluster) -> None:
    init_cluster(repo, cluster.nodes, "copies=2", "encryption=none")
    proc = repo.annex("testremote", "cl", "--fast", check=False, timeout=900)
    passed, total = summary_of_testremote(proc.stdout + proc.stderr)
    assert proc.returncode == 0 and passed == total, proc.stdout[-4000:] + proc.stderr[-4000:]
    for r in cluster.repos:  # testremote removes what it stored
        assert not [p for p in (r / "annex" / "objects").rglob("*") if p.is_file()]


def test_copy_get_drop_with_a_node_down(repo: Repo, cluster: AnnexCluster) -> None:
    init_cluster(repo, cluster.nodes, "encryption=none", "copies=3", "mincopies=2")
    key_a = add_file(repo, "a.bin", 2_000_000)
    repo.annex("copy", "--to", "cl", "a.bin")
    assert cluster.holders(key_a) == ["n1", "n2", "n3"]
    # Each node repository knows it holds the key, in its own location log.
    for r in cluster.repos:
        assert "[here]" in cluster.git_annex(r, "whereis", "--key", key_a)
    cluster.hosts["h3"].stop()
    try:
        repo.annex("drop", "a.bin")
        repo.annex("get", "a.bin")
        add_file(repo, "b.bin", 300_000)
        out = repo.annex("copy", "--fast", "--to", "cl", "b.bin")
        text = out.stdout + out.stderr
        assert "stored on 2 of 3" in text and "node n3" in text
        proc = repo.annex("drop", "--from", "cl", "a.bin", check=False)
        assert proc.returncode != 0 and "n3" in proc.stdout + proc.stderr
    finally:
        cluster.hosts["h3"].start()
    repo.annex("drop", "--from", "cl", "a.bin", "b.bin")
    assert cluster.holders(key_a) == []
    for r in cluster.repos:
        assert "[here]" not in cluster.git_annex(r, "whereis", "--key", key_a, check=False)


def test_mixed_cluster_of_annex_sftp_and_file_nodes(
    tmp_path: Path, repo: Repo, cluster: AnnexCluster
) -> None:
    sftp_dir, file_dir = tmp_path / "sftp-node", tmp_path / "file-node"
    sftp_dir.mkdir()
    file_dir.mkdir()
    nodes = f"a=annex://{cluster.repos[0]}?shell={cluster.shell} " + (
        f"b={cluster.url(1)} s=sftp://h3{sftp_dir} f=file://{file_dir}"
    )
    init_cluster(repo, nodes, "encryption=none", "copies=4")
    key = add_file(repo, "m.bin", 1_500_000)
    repo.annex("copy", "--to", "cl", "m.bin")
    assert cluster.holders(key) == ["n1", "n2"]
    assert [p for p in sftp_dir.rglob(key) if p.is_file()]
    assert [p for p in file_dir.rglob(key) if p.is_file()]
    repo.annex("drop", "m.bin")
    repo.annex("get", "m.bin")
    repo.annex("fsck", "m.bin")
    repo.annex("drop", "--from", "cl", "m.bin")
    assert cluster.holders(key) == [] and not [p for p in file_dir.rglob(key) if p.is_file()]


def test_read_only_node_is_named_with_the_reason(repo: Repo, cluster: AnnexCluster) -> None:
    ro = quote(f"env GIT_ANNEX_SHELL_READONLY=1 {cluster.server.bindir / 'git-annex-shell'}")
    nodes = f"n1={cluster.url(0)} n2={cluster.url(1)} " + (
        f"n3=annex+ssh://h3{cluster.repos[2]}?shell={ro}"
    )
    init_cluster(repo, nodes, "encryption=none", "copies=3", "mincopies=2")
    key = add_file(repo, "r.bin", 100_000)
    proc = repo.annex("copy", "--to", "cl", "r.bin")
    text = proc.stdout + proc.stderr
    assert "stored on 2 of 3" in text and "node n3" in text and "read-only" in text
    assert cluster.holders(key) == ["n1", "n2"]


def test_chunking_unencrypted_content_is_refused_up_front(
    repo: Repo, cluster: AnnexCluster
) -> None:
    proc = init_cluster(repo, cluster.nodes, "encryption=none", "chunk=1MiB", check=False)
    assert proc.returncode != 0
    assert "chunk=1MiB cannot be used with git-annex repository nodes" in proc.stderr


def test_encrypted_chunks_are_fine(repo: Repo, cluster: AnnexCluster) -> None:
    init_cluster(repo, cluster.nodes, "encryption=shared", "chunk=1MiB", "copies=2")
    add_file(repo, "c.bin", 3_500_000)
    repo.annex("copy", "--to", "cl", "c.bin")
    repo.annex("drop", "c.bin")
    repo.annex("get", "c.bin")
    repo.annex("fsck", "c.bin")


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_testremote_full(repo: Repo, cluster: AnnexCluster) -> None:
    """The full run also tries chunk sizes with and without encryption, all on the same
    test keys. Repositories refuse unencrypted chunks (they do not match their key; see
    test_chunking_unencrypted_content_is_refused_up_front), and once an unencrypted
    chunked group has lost a test key's local content, git-annex's encrypted group of
    that key cannot send it either. So: every case outside the chunked groups passes
    (whole keys, with and without encryption, export), and the failures are exactly
    the chunked groups."""
    init_cluster(repo, cluster.nodes, "copies=2", "encryption=none")
    proc = repo.annex("testremote", "cl", "--tap", check=False, timeout=3600)
    results = re.findall(r"^(ok|not ok) \d+ - Remote Tests\.(.*)$", proc.stdout, re.M)
    assert len(results) == 573, proc.stdout[-3000:] + proc.stderr[-3000:]
    chunked = re.compile(r"remote chunksize=[1-9]")
    outside = [name for status, name in results if not chunked.search(name)]
    failed = [name for status, name in results if status == "not ok"]
    assert outside and not [n for n in failed if not chunked.search(n)], failed[:10]
    assert len(outside) == sum(1 for st, n in results if st == "ok" and not chunked.search(n))


def test_node_uuids_are_recorded_and_a_replaced_repository_refused(
    repo: Repo, cluster: AnnexCluster
) -> None:
    init_cluster(repo, cluster.nodes, "encryption=none", "copies=3", "mincopies=2")
    remote_log = repo.run("git", "show", "git-annex:remote.log").stdout
    for r in cluster.repos:
        uuid = subprocess.run(
            ["git", "config", "annex.uuid"], cwd=r, capture_output=True, text=True
        ).stdout.strip()
        assert f"{r.stem}={uuid}" in remote_log
    # Someone replaces n2's repository by another one at the same path.
    subprocess.run(["rm", "-rf", str(cluster.repos[1])], check=True)
    subprocess.run(["git", "init", "-q", "--bare", str(cluster.repos[1])], check=True)
    cluster.git_annex(cluster.repos[1], "init", "-q", "impostor")
    key = add_file(repo, "u.bin", 50_000)
    # (--fast: without it, git-annex first asks whether the cluster has the file, and
    # with n2 not being the repository it was, the answer is unknown, not "no".)
    proc = repo.annex("copy", "--fast", "--to", "cl", "u.bin")
    text = proc.stdout + proc.stderr
    assert "stored on 2 of 3" in text and "node n2" in text and "expected repository UUID" in text
    assert cluster.holders(key) == ["n1", "n3"]
    # The operator meant it: enableremote records the new repository.
    repo.annex("enableremote", "cl")
    repo.annex("drop", "--from", "cl", "u.bin")  # (topping up copies is `repair`'s job)
    repo.annex("copy", "--to", "cl", "u.bin")
    assert cluster.holders(key) == ["n1", "n2", "n3"]
