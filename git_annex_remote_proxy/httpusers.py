"""The users of ``git-annex-remote-proxy http``: a file the operator manages with
``http-users add|remove|list``, and the decision each request gets (git-annex
p2phttp's rules, ``Command/P2PHttp.hs`` and ``P2P/Http/State.hs``).

The file is JSON, mode 0600, written atomically: for each user the argon2id hash of
the password (never the password), the access (readwrite, appendonly, readonly)
and optionally the targets the user may reach. The server reads it again when it
changes, so an edit takes effect at the next request.

A request is a read, a write (put, putoffset), a removal or a lock. With valid
credentials (accepted over HTTPS only, unless ``--auth-http``), the user's access
decides: a request beyond it, or to a target the user may not reach, is 403.
Without them, the ``--unauth-*`` options decide: what they do not allow is 401
(with the ``git-annex`` realm, so a client asks for credentials), or 403 under
``--wideopen``. Locking follows the access, except that unauthenticated readonly
and appendonly access may lock unless ``--unauth-nolocking`` (and ``--wideopen``
allows everything).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from shared.errors import ConfigError

READWRITE, APPENDONLY, READONLY = "readwrite", "appendonly", "readonly"
ACCESS = (READWRITE, APPENDONLY, READONLY)

READ, WRITE, REMOVE, LOCK = "read", "write", "remove", "lock"

# OWASP's argon2id baseline (19 MiB, 2 passes): a verification costs ~20 ms and
# bounded memory; successes are remembered for the process (``Users.check``).
_HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


def users_path(config_path: Path) -> Path:
    """``http-users.json`` beside the gateway configuration."""
    return config_path.parent / "http-users.json"


@dataclass(frozen=True)
class User:
    name: str
    hash: str
    access: str = READWRITE
    targets: tuple[str, ...] = ()  # empty: every target

    def may_reach(self, target: str) -> bool:
        return not self.targets or target in self.targets


class Users:
    """The users file, read again when it changes; ``check`` verifies credentials."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._users: dict[str, User] = {}
        self._secret = secrets.token_bytes(32)
        self._verified: set[bytes] = set()  # HMACs of (user, hash, password) that matched

    def load(self) -> dict[str, User]:
        with self._lock:
            try:
                st = self.path.stat()
            except FileNotFoundError:
                self._stamp, self._users = None, {}
                return self._users
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp != self._stamp:
                self._users = read(self.path)
                self._stamp = stamp
                self._verified.clear()
            return self._users

    def check(self, name: str, password: str) -> User | None:
        """The user, when ``password`` is theirs."""
        user = self.load().get(name)
        if user is None:
            _HASHER.hash(password)  # the same time as for a user who exists
            return None
        mark = hmac.new(
            self._secret, f"{name}\0{user.hash}\0{password}".encode(), hashlib.sha256
        ).digest()
        if mark in self._verified:
            return user
        try:
            _HASHER.verify(user.hash, password)
        except (VerificationError, InvalidHashError):
            return None
        with self._lock:
            self._verified.add(mark)
        return user


def read(path: Path) -> dict[str, User]:
    try:
        data = json.loads(path.read_text())
        users = data["users"]
        if not isinstance(users, dict):
            raise TypeError
        out = {}
        for name, entry in users.items():
            access = entry.get("access", READWRITE)
            if access not in ACCESS:
                raise ValueError(f"user {name}: access {access!r}")
            targets = tuple(entry.get("targets", ()))
            out[name] = User(name, str(entry["hash"]), access, targets)
        return out
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise ConfigError(
            f"cannot read the users file {path}: {e}; fix it or manage it with "
            "'git-annex-remote-proxy http-users'"
        ) from None


def write(path: Path, users: dict[str, User]) -> None:
    """Atomically, mode 0600 from the start."""
    data = {
        "users": {
            u.name: {"hash": u.hash, "access": u.access, **({"targets": list(u.targets)})}
            if u.targets
            else {"hash": u.hash, "access": u.access}
            for u in sorted(users.values(), key=lambda u: u.name)
        }
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".http-users.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o600)
            json.dump(data, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def add(path: Path, name: str, password: str, access: str, targets: tuple[str, ...]) -> User:
    if not name or ":" in name or any(c.isspace() or ord(c) < 32 for c in name):
        raise ConfigError(f"bad user name {name!r}: no colon, whitespace or control characters")
    if access not in ACCESS:
        raise ConfigError(f"access must be one of {', '.join(ACCESS)}, not {access!r}")
    if not password:
        raise ConfigError("empty password refused")
    users = read(path) if path.exists() else {}
    user = User(name, _HASHER.hash(password), access, targets)
    users[name] = user
    write(path, users)
    return user


def remove(path: Path, name: str) -> None:
    users = read(path) if path.exists() else {}
    if name not in users:
        raise ConfigError(f"no user {name!r} in {path}")
    del users[name]
    write(path, users)


# -- the decision ------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """The server's options about who may do what."""

    auth_http: bool = False  # credentials accepted over plain HTTP too
    wideopen: bool = False
    unauth_readonly: bool = False
    unauth_appendonly: bool = False
    unauth_nolocking: bool = False


class Denied(Exception):
    """``status`` 401 (ask for credentials) or 403."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _allows(access: str, action: str, may_lock: bool) -> bool:
    if access == READWRITE:
        return True
    if action == LOCK:
        return may_lock
    if action == READ:
        return True
    return access == APPENDONLY and action == WRITE


def decide(
    policy: Policy,
    users: Users,
    credentials: tuple[str, str] | None,
    secure: bool,
    target: str,
    action: str,
) -> str:
    """The user name (or ``-`` for none) allowed to do ``action`` on ``target``;
    ``Denied`` otherwise."""
    if credentials is not None and (secure or policy.auth_http):
        user = users.check(*credentials)
        if user is not None:
            if not user.may_reach(target):
                raise Denied(403, f"user {user.name} may not reach target {target}")
            if not _allows(user.access, action, may_lock=False):
                raise Denied(403, f"user {user.name} is {user.access}: no {action}")
            return user.name
    # Unauthenticated (or credentials refused): the --unauth-* options decide.
    can_auth = not policy.wideopen
    may_lock = not policy.unauth_nolocking
    if policy.wideopen:
        access: str | None = READWRITE
    elif policy.unauth_appendonly:
        access = APPENDONLY
    elif policy.unauth_readonly:
        access = READONLY
    else:
        access = None
    if access is None:
        raise Denied(401, "authentication required")
    if not _allows(access, action, may_lock):
        raise Denied(401 if can_auth else 403, f"unauthenticated access is {access}: no {action}")
    return "-"
