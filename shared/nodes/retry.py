"""Retries around any node, in one place: backends never retry on their own.

Transient failures (``shared.errors.is_transient``) of operations that can be
repeated safely are retried with exponential backoff and jitter. A node that
still fails is marked down for a while: later calls fail at once instead of
each paying the backoff, so a copy of a thousand keys waits once, not a
thousand times. Stores are not retried here (their source is a stream read
once); the cluster stores on the next node instead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from shared.annex.keys import Key
from shared.errors import Unavailable, is_transient
from shared.nodes.base import Layer, Node
from shared.streams import CountingSink, Readable, Writable

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
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(inner)
        self._attempts = attempts
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

    def _call(self, fn: Callable[[], T]) -> T:
        self._guard()
        retrying = Retrying(
            stop=stop_after_attempt(self._attempts),
            wait=self._wait,
            retry=retry_if_exception(is_transient),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            return retrying(fn)
        except Exception as e:
            if is_transient(e):
                self._mark_down(e)
            raise

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
        self._guard()
        try:
            return self.inner.store(key, source, size)
        except Exception as e:
            if is_transient(e):
                self._mark_down(e)
            raise

    def overwrite(self, key: Key, source: Readable, size: int) -> None:
        self._guard()
        try:
            self.inner.overwrite(key, source, size)
        except Exception as e:
            if is_transient(e):
                self._mark_down(e)
            raise

    @property
    def resumable(self) -> bool:  # type: ignore[override]
        return self.inner.resumable

    def partial(self, key: Key) -> int:
        return self._call(lambda: self.inner.partial(key))

    def store_from(
        self, key: Key, source: Readable, size: int, offset: int, prefix: Callable[[bytes], None]
    ) -> bool:
        self._guard()
        try:
            return self.inner.store_from(key, source, size, offset, prefix)
        except Exception as e:
            if is_transient(e):
                self._mark_down(e)
            raise

    def retrieve(self, key: Key, sink: Writable, offset: int = 0) -> None:
        counting = CountingSink(sink)
        self._call(lambda: self.inner.retrieve(key, counting, offset + counting.count))

    def remove(self, key: Key) -> None:
        self._call(lambda: self.inner.remove(key))

    def __repr__(self) -> str:
        return f"<retrying {self.inner!r}>"
