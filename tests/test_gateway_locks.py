"""The gateway's content locks (``git_annex_remote_proxy.locks``) under the race that
removing lock files opens: a session that opened a lock file just before another
removed it must not end up holding a lock on the orphaned file.

Sessions are ``ClusterBackend``s in one process over real file:// nodes (flock
locks belong to open files, so two backends conflict as two processes do); the
race is made to happen inside a session's own lock call. The same locks through
real gateway processes are in test_proxy.py."""

from __future__ import annotations

import fcntl
import hashlib
import io
from pathlib import Path

import pytest

from git_annex_remote_proxy.gateway import ClusterBackend
from shared.annex.keys import Key
from shared.cluster.core import Cluster
from shared.nodes.file import FileNode
from shared.nodes.url import parse_node


def backend(dirs: list[Path], lock_dir: Path) -> ClusterBackend:
    """A session of the gateway: its own node handles, the shared lock directory."""
    nodes = [FileNode(parse_node(f"{d.name}=file://{d}")) for d in dirs]
    return ClusterBackend(Cluster(nodes), lambda _line: None, None, lock_dir)


def lock_files(lock_dir: Path) -> list[Path]:
    return sorted(p for p in lock_dir.rglob("*") if p.is_file())


def test_a_lock_file_removed_while_it_is_locked_is_locked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Session S opens the key's lock file; before its flock, session R locks and
    unlocks the key, which removes the file. S's lock must be on the file that is
    there now: a REMOVE by a third session is refused until S unlocks."""
    dirs = [tmp_path / "n1"]  # one node: its lock alone guards the key
    dirs[0].mkdir()
    locks = tmp_path / "locks"
    locks.mkdir()
    data = b"locked while its lock file went"
    key = Key("SHA256E", hashlib.sha256(data).hexdigest(), size=len(data))
    holder, other, remover = (backend(dirs, locks) for _ in range(3))
    for node in holder.cluster.nodes:
        node.store(key, io.BytesIO(data), len(data))

    real_flock = fcntl.flock
    raced = []

    def flock(fd: int, how: int) -> None:
        if not raced:  # the holder's first lock: its file is open, not locked yet
            raced.append(fd)
            assert other.lock(key)
            other.unlock(key)
        real_flock(fd, how)

    monkeypatch.setattr(fcntl, "flock", flock)
    assert holder.lock(key)
    monkeypatch.undo()
    assert raced
    assert remover.remove(key) == (False, ())
    assert all(node.present(key) == len(data) for node in holder.cluster.nodes)
    holder.unlock(key)
    assert lock_files(locks) == []
    assert remover.remove(key)[0] is True
    assert lock_files(locks) == []
    assert not any(node.present(key) for node in holder.cluster.nodes)
