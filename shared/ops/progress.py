"""A progress line for long operator commands: keys, bytes, rate and ETA, on stderr.

On a terminal the line is redrawn in place; otherwise (a log file, CI) a line is
written every ``interval`` seconds, so logs stay readable.

Bytes arrive as deltas: a copy that fails part way, and is tried again from another
node, takes back what it had counted (a negative delta), so the bytes done never
pass the total. A size that only a node could tell (``add_total``) joins the total
as it is learned.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from shared.ops.nodecli import human_size


class Progress:
    def __init__(
        self,
        what: str,
        keys: int,
        total_bytes: int,
        stream: TextIO | None = None,
        interval: float = 10.0,
        unit: str = "keys",
    ) -> None:
        self.what, self.keys, self.total, self.unit = what, keys, total_bytes, unit
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = 0.2 if self.tty else interval
        self.done_keys = 0
        self.done_bytes = 0
        self.start = time.monotonic()
        self._shown = time.monotonic()  # the first line after ``interval``
        self._lock = threading.Lock()

    def add_bytes(self, n: int) -> None:
        """``n`` more bytes done; negative: an attempt that failed takes its bytes back."""
        with self._lock:
            self.done_bytes += n
        self._maybe_show()

    def add_total(self, n: int) -> None:
        """``n`` bytes more to do, learned on the way (a size the plan could not know)."""
        with self._lock:
            self.total += n

    def key_done(self) -> None:
        with self._lock:
            self.done_keys += 1
        self._maybe_show()

    def line(self) -> str:
        elapsed = max(1e-6, time.monotonic() - self.start)
        rate = self.done_bytes / elapsed
        text = f"{self.what}: {self.done_keys}/{self.keys} {self.unit}"
        if self.total:
            pct = 100 * self.done_bytes / self.total
            text += f", {human_size(self.done_bytes)} of {human_size(self.total)} ({pct:.0f}%)"
            text += f", {human_size(int(rate))}/s"
            if rate > 0 and self.done_bytes < self.total:
                text += f", ETA {_duration((self.total - self.done_bytes) / rate)}"
        elif self.done_bytes:
            text += f", {human_size(self.done_bytes)}, {human_size(int(rate))}/s"
        return text

    def _maybe_show(self) -> None:
        now = time.monotonic()
        if now - self._shown < self.interval:
            return
        self._shown = now
        self._write(self.line())

    def _write(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        self._write(self.line())
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
