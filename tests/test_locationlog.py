"""Reading the keys a repository knows of from its git-annex branch, journal included."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest
from conftest import Client, Repo, make_repo

from shared.annex import locationlog
from shared.annex.keys import Key
from shared.errors import ClusterError


def repo_of(tmp_path: Path, client: Client, count: int) -> Repo:
    """A repository with ``count`` annexed files ``f0``.. committed."""
    repo = make_repo(tmp_path / "r", client)
    for i in range(count):
        repo.write(f"f{i}", b"%d" % i)
    repo.annex("add", ".")
    repo.run("git", "commit", "-qm", "x")
    return repo


def test_present_uuids_takes_the_newest_line_per_uuid() -> None:
    text = "1700000000.5s 1 A\n1700000001s 0 A\n1700000000s 1 B\n1600000000s 0 B\ngarbage\n"
    assert locationlog.present_uuids(text) == {"B"}


def test_known_keys_and_keys_in_from_branch_and_journal(
    tmp_path: Path, pypi_client: Client
) -> None:
    repo = make_repo(tmp_path / "r", pypi_client)
    repo.write("a_b:c.txt", b"one")
    repo.write("plain.txt", b"two")
    repo.annex("add", "--backend", "WORM", "a_b:c.txt")
    repo.annex("add", "plain.txt")
    repo.run("git", "commit", "-qm", "x")
    worm, plain = repo.lookupkey("a_b:c.txt"), repo.lookupkey("plain.txt")
    here = repo.run("git", "config", "annex.uuid").stdout.strip()
    # A location change that git-annex has not committed to the branch yet (journal).
    repo.annex("setpresentkey", plain, "11111111-2222-3333-4444-555555555555", "1")
    assert {str(k) for k in locationlog.known_keys(repo.path)} == {worm, plain}
    assert {str(k) for k in locationlog.keys_in(here, repo.path)} == {worm, plain}
    elsewhere = list(locationlog.keys_in("11111111-2222-3333-4444-555555555555", repo.path))
    assert elsewhere == [Key.parse(plain)]
    repo.annex("drop", "--force", "a_b:c.txt")
    assert {str(k) for k in locationlog.keys_in(here, repo.path)} == {plain}


def test_keys_in_reads_ahead_and_stops_when_the_reader_does(
    tmp_path: Path, pypi_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cat-file is fed ahead of the answers read (no round trip per key): with room
    for two logs in flight, every key still comes, in branch order, and a reader that
    stops early ends the feeding thread and the git processes (no hang)."""
    repo = repo_of(tmp_path, pypi_client, 7)
    here = repo.run("git", "config", "annex.uuid").stdout.strip()
    monkeypatch.setattr(locationlog, "ASK_AHEAD", 2)
    keys = [str(k) for k in locationlog.keys_in(here, repo.path)]
    assert sorted(keys) == sorted(repo.lookupkey(f"f{i}") for i in range(7))
    assert keys == [str(k) for k in locationlog.known_keys(repo.path)]
    reading = locationlog.keys_in(here, repo.path)
    next(reading)
    reading.close()
    assert not [t for t in threading.enumerate() if t.name == "location-logs"]


def test_branch_read_in_batches_whatever_the_users_pathspec_settings(
    tmp_path: Path, pypi_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The branch's top-level directories are recursed into a batch at a time (named
    to ``git ls-tree``): every key still comes, in branch order, one directory per
    batch; and a user's ``GIT_GLOB_PATHSPECS`` or ``GIT_ICASE_PATHSPECS``, which
    ls-tree refuses with names given, does not silently empty the listing (a node
    matched against these keys would look empty)."""
    repo = repo_of(tmp_path, pypi_client, 9)
    every = sorted(repo.lookupkey(f"f{i}") for i in range(9))
    whole = [str(k) for k in locationlog.known_keys(repo.path)]
    assert sorted(whole) == every
    monkeypatch.setattr(locationlog, "TOP_DIRS_PER_LS_TREE", 1)
    assert [str(k) for k in locationlog.known_keys(repo.path)] == whole
    for setting in ("GIT_GLOB_PATHSPECS", "GIT_ICASE_PATHSPECS"):
        with monkeypatch.context() as m:
            m.setenv(setting, "1")
            assert [str(k) for k in locationlog.known_keys(repo.path)] == whole


def test_no_branch_yet_is_no_keys(tmp_path: Path) -> None:
    """A repository git-annex never wrote a branch in has no location logs."""
    subprocess.run(["git", "init", "-q", str(tmp_path / "r")], check=True)
    assert list(locationlog.known_keys(tmp_path / "r")) == []


def test_a_branch_that_cannot_be_read_whole_is_an_error(
    tmp_path: Path, pypi_client: Client
) -> None:
    """A part of the branch git cannot read (here a tree object gone) fails the
    listing, naming git's complaint: read as fewer location logs, it would make a
    node's copies look like nobody's."""
    repo = repo_of(tmp_path, pypi_client, 4)
    top = repo.run("git", "ls-tree", "git-annex").stdout.splitlines()
    tree = next(line.split()[2] for line in top if line.split()[1] == "tree")
    loose = repo.path / ".git" / "objects" / tree[:2] / tree[2:]
    assert loose.exists()  # git-annex wrote it loose, not packed
    loose.unlink()
    with pytest.raises(ClusterError, match="reading the git-annex branch failed: git ls-tree"):
        list(locationlog.known_keys(repo.path))


def test_a_journal_file_committed_while_reading_is_read_from_the_branch(
    tmp_path: Path, pypi_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """git-annex commits its journal to the branch, then removes the files: one that
    goes between our listing of the journal and our reading it is read from the
    branch (it used to fail the command with FileNotFoundError)."""
    repo = repo_of(tmp_path, pypi_client, 2)
    key = repo.lookupkey("f0")
    other = "11111111-2222-3333-4444-555555555555"
    repo.run("git", "-c", "annex.alwayscommit=false", "annex", "setpresentkey", key, other, "1")
    listed = locationlog._journal

    def then_committed(cwd: Path) -> dict[str, Path]:
        journal = listed(cwd)
        assert journal  # the setpresentkey above, not committed yet
        repo.annex("merge")  # commits the journal to the branch, removes its files
        assert not any(f.exists() for f in journal.values())
        return journal

    monkeypatch.setattr(locationlog, "_journal", then_committed)
    assert [str(k) for k in locationlog.keys_in(other, repo.path)] == [key]
