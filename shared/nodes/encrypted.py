"""``encryption=shared`` on a node: git-annex's own at-rest encryption over any node.

Each key (or chunk key: chunking happens first, as in git-annex) is stored under
``GPGHMACSHA1--<HMAC of the key>`` as an OpenPGP message encrypted with the
cipher's passphrase, so git-annex's own special remote with the same cipher
reads it, and we read what git-annex wrote with gpg. Encryption and decryption
stream; the node below sees only opaque names and bytes.

What it protects: the content and the key names (hence file sizes and hashes)
from whoever can read the storage. It does not hide object sizes or access
patterns, and whoever holds the cipher (every clone, for ``shared``) can read all.
"""

from __future__ import annotations

from collections.abc import Iterator

from shared.annex.keys import Key
from shared.crypto import Cipher, Decryptor, EncryptingReader, encrypted_size
from shared.errors import BadReplica, IntegrityError, Unsupported
from shared.nodes.base import UNKNOWN_SIZE, KnownKeys, Layer, Node
from shared.streams import Readable, Writable

# The smallest OpenPGP message a passphrase decrypts (RFC 4880): a symmetric-key
# session key packet (2 bytes of header, version, cipher, a 2-byte S2K: 6) and an
# encrypted data packet (2 bytes of header and at least a 64-bit cipher's random
# prefix, 8 + 2 bytes: 12). Nothing shorter is a message at all.
MIN_MESSAGE = 18


class _DecryptingSink:
    """Plaintext from ``skip`` on goes to ``sink``; the bytes before are dropped (an
    offset past the end gives nothing, as for every node)."""

    def __init__(self, cipher: Cipher, sink: Writable, skip: int) -> None:
        self._decryptor = Decryptor(cipher.passphrase)
        self._sink = sink
        self._skip = skip

    def _emit(self, piece: bytes) -> None:
        if self._skip:
            dropped = min(self._skip, len(piece))
            self._skip -= dropped
            piece = piece[dropped:]
        if piece:
            self._sink.write(piece)

    def write(self, data: bytes) -> None:
        for piece in self._decryptor.feed(data):
            self._emit(piece)

    def finish(self) -> None:
        for piece in self._decryptor.close():
            self._emit(piece)


class EncryptedNode(Layer):
    def __init__(self, inner: Node, cipher: Cipher) -> None:
        super().__init__(inner)
        self.cipher = cipher

    def stored_key(self, key: Key) -> Key:
        """The name the node sees: git-annex's ``encryptKey``."""
        return Key.parse(self.cipher.encrypt_key(str(key)))

    def list_keys(self, known: KnownKeys | None = None) -> Iterator[Key]:
        """Names are HMACs, which cannot be read back: the known keys whose names are
        listed. Memory holds the set of listed names (one short string per object)."""
        if known is None:
            raise Unsupported(
                "its object names are encrypted; its keys can only be matched against "
                "the keys of a git-annex repository",
                self.name,
            )
        names = {str(k) for k in self.inner.list_keys()}
        for key in known():
            if str(self.stored_key(key)) in names:
                yield key

    def present(self, key: Key) -> int | None:
        """The stored size is the ciphertext's. What we write has exactly
        ``encrypted_size(content size)`` bytes, but what git-annex writes (gpg, which
        compresses) has a size that depends on the content, so only a size that no
        OpenPGP message can have is a bad replica: below ``MIN_MESSAGE`` (a 0-byte
        leftover, say). Anything else is checked when read (it must decrypt and the
        plaintext matches the key's size and hash)."""
        stored = self.inner.present(self.stored_key(key))
        if stored is None:
            return None
        if stored != UNKNOWN_SIZE and stored < MIN_MESSAGE:
            raise BadReplica(
                f"{key} is stored as {stored} bytes, which no encrypted message can be: "
                "a bad replica, not a copy (a store replaces it)",
                self.name,
            )
        size = key.content_size
        return UNKNOWN_SIZE if size is None else size

    def store(self, key: Key, source: Readable, size: int) -> bool:
        with EncryptingReader(source, self.cipher.passphrase, size) as reader:
            return self.inner.store(self.stored_key(key), reader, encrypted_size(size))

    def overwrite(self, key: Key, source: Readable, size: int) -> None:
        with EncryptingReader(source, self.cipher.passphrase, size) as reader:
            self.inner.overwrite(self.stored_key(key), reader, encrypted_size(size))

    def retrieve(self, key: Key, sink: Writable, offset: int = 0) -> None:
        decrypting = _DecryptingSink(self.cipher, sink, offset)
        self.inner.retrieve(self.stored_key(key), decrypting)
        try:
            decrypting.finish()
        except IntegrityError as e:
            raise IntegrityError(f"{key}: {e}", self.name) from e

    def remove(self, key: Key) -> None:
        self.inner.remove(self.stored_key(key))

    def __repr__(self) -> str:
        return f"<encrypted {self.inner!r}>"
