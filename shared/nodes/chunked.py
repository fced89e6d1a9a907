"""``chunk=SIZE`` on a node: git-annex's own chunk layout over any node.

A key of known size is stored as chunk keys ``KEY-S<SIZE>-C1`` ... ``-C<n>`` (one
0-byte chunk for an empty file), exactly as git-annex's special remotes chunk it,
so git-annex finds them by the same speculative lookup it uses for its own
remotes with this ``chunk=`` (no chunk log needed). Keys without a size, URL keys
and keys that already are chunks are stored whole.

An interrupted store resumes at the first missing chunk when the source is
trusted (the cluster remote reads the user's own verified file). A gateway
opens its nodes untrusted: there the bytes of an upload are only known to
match the key at its end, so chunks left behind by an earlier, unverified
upload are never reused, and a failed store removes the chunks it wrote.

The key counts as present only when every chunk is (as git-annex's checkpresent
decides), each with exactly the size its position gives it (chunk keys carry the
whole's size, the chunk size and the chunk number), so a partial chunk set is never
visible as the key. A chunk of another size is a bad replica (``BadReplica``): the
key is not here, and a store writes that chunk again.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from shared.annex.keys import Key
from shared.errors import BadReplica, IntegrityError, NodeError, NotFound
from shared.nodes.base import UNKNOWN_SIZE, KnownKeys, Layer, Node, check_size
from shared.streams import Readable, Writable, read_up_to

# Chunks up to this size are read into memory and stored several at a time
# (small objects are latency-bound); larger ones stream, one at a time.
BUFFERED_CHUNK_LIMIT = 64 * 1024 * 1024
IN_FLIGHT = 3  # chunks buffered at once: memory is about 2 x IN_FLIGHT x chunk


class _Limited:
    """The next ``n`` bytes of a stream, as a stream of their own. With ``last``, the
    stream must end there: that is checked before the final bytes are handed on, so
    the node below cannot commit an object whose source turns out longer (or whose
    end raises, as a gateway's hash check does)."""

    def __init__(self, source: Readable, n: int, last: bool = False, node: str = "") -> None:
        self._source = source
        self._left = n
        self._last = last
        self._node = node

    def read(self, n: int = -1, /) -> bytes:
        data = b""
        if self._left > 0:
            want = self._left if n < 0 else min(n, self._left)
            data = self._source.read(want)
            self._left -= len(data)
        if self._last and self._left == 0:
            self._last = False  # checked once
            if self._source.read(1):
                raise IntegrityError("the content is longer than its key says", self._node)
        return data


def _unchunkable(key: Key) -> bool:
    return key.is_chunk or key.size is None or key.backend in ("URL", "VURL")


class ChunkedNode(Layer):
    def __init__(self, inner: Node, chunk_size: int, *, trusted_source: bool = True) -> None:
        super().__init__(inner)
        self.chunk_size = chunk_size
        self.trusted_source = trusted_source
        self._pool: ThreadPoolExecutor | None = None

    def chunks(self, key: Key) -> list[Key]:
        """The chunk keys of ``key`` under this node's chunk size (git-annex's chunkKeyStream)."""
        assert key.size is not None
        count = self._count(key.size)
        return [
            Key(
                key.backend,
                key.name,
                size=key.size,
                mtime=key.mtime,
                chunk_size=self.chunk_size,
                chunk_num=n,
            )
            for n in range(1, count + 1)
        ]

    def _count(self, size: int) -> int:
        return max(1, -(-size // self.chunk_size))

    def list_keys(self, known: KnownKeys | None = None) -> Iterator[Key]:
        """Keys all of whose chunks are there (chunks of one key are not listed together:
        only keys still missing chunks are kept in memory), and keys stored whole
        because they cannot be chunked. Chunks of another chunk size are not this
        node's keys: git-annex would need its chunk log to find them, and so would we."""

        def inner_known() -> Iterator[Key]:
            assert known is not None
            for key in known():
                yield from ([key] if _unchunkable(key) else self.chunks(key))

        missing: dict[Key, int] = {}  # parent -> chunks not seen yet
        for key in self.inner.list_keys(inner_known if known is not None else None):
            if not key.is_chunk:
                if _unchunkable(key):
                    yield key
                continue
            if key.chunk_size != self.chunk_size or key.size is None:
                continue
            count = self._count(key.size)
            if key.chunk_num is None or key.chunk_num > count:
                continue  # a chunk beyond the end: not ours
            parent = key.parent
            left = missing.get(parent, count) - 1
            if left == 0:
                missing.pop(parent, None)
                yield parent
            else:
                missing[parent] = left

    def _chunk_present(self, chunk: Key) -> bool:
        """Whether the chunk is there with its exact size; BadReplica when another size
        is (the layer below raises it itself where it can tell sizes)."""
        size = self.inner.present(chunk)
        if size is None:
            return False
        if size != UNKNOWN_SIZE:
            check_size(chunk, size, self.name)
        return True

    def _chunk_state(self, chunk: Key) -> bool | None:
        """For a store: True when the chunk is there with its size, False when absent,
        None for a bad replica of it (another size: written again)."""
        try:
            return self._chunk_present(chunk)
        except BadReplica:
            return None

    def _all_present(self, chunks: list[Key]) -> bool:
        """Whether every chunk is there: the first is asked alone (a missing key costs
        one request), the rest in parallel."""
        if not self._chunk_present(chunks[0]):
            return False
        results = list(self._executor().map(self._chunk_present, chunks[1:]))
        return all(results)

    def present(self, key: Key) -> int | None:
        if _unchunkable(key):
            return self.inner.present(key)
        chunks = self.chunks(key)
        if self._all_present(chunks):
            return key.size
        return self.inner.present(key)  # stored whole, before chunk= was set

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=IN_FLIGHT * 2, thread_name_prefix=f"chunks-{self.name}"
            )
        return self._pool

    def store(self, key: Key, source: Readable, size: int) -> bool:
        if _unchunkable(key) or size != key.size:
            return self.inner.store(key, source, size)
        chunks = self.chunks(key)
        first = 0
        if self.trusted_source:
            while first < len(chunks) and self._chunk_state(chunks[first]) is True:
                first += 1
            if first == len(chunks):
                return False
            _skip(source, first * self.chunk_size)
        else:
            held = list(self._executor().map(self._chunk_state, chunks))
            if all(h is True for h in held):
                return False  # complete sets only come from verified uploads
            # Chunks of an earlier upload that never verified (or of another size): never
            # reused, not even when their size is right.
            for chunk, h in zip(chunks, held, strict=True):
                if h is not False:
                    self.inner.remove(chunk)
        written: list[Key] = []
        try:
            self._store_chunks(chunks[first:], source, size, written)
        except BaseException:
            if not self.trusted_source:
                self._forget(written)
            raise
        return True

    def _store_chunks(
        self, chunks: list[Key], source: Readable, size: int, written: list[Key]
    ) -> None:
        """Store ``chunks`` in order from ``source``; the last one only after the source
        is known to end exactly there (a gateway's hash check fires at that EOF)."""
        buffered = self.chunk_size <= BUFFERED_CHUNK_LIMIT
        pending: dict[Future[None], Key] = {}

        def settle(limit: int) -> None:
            while len(pending) > limit:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    chunk = pending.pop(fut)
                    fut.result()
                    written.append(chunk)

        try:
            for i, chunk in enumerate(chunks):
                length = chunk.content_size or 0
                last = i == len(chunks) - 1
                if buffered:
                    data = read_up_to(source, length)
                    if len(data) != length or (last and source.read(1)):
                        raise IntegrityError(
                            f"the content of {chunk.parent} is not {size} bytes long", self.name
                        )
                    settle(IN_FLIGHT - 1 if not last else 0)
                    pending[self._executor().submit(self._store_one, chunk, data)] = chunk
                else:  # big chunks stream, one at a time
                    settle(0)
                    piece = _Limited(source, length, last=last, node=self.name)
                    self.inner.overwrite(chunk, piece, length)
                    written.append(chunk)
            settle(0)
        finally:
            for fut in pending:
                fut.cancel()
            wait(pending)
            written.extend(
                c for f, c in pending.items() if not f.cancelled() and f.exception() is None
            )

    def _store_one(self, chunk: Key, data: bytes) -> None:
        # No presence check: the scan found this chunk missing (or removed it as stale),
        # or did not get this far, and rewriting a trusted chunk changes nothing.
        self.inner.overwrite(chunk, io.BytesIO(data), len(data))

    def _forget(self, chunks: list[Key]) -> None:
        for chunk in chunks:
            # Never visible as the key; a later (untrusted) store removes it first.
            with contextlib.suppress(NodeError):
                self.inner.remove(chunk)

    def retrieve(self, key: Key, sink: Writable, offset: int = 0) -> None:
        if _unchunkable(key):
            self.inner.retrieve(key, sink, offset)
            return
        chunks = self.chunks(key)
        if self.inner.present(chunks[0]) is None:
            self.inner.retrieve(key, sink, offset)  # stored whole, or absent (NotFound)
            return
        for chunk in chunks[offset // self.chunk_size :]:
            start = (chunk.chunk_num or 1) - 1
            skip = max(0, offset - start * self.chunk_size)
            try:
                self.inner.retrieve(chunk, sink, skip)
            except NotFound as e:
                raise NotFound(f"{key} is only partly here: chunk {chunk} is missing") from e

    def remove(self, key: Key) -> None:
        if not _unchunkable(key):
            run: Callable[[Key], None] = self.inner.remove
            for _ in self._executor().map(run, self.chunks(key)):
                pass
        self.inner.remove(key)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self.inner.close()

    def __repr__(self) -> str:
        return f"<chunked {self.chunk_size} {self.inner!r}>"


def _skip(source: Readable, n: int) -> None:
    """Read past chunks that are already stored (the source is a stream)."""
    while n > 0:
        block = source.read(min(n, 1024 * 1024))
        if not block:
            return  # the store below reports the short source
        n -= len(block)
