"""git-annex keys, parsed strictly.

Keys arrive from git-annex and from untrusted peers and end up as file and object
names, so anything that git-annex itself would not produce, or that could make an
unsafe or ambiguous name, is refused with :class:`~shared.errors.InvalidKey`.
The grammar is git-annex's ``BACKEND[-sN][-mN][-SN-CN]--NAME`` (``Types/Key.hs``,
``doc/internals/key_format.mdwn``); we are stricter than git-annex where it is lax:

* no whitespace or control characters (git-annex accepts tabs, CR, DEL, ...);
* numbers must be canonical (git-annex reads ``-s007`` as ``-s7``, so the key would
  not round-trip and its hash directory would change);
* ``-S`` and ``-C`` only together, ``-S`` >= 1, ``-C`` >= 1 (git-annex accepts either
  alone, and ``-C0``);
* the name must be non-empty, and the backend only ``[A-Za-z0-9_]``;
* the escaped file name must fit one path component (255 bytes);
* no ``.`` or ``..`` segment when the key is split at ``/`` (``WORM--x/../../KEY``).

Non-UTF-8 bytes are carried as surrogateescape surrogates, as ``os.fsdecode`` gives.

Keys and name spaces. A key may contain ``/``: git-annex's URL keys carry the URL
(``git annex addurl --fast`` makes ``URL--https://example.com/a/b``), and they are
users' data, so refusing ``/`` would lose them. Each kind of node names objects so
that no key leaves the node's name space:

* directory nodes (file://, sftp://) use ``file_name`` (git-annex's ``keyFile``):
  ``/`` becomes ``%``, so a key is always one path component, never ``.``/``..``;
* git-annex repositories get the key as text over P2P and name files by keyFile;
* S3 nodes name objects ``prefix + key``, verbatim, because git-annex's S3 remote
  does (``getBucketObject``: fileprefix ++ serializeKey) and a node must read and
  write the same objects. S3 names are flat strings, but servers and proxies that
  normalise URL paths would resolve ``.`` and ``..`` segments, reaching objects
  outside the prefix or another bucket: such keys are refused here, before any
  node sees them. Empty segments (``//``) stay allowed: every URL key has one
  (``https://``) and many end in ``/``; an empty segment cannot climb out of a
  prefix. A key never starts with ``/`` (the backend comes first).
"""

from __future__ import annotations

import functools
import hashlib
import re
import struct
import unicodedata
from dataclasses import dataclass
from typing import Protocol

from shared.errors import IntegrityError, InvalidKey

__all__ = ["ContentVerifier", "Key", "parse_key"]

MAX_FILE_NAME_BYTES = 255
MAX_EXTENSION_BYTES = 64  # git-annex's validKeyName, for backends ending in "E"

_BACKEND_RE = re.compile(r"[A-Za-z0-9_]+")
_PLAIN_RE = re.compile(r"[!-~]*")  # printable ASCII, no space: nearly every key
_DIGITS = frozenset("0123456789")
# A "." or ".." segment after a "/" (the key's first segment holds the backend).
_DOT_SEGMENT_RE = re.compile(r"/\.\.?(?:/|$)")
_FIELDS = ("s", "m", "S", "C")
_MIXED_CHARS = "0123456789zqjxkmvwgpfZQJXKMVWGPF"

# Base backend (without the "E" variant suffix) -> (hashlib name, digest bytes).
# SKEIN, BLAKE2BP/BLAKE2SP, BLAKE3, XXH3 have no stdlib equivalent.
_HASHES: dict[str, tuple[str, int | None]] = {
    "SHA1": ("sha1", None),
    "MD5": ("md5", None),
    **{f"SHA{n}": (f"sha{n}", None) for n in (224, 256, 384, 512)},
    **{f"SHA3_{n}": (f"sha3_{n}", None) for n in (224, 256, 384, 512)},
    **{f"BLAKE2B{n}": ("blake2b", n // 8) for n in (160, 224, 256, 384, 512)},
    **{f"BLAKE2S{n}": ("blake2s", n // 8) for n in (160, 224, 256)},
}
_DEFAULT_DIGEST = {"blake2b": 64, "blake2s": 32}


class Hasher(Protocol):
    """The part of hashlib's objects we use (blake2 is not a ``hashlib._Hash``)."""

    def update(self, data: bytes, /) -> None: ...
    def hexdigest(self) -> str: ...


def _show(text: str) -> str:
    """Quote a possibly hostile key so an error message stays one short line."""
    return repr(text) if len(text) <= 80 else repr(text[:80]) + "..."


def _encode(text: str, what: str) -> bytes:
    """Bytes as they go on disk; refuse strs that no byte string decodes to.

    Such strs (lone non-escape surrogates, or escapes of bytes that form valid
    UTF-8) would give two different keys the same file name.
    """
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise InvalidKey(f"{what}: contains characters that are not valid bytes") from None
    if raw.decode("utf-8", "surrogateescape") != text:
        raise InvalidKey(f"{what}: non-canonical surrogate escapes") from None
    return raw


def _check_chars(text: str, what: str) -> None:
    """Whitespace and control characters break line protocols, logs and shells."""
    if _PLAIN_RE.fullmatch(text):  # the per-character walk costs ~0.1 ms a key
        return
    for ch in text:
        if ch.isspace() or unicodedata.category(ch) == "Cc":
            raise InvalidKey(f"{what}: contains whitespace or control character {ch!r}")


@dataclass(frozen=True)
class Key:
    """A validated git-annex key; constructing one directly validates it too."""

    backend: str
    name: str
    size: int | None = None
    mtime: int | None = None
    chunk_size: int | None = None
    chunk_num: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.backend, str) or not isinstance(self.name, str):
            raise InvalidKey("key backend and name must be strings")
        numbers = (self.size, self.mtime, self.chunk_size, self.chunk_num)
        for value in numbers:
            if value is not None and (type(value) is not int or not 0 <= value < 10**255):
                raise InvalidKey("key numeric fields must be ints from 0 below 10**255")
        what = _show(str(self))
        if not _BACKEND_RE.fullmatch(self.backend):
            raise InvalidKey(f"{what}: backend must be non-empty [A-Za-z0-9_]")
        if not self.name:
            raise InvalidKey(f"{what}: empty name")
        _check_chars(self.name, what)
        name_bytes = _encode(self.name, what)
        if (self.chunk_size is None) != (self.chunk_num is None):
            raise InvalidKey(f"{what}: -S and -C must come together")
        if self.chunk_size == 0 or self.chunk_num == 0:
            raise InvalidKey(f"{what}: chunk size and chunk number must be at least 1")
        if self.backend.endswith("E"):
            dot = name_bytes.find(b".")
            if dot >= 0 and len(name_bytes) - dot > MAX_EXTENSION_BYTES:
                raise InvalidKey(f"{what}: extension longer than {MAX_EXTENSION_BYTES} bytes")
        file_name = self.file_name
        if file_name in ("", ".", "..") or "/" in file_name or "\0" in file_name:
            raise InvalidKey(f"{what}: unsafe file name")  # unreachable by construction
        if len(file_name.encode("utf-8", "surrogateescape")) > MAX_FILE_NAME_BYTES:
            raise InvalidKey(f"{what}: file name longer than {MAX_FILE_NAME_BYTES} bytes")
        if "/." in self.name and _DOT_SEGMENT_RE.search(self.name):
            raise InvalidKey(
                f"{what}: has a '.' or '..' path segment, which could reach outside a "
                "node's name space; refused"
            )

    @property
    def content_size(self) -> int | None:
        """The size of this key's own content, where the key says: a chunk key's ``-s`` is
        the whole file's size, its content the chunk's share of it."""
        if self.size is None or self.chunk_size is None or self.chunk_num is None:
            return self.size
        return max(0, min(self.chunk_size, self.size - (self.chunk_num - 1) * self.chunk_size))

    @classmethod
    def parse(cls, text: str) -> Key:
        """Parse with git-annex's grammar (fixed field order, name last) plus our rules."""
        if not isinstance(text, str):
            raise InvalidKey(f"key must be str, not {type(text).__name__}")
        if not text:
            raise InvalidKey("empty key")
        what = _show(text)
        # Bound all further work: escaping only lengthens, so this is implied anyway.
        if len(_encode(text, what)) > MAX_FILE_NAME_BYTES:
            raise InvalidKey(f"{what}: longer than {MAX_FILE_NAME_BYTES} bytes")
        _check_chars(text, what)
        if "--" not in text:
            raise InvalidKey(f"{what}: missing '--' before the name")
        pos = text.find("-")
        if pos == 0:
            raise InvalidKey(f"{what}: empty backend")
        values: dict[str, int] = {}
        for field in _FIELDS:
            if not text.startswith("-" + field, pos):
                continue
            end = pos + 2
            while end < len(text) and text[end] in _DIGITS:
                end += 1
            digits = text[pos + 2 : end]
            if not digits:
                raise InvalidKey(f"{what}: field -{field} has no decimal value")
            if digits[0] == "0" and len(digits) > 1:
                raise InvalidKey(f"{what}: field -{field} has a leading zero")
            values[field] = int(digits)
            pos = end
        if not text.startswith("--", pos):
            raise InvalidKey(
                f"{what}: unexpected {text[pos : pos + 12]!r}; fields must be -s -m -S -C "
                "in that order, decimal, then '--' and the name"
            )
        key = cls(
            text[: text.find("-")],
            text[pos + 2 :],
            size=values.get("s"),
            mtime=values.get("m"),
            chunk_size=values.get("S"),
            chunk_num=values.get("C"),
        )
        if str(key) != text:  # defensive: every accepted key must round-trip exactly
            raise InvalidKey(f"{what}: does not round-trip")
        return key

    def __str__(self) -> str:
        return self._text

    # Cached: a store asks for the text, file name and hash directories several times
    # per node. cached_property writes the instance __dict__, which frozen allows.
    @functools.cached_property
    def _text(self) -> str:
        fields = "".join(
            f"-{letter}{value}"
            for letter, value in zip(
                _FIELDS, (self.size, self.mtime, self.chunk_size, self.chunk_num), strict=True
            )
            if value is not None
        )
        return f"{self.backend}{fields}--{self.name}"

    @property
    def parent(self) -> Key:
        """The whole-object key a chunk belongs to (git-annex's ``nonChunkKey``)."""
        if not self.is_chunk:
            return self
        return Key(self.backend, self.name, size=self.size, mtime=self.mtime)

    @property
    def is_chunk(self) -> bool:
        return self.chunk_num is not None

    @functools.cached_property
    def file_name(self) -> str:
        """git-annex's ``keyFile``: one path component, a one-to-one mapping of the key."""
        text = str(self)
        if not any(c in text for c in "&%:/"):
            return text
        return text.replace("&", "&a").replace("%", "&s").replace(":", "&c").replace("/", "%")

    @classmethod
    def from_file_name(cls, name: str) -> Key:
        """The key a ``file_name`` came from (git-annex's ``fileKey``): ``%`` was ``/``,
        ``&c`` ``:``, ``&s`` ``%``, ``&a`` ``&``. Raises InvalidKey for names that no
        key produces (a stray file in an object directory)."""
        if not any(c in name for c in "&%:"):
            return cls.parse(name)
        out: list[str] = []
        chars = iter(name)
        for c in chars:
            if c == "%":
                out.append("/")
            elif c == "&":
                nxt = next(chars, "")
                decoded = {"c": ":", "s": "%", "a": "&"}.get(nxt)
                if decoded is None:
                    raise InvalidKey(f"{_show(name)}: not an escaped key file name")
                out.append(decoded)
            else:
                out.append(c)
        key = cls.parse("".join(out))
        if key.file_name != name:
            raise InvalidKey(f"{_show(name)}: not an escaped key file name")
        return key

    @functools.cached_property
    def _md5(self) -> bytes:
        """Hash directories come from the parent, so all chunks share one directory."""
        return hashlib.md5(str(self.parent).encode("utf-8", "surrogateescape")).digest()

    @functools.cached_property
    def hashdirlower(self) -> str:
        """Two levels of three hex digits: layout of special remotes and bare repos."""
        digest = self._md5.hex()
        return f"{digest[0:3]}/{digest[3:6]}/"

    @functools.cached_property
    def hashdirmixed(self) -> str:
        """Two levels of two letters: layout of non-bare repos' ``.git/annex/objects``."""
        (word,) = struct.unpack("<I", self._md5[:4])
        c = [_MIXED_CHARS[(word >> (6 * i)) & 31] for i in range(4)]
        return f"{c[1]}{c[0]}/{c[3]}{c[2]}/"

    def _hash_spec(self) -> tuple[str, int | None] | None:
        base = self.backend[:-1] if self.backend.endswith("E") else self.backend
        return _HASHES.get(base)

    @property
    def hash_algorithm(self) -> str | None:
        """hashlib name of the content hash, None if there is none we can compute.

        BLAKE2 with a non-default size is named like "blake2b-256", which hashlib.new
        does not accept: use :meth:`new_hash` to get a correctly sized hasher.
        """
        spec = self._hash_spec()
        if spec is None:
            return None
        algo, size = spec
        if size is None or size == _DEFAULT_DIGEST[algo]:
            return algo
        return f"{algo}-{size * 8}"

    def new_hash(self) -> Hasher | None:
        """A fresh hasher for the content hash, or None (see :attr:`hash_algorithm`)."""
        spec = self._hash_spec()
        if spec is None:
            return None
        algo, size = spec
        if size is None:
            return hashlib.new(algo)
        blake2 = hashlib.blake2b if algo == "blake2b" else hashlib.blake2s
        return blake2(digest_size=size)


def parse_key(text: str) -> Key:
    """Shorthand for :meth:`Key.parse`."""
    return Key.parse(text)


class ContentVerifier:
    """Incremental check that content matches a key, fed while it streams.

    Whole keys: the size if ``-s`` is present, and the digest for hash backends we
    can compute (``checks_hash`` says whether we can); the digest is the name up to
    its first ".", which drops the extension of "E" backends, and git-annex's old
    leading-backslash form is accepted. Chunk keys carry the *parent's* ``-s`` and
    hash, so a chunk is checked only for its length: exactly what its position in
    the parent implies when ``-s`` is known, else at most ``-S``. The hash of
    chunked content can only be checked on the reassembled parent.
    """

    def __init__(self, key: Key) -> None:
        self.key = key
        self.length = 0
        self._hasher = None if key.is_chunk else key.new_hash()
        self.checks_hash = self._hasher is not None

    def update(self, data: bytes) -> None:
        self.length += len(data)
        if self._hasher is not None:
            self._hasher.update(data)

    def _expected_length(self) -> tuple[int, bool]:
        """(length, exact); for chunks derived from the parent size and chunk position."""
        key = self.key
        if key.chunk_size is None or key.chunk_num is None:
            return (key.size, True) if key.size is not None else (-1, False)
        if key.size is None:
            return key.chunk_size, False
        offset = key.chunk_size * (key.chunk_num - 1)
        if offset >= key.size and not (key.size == 0 and key.chunk_num == 1):
            raise IntegrityError(f"{key}: chunk {key.chunk_num} lies beyond the object's end")
        return min(key.chunk_size, key.size - offset), True

    def verify(self) -> None:
        key = self.key
        expected, exact = self._expected_length()
        if exact and self.length != expected:
            raise IntegrityError(f"{key}: got {self.length} bytes, expected {expected}")
        if not exact and expected >= 0 and self.length > expected:
            raise IntegrityError(f"{key}: got {self.length} bytes, chunk size is {expected}")
        if self._hasher is not None:
            digest = self._hasher.hexdigest()
            wanted = key.name.partition(".")[0]
            if wanted not in (digest, "\\" + digest):
                raise IntegrityError(f"{key}: content has {key.hash_algorithm} {digest}")
