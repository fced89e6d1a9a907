"""A Node wrapper that injects faults per operation and records every call.

Wrap any node (file, sftp, annex, s3, or a wrapped stack) to make one operation
fail on demand, now or after some bytes went through, for a number of calls or
until healed. The wrapper keeps the inner node's spec, so placement, cost and
state are those of the real node.

    node = FaultyNode(FileNode(spec))
    node.fail("store", Unavailable)                       # every store fails at once
    node.fail("retrieve", Unavailable, after_bytes=1000)  # dies mid-transfer
    node.fail("present", OSError("boom"), times=1)         # the next call only
    node.heal()
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal

from shared.annex.keys import Key
from shared.errors import NodeError, Unavailable
from shared.nodes.base import Layer, Node, Usage
from shared.streams import Readable, Writable

Op = Literal["check", "present", "store", "retrieve", "remove", "usage"]
ExcSpec = BaseException | type[BaseException]


@dataclass(frozen=True)
class Call:
    """One call that reached the wrapper (whether or not it was failed)."""

    op: Op
    key: str | None = None
    offset: int | None = None  # retrieve only


@dataclass
class _Fault:
    exc: ExcSpec
    times: int | None  # None: until healed
    after_bytes: int | None  # store/retrieve: fail once this many bytes went through


class InjectedFault(Exception):
    """The default non-node exception, for faults that are not one of our error types."""


class FaultyNode(Layer):
    def __init__(self, inner: Node) -> None:
        super().__init__(inner)
        self.calls: list[Call] = []
        self._faults: dict[Op, _Fault] = {}
        self._lock = threading.Lock()

    # -- control ------------------------------------------------------------

    def fail(
        self,
        op: Op,
        exc: ExcSpec = Unavailable,
        *,
        times: int | None = None,
        after_bytes: int | None = None,
    ) -> None:
        """Make ``op`` raise ``exc`` (a class is instantiated with a message naming the node)."""
        if after_bytes is not None and op not in ("store", "retrieve"):
            raise ValueError("after_bytes only applies to store and retrieve")
        with self._lock:
            self._faults[op] = _Fault(exc, times, after_bytes)

    def heal(self, op: Op | None = None) -> None:
        with self._lock:
            if op is None:
                self._faults.clear()
            else:
                self._faults.pop(op, None)

    def ops(self, op: Op) -> list[Call]:
        """The recorded calls of one operation."""
        with self._lock:
            return [c for c in self.calls if c.op == op]

    # -- machinery ----------------------------------------------------------

    def _enter(self, call: Call) -> _Fault | None:
        """Record the call; return the fault to apply to it, if any (consuming one use)."""
        with self._lock:
            self.calls.append(call)
            fault = self._faults.get(call.op)
            if fault is None:
                return None
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    del self._faults[call.op]
            return fault

    def _make(self, fault: _Fault, op: Op) -> BaseException:
        exc = fault.exc
        if isinstance(exc, BaseException):
            return exc
        message = f"injected {op} fault"
        if issubclass(exc, NodeError):
            return exc(message, self.name)
        return exc(message)

    def _raise_now(self, call: Call) -> None:
        fault = self._enter(call)
        if fault is not None:
            raise self._make(fault, call.op)

    # -- Node interface -----------------------------------------------------

    def check(self) -> None:
        self._raise_now(Call("check"))
        self.inner.check()

    def present(self, key: Key) -> int | None:
        self._raise_now(Call("present", str(key)))
        return self.inner.present(key)

    def store(self, key: Key, source: Readable, size: int) -> bool:
        fault = self._enter(Call("store", str(key)))
        if fault is None:
            return self.inner.store(key, source, size)
        if fault.after_bytes is None:
            raise self._make(fault, "store")
        return self.inner.store(
            key, _FailingSource(source, fault.after_bytes, self._make(fault, "store")), size
        )

    def retrieve(self, key: Key, sink: Writable, offset: int = 0) -> None:
        fault = self._enter(Call("retrieve", str(key), offset))
        if fault is None:
            self.inner.retrieve(key, sink, offset)
        elif fault.after_bytes is None:
            raise self._make(fault, "retrieve")
        else:
            self.inner.retrieve(
                key, _FailingSink(sink, fault.after_bytes, self._make(fault, "retrieve")), offset
            )

    def remove(self, key: Key) -> None:
        self._raise_now(Call("remove", str(key)))
        self.inner.remove(key)

    def usage(self) -> Usage | None:
        self._raise_now(Call("usage"))
        return self.inner.usage()


class _FailingSource:
    """Passes ``limit`` bytes through, then raises (a connection lost mid-upload)."""

    def __init__(self, source: Readable, limit: int, exc: BaseException) -> None:
        self._source = source
        self._left = limit
        self._exc = exc

    def read(self, n: int = -1, /) -> bytes:
        if self._left <= 0:
            raise self._exc
        want = self._left if n < 0 else min(n, self._left)
        data = self._source.read(want)
        self._left -= len(data)
        return data


class _FailingSink:
    """Lets ``limit`` bytes through to the sink, then raises (a connection lost mid-download)."""

    def __init__(self, sink: Writable, limit: int, exc: BaseException) -> None:
        self._sink = sink
        self._left = limit
        self._exc = exc

    def write(self, data: bytes, /) -> int:
        if len(data) > self._left:
            if self._left > 0:
                self._sink.write(data[: self._left])
                self._left = 0
            raise self._exc
        self._left -= len(data)
        return self._sink.write(data)
