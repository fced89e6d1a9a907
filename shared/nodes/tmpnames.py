"""Names of stores in progress, shared by directory-layout nodes (file://, sftp://).

A store writes under ``<node>/tmp/cluster-<host>-<pid>-<random>/`` and renames
that directory into place. If the writer is killed, the directory stays behind,
invisible under any key's name. A later process on the same host removes those
whose process is gone; other hosts' entries (a node shared over a network
filesystem) are never judged from here.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import time

PREFIX = f"cluster-{socket.gethostname().replace('-', '_')}-"
# Resumable stores (a gateway's uploads) keep a temp per key until it is completed,
# or until it is older than RESUME_KEEP seconds.
RESUME_PREFIX = "resume-"
RESUME_KEEP = 7 * 24 * 3600


def new_tmp_name() -> str:
    return f"{PREFIX}{os.getpid()}-{secrets.token_hex(6)}"


def resume_name(key: str) -> str:
    """The temp entry of a resumable store of ``key``: one per key, not per process,
    so that the next attempt, from any process, finds it."""
    digest = hashlib.md5(key.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{RESUME_PREFIX}{digest}"


def is_stale(entry: str, mtime: float | None = None) -> bool:
    """True for a temp entry of this host whose writer process no longer runs, or for
    a resumable store's temp not touched for ``RESUME_KEEP`` (``mtime`` given)."""
    if entry.startswith(RESUME_PREFIX):
        return mtime is not None and time.time() - mtime > RESUME_KEEP
    if not entry.startswith(PREFIX):
        return False
    pid_text = entry.removeprefix(PREFIX).split("-", 1)[0]
    return pid_text.isdigit() and not _running(int(pid_text))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed writer can linger as a zombie until its new parent reaps it
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in (b"Z", b"X")
