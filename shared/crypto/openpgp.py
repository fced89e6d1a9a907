"""Symmetric OpenPGP (RFC 4880), streaming: what ``gpg --symmetric`` writes for git-annex.

git-annex stores ``encryption=shared`` content as the output of ``gpg --symmetric
--force-mdc`` and reads it back with ``gpg --decrypt``. Doing both here keeps a gpg
process (and its agent) per object off the data path, while the objects stay
readable by git-annex, and git-annex's objects by us.

Writing is deliberately narrow and fixed in length (no compression, fixed packet
framing) so that the size of an upload is known before it starts. Reading accepts
what gpg produces with any options a user may have put in ``annex-gnupg-options``.

Decrypted data is handed out before the integrity check (the MDC at the very end)
has been done, as gpg does: callers must discard what they got if ``close`` raises.
"""

from __future__ import annotations

import bz2
import hashlib
import hmac
import os
import secrets
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from cryptography.hazmat.decrepit.ciphers import algorithms as decrepit
from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives.ciphers import Cipher as _Cipher
from cryptography.hazmat.primitives.ciphers import CipherAlgorithm, CipherContext, algorithms

from shared.errors import IntegrityError

__all__ = ["Decryptor", "EncryptingReader", "decrypt_stream", "encrypted_size"]

_Buf = bytes | memoryview

# Largest piece handed downstream at once: bounds memory and the size of yields.
_PIECE = 1 << 20
# Partial body length chunk of the packets we write (2**n, RFC 4880 4.2.2.4).
_CHUNK = 1 << 20

# Tags (RFC 4880 4.3).
_PKESK, _SIG, _SKESK, _OPS, _COMPRESSED, _SED, _MARKER, _LITERAL = 1, 2, 3, 4, 8, 9, 10, 11
_SEIPD, _MDC, _AEAD = 18, 19, 20

_MDC_HEAD = b"\xd3\x14"  # new-format tag 19, length 20
_MDC_SIZE = len(_MDC_HEAD) + 20
_MAX_NESTING = 16  # compressed packets within compressed packets

# Symmetric algorithms (RFC 4880 9.2; Camellia RFC 5581): name, class, key and block bytes.
_ALGORITHMS: dict[int, tuple[str, Callable[[bytes], CipherAlgorithm], int, int]] = {
    1: ("IDEA", decrepit.IDEA, 16, 8),
    2: ("TripleDES", decrepit.TripleDES, 24, 8),
    3: ("CAST5", decrepit.CAST5, 16, 8),
    4: ("Blowfish", decrepit.Blowfish, 16, 8),
    7: ("AES-128", algorithms.AES, 16, 16),
    8: ("AES-192", algorithms.AES, 24, 16),
    9: ("AES-256", algorithms.AES, 32, 16),
    11: ("Camellia-128", decrepit.Camellia, 16, 16),
    12: ("Camellia-192", decrepit.Camellia, 24, 16),
    13: ("Camellia-256", decrepit.Camellia, 32, 16),
}
_UNAVAILABLE = {10: "Twofish"}  # not in the cryptography library

# Hash algorithms (RFC 4880 9.4) by hashlib name.
_HASHES = {
    1: "md5",
    2: "sha1",
    3: "ripemd160",
    8: "sha256",
    9: "sha384",
    10: "sha512",
    11: "sha224",
}

# What we write: AES-256 and S2K mode 3 with SHA-256 at gpg's usual (and maximal) count.
_AES256 = 9
_S2K_SHA256 = 8
_S2K_COUNT = 0xFF  # 65011712 bytes


def _cfb(algo: int, key: bytes) -> _Cipher[CFB]:
    """The cipher in OpenPGP's CFB with a zero IV (the random prefix does the IV's job)."""
    name, factory, size, block = _ALGORITHMS[algo]
    if len(key) != size:
        raise IntegrityError(f"the {name} session key has the wrong length")
    return _Cipher(factory(key), CFB(bytes(block)))


def _block_size(algo: int) -> int:
    return _ALGORITHMS[algo][3]


def _algorithm(algo: int) -> int:
    """``algo`` if we can use it, else a clear error naming it."""
    if algo in _ALGORITHMS:
        return algo
    name = _UNAVAILABLE.get(algo, f"number {algo}")
    raise IntegrityError(
        f"the data is encrypted with the {name} cipher, which is not supported; decrypt it with gpg"
    )


_hashing: ThreadPoolExecutor | None = None
_hashing_lock = threading.Lock()


def _hashing_pool() -> ThreadPoolExecutor:
    """Two threads shared by all messages (one per core of the machines we run on)."""
    global _hashing
    with _hashing_lock:
        if _hashing is None:
            _hashing = ThreadPoolExecutor(2, thread_name_prefix="openpgp-mdc")
        return _hashing


def _forget_hashing_pool() -> None:
    global _hashing, _hashing_lock
    _hashing, _hashing_lock = None, threading.Lock()  # its threads did not survive the fork


os.register_at_fork(after_in_child=_forget_hashing_pool)


class _Mdc:
    """SHA-1 for the MDC, computed on a helper thread once a message is large.

    hashlib lets go of the GIL for large updates and cryptography's CFB does not, so
    on two cores hashing one block while the cipher works on the next is ~25% faster
    (AES-CFB, inherently serial to encrypt, is the bottleneck). Below ``_AFTER`` bytes
    a thread would cost more than it saves. At most one update is in flight, which
    keeps them in order; hashed data must not change afterwards.
    """

    _AFTER = 8 << 20
    _BIG = 1 << 16

    def __init__(self) -> None:
        self._sha = hashlib.sha1()
        self._seen = 0
        self._pending: Future[None] | None = None

    def update(self, data: _Buf) -> None:
        self._wait()
        self._seen += len(data)
        if self._seen <= self._AFTER or len(data) < self._BIG:
            self._sha.update(data)
        else:
            self._pending = _hashing_pool().submit(self._sha.update, data)

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def digest(self) -> bytes:
        self._wait()
        return self._sha.digest()


# --- String-to-key (RFC 4880 3.7) -------------------------------------------------


def _count(coded: int) -> int:
    return (16 + (coded & 15)) << ((coded >> 4) + 6)


def _s2k(passphrase: bytes, salt: bytes, count: int, hash_name: str, size: int) -> bytes:
    """Iterated and salted S2K (modes 0 and 1 are its special cases: count too small).

    Hashing a large pre-built repetition of salt+passphrase keeps gpg's count of 65
    million bytes to ~50 ms instead of a Python loop per repetition.
    """
    data = salt + passphrase
    count = max(count, len(data))
    try:
        digest_size = hashlib.new(hash_name).digest_size
    except ValueError:
        raise IntegrityError(
            f"the passphrase is hashed with {hash_name}, which this Python does not offer; "
            "decrypt the data with gpg"
        ) from None
    block, blocks, tail = b"", 0, b""
    if data:
        repeats, rest = divmod(count, len(data))
        per_block = max(1, (1 << 20) // len(data))
        block = data * per_block
        blocks, repeats = divmod(repeats, per_block)
        tail = data * repeats + data[:rest]

    def context(preload: int) -> bytes:
        h = hashlib.new(hash_name)
        h.update(bytes(preload))
        for _ in range(blocks):
            h.update(block)
        h.update(tail)
        return h.digest()

    # A key longer than the hash (AES-256 from SHA-1, gpg's default) takes more
    # contexts, each preloaded with one more zero byte; they run in parallel.
    more = [_hashing_pool().submit(context, n) for n in range(1, -(-size // digest_size))]
    return b"".join([context(0), *(future.result() for future in more)])[:size]


_derived: OrderedDict[tuple[bytes, bytes, int, str, int], bytes] = OrderedDict()
_derived_lock = threading.Lock()
_DERIVED_MAX = 256


def _derive(passphrase: bytes, salt: bytes, count: int, hash_name: str, size: int) -> bytes:
    """``_s2k``, remembered: objects written by one process share its salt."""
    cache_key = (passphrase, salt, count, hash_name, size)
    with _derived_lock:
        key = _derived.get(cache_key)
        if key is not None:
            _derived.move_to_end(cache_key)
            return key
    key = _s2k(passphrase, salt, count, hash_name, size)  # unlocked: other threads go on
    with _derived_lock:
        _derived[cache_key] = key
        while len(_derived) > _DERIVED_MAX:
            _derived.popitem(last=False)
    return key


_process_salt = secrets.token_bytes(8)


def _key_encryption_key(passphrase: bytes) -> tuple[bytes, bytes]:
    """The S2K specifier and key that wrap each message's session key.

    One derivation per passphrase and process instead of one per object: the salt is
    per process, and each message still gets its own random session key. (CFB with a
    zero IV under one key encrypts every wrapped key's first block with the same
    keystream, so two wrapped keys XOR like their first 15 bytes do: nothing to learn
    from random keys unless one of them leaks, and even then 17 bytes stay unknown.)
    """
    specifier = bytes([3, _S2K_SHA256]) + _process_salt + bytes([_S2K_COUNT])
    key = _derive(passphrase, _process_salt, _count(_S2K_COUNT), "sha256", 32)
    return specifier, key


# --- Writing ----------------------------------------------------------------------


def _length(n: int) -> bytes:
    """A new-format (definite) body length."""
    if n < 192:
        return bytes([n])
    if n < 8384:
        n -= 192
        return bytes([(n >> 8) + 192, n & 0xFF])
    return b"\xff" + n.to_bytes(4, "big")


def _chunks(n: int) -> Iterator[tuple[int, bytes]]:
    """(size, length header) of each chunk of an ``n``-byte body: fixed partial chunks,
    then a definite length for the rest (possibly 0)."""
    chunk = _CHUNK
    partial = bytes([0xE0 | (chunk.bit_length() - 1)])
    full, rest = divmod(n, chunk)
    for _ in range(full):
        yield chunk, partial
    yield rest, _length(rest)


def _packet_size(n: int) -> int:
    """Bytes of a packet with an ``n``-byte body, framed as ``_chunks`` does."""
    full, rest = divmod(n, _CHUNK)
    return 1 + full + len(_length(rest)) + n


_SKESK_SIZE = 2 + 2 + 11 + 1 + 32  # header, version+algo, S2K, wrapped algo+key
_PREFIX_SIZE = 16 + 2  # AES's block, and its last two bytes again
_LITERAL_HEAD = 6  # format, name length (0), date


def encrypted_size(plain_size: int) -> int:
    """The exact size of what ``EncryptingReader`` makes of ``plain_size`` bytes."""
    if plain_size < 0:
        raise ValueError("plain_size must not be negative")
    inner = _PREFIX_SIZE + _packet_size(_LITERAL_HEAD + plain_size) + _MDC_SIZE
    return _SKESK_SIZE + _packet_size(1 + inner)


class Source(Protocol):
    def read(self, n: int, /) -> bytes: ...


class _Empty:
    def read(self, n: int, /) -> bytes:
        return b""


_EMPTY = _Empty()


class EncryptingReader:
    """Reads ``plain_size`` bytes of plaintext from ``source``, gives OpenPGP ciphertext.

    A file-like object so that uploaders can pull from it; ``read(n)`` returns exactly
    ``n`` bytes until the end, encrypted straight into the returned buffer. Plaintext
    shorter or longer than ``plain_size`` raises ``IntegrityError`` (before the message
    could be completed).
    """

    def __init__(self, source: Source, passphrase: bytes, plain_size: int) -> None:
        if plain_size < 0:
            raise ValueError("plain_size must not be negative")
        self._source = source
        self._passphrase = passphrase
        self._size = plain_size
        self._encrypt: CipherContext | None = None
        self._segments: Iterator[tuple[_Buf, bool]] = self._produce()
        self._segment = memoryview(b"")
        self._encrypted = False
        self._left = encrypted_size(plain_size)
        self._error: IntegrityError | None = None

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1, /) -> bytes:
        if self._error is not None:
            raise self._error
        try:
            if n is None or n < 0:
                return b"".join(iter(lambda: self._read(_PIECE), b""))
            return self._read(n)
        except IntegrityError as e:
            self._error = e
            raise

    def _read(self, n: int) -> bytes:
        n = min(n, self._left)
        out = bytearray(n + 16)  # update_into wants a block of room beyond the data
        view = memoryview(out)
        filled = 0
        while filled < n:
            if not self._segment:
                segment = next(self._segments, None)
                if segment is None:
                    break
                self._segment = memoryview(segment[0])
                self._encrypted = segment[1]
                continue
            part = self._segment[: n - filled]
            self._segment = self._segment[len(part) :]
            if self._encrypted:
                assert self._encrypt is not None
                self._encrypt.update_into(part, view[filled:])
            else:
                view[filled : filled + len(part)] = part
            filled += len(part)
        self._left -= filled
        return bytes(view[:filled])

    def close(self) -> None:
        """Frees the plaintext at once: the generator behind ``read`` and this object refer
        to each other, a cycle that only the cyclic GC would otherwise collect (and a
        store in flight holds megabytes in it)."""
        segments, self._segments = self._segments, iter(())
        if isinstance(segments, Generator):
            segments.close()
        self._segment = memoryview(b"")
        self._source = _EMPTY

    def __enter__(self) -> EncryptingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _produce(self) -> Generator[tuple[_Buf, bool], None, None]:
        """The message as (bytes, whether they are to be encrypted) segments."""
        specifier, kek = _key_encryption_key(self._passphrase)
        session = secrets.token_bytes(32)
        wrapped = _cfb(_AES256, kek).encryptor().update(bytes([_AES256]) + session)
        body = bytes([4, _AES256]) + specifier + wrapped
        yield bytes([0xC0 | _SKESK, len(body)]) + body, False

        self._encrypt = _cfb(_AES256, session).encryptor()
        plain = _Taker(self._inner())
        inner_size = _PREFIX_SIZE + _packet_size(_LITERAL_HEAD + self._size) + _MDC_SIZE
        head = bytes([0xC0 | _SEIPD])
        for size, length in _chunks(1 + inner_size):
            if head:
                yield head + length + b"\x01", False  # version 1
                size -= 1
                head = b""
            else:
                yield length, False
            for piece in plain.take(size):
                yield piece, True

    def _inner(self) -> Iterator[bytes]:
        """The plaintext under the encryption, hashed into the MDC on the way."""
        mdc = _Mdc()
        random = secrets.token_bytes(16)
        prefix = random + random[-2:]
        mdc.update(prefix)
        yield prefix
        date = (int(time.time()) & 0xFFFFFFFF).to_bytes(4, "big")
        head = bytes([0xC0 | _LITERAL])
        for size, length in _chunks(_LITERAL_HEAD + self._size):
            if head:
                start = head + length + b"b\x00" + date
                size -= _LITERAL_HEAD
                head = b""
            else:
                start = length
            mdc.update(start)
            yield start
            while size:
                block = self._source.read(size)
                if not block:
                    raise IntegrityError(
                        f"the content ended before the {self._size} bytes expected"
                    )
                if len(block) > size:
                    raise IntegrityError(f"the content is longer than the {self._size} expected")
                if not isinstance(block, bytes):  # hashed behind our back: must not change
                    block = bytes(block)
                size -= len(block)
                mdc.update(block)
                yield block
        if self._source.read(1):
            raise IntegrityError(f"the content is longer than the {self._size} bytes expected")
        mdc.update(_MDC_HEAD)
        yield _MDC_HEAD + mdc.digest()


class _Taker:
    """Exactly ``n`` bytes at a time from an iterator of pieces, without joining them."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces
        self._rest = memoryview(b"")

    def take(self, n: int) -> Iterator[memoryview]:
        while n:
            if not self._rest:
                self._rest = memoryview(next(self._pieces))
                continue
            piece = self._rest[:n]
            self._rest = self._rest[n:]
            n -= len(piece)
            yield piece


# --- Reading ----------------------------------------------------------------------


class _Body(Protocol):
    """Consumes one packet's body; ``end`` comes after its last byte."""

    def feed(self, pieces: list[memoryview]) -> Iterator[bytes]: ...
    def end(self) -> Iterator[bytes]: ...


def _new_length(buf: bytearray, at: int) -> tuple[int, bool] | None:
    """(length, partial) of a new-format length at ``buf[at:]``, None if incomplete."""
    first = buf[at]
    if first < 192:
        return first, False
    if first < 224:
        if len(buf) < at + 2:
            return None
        return ((first - 192) << 8) + buf[at + 1] + 192, False
    if first < 255:
        return 1 << (first & 0x1F), True
    if len(buf) < at + 5:
        return None
    return int.from_bytes(buf[at + 1 : at + 5], "big"), False


def _header(buf: bytearray) -> tuple[int, int, bool, bool] | None:
    """(tag, length, partial, to the end) of a packet header, None if incomplete."""
    first = buf[0]
    if not first & 0x80:
        raise IntegrityError("this is not binary OpenPGP data (bad packet header)")
    if first & 0x40:  # new format
        if len(buf) < 2:
            return None
        length = _new_length(buf, 1)
        return None if length is None else (first & 0x3F, *length, False)
    tag, kind = (first >> 2) & 0x0F, first & 3
    if kind == 3:  # indeterminate: up to the end of the enclosing data
        return tag, 0, False, True
    size = 1 << kind
    if len(buf) < 1 + size:
        return None
    return tag, int.from_bytes(buf[1 : 1 + size], "big"), False, False


class _Packets:
    """Splits a packet sequence and hands each body, unchunked, to a ``_Body``.

    Body bytes that arrive in one ``feed`` go downstream in one call, however many
    partial-length chunks they span (gpg writes 8 KiB ones), so per-call costs stay
    per feed, not per chunk.
    """

    def __init__(self, open_body: Callable[[int], _Body], what: str) -> None:
        self._open = open_body
        self._what = what
        self._head = bytearray()
        self._body: _Body | None = None
        self._left = 0
        self._partial = False
        self._to_end = False

    def feed(self, data: _Buf) -> Iterator[bytes]:
        view = memoryview(data)
        at, end = 0, len(view)
        pieces: list[memoryview] = []
        while at < end:
            body = self._body
            if self._partial and not (self._left or self._head) and 224 <= view[at] < 255:
                self._left = 1 << (view[at] & 0x1F)  # the next partial chunk, quickly
                at += 1
                continue
            if body is None or not (self._left or self._to_end):
                self._head.append(view[at])
                at += 1
                if body is None:
                    header = _header(self._head)
                    if header is None:
                        continue
                    tag, self._left, self._partial, self._to_end = header
                    self._body = body = self._open(tag)
                else:
                    length = _new_length(self._head, 0)
                    if length is None:
                        continue
                    self._left, self._partial = length
                self._head.clear()
                if not (self._left or self._partial or self._to_end):
                    yield from self._finish(body, pieces)
                    pieces = []
                continue
            if self._to_end:
                pieces.append(view[at:])
                break
            taken = view[at : at + self._left]
            pieces.append(taken)
            at += len(taken)
            self._left -= len(taken)
            if not (self._left or self._partial):
                yield from self._finish(body, pieces)
                pieces = []
        if pieces and self._body is not None:
            yield from self._body.feed(pieces)

    def _finish(self, body: _Body, pieces: list[memoryview]) -> Iterator[bytes]:
        self._body = None
        if pieces:
            yield from body.feed(pieces)
        yield from body.end()

    def end(self) -> Iterator[bytes]:
        """The enclosing data ended: only a body of indeterminate length may be open."""
        if self._body is not None and self._to_end:
            yield from self._finish(self._body, [])
        elif self._body is not None or self._head:
            raise IntegrityError(f"the {self._what} is truncated")


class _Skip:
    """A packet we have no use for (marker, signatures, public-key session keys)."""

    def feed(self, pieces: list[memoryview]) -> Iterator[bytes]:
        return iter(())

    def end(self) -> Iterator[bytes]:
        return iter(())


class _Collect:
    """A small packet kept whole (the SKESK), then handed to ``done``."""

    def __init__(self, done: Callable[[bytes], None], limit: int = 4096) -> None:
        self._done = done
        self._limit = limit
        self._data = bytearray()

    def feed(self, pieces: list[memoryview]) -> Iterator[bytes]:
        for piece in pieces:
            self._data += piece
        if len(self._data) > self._limit:
            raise IntegrityError("an OpenPGP session key packet is implausibly long")
        return iter(())

    def end(self) -> Iterator[bytes]:
        self._done(bytes(self._data))
        return iter(())


class _Literal:
    """The data itself, after a small header (format, file name, date) we ignore."""

    def __init__(self) -> None:
        self._head = bytearray()
        self._need = 2

    def feed(self, pieces: list[memoryview]) -> Iterator[bytes]:
        if self._need:
            data = memoryview(b"".join(pieces))  # only until the header is complete
            take = min(len(data), self._need - len(self._head))
            self._head += data[:take]
            if len(self._head) == 2 and self._need == 2:
                self._need = 2 + self._head[1] + 4  # the file name's length is known now
                take2 = min(len(data) - take, self._need - len(self._head))
                self._head += data[take : take + take2]
                take += take2
            if len(self._head) < self._need:
                return
            self._need = 0
            pieces = [data[take:]]
        out = b"".join(pieces)  # the one copy, into what the caller keeps
        if out:
            yield out

    def end(self) -> Iterator[bytes]:
        if self._need:
            raise IntegrityError("the literal data packet is truncated")
        return iter(())


_CORRUPT = (zlib.error, OSError, EOFError)


class _Compressed:
    """Inflates into a nested packet sequence, never more than ``_PIECE`` at a time,
    so a small highly compressed message cannot blow up memory."""

    def __init__(self, message: _Message, depth: int) -> None:
        if depth > _MAX_NESTING:
            raise IntegrityError("compressed packets are nested too deeply")
        self._inner = _Packets(lambda tag: message.open_inner(tag, depth), "compressed data")
        self._algo: int | None = None
        self._zlib: zlib._Decompress | None = None
        self._bz2: bz2.BZ2Decompressor | None = None

    def feed(self, pieces: list[memoryview]) -> Iterator[bytes]:
        data: _Buf = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        if self._algo is None:
            if not data:
                return
            self._algo = data[0]
            data = data[1:]
            if self._algo == 1:
                self._zlib = zlib.decompressobj(-15)  # ZIP: raw deflate
            elif self._algo == 2:
                self._zlib = zlib.decompressobj(15)  # ZLIB
            elif self._algo == 3:
                self._bz2 = bz2.BZ2Decompressor()
            elif self._algo != 0:
                raise IntegrityError(
                    f"the data is compressed with an unknown algorithm ({self._algo})"
                )
        try:
            yield from self._inflate(data)
        except _CORRUPT as e:
            raise IntegrityError(f"the compressed data is corrupt: {e}") from None

    def _inflate(self, data: _Buf) -> Iterator[bytes]:
        if self._zlib is not None:
            z = self._zlib
            while not z.eof:
                out = z.decompress(data, _PIECE)
                data = z.unconsumed_tail
                if out:
                    yield from self._inner.feed(out)
                if not data and len(out) < _PIECE:
                    break
        elif self._bz2 is not None:
            b = self._bz2
            while not b.eof:
                out = b.decompress(data, _PIECE)
                data = b""
                if out:
                    yield from self._inner.feed(out)
                if b.needs_input:
                    break
        elif data:
            yield from self._inner.feed(data)

    def end(self) -> Iterator[bytes]:
        if self._algo is None:
            raise IntegrityError("the compressed data packet is empty")
        try:
            yield from self._inflate(b"")
        except _CORRUPT as e:
            raise IntegrityError(f"the compressed data is corrupt: {e}") from None
        if (self._zlib is not None and not self._zlib.eof) or (
            self._bz2 is not None and not self._bz2.eof
        ):
            raise IntegrityError("the compressed data is truncated")
        yield from self._inner.end()


class _Encrypted:
    """SEIPD v1: CFB-decrypts, keeps the last 22 bytes back as the candidate MDC and
    passes the rest, hashed, to the packets inside."""

    def __init__(self, message: _Message) -> None:
        self._message = message
        self._start = bytearray()
        self._decrypt: CipherContext | None = None
        self._mdc = _Mdc()
        self._tail = b""
        self._inner = _Packets(lambda tag: message.open_inner(tag, 0), "encrypted data")
        self.done = False

    def feed(self, pieces: list[memoryview]) -> Iterator[bytes]:
        if self._decrypt is None:
            for piece in pieces:
                self._start += piece
            if len(self._start) < 1 + _PREFIX_SIZE:  # the largest prefix there is
                return
            pieces = [self._begin()]
        yield from self._decrypted(pieces)

    def _begin(self) -> memoryview:
        """Picks the session key by the quick check; the ciphertext after the prefix."""
        start = memoryview(bytes(self._start))
        self._start = bytearray()
        if start[0] != 1:
            raise IntegrityError(f"unsupported encrypted data packet version {start[0]}")
        algo, key = self._message.session_key(bytes(start[1:]))
        self._decrypt = _cfb(algo, key).decryptor()
        prefix = 1 + _block_size(algo) + 2
        self._mdc.update(self._decrypt.update(start[1:prefix]))
        return start[prefix:]

    def _decrypted(self, pieces: list[memoryview]) -> Iterator[bytes]:
        """Decrypts straight into one buffer after the held-back tail: no joins."""
        assert self._decrypt is not None
        if len(pieces) > 2:  # one call beats many on small chunks (gpg's are 8 KiB)
            pieces = [memoryview(b"".join(pieces))]
        tail = self._tail
        size = len(tail) + sum(len(piece) for piece in pieces)
        buffer = bytearray(size + 16)  # update_into wants a block of room beyond the data
        view = memoryview(buffer)
        view[: len(tail)] = tail
        at = len(tail)
        for piece in pieces:
            at += self._decrypt.update_into(piece, view[at:])
        if size <= _MDC_SIZE:
            self._tail = bytes(view[:size])
            return
        self._tail = bytes(view[size - _MDC_SIZE : size])
        body = view[: size - _MDC_SIZE]
        self._mdc.update(body)
        yield from self._inner.feed(body)

    def end(self) -> Iterator[bytes]:
        if self._decrypt is None:
            raise IntegrityError("the encrypted data is truncated")
        tail = self._tail
        if len(tail) != _MDC_SIZE or tail[:2] != _MDC_HEAD:
            raise IntegrityError(
                "the encrypted data has no integrity check at its end: it is truncated or corrupted"
            )
        self._mdc.update(_MDC_HEAD)
        if not hmac.compare_digest(self._mdc.digest(), tail[2:]):
            raise IntegrityError(
                "the integrity check (MDC) failed: the encrypted data is corrupted or was modified"
            )
        yield from self._inner.end()
        self._message.check_complete()
        self.done = True


class _Skesk:
    """A parsed symmetric-key encrypted session key packet (v4)."""

    def __init__(self, body: bytes) -> None:
        if len(body) < 4:
            raise IntegrityError("an OpenPGP session key packet is truncated")
        if body[0] != 4:
            raise IntegrityError(
                f"the session key packet is version {body[0]}, not 4; this is not what "
                "gpg writes for git-annex"
            )
        self.algo = _algorithm(body[1])
        mode = body[2]
        self.hash_id = body[3]
        if self.hash_id not in _HASHES:
            raise IntegrityError(f"unknown passphrase hash algorithm {self.hash_id}")
        rest = {0: 4, 1: 12, 3: 13}.get(mode)
        if rest is None:
            raise IntegrityError(f"unsupported passphrase hashing (S2K mode {mode})")
        if len(body) < rest:
            raise IntegrityError("an OpenPGP session key packet is truncated")
        self.salt = body[4:12] if mode else b""
        self.count = _count(body[12]) if mode == 3 else 0
        self.wrapped = body[rest:]

    def session_key(self, passphrase: bytes) -> tuple[int, bytes] | None:
        size = _ALGORITHMS[self.algo][2]
        key = _derive(passphrase, self.salt, self.count, _HASHES[self.hash_id], size)
        if not self.wrapped:
            return self.algo, key
        plain = _cfb(self.algo, key).decryptor().update(self.wrapped)
        algo, session = plain[0], plain[1:]
        if algo not in _ALGORITHMS or len(session) != _ALGORITHMS[algo][2]:
            return None  # what a wrong passphrase looks like
        return algo, session


class _Message:
    """What the packets of one message have told us so far."""

    def __init__(self, passphrase: bytes) -> None:
        self._passphrase = passphrase
        self._skesks: list[_Skesk] = []
        self._problem: IntegrityError | None = None
        self._public_key = False
        self._literal = False
        self.encrypted: _Encrypted | None = None

    def _add_skesk(self, body: bytes) -> None:
        try:
            self._skesks.append(_Skesk(body))
        except IntegrityError as e:  # another session key packet may still do
            self._problem = self._problem or e

    def open_outer(self, tag: int) -> _Body:
        if self.encrypted is not None:
            raise IntegrityError("there is more data after the encrypted message")
        if tag == _SKESK:
            return _Collect(self._add_skesk)
        if tag == _PKESK:
            self._public_key = True
            return _Skip()
        if tag == _MARKER:
            return _Skip()
        if tag == _SEIPD:
            self.encrypted = _Encrypted(self)
            return self.encrypted
        if tag == _SED:
            raise IntegrityError(
                "the data is encrypted without integrity protection (OpenPGP SED packet); "
                "refusing it, as a tampered object could not be detected"
            )
        if tag == _AEAD:
            raise IntegrityError(
                "the data is AEAD-encrypted (gpg --force-aead), which is not supported"
            )
        raise IntegrityError(f"unexpected OpenPGP packet (tag {tag}) in encrypted data")

    def open_inner(self, tag: int, depth: int) -> _Body:
        if tag == _LITERAL:
            if self._literal:
                raise IntegrityError("the encrypted data holds more than one literal packet")
            self._literal = True
            return _Literal()
        if tag == _COMPRESSED:
            return _Compressed(self, depth + 1)
        if tag in (_MARKER, _SIG, _OPS):
            return _Skip()
        raise IntegrityError(f"unexpected OpenPGP packet (tag {tag}) inside encrypted data")

    def session_key(self, start: bytes) -> tuple[int, bytes]:
        """The first session key whose quick check (RFC 4880 5.7) passes on ``start``."""
        for skesk in self._skesks:
            found = skesk.session_key(self._passphrase)
            if found is None:
                continue
            algo, key = found
            size = _block_size(algo)
            prefix = _cfb(algo, key).decryptor().update(start[: size + 2])
            if prefix[size - 2 : size] == prefix[size : size + 2]:
                return found
        if self._skesks:
            raise IntegrityError("decryption failed: wrong passphrase (or corrupted data)")
        if self._problem is not None:
            raise self._problem
        if self._public_key:
            raise IntegrityError(
                "the data is encrypted to a public key, not with a passphrase; this is not "
                "encryption=shared"
            )
        raise IntegrityError("the encrypted data has no session key packet before it")

    def check_complete(self) -> None:
        if not self._literal:
            raise IntegrityError("the encrypted message holds no data packet")


class Decryptor:
    """Decrypts one message pushed in pieces of any size (sans I/O).

    Iterate each result of ``feed`` fully before the next call; the work happens as
    it is iterated, which is what bounds memory for compressed data.
    """

    def __init__(self, passphrase: bytes) -> None:
        self._message = _Message(passphrase)
        self._packets = _Packets(self._message.open_outer, "OpenPGP message")
        self._closed = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Plaintext pieces of at most about 1 MiB, as ``data`` makes them available."""
        if self._closed:
            raise ValueError("feed() after close()")
        view = memoryview(data)
        for at in range(0, len(view), _PIECE):
            yield from self._packets.feed(view[at : at + _PIECE])

    def close(self) -> Iterator[bytes]:
        """The last plaintext, then ``IntegrityError`` unless the message was complete
        and its integrity check passed."""
        self._closed = True
        yield from self._packets.end()
        encrypted = self._message.encrypted
        if encrypted is None or not encrypted.done:
            raise IntegrityError("the encrypted data is truncated")


class Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


def decrypt_stream(source: Source, sink: Sink, passphrase: bytes) -> None:
    """Everything from ``source`` decrypted into ``sink``; see ``Decryptor``."""
    decryptor = Decryptor(passphrase)
    while block := source.read(_PIECE):
        for piece in decryptor.feed(block):
            sink.write(piece)
    for piece in decryptor.close():
        sink.write(piece)
