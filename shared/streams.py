"""Byte streams as every layer passes them: what a node reads from and writes to, what
the P2P protocol sends, what a cluster's download and a gateway's upload go through.
Below the nodes and the protocols, which all use them; knows nothing of keys.
"""

from __future__ import annotations

from typing import Protocol


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class Writable(Protocol):
    def write(self, data: bytes, /) -> object: ...


BLOCK = 1024 * 1024


class CountingSink:
    """Counts what reached the sink, so a download that fails over or is retried
    continues where it stopped."""

    def __init__(self, sink: Writable) -> None:
        self.sink = sink
        self.count = 0

    def write(self, data: bytes) -> None:
        self.sink.write(data)
        self.count += len(data)


class CountingSource:
    """Counts what was read from the source, so a store that read nothing of it can be
    tried again with the same source; one that read part of a source that can seek
    (a file, not a stream read once) can be tried again after ``rewind``."""

    def __init__(self, source: Readable) -> None:
        self.source = source
        self.count = 0
        self._start: int | None = None
        seekable = getattr(source, "seekable", None)
        if seekable is not None and seekable():
            self._start = source.tell()  # type: ignore[attr-defined]

    @property
    def rewindable(self) -> bool:
        return self._start is not None

    def rewind(self) -> None:
        """Back to where the source stood when this started counting."""
        if self._start is None:
            raise ValueError("this source cannot be read again")
        self.source.seek(self._start)  # type: ignore[attr-defined]
        self.count = 0

    def read(self, n: int = -1, /) -> bytes:
        data = self.source.read(n)
        self.count += len(data)
        return data


def read_up_to(source: Readable, n: int) -> bytes:
    """Exactly ``n`` bytes unless the source ends first (streams may return short reads)."""
    pieces = []
    got = 0
    while got < n:
        block = source.read(n - got)
        if not block:
            break
        pieces.append(block)
        got += len(block)
    return b"".join(pieces)
