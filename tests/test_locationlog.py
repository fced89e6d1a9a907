"""Reading the keys a repository knows of from its git-annex branch, journal included."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from conftest import Client, make_repo

from shared.annex import locationlog
from shared.annex.keys import Key


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
    repo = make_repo(tmp_path / "r", pypi_client)
    for i in range(7):
        repo.write(f"f{i}", b"%d" % i)
    repo.annex("add", ".")
    repo.run("git", "commit", "-qm", "x")
    here = repo.run("git", "config", "annex.uuid").stdout.strip()
    monkeypatch.setattr(locationlog, "ASK_AHEAD", 2)
    keys = [str(k) for k in locationlog.keys_in(here, repo.path)]
    assert sorted(keys) == sorted(repo.lookupkey(f"f{i}") for i in range(7))
    assert keys == [str(k) for k in locationlog.known_keys(repo.path)]
    reading = locationlog.keys_in(here, repo.path)
    next(reading)
    reading.close()
    assert not [t for t in threading.enumerate() if t.name == "location-logs"]
