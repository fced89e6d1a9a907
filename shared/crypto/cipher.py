"""git-annex's ``encryption=shared`` cipher: one random secret with two uses.

The first 256 bytes key the HMAC that names objects; the rest is the passphrase gpg
encrypts their content with. Both uses depend on the exact bytes git-annex stores
(the ASCII output of ``gpg --gen-random --armor``, trailing newline included), so
the cipher is kept as those bytes, never decoded or stripped.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from shared.errors import ConfigError

__all__ = ["MACS", "Cipher"]

MACS: dict[str, Callable[[], hashlib._Hash]] = {
    "HMACSHA1": hashlib.sha1,
    "HMACSHA224": hashlib.sha224,
    "HMACSHA256": hashlib.sha256,
    "HMACSHA384": hashlib.sha384,
    "HMACSHA512": hashlib.sha512,
}

MAC_KEY_SIZE = 256  # git-annex's cipherBeginning
_ENTROPY = 512  # git-annex's cipherSize: gpg --gen-random --armor 2 512


@dataclass(frozen=True, repr=False)
class Cipher:
    """The decoded ``cipher=`` bytes and the ``mac=`` that names objects with them."""

    raw: bytes
    mac: str = "HMACSHA1"

    def __post_init__(self) -> None:
        if self.mac not in MACS:
            raise ConfigError(
                f"mac={self.mac} is not supported; use one of {', '.join(MACS)} "
                "(it must match what the remote was initialized with)"
            )
        if len(self.raw) <= MAC_KEY_SIZE:
            raise ConfigError(
                f"the cipher is {len(self.raw)} bytes, too short for encryption=shared "
                f"(it needs more than {MAC_KEY_SIZE}); copy the whole cipher= value from "
                "the remote's remote.log, or generate a new one"
            )
        if not self.passphrase:
            raise ConfigError(
                "the cipher has an empty passphrase part; copy the whole cipher= value "
                "from the remote's remote.log, or generate a new one"
            )

    @classmethod
    def generate(cls, mac: str = "HMACSHA1") -> Cipher:
        """A new cipher shaped like gpg's: 684 base64 characters and a newline."""
        return cls(base64.b64encode(secrets.token_bytes(_ENTROPY)) + b"\n", mac)

    @classmethod
    def from_config(cls, b64: str, mac: str = "HMACSHA1") -> Cipher:
        """Read git-annex's ``cipher=`` value (standard padded base64 of the raw bytes)."""
        try:
            raw = base64.b64decode(b64.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(
                "cipher= is not valid base64; copy it unchanged from the remote's remote.log"
            ) from None
        return cls(raw, mac)

    def to_config(self) -> str:
        return base64.b64encode(self.raw).decode("ascii")

    @property
    def mac_key(self) -> bytes:
        return self.raw[:MAC_KEY_SIZE]

    @property
    def passphrase(self) -> bytes:
        """What gpg uses: git-annex writes ``raw[256:] + "\\n"`` to --passphrase-fd and
        gpg stops at the first newline."""
        return self.raw[MAC_KEY_SIZE:].split(b"\n", 1)[0]

    def encrypt_key(self, key: str) -> str:
        """git-annex's ``encryptKey``: the object name for ``key`` on the remote."""
        # Non-UTF-8 bytes in keys travel as surrogateescape surrogates (shared.annex.keys).
        message = key.encode("utf-8", "surrogateescape")
        digest = hmac.new(self.mac_key, message, MACS[self.mac]).hexdigest()
        return f"GPG{self.mac}--{digest}"

    def __repr__(self) -> str:
        return f"Cipher(<{len(self.raw)} secret bytes>, mac={self.mac!r})"
