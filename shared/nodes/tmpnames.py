"""Names of stores in progress, shared by directory-layout nodes (file://, sftp://).

A store writes under ``<node>/tmp/cluster-<host>-<pid>-<random>/`` and renames
that directory into place. If the writer is killed, the directory stays behind,
invisible under any key's name. A later process on the same host removes those
whose process is gone; other hosts' entries (a node shared over a network
filesystem) are never judged from here.

A resumable store (a gateway's upload) keeps its bytes in ``tmp/resume-<md5 of
key>/`` between attempts. While it writes, it holds them under a private name,
``resume-<md5>.cluster-<host>-<pid>-<random>``, taken by renaming: a rename has
one winner, so two uploads of one key never write into the same file. The
writer renames them back when its source goes away; if it is killed instead,
its claim is *abandoned* (its process is gone) and the next upload takes that.

What no running upload holds (the released temp and abandoned claims,
``kept_entries``) does not pile up: an upload takes the one holding the most
bytes and removes the others; a release that finds another one released
meanwhile keeps the longer of the two; a process's first store on a node
settles every key's (``unsettled``: the most bytes under the shared name, the
others removed); and a committed upload removes them all. Each is removed by
first renaming it to a plain temp name of the remover (one winner again), so
what another upload took meanwhile is never touched. Claims of running
processes are left to their owners, which drop their bytes once the key is
stored; other hosts' claims are left to age (``RESUME_KEEP``).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import time
from collections.abc import Iterable

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


def claim_name(key: str) -> str:
    """The private name of ``key``'s kept bytes while this process writes them."""
    return f"{resume_name(key)}.{new_tmp_name()}"


def abandoned_claims(key: str, entries: Iterable[str]) -> list[str]:
    """The entries of ``tmp/`` that are claims on ``key``'s kept bytes by processes of
    this host that are gone: what they wrote can be continued."""
    stem = f"{resume_name(key)}."
    return sorted(e for e in entries if e.startswith(stem) and _gone(e.removeprefix(stem)))


def kept_entries(key: str, entries: Iterable[str]) -> list[str]:
    """The entries of ``tmp/`` that hold bytes of interrupted uploads of ``key`` and that
    no running process of this host holds: the released temp, then abandoned claims."""
    return kept_by_key(entries).get(resume_name(key), [])


def kept_by_key(entries: Iterable[str]) -> dict[str, list[str]]:
    """``kept_entries`` of every key that has some, by the key's ``resume_name``."""
    kept: dict[str, list[str]] = {}
    for entry in sorted(entries):
        if not entry.startswith(RESUME_PREFIX):
            continue
        free, dot, owner = entry.partition(".")
        if not dot:
            kept.setdefault(free, []).insert(0, entry)
        elif _gone(owner):
            kept.setdefault(free, []).append(entry)
    return kept


def unsettled(entries: Iterable[str]) -> list[list[str]]:
    """The keys whose kept bytes are not where the next upload looks first, as lists of
    ``kept_entries``: more than one entry, or an abandoned claim alone. A collector
    keeps the one holding the most bytes, under the key's ``resume_name``, and drops
    the others."""
    return [group for group in kept_by_key(entries).values() if len(group) > 1 or "." in group[0]]


def is_stale(entry: str, mtime: float | None = None) -> bool:
    """True for a temp entry of this host whose writer process no longer runs, or for
    a resumable store's temp not touched for ``RESUME_KEEP`` (``mtime`` given) and
    not claimed by a running process of this host."""
    if entry.startswith(RESUME_PREFIX):
        owner = entry.partition(".")[2]
        if owner.startswith(PREFIX) and not _gone(owner):
            return False
        return mtime is not None and time.time() - mtime > RESUME_KEEP
    return _gone(entry)


def _gone(name: str) -> bool:
    """Whether ``name`` (``cluster-<host>-<pid>-...``) belongs to a process of this host
    that no longer runs; False for other hosts' names, which cannot be judged here."""
    if not name.startswith(PREFIX):
        return False
    pid_text = name.removeprefix(PREFIX).split("-", 1)[0]
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
