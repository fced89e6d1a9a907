"""Which temp entries of interrupted stores may be removed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from shared.nodes.tmpnames import (
    PREFIX,
    is_stale,
    kept_entries,
    new_tmp_name,
    resume_name,
    unsettled,
)


def test_own_live_entry_is_not_stale() -> None:
    assert new_tmp_name().startswith(PREFIX) and not is_stale(new_tmp_name())


def test_exited_and_zombie_writers_are_stale() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    stat = Path(f"/proc/{child.pid}/stat")
    deadline = time.monotonic() + 10
    while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert is_stale(f"{PREFIX}{child.pid}-abc")  # a zombie, not yet reaped
    child.wait()
    assert is_stale(f"{PREFIX}{child.pid}-abc")


def test_other_hosts_and_foreign_names_are_left_alone() -> None:
    assert not is_stale(f"cluster-otherhost-{os.getpid() + 10**6}-abc")
    assert not is_stale("something-else")
    assert not is_stale(f"{PREFIX}notapid-abc")


def test_kept_entries_are_what_no_running_upload_of_the_key_holds() -> None:
    """The released temp first, then claims of this host's processes that are gone;
    never a running process's claim, another host's, or another key's entries."""
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    key, other = "SHA256E-s1--" + "a" * 64, "SHA256E-s1--" + "b" * 64
    ours = resume_name(key)
    entries = [
        f"{ours}.{PREFIX}{gone.pid}-b",
        f"{ours}.{PREFIX}{os.getpid()}-c",  # this process: running
        f"{ours}.cluster-otherhost-{gone.pid}-d",
        resume_name(other),
        f"{resume_name(other)}.{PREFIX}{gone.pid}-e",
        f"{PREFIX}{gone.pid}-f",
        f"{ours}.{PREFIX}{gone.pid}-a",
        ours,
    ]
    assert kept_entries(key, entries) == [
        ours,
        f"{ours}.{PREFIX}{gone.pid}-a",
        f"{ours}.{PREFIX}{gone.pid}-b",
    ]
    assert kept_entries(key, [f"{ours}.{PREFIX}{os.getpid()}-c"]) == []


def test_unsettled_keys_have_abandoned_claims_or_more_than_one_entry() -> None:
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    settled, claimed, several = (resume_name(f"SHA256E-s1--{c * 64}") for c in "abc")
    entries = [
        settled,  # a released temp alone: where the next upload looks first
        f"{settled}.{PREFIX}{os.getpid()}-x",  # a running upload's: not ours to settle
        f"{settled}.cluster-otherhost-{gone.pid}-y",  # another host's: not judged here
        f"{claimed}.{PREFIX}{gone.pid}-z",
        f"{several}.{PREFIX}{gone.pid}-w",
        several,
        f"{PREFIX}{gone.pid}-v",
    ]
    assert sorted(unsettled(entries)) == sorted(
        [[f"{claimed}.{PREFIX}{gone.pid}-z"], [several, f"{several}.{PREFIX}{gone.pid}-w"]]
    )
