"""One owner per node (issue 18, part 3): two remotes pointed at the same storage by
mistake must not move or remove each other's objects. Through the real commands:
git annex initremote/enableremote, the operators' CLI, the gateway's CLI, stores,
drops and the maintenance commands; plus the layer that enforces it, on a node."""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import VENV_BIN, Client, Repo, make_repo
from node_conformance import fetch, make_key
from test_e2e_file_cluster import init_cluster, objects_in

from git_annex_remote_proxy.config import GatewayConfig
from shared.nodes import open_node
from shared.nodes.url import parse_node

pytestmark = pytest.mark.timeout(300)
CLUSTER = str(VENV_BIN / "git-annex-remote-cluster")
PROXY = str(VENV_BIN / "git-annex-remote-proxy")
MARKER = ".cluster-owner"  # as docs/reference.md documents it
OWNER_A = "6a0c1e52-3d1f-4b5e-9a51-0c3e8f1d2a10"
OWNER_B = "b71f0d3e-95a2-4c07-8e1b-2f4d6a8c0e31"


def owner_of(node_dir: Path) -> str | None:
    """The UUID the node directory's marker names, read as an operator would."""
    marker = node_dir / MARKER
    if not marker.exists():
        return None
    lines = [ln for ln in marker.read_text().splitlines() if ln and not ln.startswith("#")]
    return lines[-1]


def uuid_of(repo: Repo, remote: str) -> str:
    return repo.run("git", "config", f"remote.{remote}.annex-uuid").stdout.strip()


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """git-annex's one-line reason (``git-annex: ...``), or the command's last line."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    return next((ln for ln in lines if ln.startswith("git-annex: ")), lines[-1] if lines else "")


def add_files(repo: Repo, count: int, prefix: str = "f") -> list[str]:
    names = [f"{prefix}{i}.bin" for i in range(count)]
    for i, name in enumerate(names):
        repo.write(name, os.urandom(700 + 131 * i))
    repo.annex("add", *names)
    repo.run("git", "commit", "-qm", prefix)
    return names


# -- initremote and enableremote -----------------------------------------------------


def test_a_second_remote_on_a_node_is_refused_unless_sameas_or_forced(
    repo: Repo, node_dirs: list[Path]
) -> None:
    """The issue's sequence: two cluster remotes over one directory by mistake. The
    second initremote is refused, naming the first; --sameas is the same remote; an
    explicit force=yes takes the node over, is not stored, and from then on the first
    remote neither writes nor removes there (reads go on)."""
    a_nodes = f"n1={node_dirs[0].as_uri()} n2={node_dirs[1].as_uri()}"
    init_cluster(repo, a_nodes, "encryption=none", name="a")
    a = uuid_of(repo, "a")
    stored = add_files(repo, 3)
    repo.annex("copy", "--to", "a", *stored)

    b_nodes = f"m1={node_dirs[1].as_uri()} m2={node_dirs[2].as_uri()}"
    refused = init_cluster(repo, b_nodes, "encryption=none", name="b", check=False)
    assert refused.returncode != 0
    line = error_line(refused)
    assert f"node m1 ({node_dirs[1].as_uri()}) belongs to remote a (UUID {a})" in line, line
    assert "--sameas" in line and "force=yes" in line
    assert "name=b " not in repo.run("git", "show", "git-annex:remote.log").stdout
    assert owner_of(node_dirs[0]) == a and owner_of(node_dirs[1]) == a
    assert owner_of(node_dirs[2]) is None  # a refused remote claims nothing

    # The same remote under another name: git-annex gives it a's UUID.
    repo.annex(
        "initremote", "c", "--sameas=a", "type=external", "externaltype=cluster",
        f"nodes={a_nodes}",
    )  # fmt: skip
    assert owner_of(node_dirs[0]) == a
    # (and the operators' CLI knows it by that name, as the same remote)
    listed = json.loads(repo.run(CLUSTER, "nodes", "list", "c", "--json").stdout)
    assert [n["name"] for n in listed] == ["n1", "n2"]

    init_cluster(repo, b_nodes, "encryption=none", "force=yes", name="b")
    b = uuid_of(repo, "b")
    assert owner_of(node_dirs[1]) == b and owner_of(node_dirs[2]) == b
    remote_log = repo.run("git", "show", "git-annex:remote.log").stdout
    assert "force=yes" not in remote_log  # an instruction, never configuration

    # a no longer writes or removes on n2 (now b's); what it holds there still reads.
    more = add_files(repo, 1, prefix="g")
    copy = repo.annex("copy", "--to", "a", *more, check=False)
    assert copy.returncode != 0
    assert "node n2: belongs to remote b" in copy.stdout + copy.stderr
    assert "enableremote a force=yes" in copy.stdout + copy.stderr
    before = sorted(p.name for p in objects_in(node_dirs[1]))
    drop = repo.annex("drop", "--from", "a", stored[0], check=False)
    assert drop.returncode != 0 and "node n2: belongs to remote b" in drop.stdout + drop.stderr
    assert sorted(p.name for p in objects_in(node_dirs[1])) == before
    repo.annex("drop", "--force", stored[1])
    repo.annex("get", "--from", "a", stored[1])


def test_nodes_without_a_marker_are_claimed_by_their_first_store(
    tmp_path: Path, pypi_client: Client, node_dirs: list[Path]
) -> None:
    """Nodes written before markers existed (objects, no marker) and empty ones are
    claimed by their remote's first store; from then on another remote is refused."""
    repo = make_repo(tmp_path / "repo", pypi_client)
    init_cluster(repo, node_dirs[:2], "encryption=none", "copies=2")
    repo.annex("copy", "--to", "cl", *add_files(repo, 2))
    for d in node_dirs[:2]:
        (d / MARKER).unlink(missing_ok=True)  # as an older version left them
    assert objects_in(node_dirs[0]) and owner_of(node_dirs[0]) is None
    repo.annex("copy", "--to", "cl", *add_files(repo, 1, prefix="g"))
    cl = uuid_of(repo, "cl")
    other = init_cluster(repo, node_dirs[:1], "encryption=none", name="other", check=False)
    assert other.returncode != 0 and f"belongs to remote cl (UUID {cl})" in error_line(other)
    assert owner_of(node_dirs[0]) == cl and owner_of(node_dirs[1]) == cl


# -- the operators' CLI and the gateway ------------------------------------------------


def test_nodes_add_refuses_another_remotes_node_unless_forced(
    tmp_path: Path, pypi_client: Client, node_dirs: list[Path]
) -> None:
    repo = make_repo(tmp_path / "repo", pypi_client)
    init_cluster(repo, node_dirs[:1], "encryption=none", name="a")
    init_cluster(repo, node_dirs[1:2], "encryption=none", name="b")
    b = uuid_of(repo, "b")
    before = repo.run("git", "show", "git-annex:remote.log").stdout
    proc = repo.run(CLUSTER, "nodes", "add", "a", "x", node_dirs[1].as_uri(), check=False)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"node x ({node_dirs[1].as_uri()}) belongs to remote b (UUID {b})" in proc.stderr
    assert "--force" in proc.stderr
    assert repo.run("git", "show", "git-annex:remote.log").stdout == before
    repo.run(CLUSTER, "nodes", "add", "a", "x", node_dirs[1].as_uri(), "--force")
    assert owner_of(node_dirs[1]) == uuid_of(repo, "a")
    assert "force=yes" not in repo.run("git", "show", "git-annex:remote.log").stdout


def test_a_gateway_target_and_a_cluster_remote_sharing_a_directory(
    tmp_path: Path, pypi_client: Client, node_dirs: list[Path]
) -> None:
    """Either way round, the second is refused, naming the first; two targets of one
    gateway too; --force takes the node over, and the gateway then leaves the other's
    node alone."""
    config = tmp_path / "gw.toml"

    def gw(*args: str, rc: int = 0) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [PROXY, "gateway", "--config", str(config), *args], capture_output=True, text=True
        )
        assert proc.returncode == rc, proc.stdout + proc.stderr
        return proc

    repo = make_repo(tmp_path / "repo", pypi_client)
    init_cluster(repo, node_dirs[:1], "encryption=none", name="cl")
    cl = uuid_of(repo, "cl")
    refused = gw("add", "t", f"d={node_dirs[0].as_uri()}", rc=1)
    assert f"node d ({node_dirs[0].as_uri()}) belongs to UUID {cl}" in refused.stderr
    assert not config.exists()  # nothing written

    gw("add", "t", f"d={node_dirs[1].as_uri()}")
    t = GatewayConfig.load(config).target("t").uuid
    assert owner_of(node_dirs[1]) == t
    other = init_cluster(repo, node_dirs[1:2], "encryption=none", name="other", check=False)
    assert other.returncode != 0 and f"belongs to UUID {t}" in error_line(other)
    second = gw("add", "u", f"e={node_dirs[1].as_uri()}", rc=1)
    assert f"belongs to target t of this gateway (UUID {t})" in second.stderr
    gw("add", "u", f"e={node_dirs[2].as_uri()}")
    refused = gw("nodes", "add", "u", "f", node_dirs[1].as_uri(), rc=1)
    assert "belongs to target t" in refused.stderr and "--force" in refused.stderr

    gw("nodes", "add", "u", "f", node_dirs[1].as_uri(), "--force")
    u = GatewayConfig.load(config).target("u").uuid
    assert owner_of(node_dirs[1]) == u
    # t's node is u's now: t's maintenance leaves it alone, and says why
    fsck = gw("fsck", "t", rc=1)
    assert f"node d not checked: it belongs to target u of this gateway (UUID {u})" in fsck.stdout
    refused = gw("rebalance", "t", "--apply", rc=1)
    assert "cannot rebalance t: node d belongs to target u" in refused.stderr


# -- maintenance ---------------------------------------------------------------------


def test_maintenance_leaves_another_remotes_node_alone(
    tmp_path: Path, pypi_client: Client, node_dirs: list[Path]
) -> None:
    """The issue's sequence: remotes a and b share node n3 from before markers existed,
    and b's first use claimed it. rebalance, repair and fsck --repair of remote a then
    move, remove or replace nothing there, and each says which node and whose it is."""
    repo = make_repo(tmp_path / "repo", pypi_client)
    init_cluster(repo, node_dirs, "encryption=none", "copies=2", name="a")
    repo.annex("copy", "--to", "a", *add_files(repo, 12))
    for d in node_dirs:
        (d / MARKER).unlink(missing_ok=True)  # both remotes set up before markers
    init_cluster(repo, f"n3={node_dirs[2].as_uri()}", "encryption=none", name="b")
    repo.annex("copy", "--to", "b", *add_files(repo, 2, prefix="b"))
    b = uuid_of(repo, "b")
    theirs = sorted(p.name for p in objects_in(node_dirs[2]))
    assert theirs
    (node_dirs[2] / "foreign.txt").write_text("b's own")
    first = objects_in(node_dirs[2])[0]  # a corrupt copy there is not a's to replace
    first.chmod(0o644)
    first.write_bytes(b"x" * first.stat().st_size)

    proc = repo.run(CLUSTER, "rebalance", "a", "--apply", check=False)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"node n3 belongs to remote b (UUID {b}), not to a" in proc.stderr

    repaired = json.loads(repo.run(CLUSTER, "repair", "a", "--json", check=False).stdout)
    assert f"belongs to remote b (UUID {b})" in repaired["unlisted"]["n3"]
    assert repaired["result"]["copies_added"] > 0  # n3's copies no longer count for a
    assert not any("n3" in m for m in repaired["result"]["failed"].values())

    fsck = repo.run(CLUSTER, "fsck", "a", "--repair", check=False)
    assert "node n3 not checked: it belongs to remote b" in fsck.stdout
    assert sorted(p.name for p in objects_in(node_dirs[2])) == theirs
    assert first.read_bytes().startswith(b"xxxx")  # left as b has it
    assert (node_dirs[2] / "foreign.txt").read_text() == "b's own"
    status = repo.run(CLUSTER, "status", "a", "--json", check=False)
    n3 = next(n for n in json.loads(status.stdout)["nodes"] if n["name"] == "n3")
    assert n3["owner"] == b and "belongs to remote b" in n3["error"]


# -- the layer, on a node --------------------------------------------------------------


def test_owned_node_refuses_writes_and_removals_on_another_owners_storage(
    tmp_path: Path,
) -> None:
    from shared.errors import NotOwner
    from shared.nodes import Ownership
    from shared.nodes.owner import MARKER as marker

    assert marker == MARKER
    spec = parse_node(f"n={tmp_path.as_uri()}")
    data = b"kept for its owner"
    key = make_key(data)
    theirs = open_node(spec, ownership=Ownership(OWNER_B))
    theirs.store(key, io.BytesIO(data), len(data))  # the first write claims it
    assert owner_of(tmp_path) == OWNER_B

    ours = open_node(spec, ownership=Ownership(OWNER_A, remedy="do this"))
    for attempt in (
        lambda: ours.store(make_key(b"new"), io.BytesIO(b"new"), 3),
        lambda: ours.overwrite(key, io.BytesIO(data), len(data)),
        lambda: ours.remove(key),
    ):
        with pytest.raises(NotOwner) as refused:
            attempt()
        assert refused.value.owner == OWNER_B
        assert str(refused.value) == (
            f"node n: belongs to UUID {OWNER_B}, not to this one (UUID {OWNER_A}): "
            "nothing is written to or removed from it here; do this"
        )
    # Its objects are no copies of ours: presence cannot be told (one physical copy
    # must not count for two remotes), while reads of the content go on.
    with pytest.raises(NotOwner, match="does not count as this remote's copy"):
        ours.present(key)
    assert fetch(ours, key) == data

    (tmp_path / MARKER).write_text("garbage\n")
    with pytest.raises(NotOwner, match="does not name an owner"):
        open_node(spec, ownership=Ownership(OWNER_B)).remove(key)
    assert theirs.present(key) == len(data)
