"""Content checked against its key while it streams, before anything is committed
or relied on.

Every place that copies content it did not produce uses it: the gateway (a client's
upload), the maintenance commands (a copy from one node to another, read back by
fsck), and every read from a node (``VerifiedFile`` for the cluster remote's get,
``CheckedStream`` for the gateway's GET). For copies, the check happens when the
last byte is read, before the reader returns it: a node store sees the error instead
of EOF and abandons its temp, so content with a wrong hash never becomes visible
under the key's name.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import BinaryIO

from shared.annex.keys import ContentVerifier, Key
from shared.errors import BadReplica, IntegrityError
from shared.streams import BLOCK, CountingSink, Readable

Progress = Callable[[int], None]


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


class CheckedStream:
    """A sink that counts and checks what passes on to a receiver that already holds
    ``offset`` bytes: the size never past the key's, and the hash when the node's
    copy is complete. Where the key has a hash, the first node is read from byte 0
    and the bytes the receiver holds are hashed, not sent (a resumed download is
    checked whole); a node that fails over continues where the last one stopped."""

    def __init__(self, sink: CountingSink, key: Key, offset: int) -> None:
        self.sink, self.key, self.offset = sink, key, offset
        self.verifier = ContentVerifier(key)
        self.hashing = self.verifier.checks_hash
        self.skip = 0  # bytes still to hash, not send
        self.position = offset  # in the object, of the next byte to arrive

    def start(self) -> int:
        """Where the next node's read starts (and set up what is skipped)."""
        if self.hashing and self.sink.count == 0:
            self.verifier = ContentVerifier(self.key)  # a failed first node's bytes are gone
            self.skip, self.position = self.offset, 0
        else:
            self.skip, self.position = 0, self.offset + self.sink.count
        return self.position

    def write(self, data: bytes) -> None:
        size = self.key.content_size
        if size is not None and self.position + len(data) > size:
            raise BadReplica(f"{self.key}: the copy is longer than the key's {size} bytes")
        self.position += len(data)
        if self.hashing:
            self.verifier.update(data)
        if self.skip:
            held = min(self.skip, len(data))
            self.skip -= held
            data = data[held:]
        if data:
            self.sink.write(data)

    def check(self, node: str) -> None:
        size = self.key.content_size
        if size is not None and self.position != size:
            raise BadReplica(
                f"{self.key}: the copy ends after {self.position} of {size} bytes", node
            )
        if self.hashing:
            try:
                self.verifier.verify()
            except IntegrityError as e:
                raise BadReplica(str(e), node) from None


class VerifiedFile:
    """The file git-annex asked for, appended to sequentially and hashed as it grows
    (what a resumed download already holds first), reporting progress as deltas.

    git-annex is told ORDERED: it hashes that file while it grows (``tailVerify``,
    so that it need not read it again afterwards), and a git-annex proxying this
    remote streams it to its client while it grows. Neither can be told that bytes
    were taken back. So once a node's bytes written there prove wrong, the file is
    left alone for the rest of the attempt: the next nodes write beside it, to
    ``PATH.cluster-part``. When one of them delivers the right content, it is
    renamed to ``PATH`` and ``publish`` says that git-annex saw other bytes: the
    attempt must fail (git-annex retries a get that made progress; a proxied client
    finds the hash wrong and asks again), and the next attempt finds the right
    content complete, checks it and reads no node. No wrong byte is ever taken by
    git-annex as verified.

    Dropping what a bad node wrote is lazy (``discard``): nothing is emptied until
    the next node writes its first byte, so that when no other node has the key,
    the last bad copy is still there for git-annex to judge. A side file that a
    killed get left is continued."""

    def __init__(self, path: str, key: Key, progress: Progress | None) -> None:
        self._path, self._part = path, path + ".cluster-part"
        try:
            if os.path.getsize(self._part) > 0:  # a killed get's right-so-far bytes
                os.replace(self._part, path)
            else:
                os.unlink(self._part)
        except FileNotFoundError:
            pass
        # A git-annex proxy streams the file as it grows and says VALID whatever the
        # get's outcome; a client that does not verify would keep a bad copy's bytes.
        # So for a proxy, every byte goes to the side file until it proved right.
        self._aside = _proxied(path)  # writing to the side file
        self._shown = 0  # bytes of git-annex's file it may have read before they were dropped
        self._published = False
        self._f: BinaryIO = open(self._part if self._aside else path, "a+b")  # noqa: SIM115
        self._key, self._progress = key, progress
        self._verifier = ContentVerifier(key)
        self._pending = False  # discard() called, nothing written since
        self._kept_whole = False  # what discard() left is a bad node's complete copy
        self.finished = False  # the node writing now said it was done
        self._writer: str | None = None  # the node that wrote every byte there, if one did
        self._f.seek(0)
        while block := self._f.read(BLOCK):
            self._verifier.update(block)
        self._report(self._f.tell())

    def _report(self, delta: int) -> None:
        if self._progress is not None and delta:
            self._progress(delta)

    def position(self) -> int:
        return 0 if self._pending else self._f.tell()

    def complete(self) -> bool:
        """Whether the file already holds the key's whole content (a retried get after
        the right content was put in place): checked, so nothing need be read."""
        size = self._key.content_size
        if self._pending or size is None or self._f.tell() != size:
            return False
        try:
            self._verifier.verify()
        except IntegrityError:
            return False
        return True

    def restart(self) -> int:
        """Drop what is there (a bad copy, or not a prefix of the object): git-annex's
        file is not touched again once it held bytes; the side file starts over."""
        self._report(-self._f.tell())
        if not self._aside and self._f.tell() > 0:
            self._shown = self._f.tell()
            self._f.close()
            self._f = open(self._part, "w+b")  # noqa: SIM115 - closed by __exit__
            self._aside = True
        self._f.seek(0)
        self._f.truncate(0)
        self._verifier = ContentVerifier(self._key)
        self._pending = self._kept_whole = False
        self._writer = None
        return 0

    def discard(self, complete: bool) -> None:
        """What is there is wrong: the next write starts over. ``complete``: it is the
        whole of a node's copy, as the node has it."""
        self._pending = True
        self._kept_whole = complete

    def drop_discarded(self) -> None:
        """Empty the files now if what is there was discarded (the get fails: no wrong
        byte may outlive it, and git-annex's file no longer matters for this attempt)."""
        if self._pending:
            self.restart()
            if self._shown:
                os.truncate(self._path, 0)

    def whole_from(self, node: str) -> bool:
        """Whether ``node`` wrote every byte there (so a wrong result is its own)."""
        return self._writer == node

    def kept_whole(self) -> bool:
        """Whether a complete, discarded copy is still there (see the class docstring)."""
        return self._pending and self._kept_whole

    def write(self, data: bytes) -> int:
        if self._pending:
            self.restart()
        size = self._key.content_size
        if size is not None and self._f.tell() + len(data) > size:
            raise BadReplica(f"{self._key}: the copy is longer than the key's {size} bytes")
        n = self._f.write(data)
        self._verifier.update(data)
        self._report(n)
        return n

    def starting(self, node: str) -> None:
        self.finished = False
        if self._f.tell() == 0 or self._pending:
            self._writer = node
        elif self._writer != node:
            self._writer = None

    def check(self) -> None:
        """The node is done: raise BadReplica unless the content is the key's."""
        self.finished = True
        try:
            self._verifier.verify()
        except IntegrityError as e:
            raise BadReplica(str(e)) from None

    def publish(self) -> bool:
        """Hand the bytes to git-annex, in the file it asked for. True: it may have read
        other bytes there during this attempt, which must fail (see the class
        docstring); not when what it may have read is a prefix of these (a restart
        that was not for wrong content, such as a size a node could not tell)."""
        self._f.flush()
        self._published = True
        if not self._aside:
            return False
        differs = self._shown > 0 and not _same_prefix(self._path, self._part, self._shown)
        os.replace(self._part, self._path)
        return differs

    def __enter__(self) -> VerifiedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._published:
            self.drop_discarded()
        self._f.close()
        if self._published or not self._aside:
            return  # git-annex's file holds what it should: the content, or a good prefix
        try:
            if self._pending or os.path.getsize(self._part) == 0:
                os.unlink(self._part)  # nothing worth resuming
            else:
                os.replace(self._part, self._path)  # a good prefix: git-annex resumes it
        except FileNotFoundError:
            pass


def _proxied(path: str) -> bool:
    """Whether ``path`` is the temp file of a git-annex proxying this remote to its
    clients (``.git/annex/othertmp/proxy.N/KEY``, git-annex 10.20240701 and later)."""
    parent = os.path.dirname(path)
    return os.path.basename(parent).startswith("proxy") and (
        os.path.basename(os.path.dirname(parent)) == "othertmp"
    )


def _same_prefix(a: str, b: str, length: int) -> bool:
    """Whether the first ``length`` bytes of two files are the same."""
    with open(a, "rb") as fa, open(b, "rb") as fb:
        left = length
        while left > 0:
            x, y = fa.read(min(BLOCK, left)), fb.read(min(BLOCK, left))
            if x != y or not x:
                return False
            left -= len(x)
    return True
