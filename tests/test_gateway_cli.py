"""The gateway's command line as its operator uses it: ``git-annex-remote-proxy gateway
add|nodes|status ...`` with ``--config`` anywhere, nodes checked before they are
written, and ``status`` as ``git-annex-remote-cluster status`` reports a cluster."""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import VENV_BIN, Client, Repo
from node_conformance import make_key
from sshd import SSHDFactory, ssh_config_for
from test_e2e_sftp_cluster import add_file
from test_one_owner import error_line
from test_proxy import P2PClient, Pipes

from git_annex_remote_proxy.config import GatewayConfig
from git_annex_remote_proxy.gateway import bad_copies_path
from shared.cluster.badcopies import BadCopies
from shared.cluster.core import Cluster
from shared.nodes import open_node

PROXY = str(VENV_BIN / "git-annex-remote-proxy")


def run(tmp_path: Path, *args: str, rc: int | None = 0) -> subprocess.CompletedProcess[str]:
    """``git-annex-remote-proxy ARGS`` with a HOME of its own (the default configuration
    file is never the one used unless a test says so)."""
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    env.pop("GIT_ANNEX_REMOTE_PROXY_CONFIG", None)
    env.pop("XDG_CONFIG_HOME", None)
    proc = subprocess.run(
        [PROXY, *args], capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL
    )
    if rc is not None:
        assert proc.returncode == rc, proc.stdout + proc.stderr
    return proc


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


# -- nodes are checked before they are written ----------------------------------------


def test_gateway_add_refuses_a_node_it_cannot_use(tmp_path: Path) -> None:
    """The issue's case: a node that does not exist was accepted, and the first client
    copy failed three levels deep. Now it is refused, in one line, nothing written."""
    config = str(tmp_path / "gw.toml")
    line = one_line(run(tmp_path, "gateway", "add", "bad", "s=file:///nope", "--config",
                        config, rc=1))  # fmt: skip
    assert line.startswith(
        "git-annex-remote-proxy: target bad not added: node s (file:///nope): directory "
        "/nope is not accessible"
    )
    assert line.endswith(
        f"Nothing was written to {config}: correct the node's URL, or make the node "
        "reachable from this host, and run the command again"
    )
    assert not Path(config).exists()


def test_gateway_nodes_add_and_set_check_new_and_moved_nodes(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    run(tmp_path, "gateway", "--config", str(config), "add", "t", f"a={a.as_uri()}")
    before = config.read_text()
    for args in (
        ("nodes", "add", "t", "b", b.as_uri()),
        ("nodes", "set", "t", "a", f"url={b.as_uri()}"),
        ("add", "t", f"a={a.as_uri()}", f"b={b.as_uri()}"),
    ):
        line = one_line(run(tmp_path, "gateway", "--config", str(config), *args, rc=1))
        assert "target t not changed: node " in line and f"directory {b} is not accessible" in line
        assert config.read_text() == before
    b.mkdir()
    run(tmp_path, "gateway", "--config", str(config), "nodes", "add", "t", "b", b.as_uri())
    # A node only drained (or re-weighted) is not asked: it may be down, which may be why.
    b.rename(tmp_path / "b-gone")
    run(tmp_path, "gateway", "--config", str(config), "nodes", "set", "t", "b", "state=drain")
    assert GatewayConfig.load(config).target("t").node_list()[1].state.value == "drain"


# -- --config before or after the subcommand ------------------------------------------


def test_config_is_accepted_before_or_after_the_subcommand(tmp_path: Path) -> None:
    config = str(tmp_path / "gw.toml")
    disk = tmp_path / "disk"
    disk.mkdir()
    run(tmp_path, "gateway", "--config", config, "add", "t", f"d={disk.as_uri()}")
    (tmp_path / "u").mkdir()
    run(tmp_path, "gateway", "add", "u", f"e={(tmp_path / 'u').as_uri()}", "--config", config)
    assert sorted(GatewayConfig.load(Path(config)).targets) == ["t", "u"]
    listed = run(tmp_path, "gateway", "list", "--json", "--config", config).stdout
    assert [t["name"] for t in json.loads(listed)["targets"]] == ["t", "u"]
    nodes = run(tmp_path, "gateway", "nodes", "list", "t", "--config", config).stdout
    assert f"d     active  1       -     -     -        {disk.as_uri()}" in nodes
    run(tmp_path, "gateway", "nodes", "set", "t", "d", "weight=2", "--config", config)
    run(tmp_path, "gateway", "fsck", "t", "--config", config)
    run(tmp_path, "gateway", "status", "t", "--config", config)
    run(tmp_path, "gateway", "remove", "u", "--config", config)
    assert list(GatewayConfig.load(Path(config)).targets) == ["t"]
    # serve reads it too (before the target, as the proxy remote runs it)
    client = P2PClient(Pipes([PROXY, "serve", "--config", config, "t"]))
    client.handshake()
    assert client.uuid == GatewayConfig.load(Path(config)).target("t").uuid
    client.close()
    # and without it, the default file (which does not exist here) is the one meant
    missing = one_line(run(tmp_path, "gateway", "nodes", "list", "t", rc=1))
    assert "no gateway configuration at" in missing and "--config FILE" in missing
    missing = one_line(run(tmp_path, "serve", "t", rc=1))  # what a proxy remote's user sees
    assert missing.endswith(
        "or name another file with --config FILE (for serve: in the proxy remote's "
        "gatewaycommand=, or in the forced command)"
    )


# -- status -----------------------------------------------------------------------------


def test_gateway_status_reports_nodes_keys_and_bad_copies(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    dirs = [tmp_path / f"n{i}" for i in range(3)]
    for d in dirs:
        d.mkdir()
    (tmp_path / "s").mkdir()
    gw = ("gateway", "--config", str(config))
    run(tmp_path, *gw, "add", "t", *(f"n{i}={d.as_uri()}" for i, d in enumerate(dirs)),
        "--copies", "2", "--mincopies", "1")  # fmt: skip
    run(tmp_path, *gw, "add", "s", f"s={(tmp_path / 's').as_uri()}")
    target = GatewayConfig.load(config).target("t")
    cluster = Cluster([open_node(s) for s in target.specs()], copies=2)
    keys = []
    for i in range(6):
        data = os.urandom(1000 + i)
        keys.append(make_key(data))
        cluster.store_stream(keys[-1], io.BytesIO(data), len(data))
    cluster.close()

    out = run(tmp_path, *gw, "status", "t").stdout
    assert "t: 3 of 3 node(s) reachable, 3 taking new data, copies=2" in out
    assert "t: 6 key(s); 0 short of copies=2, 0 of them below mincopies" in out
    every = run(tmp_path, *gw, "status").stdout  # every target
    assert "t: 3 of 3 node(s) reachable" in every and "s: 1 of 1 node(s) reachable" in every

    # A node goes away: said, keys short of copies counted, exit status 1.
    dirs[0].rename(tmp_path / "gone")
    proc = run(tmp_path, *gw, "status", "t", rc=1)
    assert "n0    NO" in proc.stdout and f"n0: directory {dirs[0]} is not accessible" in proc.stdout
    assert "t: 2 of 3 node(s) reachable" in proc.stdout
    assert f"run git-annex-remote-proxy gateway --config {config} repair t" in proc.stdout
    data = json.loads(run(tmp_path, *gw, "status", "t", "--json", rc=1).stdout)
    assert data["summary"]["target"] == "t" and data["summary"]["reachable"] == 2
    assert data["summary"]["short_of_copies"] > 0
    assert [n["reachable"] for n in data["nodes"]] == [False, True, True]
    everything = json.loads(run(tmp_path, *gw, "status", "--json", rc=1).stdout)
    assert [t["summary"]["target"] for t in everything["targets"]] == ["s", "t"]
    (tmp_path / "gone").rename(dirs[0])

    # A bad copy a read noted: listed, with the command that replaces it.
    BadCopies(bad_copies_path(config, target.uuid)).note(keys[0], "n1", "wrong hash")
    proc = run(tmp_path, *gw, "status", "t", rc=1)
    assert f"bad copy of {keys[0]} on node n1: wrong hash" in proc.stdout
    assert f"run git-annex-remote-proxy gateway --config {config} fsck t --repair" in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["status", "nope"], "unknown target 'nope' (targets here: t)"),
        (["status", "--config", "/nonexistent/gw.toml"], "no gateway configuration at"),
    ],
)
def test_gateway_status_refusals_are_one_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    config = tmp_path / "gw.toml"
    run(tmp_path, "gateway", "--config", str(config), "add", "t", f"d={tmp_path.as_uri()}")
    first = ["--config", str(config)] if "--config" not in args else []
    assert message in one_line(run(tmp_path, "gateway", *first, *args, rc=1))


# -- the proxy remote's errors, in its own terms ------------------------------------------


@pytest.mark.parametrize("client", ["pypi"], indirect=True)
def test_proxy_remote_errors_say_what_to_do_in_its_own_terms(
    tmp_path: Path, repo: Repo, client: Client, sshd_factory: SSHDFactory, ssh_client_key: Path
) -> None:
    """The advice names the proxy remote's parameters (gatewaycommand=), never the
    cluster's (shell=), and what to install on the gateway."""
    ssh_config_for(Path(client.env["HOME"]), {"gw": sshd_factory("gw")}, ssh_client_key)
    config = tmp_path / "gw.toml"
    disk = tmp_path / "disk"
    disk.mkdir()
    run(tmp_path, "gateway", "--config", str(config), "add", "disk", f"d={disk.as_uri()}")

    def init(name: str, *params: str) -> str:
        proc = repo.annex("initremote", name, "type=external", "externaltype=proxy",
                          "encryption=none", *params, check=False)  # fmt: skip
        assert proc.returncode != 0
        return error_line(proc)

    missing = init("a", "gateway=ssh://gw", "target=disk", "gatewaycommand=/nowhere/proxy serve")
    assert missing.endswith(
        "/nowhere/proxy was not found there (bash: line 1: /nowhere/proxy: No such file or "
        "directory); install git-annex-remote-proxy there, or give the command's full path "
        "in gatewaycommand="
    )
    chunked = init("c", f"gateway=annex+ssh://gw{tmp_path}/gw.git", "chunk=1MiB",
                   "target=01234567-0123-0123-0123-0123456789ab")  # fmt: skip
    assert "chunk=1MiB cannot be used through a native git-annex gateway" in chunked
    assert "remove chunk=, or use encryption= with it" in chunked
    for text in (missing, chunked):
        assert "shell=" not in text and "install git-annex or" not in text

    repo.annex("initremote", "ro", "type=external", "externaltype=proxy", "encryption=none",
               "gateway=ssh://gw", "target=disk",
               f"gatewaycommand={PROXY} serve --readonly --config {config}")  # fmt: skip
    add_file(repo, "r.bin", 1000)
    proc = repo.annex("copy", "--to", "ro", "r.bin", check=False)
    assert proc.returncode != 0
    assert ": the gateway refused: this repository is read-only; write access denied" in (
        proc.stderr
    )
    assert "node(s)" not in proc.stderr and "required" not in proc.stderr


def test_start_up_leaves_the_operators_modules_and_the_version_for_later(
    tmp_path: Path,
) -> None:
    """git-annex waits for the remotes' start-up, and a client for ``serve``'s on every
    ssh session: neither loads the operators' command modules or importlib.metadata
    (about 90 ms), which ``--version`` and the ``gateway`` commands still get."""
    script = (
        "import sys\n"
        "import git_annex_remote_proxy.__main__ as proxy, git_annex_remote_cluster.__main__\n"
        "proxy._parser(gateway=False).parse_args(['serve', 'archive'])\n"
        "print(sorted({'importlib.metadata', 'shared.ops.maintaincli', 'shared.ops.nodecli'}"
        " & set(sys.modules)))\n"
    )
    out = subprocess.run(
        [str(VENV_BIN / "python"), "-c", script], capture_output=True, text=True, check=True
    )
    assert out.stdout.splitlines() == ["[]"], out.stderr
    assert run(tmp_path, "--version").stdout.startswith("git-annex-remote-proxy ")
    assert "rebalance" in run(tmp_path, "gateway", "--help").stdout


def test_a_session_over_nodes_without_ssh_does_not_import_paramiko(tmp_path: Path) -> None:
    """Every ssh session to the gateway starts ``serve``, and a stock client waits for
    it: importing paramiko took about a tenth of a second of each start,
    for targets whose nodes are local directories or repositories and need no ssh.
    The real ``serve`` answers a CHECKPRESENT here, and says at exit what it loaded."""
    disk, repo = tmp_path / "disk", tmp_path / "repo"
    disk.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "annex", "init", "-q"], cwd=repo, check=True)
    config = str(tmp_path / "gw.toml")
    run(tmp_path, "gateway", "--config", config, "add", "t", f"d={disk.as_uri()}",
        f"r=annex://{repo}")  # fmt: skip
    key = make_key(b"x" * 10)
    script = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('paramiko' in sys.modules, file=sys.stderr))\n"
        "from git_annex_remote_proxy.__main__ import main\n"
        f"sys.argv = ['git-annex-remote-proxy', 'serve', '--config', {config!r}, 't']\n"
        "sys.exit(main())\n"
    )
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    out = subprocess.run(
        [str(VENV_BIN / "python"), "-c", script],
        input=f"VERSION 1\nCHECKPRESENT {key}\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    lines = out.stdout.splitlines()
    assert lines[0].startswith("AUTH-SUCCESS ") and lines[1:] == ["VERSION 1", "FAILURE"], (
        out.stdout + out.stderr
    )
    assert out.stderr.splitlines()[-1] == "False", out.stderr
