"""``sftp://[user@]host[:port]/path`` nodes: a directory on any ssh host, nothing installed there.

Same layout as ``file://`` nodes (git-annex's directory special remote), over
one SFTP session of the process-wide ssh connection to the host. Uploads are
pipelined and written under ``tmp/``, fsynced where the server offers
``fsync@openssh.com``, then the temp directory is renamed into place. Downloads
read ahead a bounded window. The node never retries: it reports a lost
connection as ``Unavailable`` (after dropping the connection, so the next call
reconnects), and the retry wrapper decides.
"""

from __future__ import annotations

import errno
import posixpath
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import paramiko

from shared.errors import (
    ConfigError,
    IntegrityError,
    NodeError,
    NoSpace,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from shared.keys import Key
from shared.nodes.base import EXPENSIVE_COST, Node, Readable, Usage, Writable
from shared.nodes.tmpnames import is_stale, new_tmp_name
from shared.nodeurl import NodeSpec
from shared.ssh import SSHConnection, SSHPool, SSHTarget, default_pool, is_connection_error

BLOCK = 1024 * 1024
READ_REQUEST = 32 * 1024  # SFTP read size every server accepts
READ_WINDOW = 8 * 1024 * 1024  # bytes requested ahead while downloading: the memory bound

# Extended requests paramiko has no method for (OpenSSH protocol extensions).
_CMD_EXTENDED = paramiko.sftp.CMD_EXTENDED


def parse_sftp_url(spec: NodeSpec) -> tuple[SSHTarget, str]:
    """Split an sftp:// URL into the ssh target and the node's directory on that host."""
    parts = urlsplit(spec.url)
    if not parts.hostname:
        raise ConfigError(f"node {spec.name}: sftp:// URL needs a host: sftp://[user@]host/path")
    try:
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"node {spec.name}: invalid port in {spec.url!r}") from e
    path = unquote(parts.path)
    if path in ("/~", "/~/"):
        path = "."
    elif path.startswith("/~/"):
        path = path[3:]  # relative: SFTP servers resolve it against the login directory
    elif not path.startswith("/"):
        raise ConfigError(
            f"node {spec.name}: sftp:// needs a path: /abs/path, or /~/path for home-relative"
        )
    if spec.params:
        raise ConfigError(
            f"node {spec.name}: unknown parameter(s) for sftp:// nodes: "
            + ", ".join(sorted(spec.params))
        )
    user = unquote(parts.username) if parts.username else None
    return SSHTarget(host=parts.hostname, port=port, user=user), path.rstrip("/") or "/"


class SFTPNode(Node):
    default_cost = EXPENSIVE_COST

    def __init__(self, spec: NodeSpec, pool: SSHPool | None = None) -> None:
        super().__init__(spec)
        self.target, self.root = parse_sftp_url(spec)
        self._pool = pool
        self._tmp_checked = False

    # -- connection ---------------------------------------------------------

    @property
    def pool(self) -> SSHPool:
        if self._pool is None:
            self._pool = default_pool()
        return self._pool

    @contextmanager
    def _sftp(self, what: str) -> Iterator[paramiko.SFTPClient]:
        """An SFTP session; errors leave as our types, naming the node and the operation."""
        conn: SSHConnection | None = None
        try:
            conn = self.pool.connection(self.target)
            yield conn.sftp()
        except NodeError as e:
            if e.node is None:
                e.node = self.name
            raise
        except Exception as e:
            if conn is not None and is_connection_error(e):
                self.pool.invalidate(conn)
                raise Unavailable(
                    f"{what}: connection to {conn.label} lost ({e})", self.name
                ) from e
            if is_connection_error(e):
                raise Unavailable(f"{what}: {e}", self.name) from e
            if isinstance(e, OSError):
                raise _translate(e, self.name, what) from e
            raise  # not the node's doing (a failed source, a bug): keep its type

    def _path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def _candidates(self, key: Key) -> list[str]:
        name = key.file_name
        return [
            self._path(key.hashdirlower, name, name),
            self._path(key.hashdirmixed, name, name),
        ]

    def _check_root(self, sftp: paramiko.SFTPClient) -> None:
        try:
            st = sftp.stat(self.root)
        except OSError as e:
            raise Unavailable(
                f"directory {self.root} on {self.target} is not accessible "
                f"({e.strerror or e}); create it or fix the URL",
                self.name,
            ) from e
        if st.st_mode is not None and not stat.S_ISDIR(st.st_mode):
            raise Unavailable(f"{self.root} on {self.target} is not a directory", self.name)

    def check(self) -> None:
        with self._sftp("checking the node") as sftp:
            self._check_root(sftp)

    def _find(self, sftp: paramiko.SFTPClient, key: Key) -> tuple[str, int] | None:
        for p in self._candidates(key):
            try:
                st = sftp.stat(p)
            except FileNotFoundError:
                continue
            if st.st_mode is not None and stat.S_ISREG(st.st_mode):
                return p, st.st_size or 0
        self._check_root(sftp)  # absence is only proven while the node directory is there
        return None

    # -- Node interface -----------------------------------------------------

    def present(self, key: Key) -> int | None:
        with self._sftp(f"checking {key}") as sftp:
            found = self._find(sftp, key)
        return None if found is None else found[1]

    def store(self, key: Key, source: Readable, size: int) -> None:
        name = key.file_name
        with self._sftp(f"storing {key}") as sftp:
            try:
                sftp.stat(self._candidates(key)[0])
                return  # already there (idempotent store); the source is left unread
            except FileNotFoundError:
                pass
            self._clean_stale_tmp(sftp)
            tmpdir = self._path("tmp", new_tmp_name())
            try:
                _mkdir(sftp, tmpdir, parents=(self._path("tmp"),))
                written = 0
                with sftp.open(posixpath.join(tmpdir, name), "wb") as out:
                    out.set_pipelined(True)
                    while block := source.read(BLOCK):
                        out.write(block)
                        written += len(block)
                    if written != size:
                        raise IntegrityError(
                            f"received {written} bytes for {key}, expected {size}", self.name
                        )
                    out.flush()
                    _fsync(sftp, out)
                final = self._path(key.hashdirlower, name)
                try:
                    sftp.rename(tmpdir, final)
                except FileNotFoundError:
                    hashdir = posixpath.dirname(final)
                    _mkdir(sftp, hashdir, parents=(posixpath.dirname(hashdir),))
                    self._rename_into_place(sftp, key, tmpdir, final)
                except OSError:
                    self._rename_into_place(sftp, key, tmpdir, final)
                tmpdir = ""
            finally:
                if tmpdir:
                    _discard(sftp, tmpdir, name)

    def _rename_into_place(
        self, sftp: paramiko.SFTPClient, key: Key, tmpdir: str, final: str
    ) -> None:
        try:
            sftp.rename(tmpdir, final)
        except OSError:
            # The key directory exists: another writer finished first (its object was
            # renamed in whole), or an empty directory is left from a removal.
            if self._find(sftp, key) is not None:
                _discard(sftp, tmpdir, key.file_name)
                return
            sftp.rmdir(final)  # only an empty directory goes; anything else is an error
            sftp.rename(tmpdir, final)

    def retrieve(self, key: Key, sink: Writable, offset: int = 0) -> None:
        with self._sftp(f"reading {key}") as sftp:
            found = self._find(sftp, key)
            if found is None:
                raise NotFound(f"{key} is not in {self.root} on {self.target}", self.name)
            path, size = found
            with sftp.open(path, "rb") as src:
                pos = offset
                while pos < size:
                    end = min(size, pos + READ_WINDOW)
                    ranges = [
                        (o, min(READ_REQUEST, end - o)) for o in range(pos, end, READ_REQUEST)
                    ]
                    for data in src.readv(ranges):
                        sink.write(data)
                    pos = end

    def remove(self, key: Key) -> None:
        with self._sftp(f"removing {key}") as sftp:
            for path in self._candidates(key):
                for remove, target in ((sftp.remove, path), (sftp.rmdir, posixpath.dirname(path))):
                    with suppress(FileNotFoundError):
                        remove(target)
            if self._find(sftp, key) is not None:
                raise PermissionDenied(f"{key} is still present after removal", self.name)

    def usage(self) -> Usage | None:
        """Free space through the statvfs@openssh.com extension, where the server has it."""
        try:
            with self._sftp("asking for free space") as sftp:
                msg = _extended(sftp, "statvfs@openssh.com", self.root)
        except (NodeError, OSError):
            return None
        if msg is None:
            return None
        bsize, frsize, blocks, bfree, bavail = (msg.get_int64() for _ in range(5))
        del bsize, bfree
        return Usage(free=bavail * frsize, total=blocks * frsize)

    def close(self) -> None:
        pass  # connections belong to the pool, shared with other nodes on the same host

    def _clean_stale_tmp(self, sftp: paramiko.SFTPClient) -> None:
        """Remove temp dirs of interrupted stores from this host whose process is gone."""
        if self._tmp_checked:
            return
        self._tmp_checked = True
        try:
            entries = sftp.listdir(self._path("tmp"))
        except OSError:
            return
        for entry in entries:
            if is_stale(entry):
                _rmtree(sftp, self._path("tmp", entry))


def _translate(exc: OSError, node: str, what: str) -> NodeError:
    detail = f"{what}: {exc.strerror or exc}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(detail, node)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDenied(detail, node)
    if exc.errno == errno.ENOENT:
        return NotFound(detail, node)
    return Unavailable(detail, node)


def _mkdir(sftp: paramiko.SFTPClient, path: str, parents: tuple[str, ...] = ()) -> None:
    """mkdir that tolerates existing directories and creates the given parents on demand."""
    try:
        sftp.mkdir(path)
        return
    except FileNotFoundError:
        for parent in parents:
            _mkdir(sftp, parent)
    except OSError:
        if _is_dir(sftp, path):
            return
        raise
    try:
        sftp.mkdir(path)
    except OSError:
        if not _is_dir(sftp, path):
            raise


def _is_dir(sftp: paramiko.SFTPClient, path: str) -> bool:
    try:
        mode = sftp.stat(path).st_mode
    except OSError:
        return False
    return mode is not None and stat.S_ISDIR(mode)


def _rmtree(sftp: paramiko.SFTPClient, path: str) -> None:
    """Best-effort recursive removal of our own temp or empty key directories."""
    try:
        entries = sftp.listdir_attr(path)
    except (OSError, UnicodeDecodeError):
        return
    for entry in entries:
        child = posixpath.join(path, entry.filename)
        if entry.st_mode is not None and stat.S_ISDIR(entry.st_mode):
            _rmtree(sftp, child)
        else:
            with suppress(OSError):
                sftp.remove(child)
    with suppress(OSError):
        sftp.rmdir(path)


def _discard(sftp: paramiko.SFTPClient, tmpdir: str, name: str) -> None:
    """Remove our temp directory by its known content (listing could fail on odd names)."""
    for path, remove in ((posixpath.join(tmpdir, name), sftp.remove), (tmpdir, sftp.rmdir)):
        with suppress(OSError):
            remove(path)


def _fsync(sftp: paramiko.SFTPClient, f: paramiko.SFTPFile) -> None:
    """Ask the server to make the data durable before it becomes visible under the key."""
    # A server without the extension refuses; the rename still keeps partial data invisible.
    with suppress(OSError):
        _extended(sftp, "fsync@openssh.com", f.handle)


def _extended(sftp: paramiko.SFTPClient, name: str, arg: object) -> paramiko.Message | None:
    """An OpenSSH extended request; paramiko has no public method for these."""
    kind, msg = cast(Any, sftp)._request(_CMD_EXTENDED, name, arg)
    return msg if kind == paramiko.sftp.CMD_EXTENDED_REPLY else None
