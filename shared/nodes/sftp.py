"""``sftp://[user@]host[:port]/path`` nodes: a directory on any ssh host, nothing installed there.

Same layout as ``file://`` nodes (git-annex's directory special remote), over
one SFTP session of the process-wide ssh connection to the host. Uploads are
pipelined and written under ``tmp/``, fsynced where the server offers
``fsync@openssh.com``, then the temp directory is renamed into place. Downloads
read ahead a bounded window. Long transfers (``EXEC_MIN``) go through an exec
channel (``cat``, ``tail -c``) where the account has a shell: far less CPU in
paramiko than SFTP requests; the temp, its size check and the rename stay SFTP's.
A gateway's uploads keep what they wrote in ``tmp/resume-*`` as on ``file://``
nodes (``shared.nodes.tmpnames``).
The node never retries: it reports a lost connection as ``Unavailable`` (after
dropping the connection, so the next call reconnects), and the retry wrapper
decides.
"""

from __future__ import annotations

import posixpath
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import paramiko

from shared.annex.keys import Key
from shared.errors import (
    ConfigError,
    IntegrityError,
    NodeError,
    NotFound,
    PermissionDenied,
    Unavailable,
    from_oserror,
    wrong_content,
)
from shared.nodes.base import EXPENSIVE_COST, Node, Usage, check_size
from shared.nodes.owner import MARKER, MARKER_MAX, marker_text, parse_marker
from shared.nodes.tmpnames import (
    abandoned_claims,
    claim_name,
    is_stale,
    new_tmp_name,
    resume_name,
    unsettled,
)
from shared.nodes.url import NodeSpec
from shared.streams import BLOCK, Readable, Writable
from shared.transport.ssh import (
    SFTPSession,
    SSHConnection,
    SSHPool,
    default_pool,
    is_connection_error,
    send_all,
)
from shared.transport.target import SSHTarget

# SFTP request sizes: a request (or its reply) plus its header must fit in one SSH
# channel packet (32 KiB minus 64 bytes of framing on OpenSSH), or each one costs two.
WRITE_REQUEST = 32 * 1024 - 64 - 64
WRITE_DEPTH = 64  # SFTP write requests unanswered: about 2 MiB in flight
READ_REQUEST = 32 * 1024 - 64 - 64
READ_DEPTH = 64  # SFTP read requests in flight: about 2 MiB ahead, the memory bound
EXEC_READ = 1024 * 1024
EXEC_MIN = 32 * 1024 * 1024  # reads this long go through an exec channel where allowed
_PROBE = "git-annex-remote-cluster exec probe"
_STORE_SCRIPT = 'cat > "$1" && { sync -- "$1" 2>/dev/null || :; }'  # $1: the temp file
_APPEND_SCRIPT = 'cat >> "$1" && { sync -- "$1" 2>/dev/null || :; }'

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
        self._conn: SSHConnection | None = None  # the pool's, kept while it is alive
        self._tmp_checked = False
        self._exec_ok: bool | None = None  # downloads through an exec channel (probed once)

    # -- connection ---------------------------------------------------------

    @property
    def pool(self) -> SSHPool:
        if self._pool is None:
            self._pool = default_pool()
        return self._pool

    @contextmanager
    def _sftp(self, what: str) -> Iterator[SFTPSession]:
        """An SFTP session; errors leave as our types, naming the node and the operation."""
        conn: SSHConnection | None = None
        try:
            conn = self._conn
            if conn is None or not conn.alive():  # asking the pool stats ~/.ssh/config
                conn = self._conn = self.pool.connection(self.target)
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
                raise from_oserror(e, self.name, what) from e
            raise  # not the node's doing (a failed source, a bug): keep its type

    def _path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def _candidates(self, key: Key) -> list[str]:
        name = key.file_name
        return [
            self._path(key.hashdirlower, name, name),
            self._path(key.hashdirmixed, name, name),
        ]

    def _root_problem(self, result: Any) -> Unavailable | None:
        """Why the node directory cannot be used, from the reply to a stat of it."""
        if isinstance(result, OSError):
            return Unavailable(
                f"directory {self.root} on {self.target} is not accessible "
                f"({result.strerror or result}); create it or fix the URL",
                self.name,
            )
        mode = _attrs(result).st_mode
        if mode is not None and not stat.S_ISDIR(mode):
            return Unavailable(f"{self.root} on {self.target} is not a directory", self.name)
        return None

    def check(self) -> None:
        with self._sftp("checking the node") as sftp:
            problem = self._root_problem(sftp.batch([_stat(sftp, self.root)])[0])
        if problem:
            raise problem

    def _find(self, sftp: SFTPSession, key: Key) -> tuple[str, int] | None:
        """Where the key is and its size, or None: one round trip for all three stats.

        The node directory is asked about too: absence is only proven while it is there.
        """
        paths = self._candidates(key)
        replies = sftp.batch([_stat(sftp, p) for p in (*paths, self.root)])
        expected = key.content_size
        found: tuple[str, int] | None = None  # of the candidates, one of the key's size first
        for path, reply in zip(paths, replies, strict=False):
            if isinstance(reply, FileNotFoundError):
                continue
            if isinstance(reply, OSError):
                raise reply
            attrs = _attrs(reply)
            if attrs.st_mode is not None and stat.S_ISREG(attrs.st_mode):
                size = attrs.st_size or 0
                if expected is None or size == expected:
                    return path, size
                found = found or (path, size)
        problem = self._root_problem(replies[-1])
        if problem:
            raise problem
        return found

    def _holds(self, sftp: SFTPSession, key: Key, size: int) -> bool:
        """Whether the key is stored with exactly ``size`` bytes; anything else under its
        name (a 0-byte leftover, a truncated copy) is for a store to replace."""
        found = self._find(sftp, key)
        return found is not None and found[1] == size

    # -- the owner marker (shared.nodes.owner) -------------------------------

    records_owner = True

    def _read_owner(self, sftp: SFTPSession) -> str | None:
        path = self._path(MARKER)
        try:
            with sftp.open(path, "rb") as f:
                data = f.read(MARKER_MAX)
        except FileNotFoundError:
            problem = self._root_problem(sftp.batch([_stat(sftp, self.root)])[0])
            if problem:  # absent only while the directory is still there
                raise problem from None
            return None
        return parse_marker(data, self.name, f"{path} on {self.target}")

    def owner(self) -> str | None:
        with self._sftp("reading the owner record") as sftp:
            return self._read_owner(sftp)

    def claim(self, uuid: str, take_over: bool = False) -> str:
        with self._sftp("recording the owner") as sftp:
            current = self._read_owner(sftp)
            if current == uuid or (current is not None and not take_over):
                return current
            path = self._path(MARKER)
            temp = self._path(f"{MARKER}.{new_tmp_name()}")
            try:
                with sftp.open(temp, "wbx") as f:
                    f.write(marker_text(uuid))
                if current is None:
                    try:
                        # OpenSSH renames by link(): an existing name is refused, so of
                        # two first claims one wins.
                        sftp.rename(temp, path)
                    except OSError:
                        winner = self._read_owner(sftp)
                        if winner is None:
                            raise
                        return winner
                else:
                    try:
                        sftp.posix_rename(temp, path)
                    except OSError:  # no posix-rename@openssh.com: not atomic, but rare
                        with suppress(FileNotFoundError):
                            sftp.remove(path)
                        sftp.rename(temp, path)
            finally:
                with suppress(OSError):
                    sftp.remove(temp)
            return self._read_owner(sftp) or uuid

    # -- Node interface -----------------------------------------------------

    def present(self, key: Key) -> int | None:
        with self._sftp(f"checking {key}") as sftp:
            found = self._find(sftp, key)
        if found is None:
            return None
        return check_size(key, found[1], self.name, f"{self.root} on {self.target}")

    def store(self, key: Key, source: Readable, size: int) -> bool:
        """Three round trips whatever the size (they dominate small objects on a WAN):
        check and prepare; write, fsync and close; rename into place."""
        name = key.file_name
        final = self._path(key.hashdirlower, name)  # the key directory
        hashdirs = (posixpath.dirname(posixpath.dirname(final)), posixpath.dirname(final))
        with self._sftp(f"storing {key}") as sftp:
            self._clean_stale_tmp(sftp)
            tmpdir = self._path("tmp", new_tmp_name())
            temp = posixpath.join(tmpdir, name)
            # Long uploads stream through an exec channel where the host allows it (as
            # long downloads do): about a third less CPU here than SFTP writes.
            by_exec = size >= EXEC_MIN and _is_utf8(temp) and self._exec_usable()
            # Is it there already; make the directories this store needs; open the temp
            # file. The server runs them in order; "exists" answers are expected.
            present, _, made_tmp, *_, opened = sftp.batch(
                [
                    _stat(sftp, posixpath.join(final, name)),
                    _mkdir(sftp, self._path("tmp")),
                    _mkdir(sftp, tmpdir),
                    *(_mkdir(sftp, d) for d in hashdirs),
                    _stat(sftp, tmpdir) if by_exec else _open_new(sftp, temp),
                ]
            )
            handle = None if by_exec else _handle(opened)
            try:
                if not isinstance(present, OSError) and _is_file_of(_attrs(present), size):
                    return False  # already there (idempotent store); the source is left unread
                if isinstance(made_tmp, OSError):
                    raise self._root_problem(sftp.batch([_stat(sftp, self.root)])[0]) or made_tmp
                if isinstance(opened, OSError):
                    raise opened
                if by_exec:
                    self._store_exec(sftp, key, temp, source, size)
                else:
                    assert handle is not None
                    if size <= WRITE_REQUEST:  # small: write, fsync, close in one round trip
                        data = _read_at_most(source, size + 1)
                        writes = [(paramiko.sftp.CMD_WRITE, (handle, paramiko.sftp.int64(0), data))]
                        written = len(data)
                    else:
                        written = sftp.write_stream(
                            handle, _blocks(source), WRITE_REQUEST, WRITE_DEPTH
                        )
                        writes = []
                    if written != size:
                        raise IntegrityError(
                            f"received {written} bytes for {key}, expected {size}", self.name
                        )
                    # A server without fsync@openssh.com refuses it; the rename still keeps
                    # partial data invisible. A failed write, fsync or close is fatal.
                    *wrote, synced, closed = sftp.batch(
                        [*writes, _fsync_request(handle), _close(handle)]
                    )
                    handle = None
                    for reply in (*wrote, closed):
                        _ok(reply)
                    _synced(synced)
                try:
                    sftp.rename(tmpdir, final)
                except OSError:
                    self._rename_into_place(sftp, key, size, tmpdir, final, hashdirs)
                tmpdir = ""
            finally:
                if handle is not None:
                    sftp.batch([_close(handle)])
                if tmpdir:
                    _discard(sftp, tmpdir, name)
        return True

    def _store_exec(
        self, sftp: SFTPSession, key: Key, temp: str, source: Readable, size: int, offset: int = 0
    ) -> None:
        """Write ``temp`` with ``cat`` (appending after ``offset`` kept bytes; then
        ``sync`` it, best effort, as fsync@openssh.com is); the size is checked through
        SFTP before the caller renames it into place."""
        conn = self.pool.connection(self.target)
        script = _APPEND_SCRIPT if offset else _STORE_SCRIPT
        chan = conn.exec(["sh", "-c", script, "sh", temp])
        try:
            written = offset
            try:
                while block := source.read(BLOCK):
                    written += len(block)
                    if written > size:
                        break
                    send_all(chan, block)
            except BaseException:
                # The source failed: let cat write what it was sent (a resumable store
                # keeps it) before the error goes up.
                with suppress(Exception):
                    chan.shutdown_write()
                    chan.status_event.wait(30)
                raise
            if written != size:
                raise IntegrityError(
                    f"received {written} bytes or more for {key}, expected {size}", self.name
                )
            chan.shutdown_write()
            status = chan.recv_exit_status()
            err = b""
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(4096)
        finally:
            chan.close()
        if status != 0:
            text = " ".join(err.decode(errors="replace").split())[-300:]
            raise Unavailable(
                f"writing {temp} on {self.target}: exit status {status} ({text or 'no message'})",
                self.name,
            )
        reply = sftp.batch([_stat(sftp, temp)])[0]
        if isinstance(reply, OSError):
            raise reply
        got = _attrs(reply).st_size
        if got != size:
            raise Unavailable(f"{temp} on {self.target} has {got} bytes, not {size}", self.name)

    # -- resumable stores (a gateway's uploads) ------------------------------

    resumable = True

    def _kept(self, sftp: SFTPSession, key: Key) -> list[tuple[str, int]]:
        """What interrupted uploads of ``key`` left that no running upload holds (the
        released temp, claims whose process is gone: tmpnames), with the bytes each
        holds (-1: none), the most first: the one a store takes."""
        tmp = self._path("tmp")
        try:
            claims = abandoned_claims(str(key), sftp.listdir(tmp))
        except (OSError, UnicodeDecodeError):  # a name paramiko cannot decode
            claims = []  # the released temp is found by its name alone
        free = posixpath.join(tmp, resume_name(str(key)))
        paths = [free, *(posixpath.join(tmp, n) for n in claims)]
        sizes = _sizes(sftp, [posixpath.join(p, key.file_name) for p in paths])
        # The released temp is there when it has bytes; a claim may have none (its
        # process was killed before it wrote) and is there all the same.
        found = [(p, n) for p, n in zip(paths, sizes, strict=True) if n >= 0 or p != free]
        return sorted(found, key=lambda entry: -entry[1])

    def partial(self, key: Key) -> int:
        with self._sftp(f"looking for a kept upload of {key}") as sftp:
            kept = self._kept(sftp, key)
        return max(kept[0][1], 0) if kept else 0

    def _claim(self, sftp: SFTPSession, key: Key) -> str:
        """The key's kept bytes under a name of this store alone (a rename has one
        winner, so two uploads of one key never share a file), or a new empty temp.
        SFTP has no locks; this is what keeps concurrent uploads apart. What else was
        kept holds fewer bytes: of no use any more, it is dropped."""
        mine = self._path("tmp", claim_name(str(key)))
        sftp.batch([_mkdir(sftp, self._path("tmp"))])
        taken = False
        for kept, _ in self._kept(sftp, key):
            if taken:
                self._drop(sftp, kept, key.file_name)
                continue
            try:
                sftp.rename(kept, mine)
            except FileNotFoundError:
                continue  # another upload took it first
            sftp.utime(mine, None)  # its age counts from now: cleaners go by age
            taken = True
        if not taken:
            sftp.mkdir(mine)
        return mine

    def _drop(self, sftp: SFTPSession, kept: str, name: str) -> None:
        """Remove kept bytes that no upload holds: renamed to a temp name of this process
        first (one winner: what another upload took meanwhile is never touched; if this
        process is killed now, the next one removes it as stale), then deleted."""
        doomed = self._path("tmp", new_tmp_name())
        try:
            sftp.rename(kept, doomed)
        except OSError:
            return  # taken meanwhile
        _discard(sftp, doomed, name)

    def _drop_kept(self, sftp: SFTPSession, key: Key) -> None:
        """The key is stored: what interrupted uploads of it kept is of no use any more.
        Claims of running uploads are theirs; they drop them when they end (_release).
        Best effort: the store it follows has succeeded whatever happens here."""
        with suppress(Exception):
            for kept, _ in self._kept(sftp, key):
                self._drop(sftp, kept, key.file_name)

    def store_from(
        self, key: Key, source: Readable, size: int, offset: int, prefix: Callable[[bytes], None]
    ) -> bool:
        name = key.file_name
        final = self._path(key.hashdirlower, name)
        hashdirs = (posixpath.dirname(posixpath.dirname(final)), posixpath.dirname(final))
        with self._sftp(f"storing {key}") as sftp:
            self._clean_stale_tmp(sftp)
            if self._holds(sftp, key, size):
                self._drop_kept(sftp, key)
                return False
            mine = ""
            keep = True  # on failure, release what was written for the next attempt
            try:
                mine = self._claim(sftp, key)
                path = posixpath.join(mine, name)
                by_exec = self._write_kept(sftp, key, path, source, size, offset, prefix)
                if by_exec:  # appended to what was kept, as the store's own long uploads
                    self._store_exec(sftp, key, path, source, size, offset)
                sftp.chmod(path, 0o444)
                sftp.batch([_mkdir(sftp, d) for d in hashdirs])
                try:
                    sftp.rename(mine, final)
                except OSError:
                    self._rename_into_place(sftp, key, size, mine, final, hashdirs)
                mine = ""
            except _StoredMeanwhile:
                return False
            except BaseException as e:
                keep = not wrong_content(e)  # wrong content: nothing worth keeping
                raise
            finally:
                if mine:
                    self._release(sftp, key, mine, keep)
            self._drop_kept(sftp, key)
        return True

    def _write_kept(
        self,
        sftp: SFTPSession,
        key: Key,
        path: str,
        source: Readable,
        size: int,
        offset: int,
        prefix: Callable[[bytes], None],
    ) -> bool:
        """Cut the kept bytes to ``offset`` and hand them to ``prefix``; then write the
        rest through SFTP, or return True when it is long enough for the exec path.
        Every reply is checked: a failed write, fsync or close is never committed."""
        handle = _handle(_ok(sftp.batch([_open_rw(sftp, path)])[0]))
        assert handle is not None  # _ok raised the open's error
        try:
            reply = sftp.batch([(paramiko.sftp.CMD_FSTAT, (handle,))])[0]
            kept = _attrs(_ok(reply)).st_size or 0
            if kept < offset:
                if self._holds(sftp, key, size):
                    raise _StoredMeanwhile
                raise NodeError(
                    f"another upload of {key} changed its kept bytes ({kept}, not {offset}); "
                    "try again",
                    self.name,
                )
            cut = paramiko.SFTPAttributes()
            cut.st_size = offset
            _ok(sftp.batch([(paramiko.sftp.CMD_FSETSTAT, (handle, cut))])[0])
            for data in sftp.read_stream(handle, 0, offset, READ_REQUEST, READ_DEPTH):
                prefix(data)
            by_exec = size - offset >= EXEC_MIN and _is_utf8(path) and self._exec_usable()
            if not by_exec:
                written = sftp.write_stream(
                    handle, _blocks(source), WRITE_REQUEST, WRITE_DEPTH, start=offset
                )
                if offset + written != size:
                    raise IntegrityError(
                        f"received {offset + written} bytes for {key}, expected {size}",
                        self.name,
                    )
                synced, closed = sftp.batch([_fsync_request(handle), _close(handle)])
                handle = None
                _ok(closed)
                _synced(synced)
        finally:
            if handle is not None:
                with suppress(Exception):
                    sftp.batch([_close(handle)])
        return by_exec

    def _release(self, sftp: SFTPSession, key: Key, mine: str, keep: bool) -> None:
        """Give the kept bytes back under the key's shared temp name, or drop them when
        they are worth nothing: wrong content, no bytes, or the key stored meanwhile by
        another upload. If another upload released its own meanwhile, the one holding
        more bytes is kept. Best effort: the connection may be what failed (a claim
        left behind is taken up as abandoned once this process is gone)."""
        name = key.file_name
        with suppress(Exception):
            if not (keep and _sizes(sftp, [posixpath.join(mine, name)])[0] > 0):
                _discard(sftp, mine, name)
                return
            found = self._find(sftp, key)
            expected = key.content_size  # a bad replica, of another size, is not the key
            if found is not None and (expected is None or found[1] == expected):
                _discard(sftp, mine, name)
                return
            free = self._path("tmp", resume_name(str(key)))
            for _ in range(3):
                try:
                    sftp.rename(mine, free)
                    return
                except OSError:
                    pass  # another upload released its bytes meanwhile
                other = self._path("tmp", claim_name(str(key)))
                try:
                    sftp.rename(free, other)
                except OSError:
                    continue  # taken meanwhile
                ours, theirs = _sizes(sftp, [posixpath.join(p, name) for p in (mine, other)])
                if theirs > ours:
                    mine, other = other, mine
                _discard(sftp, other, name)

    def _rename_into_place(
        self,
        sftp: SFTPSession,
        key: Key,
        size: int,
        tmpdir: str,
        final: str,
        hashdirs: tuple[str, str],
    ) -> None:
        """The rename failed: another writer finished first (its object was renamed in
        whole), the key directory holds something else under the key's name (a bad
        replica: replaced), an empty key directory is left from a removal, or the hash
        directories were removed meanwhile."""
        name = key.file_name
        if self._holds(sftp, key, size):
            _discard(sftp, tmpdir, name)
            return
        there = sftp.batch([_stat(sftp, posixpath.join(final, name))])[0]
        if not isinstance(there, OSError):
            self._replace_in(sftp, final, posixpath.join(tmpdir, name))
            _discard(sftp, tmpdir, name)
            return
        # Recreate the hash directories; remove the key directory only if it is empty.
        sftp.batch([*(_mkdir(sftp, d) for d in hashdirs), _rmdir(sftp, final)])
        sftp.rename(tmpdir, final)

    def _replace_in(self, sftp: SFTPSession, keydir: str, new: str) -> None:
        """Put ``new`` in place of the file of its name in ``keydir``: one posix-rename
        (OpenSSH's extension: the old file stays whole until then); where the server
        lacks it, remove then rename (meanwhile the key reads absent, which it is: what
        was there is not the key). The directory, read-only like git-annex leaves it,
        is writable only meanwhile."""
        target = posixpath.join(keydir, posixpath.basename(new))
        mode = stat.S_IMODE(_attrs(_ok(sftp.batch([_stat(sftp, keydir)])[0])).st_mode or 0o755)
        sftp.chmod(keydir, mode | stat.S_IWUSR | stat.S_IXUSR)
        try:
            try:
                sftp.posix_rename(new, target)
            except OSError as e:
                if getattr(e, "sftp_status", None) != paramiko.sftp.SFTP_OP_UNSUPPORTED:
                    raise
                with suppress(FileNotFoundError):
                    sftp.remove(target)
                sftp.rename(new, target)
        finally:
            with suppress(OSError):
                sftp.chmod(keydir, mode)

    def retrieve(self, key: Key, sink: Writable, offset: int = 0) -> None:
        """Two round trips for a small object (they dominate small gets): find and open
        it, then read it and close it. An object stored elsewhere than this remote
        stores it (a directory remote's mixed-case layout), or not of the key's size,
        costs one more: ``_find``."""
        with self._sftp(f"reading {key}") as sftp:
            opened = self._open_stored(sftp, key)
            handle: bytes | None = None
            if opened is None:
                found = self._find(sftp, key)
                if found is None:
                    raise NotFound(f"{key} is not in {self.root} on {self.target}", self.name)
                path, size = found
                check_size(key, size, self.name, f"{self.root} on {self.target}")
            else:
                path, size, handle = opened
            try:
                if offset >= size:
                    return
                # Each exec starts a login shell on the host (tens to hundreds of ms), so
                # only long reads stream that way; a command line is text, hence UTF-8.
                if size - offset >= EXEC_MIN and _is_utf8(path) and self._exec_usable():
                    self._retrieve_exec(path, size, offset, sink)
                    return
                if handle is None:
                    handle = _handle(_ok(sftp.batch([_open_read(sftp, path)])[0]))
                    assert handle is not None
                if size - offset <= READ_REQUEST:
                    # (A read handle's close cannot fail in a way that matters.)
                    got, _ = sftp.batch([_read(handle, offset, size - offset), _close(handle)])
                    handle = None
                    data = _data(got)
                    if data:
                        sink.write(data)
                    if len(data) != size - offset:  # as read_stream: the file changed
                        raise EOFError(f"file ended at byte {offset + len(data)} of {size}")
                    return
                for data in sftp.read_stream(handle, offset, size, READ_REQUEST, READ_DEPTH):
                    sink.write(data)
            finally:
                if handle is not None:  # as paramiko's close: a failure here changes nothing
                    with suppress(OSError, EOFError, paramiko.SSHException):
                        sftp.batch([_close(handle)])

    def _open_stored(self, sftp: SFTPSession, key: Key) -> tuple[str, int, bytes] | None:
        """The key's object where this remote stores it (the lower-case hash
        directories), opened for reading, and its size: one round trip, a stat and an
        open that the server runs in order. None when no regular file of the key's
        size is there (``_find`` then looks everywhere, and tells absent from bad)."""
        name = key.file_name
        path = self._path(key.hashdirlower, name, name)
        found, opened = sftp.batch([_stat(sftp, path), _open_read(sftp, path)])
        handle = _handle(opened)
        if handle is not None and not isinstance(found, OSError):
            attrs = _attrs(found)
            size = attrs.st_size or 0
            expected = key.content_size
            if stat.S_ISREG(attrs.st_mode or 0) and (expected is None or size == expected):
                return path, size, handle
        if handle is not None:
            with suppress(OSError, EOFError):
                sftp.batch([_close(handle)])
        return None

    def _exec_usable(self) -> bool:
        """Whether downloads can stream through an exec channel on this host (asked once).

        Much faster than SFTP reads in paramiko (~4x here), but it needs a shell
        account: not an sftp-only one (ForceCommand internal-sftp would answer in
        SFTP and never exit), and no login script printing to stdout. The probe
        must come back exact and quick, or SFTP is used.
        """
        if self._exec_ok is None:
            conn = self.pool.connection(self.target)
            try:
                status, out, err = conn.run(["printf", "%s", _PROBE], timeout=10)
            except NodeError:
                status, out, err = -1, b"", b""
            self._exec_ok = status == 0 and out == _PROBE.encode() and not err
        return self._exec_ok

    def _retrieve_exec(self, path: str, size: int, offset: int, sink: Writable) -> None:
        """Stream [offset, size) with ``tail -c +N`` (POSIX; it seeks on regular files)."""
        conn = self.pool.connection(self.target)
        chan = conn.exec(["tail", "-c", f"+{offset + 1}", "--", path])
        try:
            got = 0
            while data := chan.recv(EXEC_READ):
                got += len(data)
                if got > size - offset:
                    raise IntegrityError(f"{path} on {self.target} grew while read", self.name)
                sink.write(data)
            status = chan.recv_exit_status()
            if status != 0 or got != size - offset:
                raise Unavailable(
                    f"reading {path} on {self.target}: got {got} of {size - offset} bytes, "
                    f"exit status {status}",
                    self.name,
                )
        finally:
            chan.close()

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

    def list_names(self) -> Iterator[str]:
        """As for file:// nodes: ``<2 hash dirs>/<name>/<name>``, ``tmp/`` skipped."""

        def subdirs(sftp: SFTPSession, path: str) -> list[str]:
            try:
                entries = sftp.listdir_attr(path)
            except (OSError, UnicodeDecodeError):
                return []
            return sorted(
                e.filename for e in entries if e.st_mode is not None and stat.S_ISDIR(e.st_mode)
            )

        with self._sftp("listing objects") as sftp:
            problem = self._root_problem(sftp.batch([_stat(sftp, self.root)])[0])
            if problem:  # a missing directory lists nothing, but that is not "empty"
                raise problem
            for top in subdirs(sftp, self.root):
                if top == "tmp":
                    continue
                for mid in subdirs(sftp, posixpath.join(self.root, top)):
                    yield from subdirs(sftp, posixpath.join(self.root, top, mid))

    def close(self) -> None:
        pass  # connections belong to the pool, shared with other nodes on the same host

    def _clean_stale_tmp(self, sftp: SFTPSession) -> None:
        """Remove temp dirs of interrupted stores from this host whose process is gone,
        and settle what killed uploads kept (``_settle``)."""
        if self._tmp_checked:
            return
        self._tmp_checked = True
        try:
            entries = sftp.listdir_attr(self._path("tmp"))
        except (OSError, UnicodeDecodeError):  # a name paramiko cannot decode
            return
        left = []
        for entry in entries:
            if is_stale(entry.filename, entry.st_mtime):
                _rmtree(sftp, self._path("tmp", entry.filename))
            else:
                left.append(entry.filename)
        for group in unsettled(left):
            self._settle(sftp, group)

    def _settle(self, sftp: SFTPSession, group: list[str]) -> None:
        """One key's kept bytes that no running upload holds, not where the next upload
        looks first (several entries, or a claim its killed process left): the one
        holding the most bytes is given back under the key's shared temp name, the
        others are dropped."""
        held: dict[str, tuple[int, str]] = {}  # entry -> (bytes, name of its file)
        for entry in group:
            try:
                listing = sftp.listdir_attr(self._path("tmp", entry))
            except (OSError, UnicodeDecodeError):
                return  # cannot tell what it holds: left to age
            files = [(f.st_size or 0, f.filename) for f in listing if stat.S_ISREG(f.st_mode or 0)]
            held[entry] = max(files, default=(-1, ""))
        # The most bytes first; of equal ones, the shared name (nothing to rename).
        best, *rest = sorted(group, key=lambda e: (held[e][0], "." not in e), reverse=True)
        for entry in rest:
            self._drop(sftp, self._path("tmp", entry), held[entry][1])
        if held[best][0] <= 0:
            self._drop(sftp, self._path("tmp", best), held[best][1])
        elif "." in best:
            with suppress(OSError):  # taken, or another released, meanwhile
                sftp.rename(self._path("tmp", best), self._path("tmp", best.partition(".")[0]))


class _StoredMeanwhile(Exception):
    """Another upload committed the key (and dropped what was kept) while this one
    waited for its kept bytes: this store has nothing left to do."""


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _stat(sftp: SFTPSession, path: str) -> tuple[int, tuple[Any, ...]]:
    return paramiko.sftp.CMD_STAT, (sftp._adjust_cwd(path),)


def _mkdir(sftp: SFTPSession, path: str) -> tuple[int, tuple[Any, ...]]:
    return paramiko.sftp.CMD_MKDIR, (sftp._adjust_cwd(path), paramiko.SFTPAttributes())


def _rmdir(sftp: SFTPSession, path: str) -> tuple[int, tuple[Any, ...]]:
    return paramiko.sftp.CMD_RMDIR, (sftp._adjust_cwd(path),)


def _open_new(sftp: SFTPSession, path: str) -> tuple[int, tuple[Any, ...]]:
    flags = paramiko.sftp.SFTP_FLAG_WRITE | paramiko.sftp.SFTP_FLAG_CREATE
    flags |= paramiko.sftp.SFTP_FLAG_EXCL  # the temp directory is ours alone
    return paramiko.sftp.CMD_OPEN, (sftp._adjust_cwd(path), flags, paramiko.SFTPAttributes())


def _open_read(sftp: SFTPSession, path: str) -> tuple[int, tuple[Any, ...]]:
    flags = paramiko.sftp.SFTP_FLAG_READ
    return paramiko.sftp.CMD_OPEN, (sftp._adjust_cwd(path), flags, paramiko.SFTPAttributes())


def _read(handle: bytes, offset: int, length: int) -> tuple[int, tuple[Any, ...]]:
    return paramiko.sftp.CMD_READ, (handle, paramiko.sftp.int64(offset), length)


def _data(reply: Any) -> bytes:
    """The bytes of a READ reply (raising the error it carries; EOF: no bytes)."""
    if isinstance(reply, EOFError):
        return b""
    kind, msg = _ok(reply)
    if kind != paramiko.sftp.CMD_DATA:
        raise paramiko.SFTPError(f"expected data, got reply type {kind}")
    return cast(bytes, msg.get_string())


def _open_rw(sftp: SFTPSession, path: str) -> tuple[int, tuple[Any, ...]]:
    flags = paramiko.sftp.SFTP_FLAG_READ | paramiko.sftp.SFTP_FLAG_WRITE
    flags |= paramiko.sftp.SFTP_FLAG_CREATE
    return paramiko.sftp.CMD_OPEN, (sftp._adjust_cwd(path), flags, paramiko.SFTPAttributes())


def _is_file_of(attrs: paramiko.SFTPAttributes, size: int) -> bool:
    """A regular file of exactly ``size`` bytes: only that is the key already stored."""
    return stat.S_ISREG(attrs.st_mode or 0) and attrs.st_size == size


def _ok(reply: Any) -> Any:
    """A batch reply, or the error it carries raised."""
    if isinstance(reply, OSError):
        raise reply
    return reply


def _synced(reply: Any) -> None:
    """An fsync@openssh.com reply: fatal if it failed, fine if the server lacks it."""
    if isinstance(reply, OSError):
        if getattr(reply, "sftp_status", None) == paramiko.sftp.SFTP_OP_UNSUPPORTED:
            return
        raise reply


def _close(handle: bytes) -> tuple[int, tuple[Any, ...]]:
    return paramiko.sftp.CMD_CLOSE, (handle,)


def _fsync_request(handle: bytes) -> tuple[int, tuple[Any, ...]]:
    return _CMD_EXTENDED, ("fsync@openssh.com", handle)


def _handle(reply: Any) -> bytes | None:
    """The handle of an OPEN reply, or None when the open failed."""
    if isinstance(reply, OSError):
        return None
    kind, msg = reply
    if kind != paramiko.sftp.CMD_HANDLE:
        raise paramiko.SFTPError(f"expected a handle, got reply type {kind}")
    return cast(bytes, msg.get_binary())


def _blocks(source: Readable) -> Iterator[bytes]:
    while block := source.read(BLOCK):
        yield block


def _read_at_most(source: Readable, limit: int) -> bytes:
    """What ``source`` holds, up to ``limit`` bytes."""
    parts, got = [], 0
    while got < limit and (block := source.read(limit - got)):
        parts.append(block)
        got += len(block)
    return b"".join(parts)


def _sizes(sftp: SFTPSession, paths: list[str]) -> list[int]:
    """The sizes of the files at ``paths`` (-1 where there is none), in one round trip."""
    replies = sftp.batch([_stat(sftp, p) for p in paths])
    return [-1 if isinstance(r, OSError) else _attrs(r).st_size or 0 for r in replies]


def _attrs(reply: Any) -> paramiko.SFTPAttributes:
    kind, msg = reply
    if kind != paramiko.sftp.CMD_ATTRS:
        raise paramiko.SFTPError(f"expected attributes, got reply type {kind}")
    return cast(paramiko.SFTPAttributes, cast(Any, paramiko.SFTPAttributes)._from_msg(msg))


def _rmtree(sftp: SFTPSession, path: str) -> None:
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


def _discard(sftp: SFTPSession, tmpdir: str, name: str) -> None:
    """Remove our temp directory by its known content (listing could fail on odd names)."""
    for path, remove in ((posixpath.join(tmpdir, name), sftp.remove), (tmpdir, sftp.rmdir)):
        with suppress(OSError):
            remove(path)


def _extended(sftp: SFTPSession, name: str, arg: object) -> paramiko.Message | None:
    """An OpenSSH extended request; paramiko has no public method for these."""
    kind, msg = cast(Any, sftp)._request(_CMD_EXTENDED, name, arg)
    return msg if kind == paramiko.sftp.CMD_EXTENDED_REPLY else None
