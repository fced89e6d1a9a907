"""The one interface every storage backend implements.

Contracts (the cluster and the conformance tests rely on them):

- ``present(key)`` returns the stored size, or ``None`` when the node *confirms*
  the key is absent. A node that can confirm presence but not tell sizes (a
  git-annex repository over P2P, for a key that does not carry its size) returns
  ``UNKNOWN_SIZE``. Anything short of a confirmation raises ``Unavailable``:
  an unreachable node never looks like an empty one, and neither does a node
  whose storage is missing (its directory, bucket or repository): that is
  "cannot tell", not "absent".
- Presence means the key's content size: where the node can tell the stored
  size and the key carries one (``key.content_size``), an object of another
  size under the key's name (a 0-byte leftover, a truncated copy) is not the
  key: ``present`` raises ``BadReplica`` (one line naming the node, the key and
  both sizes), and so does ``retrieve`` before it sends a byte.
- ``store(key, source, size)`` is atomic and idempotent: partial data is never
  visible under the key's name, and storing a present key succeeds without
  reading ``source``. It returns True when it wrote the object, False when the
  key was already there, which it only says for an object of exactly ``size``
  bytes: anything else under the key's name is replaced, atomically. It reads
  ``source`` to EOF and refuses to commit if the byte count differs from ``size``.
- ``retrieve(key, sink, offset)`` writes the object's bytes from ``offset`` to
  the end, sequentially, to ``sink``; ``NotFound`` when absent.
- ``remove(key)`` succeeds when the key is absent afterwards, including when it
  never was there; a node that cannot tell (its storage is missing) raises
  ``Unavailable``.
- ``owner()`` / ``claim(uuid)`` (nodes that ``records_owner``): the UUID of the remote
  or gateway target that owns the storage, kept in a small marker beside the objects
  (``shared.nodes.owner``); see their docstrings.
- ``native_owner()``: the UUID of a git-annex special remote of git-annex's own that
  keeps its objects in the same storage (git-annex's S3 remote records it in
  ``annex-uuid`` at its prefix): both remotes would report the same objects.
- Errors are the flat types of ``shared.errors``, translated at the backend's edge.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from shared.annex.keys import Key
from shared.errors import BadReplica, IntegrityError, InvalidKey, Unsupported
from shared.nodes.url import NodeSpec
from shared.streams import BLOCK, Readable, Writable

# Default costs follow git-annex's scale: cheap local 100, semi-cheap 110, expensive 200.
CHEAP_COST = 100
EXPENSIVE_COST = 200


class ExactSource:
    """A store's source, refusing (before the peer could commit) anything but exactly
    ``size`` bytes: a longer source fails on the read that goes past the end."""

    def __init__(self, source: Readable, size: int, key: Key, node: str) -> None:
        self.source, self.left, self.key, self.node = source, size, key, node

    def read(self, n: int = -1, /) -> bytes:
        block = self.source.read(n)
        self.left -= len(block)
        if self.left < 0:
            raise IntegrityError(f"received more bytes for {self.key} than its size", self.node)
        return block


UNKNOWN_SIZE = -1  # present, size not known (see the contract above)

#: The keys a caller knows of (the repository's git-annex branch), asked for only by
#: nodes whose object names cannot be read back as keys (encrypted names).
KnownKeys = Callable[[], Iterable[Key]]


def check_size(key: Key, stored: int, node: str, where: str = "") -> int:
    """``stored`` when it is the key's content size (or the key does not say); else
    ``BadReplica``: the object under the key's name is not the key."""
    expected = key.content_size
    if expected is not None and stored != UNKNOWN_SIZE and stored != expected:
        place = f" in {where}" if where else ""
        raise BadReplica(
            f"{key}{place} has {stored} bytes, not {expected}: a bad replica, not a copy "
            "(a store replaces it)",
            node,
        )
    return stored


def copy_exact(source: Readable, out: Writable, size: int, key: Key, node: str) -> None:
    """Copy ``source`` to EOF into ``out``; refuse, before any commit, unless it was ``size``."""
    written = 0
    while block := source.read(BLOCK):
        out.write(block)
        written += len(block)
    if written != size:
        raise IntegrityError(f"received {written} bytes for {key}, expected {size}", node)


@dataclass(frozen=True)
class Usage:
    """Free and total bytes where the node can tell; used by placement and status."""

    free: int
    total: int


class Node(ABC):
    """A place that holds git-annex objects by key."""

    default_cost = EXPENSIVE_COST

    def __init__(self, spec: NodeSpec) -> None:
        self.spec = spec

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def cost(self) -> int:
        return self.spec.cost if self.spec.cost is not None else self.default_cost

    @property
    def zone(self) -> str | None:
        """Failure domain (rack, room, site): placement spreads a key's copies over zones."""
        return self.spec.zone

    @property
    def is_local(self) -> bool:
        """True when the node is only reachable from this machine (git-annex AVAILABILITY LOCAL)."""
        return False

    @property
    def uuid(self) -> str | None:
        """The identity of the storage where it has one (a git-annex repository's UUID),
        known after ``check``; None for plain storage."""
        return None

    def check(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Raise ``Unavailable`` cheaply if the node obviously cannot be used right now."""

    #: ``owner`` and ``claim`` work: the storage holds a marker naming its owner (plain
    #: storage: directories, buckets). Nodes with an identity of their own (a git-annex
    #: repository, another gateway's target) record nothing: that identity is the owner.
    records_owner = False

    def owner(self) -> str | None:
        """The UUID recorded as the owner of the storage: the remote (or gateway target)
        that writes and removes there. None when no owner is recorded (storage written
        before markers existed, or never used), and always None for nodes that do not
        ``records_owner``. Raises ``Unavailable`` when it cannot tell (an unreachable
        node is never "unowned"), ``NotOwner`` when the record is not a UUID."""
        return None

    def claim(self, uuid: str, take_over: bool = False) -> str:
        """Record ``uuid`` as the owner unless another owner is recorded; return the owner
        recorded afterwards: ``uuid`` when the claim took (or the record was ours
        already), the other owner otherwise. ``take_over``: replace another owner's
        record. The record appears whole (a temp and a rename, or one PUT); a claim of
        unowned storage is exclusive where the storage can make it so (a hard link, an
        SFTP rename, a conditional PUT), so that of two first claims one wins and the
        other returns the winner. A claim by the recorded owner writes nothing, so
        calling it once per process is cheap. Raises like ``owner``, and
        ``PermissionDenied`` when the record cannot be written. Nodes that do not
        ``records_owner`` write nothing and return ``uuid``."""
        return uuid

    def native_owner(self) -> str | None:
        """The UUID of a git-annex special remote (not one of ours) that keeps its own
        objects, under the names this node uses, in this storage: git-annex's S3 remote
        writes it to ``<fileprefix>annex-uuid``. None when there is none, and for node
        types without such a record. Raises like ``owner``."""
        return None

    @abstractmethod
    def present(self, key: Key) -> int | None: ...

    @abstractmethod
    def store(self, key: Key, source: Readable, size: int) -> bool: ...

    def overwrite(self, key: Key, source: Readable, size: int) -> None:
        """Store without asking first whether the key is there (a layer that knows it is
        not saves a request per object); what is there is replaced atomically. Backends
        whose ``store`` costs no extra request for that keep this default."""
        self.store(key, source, size)

    @abstractmethod
    def retrieve(self, key: Key, sink: Writable, offset: int = 0) -> None: ...

    #: ``partial`` and ``store_from`` work: a store interrupted half-way can continue
    resumable = False

    def partial(self, key: Key) -> int:
        """Bytes kept from an interrupted ``store_from`` of ``key``; 0 when none."""
        return 0

    def store_from(
        self,
        key: Key,
        source: Readable,
        size: int,
        offset: int,
        prefix: Callable[[bytes], None],
    ) -> bool:
        """``store``, continuing what an interrupted ``store_from`` kept: the kept bytes
        are cut to ``offset``, handed to ``prefix`` (the caller hashes them: they are
        checked with the rest), and ``source`` gives the bytes from ``offset`` on. When
        ``source`` fails, what was written is kept for the next attempt, unless the
        failure is an ``IntegrityError`` (wrong content), which discards it. Callers that
        may not trust the kept bytes must check the whole through ``prefix``."""
        raise Unsupported("this kind of node cannot resume a store", self.name)

    @abstractmethod
    def remove(self, key: Key) -> None: ...

    def usage(self) -> Usage | None:
        """Free space, or None when the backend cannot tell."""
        return None

    #: ``used`` can tell the bytes held (``maxsize=`` needs it)
    counts_bytes = False

    def used(self) -> int:
        """Bytes held, counted once per process (the cluster keeps the count up to date
        afterwards). Only for nodes that ``counts_bytes``."""
        raise Unsupported("this kind of node cannot count what it holds", self.name)

    def list_names(self) -> Iterator[str]:
        """The names of the objects stored (keys, chunk keys or encrypted names), streamed;
        ``Unsupported`` where the backend cannot list (a git-annex repository over P2P)."""
        raise Unsupported("this kind of node cannot list what it holds", self.name)

    def list_keys(self, known: KnownKeys | None = None) -> Iterator[Key]:
        """The keys held, streamed (memory does not grow with their number). Names that
        are not keys (a stray file) are skipped. Layers that hide key names match them
        against ``known``; ``Unsupported`` where the node cannot list at all."""
        for name in self.list_names():
            try:
                yield Key.from_file_name(name)
            except InvalidKey:
                continue

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections. Called once when the remote process ends."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.spec.url}>"


class Layer(Node):
    """A node over another (retries, chunking, encryption): whatever it does not change
    (cost, locality, identity, free space, closing) is the inner node's."""

    def __init__(self, inner: Node) -> None:
        super().__init__(inner.spec)
        self.inner = inner

    @property
    def cost(self) -> int:
        return self.inner.cost

    @property
    def is_local(self) -> bool:
        return self.inner.is_local

    @property
    def uuid(self) -> str | None:
        return self.inner.uuid

    def check(self) -> None:
        self.inner.check()

    @property
    def records_owner(self) -> bool:  # type: ignore[override]
        return self.inner.records_owner

    def owner(self) -> str | None:
        return self.inner.owner()

    def claim(self, uuid: str, take_over: bool = False) -> str:
        return self.inner.claim(uuid, take_over)

    def native_owner(self) -> str | None:
        return self.inner.native_owner()

    def usage(self) -> Usage | None:
        return self.inner.usage()

    def list_names(self) -> Iterator[str]:
        return self.inner.list_names()

    def list_keys(self, known: KnownKeys | None = None) -> Iterator[Key]:
        return self.inner.list_keys(known)

    @property
    def counts_bytes(self) -> bool:  # type: ignore[override]
        return self.inner.counts_bytes

    def used(self) -> int:
        return self.inner.used()

    def close(self) -> None:
        self.inner.close()
