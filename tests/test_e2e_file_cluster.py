"""The cluster remote over file:// nodes, driven by real git-annex commands.

Runs with the current git-annex (PyPI) and the old Debian one (10.20230126).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import Client, Repo, make_repo, nodes_param

pytestmark = pytest.mark.timeout(900)


def summary_of_testremote(output: str) -> tuple[int, int]:
    """(passed, total) from tasty's closing line."""
    m = re.search(r"All (\d+) tests passed", output)
    if m:
        return int(m.group(1)), int(m.group(1))
    m = re.search(r"(\d+) out of (\d+) tests failed", output)
    if m:
        return int(m.group(2)) - int(m.group(1)), int(m.group(2))
    raise AssertionError(f"no testremote summary in output:\n{output[-3000:]}")


def init_cluster(
    repo: Repo, dirs: list[Path] | str, *extra: str, name: str = "cl", check: bool = True
) -> subprocess.CompletedProcess[str]:
    """initremote a cluster over ``dirs`` (or a literal nodes= value)."""
    nodes = dirs if isinstance(dirs, str) else nodes_param(dirs)
    return repo.annex(
        "initremote",
        name,
        "type=external",
        "externaltype=cluster",
        f"nodes={nodes}",
        *extra,
        check=check,
    )


def objects_in(node: Path) -> list[Path]:
    """The objects in a node directory: not its tmp/, not its owner marker (at the root)."""
    return [
        p
        for p in node.rglob("*")
        if p.is_file() and p.parent != node and "tmp" not in p.relative_to(node).parts
    ]


@pytest.mark.parametrize(
    "crypto",
    [
        pytest.param(("encryption=none",), id="plain"),
        pytest.param(("encryption=shared", "chunk=1MiB"), id="shared-chunked"),
    ],
)
def test_testremote_fast(repo: Repo, node_dirs: list[Path], crypto: tuple[str, ...]) -> None:
    init_cluster(repo, node_dirs, "copies=2", *crypto)
    proc = repo.annex("testremote", "cl", "--fast", check=False, timeout=900)
    passed, total = summary_of_testremote(proc.stdout + proc.stderr)
    assert proc.returncode == 0 and passed == total, proc.stdout[-5000:] + proc.stderr[-5000:]
    assert total >= 100
    # testremote removes what it stored: nothing is left behind, not even temp files.
    for d in node_dirs:
        assert objects_in(d) == []
        assert not any((d / "tmp").glob("*")) if (d / "tmp").exists() else True


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_testremote_full(repo: Repo, node_dirs: list[Path]) -> None:
    """The full matrix (573 cases): testremote itself varies encryption (none, shared)
    and chunk size (none, size/1000, size/100, size) around the remote's config."""
    init_cluster(repo, node_dirs, "copies=2", "encryption=none")
    proc = repo.annex("testremote", "cl", check=False, timeout=3600)
    passed, total = summary_of_testremote(proc.stdout + proc.stderr)
    assert proc.returncode == 0 and passed == total, proc.stdout[-5000:] + proc.stderr[-5000:]


def test_copy_whereis_info_drop_get(repo: Repo, node_dirs: list[Path]) -> None:
    init_cluster(repo, node_dirs, "encryption=none", "copies=2")
    data = {f"f{i}.bin": os.urandom(50_000 + i) for i in range(6)}
    for name, content in data.items():
        repo.write(name, content)
    repo.annex("add", ".")
    repo.run("git", "commit", "-qm", "data")
    repo.annex("copy", "--to", "cl", ".")
    # Each key is on exactly `copies` nodes.
    assert sum(len(objects_in(d)) for d in node_dirs) == 2 * len(data)
    whereis = repo.annex("whereis", "f0.bin").stdout
    assert "cl" in whereis
    info = repo.annex("info", "cl").stdout
    for i, d in enumerate(node_dirs, 1):
        assert f"node n{i}" in info and str(d) in info
    repo.annex("drop", ".")
    repo.annex("get", ".")
    for name, content in data.items():
        assert (repo.path / name).read_bytes() == content
    repo.annex("fsck", ".")
    repo.annex("drop", "--from", "cl", ".")
    assert all(objects_in(d) == [] for d in node_dirs)


def test_lost_node_copy_get_and_drop(repo: Repo, node_dirs: list[Path]) -> None:
    """A node that disappears: copy still meets mincopies, get falls over, drop names it."""
    init_cluster(repo, node_dirs, "encryption=none", "copies=2", "mincopies=1")
    repo.write("a.bin", os.urandom(200_000))
    repo.write("b.bin", os.urandom(200_000))
    repo.annex("add", "a.bin")
    repo.run("git", "commit", "-qm", "a")
    repo.annex("copy", "--to", "cl", "a.bin")

    lost = node_dirs[0]
    shutil.rmtree(lost)

    # get: every key has a second copy somewhere, so it comes back.
    repo.annex("drop", "a.bin")
    repo.annex("get", "a.bin")

    # Plain copy asks CHECKPRESENT first; with n1 gone nobody can say b.bin is absent
    # from the cluster, so git-annex stops (UNKNOWN is never turned into "absent").
    repo.annex("add", "b.bin")
    repo.run("git", "commit", "-qm", "b")
    proc = repo.annex("copy", "--to", "cl", "b.bin", check=False)
    assert proc.returncode != 0 and "node n1" in proc.stdout + proc.stderr
    # copy --fast trusts the location log and stores: mincopies=1 is met, n1 is named.
    proc = repo.annex("copy", "--fast", "--to", "cl", "b.bin")
    key_b = repo.lookupkey("b.bin")
    holders = [d for d in node_dirs[1:] if objects_in(d)]
    assert holders, "b.bin should be on a surviving node"
    # If the lost node was among b's chosen nodes, the user is told which node failed.
    if sum(1 for d in node_dirs[1:] for p in objects_in(d) if p.name == key_b) < 2:
        assert "node n1" in proc.stdout + proc.stderr

    # drop from the cluster cannot confirm removal from the lost node: it fails and says so.
    proc = repo.annex("drop", "--from", "cl", "b.bin", check=False)
    assert proc.returncode != 0
    assert "n1" in proc.stdout + proc.stderr

    # Once the node is back (here: replaced by an empty disk), drop succeeds.
    lost.mkdir()
    repo.annex("drop", "--from", "cl", "b.bin")


def test_checkpresent_unknown_when_only_holder_is_gone(repo: Repo, node_dirs: list[Path]) -> None:
    init_cluster(repo, node_dirs, "encryption=none", "copies=1")
    repo.write("x.bin", os.urandom(10_000))
    repo.annex("add", "x.bin")
    repo.run("git", "commit", "-qm", "x")
    repo.annex("copy", "--to", "cl", "x.bin")
    holder = next(d for d in node_dirs if objects_in(d))
    moved = holder.with_name(holder.name + ".offline")
    holder.rename(moved)
    # fsck --fast --from checks presence: it must not conclude the content is gone.
    proc = repo.annex("fsck", "--fast", "--from", "cl", "x.bin", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "not accessible" in out or "could not check" in out
    holder_back = moved.rename(holder)
    del holder_back
    repo.annex("fsck", "--fast", "--from", "cl", "x.bin")
    assert "cl" in repo.annex("whereis", "x.bin").stdout


def test_store_fails_below_mincopies(repo: Repo, node_dirs: list[Path]) -> None:
    init_cluster(repo, node_dirs, "encryption=none", "copies=3")
    shutil.rmtree(node_dirs[2])
    repo.write("y.bin", os.urandom(10_000))
    repo.annex("add", "y.bin")
    repo.run("git", "commit", "-qm", "y")
    proc = repo.annex("copy", "--fast", "--to", "cl", "y.bin", check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "2 node(s)" in out and "3 required" in out and "node n3" in out


def test_initremote_rejects_bad_config(repo: Repo, node_dirs: list[Path], tmp_path: Path) -> None:
    def fails(nodes: list[Path] | str, *extra: str) -> str:
        proc = init_cluster(repo, nodes, "encryption=none", *extra, name="bad", check=False)
        assert proc.returncode != 0
        return proc.stderr

    assert "copies=4 is impossible with 3 node(s)" in fails(node_dirs, "copies=4")
    err = fails(f"a=file://{tmp_path}/missing")
    assert "missing" in err and "node a" in err
    assert "copy" in fails(node_dirs, "copy=2")
    assert "maxsize= needs a node that can count" in fails(f"a=annex://{tmp_path}?maxsize=1GiB")


def test_native_directory_remote_reads_node(tmp_path: Path, client: Client) -> None:
    """A node directory is a valid directory special remote: native git-annex fscks it."""
    node = tmp_path / "node"
    node.mkdir()
    repo = make_repo(tmp_path / "repo", client)
    init_cluster(repo, f"n={node.as_uri()}", "encryption=none")
    for i in range(3):
        repo.write(f"d/f{i}.dat", os.urandom(30_000 * (i + 1)))
    repo.annex("add", "d")
    repo.run("git", "commit", "-qm", "d")
    repo.annex("copy", "--to", "cl", "d")
    repo.annex("initremote", "native", "type=directory", f"directory={node}", "encryption=none")
    repo.annex("fsck", "--from", "native", "d")
    whereis = repo.annex("whereis", "d/f0.dat").stdout
    assert "native" in whereis
    # And the other way: what the native remote stores, our node serves.
    repo.write("e.dat", os.urandom(12345))
    repo.annex("add", "e.dat")
    repo.run("git", "commit", "-qm", "e")
    repo.annex("copy", "--to", "native", "e.dat")
    repo.annex("drop", "e.dat")
    repo.annex("get", "--from", "cl", "e.dat")


def test_a_zero_byte_leftover_never_passes_for_the_only_copy(repo: Repo, tmp_path: Path) -> None:
    """A 0-byte file where the node keeps the key (a copy by some tool cut short, a full
    disk) is not the key: `git annex move --to` must not drop the only copy on its word.
    Afterwards the node holds the right bytes, or the move failed and the local copy
    is still there."""
    from shared.annex.keys import Key

    node = tmp_path / "nodes" / "n1"
    node.mkdir(parents=True)
    init_cluster(repo, [node], "encryption=none")
    data = os.urandom(100_000)
    repo.write("f.bin", data)
    repo.annex("add", "f.bin")
    repo.run("git", "commit", "-qm", "f")
    key = Key.parse(repo.lookupkey("f.bin"))
    leftover = node / key.hashdirlower / key.file_name / key.file_name
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"")
    move = repo.annex("move", "--to", "cl", "f.bin", check=False)
    local = repo.path / "f.bin"
    if move.returncode == 0:
        assert leftover.read_bytes() == data, "the only copy was dropped for a 0-byte file"
        repo.annex("get", "f.bin")
    else:
        assert local.read_bytes() == data, move.stdout + move.stderr
    assert local.read_bytes() == data
    repo.annex("fsck", "f.bin")
