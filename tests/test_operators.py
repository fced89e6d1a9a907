"""The operators' commands through the real command line and real git-annex: editing the
node list, retiring nodes safely, status, the gateway's equivalents, and the operator
guide's script reaching a second clone."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from conftest import VENV_BIN, Client, Repo, make_repo
from test_e2e_file_cluster import init_cluster, objects_in

from shared.nodes.url import NodeState
from shared.ops.nodeedit import import_nodes

pytestmark = pytest.mark.timeout(600)
CLUSTER = str(VENV_BIN / "git-annex-remote-cluster")
PROXY = str(VENV_BIN / "git-annex-remote-proxy")
DOCS = Path(__file__).resolve().parent.parent / "docs"


def cli(repo: Repo, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return repo.run(CLUSTER, *args, check=check)


def nodes_json(repo: Repo, remote: str = "cl") -> list[dict[str, object]]:
    out: list[dict[str, object]] = json.loads(cli(repo, "nodes", "list", remote, "--json").stdout)
    return out


@pytest.fixture
def cluster(repo: Repo, node_dirs: list[Path]) -> Repo:
    init_cluster(repo, node_dirs[:2], "encryption=none", "copies=1")
    return repo


def test_add_set_list_export_import(cluster: Repo, node_dirs: list[Path], tmp_path: Path) -> None:
    out = cli(cluster, "nodes", "add", "cl", "n3", node_dirs[2].as_uri(), "--zone", "z1",
              "--weight", "2", "--cost", "150").stdout  # fmt: skip
    assert "added node n3" in out
    nodes = {n["name"]: n for n in nodes_json(cluster)}
    assert nodes["n3"]["zone"] == "z1" and nodes["n3"]["weight"] == 2.0
    assert nodes["n3"]["cost"] == 150
    cli(cluster, "nodes", "set", "cl", "n1", "state=drain", "zone=z2")
    cli(cluster, "nodes", "set", "cl", "n3", "zone=", "cost=")
    nodes = {n["name"]: n for n in nodes_json(cluster)}
    assert nodes["n1"]["state"] == "drain" and nodes["n1"]["zone"] == "z2"
    assert nodes["n3"]["zone"] is None and nodes["n3"]["cost"] is None
    table = cli(cluster, "nodes", "list", "cl").stdout
    assert re.search(r"n1\s+drain\s+1\s+z2", table)
    # export / import round trip, in both formats
    for fmt in ("text", "toml"):
        exported = cli(cluster, "nodes", "export", "cl", "--format", fmt).stdout
        path = tmp_path / f"nodes.{fmt}"
        path.write_text(exported)
        assert [s.name for s in import_nodes(exported, fmt)] == ["n1", "n2", "n3"]
        cli(cluster, "nodes", "import", "cl", str(path))
        assert {n["name"]: n for n in nodes_json(cluster)} == nodes
    # The stored configuration is what git-annex uses: a drained node takes no data.
    cluster.write("f.bin", b"x" * 1000)
    cluster.annex("add", "f.bin")
    cluster.annex("copy", "--to", "cl", "f.bin")
    assert objects_in(node_dirs[0]) == []


REFUSALS = [
    (["nodes", "add", "cl", "n1", "file:///x"], "already a node called 'n1'"),
    (["nodes", "add", "cl", "bad name", "file:///x"], "node name 'bad name' is invalid"),
    (["nodes", "add", "cl", "n9", "nope://x"], "unknown URL scheme"),
    (
        ["nodes", "add", "cl", "n9", "file:///does/not/exist"],
        "git annex enableremote cl refused the change: node n9: directory /does/not/exist "
        "is not accessible",
    ),
    (["nodes", "add", "cl", "n9", "/srv/disk9"], "a path, not a URL: write file:///srv/disk9"),
    (
        ["nodes", "add", "cl", "n9", "file:///srv/a,n10=file:///srv/b"],
        "separate nodes with spaces, not commas",
    ),
    (["nodes", "add", "cl", "n9", "store9:/srv/a"], "write sftp://store9/srv/a"),
    (["nodes", "set", "cl", "n1", "state=gone"], "state must be active, readonly or drain"),
    (["nodes", "set", "cl", "n1", "weight=heavy"], "weight a number"),
    (["nodes", "set", "cl", "n1", "name=n7"], "cannot change"),
    (["nodes", "set", "cl", "zz", "state=drain"], "no node called 'zz'"),
    (["nodes", "list", "nosuch"], "no special remote called 'nosuch'"),
]


def test_bad_changes_are_refused_in_one_line_and_nothing_is_written(cluster: Repo) -> None:
    before = cluster.run("git", "cat-file", "blob", "git-annex:remote.log").stdout
    for args, message in REFUSALS:
        proc = cli(cluster, *args, check=False)
        assert proc.returncode == 1, (args, proc)
        assert message in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert cluster.run("git", "cat-file", "blob", "git-annex:remote.log").stdout == before
    # The same hints where git-annex shows the remote's reason: a node list with commas.
    nodes = "a=file:///srv/a, b=file:///srv/b"
    proc = init_cluster(cluster, nodes, "encryption=none", name="c2", check=False)
    assert proc.returncode != 0 and "separate nodes with spaces, not commas" in proc.stderr


def test_remove_refuses_a_node_with_content_unless_forced(
    cluster: Repo, node_dirs: list[Path]
) -> None:
    cluster.write("f.bin", b"y" * 5000)
    cluster.annex("add", "f.bin")
    cluster.annex("copy", "--to", "cl", "f.bin")
    holder = "n1" if objects_in(node_dirs[0]) else "n2"
    empty = "n2" if holder == "n1" else "n1"
    proc = cli(cluster, "nodes", "remove", "cl", holder, check=False)
    assert proc.returncode == 1 and "still holds content" in proc.stderr
    assert "state=drain" in proc.stderr
    assert "removed node" in cli(cluster, "nodes", "remove", "cl", empty).stdout
    assert [n["name"] for n in nodes_json(cluster)] == [holder]
    proc = cli(cluster, "nodes", "remove", "cl", holder, "--force", check=False)
    assert proc.returncode == 1 and "at least one node" in proc.stderr


def test_changing_the_layout_of_a_node_with_content_is_refused_unless_forced(
    cluster: Repo, node_dirs: list[Path]
) -> None:
    """chunk=/encryption=/mac= decide the objects' names: changed on a node that holds
    some, git-annex would be told they are gone, and a drop would leave them in place."""
    cluster.write("f.bin", b"z" * 5000)
    cluster.annex("add", "f.bin")
    cluster.annex("copy", "--to", "cl", "f.bin")
    holder = "n1" if objects_in(node_dirs[0]) else "n2"
    empty = "n2" if holder == "n1" else "n1"
    before = cluster.run("git", "cat-file", "blob", "git-annex:remote.log").stdout
    proc = cli(cluster, "nodes", "set", "cl", holder, "chunk=1MiB", check=False)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert f"changing chunk= of node {holder} would hide what it holds" in proc.stderr
    assert cluster.run("git", "cat-file", "blob", "git-annex:remote.log").stdout == before
    assert "changed node" in cli(cluster, "nodes", "set", "cl", empty, "chunk=1MiB").stdout
    forced = cli(cluster, "nodes", "set", "cl", holder, "chunk=1MiB", "--force")
    assert "changed node" in forced.stdout


def test_status_reports_every_node_and_exits_1_when_one_is_down(
    cluster: Repo, node_dirs: list[Path]
) -> None:
    proc = cli(cluster, "status", "cl")
    assert "2 of 2 node(s) reachable" in proc.stdout
    report = json.loads(cli(cluster, "status", "cl", "--json").stdout)
    assert report["summary"]["reachable"] == 2
    node = report["nodes"][0]
    assert node["reachable"] is True and node["latency_ms"] is not None
    assert node["free"] > 0 and node["total"] >= node["free"]
    node_dirs[1].rename(node_dirs[1].with_name("gone"))
    proc = cli(cluster, "status", "cl", check=False)
    assert proc.returncode == 1
    assert "1 of 2 node(s) reachable" in proc.stdout
    assert re.search(r"n2\s+NO", proc.stdout) and "n2: directory" in proc.stdout


def test_status_counts_keys_short_of_copies_and_bad_copies_reads_found(
    repo: Repo, node_dirs: list[Path]
) -> None:
    """A node that lost a key, and a node whose copy a get found rotten: status says so,
    names what to run, and exits 1 until repair and fsck --repair have run."""
    init_cluster(repo, node_dirs[:2], "encryption=none", "copies=2", "mincopies=1")
    data = bytes(range(256)) * 40
    repo.write("f.bin", data)
    repo.annex("add", "f.bin")
    repo.annex("copy", "--to", "cl", "f.bin")
    key = repo.lookupkey("f.bin")
    report = json.loads(cli(repo, "status", "cl", "--json").stdout)
    assert report["summary"]["keys"] == 1 and report["summary"]["short_of_copies"] == 0
    # Rot n1's copy (same size) and read the file back: n2's copy is used, n1's noted.
    rotten = next(node_dirs[0].rglob(f"{key}/{key}"))
    rotten.chmod(0o644)
    rotten.write_bytes(b"x" * len(data))
    repo.annex("drop", "f.bin")
    got = repo.annex("get", "f.bin")
    assert (repo.path / "f.bin").read_bytes() == data
    assert "bad copy" in got.stdout + got.stderr
    proc = cli(repo, "status", "cl", check=False)
    assert proc.returncode == 1
    assert "bad copy of" in proc.stdout and "fsck cl --repair" in proc.stdout
    cli(repo, "fsck", "cl", "--repair", check=False)
    assert rotten.read_bytes() == data
    assert cli(repo, "status", "cl").returncode == 0
    # A lost copy: short of copies until repair.
    gone = next(node_dirs[1].rglob(f"{key}/{key}"))
    gone.chmod(0o644)
    gone.unlink()
    proc = cli(repo, "status", "cl", check=False)
    assert proc.returncode == 1 and "1 short of copies=2" in proc.stdout
    assert "repair cl" in proc.stdout
    cli(repo, "repair", "cl")
    assert cli(repo, "status", "cl").returncode == 0


def test_copy_with_a_node_down_says_what_to_do(tmp_path: Path, pypi_client: Client) -> None:
    """A node that cannot be asked makes the key's presence unknown, so git annex copy
    fails before it stores. The failure says what helps: bring the node back, or,
    where mincopies= reachable nodes take new data, copy --fast and repair later;
    where they do not, that --fast would fail too."""
    repo = make_repo(tmp_path / "repo", pypi_client)
    dirs = [tmp_path / n for n in ("a1", "a2", "b1", "b2")]
    for d in dirs:
        d.mkdir()
    init_cluster(repo, dirs[:2], "encryption=none", "copies=2", "mincopies=1", name="lax")
    init_cluster(repo, dirs[2:], "encryption=none", name="strict")  # mincopies=copies=2
    repo.write("f.bin", b"f" * 3000)
    repo.annex("add", "f.bin")
    for d in (dirs[1], dirs[3]):
        d.rename(d.with_name(d.name + "-away"))
    lax = repo.annex("copy", "--to", "lax", "f.bin", check=False)
    assert lax.returncode != 0
    assert (
        "could not check node n2: directory" in lax.stdout
        and "bring node n2 back and run this again, or store on the reachable nodes now "
        "with git annex copy --fast --to lax (it needs mincopies=1 of them; "
        "git-annex-remote-cluster repair lax gives node n2 its copies once it is back)"
        in lax.stdout
    ), lax.stdout + lax.stderr
    strict = repo.annex("copy", "--to", "strict", "f.bin", check=False)
    assert strict.returncode != 0
    assert (
        "bring node n2 back and run this again (git annex copy --fast would fail too: a "
        "store needs mincopies=2 nodes that take new data, and 1 can be reached; git annex "
        "enableremote strict mincopies=1 lowers it)" in strict.stdout
    ), strict.stdout + strict.stderr
    fast = repo.annex("copy", "--fast", "--to", "strict", "f.bin", check=False)
    assert fast.returncode != 0 and "fix node n2 and run this again" in fast.stderr
    # What the hint says works: --fast where mincopies allows, then repair.
    repo.annex("copy", "--fast", "--to", "lax", "f.bin")
    dirs[1].with_name("a2-away").rename(dirs[1])
    cli(repo, "repair", "lax")
    assert objects_in(dirs[0]) and objects_in(dirs[1])


def test_operator_guide_script_reaches_a_second_clone(
    tmp_path: Path, client: Client, node_dirs: list[Path]
) -> None:
    """The guide's script, run as written: a node added in clone A is used in clone B
    after git annex sync."""
    text = (DOCS / "operators.md").read_text()
    script = re.search(r"<!-- script: add-node -->\n```sh\n(.*?)```", text, re.S)
    assert script, "the operator guide lost its script"
    origin = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", str(origin)], check=True, env=client.env)
    a = make_repo(tmp_path / "a", client)
    a.run("git", "remote", "add", "origin", str(origin))
    a.write("README", b"hello\n")
    a.run("git", "add", "README")
    a.run("git", "commit", "-qm", "start")
    init_cluster(a, node_dirs[:2], "encryption=none", "copies=2", name="storage")
    a.annex("sync", "--quiet")
    b_path = tmp_path / "b"
    a.run("git", "clone", "-q", str(origin), str(b_path))
    b = Repo(b_path, client)
    b.annex("init", "-q", "b")
    b.annex("enableremote", "storage")
    accept_remote(b, "storage")
    proc = subprocess.run(
        ["bash", "-c", script.group(1)],
        env={
            **client.env,
            "CLONE_A": str(a.path),
            "CLONE_B": str(b.path),
            "NEW_NODE": node_dirs[2].as_uri(),
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "n4" in proc.stdout and "3 of 3 node(s) reachable" in proc.stdout
    # Clone B stores with the new list: n4 (zone rack-b) is one of the two copies'
    # zones for every key, as it is the only node with a zone.
    for i in range(6):
        b.write(f"f{i}", bytes([i]) * 1000)
    b.annex("add", ".")
    b.annex("copy", "--to", "storage", ".")
    assert len(objects_in(node_dirs[2])) > 0
    a_node_added_while_b_has_not_accepted_it(a, b, tmp_path / "n5")


def a_node_added_while_b_has_not_accepted_it(a: Repo, b: Repo, new_dir: Path) -> None:
    """Clone A adds a node; clone B receives the change but has not accepted it. Recent
    git-annex keeps using the old node list in B (it would store nothing on n5), and so
    do the operators' commands there, saying how to accept it; every command that
    writes the node list or moves content by it waits for that. Old git-annex has no
    verifyremote and uses the newest list at once, and so do the commands."""
    new_dir.mkdir()
    cli(a, "nodes", "add", "storage", "n5", new_dir.as_uri())
    a.annex("sync", "--quiet")
    b.annex("sync", "--no-push", "--quiet")
    verifies = b.client.name == "pypi"  # Debian's 10.20230126 has no verifyremote
    listed = cli(b, "nodes", "list", "storage", "--json")
    names = [n["name"] for n in json.loads(listed.stdout)]
    status = cli(b, "status", "storage")
    plan = json.loads(cli(b, "rebalance", "storage", "--dry-run", "--json").stdout)
    if not verifies:
        assert names == ["n1", "n2", "n4", "n5"] and listed.stderr == ""
        assert "4 of 4 node(s) reachable" in status.stdout
        assert plan["plan"]["nodes"]["n5"]["keys_in"] > 0
        return
    hint = (
        "storage: this clone uses the configuration it accepted; a newer one (node n5 "
        "added) is not accepted here yet: check it with git annex verifyremote storage"
    )
    assert names == ["n1", "n2", "n4"] and hint in listed.stderr
    assert len(listed.stderr.strip().splitlines()) == 1
    assert "3 of 3 node(s) reachable" in status.stdout and hint in status.stderr
    assert "n5" not in plan["plan"]["nodes"] and plan["plan"]["keys_to_move"] == 0
    before = b.run("git", "cat-file", "blob", "git-annex:remote.log").stdout
    for args in (
        ("nodes", "set", "storage", "n1", "weight=2"),
        ("rebalance", "storage", "--apply"),
    ):
        refused = cli(b, *args, check=False)
        assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
        assert "has not accepted the newer configuration of storage (node n5 added)" in (
            refused.stderr
        )
        assert "git annex verifyremote storage" in refused.stderr
    assert b.run("git", "cat-file", "blob", "git-annex:remote.log").stdout == before
    accept_remote(b, "storage")
    listed = cli(b, "nodes", "list", "storage", "--json")
    assert [n["name"] for n in json.loads(listed.stdout)] == ["n1", "n2", "n4", "n5"]
    assert listed.stderr == ""


def accept_remote(repo: Repo, name: str) -> None:
    """What a user does after checking the configuration git-annex shows (recent
    git-annex only: older ones have no verifyremote)."""
    shown = repo.annex("verifyremote", name, check=False)
    m = re.search(rf"verifyremote {name} --safe (\S+)", shown.stdout + shown.stderr)
    if m:
        repo.annex("verifyremote", name, "--safe", m.group(1))


def test_gateway_nodes_commands(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    dirs = [tmp_path / f"d{i}" for i in range(3)]
    for d in dirs:
        d.mkdir()

    def gw(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PROXY, "gateway", "--config", str(config), *args],
            capture_output=True,
            text=True,
            check=check,
        )

    gw("add", "t", f"a={dirs[0].as_uri()}", "--copies", "1")
    gw("nodes", "add", "t", "b", dirs[1].as_uri(), "--zone", "z")
    gw("nodes", "set", "t", "a", "state=readonly")
    listed = json.loads(gw("nodes", "list", "t", "--json").stdout)
    assert [(n["name"], n["state"], n["zone"]) for n in listed] == [
        ("a", "readonly", None),
        ("b", "active", "z"),
    ]
    (dirs[1] / "aa1" / "bb2" / "K" / "K").parent.mkdir(parents=True)
    (dirs[1] / "aa1" / "bb2" / "K" / "K").write_bytes(b"data")
    proc = gw("nodes", "remove", "t", "b", check=False)
    assert proc.returncode == 1 and "still holds content" in proc.stderr
    gw("nodes", "remove", "t", "a")
    from git_annex_remote_proxy.config import GatewayConfig

    target = GatewayConfig.load(config).target("t")
    assert [s.name for s in target.node_list()] == ["b"]
    assert target.node_list()[0].state is NodeState.ACTIVE
    assert target.copies == 1
