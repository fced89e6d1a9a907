"""Fixtures that give tests real git-annex repositories and real clients.

Two git-annex clients are exercised: the current one from PyPI (the real binary
inside the wheel) and Debian's 10.20230126 at /usr/bin/git-annex, the old client
our remote must keep working with. Each test gets an isolated HOME and GNUPGHOME.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest_plugins = ["sshd", "s3server", "p2phttp"]

DEBIAN_GIT_ANNEX = Path("/usr/bin/git-annex")
VENV_BIN = Path(sys.executable).parent


def _pypi_git_annex() -> Path | None:
    spec = importlib.util.find_spec("git_annex")
    if spec is None or not spec.submodule_search_locations:
        return None
    binary = Path(next(iter(spec.submodule_search_locations))) / "git-annex"
    return binary if binary.exists() else None


def _remote_program(name: str = "git-annex-remote-cluster") -> Path:
    found = shutil.which(name, path=str(VENV_BIN))
    if found is None:
        pytest.fail(f"{name} is not installed in the virtualenv: run make test")
    return Path(found)


@dataclass
class Client:
    """A git-annex installation plus the environment that makes it use our remote."""

    name: str
    binary: Path
    bindir: Path
    env: dict[str, str]

    def version(self) -> str:
        out = subprocess.run(
            [str(self.bindir / "git-annex"), "version", "--raw"],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()


def _make_client(name: str, binary: Path, root: Path) -> Client:
    bindir = root / f"bin-{name}"
    bindir.mkdir(parents=True, exist_ok=True)
    for prog in ("git-annex", "git-annex-shell"):
        target = binary if name == "pypi" else binary.parent / prog
        link = bindir / prog
        if not link.exists():
            link.symlink_to(target)
    for program in ("git-annex-remote-cluster", "git-annex-remote-proxy"):
        remote = bindir / program
        if not remote.exists():
            remote.symlink_to(_remote_program(program))
    home = root / f"home-{name}"
    (home / ".gnupg").mkdir(parents=True, exist_ok=True)
    os.chmod(home / ".gnupg", 0o700)
    (home / ".gitconfig").write_text(
        "[user]\n\tname = Test\n\temail = test@localhost\n"
        "[init]\n\tdefaultBranch = main\n"
        "[annex]\n\tautocommit = true\n"
    )
    env = {
        "PATH": f"{bindir}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "GNUPGHOME": str(home / ".gnupg"),
        "LANG": "C.UTF-8",
        "GIT_CONFIG_NOSYSTEM": "1",
        "TMPDIR": str(root),
    }
    return Client(name=name, binary=binary, bindir=bindir, env=env)


@pytest.fixture(scope="session")
def client_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clients")


def _stop_gpg_agent(client: Client) -> None:
    """git-annex's gpg starts a gpg-agent per GNUPGHOME; stop the one our tests caused."""
    subprocess.run(
        ["gpgconf", "--kill", "gpg-agent"],
        env=client.env,
        capture_output=True,
        check=False,
    )


@pytest.fixture(scope="session")
def pypi_client(client_root: Path) -> Iterator[Client]:
    binary = _pypi_git_annex()
    if binary is None:
        pytest.fail("the PyPI git-annex package is not installed: run make test")
    client = _make_client("pypi", binary, client_root)
    yield client
    _stop_gpg_agent(client)


@pytest.fixture(scope="session")
def debian_client(client_root: Path) -> Iterator[Client]:
    if not DEBIAN_GIT_ANNEX.exists():
        pytest.skip("Debian's git-annex is not installed (apt-get install git-annex)")
    client = _make_client("debian", DEBIAN_GIT_ANNEX, client_root)
    yield client
    _stop_gpg_agent(client)


@pytest.fixture(params=["pypi", pytest.param("debian", marks=pytest.mark.oldannex)])
def client(request: pytest.FixtureRequest) -> Client:
    """Each test using this runs once with the current and once with the old git-annex."""
    return request.getfixturevalue(f"{request.param}_client")  # type: ignore[no-any-return]


class Repo:
    """A git-annex repository driven through the real command line."""

    def __init__(self, path: Path, client: Client) -> None:
        self.path = path
        self.client = client

    def run(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            list(args),
            cwd=self.path,
            env=self.client.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} exited {proc.returncode}\n"
                f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
            )
        return proc

    def annex(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return self.run("git", "annex", *args, check=check, timeout=timeout)

    def write(self, name: str, data: bytes) -> Path:
        p = self.path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        return p

    def lookupkey(self, name: str) -> str:
        return self.annex("lookupkey", name).stdout.strip()


def make_repo(path: Path, client: Client) -> Repo:
    path.mkdir(parents=True, exist_ok=True)
    repo = Repo(path, client)
    repo.run("git", "init", "-q")
    repo.annex("init", "-q", "test")
    return repo


@pytest.fixture
def repo(tmp_path: Path, client: Client) -> Repo:
    return make_repo(tmp_path / "repo", client)


@pytest.fixture
def node_dirs(tmp_path: Path) -> list[Path]:
    dirs = [tmp_path / "nodes" / f"n{i}" for i in (1, 2, 3)]
    for d in dirs:
        d.mkdir(parents=True)
    return dirs


def nodes_param(dirs: list[Path]) -> str:
    return " ".join(f"n{i}=file://{d}" for i, d in enumerate(dirs, 1))
