"""Retries around any node, in one place: backends never retry on their own.

Transient failures (``shared.errors.is_transient``) of operations that can be
repeated safely are retried with exponential backoff and jitter. A node that
still fails is marked down for a while: later calls fail at once instead of
each paying the backoff, so a copy of a thousand keys waits once, not a
thousand times. A store is retried only while nothing of its source has been
read (its source is usually a stream read once): a store that read no byte is safe
to repeat. One that failed later is not; the cluster stores on the next node
instead. A source that can seek is the exception: it is read again from where it
stood, since a failed store commits nothing (a node may keep what it received
for a resume, which the next attempt checks or skips as any store does). The
cluster hands such a source, the file itself, to a wave of one node (copies=1,
or a spill-over); a wave of several reads the file once for all of them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    wait_exponential,
    wait_random,
)

from shared.annex.keys import Key
from shared.errors import Unavailable, is_transient
from shared.nodes.base import Layer, Node
from shared.streams import CountingSink, CountingSource, Readable, Writable

T = TypeVar("T")


class RetryingNode(Layer):
    def __init__(
        self,
        inner: Node,
        *,
        attempts: int = 3,
        initial_wait: float = 0.2,
        max_wait: float = 2.0,
        down_for: float = 30.0,
        store_patience: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``store_patience``: for how many seconds a store that read nothing of its
        source is tried again, past ``attempts`` (git-annex p2phttp refuses a key for a
        few seconds while it holds the transfer lock of an interrupted upload)."""
        super().__init__(inner)
        self._attempts = attempts
        self._store_patience = store_patience
        self._wait = wait_exponential(multiplier=initial_wait, max=max_wait) + wait_random(
            0, initial_wait
        )
        self._down_for = down_for
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._down_reason = ""

    def _guard(self) -> None:
        with self._lock:
            if self._clock() < self._down_until:
                raise Unavailable(f"{self._down_reason} (not retried for now)", self.name)

    def _mark_down(self, exc: BaseException) -> None:
        with self._lock:
            self._down_until = self._clock() + self._down_for
            text = str(exc)
            prefix = f"node {self.name}: "
            self._down_reason = text.removeprefix(prefix)

    def _call(
        self,
        fn: Callable[[], T],
        again: Callable[[BaseException], bool] = is_transient,
        patience: float = 0.0,
    ) -> T:
        """``fn``, tried again while ``again`` says so: ``attempts`` times, and for at
        least ``patience`` seconds.

        The first attempt runs on its own: most calls succeed at once, and building
        and running tenacity's machinery for them cost a tenth of a small file's get.
        When it fails, tenacity takes over with that failure as its first attempt, so
        the retries, waits and limits are the same as if it had made that attempt."""
        self._guard()
        start = self._clock()
        try:
            return fn()
        except Exception as e:
            failed: Exception | None = e

        def attempt() -> T:
            nonlocal failed
            if failed is not None:
                first, failed = failed, None
                raise first
            return fn()

        def stop(state: RetryCallState) -> bool:
            return state.attempt_number >= self._attempts and self._clock() - start >= patience

        retrying = Retrying(
            stop=stop,
            wait=self._wait,
            retry=retry_if_exception(again),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except Exception as e:
            if is_transient(e):
                self._mark_down(e)
            raise

    def _store(self, source: Readable, fn: Callable[[CountingSource], T], rewind: bool = True) -> T:
        """A store, tried again while it has read nothing of ``source``, or, with
        ``rewind``, when ``source`` can be read again from its start."""
        counting = CountingSource(source)
        again_from_start = rewind and counting.rewindable

        def attempt() -> T:
            if counting.count:
                counting.rewind()  # only a rewindable source gets here with bytes read
            return fn(counting)

        return self._call(
            attempt,
            lambda e: is_transient(e) and (counting.count == 0 or again_from_start),
            self._store_patience,
        )

    def check(self) -> None:
        self._call(self.inner.check)

    def owner(self) -> str | None:
        return self._call(self.inner.owner)

    def claim(self, uuid: str, take_over: bool = False) -> str:
        # Safe to repeat: a claim that took answers the same when asked again.
        return self._call(lambda: self.inner.claim(uuid, take_over))

    def present(self, key: Key) -> int | None:
        return self._call(lambda: self.inner.present(key))

    def store(self, key: Key, source: Readable, size: int) -> bool:
        return self._store(source, lambda src: self.inner.store(key, src, size))

    def overwrite(self, key: Key, source: Readable, size: int) -> None:
        self._store(source, lambda src: self.inner.overwrite(key, src, size))

    @property
    def resumable(self) -> bool:  # type: ignore[override]
        return self.inner.resumable

    def partial(self, key: Key) -> int:
        return self._call(lambda: self.inner.partial(key))

    def store_from(
        self, key: Key, source: Readable, size: int, offset: int, prefix: Callable[[bytes], None]
    ) -> bool:
        def store_from(src: CountingSource) -> bool:
            def counted(kept: bytes) -> None:  # hashed by the caller: not to hand again
                src.count += len(kept)
                prefix(kept)

            return self.inner.store_from(key, src, size, offset, counted)

        # Never from the start again: the caller has hashed the kept bytes handed over.
        return self._store(source, store_from, rewind=False)

    def retrieve(self, key: Key, sink: Writable, offset: int = 0) -> None:
        counting = CountingSink(sink)
        self._call(lambda: self.inner.retrieve(key, counting, offset + counting.count))

    def remove(self, key: Key) -> None:
        self._call(lambda: self.inner.remove(key))

    def __repr__(self) -> str:
        return f"<retrying {self.inner!r}>"
