"""git-annex's ``encryption=shared``, in Python: the cipher, object names, and the
OpenPGP content format gpg reads and writes for it (RFC 4880, symmetric only)."""

from shared.crypto.cipher import MACS, Cipher
from shared.crypto.openpgp import Decryptor, EncryptingReader, decrypt_stream, encrypted_size

__all__ = ["MACS", "Cipher", "Decryptor", "EncryptingReader", "decrypt_stream", "encrypted_size"]
