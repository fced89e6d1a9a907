"""sftp:// nodes against a real OpenSSH server: the conformance suite plus ssh-specific cases."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import paramiko
import pytest
from node_conformance import (
    NodeConformance,
    NodeFactory,
    ResumableConformance,
    make_key,
    payload,
    plant_leftovers,
)
from sshd import SSHDFactory, ssh_config_for

import shared.nodes.sftp as sftp_module
from shared.errors import BadReplica, ConfigError, NodeError, Unavailable
from shared.nodes.base import Node
from shared.nodes.retry import RetryingNode
from shared.nodes.sftp import SFTPNode, parse_sftp_url
from shared.nodes.url import parse_node
from shared.transport.ssh import SFTPSession, SSHPool

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def pool(tmp_path: Path, sshd_factory: SSHDFactory, ssh_client_key: Path) -> Iterator[SSHPool]:
    home = tmp_path / "home"
    ssh_config_for(home, {"nodehost": sshd_factory("nodehost")}, ssh_client_key)
    p = SSHPool(
        config_file=str(home / ".ssh" / "config"), io_timeout=10, attempts=1, failure_memo=0.5
    )
    yield p
    p.close()


def sftp_node(pool: SSHPool, root: Path, name: str = "s") -> SFTPNode:
    return SFTPNode(parse_node(f"{name}=sftp://nodehost{root}"), pool=pool)


class TestSFTPNodeConformance(NodeConformance, ResumableConformance):
    """Downloads and uploads through an exec channel (used for long transfers where the
    host allows it); the threshold is lowered so that every transfer here takes that path."""

    @pytest.fixture
    def make_node(
        self, tmp_path: Path, pool: SSHPool, monkeypatch: pytest.MonkeyPatch
    ) -> NodeFactory:
        monkeypatch.setattr(sftp_module, "EXEC_MIN", 1)
        root = tmp_path / "node"
        root.mkdir()
        return lambda: sftp_node(pool, root)

    @pytest.fixture
    def make_missing_node(self, tmp_path: Path, pool: SSHPool) -> NodeFactory:
        return lambda: sftp_node(pool, tmp_path / "gone")

    def leftovers(self, node: Node) -> list[str]:
        assert isinstance(node, SFTPNode)
        tmp = Path(node.root) / "tmp"
        return sorted(os.listdir(tmp)) if tmp.exists() else []


class TestSFTPOnlyNodeConformance(TestSFTPNodeConformance):
    """Downloads over SFTP alone, as on an sftp-only account."""

    @pytest.fixture
    def make_node(
        self, tmp_path: Path, pool: SSHPool, monkeypatch: pytest.MonkeyPatch
    ) -> NodeFactory:
        root = tmp_path / "node"
        root.mkdir()

        def make() -> SFTPNode:
            node = sftp_node(pool, root)
            node._exec_ok = False
            return node

        return make


def test_exec_probe_refuses_noisy_login_and_falls_back(
    tmp_path: Path,
    sshd_factory: SSHDFactory,
    ssh_client_key: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A login script printing to stdout would corrupt streamed downloads: SFTP is used."""
    home = tmp_path / "home"
    server = sshd_factory("noisy")
    ssh_config_for(home, {"noisy": server}, ssh_client_key)
    pool = SSHPool(config_file=str(home / ".ssh" / "config"), io_timeout=10, attempts=1)
    root = tmp_path / "n"
    root.mkdir()
    node = SFTPNode(parse_node(f"s=sftp://noisy{root}"), pool=pool)
    data = payload(300_000)
    key = make_key(data)
    node.store(key, io.BytesIO(data), len(data))
    monkeypatch.setattr(sftp_module, "EXEC_MIN", 1)
    real_run = pool.connection(node.target).run

    def noisy_run(
        argv: Sequence[str], input: bytes | None = None, timeout: float | None = None
    ) -> tuple[int, bytes, bytes]:
        status, out, err = real_run(argv, input, timeout)
        return status, b"Welcome!\n" + out, err  # what a chatty .bashrc does

    pool.connection(node.target).run = noisy_run  # type: ignore[method-assign]
    sink = io.BytesIO()
    node.retrieve(key, sink, 1000)
    assert sink.getvalue() == data[1000:] and node._exec_ok is False
    pool.close()


def test_layout_matches_file_nodes(tmp_path: Path, pool: SSHPool) -> None:
    root = tmp_path / "n"
    root.mkdir()
    data = payload(5000)
    key = make_key(data)
    sftp_node(pool, root).store(key, io.BytesIO(data), len(data))
    obj = root / key.hashdirlower / key.file_name / key.file_name
    assert obj.read_bytes() == data


def test_missing_root_is_unavailable_not_absent(tmp_path: Path, pool: SSHPool) -> None:
    node = sftp_node(pool, tmp_path / "missing")
    key = make_key(b"x")
    for op in (lambda: node.present(key), lambda: node.remove(key), node.check):
        with pytest.raises(Unavailable, match="not accessible"):
            op()


def test_host_down_is_unavailable_and_recovers(
    tmp_path: Path, pool: SSHPool, sshd_factory: SSHDFactory
) -> None:
    root = tmp_path / "n"
    root.mkdir()
    node = sftp_node(pool, root)
    data = payload(10_000)
    key = make_key(data)
    node.store(key, io.BytesIO(data), len(data))
    server = sshd_factory("nodehost")
    server.stop()
    try:
        with pytest.raises(Unavailable):
            node.present(key)
    finally:
        sshd_factory("nodehost")  # started again on the same port
    time.sleep(0.6)  # past the pool's failure memo
    assert node.present(key) == len(data)


def test_free_space_via_statvfs_extension(tmp_path: Path, pool: SSHPool) -> None:
    usage = sftp_node(pool, tmp_path).usage()
    assert usage is not None and 0 < usage.free <= usage.total
    st = os.statvfs(tmp_path)
    assert usage.total == st.f_blocks * st.f_frsize


def test_large_object_streams_in_bounded_windows(tmp_path: Path, pool: SSHPool) -> None:
    root = tmp_path / "n"
    root.mkdir()
    data = os.urandom(20 * 1024 * 1024 + 3)
    key = make_key(data)
    node = sftp_node(pool, root)
    node.store(key, io.BytesIO(data), len(data))
    sink = io.BytesIO()
    node.retrieve(key, sink, 7 * 1024 * 1024 + 1)
    assert sink.getvalue() == data[7 * 1024 * 1024 + 1 :]


@pytest.mark.parametrize(
    ("url", "host", "port", "user", "path"),
    [
        ("sftp://h/srv/a", "h", None, None, "/srv/a"),
        ("sftp://u@h:2222/srv/a/", "h", 2222, "u", "/srv/a"),
        ("sftp://h/~/annex", "h", None, None, "annex"),
        ("sftp://h/~", "h", None, None, "."),
        ("sftp://[::1]:22/x", "::1", 22, None, "/x"),
    ],
)
def test_url_parsing(url: str, host: str, port: int | None, user: str | None, path: str) -> None:
    target, root = parse_sftp_url(parse_node(f"n={url}"))
    assert (target.host, target.port, target.user, root) == (host, port, user, path)


@pytest.mark.parametrize("url", ["sftp:///nohost", "sftp://h", "sftp://h/x?bogus=1"])
def test_bad_urls(url: str) -> None:
    with pytest.raises(ConfigError, match="node n"):
        parse_sftp_url(parse_node(f"n={url}"))


def test_open_node_wraps_sftp_in_retries() -> None:
    from shared.nodes import open_node

    assert isinstance(open_node(parse_node("n=sftp://h/x")), RetryingNode)


def test_short_reads_do_not_start_remote_commands(tmp_path: Path, pool: SSHPool) -> None:
    """Small objects are read over SFTP: an exec would start a login shell per file."""
    root = tmp_path / "n"
    root.mkdir()
    node = sftp_node(pool, root)
    data = payload(100_000)
    key = make_key(data)
    node.store(key, io.BytesIO(data), len(data))
    sink = io.BytesIO()
    node.retrieve(key, sink)
    assert sink.getvalue() == data and node._exec_ok is None  # never probed


def _channel_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record every write of SFTP requests to the channel: each is a round trip when,
    as in a retrieve, the client waits for its replies before it sends more."""
    real = SFTPSession._write_all
    writes: list[int] = []

    def write_all(self: SFTPSession, out: bytes) -> None:
        writes.append(len(out))
        real(self, out)

    monkeypatch.setattr(SFTPSession, "_write_all", write_all)
    return writes


@pytest.mark.parametrize("offset", [0, 1000])
def test_a_small_object_is_read_in_two_round_trips(
    tmp_path: Path, pool: SSHPool, monkeypatch: pytest.MonkeyPatch, offset: int
) -> None:
    """Small gets are bound by round trips to the node: one finds and opens the object,
    one reads it and closes it (it took four: find, open, read, close)."""
    root = tmp_path / "n"
    root.mkdir()
    node = sftp_node(pool, root)
    data = payload(4096)
    key = make_key(data)
    node.store(key, io.BytesIO(data), len(data))
    writes = _channel_writes(monkeypatch)
    sink = io.BytesIO()
    node.retrieve(key, sink, offset)
    assert sink.getvalue() == data[offset:]
    assert len(writes) == 2


def test_a_directory_remotes_mixed_case_layout_is_read_and_checked(
    tmp_path: Path, pool: SSHPool
) -> None:
    """Where this remote does not store (git-annex's directory remote's mixed-case hash
    directories) a read still finds the object; one of the wrong size where this
    remote stores does not hide it, and alone it is a bad replica, not the key."""
    root = tmp_path / "n"
    root.mkdir()
    node = sftp_node(pool, root)
    data = payload(5000)
    key = make_key(data)
    mixed = root / key.hashdirmixed / key.file_name / key.file_name
    mixed.parent.mkdir(parents=True)
    mixed.write_bytes(data)
    sink = io.BytesIO()
    node.retrieve(key, sink, 10)
    assert sink.getvalue() == data[10:]
    lower = root / key.hashdirlower / key.file_name / key.file_name
    lower.parent.mkdir(parents=True)
    lower.write_bytes(data[:100])
    sink = io.BytesIO()
    node.retrieve(key, sink)
    assert sink.getvalue() == data
    mixed.unlink()
    sink = io.BytesIO()
    with pytest.raises(BadReplica):
        node.retrieve(key, sink)
    assert sink.getvalue() == b""


def _fsync_answers(monkeypatch: pytest.MonkeyPatch, status: int) -> list[int]:
    """Make every fsync@openssh.com request come back with SFTP status ``status``."""
    real = SFTPSession.batch
    seen: list[int] = []

    def batch(self: SFTPSession, requests: Sequence[tuple[int, tuple[Any, ...]]]) -> list[Any]:
        replies = real(self, requests)
        for i, (kind, args) in enumerate(requests):
            if kind == paramiko.sftp.CMD_EXTENDED and args[0] == "fsync@openssh.com":
                seen.append(status)
                err = OSError("Failure" if status == paramiko.sftp.SFTP_FAILURE else "Unsupported")
                err.sftp_status = status  # type: ignore[attr-defined]
                replies[i] = err
        return replies

    monkeypatch.setattr(SFTPSession, "batch", batch)
    return seen


@pytest.mark.parametrize("resumable", [False, True], ids=["store", "store_from"])
def test_a_failed_fsync_is_never_committed(
    tmp_path: Path, pool: SSHPool, monkeypatch: pytest.MonkeyPatch, resumable: bool
) -> None:
    """Quota and network filesystems report lost writes at fsync; such an object must
    not be renamed into place. A server without the extension is fine."""
    root = tmp_path / "node"
    root.mkdir()
    node = sftp_node(pool, root)
    node._exec_ok = False  # every byte through SFTP writes
    data = payload(200_000)
    key = make_key(data)

    def store() -> bool:
        if resumable:
            return node.store_from(key, io.BytesIO(data), len(data), 0, print)
        return node.store(key, io.BytesIO(data), len(data))

    seen = _fsync_answers(monkeypatch, paramiko.sftp.SFTP_FAILURE)
    with pytest.raises(NodeError, match="Failure"):
        store()
    assert seen and node.present(key) is None
    monkeypatch.undo()
    _fsync_answers(monkeypatch, paramiko.sftp.SFTP_OP_UNSUPPORTED)
    assert store() and node.present(key) == len(data)


def test_an_upload_removes_this_hosts_leftovers_of_the_key_only(
    tmp_path: Path, pool: SSHPool
) -> None:
    root = tmp_path / "node"
    root.mkdir()
    data = payload(50_000)
    key = make_key(data)
    stays = plant_leftovers(root / "tmp", key, make_key(b"another key"))
    node = sftp_node(pool, root)
    node._exec_ok = False
    assert node.store_from(key, io.BytesIO(data), len(data), 0, print)
    assert sorted(os.listdir(root / "tmp")) == stays
    assert node.present(key) == len(data)
