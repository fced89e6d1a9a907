"""``git-annex-remote-proxy serve``: a gateway that speaks P2P on stdin/stdout like
``git-annex-shell p2pstdio``, in front of a node or a cluster of nodes.

Three ways in, one server:

- ``serve TARGET`` (what the proxy remote runs over ssh);
- ``serve p2pstdio DIR CLIENT-UUID [--uuid UUID]`` and ``serve configlist DIR``,
  the argument forms of git-annex-shell, so that a stock git-annex whose remote
  has ``remote.NAME.annex-shell`` set to our command uses the gateway as an
  ordinary ssh remote (DIR's last component names the target);
- as an ssh forced command, what the client sent (``SSH_ORIGINAL_COMMAND``): any of
  those forms, git-annex-shell's as git-annex sends them, and git's
  ``git-upload-pack``/``git-receive-pack`` for the target's git repository, so one
  key serves a stock client's git and annex (``request`` parses them all, ``access``
  applies the key's restrictions and answers configlist and git itself).

Uploads stream through: each is hashed while it passes and the nodes commit it
only if the hash matches the key, so content with a wrong hash never becomes
visible; nothing holds the object on the gateway beyond each node's own temp.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from git_annex_remote_proxy import locks
from git_annex_remote_proxy.config import GatewayConfig, Target
from shared.annex.keys import ContentVerifier, Key
from shared.cluster.badcopies import BadCopies
from shared.cluster.core import (
    Cluster,
    PresenceUnknown,
    RemoveFailed,
    RetrieveFailed,
    StoreOutcome,
)
from shared.cluster.verify import VerifiedReader
from shared.errors import ClusterError, IntegrityError
from shared.nodes import open_node
from shared.nodes.annex import AnnexNode
from shared.nodes.base import UNKNOWN_SIZE, Layer, Node
from shared.p2p.io import Server
from shared.streams import Readable

BLOCK = 1024 * 1024
SMALL_READ = 1024 * 1024  # reads this short are done whole before they are sent
PIPE_SIZE = 1024 * 1024  # Linux's default /proc/sys/fs/pipe-max-size


# -- the backend: a cluster behind the P2P server ------------------------------------


class _Collect:
    """A sink into a bytearray (``ClusterBackend._read_whole``)."""

    def __init__(self, out: bytearray) -> None:
        self.out = out

    def write(self, data: bytes, /) -> None:
        self.out += data


class _Busy(Exception):
    """A content lock is held the other way by another session."""


_Held = tuple[Path, int]  # a content lock: its file, and the fd that holds it


class ClusterBackend:
    """``shared.p2p.io.Backend`` over a cluster (a single-node target is a cluster of one)."""

    def __init__(
        self,
        cluster: Cluster,
        log: Callable[[str], None],
        own_uuid: str | None = None,
        lock_dir: Path | None = None,
        read_ahead: int = 2,
    ) -> None:
        """``lock_dir``: where the gateway's sessions share content locks (LOCKCONTENT);
        None: no locks (LOCKCONTENT fails, as before a directory could be made).
        ``read_ahead``: blocks a download reads ahead of its client (see ``_blocks``)."""
        self.cluster, self.log, self.own_uuid = cluster, log, own_uuid
        self.read_ahead = read_ahead
        self._opened = cluster  # bypass may replace self.cluster with a subset of it
        self.lock_dir = lock_dir
        # Locks belong to the storage, not to the target: targets may share a node.
        self._lock_names = [_node_lock_name(n.spec.url) for n in cluster.nodes]
        self._locks: dict[Key, list[_Held]] = {}  # key -> its shared locks

        self._resume: tuple[Key, list[Node], int] | None = None  # from put_offset to store
        self.bypass(())  # even a client that sends no BYPASS must not start a cycle

    def bypass(self, uuids: tuple[str, ...]) -> None:
        """BYPASS from the client: targets of gateways already on this request's path.
        Nodes that are such gateways are left out (a cycle ends here), and the nodes that
        are other gateways are told the path so far, ours included."""
        path = (*uuids, *((self.own_uuid,) if self.own_uuid else ()))
        keep = []
        for node in self.cluster.nodes:
            inner = node
            while isinstance(inner, Layer):  # retries, and the http server's observer
                inner = inner.inner
            if isinstance(inner, AnnexNode) and inner.is_gateway:
                if uuids:
                    try:
                        uuid: str | None = inner.discover_uuid()
                    except ClusterError as e:
                        self.log(f"node {node.name}: {e}")
                        uuid = None
                    if uuid in uuids:
                        self.log(f"node {node.name} is gateway target {uuid}, already on the path")
                        continue
                inner.bypass = path
            keep.append(node)
        if len(keep) != len(self.cluster.nodes):
            if not keep:
                raise ClusterError("every node of this target is already on the request's path")
            copies = min(self.cluster.copies, len(keep))
            mincopies = min(self.cluster.mincopies, copies)
            self.cluster = Cluster(
                keep,
                copies,
                mincopies,
                log=_debug,
                bad=self.cluster.bad,
                on_bad=self.cluster.on_bad,
            )

    def present(self, key: Key) -> bool:
        return self.cluster.present(key)  # PresenceUnknown: the server answers ERROR

    def put_offset(self, key: Key) -> int:
        """Where an upload of ``key`` continues: the least that the nodes it goes to
        kept of an interrupted one (their temps survive the connection). Only for keys
        whose hash the gateway checks (the kept bytes are checked with the rest) and
        when every one of those nodes can resume; 0 otherwise."""
        self._resume = None
        size = key.content_size
        if size is None or not ContentVerifier(key).checks_hash:
            return 0
        wave = self.cluster.resumable_wave(key, size)
        if wave is None:
            return 0
        offset = min(min(n.partial(key) for n in wave), size)
        self._resume = (key, wave, offset)
        _debug(f"put {key} to {','.join(n.name for n in wave)}: continuing at byte {offset}")
        return offset

    def store(
        self, key: Key, offset: int, length: int, data: Readable, valid: Callable[[], bool]
    ) -> tuple[str, ...]:
        resume, self._resume = self._resume, None
        expected = key.content_size
        if expected is not None and offset + length != expected:
            # Refused before any node writes a byte of it (the payload is drained).
            raise IntegrityError(f"{key}: {offset + length} bytes offered, the key has {expected}")
        if resume is not None and resume[0] == key and resume[2] == offset:
            outcome = self.cluster.store_resuming(key, data, offset + length, offset, resume[1])
            return self._report(key, outcome)
        if offset:
            raise ClusterError(f"cannot resume an upload at {offset}")
        outcome = self.cluster.store_stream(key, VerifiedReader(data, key, length, valid), length)
        return self._report(key, outcome)

    def _report(self, key: Key, outcome: StoreOutcome) -> tuple[str, ...]:
        if outcome.failed:
            self.log(f"store {key}: {outcome.describe_failures()}")
        return self._uuids(outcome.stored + outcome.already)

    def _uuids(self, names: list[str]) -> tuple[str, ...]:
        """The UUIDs of those nodes that are repositories (or other gateways' targets):
        reported in SUCCESS-PLUS/FAILURE-PLUS, as a native cluster gateway reports its
        nodes, so that a git-annex client records where the key really is."""
        return tuple(
            uuid for n in self.cluster.nodes if n.name in names and (uuid := n.uuid) is not None
        )

    def _size(self, key: Key) -> int | None:
        """The size to announce for a GET, when some node holds the key (any one will
        do for a read, however many ``present`` wants)."""
        size = key.content_size
        if size is not None:
            census = self.cluster.census(key)
            if census.holders:
                return size
            if census.unknown and not census.bad:
                detail = "; ".join(f"node {n}: {r}" for n, r in census.unknown.items())
                raise PresenceUnknown(f"{key}: could not check {detail}")
            return None
        for node in self.cluster.retrieve_order(key):
            with contextlib.suppress(Exception):
                found = node.present(key)
                if found is not None and found != UNKNOWN_SIZE:
                    return found
        return None

    def retrieve(self, key: Key, offset: int) -> tuple[int, Iterator[bytes]] | None:
        _debug(f"get {key} from byte {offset}")
        size = key.content_size
        if size is not None and size - offset <= SMALL_READ:
            # (Only where the key says its size: a copy of a key that does not is read
            # as long as it is, and one of the wrong size must not fill memory.)
            # Read first, ask after: the read finds a holder itself, and asking a node
            # before reading from it was a third of a small GET's work. Only when no
            # node gave the key does the census say which answer that is: absent
            # (None), unknown (PresenceUnknown), or held but unreadable (the error).
            try:
                return size, iter((self._read_whole(key, offset),))
            except (RetrieveFailed, IntegrityError):
                if self._size(key) is None:
                    return None
                raise
        found = self._size(key)
        if found is None:
            return None
        return found, self._blocks(key, offset)

    def _read_whole(self, key: Key, offset: int) -> bytes:
        """A short read, done and checked before its first byte goes out: a copy that
        proves wrong is noted (the next read order puts it last) and the read starts
        again, so the client gets the right bytes, or an error, never wrong ones. No
        thread and no queue either: for a small file those cost more than the read."""
        for _ in range(len(self.cluster.nodes)):
            out = bytearray()
            try:
                self.cluster.retrieve_stream(key, _Collect(out), offset)
            except IntegrityError as e:
                self.log(f"get {key}: {e}; reading it again")
                continue
            return bytes(out)
        raise IntegrityError(f"{key}: every copy read proved wrong")

    def _blocks(self, key: Key, offset: int) -> Iterator[bytes]:
        """The cluster writes into a sink; the server pulls blocks: a bounded queue and a
        thread join the two (and the thread stops if the client goes away).

        The queue holds ``read_ahead`` blocks (the cluster's reads, up to 1 MiB each), a
        MiB of peak memory each per download in flight. ``serve`` writes into a pipe
        that sshd drains into a channel window of its own, so two let reading and
        sending overlap (bench/scale.py size, 256 MiB through our proxy remote: 78 MiB/s
        with 2, 64-79 with 8). The HTTP server writes straight into the client's socket
        and keeps 8, what its figures were measured with."""
        q: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=self.read_ahead)
        stop = threading.Event()

        class Sink:
            def write(self, data: bytes) -> None:
                while not stop.is_set():
                    try:
                        q.put(bytes(data), timeout=0.5)
                        return
                    except queue.Full:
                        continue
                raise ClusterError("the client went away")

        def run() -> None:
            try:
                self.cluster.retrieve_stream(key, Sink(), offset)
                item: BaseException | None = None
            except BaseException as e:
                item = e
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.5)
                    return
                except queue.Full:
                    continue

        thread = threading.Thread(target=run, name=f"get {key}", daemon=True)
        thread.start()
        try:
            while True:
                got = q.get()
                if got is None:
                    return
                if isinstance(got, BaseException):
                    raise got
                yield got
        finally:
            stop.set()
            thread.join(timeout=5)

    def remove(self, key: Key) -> tuple[bool, tuple[str, ...]]:
        everyone = [n.name for n in self.cluster.nodes]
        try:
            held = self._lock_all(key, fcntl.LOCK_EX)
        except _Busy:
            self.log(f"not removing {key}: another client holds it locked (LOCKCONTENT)")
            return False, ()
        try:
            if (bad := self._bad_copies_only(key)) is not None:
                return False, bad
            self.cluster.remove(key)
        except RemoveFailed as e:  # FAILURE(-PLUS): removed from the others only
            self.log(str(e))
            return False, self._uuids([n for n in everyone if n not in e.failed])
        finally:
            _release_all(held)
        return True, self._uuids(everyone)

    def _bad_copies_only(self, key: Key) -> tuple[str, ...] | None:
        """A REMOVE of a key whose bad copy a read found: remove the bad copies only,
        and fail (None: no bad copy noted, remove as usual). A stock client's ``fsck
        --from`` got the bytes before INVALID and answers them with REMOVE: see
        ``Cluster.remove_bad_copies``."""
        found = self.cluster.remove_bad_copies(key)
        if found is None:
            return None
        noted, removed = found
        self.log(
            f"not removing {key} from every node: a read found bad copies on "
            f"{', '.join(noted)} (removed from {', '.join(removed) or 'none'}); "
            "the client may be acting on those bytes. Ask again to remove it everywhere."
        )
        return self._uuids(removed)

    def lock(self, key: Key) -> bool:
        """Shared locks on the key's lock file of each node, which every session of
        this gateway, through any target, takes exclusively before it removes the key
        from that node: while any client holds them, the key is not removed through
        this gateway (its process ending, for a lost connection, releases them). Then
        the key must be present. The lock files go when their last holder lets go
        (``git_annex_remote_proxy.locks``)."""
        try:
            held = self._lock_all(key, fcntl.LOCK_SH)
        except _Busy:  # being removed right now
            return False
        if not held:
            return False
        try:
            present = self.cluster.present(key)
        except BaseException:
            _release_all(held)
            raise
        if not present:
            _release_all(held)
            return False
        self._locks[key] = held
        return True

    def unlock(self, key: Key) -> None:
        _release_all(self._locks.pop(key, []))

    def take_lock(self, key: Key) -> Callable[[], None] | None:
        """``lock``, held apart from this backend (which may serve other requests
        meanwhile): the function that releases it, or None when not locked."""
        if not self.lock(key):
            return None
        held = self._locks.pop(key, [])
        return lambda: _release_all(held)

    def close(self) -> None:
        """Release what this session holds: its content locks and node connections."""
        for key in list(self._locks):
            self.unlock(key)
        if self.cluster is not self._opened:
            self.cluster.close()
        self._opened.close()

    def _lock_all(self, key: Key, how: int) -> list[_Held]:
        """``how`` held on the key's lock file of every node, none when there is no
        lock directory; ``_Busy`` when another session holds one the other way."""
        if self.lock_dir is None:
            return []
        name = hashlib.md5(str(key).encode("utf-8", "surrogateescape")).hexdigest()
        held: list[_Held] = []
        try:
            for node in self._lock_names:
                where = self.lock_dir / node
                where.mkdir(exist_ok=True, mode=0o700)
                held.append((where / name, locks.take(where / name, how)))
        except BlockingIOError:
            _release_all(held)
            raise _Busy from None
        except BaseException:
            _release_all(held)
            raise
        return held


def _node_lock_name(url: str) -> str:
    """The directory of a node's content locks: its URL, as the same storage is
    likely written in each target's list (a trailing slash aside)."""
    return hashlib.md5(url.rstrip("/").encode("utf-8", "surrogateescape")).hexdigest()


def _release_all(held: list[_Held]) -> None:
    for path, fd in held:
        locks.release(path, fd)


# -- the command ---------------------------------------------------------------------


class _Stdio:
    """fd 0 and a private duplicate of fd 1 as a Stream; fd 1 then goes to stderr, so a
    stray print can never corrupt the protocol."""

    def __init__(self) -> None:
        self.out = os.dup(1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        for fd in (0, self.out):  # bigger pipes: fewer, larger reads and writes for sshd and us
            with contextlib.suppress(OSError, AttributeError):
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)

    def recv(self, n: int, /) -> bytes:
        return os.read(0, n)

    def sendall(self, data: bytes, /) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.out, view) :]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.out)


def _log(message: str) -> None:
    print(f"git-annex-remote-proxy: {message}", file=sys.stderr, flush=True)


def bad_copies_path(config_path: Path, target_uuid: str) -> Path:
    """Where a target's sessions note the bad copies their reads found (so that the
    next session reads that node last, and ``gateway status``/``fsck`` report them):
    ``state/<target uuid>/bad-copies`` beside the configuration file."""
    return config_path.parent / "state" / target_uuid / "bad-copies"


def _lock_dir(config_path: Path) -> Path | None:
    """``locks/`` beside the configuration file: shared by every session of this
    gateway, one directory per node. None (no content locks) when it cannot be made.
    What sessions killed while they held a lock left there is removed."""
    where = config_path.parent / "locks"
    try:
        where.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        _log(f"no content locks: cannot make {where}: {e.strerror}")
        return None
    locks.sweep(where)
    return where


def open_backend(
    target: Target,
    config_path: Path,
    log: Callable[[str], None] = _log,
    wrap: Callable[[Node], Node] | None = None,
    read_ahead: int = 2,
    fanout_depth: int = 2,
) -> ClusterBackend:
    """The backend of one session with ``target``: its nodes opened as the gateway opens
    them, bad copies and content locks shared with every other session of the gateway
    (ssh ``serve`` and ``http`` alike). ``close`` it when done. ``wrap``: a layer around
    each node (the http server's metrics observe the nodes through one). ``read_ahead``:
    see ``ClusterBackend._blocks``. ``fanout_depth``: the blocks an upload queues for
    each node (``shared.cluster.fanout``). Two, for ``serve``: one process per ssh
    session, whose peak RSS for a 4 GiB upload was 23 -> 28-29 MiB with 4 (bench/scale.py
    size); the HTTP server keeps the cluster's default."""
    specs = target.specs()
    # Uploads are verified only at their end: never resume over chunks an earlier,
    # unverified upload left (see shared.nodes.chunked).
    # Nodes write and remove only while the target owns them (shared.nodes.owner).
    ownership = GatewayConfig.load(config_path).ownership(target)
    nodes = [open_node(s, target.uuid, trusted_source=False, ownership=ownership) for s in specs]
    if wrap is not None:
        nodes = [wrap(n) for n in nodes]
    cluster = Cluster(
        nodes,
        copies=target.copies,
        mincopies=target.mincopies,
        log=_debug,
        bad=BadCopies(bad_copies_path(config_path, target.uuid)),
        on_bad=lambda key, node, why: log(f"node {node} holds a bad copy of {key}: {why}"),
        fanout_depth=fanout_depth,
    )
    return ClusterBackend(cluster, log, target.uuid, _lock_dir(config_path), read_ahead)


def serve_target(target: Target, client_uuid: str | None, mode: str, config_path: Path) -> int:
    """P2P on stdin/stdout for ``target`` (``access.serve`` decided which, and how)."""
    backend = open_backend(target, config_path)
    stream = _Stdio()
    try:
        Server(stream, backend, target.uuid, mode, log=_log).serve()
    finally:
        backend.close()
        stream.close()
    del client_uuid  # recorded by git-annex-shell in transfer logs; we keep none
    return 0


def _debug(message: str) -> None:
    if os.environ.get("GIT_ANNEX_REMOTE_PROXY_DEBUG"):
        _log(message)
