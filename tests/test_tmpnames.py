"""Which temp entries of interrupted stores may be removed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from shared.nodes.tmpnames import PREFIX, is_stale, new_tmp_name


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
