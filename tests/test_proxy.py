"""The gateway (``git-annex-remote-proxy serve``) and the proxy remote, end to end.

The gateway runs as a real process, reached by our P2P client over its pipes,
by git-annex through the proxy remote over a real sshd, by a stock git-annex
as an ordinary ssh remote (``annex-shell``), and the proxy remote also talks to
a native git-annex cluster gateway.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import VENV_BIN, Client, Repo, make_repo
from sshd import SSHDFactory, ssh_config_for
from test_e2e_file_cluster import summary_of_testremote
from test_e2e_sftp_cluster import add_file

from git_annex_remote_proxy.config import GatewayConfig
from shared.annex.keys import Key
from shared.errors import ConfigError
from shared.p2p.io import APPENDONLY_ERROR, READONLY_ERROR, PeerRefused
from shared.p2p.io import Client as P2PClient

pytestmark = pytest.mark.timeout(900)
PROXY = str(VENV_BIN / "git-annex-remote-proxy")


def proxy_cli(
    *args: str, config: Path, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``gateway ARGS`` as the gateway's operator runs it (``env``: added to ours)."""
    return subprocess.run(
        [PROXY, "gateway", "--config", str(config), *args],
        capture_output=True,
        text=True,
        check=check,
        env={**os.environ, **env} if env else None,
    )


def key_for(data: bytes) -> Key:
    return Key("SHA256E", hashlib.sha256(data).hexdigest() + ".bin", size=len(data))


def objects(d: Path) -> list[Path]:
    """The objects in a node directory: not its tmp/, not its owner marker (at the root)."""
    return [
        p
        for p in d.rglob("*")
        if p.is_file() and p.parent != d and "tmp" not in p.relative_to(d).parts
    ]


def leftovers(d: Path) -> list[Path]:
    return [p for p in (d / "tmp").rglob("*") if p.is_file()] if (d / "tmp").exists() else []


# -- the configuration and its commands ------------------------------------------------


def test_gateway_commands_manage_targets(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    for d in ("a", "b", "s"):
        (tmp_path / d).mkdir()
    out = proxy_cli("add", "archive", f"a=file://{tmp_path}/a", f"b=file://{tmp_path}/b",
                    "--copies", "1", config=config).stdout  # fmt: skip
    assert "target archive (" in out
    first = GatewayConfig.load(config).target("archive")
    # Changing the nodes keeps the UUID clients know the target by.
    proxy_cli("add", "archive", f"a=file://{tmp_path}/a", config=config)
    assert GatewayConfig.load(config).target("archive").uuid == first.uuid
    proxy_cli("add", "scratch", f"s=file://{tmp_path}/s", config=config)
    listed = json.loads(proxy_cli("list", "--json", config=config).stdout)
    assert [t["name"] for t in listed["targets"]] == ["archive", "scratch"]
    assert "scratch" in proxy_cli("list", config=config).stdout
    proxy_cli("remove", "scratch", config=config)
    assert list(GatewayConfig.load(config).targets) == ["archive"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add", "bad name", "a=file:///x"], "target name"),
        (["add", "t", "a=nope://x"], "unknown URL scheme"),
        (["add", "t", "a=file:///x", "--copies", "2"], "copies=2 must be 1 to 1"),
        (["remove", "missing"], "unknown target 'missing'"),
    ],
)
def test_gateway_commands_refuse_bad_input_in_one_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    config = tmp_path / "gw.toml"
    proxy_cli("add", "keep", f"k=file://{tmp_path}", config=config)
    before = config.read_text()
    proc = proxy_cli(*args, config=config, check=False)
    assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert config.read_text() == before  # nothing written


def test_config_file_errors_say_where(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text('[targets.t]\nuuid = "x"\nnodes = ["a=file:///a"]\n')
    with pytest.raises(ConfigError, match=r"gw.toml: target t: uuid 'x' is not a UUID"):
        GatewayConfig.load(config)
    with pytest.raises(ConfigError, match="no gateway configuration at"):
        GatewayConfig.load(tmp_path / "missing.toml")


# -- the server, driven by our P2P client over its pipes ------------------------------


class Pipes:
    """A serve process as a Stream."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )

    def recv(self, n: int, /) -> bytes:
        assert self.proc.stdout is not None
        return self.proc.stdout.read1(n)

    def sendall(self, data: bytes, /) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


@pytest.fixture
def gateway(tmp_path: Path) -> tuple[Path, list[Path]]:
    config = tmp_path / "gw.toml"
    nodes = [tmp_path / "n1", tmp_path / "n2"]
    for n in nodes:
        n.mkdir()
    proxy_cli("add", "archive", *(f"{n.name}=file://{n}" for n in nodes), config=config)
    (tmp_path / "o").mkdir()
    proxy_cli("add", "other", f"o=file://{tmp_path / 'o'}", config=config)
    return config, nodes


def session(config: Path, *request: str, env: dict[str, str] | None = None) -> P2PClient:
    stream = Pipes([PROXY, "serve", "--config", str(config), *request], env)
    client = P2PClient(stream)
    client.handshake()
    return client


def test_serve_streams_verified_uploads_to_every_node(gateway: tuple[Path, list[Path]]) -> None:
    config, nodes = gateway
    uuid = GatewayConfig.load(config).target("archive").uuid
    client = session(config, "archive")
    assert client.uuid == uuid and client.version == 4
    data = os.urandom(3 * 1024 * 1024 + 17)
    key = key_for(data)
    assert client.checkpresent(key) is False
    assert client.put(key, io.BytesIO(data), len(data)).stored
    assert all(p.read_bytes() == data for n in nodes for p in objects(n))
    assert all(len(objects(n)) == 1 for n in nodes)
    assert client.checkpresent(key) is True
    assert client.put(key, io.BytesIO(data), len(data)).stored is False  # ALREADY-HAVE
    sink = io.BytesIO()
    got, valid = client.get(key, sink, 1000)
    assert valid and sink.getvalue() == data[1000:] and got == len(data) - 1000
    assert client.remove(key) == (True, ())
    assert not any(objects(n) for n in nodes)
    client.close()


def test_a_corrupted_upload_is_refused_and_leaves_nothing(
    gateway: tuple[Path, list[Path]],
) -> None:
    config, nodes = gateway
    client = session(config, "archive")
    data = os.urandom(2 * 1024 * 1024)
    key = key_for(data)
    bad = bytearray(data)
    bad[-1] ^= 1  # the very last byte: the nodes have everything else by then
    with pytest.raises(PeerRefused):
        client.put(key, io.BytesIO(bytes(bad)), len(bad))
    assert not any(objects(n) or leftovers(n) for n in nodes)
    assert client.checkpresent(key) is False  # and the session goes on
    client.close()


def test_data_of_the_wrong_length_is_refused_before_it_is_stored(
    gateway: tuple[Path, list[Path]],
) -> None:
    """A DATA longer than the key's size would fill the nodes' disks before the final
    check: it is refused from its length alone (and drained)."""
    config, nodes = gateway
    client = session(config, "archive")
    data = os.urandom(1000)
    key = key_for(data)  # -s1000
    longer = data + os.urandom(2 * 1024 * 1024)
    with pytest.raises(PeerRefused):
        client.put(key, io.BytesIO(longer), len(longer))
    assert not any(objects(n) or leftovers(n) for n in nodes)
    assert client.put(key, io.BytesIO(data), len(data)).stored  # the session goes on
    client.close()


class CutOff:
    """The client's data, failing (as its connection would) after ``limit`` bytes."""

    def __init__(self, data: bytes, limit: int) -> None:
        self.data, self.limit, self.pos = data, limit, 0

    def read(self, n: int = -1, /) -> bytes:
        if self.pos >= self.limit:
            raise ConnectionError("the client's connection dropped")
        n = min(n if n >= 0 else len(self.data), self.limit - self.pos)
        block = self.data[self.pos : self.pos + n]
        self.pos += len(block)
        return block


def interrupted_upload(config: Path, key: Key, data: bytes, limit: int) -> None:
    """PUT, send ``limit`` bytes of the DATA, and go away."""
    stream = Pipes([PROXY, "serve", "--config", str(config), "archive"])
    client = P2PClient(stream)
    client.handshake()
    with pytest.raises(ConnectionError):
        client.put(key, CutOff(data, limit), len(data))
    stream.close()  # EOF mid-DATA: the gateway sees the connection end


def test_an_interrupted_upload_continues_where_it_stopped(
    gateway: tuple[Path, list[Path]],
) -> None:
    """PUT-FROM with the offset the nodes kept, and the kept bytes checked with the rest."""
    config, nodes = gateway
    data = os.urandom(6 * 1024 * 1024 + 5)
    key = key_for(data)
    interrupted_upload(config, key, data, 4 * 1024 * 1024)
    kept = [p.stat().st_size for n in nodes for p in leftovers(n)]
    assert len(kept) == 2 and all(0 < k <= 4 * 1024 * 1024 for k in kept), kept
    assert not any(objects(n) for n in nodes)
    client = session(config, "archive")
    reported: list[int] = []
    assert client.put(key, io.BytesIO(data), len(data), progress=reported.append).stored
    assert reported[0] == min(kept)  # the first progress report is the offset it resumed at
    assert all(p.read_bytes() == data for n in nodes for p in objects(n))
    assert not any(leftovers(n) for n in nodes)
    client.close()


def test_kept_bytes_that_do_not_match_are_never_committed(
    gateway: tuple[Path, list[Path]],
) -> None:
    """Kept bytes come from anyone's upload: a node whose kept bytes are wrong refuses
    the whole (its temp is dropped); the other node commits. The key is then short of
    copies=2, which the gateway's repair command puts right."""
    config, nodes = gateway
    data = os.urandom(3 * 1024 * 1024)
    key = key_for(data)
    interrupted_upload(config, key, data, 2 * 1024 * 1024)
    (bad,) = leftovers(nodes[0])
    raw = bytearray(bad.read_bytes())
    raw[10] ^= 1
    bad.write_bytes(bytes(raw))
    client = session(config, "archive")
    with pytest.raises(PeerRefused):  # copies=2: one node is not enough
        client.put(key, io.BytesIO(data), len(data))
    assert not objects(nodes[0]) and not leftovers(nodes[0])
    assert [p.read_bytes() for p in objects(nodes[1])] == [data]
    client.close()
    proxy_cli("repair", "archive", config=config)
    assert [p.read_bytes() for p in objects(nodes[0])] == [data]


def test_lockcontent_keeps_other_sessions_from_removing(
    gateway: tuple[Path, list[Path]],
) -> None:
    """A client's drop proof: while one session holds LOCKCONTENT, no session of this
    gateway removes the key; a lost connection (the process ends) releases it."""
    config, nodes = gateway
    data = b"locked content"
    key = key_for(data)
    holder = session(config, "archive")
    assert holder.lockcontent(key) is False  # not there: nothing to lock
    assert holder.put(key, io.BytesIO(data), len(data)).stored
    assert holder.lockcontent(key) is True
    other = session(config, "archive")
    assert other.lockcontent(key) is True  # shared: another drop proof may lock it too
    other.unlockcontent()
    assert other.remove(key)[0] is False
    assert all(objects(n) for n in nodes)
    holder.unlockcontent()
    holder.close()
    assert other.remove(key)[0] is True
    assert not any(objects(n) for n in nodes)
    assert other.put(key, io.BytesIO(data), len(data)).stored
    gone = session(config, "archive")
    assert gone.lockcontent(key) is True
    gone.stream.proc.kill()  # type: ignore[attr-defined]
    gone.stream.proc.wait()  # type: ignore[attr-defined]
    assert other.remove(key)[0] is True
    other.close()


def test_lockcontent_holds_for_every_target_sharing_the_node(
    gateway: tuple[Path, list[Path]],
) -> None:
    """Locks belong to the storage: a target that took a locked one's node over
    (sharing it needs --force: one owner per node) cannot remove the key from it
    either."""
    config, nodes = gateway
    data = b"locked through another target"
    key = key_for(data)
    holder = session(config, "archive")
    assert holder.put(key, io.BytesIO(data), len(data)).stored
    proxy_cli("add", "solo", f"n1=file://{nodes[0]}", "--force", config=config)
    assert holder.lockcontent(key) is True
    solo = session(config, "solo")
    assert solo.remove(key)[0] is False
    assert all(objects(n) for n in nodes)
    holder.unlockcontent()
    assert holder.checkpresent(key)  # a round trip: the unlock has been served
    assert solo.remove(key)[0] is True
    assert not objects(nodes[0]) and objects(nodes[1])
    holder.close()
    solo.close()


def stalled_upload(
    config: Path, target: str, key: Key, data: bytes, limit: int, env: dict[str, str] | None
) -> Pipes:
    """A session that PUTs ``key`` and sends its bytes up to ``limit``, then stalls with
    its connection open: its upload holds its claims on the nodes until it is closed."""
    stream = Pipes([PROXY, "serve", "--config", str(config), target], env)
    client = P2PClient(stream)
    client.handshake()
    with pytest.raises(ConnectionError):
        client.put(key, CutOff(data, limit), len(data))
    return stream


def tmp_entries(d: Path) -> list[str]:
    return sorted(os.listdir(d / "tmp")) if (d / "tmp").exists() else []


def wait_for(what: str, ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not ready():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_interrupted_uploads_leave_no_pile_of_temps(
    tmp_path: Path, sshd_factory: SSHDFactory, ssh_client_key: Path
) -> None:
    """Uploads of one key cut off, two sessions at a time (each writes under a claim
    of its own), to a file:// and an sftp:// node: each node keeps one temp for the
    key, not one per upload, and the upload that completes leaves tmp/ empty."""
    config, home = tmp_path / "gw.toml", tmp_path / "gw-home"
    dirs = [tmp_path / "n1", tmp_path / "n2"]
    for d in dirs:
        d.mkdir()
    ssh_config_for(home, {"h2": sshd_factory("h2")}, ssh_client_key)
    env = {"HOME": str(home)}
    proxy_cli(
        "add", "pair", f"n1=file://{dirs[0]}", f"n2=sftp://h2{dirs[1]}", config=config, env=env
    )  # fmt: skip
    data = os.urandom(2 * 1024 * 1024)
    key = key_for(data)

    def claims() -> list[int]:
        return [sum(".cluster-" in e for e in tmp_entries(d)) for d in dirs]

    for i in range(3):
        first = stalled_upload(config, "pair", key, data, 1_000_000 + 50_000 * i, env)
        wait_for("the first upload did not start", lambda: claims() == [1, 1])
        second = stalled_upload(config, "pair", key, data, 500_000 + 40_000 * i, env)
        wait_for("the second upload did not start", lambda: claims() == [2, 2])
        first.close()
        second.close()
        assert [len(tmp_entries(d)) for d in dirs] == [1, 1], [tmp_entries(d) for d in dirs]
    client = session(config, "pair", env=env)
    assert client.put(key, io.BytesIO(data), len(data)).stored
    client.close()
    assert [tmp_entries(d) for d in dirs] == [[], []]
    assert [p.read_bytes() for d in dirs for p in objects(d)] == [data, data]


def lock_files(config: Path) -> list[Path]:
    return sorted(p for p in (config.parent / "locks").rglob("*") if p.is_file())


def test_content_locks_leave_no_files_behind(gateway: tuple[Path, list[Path]]) -> None:
    """A lock file goes when its last holder lets go: LOCKCONTENT and UNLOCKCONTENT,
    a lock of an absent key, REMOVE refused and done; the locks of a session killed
    while it held them go with the next session."""
    config, nodes = gateway
    data = b"locked, then not"
    key = key_for(data)
    holder, other = session(config, "archive"), session(config, "archive")
    assert holder.put(key, io.BytesIO(data), len(data)).stored
    assert holder.lockcontent(key_for(b"absent")) is False
    assert lock_files(config) == []
    assert holder.lockcontent(key) is True
    assert other.lockcontent(key) is True
    other.unlockcontent()
    assert other.remove(key)[0] is False
    assert len(lock_files(config)) == 2  # the holder's, one per node
    holder.unlockcontent()
    assert holder.checkpresent(key)  # a round trip: the unlock has been served
    assert lock_files(config) == []
    assert other.remove(key)[0] is True
    assert lock_files(config) == []
    assert other.put(key, io.BytesIO(data), len(data)).stored
    killed = session(config, "archive")
    assert killed.lockcontent(key) is True
    killed.stream.proc.kill()  # type: ignore[attr-defined]
    killed.stream.proc.wait()  # type: ignore[attr-defined]
    assert len(lock_files(config)) == 2
    session(config, "archive").close()
    assert lock_files(config) == []
    assert other.remove(key)[0] is True and not any(objects(n) for n in nodes)
    holder.close()
    other.close()


def test_get_of_an_absent_key_is_invalid(gateway: tuple[Path, list[Path]]) -> None:
    config, _ = gateway
    client = session(config, "archive")
    assert client.get(key_for(b"nothing"), io.BytesIO()) == (0, False)
    client.close()


@pytest.mark.parametrize(
    ("how", "env"),
    [
        (["--readonly"], {}),
        ([], {"GIT_ANNEX_SHELL_READONLY": "1"}),
        (["--appendonly"], {}),
        ([], {"GIT_ANNEX_SHELL_APPENDONLY": "1"}),
    ],
)
def test_read_only_and_append_only_use_git_annex_texts(
    gateway: tuple[Path, list[Path]], how: list[str], env: dict[str, str]
) -> None:
    config, _ = gateway
    data = b"stored before"
    key = key_for(data)
    writer = session(config, "archive")
    writer.put(key, io.BytesIO(data), len(data))
    writer.close()
    stream = Pipes([PROXY, "serve", "--config", str(config), *how, "archive"], env)
    client = P2PClient(stream)
    client.handshake()
    readonly = "--readonly" in how or "GIT_ANNEX_SHELL_READONLY" in env
    new = b"new content"
    if readonly:
        with pytest.raises(PeerRefused, match=READONLY_ERROR):
            client.put(key_for(new), io.BytesIO(new), len(new))
    else:
        assert client.put(key_for(new), io.BytesIO(new), len(new)).stored
    with pytest.raises(PeerRefused, match=READONLY_ERROR if readonly else APPENDONLY_ERROR):
        client.remove(key)
    assert client.checkpresent(key) is True
    client.close()


def test_allow_limits_the_targets(gateway: tuple[Path, list[Path]]) -> None:
    config, _ = gateway
    proc = subprocess.run(
        [PROXY, "serve", "--config", str(config), "--allow", "other", "--", "archive"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 1 and "not allowed" in proc.stderr and proc.stdout == ""
    session(config, "--allow", "other", "--", "other").close()


def test_unknown_target_is_one_clear_line(gateway: tuple[Path, list[Path]]) -> None:
    config, _ = gateway
    proc = subprocess.run(
        [PROXY, "serve", "--config", str(config), "nope"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip() == (
        "git-annex-remote-proxy: unknown target 'nope' (targets here: archive, other)"
    )


def test_git_annex_shell_forms(gateway: tuple[Path, list[Path]]) -> None:
    config, _ = gateway
    uuid = GatewayConfig.load(config).target("archive").uuid
    out = subprocess.run(
        [PROXY, "serve", "--config", str(config), "configlist", "/srv/git/archive.git",
         "--debug", "--", "autoinit=1", "--"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert f"annex.uuid={uuid}" in out.splitlines()
    client = session(config, "p2pstdio", "/~/archive", "0" * 8 + "-1111-2222-3333-" + "4" * 12,
                     "--uuid", uuid)  # fmt: skip
    assert client.uuid == uuid
    client.close()
    other = GatewayConfig.load(config).target("other").uuid
    by_uuid = session(config, "p2pstdio", "/~/archive", "x", "--uuid", other)
    assert by_uuid.uuid == other
    by_uuid.close()
    bogus = "0b9c8a7e-1111-4222-8333-444455556666"
    proc = subprocess.run(
        [PROXY, "serve", "--config", str(config), "p2pstdio", "/~/archive", "x", "--uuid", bogus],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 1 and f"expected repository UUID {bogus}" in proc.stderr


def test_forced_command_reads_ssh_original_command(gateway: tuple[Path, list[Path]]) -> None:
    config, _ = gateway
    uuid = GatewayConfig.load(config).target("archive").uuid
    client = session(
        config,
        env={"SSH_ORIGINAL_COMMAND": "git-annex-remote-proxy serve archive"},
    )
    assert client.uuid == uuid
    client.close()


def test_forced_command_without_a_target_is_one_clear_line(
    gateway: tuple[Path, list[Path]],
) -> None:
    config, _ = gateway
    proc = subprocess.run(
        [PROXY, "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "SSH_ORIGINAL_COMMAND": "git-annex-remote-proxy serve --readonly"},
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("git-annex-remote-proxy: nothing to serve: give a target")
    assert len(proc.stderr.strip().splitlines()) == 1


# -- through git-annex ---------------------------------------------------------------


@pytest.fixture
def gw_host(tmp_path: Path, client: Client, sshd_factory: SSHDFactory, ssh_client_key: Path) -> str:
    """One sshd host, gw; the gateway process gets its own HOME (for its own ssh config)."""
    hosts = {"gw": sshd_factory("gw")}
    ssh_config_for(Path(client.env["HOME"]), hosts, ssh_client_key)
    return "gw"


def gateway_command(config: Path, home: Path | None = None) -> str:
    env = f"env HOME={home} " if home else ""
    return f"{env}{PROXY} serve --config {config}"


def init_proxy(
    repo: Repo, config: Path, target: str, home: Path | None = None, extra: tuple[str, ...] = ()
) -> None:
    repo.annex(
        "initremote", "gw", "type=external", "externaltype=proxy", "encryption=none",
        "gateway=ssh://gw", f"target={target}",
        f"gatewaycommand={gateway_command(config, home)}", *extra,
    )  # fmt: skip


def test_testremote_through_the_proxy_to_a_file_target(
    tmp_path: Path, repo: Repo, gw_host: str
) -> None:
    config = tmp_path / "gw.toml"
    (tmp_path / "disk").mkdir()
    proxy_cli("add", "disk", f"d=file://{tmp_path / 'disk'}", config=config)
    init_proxy(repo, config, "disk")
    proc = repo.annex("testremote", "gw", "--fast", check=False, timeout=900)
    passed, total = summary_of_testremote(proc.stdout + proc.stderr)
    assert proc.returncode == 0 and passed == total, proc.stdout[-4000:] + proc.stderr[-4000:]


def test_testremote_through_the_proxy_to_a_cluster_of_sftp_nodes(
    tmp_path: Path,
    repo: Repo,
    gw_host: str,
    sshd_factory: SSHDFactory,
    ssh_client_key: Path,
) -> None:
    """The gateway alone holds the nodes' ssh keys and config (its own HOME)."""
    gw_home = tmp_path / "gw-home"
    hosts = {name: sshd_factory(name) for name in ("h1", "h2", "h3")}
    ssh_config_for(gw_home, hosts, ssh_client_key)
    dirs = [tmp_path / f"n{i}" for i in (1, 2, 3)]
    for d in dirs:
        d.mkdir()
    config = tmp_path / "gw.toml"
    nodes = [f"n{i}=sftp://h{i}{d}" for i, d in enumerate(dirs, 1)]
    proxy_cli("add", "pool", *nodes, "--copies", "2", config=config, env={"HOME": str(gw_home)})
    init_proxy(repo, config, "pool", gw_home)
    proc = repo.annex("testremote", "gw", "--fast", check=False, timeout=900)
    passed, total = summary_of_testremote(proc.stdout + proc.stderr)
    assert proc.returncode == 0 and passed == total, proc.stdout[-4000:] + proc.stderr[-4000:]
    key = add_file(repo, "p.bin", 1_000_000)
    repo.annex("copy", "--to", "gw", "p.bin")
    assert sum(1 for d in dirs for p in objects(d) if p.name == key) == 2
    repo.annex("drop", "p.bin")
    repo.annex("get", "p.bin")


def test_copy_get_drop_and_errors_through_the_proxy(
    tmp_path: Path, repo: Repo, gw_host: str
) -> None:
    config = tmp_path / "gw.toml"
    disk = tmp_path / "disk"
    disk.mkdir()
    proxy_cli("add", "disk", f"d=file://{disk}", config=config)
    init_proxy(repo, config, "disk")
    key = add_file(repo, "a.bin", 2_000_000)
    repo.annex("copy", "--to", "gw", "a.bin")
    assert [p.name for p in objects(disk)] == [key]
    repo.annex("drop", "a.bin")
    repo.annex("get", "a.bin")
    repo.annex("drop", "--from", "gw", "a.bin")
    assert objects(disk) == []
    # The gateway refuses an unknown target, and says so in one line.
    proxy_cli("remove", "disk", config=config)
    proc = repo.annex("copy", "--fast", "--to", "gw", "a.bin", check=False)
    assert proc.returncode != 0 and "unknown target 'disk'" in proc.stdout + proc.stderr


def test_stock_git_annex_uses_the_gateway_as_an_ssh_remote(
    tmp_path: Path, pypi_client: Client, sshd_factory: SSHDFactory, ssh_client_key: Path
) -> None:
    """remote.NAME.annex-shell points at our command; nothing of ours on the client."""
    hosts = {"gw": sshd_factory("gw")}
    ssh_config_for(Path(pypi_client.env["HOME"]), hosts, ssh_client_key)
    config = tmp_path / "gw.toml"
    disk = tmp_path / "disk"
    disk.mkdir()
    proxy_cli("add", "archive", f"d=file://{disk}", config=config)
    bare = tmp_path / "srv" / "archive.git"  # git itself needs a repository at the path
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    repo = make_repo(tmp_path / "stock", pypi_client)
    repo.run("git", "remote", "add", "archive", f"gw:{bare}")
    repo.run("git", "config", "remote.archive.annex-shell", gateway_command(config))
    # OpenSSH reads the passwd entry's home, not $HOME: point it at the test's config.
    ssh_config = Path(pypi_client.env["HOME"]) / ".ssh" / "config"
    repo.run("git", "config", "remote.archive.annex-ssh-options", f"-F {ssh_config}")
    key = add_file(repo, "s.bin", 1_500_000)
    repo.annex("copy", "--to", "archive", "s.bin")
    assert [p.name for p in objects(disk)] == [key]
    assert "archive" in repo.annex("whereis", "s.bin").stdout
    repo.annex("drop", "s.bin")
    repo.annex("get", "s.bin")
    repo.annex("fsck", "s.bin")
    repo.annex("drop", "--from", "archive", "s.bin")
    assert objects(disk) == []


def native_cluster(root: Path, env: dict[str, str], count: int) -> tuple[Path, list[Path], str]:
    """A native git-annex cluster (``initcluster``): gateway repository ``root/gateway.git``
    and ``count`` node repositories; returns them and the cluster's UUID."""

    def git(cwd: Path | None, *args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
        ).stdout

    gw = root / "gateway.git"
    git(None, "init", "-q", "--bare", str(gw))
    git(gw, "annex", "init", "-q", "gateway")
    nodes = [root / f"node{i}.git" for i in range(1, count + 1)]
    for i, node in enumerate(nodes, 1):
        git(None, "clone", "-q", "--bare", str(gw), str(node))
        git(node, "annex", "init", "-q", f"node{i}")
    git(gw, "annex", "initcluster", "mycluster")
    for i, node in enumerate(nodes, 1):
        git(gw, "remote", "add", f"node{i}", str(node))
        git(gw, "config", f"remote.node{i}.annex-cluster-node", "mycluster")
    git(gw, "fetch", "-q", "--all")
    git(gw, "annex", "updatecluster")
    return gw, nodes, git(gw, "config", "annex.cluster.mycluster").strip()


def test_proxy_to_a_native_git_annex_cluster(
    tmp_path: Path,
    repo: Repo,
    pypi_client: Client,
    sshd_factory: SSHDFactory,
    ssh_client_key: Path,
) -> None:
    """gateway=annex+ssh://... target=<cluster UUID>: git-annex-shell p2pstdio --uuid."""
    # A host whose PATH finds the PyPI git-annex (clusters need 10.20240701 or later).
    hosts = {"ngw": sshd_factory("ngw", path=[str(pypi_client.bindir), "/usr/bin", "/bin"])}
    ssh_config_for(Path(repo.client.env["HOME"]), hosts, ssh_client_key)
    env = pypi_client.env

    gw, nodes, cluster_uuid = native_cluster(tmp_path, env, 3)
    repo.annex(
        "initremote", "nc", "type=external", "externaltype=proxy", "encryption=none",
        f"gateway=annex+ssh://ngw{gw}", f"target={cluster_uuid}",
    )  # fmt: skip
    proc = repo.annex("testremote", "nc", "--fast", check=False, timeout=900)
    passed, total = summary_of_testremote(proc.stdout + proc.stderr)
    assert proc.returncode == 0 and passed == total, proc.stdout[-4000:] + proc.stderr[-4000:]
    key = add_file(repo, "c.bin", 500_000)
    repo.annex("copy", "--to", "nc", "c.bin")
    held = [n.name for n in nodes if any(p.name == key for p in (n / "annex").rglob("*"))]
    assert held == ["node1.git", "node2.git", "node3.git"]


def test_nested_gateways_listing_each_other_do_not_loop(
    tmp_path: Path, repo: Repo, sshd_factory: SSHDFactory, ssh_client_key: Path
) -> None:
    """Gateway A's target holds a disk and gateway B's target; B's holds a disk and A's.
    BYPASS ends the cycle: through either gateway, each disk gets the object once."""
    hosts = {name: sshd_factory(name) for name in ("gwa", "gwb")}
    ssh_config_for(Path(repo.client.env["HOME"]), hosts, ssh_client_key)
    disks = {n: tmp_path / f"disk-{n}" for n in ("a", "b")}
    commands = {}
    for n in ("a", "b"):
        disks[n].mkdir()
        home = tmp_path / f"home-{n}"
        ssh_config_for(home, hosts, ssh_client_key)  # each gateway reaches the other
        commands[n] = gateway_command(tmp_path / f"gw-{n}.toml", home)
    for me in ("a", "b"):  # each target first, so that the other's node can reach it
        proxy_cli("add", f"t{me}", f"disk=file://{disks[me]}", config=tmp_path / f"gw-{me}.toml")
    for me, other in (("a", "b"), ("b", "a")):
        nested = f"gateway+ssh://gw{other}/t{other}?command={quote(commands[other], safe='')}"
        config = tmp_path / f"gw-{me}.toml"
        proxy_cli("add", f"t{me}", f"disk=file://{disks[me]}", f"via={nested}",
                  "--copies", "2", "--mincopies", "1", config=config,
                  env={"HOME": str(tmp_path / f"home-{me}")})  # fmt: skip
    for n in ("a", "b"):
        repo.annex(
            "initremote", f"gw{n}", "type=external", "externaltype=proxy", "encryption=none",
            f"gateway=ssh://gw{n}", f"target=t{n}", f"gatewaycommand={commands[n]}",
        )  # fmt: skip
    for n in ("a", "b"):
        key = add_file(repo, f"{n}.bin", 300_000)
        repo.annex("copy", "--to", f"gw{n}", f"{n}.bin", timeout=120)
        for disk in disks.values():
            assert [p.name for p in objects(disk)].count(key) == 1, (n, disk)
        repo.annex("drop", f"{n}.bin")
        repo.annex("get", f"{n}.bin", timeout=120)


def logged_gateway(tmp_path: Path, repo: Repo) -> tuple[Path, Path, Path]:
    """A proxy remote "gw" to a gateway whose target "disk" is one file:// node, the
    gateway's debug log going to a file: (config, log, node directory)."""
    config, log = tmp_path / "gw.toml", tmp_path / "gateway.log"
    disk = tmp_path / "disk"
    disk.mkdir()
    proxy_cli("add", "disk", f"d=file://{disk}", config=config)
    wrapper = tmp_path / "serve.sh"
    wrapper.write_text(
        f'#!/bin/sh\nGIT_ANNEX_REMOTE_PROXY_DEBUG=1 exec {PROXY} serve --config {config} "$@" '
        f"2>>{log}\n"
    )
    wrapper.chmod(0o755)
    repo.annex(
        "initremote", "gw", "type=external", "externaltype=proxy", "encryption=none",
        "gateway=ssh://gw", "target=disk", f"gatewaycommand={wrapper}",
    )  # fmt: skip
    return config, log, disk


def test_gateway_restart_mid_download_resumes(tmp_path: Path, repo: Repo, gw_host: str) -> None:
    config, log, _disk = logged_gateway(tmp_path, repo)
    key = add_file(repo, "big.bin", 200 * 1024 * 1024)
    repo.annex("copy", "--to", "gw", "big.bin")
    repo.annex("drop", "big.bin")
    get = subprocess.Popen(
        ["git", "annex", "get", "big.bin"],
        cwd=repo.path,
        env=repo.client.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    partial = repo.path / ".git" / "annex" / "tmp" / key
    deadline = time.monotonic() + 60
    while not (partial.exists() and partial.stat().st_size > 20 * 1024 * 1024):
        assert time.monotonic() < deadline and get.poll() is None, "the download did not start"
        time.sleep(0.01)
    # The gateway goes away mid-transfer (its serve processes killed, as by a restart).
    subprocess.run(["pkill", "-KILL", "-f", f"serve --config {config}"], check=False)
    out, _ = get.communicate(timeout=300)
    assert get.returncode == 0, out
    repo.annex("fsck", "big.bin")
    offsets = [int(w.split()[-1]) for w in log.read_text().splitlines() if "from byte" in w]
    assert offsets[0] == 0 and offsets[-1] > 0, offsets  # resumed, not restarted


@pytest.mark.parametrize("client", ["pypi"], indirect=True)
def test_gateway_restart_mid_upload_resumes(tmp_path: Path, repo: Repo, gw_host: str) -> None:
    """git-annex's copy through the proxy, the gateway killed half-way: the next copy
    continues from what the node kept (PUT-FROM with a real offset). The resume is the
    gateway's; how either git-annex drives the proxy remote is covered by the download
    case, so one client is enough here."""
    config, log, disk = logged_gateway(tmp_path, repo)
    add_file(repo, "big.bin", 150 * 1024 * 1024)
    copy = subprocess.Popen(
        ["git", "annex", "copy", "--to", "gw", "big.bin"],
        cwd=repo.path,
        env=repo.client.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not [p for p in leftovers(disk) if p.stat().st_size > 20 * 1024 * 1024]:
        assert time.monotonic() < deadline and copy.poll() is None, "the upload did not start"
        time.sleep(0.01)
    subprocess.run(["pkill", "-KILL", "-f", f"serve --config {config}"], check=False)
    copy.communicate(timeout=300)
    if copy.returncode != 0:  # the remote may or may not try again by itself
        repo.annex("copy", "--to", "gw", "big.bin")
    repo.annex("fsck", "--from", "gw", "big.bin")
    offsets = [int(w.split()[-1]) for w in log.read_text().splitlines() if "continuing at" in w]
    assert offsets[0] == 0 and max(offsets) > 20 * 1024 * 1024, offsets
    assert not leftovers(disk)


def test_success_plus_names_the_repository_nodes(tmp_path: Path, pypi_client: Client) -> None:
    """Nodes that are git-annex repositories are reported in SUCCESS-PLUS / FAILURE-PLUS, as a
    native cluster gateway reports its nodes; plain directories have no UUID to report."""
    repo_node = tmp_path / "node.git"
    subprocess.run(["git", "init", "-q", "--bare", str(repo_node)], check=True)
    subprocess.run(
        ["git", "annex", "init", "-q", "node"], cwd=repo_node, env=pypi_client.env, check=True
    )
    node_uuid = subprocess.run(
        ["git", "config", "annex.uuid"], cwd=repo_node, capture_output=True, text=True
    ).stdout.strip()
    shell = quote(str(pypi_client.bindir / "git-annex-shell"), safe="/")
    (tmp_path / "dir").mkdir()
    config = tmp_path / "gw.toml"
    proxy_cli("add", "mixed", f"r=annex://{repo_node}?shell={shell}",
              f"d=file://{tmp_path / 'dir'}", config=config)  # fmt: skip
    client = session(config, "mixed")
    data = os.urandom(100_000)
    key = key_for(data)
    assert client.put(key, io.BytesIO(data), len(data)).uuids == (node_uuid,)
    assert client.remove(key) == (True, (node_uuid,))
    client.close()


def test_gateway_refusals_reach_the_user_in_one_line(
    tmp_path: Path, repo: Repo, gw_host: str, sshd_factory: SSHDFactory
) -> None:
    config = tmp_path / "gw.toml"
    disk = tmp_path / "disk"
    disk.mkdir()
    proxy_cli("add", "disk", f"d=file://{disk}", config=config)
    repo.annex(
        "initremote", "ro", "type=external", "externaltype=proxy", "encryption=none",
        "gateway=ssh://gw", "target=disk",
        f"gatewaycommand={PROXY} serve --readonly --config {config}",
    )  # fmt: skip
    add_file(repo, "r.bin", 10_000)
    proc = repo.annex("copy", "--to", "ro", "r.bin", check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "read-only; write access denied" in text
    assert objects(disk) == []
    # The gateway's host key changes: refused, with the command that fixes it.
    sshd_factory("gw").restart(new_host_key=True)
    proc = repo.annex("copy", "--to", "ro", "r.bin", check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "changed" in text.lower() and "ssh-keygen -R" in text


# -- chunk keys through the gateway ----------------------------------------------------


def chunk_objects(d: Path, key: str) -> list[str]:
    """The names of ``key``'s chunk objects in a node directory."""
    name = key.partition("--")[2]
    return sorted(p.name for p in objects(d) if "-S" in p.name and p.name.endswith("--" + name))


@pytest.mark.parametrize("client", ["pypi"], indirect=True)
def test_chunked_content_through_the_gateway(tmp_path: Path, repo: Repo, gw_host: str) -> None:
    """chunk= on the proxy remote: git-annex sends chunk keys of unencrypted content
    (SHA256E-s...-S...-C1--...), whose size the gateway checks (their hash is the whole
    file's); they are stored, read back and removed like any key."""
    config = tmp_path / "gw.toml"
    disk = tmp_path / "disk"
    disk.mkdir()
    proxy_cli("add", "disk", f"d=file://{disk}", config=config)
    init_proxy(repo, config, "disk", extra=("chunk=1MiB",))
    key = add_file(repo, "c.bin", 2_500_000)
    repo.annex("copy", "--to", "gw", "c.bin")
    assert chunk_objects(disk, key) == [key.replace("--", f"-S1048576-C{n}--") for n in (1, 2, 3)]
    repo.annex("drop", "c.bin")
    repo.annex("get", "c.bin")
    repo.annex("fsck", "c.bin")
    repo.annex("fsck", "--from", "gw", "c.bin")
    repo.annex("drop", "--from", "gw", "c.bin")
    assert objects(disk) == []


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_testremote_full_through_the_gateway(tmp_path: Path, repo: Repo, gw_host: str) -> None:
    """The full matrix (573 cases), chunked groups included, through the proxy remote
    and our gateway to a file:// target."""
    config = tmp_path / "gw.toml"
    (tmp_path / "disk").mkdir()
    proxy_cli("add", "disk", f"d=file://{tmp_path / 'disk'}", config=config)
    init_proxy(repo, config, "disk")
    proc = repo.annex("testremote", "gw", check=False, timeout=3600)
    passed, total = summary_of_testremote(proc.stdout + proc.stderr)
    print(f"testremote through the gateway ({repo.client.name}): {passed}/{total}")
    assert proc.returncode == 0 and passed == total == 573, (
        proc.stdout[-5000:] + proc.stderr[-5000:]
    )
