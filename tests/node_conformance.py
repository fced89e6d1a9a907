"""The Node conformance suite: every contract of ``shared.nodes.base`` checked on any backend.

A backend's test module subclasses :class:`NodeConformance` (the class name must
start with ``Test`` there) and overrides three things:

- the ``make_node`` fixture: a factory returning a fresh handle on the *same*,
  initially empty storage each time it is called (tests may open two handles);
- the ``make_missing_node`` fixture: the same kind of node on storage that does not
  exist (its directory, bucket or repository is gone or misnamed);
- :meth:`NodeConformance.leftovers`: what the backend would leave behind from an
  unfinished store (temp files, multipart uploads); it must be empty after any
  store, successful or not.

Nothing here knows which backend it runs on.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from shared.annex.keys import Key
from shared.cluster.fanout import SourceFailed
from shared.errors import (
    BadReplica,
    IntegrityError,
    NodeError,
    NotFound,
    Unavailable,
    Unsupported,
)
from shared.nodes import tmpnames
from shared.nodes.base import UNKNOWN_SIZE, Layer, Node
from shared.nodes.tmpnames import PREFIX, resume_name

NodeFactory = Callable[[], Node]


def make_key(data: bytes, ext: str = ".bin") -> Key:
    """A real SHA256E key for ``data``, as git-annex would name it."""
    return Key("SHA256E", hashlib.sha256(data).hexdigest() + ext, size=len(data))


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating-looking bytes so offsets and truncation show."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


# Keys whose file names exercise chunking, encryption, and the keyFile escapes (& % : /).
ODD_KEYS = [
    pytest.param("SHA256E-s3000000-S1048576-C3--" + "ab" * 32 + ".bin", id="chunk"),
    pytest.param("SHA256E-s10-S4-C1--" + "cd" * 32, id="chunk-first"),
    pytest.param("GPGHMACSHA1--0123456789abcdef0123456789abcdef01234567", id="gpghmacsha1"),
    pytest.param("GPGHMACSHA256--" + "ef" * 32, id="gpghmacsha256"),
    pytest.param("URL--http://example.com/a/b?c=d&e", id="url-slash-amp"),
    pytest.param("URL-s99--https://example.com:8080/x%20y&z=1", id="url-colon-percent"),
    pytest.param("URL--http://h/100%&x:y//", id="url-all-escapes"),
    pytest.param("WORM-s5-m1700000000--some-file.txt", id="worm"),
    pytest.param("WORM-s5--caf\u00e9-\u20ac.txt", id="worm-unicode"),
    pytest.param("WORM-s5--caf\udce9.txt", id="worm-not-utf8"),  # a Latin-1 byte, escaped
]


class Sink:
    """A write-only, sequential destination (no seek), recording every write."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.writes = 0

    def write(self, data: bytes, /) -> int:
        self.buf += data
        self.writes += 1
        return len(data)

    @property
    def data(self) -> bytes:
        return bytes(self.buf)


class TrickleSource:
    """Returns at most ``step`` bytes per read: a short read is not EOF."""

    def __init__(self, data: bytes, step: int) -> None:
        self._f = io.BytesIO(data)
        self._step = step

    def read(self, n: int = -1, /) -> bytes:
        return self._f.read(self._step if n < 0 else min(n, self._step))


class UnreadableSource:
    """A source that must not be read (the node already holds the key)."""

    def __init__(self) -> None:
        self.reads = 0

    def read(self, n: int = -1, /) -> bytes:
        self.reads += 1
        raise AssertionError("the source of an already present key was read")


class BreakingSource:
    """Yields ``good`` bytes of ``data``, then raises as the cluster's tee does."""

    def __init__(self, data: bytes, good: int) -> None:
        self._f = io.BytesIO(data)
        self._left = good

    def read(self, n: int = -1, /) -> bytes:
        if self._left <= 0:
            raise SourceFailed("the source broke mid-way")
        chunk = self._f.read(self._left if n < 0 else min(n, self._left))
        self._left -= len(chunk)
        return chunk


def is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def fetch(node: Node, key: Key, offset: int = 0) -> bytes:
    sink = Sink()
    node.retrieve(key, sink, offset)
    return sink.data


def plant(node: Node, key: Key, data: bytes) -> None:
    """Put ``data`` where the node keeps ``key`` (its first chunk, its encrypted name),
    past every check of the layers above, as a crashed writer, a tool or a failing
    disk might leave it."""
    from shared.nodes.chunked import ChunkedNode, _unchunkable
    from shared.nodes.encrypted import EncryptedNode

    while isinstance(node, Layer):
        if isinstance(node, ChunkedNode) and not _unchunkable(key):
            key = node.chunks(key)[0]
        elif isinstance(node, EncryptedNode):
            key = node.stored_key(key)
        node = node.inner
    node.overwrite(key, io.BytesIO(data), len(data))


class NodeConformance:
    """Backend-agnostic checks of the Node contract. Subclass and override ``make_node``."""

    #: large enough to span several of a backend's blocks (1 MiB for file nodes)
    big_size = 2 * 1024 * 1024 + 12345
    #: the node checks content against hash keys (git-annex repositories do): data
    #: that cannot match its key (a made-up hash, any chunk of a hash key) is refused
    verifies_content = False
    #: False: ``present`` may answer UNKNOWN_SIZE for keys that carry no size
    tells_sizes = True
    #: object names must be UTF-8 (S3): a key with other bytes is refused by ``store``
    #: with ``Unsupported``, and is never present
    utf8_names_only = False
    #: False: bad replicas cannot be planted or seen (a git-annex repository verifies
    #: what it receives, and P2P tells no sizes: the repository's own fsck's job)
    sees_bad_replicas = True
    #: False: only sizes no stored object can have are seen as wrong (encrypted: the
    #: ciphertext's size depends on who encrypted it)
    checks_stored_size = True

    @pytest.fixture
    def make_missing_node(self) -> NodeFactory:
        raise NotImplementedError(
            "override the make_missing_node fixture in the backend's test class"
        )

    @pytest.fixture
    def make_node(self) -> NodeFactory:
        raise NotImplementedError("override the make_node fixture in the backend's test class")

    def leftovers(self, node: Node) -> list[str]:
        """Remains of unfinished stores (temp files, pending uploads); override per backend."""
        raise NotImplementedError("override leftovers() in the backend's test class")

    @pytest.fixture
    def node(self, make_node: NodeFactory) -> Iterator[Node]:
        n = make_node()
        yield n
        n.close()

    def reported_size(self, key: Key, size: int) -> int:
        """What ``present`` must say for ``key`` stored with ``size`` bytes."""
        if not self.tells_sizes and key.content_size is None:
            return UNKNOWN_SIZE
        return size

    def assert_clean(self, node: Node) -> None:
        assert self.leftovers(node) == []

    # -- presence -----------------------------------------------------------

    def test_present_on_empty_node_is_none(self, node: Node) -> None:
        assert node.present(make_key(b"never stored")) is None

    def test_store_then_present_is_size(self, node: Node) -> None:
        data = payload(1000)
        key = make_key(data)
        node.store(key, io.BytesIO(data), len(data))
        assert node.present(key) == len(data)
        self.assert_clean(node)

    def test_store_is_visible_to_another_handle(self, node: Node, make_node: NodeFactory) -> None:
        data = payload(300)
        key = make_key(data)
        node.store(key, io.BytesIO(data), len(data))
        other = make_node()
        try:
            assert other.present(key) == len(data)
            assert fetch(other, key) == data
        finally:
            other.close()

    # -- store --------------------------------------------------------------

    def test_store_big_object_round_trips(self, node: Node) -> None:
        data = payload(self.big_size)
        key = make_key(data)
        node.store(key, io.BytesIO(data), len(data))
        assert node.present(key) == len(data)
        assert fetch(node, key) == data
        self.assert_clean(node)

    def test_store_reads_to_eof_through_short_reads(self, node: Node) -> None:
        data = payload(5000)
        key = make_key(data)
        node.store(key, TrickleSource(data, 7), len(data))
        assert fetch(node, key) == data

    def test_store_twice_is_idempotent(self, node: Node) -> None:
        data = payload(2000)
        key = make_key(data)
        node.store(key, io.BytesIO(data), len(data))
        node.store(key, io.BytesIO(data), len(data))
        assert node.present(key) == len(data)
        assert fetch(node, key) == data
        self.assert_clean(node)

    def test_store_of_present_key_does_not_read_source(self, node: Node) -> None:
        data = payload(2000)
        key = make_key(data)
        node.store(key, io.BytesIO(data), len(data))
        source = UnreadableSource()
        node.store(key, source, len(data))
        assert source.reads == 0
        assert fetch(node, key) == data

    def test_store_short_source_raises_and_leaves_nothing(self, node: Node) -> None:
        data = payload(4096)
        key = make_key(data)
        with pytest.raises(IntegrityError):
            node.store(key, io.BytesIO(data[:1000]), len(data))
        assert node.present(key) is None
        with pytest.raises(NotFound):
            fetch(node, key)
        self.assert_clean(node)

    def test_store_long_source_raises_and_leaves_nothing(self, node: Node) -> None:
        data = payload(4096)
        key = make_key(data[:100])
        with pytest.raises(IntegrityError):
            node.store(key, io.BytesIO(data), 100)
        assert node.present(key) is None
        self.assert_clean(node)

    def test_store_short_big_source_raises_and_leaves_nothing(self, node: Node) -> None:
        data = payload(self.big_size)
        key = make_key(data)
        with pytest.raises(IntegrityError):
            node.store(key, io.BytesIO(data[:-1]), len(data))
        assert node.present(key) is None
        self.assert_clean(node)

    @pytest.mark.parametrize("good", [0, 1, 1024 * 1024 + 5])
    def test_source_failing_midway_leaves_nothing(self, node: Node, good: int) -> None:
        data = payload(self.big_size)
        key = make_key(data)
        with pytest.raises((SourceFailed, NodeError)):
            node.store(key, BreakingSource(data, good), len(data))
        assert node.present(key) is None
        self.assert_clean(node)
        # A later complete store works.
        node.store(key, io.BytesIO(data), len(data))
        assert fetch(node, key) == data
        self.assert_clean(node)

    def test_failed_store_keeps_the_existing_object(self, node: Node) -> None:
        data = payload(3000)
        key = make_key(data)
        node.store(key, io.BytesIO(data), len(data))
        node.store(key, BreakingSource(data, 10), len(data))  # present: never read
        assert fetch(node, key) == data

    def test_zero_byte_object(self, node: Node) -> None:
        key = make_key(b"")
        assert node.present(key) is None
        node.store(key, io.BytesIO(b""), 0)
        assert node.present(key) == 0
        assert fetch(node, key) == b""
        assert fetch(node, key, 0) == b""
        node.store(key, UnreadableSource(), 0)
        node.remove(key)
        assert node.present(key) is None
        self.assert_clean(node)

    def test_zero_byte_store_with_nonempty_source_fails(self, node: Node) -> None:
        key = make_key(b"")
        with pytest.raises(IntegrityError):
            node.store(key, io.BytesIO(b"x"), 0)
        assert node.present(key) is None
        self.assert_clean(node)

    def test_distinct_keys_are_distinct_objects(self, node: Node) -> None:
        a, b = payload(100, seed=1), payload(200, seed=2)
        ka, kb = make_key(a), make_key(b)
        node.store(ka, io.BytesIO(a), len(a))
        node.store(kb, io.BytesIO(b), len(b))
        assert (node.present(ka), node.present(kb)) == (100, 200)
        assert (fetch(node, ka), fetch(node, kb)) == (a, b)
        node.remove(ka)
        assert node.present(ka) is None
        assert fetch(node, kb) == b

    # -- bad replicas: something else under the key's name ------------------

    @pytest.mark.parametrize("leftover", ["empty", "truncated"])
    def test_a_wrong_size_object_is_a_bad_replica_and_a_store_replaces_it(
        self, node: Node, leftover: str
    ) -> None:
        """A 0-byte leftover or a truncated copy is not the key: present says so
        (never a size, never absent), a read sends none of it, a store replaces it."""
        if not self.sees_bad_replicas:
            pytest.skip("this kind of node cannot hold or tell a bad replica")
        if leftover == "truncated" and not self.checks_stored_size:
            pytest.skip("stored sizes depend on who wrote the object here")
        data = payload(3000)
        key = make_key(data)
        bad = b"" if leftover == "empty" else data[:-1]
        plant(node, key, bad)
        with pytest.raises(BadReplica) as info:
            node.present(key)
        message = str(info.value)
        assert message.startswith(f"node {node.name}: ") and "\n" not in message
        assert key.name in message and f"{len(bad)} bytes" in message
        sink = Sink()
        with pytest.raises(IntegrityError):
            node.retrieve(key, sink)
        assert sink.data == b""
        assert node.store(key, io.BytesIO(data), len(data)) is True
        assert node.present(key) == self.reported_size(key, len(data))
        assert fetch(node, key) == data
        assert node.store(key, UnreadableSource(), len(data)) is False
        self.assert_clean(node)

    def test_overwrite_replaces_a_bad_replica(self, node: Node) -> None:
        if not self.sees_bad_replicas:
            pytest.skip("this kind of node cannot hold or tell a bad replica")
        data = payload(2000, seed=3)
        key = make_key(data)
        plant(node, key, b"")
        node.overwrite(key, io.BytesIO(data), len(data))
        assert node.present(key) == self.reported_size(key, len(data))
        assert fetch(node, key) == data
        self.assert_clean(node)

    # -- missing storage: "cannot tell", never "absent" --------------------

    def test_missing_storage_is_unavailable_not_absent(
        self, make_missing_node: NodeFactory
    ) -> None:
        """A directory, bucket or repository that is not there (deleted, unmounted,
        misnamed) cannot tell about any key: presence, reads, removal (an absent key's
        too), stores and listings all fail with Unavailable, one line each."""
        node = make_missing_node()
        key = make_key(b"never stored")
        try:
            operations = {
                "present": lambda: node.present(key),
                "retrieve": lambda: node.retrieve(key, Sink()),
                "remove": lambda: node.remove(key),
                "store": lambda: node.store(key, io.BytesIO(b"never stored"), 12),
                "list": lambda: list(node.list_keys(lambda: iter([key]))),
            }
            for what, op in operations.items():
                with pytest.raises(Unavailable) as info:
                    op()
                assert "\n" not in str(info.value), what
        finally:
            node.close()

    # -- retrieve -----------------------------------------------------------

    @pytest.mark.parametrize("where", ["start", "one", "middle", "last", "end"])
    def test_retrieve_from_offset(self, node: Node, where: str) -> None:
        data = payload(self.big_size)
        key = make_key(data)
        node.store(key, io.BytesIO(data), len(data))
        offset = {
            "start": 0,
            "one": 1,
            "middle": len(data) // 2,
            "last": len(data) - 1,
            "end": len(data),
        }[where]
        assert fetch(node, key, offset) == data[offset:]

    def test_retrieve_default_offset_is_whole_object(self, node: Node) -> None:
        data = payload(777)
        key = make_key(data)
        node.store(key, io.BytesIO(data), len(data))
        sink = Sink()
        node.retrieve(key, sink)
        assert sink.data == data

    def test_retrieve_absent_raises_not_found(self, node: Node) -> None:
        sink = Sink()
        with pytest.raises(NotFound):
            node.retrieve(make_key(b"absent"), sink)
        assert sink.data == b""

    def test_retrieve_absent_at_offset_raises_not_found(self, node: Node) -> None:
        with pytest.raises(NotFound):
            fetch(node, make_key(b"absent"), 3)

    # -- remove -------------------------------------------------------------

    def test_remove_present(self, node: Node) -> None:
        data = payload(1234)
        key = make_key(data)
        node.store(key, io.BytesIO(data), len(data))
        node.remove(key)
        assert node.present(key) is None
        with pytest.raises(NotFound):
            fetch(node, key)

    def test_remove_absent_succeeds(self, node: Node) -> None:
        key = make_key(b"not here")
        node.remove(key)
        assert node.present(key) is None

    def test_remove_twice_succeeds(self, node: Node) -> None:
        data = payload(10)
        key = make_key(data)
        node.store(key, io.BytesIO(data), len(data))
        node.remove(key)
        node.remove(key)
        assert node.present(key) is None

    def test_store_after_remove(self, node: Node) -> None:
        data = payload(4321)
        key = make_key(data)
        node.store(key, io.BytesIO(data), len(data))
        node.remove(key)
        node.store(key, io.BytesIO(data), len(data))
        assert node.present(key) == len(data)
        assert fetch(node, key) == data

    # -- key shapes ---------------------------------------------------------

    @pytest.mark.parametrize("text", ODD_KEYS)
    def test_odd_keys_full_cycle(self, node: Node, text: str) -> None:
        key = Key.parse(text)
        data = payload(key.content_size or 333, seed=len(text))
        assert node.present(key) is None
        if self.utf8_names_only and not is_utf8(str(key)):
            with pytest.raises(Unsupported, match="UTF-8"):
                node.store(key, io.BytesIO(data), len(data))
            assert node.present(key) is None
            with pytest.raises(NotFound):
                fetch(node, key)
            node.remove(key)
            self.assert_clean(node)
            return
        if self.verifies_content and key.backend.startswith(("SHA", "BLAKE", "MD5")):
            with pytest.raises(IntegrityError):  # a made-up hash: no data can match it
                node.store(key, io.BytesIO(data), len(data))
            assert node.present(key) is None
            self.assert_clean(node)
            return
        node.store(key, io.BytesIO(data), len(data))
        assert node.present(key) == self.reported_size(key, len(data))
        assert fetch(node, key) == data
        assert fetch(node, key, 100) == data[100:]
        node.store(key, UnreadableSource(), len(data))
        node.remove(key)
        assert node.present(key) is None
        node.remove(key)
        self.assert_clean(node)

    def test_chunks_of_one_object_are_separate(self, node: Node) -> None:
        base = "SHA256E-s30-S10-C{}--" + "12" * 32 + ".dat"
        if self.verifies_content:  # a chunk never matches its file's hash or -s size
            base = "WORM-S10-C{}--chunked.dat"
        chunks = {n: (Key.parse(base.format(n)), payload(10, seed=n)) for n in (1, 2, 3)}
        for key, data in chunks.values():
            node.store(key, io.BytesIO(data), len(data))
        for key, data in chunks.values():
            assert fetch(node, key) == data
        node.remove(chunks[2][0])
        assert node.present(chunks[2][0]) is None
        assert node.present(chunks[1][0]) == self.reported_size(chunks[1][0], 10)
        assert node.present(chunks[3][0]) == self.reported_size(chunks[3][0], 10)

    def test_escaped_names_do_not_collide(self, node: Node) -> None:
        # "&c" is how ":" is escaped; both keys must keep their own object.
        colon, amp = Key.parse("URL--a:b"), Key.parse("URL--a&cb")
        slash, pct = Key.parse("URL--a/b"), Key.parse("URL--a%b")
        objects = {k: payload(50, seed=i) for i, k in enumerate((colon, amp, slash, pct))}
        for key, data in objects.items():
            node.store(key, io.BytesIO(data), len(data))
        for key, data in objects.items():
            assert fetch(node, key) == data
        node.remove(colon)
        assert node.present(amp) == self.reported_size(amp, 50)
        assert node.present(colon) is None

    # -- listing ------------------------------------------------------------

    def test_list_keys_streams_the_keys_held(self, node: Node) -> None:
        """What rebalance, repair and fsck start from: exactly the keys held, escaped
        names read back, keys only partly there (one chunk) or removed left out. The
        known keys are what the repository's branch would offer (encrypted nodes)."""
        contents = [payload(n, seed=n) for n in (0, 10, 3000)] + [b"removed again"]
        odd = [Key.parse(t) for t in ("URL--a:b", "URL--a&cb", "URL--a/b", "URL--a%b")]
        for data in contents:
            node.store(make_key(data), io.BytesIO(data), len(data))
        for key in odd:
            node.store(key, io.BytesIO(b"seven b"), 7)
        *whole, gone = (make_key(data) for data in contents)
        node.remove(gone)
        never = make_key(b"never stored")
        listing = node.list_keys(lambda: iter([*whole, *odd, gone, never]))
        assert not isinstance(listing, (list, set, tuple))  # streamed
        assert sorted(map(str, listing)) == sorted(map(str, [*whole, *odd]))

    # -- one owner per node (shared.nodes.owner) --------------------------------

    def test_owner_is_claimed_once_and_kept(self, node: Node, make_node: NodeFactory) -> None:
        """The first claim records its UUID, seen by every handle; a claim by another
        remote gets the owner back and changes nothing; take_over replaces it. The
        marker is never a key, an object name or counted bytes. Nodes with a UUID of
        their own (repositories) record nothing."""
        if not node.records_owner:
            assert node.owner() is None and node.claim(OWNER_A) == OWNER_A
            assert node.owner() is None
            return
        data = payload(3000, seed=7)
        key = make_key(data)
        node.store(key, io.BytesIO(data), len(data))  # storage from before markers
        used = node.used() if node.counts_bytes else None
        assert node.owner() is None
        assert node.claim(OWNER_A) == OWNER_A
        assert make_node().owner() == OWNER_A
        assert node.claim(OWNER_A) == OWNER_A  # idempotent
        assert make_node().claim(OWNER_B) == OWNER_A  # refused: the owner answers
        assert node.owner() == OWNER_A
        assert [str(k) for k in node.list_keys(lambda: iter([key]))] == [str(key)]
        assert not [n for n in node.list_names() if "cluster-owner" in n]
        if used is not None:
            assert node.used() == used
        assert make_node().claim(OWNER_B, take_over=True) == OWNER_B
        assert node.owner() == OWNER_B
        assert fetch(node, key) == data  # the objects are untouched
        self.assert_clean(node)

    def test_concurrent_first_claims_have_one_winner(self, make_node: NodeFactory) -> None:
        """Two remotes first using one storage at the same moment: exactly one claim
        takes, and every claimant is told the winner."""
        node = make_node()
        if not node.records_owner:
            return
        claimants = [f"{i:08x}-0000-4000-8000-000000000000" for i in range(6)]
        handles = [make_node() for _ in claimants]
        with ThreadPoolExecutor(max_workers=len(claimants)) as pool:
            answers = list(pool.map(lambda h, u: h.claim(u), handles, claimants))
        assert len(set(answers)) == 1 and answers[0] in claimants
        assert node.owner() == answers[0]


OWNER_A = "6a0c1e52-3d1f-4b5e-9a51-0c3e8f1d2a10"
OWNER_B = "b71f0d3e-95a2-4c07-8e1b-2f4d6a8c0e31"


class FailsAfter:
    """A source that raises ``exc`` after ``after`` bytes."""

    def __init__(self, data: bytes, after: int, exc: BaseException) -> None:
        self.src, self.after, self.exc = io.BytesIO(data), after, exc

    def read(self, n: int = -1, /) -> bytes:
        if self.src.tell() >= self.after:
            raise self.exc
        left = self.after - self.src.tell()
        return self.src.read(left if n < 0 else min(n, left))


class ResumableConformance:
    """``partial`` and ``store_from`` (nodes that are ``resumable``): mix into the
    backend's test class next to :class:`NodeConformance`."""

    def assert_clean(self, node: Node) -> None:
        raise NotImplementedError  # NodeConformance's

    def test_is_resumable(self, node: Node) -> None:
        assert node.resumable

    def test_store_from_keeps_what_it_wrote_and_continues(self, node: Node) -> None:
        data = payload(3_000_000)
        key = make_key(data)
        with pytest.raises(SourceFailed):
            node.store_from(
                key, FailsAfter(data, 1_234_567, SourceFailed("gone")), len(data), 0, print
            )
        assert node.partial(key) == 1_234_567 and node.present(key) is None
        prefix = bytearray()
        rest = io.BytesIO(data[1_000_000:])
        assert node.store_from(key, rest, len(data), 1_000_000, prefix.extend)
        assert bytes(prefix) == data[:1_000_000]  # the kept bytes, cut to the offset
        assert fetch(node, key) == data and node.partial(key) == 0
        assert node.store_from(key, UnreadableSource(), len(data), 0, print) is False
        self.assert_clean(node)

    def test_store_from_replaces_a_bad_replica(self, node: Node) -> None:
        data = payload(100_000, seed=5)
        key = make_key(data)
        plant(node, key, b"")
        assert node.store_from(key, io.BytesIO(data), len(data), 0, print) is True
        assert node.present(key) == len(data) and fetch(node, key) == data
        self.assert_clean(node)

    def test_store_from_drops_kept_bytes_on_wrong_content(self, node: Node) -> None:
        data = payload(100_000)
        key = make_key(data)
        with pytest.raises(IntegrityError):
            node.store_from(
                key, FailsAfter(data, 50_000, IntegrityError("bad")), len(data), 0, print
            )
        assert node.partial(key) == 0 and node.present(key) is None
        with pytest.raises(IntegrityError):  # a source longer than the size
            node.store_from(key, io.BytesIO(data + b"x"), len(data), 0, print)
        assert node.partial(key) == 0 and node.present(key) is None
        self.assert_clean(node)

    @pytest.mark.parametrize("when", ["midway", "at-the-end"])
    def test_a_second_upload_of_the_key_never_writes_into_the_first_ones_file(
        self, node: Node, make_node: NodeFactory, when: str
    ) -> None:
        """Two gateway sessions upload one key; the second (from byte 0) is cut off
        after 64 KiB. The first one's object must still be exactly its content."""
        data = payload(1_000_000, seed=7)
        key = make_key(data)
        other = make_node()
        at = len(data) // 2 if when == "midway" else len(data)

        def second_upload() -> None:
            with pytest.raises(SourceFailed):
                other.store_from(
                    key, FailsAfter(data, 65536, SourceFailed("gone")), len(data), 0, print
                )

        first = Interleaved(data, at, second_upload)
        assert node.store_from(key, first, len(data), 0, print)
        assert first.fired
        assert fetch(node, key) == data
        # The second one's kept bytes are dropped once the key is there.
        assert node.store_from(key, UnreadableSource(), len(data), 0, print) is False
        assert node.partial(key) == 0
        other.close()
        self.assert_clean(node)

    def test_an_upload_killed_midway_is_continued_by_the_next(
        self, node: Node, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A writer killed holding its claim (no release): once its process is gone,
        the next upload takes the bytes it wrote (tmpnames' abandoned claims)."""
        data = payload(3_000_000)
        key = make_key(data)
        gone = subprocess.Popen([sys.executable, "-c", ""])
        gone.wait()
        module = sys.modules[type(node).__module__]
        claim = f"{resume_name(str(key))}.{PREFIX}{gone.pid}-dead"
        monkeypatch.setattr(module, "claim_name", lambda _key: claim)
        monkeypatch.setattr(type(node), "_release", lambda *_args: None)  # killed: no release
        with pytest.raises(SourceFailed):
            node.store_from(
                key, FailsAfter(data, 1_234_567, SourceFailed("killed")), len(data), 0, print
            )
        monkeypatch.undo()
        assert node.partial(key) == 1_234_567 and node.present(key) is None
        prefix = bytearray()
        assert node.store_from(
            key, io.BytesIO(data[1_000_000:]), len(data), 1_000_000, prefix.extend
        )
        assert bytes(prefix) == data[:1_000_000]
        assert fetch(node, key) == data and node.partial(key) == 0
        self.assert_clean(node)

    def test_interrupted_uploads_keep_one_temp_and_a_commit_none(
        self, node: Node, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Uploads of one key killed while others ran (each left a claim of its own),
        then one cut off: what they kept does not pile up (the next upload takes the
        most bytes and drops the rest), and the upload that completes removes it all."""
        data = payload(1_000_000, seed=3)
        key = make_key(data)
        uploaders = Uploaders(monkeypatch, node)
        for after in (100_000, 300_000):
            uploaders.killed_upload(node, key, data, after)
        uploaders.all_gone()
        assert len(self.leftovers(node)) == 2
        assert node.partial(key) == 300_000  # the most bytes any of them kept
        rest = FailsAfter(data[300_000:], 100_000, SourceFailed("gone"))
        with pytest.raises(SourceFailed):
            node.store_from(key, rest, len(data), 300_000, print)
        assert len(self.leftovers(node)) == 1 and node.partial(key) == 400_000
        prefix = bytearray()
        assert node.store_from(key, io.BytesIO(data[400_000:]), len(data), 400_000, prefix.extend)
        assert bytes(prefix) == data[:400_000]
        assert fetch(node, key) == data and node.partial(key) == 0
        self.assert_clean(node)

    def test_the_next_process_settles_what_killed_uploads_kept(
        self, node: Node, make_node: NodeFactory, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Uploads of a key killed while others ran, and the key not uploaded again: the
        next process to store anything on the node keeps the most bytes under the
        key's shared temp name and drops the other claims (an empty one too)."""
        data = payload(1_000_000, seed=11)
        key = make_key(data)
        uploaders = Uploaders(monkeypatch, node)
        for after in (100_000, 300_000, 0):
            uploaders.killed_upload(node, key, data, after)
        uploaders.all_gone()
        assert len(self.leftovers(node)) == 3
        unrelated = b"another key"
        make_node().store(make_key(unrelated), io.BytesIO(unrelated), len(unrelated))
        assert self.leftovers(node) == [resume_name(str(key))]
        assert node.partial(key) == 300_000
        prefix = bytearray()
        assert node.store_from(key, io.BytesIO(data[300_000:]), len(data), 300_000, prefix.extend)
        assert bytes(prefix) == data[:300_000]
        assert fetch(node, key) == data
        self.assert_clean(node)

    def test_a_commit_removes_what_uploads_cut_off_meanwhile_kept(
        self, node: Node, make_node: NodeFactory, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """While an upload runs, others of the same key are cut off or killed (each
        writes under a claim of its own, as the running one holds the kept bytes):
        when the running one commits, what they kept goes with it."""
        data = payload(1_000_000, seed=13)
        key = make_key(data)
        uploaders = Uploaders(monkeypatch, node)

        def meanwhile() -> None:
            cut_off(node, key, data, 300_000)  # released under the key's shared name
            uploaders.killed_upload(node, key, data, 200_000)  # takes it; killed
            cut_off(node, key, data, 100_000)  # released again
            uploaders.all_gone()
            assert len(self.leftovers(node)) == 3  # the running one's claim too

        running = make_node()
        upload = Interleaved(data, 500_000, meanwhile)
        assert running.store_from(key, upload, len(data), 0, print)
        assert upload.fired
        self.assert_clean(node)
        assert fetch(node, key) == data

    @pytest.mark.parametrize("then", ["completes", "is-cut-off"])
    def test_a_commit_leaves_a_running_uploads_claim_alone(
        self, node: Node, make_node: NodeFactory, monkeypatch: pytest.MonkeyPatch, then: str
    ) -> None:
        """While upload A runs, earlier uploads leave bytes behind (one killed, one cut
        off) and upload B completes the key: B's commit removes what they kept, never
        A's claim. A then completes (the object stays whole) or is cut off (its bytes,
        of no use with the key stored, are dropped): nothing is left either way."""
        data = payload(1_000_000, seed=5)
        key = make_key(data)
        uploaders = Uploaders(monkeypatch, node)
        mine = f"{resume_name(str(key))}.{PREFIX}{os.getpid()}-"

        def meanwhile() -> None:
            cut_off(node, key, data, 300_000)  # A holds its claim: a new temp
            uploaders.killed_upload(node, key, data, 200_000)  # takes that temp
            cut_off(node, key, data, 400_000)  # a new temp again
            uploaders.all_gone()
            assert len(self.leftovers(node)) == 3
            assert node.store_from(key, io.BytesIO(data), len(data), 0, print)  # B
            assert [e for e in self.leftovers(node) if not e.startswith(mine)] == []
            assert len(self.leftovers(node)) == 1  # A's claim, still there

        running = make_node()
        stop = None if then == "completes" else 700_000
        upload = Interleaved(data, 500_000, meanwhile, stop=stop)
        if stop is None:
            running.store_from(key, upload, len(data), 0, print)
        else:
            with pytest.raises(SourceFailed):
                running.store_from(key, upload, len(data), 0, print)
        assert upload.fired
        assert fetch(node, key) == data
        self.assert_clean(node)

    def test_an_upload_whose_kept_bytes_went_with_a_commit_finds_the_key(
        self, node: Node, make_node: NodeFactory, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The gateway offered to continue at the bytes a node kept; before this upload
        takes them, another one completes the key (and takes or drops them). The key
        is there: this upload has nothing to do, and is no failure."""
        data = payload(1_000_000, seed=9)
        key = make_key(data)
        cut_off(node, key, data, 400_000)
        offset = node.partial(key)
        assert offset == 400_000
        late = make_node()
        claim = late._claim  # type: ignore[attr-defined]

        def completed_first(*args: object) -> object:
            assert node.store_from(key, io.BytesIO(data), len(data), 0, print)
            return claim(*args)

        monkeypatch.setattr(late, "_claim", completed_first)
        rest = io.BytesIO(data[offset:])
        assert late.store_from(key, rest, len(data), offset, print) is False
        assert fetch(node, key) == data
        self.assert_clean(node)


def cut_off(node: Node, key: Key, data: bytes, after: int) -> None:
    """An upload of ``key`` from byte 0 whose source goes away after ``after`` bytes:
    the node keeps what it wrote."""
    with pytest.raises(SourceFailed):
        node.store_from(key, FailsAfter(data, after, SourceFailed("gone")), len(data), 0, print)


class Uploaders:
    """Uploads by made-up processes of this host, through the module of ``node``: their
    claims are named with their PIDs, which run until ``all_gone``; a killed one never
    releases its claim."""

    FIRST = 1 << 22  # above Linux's highest pid_max: no real process

    def __init__(self, monkeypatch: pytest.MonkeyPatch, node: Node) -> None:
        self.running: set[int] = set()
        self.pid: int | None = None  # the uploader now; None: this process
        self.next = self.FIRST
        real = tmpnames._running
        made_up = self.running
        monkeypatch.setattr(
            tmpnames, "_running", lambda pid: pid in made_up if pid >= self.FIRST else real(pid)
        )
        monkeypatch.setattr(sys.modules[type(node).__module__], "claim_name", self._claim_name)

    def _claim_name(self, key: str) -> str:
        pid = os.getpid() if self.pid is None else self.pid
        return f"{resume_name(key)}.{PREFIX}{pid}-{secrets.token_hex(3)}"

    def killed_upload(self, node: Node, key: Key, data: bytes, after: int) -> None:
        """An upload of ``key`` from byte 0 by a new process, killed after ``after``
        bytes: its claim stays, held until ``all_gone``."""
        self.pid, self.next = self.next, self.next + 1
        self.running.add(self.pid)
        try:
            with pytest.MonkeyPatch.context() as m:
                m.setattr(node, "_release", lambda *_args: None)  # killed: no release
                cut_off(node, key, data, after)
        finally:
            self.pid = None

    def all_gone(self) -> None:
        self.running.clear()


def plant_leftovers(tmp: Path, key: Key, other: Key) -> list[str]:
    """For nodes with a ``tmp/`` of their own (file://, sftp://): what interrupted
    uploads could have left there. A completed upload of ``key`` removes the key's
    released temp and the claims of this host's processes that are gone; returned
    is what it must leave: another key's kept bytes, and another host's claim (its
    process cannot be judged from here)."""
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    ours, theirs = resume_name(str(key)), resume_name(str(other))
    goes = [ours, f"{ours}.{PREFIX}{gone.pid}-a", f"{ours}.{PREFIX}{gone.pid}-b"]
    stays = [f"{ours}.cluster-otherhost-{gone.pid}-c", theirs]
    tmp.mkdir(exist_ok=True)
    for i, name in enumerate(goes + stays):
        (tmp / name).mkdir()
        owner = key if name.startswith(ours) else other
        (tmp / name / owner.file_name).write_bytes(b"x" * 100 * (i + 1))
    return sorted(stays)


class Interleaved:
    """``data``, calling ``hook`` once when the reader reaches byte ``at`` (at the end:
    on the read that finds EOF, just before the store closes and commits); with
    ``stop``, failing there as a lost connection does."""

    def __init__(
        self, data: bytes, at: int, hook: Callable[[], None], stop: int | None = None
    ) -> None:
        self.src, self.at, self.hook, self.fired = io.BytesIO(data), at, hook, False
        self.stop = stop

    def read(self, n: int = -1, /) -> bytes:
        if not self.fired and self.src.tell() >= self.at:
            self.fired = True
            self.hook()
        if self.stop is not None and self.src.tell() >= self.stop:
            raise SourceFailed("the connection dropped")
        for limit in (self.at, self.stop):
            left = (limit or 0) - self.src.tell()
            if left > 0 and (n < 0 or n > left):
                n = left  # stop exactly at the hook's byte, and where it fails
        return self.src.read(n)
