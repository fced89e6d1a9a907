"""A cluster node on the bucket prefix of git-annex's own S3 remote (issue 18, part 3:
"whereis double-counts a bucket shared with a native S3 remote"). Both remotes report
the one object there, so git-annex counts it twice and a drop goes below numcopies.
initremote/enableremote/nodes add refuse such a node, naming the S3 remote and the fix
(``git annex untrust NAME``), unless that remote is untrusted or dead, or force=yes.
Real git-annex, real S3 endpoint (moto_server)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import VENV_BIN, Client, Repo, make_repo
from s3server import S3Server, s3_environ

pytestmark = pytest.mark.timeout(300)
CLUSTER = str(VENV_BIN / "git-annex-remote-cluster")


@pytest.fixture
def repo(tmp_path: Path, pypi_client: Client, s3: S3Server) -> Repo:
    env = s3_environ(pypi_client.env)
    if "PYTHONPATH" in os.environ:  # so that PYTHONPATH=TREE tests that tree's remote
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    repo = make_repo(tmp_path / "repo", replace(pypi_client, env=env))
    # git-annex refuses http to loopback unless allowed (its S3 remote needs it).
    repo.run("git", "config", "annex.security.allowed-ip-addresses", "127.0.0.1")
    s3.create_bucket("shared")
    repo.annex(
        "initremote",
        "s3",
        "type=S3",
        "encryption=none",
        "host=127.0.0.1",
        f"port={s3.port}",
        "protocol=http",
        "requeststyle=path",
        "bucket=shared",
        "fileprefix=pre/",
    )
    return repo


def cluster(
    repo: Repo, node: str, *extra: str, check: bool = False
) -> subprocess.CompletedProcess[str]:
    return repo.annex(
        "initremote",
        "cl",
        "type=external",
        "externaltype=cluster",
        "encryption=none",
        f"nodes={node}",
        *extra,
        check=check,
    )


def failure(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def add(repo: Repo, name: str) -> None:
    repo.write(name, os.urandom(5000))
    repo.annex("add", name)
    repo.run("git", "commit", "-qm", name)


def test_a_node_on_a_trusted_s3_remotes_prefix_is_refused_until_it_is_untrusted(
    repo: Repo, s3: S3Server
) -> None:
    s3uuid = repo.run("git", "config", "remote.s3.annex-uuid").stdout.strip()
    assert s3.list_keys("shared") == ["pre/annex-uuid"]  # git-annex's record of its remote
    by_hand = f"s=s3://shared/pre/?endpoint={s3.endpoint}"
    for node in (by_hand, "s=s3://?annexremote=s3"):
        why = failure(cluster(repo, node))
        assert f"holds the objects of git-annex's S3 remote s3 (UUID {s3uuid}, semitrusted)" in why
        assert "run git annex untrust s3" in why and "force=yes" in why
    # Another repository's S3 remote: refused too, and untrusting is no answer here.
    foreign = "0b7e7c3e-1f0a-4c53-9d0e-2a6c8e4f1b97"
    s3.client().put_object(Bucket="shared", Key="theirs/annex-uuid", Body=foreign.encode())
    why = failure(cluster(repo, f"s=s3://shared/theirs/?endpoint={s3.endpoint}"))
    assert f"not one of this repository's: UUID {foreign}" in why
    assert "a bucket prefix of its own" in why
    # Refused: no remote, no claim on the prefix.
    assert repo.run("git", "config", "remote.cl.annex-uuid", check=False).returncode != 0
    assert s3.list_keys("shared") == ["pre/annex-uuid", "theirs/annex-uuid"]

    repo.annex("untrust", "s3")
    cluster(repo, "s=s3://?annexremote=s3", "copies=1", check=True)
    # The sequence that counted one object twice: the cluster stores it, the S3 remote
    # finds it (fsck --fast), numcopies 2. The untrusted S3 remote counts for nothing.
    repo.annex("numcopies", "2")
    add(repo, "f.bin")
    repo.annex("copy", "--to", "cl", "f.bin")
    repo.annex("fsck", "--from", "s3", "--fast", "f.bin")
    assert "s3" in repo.annex("whereis", "f.bin").stdout
    drop = repo.annex("drop", "f.bin", check=False)
    assert drop.returncode != 0, drop.stdout + drop.stderr
    assert (repo.path / "f.bin").read_bytes()


def test_force_accepts_the_shared_prefix_for_one_run_and_use_goes_on(
    repo: Repo, s3: S3Server
) -> None:
    node = f"s=s3://shared/pre/?endpoint={s3.endpoint}"
    accepted = cluster(repo, node, "force=yes", check=True)
    assert "counts as a second copy" in accepted.stdout + accepted.stderr
    add(repo, "f.bin")
    # force= is not stored: the next configuration change is refused again (as an
    # adopted node of an earlier version is, at its first enableremote), ...
    why = failure(repo.annex("enableremote", "cl", "copies=1", check=False))
    assert "run git annex untrust s3" in why, why
    why = failure(repo.run(CLUSTER, "nodes", "set", "cl", "s", "cost=150", check=False))
    assert "run git annex untrust s3" in why and "--force" in why
    # ... while stores, presence checks and reads go on.
    repo.annex("move", "--to", "cl", "f.bin")
    repo.annex("get", "f.bin")
    # A dead S3 remote counts for nothing either.
    repo.annex("dead", "s3")
    repo.annex("enableremote", "cl", "copies=1")


def test_trust_log_newest_line_wins_and_the_journal_after_the_branch() -> None:
    from shared.annex.remotelog import parse_trust_log

    u, v, w = "u-1111-2222", "v-3333-4444", "w-5555-6666"
    branch = f"{u} 0 timestamp=20s\n{u} 1 timestamp=10s\n{v} X timestamp=5s\nnonsense\n"
    journal = f"{v} ? timestamp=5s\n{w} 0\n"
    assert parse_trust_log(branch + "\n" + journal) == {u: "0", v: "?", w: "0"}
