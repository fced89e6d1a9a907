"""shared.transport.ssh against real OpenSSH servers on 127.0.0.1 (see tests/sshd.py)."""

from __future__ import annotations

import errno
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import paramiko
import pytest
from sshd import SSHD, SSHDFactory, ssh_config_for

from shared.errors import PermissionDenied, Unavailable, is_transient
from shared.transport.ssh import HostKeyError, SSHPool, is_connection_error, send_all
from shared.transport.target import SSHTarget

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated HOME (shared.transport.ssh reads $HOME/.ssh/config) and no ssh agent."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return home


@pytest.fixture
def pool() -> Iterator[SSHPool]:
    pool = SSHPool(connect_timeout=3, io_timeout=3, keepalive=5, attempts=2, failure_memo=0.5)
    yield pool
    pool.close()


@pytest.fixture
def host1(sshd_factory: SSHDFactory) -> SSHD:
    return sshd_factory("host1")


@pytest.fixture
def host2(sshd_factory: SSHDFactory) -> SSHD:
    return sshd_factory("host2")


@pytest.fixture
def own_sshd(tmp_path: Path, ssh_client_key: Path) -> Iterator[SSHD]:
    """A server this test may stop, restart or re-key; stopped by pid afterwards."""
    server = SSHD(tmp_path / "own-sshd", ssh_client_key, name="own")
    server.start()
    yield server
    server.stop()


def host_block(name: str, port: int, key: Path, known: Path, *extra: str) -> str:
    lines = [f"Host {name}", "  HostName 127.0.0.1", f"  Port {port}", "  User root"]
    lines += [f"  IdentityFile {key}", f"  UserKnownHostsFile {known}", "  BatchMode yes"]
    return "\n".join(lines + [f"  {e}" for e in extra]) + "\n"


def proxy_children() -> list[int]:
    """Our own child processes that are ``ssh -W`` proxies."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and b"-W" in cmdline:
            found.append(int(entry))
    return found


def test_openssh_accepts_the_fixture_setup(home: Path, host1: SSHD, ssh_client_key: Path) -> None:
    ssh_config_for(home, {"host1": host1}, ssh_client_key)
    out = subprocess.run(
        ["ssh", "-F", str(home / ".ssh/config"), "host1", "echo", "ok"],
        env={**os.environ, "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=10,
        stdin=subprocess.DEVNULL,
    )
    assert (out.returncode, out.stdout) == (0, "ok\n"), out.stderr


def test_run_returns_status_stdout_stderr(
    home: Path, host1: SSHD, ssh_client_key: Path, pool: SSHPool
) -> None:
    ssh_config_for(home, {"host1": host1}, ssh_client_key)
    conn = pool.connection(SSHTarget("host1"))
    assert conn.label == f"root@127.0.0.1:{host1.port}"
    assert conn.run(["sh", "-c", "echo out; echo err >&2; exit 3"]) == (3, b"out\n", b"err\n")
    assert conn.run(["cat"], input=b"x" * 100_000) == (0, b"x" * 100_000, b"")
    assert conn.run(["printf", "%s", "a b'c"])[1] == b"a b'c"  # argv is quoted for the shell


def test_server_path_is_configurable(
    home: Path, tmp_path: Path, ssh_client_key: Path, pool: SSHPool
) -> None:
    server = SSHD(tmp_path / "pathd", ssh_client_key, path=["/opt/our bin", "/usr/bin", "/bin"])
    try:
        server.start()
        ssh_config_for(home, {"p": server}, ssh_client_key)
        status, out, _ = pool.connection(SSHTarget("p")).run(["sh", "-c", 'echo "$PATH"'])
        assert status == 0 and "/opt/our bin:/usr/bin:/bin" in out.decode()
    finally:
        server.stop()


def test_sftp(home: Path, host1: SSHD, ssh_client_key: Path, pool: SSHPool, tmp_path: Path) -> None:
    ssh_config_for(home, {"host1": host1}, ssh_client_key)
    sftp = pool.connection(SSHTarget("host1")).sftp()
    path = str(tmp_path / "via-sftp")
    with sftp.open(path, "wb") as f:
        f.write(b"payload")
    assert sftp.stat(path).st_size == 7
    assert Path(path).read_bytes() == b"payload"
    with pytest.raises(FileNotFoundError) as err:
        sftp.stat(path + ".missing")
    assert not is_connection_error(err.value)
    assert sftp.get_channel().gettimeout() == 3  # type: ignore[union-attr]


def test_one_connection_serves_every_request(
    home: Path, host1: SSHD, ssh_client_key: Path, pool: SSHPool
) -> None:
    ssh_config_for(home, {"host1": host1}, ssh_client_key)
    target = SSHTarget("host1")
    before = host1.accepted_logins()
    conn = pool.connection(target)
    for _ in range(3):
        assert pool.connection(target) is conn
        assert pool.connection(SSHTarget("host1", port=host1.port, user="root")) is conn
        assert pool.connection(target).sftp() is conn.sftp()
        assert pool.connection(target).run(["true"])[0] == 0
        chan = pool.connection(target).exec(["echo", "hi"])
        assert chan.makefile("rb").read() == b"hi\n" and chan.recv_exit_status() == 0
        chan.close()
    assert host1.accepted_logins() == before + 1


def test_concurrent_threads_share_one_transport(
    home: Path, host1: SSHD, ssh_client_key: Path, pool: SSHPool
) -> None:
    ssh_config_for(home, {"host1": host1}, ssh_client_key)
    before = host1.accepted_logins()
    barrier, conns, errors = threading.Barrier(8), set(), []

    def work() -> None:
        try:
            barrier.wait()
            for _ in range(10):
                conn = pool.connection(SSHTarget("host1"))
                assert stat.S_ISDIR(conn.sftp().stat("/").st_mode or 0)
                conns.add(id(conn.transport))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(conns) == 1
    assert host1.accepted_logins() == before + 1


def test_run_timeout_is_unavailable_and_connection_survives(
    home: Path, host1: SSHD, ssh_client_key: Path, pool: SSHPool
) -> None:
    ssh_config_for(home, {"host1": host1}, ssh_client_key)
    conn = pool.connection(SSHTarget("host1"))
    start = time.monotonic()
    with pytest.raises(Unavailable, match=r"did not finish within 0\.5s"):
        conn.run(["sleep", "10"], timeout=0.5)
    assert time.monotonic() - start < 2
    assert conn.run(["true"])[0] == 0


def test_stopped_host_is_unavailable_then_reconnects(
    home: Path, own_sshd: SSHD, ssh_client_key: Path, pool: SSHPool
) -> None:
    ssh_config_for(home, {"own": own_sshd}, ssh_client_key)
    target = SSHTarget("own")
    conn = pool.connection(target)
    chan = conn.exec(["sleep", "30"])
    own_sshd.stop()  # the host goes down with a command running
    assert chan.recv(1) == b""  # EOF at once, not a hang
    with pytest.raises(Unavailable) as err:
        conn.run(["true"])
    assert is_transient(err.value)
    start = time.monotonic()
    with pytest.raises(Unavailable, match=rf"root@127.0.0.1:{own_sshd.port}.*refused"):
        pool.connection(target)
    assert time.monotonic() - start < 3
    # Within the failure memo the host is not tried again (callers that retry on
    # their own must not multiply connect timeouts).
    with pytest.raises(Unavailable, match="not retried for a few seconds"):
        pool.connection(target)
    own_sshd.start()
    time.sleep(0.6)  # the memo has expired
    again = pool.connection(target)
    assert again is not conn and again.run(["echo", "back"]) == (0, b"back\n", b"")


def test_restart_reconnects_transparently(
    home: Path, own_sshd: SSHD, ssh_client_key: Path, pool: SSHPool
) -> None:
    ssh_config_for(home, {"own": own_sshd}, ssh_client_key)
    target = SSHTarget("own")
    first = pool.connection(target)
    assert first.sftp().stat("/")
    own_sshd.restart()
    second = pool.connection(target)
    assert second is not first and not first.alive()
    assert second.sftp().stat("/") and second.run(["true"])[0] == 0


def test_host_dies_mid_sftp_transfer(
    home: Path, own_sshd: SSHD, ssh_client_key: Path, pool: SSHPool, tmp_path: Path
) -> None:
    ssh_config_for(home, {"own": own_sshd}, ssh_client_key)
    big = tmp_path / "big"
    big.write_bytes(os.urandom(8 << 20))
    conn = pool.connection(SSHTarget("own"))
    sftp = conn.sftp()
    f = sftp.open(str(big), "rb")
    # The read path our nodes use. (paramiko's own SFTPFile.read must not be used:
    # when the connection drops while a request is being sent, paramiko raises
    # EOFError there, which its BufferedFile.read takes for end of file, so a
    # dropped host looks like a short file.)
    stream = sftp.read_stream(f.handle, 0, 8 << 20, 32 * 1024 - 128, 4)  # type: ignore[arg-type]
    next(stream)
    own_sshd.stop()
    with pytest.raises(Exception) as err:  # any I/O error; classified below
        for _ in stream:
            pass
    assert is_connection_error(err.value), repr(err.value)
    pool.invalidate(conn)
    with pytest.raises(Unavailable):
        pool.connection(SSHTarget("own"))


def test_unknown_host_key(home: Path, host1: SSHD, ssh_client_key: Path, pool: SSHPool) -> None:
    ssh_config_for(home, {"host1": host1}, ssh_client_key)
    (home / ".ssh/known_hosts").write_text("")
    start = time.monotonic()
    with pytest.raises(HostKeyError) as err:
        pool.connection(SSHTarget("host1"))
    msg = str(err.value)
    assert f"ssh-keyscan -p {host1.port} 127.0.0.1 >> " in msg
    assert f"[127.0.0.1]:{host1.port}" in msg and "SHA256:" in msg and "accept-new" in msg
    assert "\n" not in msg
    assert not is_transient(err.value) and not is_connection_error(err.value)
    assert time.monotonic() - start < 1  # not retried


@pytest.mark.parametrize("mode", ["accept-new", "no"])
def test_accept_new_adds_key_but_refuses_a_changed_one(
    home: Path, own_sshd: SSHD, ssh_client_key: Path, mode: str
) -> None:
    known = home / ".ssh/new/known_hosts"
    config = home / ".ssh/config"
    ssh_config_for(home, {}, ssh_client_key)

    def strict(value: str) -> None:
        extra = f"StrictHostKeyChecking {value}"
        config.write_text(host_block("own", own_sshd.port, ssh_client_key, known, extra))

    strict(mode)
    with closing(SSHPool(attempts=1)) as pool:
        assert pool.connection(SSHTarget("own")).run(["true"])[0] == 0
    line = f"[127.0.0.1]:{own_sshd.port} {own_sshd.host_key_line()}\n"
    assert known.read_text() == line
    assert stat.S_IMODE(known.stat().st_mode) == 0o600
    strict("yes")  # OpenSSH, strict, agrees with the line we wrote
    ok = subprocess.run(["ssh", "-F", str(config), "own", "true"], capture_output=True, timeout=10)
    assert ok.returncode == 0, ok.stderr
    strict(mode)
    own_sshd.restart(new_host_key=True)
    with closing(SSHPool(attempts=1)) as pool, pytest.raises(HostKeyError, match="CHANGED"):
        pool.connection(SSHTarget("own"))
    assert known.read_text() == line


def test_changed_host_key(home: Path, own_sshd: SSHD, ssh_client_key: Path, pool: SSHPool) -> None:
    ssh_config_for(home, {"own": own_sshd}, ssh_client_key)
    assert pool.connection(SSHTarget("own")).run(["true"])[0] == 0
    own_sshd.restart(new_host_key=True)
    with pytest.raises(HostKeyError) as err:
        pool.connection(SSHTarget("own"))
    msg = str(err.value)
    assert "CHANGED" in msg and "man-in-the-middle" in msg
    assert f"ssh-keygen -R '[127.0.0.1]:{own_sshd.port}'" in msg


def test_hashed_known_hosts_and_host_key_alias(
    home: Path, host1: SSHD, ssh_client_key: Path, pool: SSHPool
) -> None:
    known = home / ".ssh/known_hosts"
    ssh_config_for(home, {}, ssh_client_key)
    (home / ".ssh/config").write_text(
        host_block("a", host1.port, ssh_client_key, known, "HostKeyAlias myalias")
        + host_block("b", host1.port, ssh_client_key, known)
    )
    known.write_text(
        f"myalias {host1.host_key_line()}\n[127.0.0.1]:{host1.port} {host1.host_key_line()}\n"
    )
    subprocess.run(["ssh-keygen", "-H", "-f", str(known)], check=True, capture_output=True)
    assert "myalias" not in known.read_text()
    assert pool.connection(SSHTarget("a")).run(["true"])[0] == 0
    assert pool.connection(SSHTarget("b")).run(["true"])[0] == 0


def test_wrong_client_key_is_permission_denied(
    home: Path, host1: SSHD, tmp_path: Path, pool: SSHPool
) -> None:
    wrong = tmp_path / "wrong_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True)
    ssh_config_for(home, {"host1": host1}, wrong)
    with pytest.raises(PermissionDenied) as err:
        pool.connection(SSHTarget("host1"))
    assert not isinstance(err.value, HostKeyError)
    assert f"authentication to root@127.0.0.1:{host1.port} failed" in str(err.value)


def test_agent_and_identities_only(
    home: Path,
    host1: SSHD,
    ssh_client_key: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.02)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(["ssh-add", str(ssh_client_key)], env=env, check=True, capture_output=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        wrong = tmp_path / "wrong_key"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True
        )
        known = home / ".ssh/known_hosts"
        ssh_config_for(home, {"host1": host1}, ssh_client_key)
        blocks = [f"Host agent\n  HostName 127.0.0.1\n  Port {host1.port}\n  User root\n"]
        blocks.append(host_block("wrongfile", host1.port, wrong, known))
        blocks.append(host_block("only", host1.port, wrong, known, "IdentitiesOnly yes"))
        (home / ".ssh/config").write_text("".join(blocks))
        # A pool keeps one connection per user@host:port, so each case gets its own pool.
        for alias in ("agent", "wrongfile"):  # the agent's key (after the wrong file)
            with closing(SSHPool(attempts=1)) as pool:
                assert pool.connection(SSHTarget(alias)).run(["true"])[0] == 0
        with closing(SSHPool(attempts=1)) as pool, pytest.raises(PermissionDenied):
            pool.connection(SSHTarget("only"))  # IdentitiesOnly: not the agent's keys
    finally:
        agent.kill()
        agent.wait()


def test_proxyjump(
    home: Path, sshd_factory: SSHDFactory, ssh_client_key: Path, pool: SSHPool
) -> None:
    h1, h2, h3 = (sshd_factory(n) for n in ("host1", "host2", "host3"))
    ssh_config_for(home, {"host1": h1, "host2": h2}, ssh_client_key)
    known = home / ".ssh/known_hosts"
    with known.open("a") as f:
        f.write(f"[127.0.0.1]:{h3.port} {h3.host_key_line()}\n")
    (home / ".ssh/config").write_text(
        host_block("via1", h2.port, ssh_client_key, known, "ProxyJump host1")
        + host_block("via12", h3.port, ssh_client_key, known, "ProxyJump host1,host2")
        + (home / ".ssh/config").read_text()
    )
    logins = [h.accepted_logins() for h in (h1, h2, h3)]
    conn = pool.connection(SSHTarget("via1"))
    assert conn.run(["echo", "jumped"]) == (0, b"jumped\n", b"")
    assert pool.connection(SSHTarget("via1")) is conn
    assert pool.connection(SSHTarget("host1")).run(["true"])[0] == 0  # the pooled hop
    two = pool.connection(SSHTarget("via12"))
    assert two.label == f"root@127.0.0.1:{h3.port}" and two.sftp().stat("/")
    # via12's second hop is via1's connection (host2 through host1): reused too
    assert [h.accepted_logins() - n for h, n in zip((h1, h2, h3), logins, strict=True)] == [1, 1, 1]
    # Losing the jump host takes the connections through it down; the next call rebuilds.
    pool.invalidate(pool.connection(SSHTarget("host1")))
    deadline = time.monotonic() + 5
    while (conn.alive() or two.alive()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not conn.alive() and not two.alive()
    assert pool.connection(SSHTarget("via12")).run(["true"])[0] == 0
    two.close()  # closing a connection whose jump host is gone does not raise


def test_proxycommand_leaves_no_child(
    home: Path, host1: SSHD, host2: SSHD, ssh_client_key: Path
) -> None:
    ssh_config_for(home, {"host1": host1, "host2": host2}, ssh_client_key)
    config = home / ".ssh/config"
    known = home / ".ssh/known_hosts"
    proxy = f"ProxyCommand ssh -F {config} -W %h:%p host1"
    config.write_text(
        host_block("proxied", host2.port, ssh_client_key, known, proxy) + config.read_text()
    )
    pool = SSHPool(attempts=1)
    try:
        conn = pool.connection(SSHTarget("proxied"))
        assert conn.run(["echo", "proxied"]) == (0, b"proxied\n", b"")
        assert len(proxy_children()) == 1
    finally:
        pool.close()
    assert proxy_children() == []


def test_failing_proxycommand_is_unavailable_with_its_stderr(
    home: Path, host1: SSHD, ssh_client_key: Path, pool: SSHPool
) -> None:
    ssh_config_for(home, {}, ssh_client_key)
    known = home / ".ssh/known_hosts"
    bad = "ProxyCommand sh -c 'echo no route to bastion >&2; exit 1'"
    (home / ".ssh/config").write_text(host_block("bad", host1.port, ssh_client_key, known, bad))
    with pytest.raises(Unavailable, match="no route to bastion"):
        pool.connection(SSHTarget("bad"))
    assert proxy_children() == []


def test_refused_port_is_unavailable_quickly(home: Path, pool: SSHPool) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(Unavailable, match="refused"):
        pool.connection(SSHTarget("127.0.0.1", port=port))
    assert time.monotonic() - start < 2


def test_is_connection_error() -> None:
    yes = [
        EOFError(),
        TimeoutError(),
        socket.gaierror(-2, "Name or service not known"),
        ConnectionResetError(errno.ECONNRESET, "reset"),
        OSError("Socket is closed"),
        paramiko.SSHException("SSH session not active"),
        Unavailable("down"),
    ]
    no = [
        FileNotFoundError(errno.ENOENT, "No such file"),
        PermissionError(errno.EACCES, "denied"),
        paramiko.AuthenticationException("no"),
        HostKeyError("changed"),
        ValueError("x"),
    ]
    assert all(is_connection_error(e) for e in yes)
    assert not any(is_connection_error(e) for e in no)


class _SmallWindowChannel:
    """Takes at most ``limit`` bytes per send, as a channel with a small window does."""

    def __init__(self, limit: int, closed_after: int | None = None) -> None:
        self.limit, self.closed_after = limit, closed_after
        self.got: list[bytes] = []

    def send(self, data: memoryview) -> int:
        if self.closed_after is not None and sum(map(len, self.got)) >= self.closed_after:
            return 0
        piece = bytes(data[: self.limit])
        self.got.append(piece)
        return len(piece)


def test_send_all_sends_everything_in_order_one_packet_at_a_time() -> None:
    data = os.urandom(100_000)
    chan = _SmallWindowChannel(32_768)
    send_all(chan, data)  # type: ignore[arg-type]
    assert b"".join(chan.got) == data
    assert [len(p) for p in chan.got] == [32_768, 32_768, 32_768, 1_696]


def test_send_all_on_a_closed_channel_raises_instead_of_spinning() -> None:
    chan = _SmallWindowChannel(1000, closed_after=2000)
    with pytest.raises(EOFError):
        send_all(chan, b"x" * 5000)  # type: ignore[arg-type]


def test_start_up_defers_invoke_and_match_exec_still_works(tmp_path: Path) -> None:
    """paramiko imports invoke (and with it asyncio, ssl and unittest.mock) for
    ssh_config's ``Match exec`` alone: a quarter of a second of CPU in every remote
    process. It is loaded when a ``Match exec`` line needs it, and then works."""
    config = tmp_path / "config"
    config.write_text("Match exec true\n  User matched\nMatch exec false\n  Port 2\n")
    script = (
        "import sys\n"
        "import shared.nodes.sftp, paramiko\n"
        "print(sorted({'invoke.context', 'asyncio', 'ssl', 'unittest.mock'} & set(sys.modules)))\n"
        f"options = paramiko.SSHConfig.from_path({str(config)!r}).lookup('h')\n"
        "print(options.get('user'), options.get('port'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout.splitlines()
    assert out == ["[]", "matched None"]
