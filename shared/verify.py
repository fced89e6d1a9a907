"""Content checked against its key while it streams, before anything is committed.

Both places that copy content they did not produce use it: the gateway (a client's
upload) and the maintenance commands (a copy from one node to another, read back
by fsck). The check happens when the last byte is read, before the reader returns
it: a node store sees the error instead of EOF and abandons its temp, so content
with a wrong hash never becomes visible under the key's name.
"""

from __future__ import annotations

from collections.abc import Callable

from shared.errors import IntegrityError
from shared.keys import ContentVerifier, Key
from shared.nodes.base import BLOCK, Readable


class VerifiedReader:
    """``data`` (``length`` bytes) checked against ``key``: hash, size, and ``valid()``
    (the P2P client's VALID, which matters only where no hash can be checked)."""

    def __init__(
        self,
        data: Readable,
        key: Key,
        length: int,
        valid: Callable[[], bool] = lambda: True,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        self.data, self.key, self.left, self.valid = data, key, length, valid
        self.on_bytes = on_bytes
        self.verifier = ContentVerifier(key)
        self.checked = False

    def read(self, n: int = -1, /) -> bytes:
        block = self.data.read(n if n >= 0 else BLOCK)
        self.left -= len(block)
        if self.left < 0:  # now, not at the end: a node would take all of it first
            raise IntegrityError(f"{self.key}: the content is longer than the key says")
        self.verifier.update(block)
        if (not block or self.left <= 0) and not self.checked:
            # Before the nodes get the last bytes (or EOF) and commit.
            if self.left != 0:
                raise IntegrityError(f"{self.key}: the content ended {self.left} bytes short")
            self.verifier.verify()  # raises IntegrityError on a wrong hash or size
            if not self.valid() and not self.verifier.checks_hash:
                raise IntegrityError(f"{self.key}: the client says the content changed")
            self.checked = True
        if block and self.on_bytes is not None:
            self.on_bytes(len(block))
        return block


class VerifyingSink:
    """A sink that only checks: what fsck retrieves goes nowhere but the hash."""

    def __init__(self, key: Key, on_bytes: Callable[[int], None] | None = None) -> None:
        self.verifier = ContentVerifier(key)
        self.on_bytes = on_bytes

    def write(self, data: bytes) -> None:
        self.verifier.update(data)
        if self.on_bytes is not None:
            self.on_bytes(len(data))

    def verify(self) -> None:
        self.verifier.verify()
