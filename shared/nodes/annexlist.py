"""Listing the objects of a git-annex repository node, without git-annex's help.

P2P has no request that lists keys, so the annex object directory is walked:
``annex/objects/<2 hash dirs>/<KEY>/<KEY>`` (bare or not: the hash directories
differ, the depth does not). A local repository is walked in this process; on an
ssh host, ``find`` runs over an exec channel of the pooled connection and its
output is read line by line, so memory stays flat however many keys there are.
An account that may run only git-annex-shell (a forced command) cannot do this:
``Unsupported`` then, and callers ask the node about each key instead.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Iterator

import paramiko

from shared.errors import Unavailable, Unsupported

# Runs in the account's login shell on the node; exit 3/4 say which step failed.
_REMOTE_LIST = (
    "cd -- {path} || exit 3; "
    "d=$(git rev-parse --absolute-git-dir) || exit 4; "
    '[ -d "$d/annex/objects" ] || exit 0; '
    'cd "$d/annex/objects" && exec find . -mindepth 4 -maxdepth 4 -type f'
)


def _object_name(relpath: str) -> str | None:
    """The key file name of ``./a/b/KEY/KEY``; None for anything else found there."""
    parts = relpath.split("/")
    if len(parts) == 5 and parts[0] == "." and parts[3] == parts[4]:
        return parts[4]
    return None


def local_object_names(path: str, env: dict[str, str], node: str) -> Iterator[str]:
    try:
        git_dir = subprocess.run(
            ["git", "-C", path, "rev-parse", "--absolute-git-dir"],
            capture_output=True,
            text=True,
            env=env,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise Unavailable(f"cannot run git in {path}: {e}", node) from e
    if git_dir.returncode != 0:
        raise Unavailable(f"{path} is not a git repository: {git_dir.stderr.strip()}", node)
    objects = os.path.join(git_dir.stdout.strip(), "annex", "objects")
    for top in _scandirs(objects):
        for mid in _scandirs(top):
            for keydir in _scandirs(mid):
                name = os.path.basename(keydir)
                if os.path.isfile(os.path.join(keydir, name)):
                    yield name


def _scandirs(path: str) -> list[str]:
    try:
        with os.scandir(path) as it:
            return sorted(e.path for e in it if e.is_dir(follow_symlinks=False))
    except OSError:
        return []


def remote_object_names(chan: paramiko.Channel, where: str, node: str) -> Iterator[str]:
    """Read ``find``'s output from ``chan`` (running ``remote_command``) as it comes."""
    try:
        with chan.makefile("rb") as out:
            for raw in out:
                name = _object_name(os.fsdecode(raw.rstrip(b"\n")))
                if name is not None:
                    yield name
        status = chan.recv_exit_status()
        err = b""
        while chan.recv_stderr_ready():
            err += chan.recv_stderr(65536)
    except OSError as e:
        raise Unavailable(f"listing the objects of {where}: {e}", node) from e
    finally:
        chan.close()
    if status != 0:
        text = " ".join(err.decode(errors="replace").split())[-300:]
        if status == 3:
            raise Unavailable(f"listing the objects of {where}: no such directory ({text})", node)
        raise Unsupported(
            f"cannot list the objects of {where} with a shell command (exit {status}: "
            f"{text or 'no message'}); an account restricted to git-annex-shell cannot",
            node,
        )


def remote_command(path: str) -> list[str]:
    """``sh -c`` with the listing script; ``/~/x`` is ``x`` in the login directory."""
    rel = path[3:] if path.startswith("/~/") else path
    return ["sh", "-c", _REMOTE_LIST.format(path=shlex.quote(rel))]
