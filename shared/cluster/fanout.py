"""Read a source once and stream it to several consumers in parallel, in bounded memory.

Each consumer runs in its own thread and reads from a bounded queue through a
file-like ``QueueReader``. A consumer that fails, or finishes without reading
everything (its node already had the key), keeps draining its queue, so one
bad node never stalls the others. The outcome is a value: per consumer, None
or the exception it raised.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future, ThreadPoolExecutor, wait

from shared.streams import Readable

BLOCK = 1024 * 1024
DEPTH = 4  # blocks buffered per consumer: memory is at most consumers * DEPTH * BLOCK


class SourceFailed(Exception):
    """Raised inside consumers when the shared source could not be read."""


_EOF = b""


class QueueReader:
    """The consumer's view of the shared stream: ``read`` returns blocks, then b"" at EOF."""

    def __init__(self, q: queue.Queue[bytes | BaseException]) -> None:
        self._q = q
        self._buf = b""
        self._eof = False

    def read(self, n: int = -1, /) -> bytes:
        if self._eof and not self._buf:
            return b""
        if not self._buf:
            item = self._q.get()
            if isinstance(item, BaseException):
                self._eof = True
                raise SourceFailed(str(item)) from item
            if item == _EOF:
                self._eof = True
                return b""
            self._buf = item
        if n < 0 or n >= len(self._buf):
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def drain(self) -> None:
        while not self._eof:
            item = self._q.get()
            if isinstance(item, BaseException) or item == _EOF:
                self._eof = True
        self._buf = b""


def fan_out(
    source: Readable,
    consumers: Mapping[str, Callable[[QueueReader], None]],
    on_bytes: Callable[[int], None] | None = None,
    executor: Executor | None = None,
    depth: int = DEPTH,
) -> dict[str, BaseException | None]:
    """Stream ``source`` to every consumer; return each consumer's exception or None.

    ``executor`` must be able to run every consumer at once (a worker free for
    each), or the stream would wait on a consumer that never starts. A
    persistent pool saves starting threads for every small object. ``depth``: the
    blocks queued for each consumer, how far one may run ahead of the slowest.
    """
    results: dict[str, BaseException | None] = {}
    queues: dict[str, queue.Queue[bytes | BaseException]] = {}
    done: list[Future[None]] = []

    def run(name: str, fn: Callable[[QueueReader], None], reader: QueueReader) -> None:
        err: BaseException | None = None
        try:
            fn(reader)
        except BaseException as e:
            err = e
        finally:
            results[name] = err
            reader.drain()

    own = executor is None
    pool = ThreadPoolExecutor(max_workers=max(1, len(consumers))) if own else executor
    assert pool is not None
    try:
        for name, fn in consumers.items():
            q: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=depth)
            queues[name] = q
            done.append(pool.submit(run, name, fn, QueueReader(q)))
        try:
            # Stop early once every consumer is finished (e.g. all held the key already).
            while len(results) < len(queues) and (block := source.read(BLOCK)):
                for q in queues.values():
                    q.put(block)
                if on_bytes is not None:
                    on_bytes(len(block))
        except BaseException as e:
            for q in queues.values():
                q.put(e)
            wait(done)
            raise
        for q in queues.values():
            q.put(_EOF)
        wait(done)
    finally:
        if own:
            pool.shutdown(wait=True)
    return results
