"""annex:/// and annex+ssh:// nodes against real git-annex-shell: PyPI's (P2P v4) and Debian's (v1).

The conformance suite runs on both transports and both git-annex versions, then
the cases only git-annex repositories have: UUID checks, read-only and
append-only servers, resumed uploads, the node's own location log.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import Client
from node_conformance import BreakingSource, NodeConformance, NodeFactory, fetch, make_key, payload
from sshd import SSHDFactory, ssh_config_for

import shared.p2p.io as p2p_io
from shared.cluster.fanout import SourceFailed
from shared.errors import ConfigError, IntegrityError, NodeError, PermissionDenied, Unavailable
from shared.nodes import open_node
from shared.nodes.annex import AnnexNode, parse_annex_url
from shared.nodes.base import Node
from shared.nodes.retry import RetryingNode
from shared.nodes.url import parse_node
from shared.transport.ssh import SSHPool

pytestmark = pytest.mark.timeout(180)

CLIENT_UUID = "5f0b2a1c-0000-4000-8000-00000000c1e7"


@pytest.fixture(params=["pypi", pytest.param("debian", marks=pytest.mark.oldannex)])
def server(request: pytest.FixtureRequest) -> Client:
    """The git-annex whose git-annex-shell serves the node."""
    return request.getfixturevalue(f"{request.param}_client")  # type: ignore[no-any-return]


def init_node_repo(path: Path, server: Client, bare: bool = True) -> str:
    """A node repository as an operator prepares one; returns its UUID."""
    subprocess.run(["git", "init", "-q", *(["--bare"] if bare else []), str(path)], check=True)
    env = server.env
    subprocess.run(["git", "annex", "init", "-q", "node"], cwd=path, env=env, check=True)
    out = subprocess.run(
        ["git", "config", "annex.uuid"], cwd=path, env=env, check=True, capture_output=True
    )
    return out.stdout.decode().strip()


def shell_of(server: Client, prefix: str = "") -> str:
    return quote(f"{prefix}{server.bindir / 'git-annex-shell'}", safe="/")


def objects(repo: Path) -> list[str]:
    """Object files in a (bare) repository's annex, by name."""
    return sorted(p.name for p in (repo / "annex" / "objects").rglob("*") if p.is_file())


class _AnnexConformance(NodeConformance):
    """git-annex keeps a failed upload's bytes in ``annex/tmp`` under the key's name, so
    the next PUT resumes from there (PUT-FROM); that is the point of the protocol's
    offsets, not a leftover. Anything else in annex/tmp, or an object that appears in
    annex/objects without a successful store, would be."""

    repo: Path
    verifies_content = True
    tells_sizes = False
    sees_bad_replicas = False

    def leftovers(self, node: Node) -> list[str]:
        tmp = self.repo / "annex" / "tmp"
        return sorted(
            str(p.relative_to(tmp))
            for p in (tmp.rglob("*") if tmp.exists() else [])
            if p.is_file() and not _is_key_name(p.name)
        )


def _is_key_name(name: str) -> bool:
    return "--" in name and not name.startswith(".")


class TestLocalAnnexConformance(_AnnexConformance):
    @pytest.fixture
    def make_node(self, tmp_path: Path, server: Client) -> NodeFactory:
        self.repo = tmp_path / "node.git"
        init_node_repo(self.repo, server)
        url = f"n=annex://{self.repo}?shell={shell_of(server)}"
        return lambda: AnnexNode(parse_node(url), CLIENT_UUID)

    @pytest.fixture
    def make_missing_node(self, tmp_path: Path, server: Client) -> NodeFactory:
        url = f"n=annex://{tmp_path / 'gone.git'}?shell={shell_of(server)}"
        return lambda: AnnexNode(parse_node(url), CLIENT_UUID)


@pytest.fixture
def pool(tmp_path: Path, sshd_factory: SSHDFactory, ssh_client_key: Path) -> Iterator[SSHPool]:
    home = tmp_path / "home"
    ssh_config_for(home, {"annexhost": sshd_factory("annexhost")}, ssh_client_key)
    p = SSHPool(
        config_file=str(home / ".ssh" / "config"), io_timeout=20, attempts=1, failure_memo=0.5
    )
    yield p
    p.close()


class TestSSHAnnexConformance(_AnnexConformance):
    @pytest.fixture
    def make_node(self, tmp_path: Path, server: Client, pool: SSHPool) -> NodeFactory:
        self.repo = tmp_path / "node.git"
        init_node_repo(self.repo, server)
        url = f"n=annex+ssh://annexhost{self.repo}?shell={shell_of(server)}"
        return lambda: AnnexNode(parse_node(url), CLIENT_UUID, pool=pool)

    @pytest.fixture
    def make_missing_node(self, tmp_path: Path, server: Client, pool: SSHPool) -> NodeFactory:
        url = f"n=annex+ssh://annexhost{tmp_path / 'gone.git'}?shell={shell_of(server)}"
        return lambda: AnnexNode(parse_node(url), CLIENT_UUID, pool=pool)


# -- URLs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "host", "path"),
    [
        ("annex:///srv/repo", None, "/srv/repo"),
        ("annex:///srv/repo/", None, "/srv/repo"),
        ("annex+ssh://host/srv/repo", "host", "/srv/repo"),
        ("annex+ssh://me@host:2222/~/repo", "me@host:2222", "/~/repo"),
        ("annex+ssh://host/srv/my%20repo", "host", "/srv/my repo"),
    ],
)
def test_urls(url: str, host: str | None, path: str) -> None:
    target, got = parse_annex_url(parse_node(f"n={url}"))
    assert (str(target) if target else None, got) == (host, path)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("annex://host/srv/repo", "absolute path"),
        ("annex+ssh:///srv/repo", "needs a host"),
        ("annex+ssh://host", "repository's path"),
        ("annex+ssh://host/~", "repository's path"),
        ("annex:///srv/repo?colour=blue", "unknown parameter"),
        ("annex:///srv/repo?shell=%27unclosed", "shell="),
    ],
)
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AnnexNode(parse_node(f"n={url}"))


# -- what only git-annex repositories do ----------------------------------------------


@pytest.fixture
def repo(tmp_path: Path, server: Client) -> Path:
    path = tmp_path / "node.git"
    init_node_repo(path, server)
    return path


def local_node(repo: Path, server: Client, extra: str = "", prefix: str = "") -> AnnexNode:
    return AnnexNode(
        parse_node(f"n=annex://{repo}?shell={shell_of(server, prefix)}{extra}"), CLIENT_UUID
    )


def test_negotiates_the_servers_version(repo: Path, server: Client) -> None:
    node = local_node(repo, server)
    node.check()
    assert node.version == (4 if server.name == "pypi" else 1)
    node.close()


def test_store_is_in_the_nodes_own_location_log(repo: Path, server: Client) -> None:
    node = local_node(repo, server)
    data = payload(70_000)
    key = make_key(data)
    node.store(key, io.BytesIO(data), len(data))
    node.close()  # git-annex-shell commits its journal when the session ends
    where = subprocess.run(
        ["git", "annex", "whereis", "--key", str(key)],
        cwd=repo,
        env=server.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "[here]" in where
    fsck = subprocess.run(
        ["git", "annex", "fsck", "--key", str(key)], cwd=repo, env=server.env, capture_output=True
    )
    assert fsck.returncode == 0, fsck.stderr
    node = local_node(repo, server)
    node.remove(key)
    node.close()
    assert objects(repo) == []


def test_uuid_is_discovered_once_and_then_checked(repo: Path, server: Client) -> None:
    node = local_node(repo, server)
    node.check()
    real = subprocess.run(
        ["git", "config", "annex.uuid"], cwd=repo, capture_output=True, text=True
    ).stdout.strip()
    assert node.uuid == real
    wrong = local_node(repo, server, "&uuid=0b9c8a7e-1111-4222-8333-444455556666")
    with pytest.raises(Unavailable, match="0b9c8a7e-1111-4222-8333-444455556666"):
        wrong.present(make_key(b"x"))


def test_a_replaced_repository_is_refused(tmp_path: Path, repo: Path, server: Client) -> None:
    """The UUID learnt first is kept: a different repository at the path is not used."""
    node = local_node(repo, server)
    node.check()
    node.close()
    subprocess.run(["rm", "-rf", str(repo)], check=True)
    init_node_repo(repo, server)
    with pytest.raises(Unavailable, match="expected repository UUID"):
        node.present(make_key(b"x"))


def test_not_a_git_annex_repository(tmp_path: Path, server: Client) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    node = local_node(plain, server)
    with pytest.raises(Unavailable, match="not a usable git-annex repository"):
        node.check()
    gitonly = tmp_path / "gitonly"
    subprocess.run(["git", "init", "-q", str(gitonly)], check=True)
    with pytest.raises(Unavailable, match="not a usable"):
        local_node(gitonly, server).check()


def test_missing_git_annex_shell_says_so(repo: Path) -> None:
    node = AnnexNode(parse_node(f"n=annex://{repo}?shell=/nonexistent/git-annex-shell"))
    with pytest.raises(Unavailable, match="git-annex"):
        node.check()


def test_readonly_repository_refuses_writes_clearly(repo: Path, server: Client) -> None:
    data = payload(1000)
    key = make_key(data)
    local_node(repo, server).store(key, io.BytesIO(data), len(data))
    ro = local_node(repo, server, prefix="env GIT_ANNEX_SHELL_READONLY=1 ")
    other = make_key(b"new")
    with pytest.raises(PermissionDenied, match="read-only; write access denied"):
        ro.store(other, io.BytesIO(b"new"), 3)
    with pytest.raises(PermissionDenied, match="read-only"):
        ro.remove(key)
    assert ro.present(key) == len(data)  # reads still work, on the same session
    assert fetch(ro, key) == data
    ro.close()


def test_appendonly_repository_refuses_removal(repo: Path, server: Client) -> None:
    ao = local_node(repo, server, prefix="env GIT_ANNEX_SHELL_APPENDONLY=1 ")
    data = payload(1000)
    key = make_key(data)
    ao.store(key, io.BytesIO(data), len(data))
    with pytest.raises(PermissionDenied, match="append-only; removal denied"):
        ao.remove(key)
    assert ao.present(key) == len(data)
    ao.close()


def test_interrupted_upload_resumes_from_the_nodes_offset(
    repo: Path, server: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = payload(3 * 1024 * 1024)
    key = make_key(data)
    node = local_node(repo, server)
    with pytest.raises((SourceFailed, NodeError)):
        node.store(key, BreakingSource(data, 2 * 1024 * 1024), len(data))
    skipped: list[int] = []
    real_skip = p2p_io._skip
    monkeypatch.setattr(p2p_io, "_skip", lambda src, n: (skipped.append(n), real_skip(src, n)))
    assert node.store(key, io.BytesIO(data), len(data)) is True
    assert skipped and skipped[0] > 0, "the second PUT started over"
    assert fetch(node, key) == data
    node.close()


def test_one_session_serves_many_requests(
    repo: Path, server: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shared.nodes.annex as annex_module

    started: list[object] = []
    real = annex_module._ProcessStream.__init__

    def counting(self: annex_module._ProcessStream, argv: list[str]) -> None:
        started.append(argv)
        real(self, argv)

    monkeypatch.setattr(annex_module._ProcessStream, "__init__", counting)
    node = local_node(repo, server)
    for i in range(20):
        data = payload(100, seed=i)
        key = make_key(data)
        node.store(key, io.BytesIO(data), len(data))
        assert node.present(key) == 100
        assert fetch(node, key) == data
    assert len(started) == 1
    node.close()


def test_a_killed_shell_is_restarted_by_the_retry_wrapper(repo: Path, server: Client) -> None:
    inner = local_node(repo, server)
    node = RetryingNode(inner, initial_wait=0.01)
    data = payload(1000)
    key = make_key(data)
    node.store(key, io.BytesIO(data), len(data))
    stream = inner._stream
    assert stream is not None and hasattr(stream, "proc")
    os.killpg(stream.proc.pid, signal.SIGKILL)
    assert node.present(key) == 1000
    assert fetch(node, key) == data
    node.close()


def test_open_node_builds_retrying_annex_nodes(repo: Path) -> None:
    node = open_node(parse_node(f"n=annex://{repo}"), CLIENT_UUID)
    assert isinstance(node, RetryingNode) and isinstance(node.inner, AnnexNode)
    assert node.is_local and node.cost == 100
    ssh = open_node(parse_node("n=annex+ssh://host/srv/r"))
    assert not ssh.is_local and ssh.cost == 200


def test_ssh_node_down_is_unavailable_and_recovers(
    tmp_path: Path, server: Client, pool: SSHPool, sshd_factory: SSHDFactory
) -> None:
    repo = tmp_path / "node.git"
    init_node_repo(repo, server)
    node = AnnexNode(
        parse_node(f"n=annex+ssh://annexhost{repo}?shell={shell_of(server)}"),
        CLIENT_UUID,
        pool=pool,
    )
    data = payload(10_000)
    key = make_key(data)
    node.store(key, io.BytesIO(data), len(data))
    host = sshd_factory("annexhost")
    host.stop()
    try:
        with pytest.raises(Unavailable):
            node.present(key)
    finally:
        host.start()
    import time

    time.sleep(0.6)  # the pool's failure memo
    assert node.present(key) == 10_000
    node.close()


def test_local_node_ignores_the_callers_repository_environment(
    tmp_path: Path, repo: Path, server: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """git-annex runs us with GIT_DIR and friends pointing at the client repository."""
    client_repo = tmp_path / "client"
    subprocess.run(["git", "init", "-q", str(client_repo)], check=True)
    monkeypatch.setenv("GIT_DIR", str(client_repo / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(client_repo))
    node = local_node(repo, server)
    data = payload(500)
    key = make_key(data)
    node.store(key, io.BytesIO(data), len(data))
    assert objects(repo) == [key.file_name]
    node.close()


class _ChangedWhileSent:
    """A peer that sends some bytes, then INVALID (the object changed or was dropped
    while it was read), then no longer has the key: git-annex-shell's answers when a
    drop races a download. Timing that with a real repository is not reliable."""

    usable = True

    def get(self, key: object, sink: io.BytesIO, offset: int = 0, **_: object) -> tuple[int, bool]:
        sink.write(bytes(40_000))
        return 40_000, False

    def checkpresent(self, key: object) -> bool:
        return False

    def settimeout(self, timeout: float) -> None:  # and its own stream
        pass

    def stderr_text(self) -> str:
        return ""

    def close(self) -> None:
        pass


def test_invalid_after_bytes_is_wrong_content_not_absence(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Absence would let the next node continue after the bytes already written."""
    node = AnnexNode(parse_node(f"r=annex://{repo}"))
    peer = _ChangedWhileSent()

    def session() -> _ChangedWhileSent:
        node._stream = peer  # type: ignore[assignment]
        return peer

    monkeypatch.setattr(node, "_session", session)
    data = payload(100_000)
    with pytest.raises(IntegrityError):
        node.retrieve(make_key(data), io.BytesIO())
