"""Bad copies a read has found: which node holds a wrong copy of which key.

A read that proves a node's copy wrong fails over to the next node and notes the
copy here, so that later reads (the next ``git annex get``, another gateway
session) try that node last, a store replaces the copy instead of taking it for
the key, and ``status`` and ``fsck`` tell the operator what to repair. The note
is advice for ordering and reporting only: presence never trusts or distrusts a
node because of it, and a store or removal of the key on that node clears it.

The journal is a small text file (one ``NODE<TAB>KEY<TAB>WHY`` line per copy),
rewritten under an exclusive lock, since bad copies are rare; without a path it
lives in memory (tests, one-off tools).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from shared.annex.keys import Key


def bad_copies_path(git_dir: Path, remote_uuid: str) -> Path:
    """Where a cluster remote's reads in this clone note bad copies, and where the
    operators' commands (run in the same clone) find them."""
    return git_dir / "annex" / "cluster" / remote_uuid / "bad-copies"


class BadCopies:
    """(node, key) -> why, kept in ``path`` when one is given."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._memory: dict[tuple[str, str], str] = {}

    # -- the file -------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[tuple[str, str], str]]:
        """The entries, under both locks; what the block leaves in the dict is written."""
        with self._lock:
            if self.path is None:
                yield self._memory
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                entries = self._read()
                before = dict(entries)
                yield entries
                if entries != before:
                    self._write(entries)
            finally:
                os.close(fd)

    def _read(self) -> dict[tuple[str, str], str]:
        assert self.path is not None
        entries: dict[tuple[str, str], str] = {}
        try:
            text = self.path.read_text(encoding="utf-8", errors="surrogateescape")
        except FileNotFoundError:
            return entries
        for line in text.splitlines():
            node, _, rest = line.partition("\t")
            key, _, why = rest.partition("\t")
            if node and key:
                entries[(node, key)] = why
        return entries

    def _write(self, entries: dict[tuple[str, str], str]) -> None:
        assert self.path is not None
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        lines = "".join(f"{n}\t{k}\t{' '.join(w.split())}\n" for (n, k), w in entries.items())
        tmp.write_text(lines, encoding="utf-8", errors="surrogateescape")
        os.replace(tmp, self.path)

    # -- what callers use -----------------------------------------------------------

    def note(self, key: Key, node: str, why: str) -> None:
        with self._locked() as entries:
            entries[(node, str(key))] = why

    def forget(self, key: Key, nodes: list[str]) -> None:
        """The copies on ``nodes`` were replaced or removed: no longer bad."""
        if not nodes:
            return
        if self.path is not None and not self.path.exists():
            return  # nothing was ever noted: no lock, no file
        with self._locked() as entries:
            for node in nodes:
                entries.pop((node, str(key)), None)

    def of(self, key: Key) -> set[str]:
        """The nodes noted as holding a bad copy of ``key``."""
        text = str(key)
        return {n for (n, k) in self.entries() if k == text}

    def entries(self) -> dict[tuple[str, str], str]:
        """Every noted copy: (node, key) -> why."""
        if self.path is None:
            with self._lock:
                return dict(self._memory)
        if not self.path.exists():
            return {}
        with self._locked() as entries:
            return dict(entries)
