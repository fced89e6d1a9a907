"""Clusters with S3 nodes, end to end with real git-annex and a real S3 endpoint
(moto_server on loopback): git annex testremote on plain, chunked and
chunked+encrypted S3 nodes, and interoperability with git-annex's own S3 remote
both ways (what one writes, the other reads)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import Client, Repo, make_repo
from s3server import S3Server, s3_environ
from test_e2e_file_cluster import init_cluster, summary_of_testremote
from test_e2e_sftp_cluster import add_file
from test_proxy import PROXY, gw_host, proxy_cli

__all__ = ["gw_host"]  # a fixture, imported for the gateway test

pytestmark = pytest.mark.timeout(900)


@pytest.fixture
def s3_client(pypi_client: Client, s3: S3Server) -> Client:
    return replace(pypi_client, env=s3_environ(pypi_client.env))


@pytest.fixture
def s3repo(tmp_path: Path, s3_client: Client) -> Repo:
    repo = make_repo(tmp_path / "repo", s3_client)
    # git-annex refuses http to loopback unless allowed (its native S3 remote needs it).
    repo.run("git", "config", "annex.security.allowed-ip-addresses", "127.0.0.1")
    return repo


def s3_node(server: S3Server, name: str, bucket: str, prefix: str, extra: str = "") -> str:
    return f"{name}=s3://{bucket}/{prefix}?endpoint={server.endpoint}{extra}"


def objects(server: S3Server, bucket: str) -> list[str]:
    """The bucket's objects, without the nodes' owner markers (``PREFIX.cluster-owner``)."""
    return [n for n in server.list_keys(bucket) if not n.endswith(".cluster-owner")]


@pytest.mark.parametrize(
    "layers",
    [
        pytest.param("", id="plain"),
        pytest.param("&chunk=1MiB", id="chunked"),
        pytest.param("&chunk=1MiB&encryption=shared", id="chunked-encrypted"),
    ],
)
def test_testremote_fast_on_s3_nodes(s3repo: Repo, s3: S3Server, layers: str) -> None:
    s3.create_bucket("testremote")
    nodes = " ".join(s3_node(s3, f"s{i}", "testremote", f"n{i}/", layers) for i in (1, 2))
    init_cluster(s3repo, nodes, "copies=2", "encryption=none")
    proc = s3repo.annex("testremote", "cl", "--fast", check=False, timeout=900)
    passed, total = summary_of_testremote(proc.stdout + proc.stderr)
    assert proc.returncode == 0 and passed == total, proc.stdout[-5000:] + proc.stderr[-5000:]
    assert total >= 100
    # testremote removes what it stored (the nodes' owner markers stay); no multipart
    # upload is left dangling.
    assert s3.list_keys("testremote") == ["n1/.cluster-owner", "n2/.cluster-owner"]
    assert s3.multipart_uploads("testremote") == []


def native_s3(repo: Repo, server: S3Server, name: str, bucket: str, *extra: str) -> None:
    repo.annex(
        "initremote",
        name,
        "type=S3",
        "host=127.0.0.1",
        f"port={server.port}",
        "protocol=http",
        "requeststyle=path",
        f"bucket={bucket}",
        "fileprefix=pre/",
        *extra,
    )


@pytest.mark.parametrize(
    "crypto",
    [
        pytest.param(("encryption=none",), id="plain"),
        pytest.param(("encryption=none", "chunk=1MiB"), id="chunked"),
        pytest.param(("encryption=shared", "chunk=1MiB"), id="chunked-encrypted"),
        pytest.param(("encryption=shared", "mac=HMACSHA256"), id="encrypted-sha256"),
    ],
)
def test_native_s3_remote_and_our_node_read_each_other(
    s3repo: Repo, s3: S3Server, crypto: tuple[str, ...]
) -> None:
    s3.create_bucket("shared-bucket")
    native_s3(s3repo, s3, "nat", "shared-bucket", *crypto)
    s3repo.annex("untrust", "nat")  # one object, one copy: counted through the cluster
    init_cluster(s3repo, "s=s3://?annexremote=nat", "encryption=none")
    ours = os.urandom(2 * 1024 * 1024 + 4321)
    theirs = os.urandom(1024 * 1024 + 17)
    small = b"tiny\n"
    s3repo.write("ours.bin", ours)
    s3repo.write("theirs.bin", theirs)
    s3repo.write("small.txt", small)
    s3repo.annex("add", ".")
    s3repo.run("git", "commit", "-qm", "data")

    # Ours writes, git-annex's S3 remote reads.
    s3repo.annex("copy", "--to", "cl", "ours.bin", "small.txt")
    fsck = s3repo.annex("fsck", "--from", "nat", "--fast", "ours.bin", "small.txt", check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    s3repo.annex("drop", "--force", "ours.bin", "small.txt")
    s3repo.annex("get", "--from", "nat", "ours.bin", "small.txt")
    assert (s3repo.path / "ours.bin").read_bytes() == ours
    assert (s3repo.path / "small.txt").read_bytes() == small

    # git-annex's S3 remote writes, ours reads.
    s3repo.annex("copy", "--to", "nat", "theirs.bin")
    fsck = s3repo.annex("fsck", "--from", "cl", "--fast", "theirs.bin", check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    s3repo.annex("drop", "--force", "theirs.bin")
    s3repo.annex("get", "--from", "cl", "theirs.bin")
    assert (s3repo.path / "theirs.bin").read_bytes() == theirs

    # And the full check of content: fsck without --fast downloads and verifies.
    s3repo.annex("fsck", "--from", "nat", "ours.bin", "theirs.bin")
    s3repo.annex("fsck", "--from", "cl", "ours.bin", "theirs.bin")


def test_adopted_fractional_chunk_size_is_git_annexs_to_the_byte(
    s3repo: Repo, s3: S3Server
) -> None:
    """chunk=1.1MiB is 1153434 bytes to git-annex (1.1 * 1048576, rounded): the cluster
    finds the native remote's chunks, and stores no second set of its own."""
    s3.create_bucket("frac")
    native_s3(s3repo, s3, "nat", "frac", "encryption=none", "chunk=1.1MiB")
    s3repo.annex("untrust", "nat")
    init_cluster(s3repo, "s=s3://?annexremote=nat", "encryption=none")
    theirs = add_file(s3repo, "theirs.bin", 1_200_000)
    s3repo.annex("copy", "--to", "nat", "theirs.bin")
    stem, name = theirs.split("--", 1)
    native = [f"pre/{stem}-S1153434-C{n}--{name}" for n in (1, 2)]
    assert [n for n in s3.list_keys("frac") if "-C" in n] == native
    fsck = s3repo.annex("fsck", "--from", "cl", "--fast", "theirs.bin", check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert "[cl]" in s3repo.annex("whereis", "theirs.bin").stdout  # found: fsck recorded it
    s3repo.annex("copy", "--to", "cl", "theirs.bin")
    assert [n for n in s3.list_keys("frac") if "-C" in n] == native  # no second set
    s3repo.annex("drop", "--force", "theirs.bin")
    s3repo.annex("get", "--from", "cl", "theirs.bin")
    # And what the cluster writes, git-annex's own remote finds.
    add_file(s3repo, "ours.bin", 1_200_000)
    s3repo.annex("copy", "--to", "cl", "ours.bin")
    fsck = s3repo.annex("fsck", "--from", "nat", "--fast", "ours.bin", check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert "[nat]" in s3repo.annex("whereis", "ours.bin").stdout


def test_fsck_keeps_the_cluster_in_the_location_log_when_the_bucket_is_gone(
    s3repo: Repo, s3: S3Server
) -> None:
    """A deleted (or misnamed) bucket cannot tell whether it holds a key: `git annex
    fsck --from --fast` must fail and say why, never record the key as missing."""
    s3.create_bucket("doomed")
    init_cluster(s3repo, s3_node(s3, "s", "doomed", "p/"), "encryption=none")
    add_file(s3repo, "f.bin", 10_000)
    s3repo.annex("copy", "--to", "cl", "f.bin")
    client = s3.client()
    for name in s3.list_keys("doomed"):
        client.delete_object(Bucket="doomed", Key=name)
    client.delete_bucket(Bucket="doomed")
    fsck = s3repo.annex("fsck", "--from", "cl", "--fast", "f.bin", check=False)
    assert fsck.returncode != 0
    assert "bucket 'doomed' does not exist" in fsck.stdout + fsck.stderr
    assert "[cl]" in s3repo.annex("whereis", "f.bin").stdout


def test_initremote_generates_and_keeps_node_ciphers(s3repo: Repo, s3: S3Server) -> None:
    s3.create_bucket("ciph")
    nodes = s3_node(s3, "e", "ciph", "e/", "&encryption=shared&chunk=1MiB")
    init_cluster(s3repo, nodes, "encryption=none")
    log = s3repo.run("git", "cat-file", "blob", "git-annex:remote.log").stdout
    assert "nodeciphers=e=" in log
    first = log.split("nodeciphers=e=")[1].split()[0]
    data = os.urandom(3 * 1024 * 1024)
    s3repo.write("f.bin", data)
    s3repo.annex("add", "f.bin")
    s3repo.annex("copy", "--to", "cl", "f.bin")
    # Objects are encrypted: nothing in the bucket carries the key's name.
    key = s3repo.lookupkey("f.bin")
    names = objects(s3, "ciph")
    assert names and all(n.startswith("e/GPGHMACSHA1--") for n in names)
    assert not any(key.split("--")[1] in n for n in names)
    # enableremote (e.g. with a changed node list) keeps the cipher.
    s3repo.annex("enableremote", "cl", f"nodes={nodes}")
    log = s3repo.run("git", "cat-file", "blob", "git-annex:remote.log").stdout
    assert log.split("nodeciphers=e=")[1].split()[0] == first
    s3repo.annex("drop", "f.bin")
    s3repo.annex("get", "f.bin")
    assert (s3repo.path / "f.bin").read_bytes() == data


def test_annexremote_refuses_hybrid_and_unknown_names(
    s3repo: Repo, s3: S3Server, tmp_path: Path
) -> None:
    proc = init_cluster(s3repo, "s=s3://?annexremote=nosuch", "encryption=none", check=False)
    assert proc.returncode != 0
    assert "no special remote called 'nosuch'" in proc.stderr + proc.stdout


def test_other_clone_reads_encrypted_node(s3repo: Repo, s3: S3Server, tmp_path: Path) -> None:
    """The cipher travels in the git-annex branch: a clone decrypts what the first wrote."""
    s3.create_bucket("clone")
    nodes = s3_node(s3, "e", "clone", "", "&encryption=shared")
    init_cluster(s3repo, nodes, "encryption=none")
    data = os.urandom(100_000)
    s3repo.write("f.bin", data)
    s3repo.annex("add", "f.bin")
    s3repo.run("git", "commit", "-qm", "f")
    s3repo.annex("copy", "--to", "cl", "f.bin")
    clone_path = tmp_path / "clone"
    s3repo.run("git", "clone", "-q", str(s3repo.path), str(clone_path))
    clone = Repo(clone_path, s3repo.client)
    clone.annex("init", "-q", "clone")
    clone.annex("enableremote", "cl")
    clone.annex("get", "f.bin")
    assert (clone_path / "f.bin").read_bytes() == data


def test_testremote_through_a_gateway_to_an_encrypted_chunked_s3_node(
    tmp_path: Path, repo: Repo, gw_host: str, s3: S3Server, s3_env: dict[str, str]
) -> None:
    """Only the gateway holds the S3 credentials and the cipher; the client has neither."""
    s3.create_bucket("gateway-bucket")
    config = tmp_path / "gw.toml"
    node = s3_node(s3, "s", "gateway-bucket", "t/", "&chunk=1MiB&encryption=shared")
    proxy_cli("add", "bucket", node, config=config, env=s3_env)  # the gateway's credentials
    assert "ciphers" in config.read_text()
    assert config.stat().st_mode & 0o077 == 0  # the cipher is a secret
    assert "cipher" not in proxy_cli("list", "--json", config=config).stdout
    creds = " ".join(f"{k}={v}" for k, v in s3_env.items())
    home = tmp_path / "gw-home"
    home.mkdir()
    repo.annex(
        "initremote", "gw", "type=external", "externaltype=proxy", "encryption=none",
        "gateway=ssh://gw", "target=bucket",
        f"gatewaycommand=env HOME={home} {creds} {PROXY} serve --config {config}",
    )  # fmt: skip
    assert "AWS_SECRET_ACCESS_KEY" not in repo.client.env
    proc = repo.annex("testremote", "gw", "--fast", check=False, timeout=900)
    passed, total = summary_of_testremote(proc.stdout + proc.stderr)
    assert proc.returncode == 0 and passed == total, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert s3.list_keys("gateway-bucket") == ["t/.cluster-owner"]  # the target's
    key = add_file(repo, "big.bin", 3_000_000)
    repo.annex("copy", "--to", "gw", "big.bin")
    names = objects(s3, "gateway-bucket")
    assert len(names) == 3 and all(n.startswith("t/GPGHMACSHA1--") for n in names)
    assert not any(key in n for n in names)
    repo.annex("drop", "big.bin")
    repo.annex("get", "big.bin")
    repo.annex("fsck", "big.bin")
