"""git-annex's own HTTP server, ``git annex p2phttp``, on 127.0.0.1 for tests (a pytest
plugin: ``pytest_plugins = ["p2phttp"]``).

:class:`P2PHttp` runs the PyPI git-annex's ``p2phttp`` over one git-annex repository
on a free loopback port (plain HTTP), with its log in its own directory, and stops it
by the pid it started. Access is either ``--wideopen`` (anyone may read, store and
remove) or users, as the server documents them: ``--authenv-http`` (``--authenv``
allows passwords only over HTTPS) with ``GIT_ANNEX_P2PHTTP_PASSWORD_<user>`` and
``GIT_ANNEX_P2PHTTP_PERMISSIONS_<user>`` (``readonly``, ``appendonly``, or unset for
read+write+remove) in its environment; ``unauth=`` adds ``--unauth-readonly`` or
``--unauth-appendonly``.

What the server does that a client author should know (git-annex 10.20261026):

* A repository UUID it does not serve answers 404 with an empty body; a protocol
  version it does not know answers 400 ``bad version`` (not 404, as the spec says).
* ``GET .../key/KEY`` of an absent key answers 200 with ``X-git-annex-data-length: 0``
  and no body: only ``checkpresent`` tells absent from empty.
* A ``put`` cut short keeps the bytes received in the repository's ``annex/tmp``;
  the next ``putoffset`` offers them.
* No credentials where some are needed: 401 with ``WWW-Authenticate: Basic
  realm="git-annex"``; credentials without the permission: 403.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from conftest import Client
from loopback import accepts, on_a_port, spawn, terminate

READY_TIMEOUT = 20.0
JOBS = 4

#: (password, permission): permission "readwrite", "readonly" or "appendonly"
Users = Mapping[str, tuple[str, str]]


def init_repo(path: Path, client: Client, bare: bool = True, description: str = "node") -> str:
    """A git-annex repository as an operator prepares one to serve; returns its UUID."""
    subprocess.run(
        ["git", "init", "-q", *(["--bare"] if bare else []), str(path)],
        check=True,
        env=client.env,
    )
    subprocess.run(
        ["git", "annex", "init", "-q", description], cwd=path, env=client.env, check=True
    )
    out = subprocess.run(
        ["git", "config", "annex.uuid"], cwd=path, env=client.env, check=True, capture_output=True
    )
    return out.stdout.decode().strip()


class P2PHttp:
    """One ``git annex p2phttp`` serving ``repo`` on 127.0.0.1."""

    def __init__(
        self,
        root: Path,
        client: Client,
        repo: Path,
        *,
        users: Users | None = None,
        unauth: str | None = None,
        name: str = "p2phttp",
    ) -> None:
        self.root, self.client, self.repo, self.name = root, client, repo, name
        self.users = dict(users or {})
        self.unauth = unauth  # None, "readonly" or "appendonly"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        self.log = root / f"{name}.log"
        out = subprocess.run(
            ["git", "config", "annex.uuid"], cwd=repo, env=client.env, capture_output=True
        )
        self.uuid = out.stdout.decode().strip()
        if not self.uuid:
            raise RuntimeError(f"{repo} is not a git-annex repository (no annex.uuid)")

    def __repr__(self) -> str:
        return f"P2PHttp({self.name!r}, port={self.port}, pid={self.pid})"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def url(self) -> str:
        """What git-annex's ``remote.NAME.annexUrl`` takes."""
        return f"annex+http://127.0.0.1:{self.port}/git-annex/"

    @property
    def node_url(self) -> str:
        """The repository as one of our nodes."""
        return f"{self.url}{self.uuid}"

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/git-annex/{self.uuid}"

    def _argv(self) -> list[str]:
        argv = ["git", "annex", "p2phttp", "--bind", "127.0.0.1", "--port", str(self.port)]
        argv.append(f"--jobs={JOBS}")
        if self.users:
            argv.append("--authenv-http")
        if self.unauth:
            argv.append(f"--unauth-{self.unauth}")
        if not self.users and not self.unauth:
            argv.append("--wideopen")
        return argv

    def _env(self) -> dict[str, str]:
        env = dict(self.client.env)
        for user, (password, permission) in self.users.items():
            env[f"GIT_ANNEX_P2PHTTP_PASSWORD_{user}"] = password
            if permission != "readwrite":
                env[f"GIT_ANNEX_P2PHTTP_PERMISSIONS_{user}"] = permission
        return env

    def start(self) -> None:
        """Start (again on the same port once it had one); return once it accepts connections."""
        if self.alive():
            return
        self.port = on_a_port(str(self), self.port, self._spawn_on, self.log)

    def _spawn_on(self, port: int) -> bool:
        self.port = port
        return self._spawn()

    def _spawn(self) -> bool:
        return (
            spawn(
                f"{self}: p2phttp",
                self._argv(),
                self.log,
                lambda _: accepts(self.port, timeout=1),
                started=self._started,
                stop=self.stop,
                timeout=READY_TIMEOUT,
                cwd=self.repo,
                env=self._env(),
            )
            is not None
        )

    def _started(self, proc: subprocess.Popen[bytes] | None) -> None:
        self._proc = proc

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """Terminate the pid we started; kill it if it does not go within a few seconds."""
        terminate(self._proc)
        self._proc = None


P2PHttpFactory = Callable[..., P2PHttp]


@pytest.fixture
def p2phttp_factory(
    tmp_path_factory: pytest.TempPathFactory, pypi_client: Client
) -> Iterator[P2PHttpFactory]:
    """``factory(repo, users=None, unauth=None, client=pypi_client)``: a started server
    over ``repo`` (a git-annex repository, see :func:`init_repo`); all stopped after
    the test."""
    servers: list[P2PHttp] = []

    def factory(
        repo: Path,
        *,
        users: Users | None = None,
        unauth: str | None = None,
        client: Client | None = None,
    ) -> P2PHttp:
        server = P2PHttp(
            tmp_path_factory.mktemp("p2phttp"),
            client or pypi_client,
            repo,
            users=users,
            unauth=unauth,
            name=f"p2phttp{len(servers)}",
        )
        servers.append(server)
        server.start()
        return server

    try:
        yield factory
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def p2phttp(tmp_path: Path, pypi_client: Client, p2phttp_factory: P2PHttpFactory) -> P2PHttp:
    """A ``--wideopen`` server over a fresh bare repository, ``tmp_path / "served.git"``."""
    repo = tmp_path / "served.git"
    init_repo(repo, pypi_client)
    return p2phttp_factory(repo)
