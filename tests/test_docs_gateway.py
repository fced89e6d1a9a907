"""The setups of docs/gateway.md and docs/ssh-cluster.md, run as written.

Each ``<!-- script: NAME -->`` block is run by bash exactly as the docs show it,
with the environment variables the docs explain, against real sshd servers: the
gateway's ``authorized_keys`` is the one the operator's script writes (forced
commands of each kind), the clients' ``~/.ssh/config`` names the hosts the docs
name. OpenSSH reads the passwd entry's home, not $HOME, so the clients' ``ssh``
is a wrapper that reads ``$HOME/.ssh/config`` (``client_with_home``).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest
from conftest import VENV_BIN, Client, Repo, make_repo
from sshd import SSHDFactory, ssh_config_for
from test_e2e_sftp_cluster import add_file
from test_forced_command import Gateway, client_with_home, gateway_account, objects
from test_proxy import native_cluster

pytestmark = pytest.mark.timeout(900)
DOCS = Path(__file__).resolve().parent.parent / "docs"
GATEWAY_PATH = [str(VENV_BIN), "/usr/local/bin", "/usr/bin", "/bin"]


def script(doc: str, name: str) -> str:
    """The text of the docs' ``<!-- script: NAME -->`` block."""
    text = (DOCS / doc).read_text()
    found = re.search(
        rf"<!-- script: {re.escape(name)} -->\n```sh\n(.*?)```\n<!-- end script -->", text, re.S
    )
    assert found, f"{doc} lost its script {name}"
    return found.group(1)


def run_script(
    doc: str, name: str, env: Mapping[str, str], check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["bash", "-c", script(doc, name)],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    if check:
        assert proc.returncode == 0, f"{doc} {name}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def gateway_env(home: Path) -> dict[str, str]:
    """The gateway account's environment, as the operator has it."""
    env = {"HOME": str(home), "PATH": ":".join(GATEWAY_PATH), "LANG": "C.UTF-8"}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


@pytest.fixture(scope="module")
def docs_gateway(tmp_path_factory: pytest.TempPathFactory, sshd_factory: SSHDFactory) -> Gateway:
    """The operator guide's forced-commands script, run on a gateway account: its
    targets, its git repository, its authorized_keys (three keys, three kinds)."""
    root = tmp_path_factory.mktemp("docs-gw")
    server, home, keys = gateway_account(root, sshd_factory, "docs-gw", forced=None)
    disks = {t: root / f"disk-{t}" for t in ("archive", "scratch")}
    for disk in disks.values():
        disk.mkdir()
    env = {
        **gateway_env(home),
        "ARCHIVE_NODE": disks["archive"].as_uri(),
        "SCRATCH_NODE": disks["scratch"].as_uri(),
        **{
            f"{who.upper()}_KEY": Path(f"{key}.pub").read_text().strip()
            for who, key in keys.items()
        },
    }
    run_script("gateway.md", "forced-commands", env)
    config = home / ".config" / "git-annex-remote-proxy" / "gateway.toml"
    assert (config.parent / "git" / "archive.git" / "HEAD").is_file()
    return Gateway(server, config, disks, keys, root)


@pytest.fixture
def user(docs_gateway: Gateway, client: Client, tmp_path: Path) -> Client:
    home = tmp_path / "user"
    c = client_with_home(client, home)
    docs_gateway.client_home(home)
    return c


def slow_unless(*fast: str) -> list[object]:
    """The ``client`` parameters: those named in ``fast`` run in the fast suite."""
    return [
        pytest.param("pypi", marks=() if "pypi" in fast else pytest.mark.slow),
        pytest.param("debian", marks=[pytest.mark.oldannex, pytest.mark.slow]),
    ]


@pytest.mark.parametrize("client", slow_unless("pypi"), indirect=True)
def test_proxy_remote_script_under_the_operators_forced_command(
    docs_gateway: Gateway, user: Client, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo", user)
    keys = [add_file(repo, f"f{i}.bin", 100_000) for i in range(2)]
    run_script("gateway.md", "proxy-remote", {**user.env, "REPO": str(repo.path),
                                              "GATEWAY": "gw-alice"})  # fmt: skip
    assert set(keys) <= set(objects(docs_gateway.disks["archive"]))
    assert all((repo.path / f"f{i}.bin").read_bytes() for i in range(2))


@pytest.mark.slow
@pytest.mark.parametrize("client", slow_unless(), indirect=True)
@pytest.mark.parametrize(
    ("who", "outcome"),
    [("reader", "this repository is read-only; write access denied"), ("backup", None)],
)
def test_proxy_remote_script_under_the_other_kinds_of_key(
    docs_gateway: Gateway, user: Client, tmp_path: Path, who: str, outcome: str | None
) -> None:
    """The read-only key refuses the script's copy with git-annex's text; the
    append-only key takes it (the script drops only local copies)."""
    repo = make_repo(tmp_path / "repo", user)
    key = add_file(repo, "k.bin", 50_000)
    proc = run_script("gateway.md", "proxy-remote", {**user.env, "REPO": str(repo.path),
                      "GATEWAY": f"gw-{who}"}, check=outcome is None)  # fmt: skip
    if outcome is not None:
        assert proc.returncode != 0 and outcome in proc.stdout + proc.stderr, proc.stderr
        assert key not in objects(docs_gateway.disks["archive"])
    else:
        assert key in objects(docs_gateway.disks["archive"])


@pytest.mark.parametrize("client", slow_unless("pypi"), indirect=True)
def test_stock_client_script_one_key_for_git_and_annex(
    docs_gateway: Gateway, user: Client, tmp_path: Path
) -> None:
    """Two clones of a stock git-annex over forced-command keys, the second one
    read-only: it gets the file, and its push is refused with the documented text."""
    work = tmp_path / "work"
    work.mkdir()
    env = {**user.env, "WORK": str(work), "GATEWAY": "gw-alice", "GATEWAY2": "gw-reader"}
    run_script("gateway.md", "stock-client", env)
    clone1, clone2 = Repo(work / "archive", user), Repo(work / "archive2", user)
    # The file the first clone added is the one whose content it has (the other
    # client's run of this test left its own in the target's history).
    new = [p for p in (clone1.path / "data").iterdir() if p.exists()]
    assert len(new) == 1, new
    for path in new:
        assert (clone2.path / "data" / path.name).read_bytes() == path.read_bytes()
        assert clone1.lookupkey(f"data/{path.name}") in objects(docs_gateway.disks["archive"])
    clone2.run("git", "commit", "-q", "--allow-empty", "-m", "a reader's commit")
    push = clone2.run("git", "push", "origin", "HEAD:refs/heads/from-reader", check=False)
    assert push.returncode != 0
    assert "git push to target archive refused: this key is read-only" in push.stderr


@pytest.mark.slow
def test_native_gateway_script(
    tmp_path: Path, pypi_client: Client, sshd_factory: SSHDFactory, ssh_client_key: Path
) -> None:
    """The proxy remote to a native git-annex cluster gateway (git-annex 10.20240701 or
    later on the gateway; here the PyPI one), as the user guide writes it."""
    user = client_with_home(pypi_client, tmp_path / "user")
    server = sshd_factory("docs-ngw", path=[str(pypi_client.bindir), "/usr/bin", "/bin"])
    ssh_config_for(Path(user.env["HOME"]), {"ngw": server}, ssh_client_key)

    gw, nodes, cluster_uuid = native_cluster(tmp_path, user.env, 2)
    repo = make_repo(tmp_path / "repo", user)
    key = add_file(repo, "c.bin", 100_000)
    env = {
        **user.env,
        "REPO": str(repo.path),
        "NATIVE_GATEWAY": "ngw",
        "GATEWAY_REPO": str(gw),
        "CLUSTER_UUID": cluster_uuid,
    }
    run_script("gateway.md", "native-gateway", env)
    for node in nodes:
        assert any(p.name == key for p in (node / "annex").rglob("*")), node


@pytest.mark.slow
@pytest.mark.parametrize("client", slow_unless(), indirect=True)
def test_ssh_cluster_tutorial(
    tmp_path: Path,
    client: Client,
    sshd_factory: SSHDFactory,
    ssh_client_key: Path,
) -> None:
    """docs/ssh-cluster.md: three hosts, an sftp cluster, then git-annex repositories
    as nodes (git-annex-shell on the hosts' PATH: the client's own git-annex)."""
    user = client_with_home(client, tmp_path / "user")
    path = [str(client.bindir), "/usr/local/bin", "/usr/bin", "/bin"]
    hosts = {
        f"store{i}": sshd_factory(f"docs-store{i}-{client.name}", path=path) for i in (1, 2, 3)
    }
    ssh_config_for(Path(user.env["HOME"]), hosts, ssh_client_key)
    dirs = {f"DIR{i}": str(tmp_path / "hosts" / f"store{i}" / "annex-node") for i in (1, 2, 3)}
    run_script("ssh-cluster.md", "ssh-hosts", {**user.env, **dirs})
    assert all(Path(d).is_dir() for d in dirs.values())

    repo = make_repo(tmp_path / "repo", user)
    keys = [add_file(repo, f"f{i}.bin", 100_000) for i in range(3)]
    run_script("ssh-cluster.md", "sftp-cluster", {**user.env, **dirs, "REPO": str(repo.path)})
    assert all((repo.path / f"f{i}.bin").read_bytes() for i in range(3))  # got back
    assert not [n for d in dirs.values() for n in objects(Path(d))]  # dropped from every node

    # Node repositories "on each host" (this machine), then a cluster of them.
    repos = {f"REPO{i}": str(tmp_path / "hosts" / f"store{i}" / f"node{i}.git") for i in (1, 2)}
    for node_repo in repos.values():
        run_script("ssh-cluster.md", "annex-node", {**user.env, "NODE_REPO": node_repo})
    third = str(tmp_path / "hosts" / "store3" / "cluster")  # a node of this cluster alone
    Path(third).mkdir()
    env = {**user.env, **repos, "DIR4": third, "REPO": str(repo.path)}
    run_script("ssh-cluster.md", "annex-cluster", env)
    held = {k: sum(1 for p in Path(tmp_path / "hosts").rglob(k) if p.is_file()) for k in keys}
    assert held == dict.fromkeys(keys, 2), held  # copies=2
