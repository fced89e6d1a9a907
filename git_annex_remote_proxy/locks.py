"""The gateway's content locks: a file per node and key, ``locks/<node>/<key>``
beside the configuration file, locked with ``flock`` by every session of the
gateway (each its own process): shared by LOCKCONTENT, exclusively by REMOVE.

A lock file is removed when its last holder lets go, so the directory holds the
keys locked right now, and what sessions killed while they held a lock left
behind (``sweep`` removes that). Removing lock files that others may have open
is the classic race: a session that opened the file just before it was unlinked
would lock the orphaned inode and guard nothing. So a file is removed only by a
session holding it exclusively, and a lock counts only once the file it holds
is still the one at its path (``take`` opens it again otherwise).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

# A release holds its file exclusively for an instant, to remove it: a lock asked
# for meanwhile is tried again a few times before it counts as taken the other way.
BUSY_TRIES = 5
BUSY_WAIT = 0.01


def take(path: Path, how: int) -> int:
    """An fd holding ``how`` (``fcntl.LOCK_SH`` or ``LOCK_EX``) on the lock file at
    ``path``, made if need be; never waits long. ``BlockingIOError`` when another
    session holds it the other way."""
    busy = 0
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
            if _is_at(fd, path):
                return fd
        except BlockingIOError:
            busy += 1
            if busy >= BUSY_TRIES:
                os.close(fd)
                raise
            time.sleep(BUSY_WAIT)
        except BaseException:
            os.close(fd)
            raise
        # Busy, or removed by its last holder between our open and our lock: again.
        os.close(fd)


def release(path: Path, fd: int) -> None:
    """Let go of the lock ``fd`` holds on ``path``, removing the file when no other
    session holds it. A shared lock is made exclusive without waiting; if another
    session holds it too, the shared lock is given up all the same (flock converts by
    letting go first), and the last holder to go removes the file."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pass
    else:
        # Held exclusively: nobody else can remove the file at ``path`` now. But the
        # conversion let go first, so another session may have removed ours meanwhile
        # (and ``path`` may be someone's new file).
        with contextlib.suppress(OSError):
            if _is_at(fd, path):
                os.unlink(path)
    finally:
        os.close(fd)


def sweep(directory: Path) -> None:
    """Remove the lock files under ``directory`` (one level of node directories) that
    no session holds: left by sessions killed while they held a lock."""
    for path in directory.glob("*/*"):
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue  # removed meanwhile, or not a lock file of ours
        release(path, fd)


def _is_at(fd: int, path: Path) -> bool:
    """Whether the file open at ``fd`` is still the one at ``path``."""
    held = os.fstat(fd)
    try:
        now = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return held.st_nlink > 0 and (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)
