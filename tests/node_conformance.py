"""The Node conformance suite: every contract of ``shared.nodes.base`` checked on any backend.

A backend's test module subclasses :class:`NodeConformance` (the class name must
start with ``Test`` there) and overrides two things:

- the ``make_node`` fixture: a factory returning a fresh handle on the *same*,
  initially empty storage each time it is called (tests may open two handles);
- :meth:`NodeConformance.leftovers`: what the backend would leave behind from an
  unfinished store (temp files, multipart uploads); it must be empty after any
  store, successful or not.

Nothing here knows which backend it runs on.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from shared.errors import IntegrityError, NodeError, NotFound, Unsupported
from shared.fanout import SourceFailed
from shared.keys import Key
from shared.nodes.base import UNKNOWN_SIZE, Node
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


class Interleaved:
    """``data``, calling ``hook`` once when the reader reaches byte ``at`` (at the end:
    on the read that finds EOF, just before the store closes and commits)."""

    def __init__(self, data: bytes, at: int, hook: Callable[[], None]) -> None:
        self.src, self.at, self.hook, self.fired = io.BytesIO(data), at, hook, False

    def read(self, n: int = -1, /) -> bytes:
        if not self.fired and self.src.tell() >= self.at:
            self.fired = True
            self.hook()
        left = self.at - self.src.tell()
        if left > 0 and (n < 0 or n > left):
            n = left  # stop exactly at the hook's byte
        return self.src.read(n)
