"""Real OpenSSH servers on 127.0.0.1 for tests (a pytest plugin: ``pytest_plugins = ["sshd"]``).

Each :class:`SSHD` is a private ``sshd -D`` with its own directory, config, throwaway
host key, ``authorized_keys``, pid file and log. It runs in its own session so that
:meth:`SSHD.stop` can take down the listener *and* every per-connection child: that
is how a test simulates a host going down mid-transfer. sshd calls ``setsid()`` in
each connection child, so killing the process group alone would leave those running;
``stop()`` therefore freezes and kills the whole process tree under the pid it started.

A server can also stand for a gateway account whose ``authorized_keys`` gives each
client key a forced command (``command="...",restrict KEY``): :meth:`SSHD.authorize`
writes such lines, ``authorized_keys=`` makes sshd read a file a test (or a script
from the docs, as ``~/.ssh/authorized_keys``) writes itself, and ``env=`` sets the
sessions' environment (``HOME`` of the gateway account, for one) with ``SetEnv``.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import pytest
from loopback import accepts, log_tail, on_a_port, spawn

SSHD_BIN = "/usr/sbin/sshd"
DEFAULT_PATH = ("/usr/local/bin", "/usr/bin", "/bin")
READY_TIMEOUT = 5.0


def keygen(path: Path, comment: str) -> None:
    """A fresh ed25519 keypair without passphrase: ``path`` and ``path.pub``."""
    for p in (path, Path(f"{path}.pub")):
        p.unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )


def _process_tree(root: int) -> list[int]:
    """``root`` and all its descendants, found through /proc parent links."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


class SSHD:
    """One private sshd on 127.0.0.1; the port stays the same across restarts."""

    def __init__(
        self,
        root: Path,
        authorized_key: Path,
        *,
        path: Sequence[str] = DEFAULT_PATH,
        name: str = "sshd",
        env: Mapping[str, str] | None = None,
        authorized_keys: Path | None = None,
    ) -> None:
        self.root = root
        self.name = name
        self.path = list(path)
        self.env = dict(env or {})
        self.port = 0
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        self.host_key = root / "ssh_host_ed25519_key"
        self.config = root / "sshd_config"
        self.log = root / "sshd.log"
        self.pidfile = root / "sshd.pid"
        if authorized_keys is None:
            self.authorized_keys = root / "authorized_keys"
            self.authorize([(None, authorized_key)])
        else:  # written by the test (or the script it runs), as ~/.ssh/authorized_keys
            self.authorized_keys = authorized_keys
        keygen(self.host_key, f"{name}-hostkey")

    def __repr__(self) -> str:
        return f"SSHD({self.name!r}, port={self.port}, pid={self.pid})"

    def host_key_line(self) -> str:
        """``"ssh-ed25519 AAAA..."``: the host key as known_hosts wants it after the name."""
        return " ".join(Path(f"{self.host_key}.pub").read_text().split()[:2])

    def authorize(self, entries: Sequence[tuple[str | None, Path]]) -> None:
        """Write ``authorized_keys``: one line per (options, private key path), e.g.
        ``('command="git-annex-remote-proxy serve --readonly",restrict', key)``; None
        for a key without options. sshd reads the file at each login: no restart."""
        lines = []
        for options, key in entries:
            public = Path(f"{key}.pub").read_text().strip()
            lines.append(f"{options} {public}\n" if options else f"{public}\n")
        self.authorized_keys.write_text("".join(lines))
        os.chmod(self.authorized_keys, 0o600)

    def _write_config(self) -> None:
        variables = {"PATH": ":".join(self.path), **self.env}
        setenv = " ".join(shlex.quote(f"{k}={v}") for k, v in variables.items())
        self.config.write_text(
            f"Port {self.port}\n"
            "ListenAddress 127.0.0.1\n"
            f"HostKey {self.host_key}\n"
            f"PidFile {self.pidfile}\n"
            f"AuthorizedKeysFile {self.authorized_keys}\n"
            "PermitRootLogin prohibit-password\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            "StrictModes no\n"
            "X11Forwarding no\n"
            "AllowTcpForwarding yes\n"
            "PrintMotd no\n"
            "MaxStartups 100:30:200\n"
            "MaxSessions 100\n"
            "MaxAuthTries 20\n"
            "Subsystem sftp internal-sftp\n"
            f"SetEnv {setenv}\n"
        )

    def start(self) -> None:
        """Start (or start again on the same port); return once it accepts connections."""
        if self.alive():
            return
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # Debian's privsep dir
        self.port = on_a_port(str(self), self.port, self._spawn_on, self.log)

    def _spawn_on(self, port: int) -> bool:
        self.port = port
        return self._spawn()

    def _spawn(self) -> bool:
        """Run sshd once; False if it lost a race for its port, raise on other failures."""
        self._write_config()
        return (
            spawn(
                f"{self}: sshd",
                [SSHD_BIN, "-D", "-e", "-f", str(self.config), "-E", str(self.log)],
                self.log,
                self._listening,
                started=self._started,
                stop=self.stop,
                timeout=READY_TIMEOUT,
                in_use="Address already in use",
                poll=0.02,
            )
            is not None
        )

    def _started(self, proc: subprocess.Popen[bytes] | None) -> None:
        self._proc, self.pid = proc, proc.pid if proc is not None else None

    def _listening(self, offset: int) -> bool:
        banner = f"Server listening on 127.0.0.1 port {self.port}"
        return banner in log_tail(self.log, offset) and accepts(self.port, timeout=0.5)

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """Kill the listener and all its connection children at once (a host going down)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            # Freeze the tree first so nothing forks or gets reparented while we kill it.
            frozen: set[int] = set()
            while True:
                tree = [p for p in _process_tree(proc.pid) if p not in frozen]
                if not tree:
                    break
                for pid in tree:
                    _signal(pid, signal.SIGSTOP)
                frozen.update(tree)
            for pid in frozen:
                _signal(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        self._proc = self.pid = None
        self.pidfile.unlink(missing_ok=True)

    def restart(self, new_host_key: bool = False) -> None:
        self.stop()
        if new_host_key:
            keygen(self.host_key, f"{self.name}-hostkey")
        self.start()

    def accepted_logins(self) -> int:
        """How many ssh connections authenticated so far (counts real transports)."""
        return self.log.read_text(errors="replace").count("Accepted publickey")


class SSHDFactory(Protocol):
    def __call__(
        self,
        name: str,
        path: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        authorized_keys: Path | None = None,
    ) -> SSHD: ...


def ssh_config_for(
    home: Path,
    hosts: dict[str, SSHD],
    key: Path,
    extra: str = "",
    keys: Mapping[str, Path] | None = None,
) -> None:
    """Write ``home/.ssh/config`` (one strict ``Host`` block per server) and its known_hosts.

    Paths are absolute, so OpenSSH's ``ssh -F home/.ssh/config`` (which ignores $HOME)
    and shared.transport.ssh (which follows $HOME) read the same setup. ``extra`` is appended.
    ``keys`` gives some hosts (aliases; several may name one server) their own key.
    """
    ssh = home / ".ssh"
    ssh.mkdir(parents=True, exist_ok=True)
    os.chmod(ssh, 0o700)
    known = ssh / "known_hosts"
    blocks, lines = [], []
    for name, server in hosts.items():
        blocks.append(
            f"Host {name}\n"
            "  HostName 127.0.0.1\n"
            f"  Port {server.port}\n"
            "  User root\n"
            f"  IdentityFile {(keys or {}).get(name, key)}\n"
            "  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {known}\n"
            "  StrictHostKeyChecking yes\n"
            "  BatchMode yes\n"
        )
        line = f"[127.0.0.1]:{server.port} {server.host_key_line()}\n"
        if line not in lines:
            lines.append(line)
    config = ssh / "config"
    config.write_text("\n".join(blocks) + extra)
    os.chmod(config, 0o600)
    known.write_text("".join(lines))
    os.chmod(known, 0o600)


@pytest.fixture(scope="session")
def ssh_client_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Private key path of the client keypair every test server authorizes (``.pub`` beside)."""
    key = tmp_path_factory.mktemp("ssh-client") / "id_ed25519"
    keygen(key, "test-client")
    return key


@pytest.fixture(scope="session")
def sshd_factory(
    tmp_path_factory: pytest.TempPathFactory, ssh_client_key: Path
) -> Iterator[SSHDFactory]:
    """``sshd_factory("host1", path=...)``: a named server, started on first use (and
    started again if a test stopped it); all are stopped by pid at session end. ``path``,
    ``env`` and ``authorized_keys`` (see :class:`SSHD`) count when the server is made."""
    servers: dict[str, SSHD] = {}
    base = tmp_path_factory.mktemp("sshd")

    def factory(
        name: str,
        path: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        authorized_keys: Path | None = None,
    ) -> SSHD:
        server = servers.get(name)
        if server is None:
            server = SSHD(
                base / name,
                ssh_client_key,
                path=path or DEFAULT_PATH,
                name=name,
                env=env,
                authorized_keys=authorized_keys,
            )
            servers[name] = server
        server.start()
        return server

    try:
        yield factory
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(name="ssh_config_for")
def _ssh_config_for() -> Callable[..., None]:
    """The :func:`ssh_config_for` helper as a fixture."""
    return ssh_config_for
