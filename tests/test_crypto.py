"""shared.crypto against the real gpg, in both directions, as git-annex runs it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import os
import random
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives.ciphers import Cipher as Primitive
from cryptography.hazmat.primitives.ciphers import algorithms
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.crypto import (
    MACS,
    Cipher,
    Decryptor,
    EncryptingReader,
    decrypt_stream,
    encrypted_size,
    openpgp,
)
from shared.errors import ConfigError, IntegrityError

GPG = "/usr/bin/gpg"
MiB = 1 << 20
# git-annex's Utility/Gpg.hs: feedRead for --symmetric, and the decrypt side.
ANNEX_ENCRYPT = ["--quiet", "--trust-model", "always", "--batch"]
ANNEX_SYMMETRIC = ["--symmetric", "--force-mdc", "--no-textmode"]


@pytest.fixture(scope="module")
def gnupghome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if not os.access(GPG, os.X_OK):
        pytest.skip(f"needs gpg at {GPG} (make sysdeps-test)")
    home = tmp_path_factory.mktemp("gnupg")
    home.chmod(0o700)
    yield home
    subprocess.run(
        ["gpgconf", "--kill", "gpg-agent"],
        env={**os.environ, "GNUPGHOME": str(home)},
        check=False,
        capture_output=True,
    )


@pytest.fixture(scope="module")
def cipher() -> Cipher:
    return Cipher.generate()


def run_gpg(
    home: Path, args: list[str], data: bytes, passphrase: bytes, *, check: bool = True
) -> subprocess.CompletedProcess[bytes]:
    """gpg with the passphrase on a pipe, as git-annex feeds it (``--passphrase-fd N``)."""
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, passphrase)  # far below a pipe's capacity
        os.close(write_end)
        fd = str(read_end)
        argv = [GPG, *ANNEX_ENCRYPT, "--passphrase-fd", fd, *args]
        result = subprocess.run(
            argv,
            input=data,
            capture_output=True,
            env={**os.environ, "GNUPGHOME": str(home)},
            pass_fds=(read_end,),
            timeout=60,
            check=False,
        )
    finally:
        os.close(read_end)
    if check and result.returncode != 0:
        raise AssertionError(f"gpg {args} failed: {result.stderr.decode(errors='replace')}")
    return result


def annex_feed(cipher: Cipher) -> bytes:
    """What git-annex writes to --passphrase-fd: ``cipher[256:]`` (it ends in a newline)
    and one more newline."""
    return cipher.raw[256:] + b"\n"


def gpg_encrypt(home: Path, cipher: Cipher, data: bytes, *extra: str) -> bytes:
    return run_gpg(home, [*extra, *ANNEX_SYMMETRIC], data, annex_feed(cipher)).stdout


def gpg_decrypt(home: Path, cipher: Cipher, data: bytes) -> bytes:
    return run_gpg(home, ["--decrypt"], data, annex_feed(cipher)).stdout


def encrypt(data: bytes, passphrase: bytes, read_size: int = -1) -> bytes:
    reader = EncryptingReader(io.BytesIO(data), passphrase, len(data))
    if read_size < 0:
        out = reader.read()
        assert reader.read(MiB) == b""
        return out
    return b"".join(iter(lambda: reader.read(read_size), b""))


def decrypt(ciphertext: bytes, passphrase: bytes, piece: int = 64 * 1024) -> bytes:
    decryptor = Decryptor(passphrase)
    out: list[bytes] = []
    for at in range(0, len(ciphertext), piece):
        out.extend(decryptor.feed(ciphertext[at : at + piece]))
    out.extend(decryptor.close())
    return b"".join(out)


def sample(size: int, seed: int = 0) -> bytes:
    """Half random, half repetitive: compression does something, but not everything."""
    rng = random.Random(seed)
    text = b"git-annex encryption=shared " * (size // 56 + 1)
    noise = rng.randbytes(size // 2)
    return (noise + text)[:size]


# --- Cipher --------------------------------------------------------------------


def test_hmac_test_vector() -> None:
    # git-annex's prop_HmacSha1WithCipher_sane
    digest = hmac.new(b"foo", b"bar", MACS["HMACSHA1"]).hexdigest()
    assert digest == "46b4ec586117154dacd49d664e5d63fdc88efb51"


@pytest.mark.parametrize("mac", sorted(MACS))
def test_encrypt_key_every_mac(mac: str) -> None:
    mac_key = bytes(range(256))
    cipher = Cipher(mac_key + b"passphrase\n", mac)
    key = "SHA256E-s10485760-S1048576-C3--" + "ab" * 32 + ".mp4"
    name = cipher.encrypt_key(key)
    algorithm = "sha" + mac.removeprefix("HMACSHA")
    # openssl, not Python's hmac, as the independent reference
    argv = ["openssl", "dgst", f"-{algorithm}", "-mac", "HMAC", "-macopt"]
    openssl = subprocess.run(
        [*argv, f"hexkey:{mac_key.hex()}"],
        input=key.encode(),
        capture_output=True,
        check=True,
    )
    expected = openssl.stdout.decode().split()[-1]
    assert name == f"GPG{mac}--{expected}"
    assert len(expected) == 2 * hashlib.new(algorithm).digest_size


def test_cipher_round_trips_through_config() -> None:
    cipher = Cipher.generate("HMACSHA256")
    assert len(cipher.raw) == 685 and cipher.raw.endswith(b"=\n")
    assert len(cipher.passphrase) == 428 and b"\n" not in cipher.passphrase
    assert cipher.passphrase == cipher.raw[256:-1]
    assert cipher.mac_key == cipher.raw[:256]
    config = cipher.to_config()
    base64.b64decode(config, validate=True)
    assert Cipher.from_config(config, "HMACSHA256") == cipher
    assert Cipher.generate().raw != Cipher.generate().raw


def test_repr_hides_the_secret() -> None:
    cipher = Cipher.generate()
    for text in (repr(cipher), str(cipher), f"{cipher}", repr([cipher])):
        assert cipher.raw[:20].decode() not in text
        assert cipher.passphrase[:20].decode() not in text
        assert cipher.to_config()[:20] not in text


@pytest.mark.parametrize(
    ("config", "mac", "message"),
    [
        (base64.b64encode(b"x" * 256).decode(), "HMACSHA1", "too short"),
        (base64.b64encode(b"x" * 20).decode(), "HMACSHA1", "too short"),
        ("not base64!", "HMACSHA1", "not valid base64"),
        (Cipher.generate().to_config(), "HMACMD5", "not supported"),
        (base64.b64encode(b"x" * 256 + b"\nrest").decode(), "HMACSHA1", "empty passphrase"),
    ],
)
def test_bad_cipher_refused(config: str, mac: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        Cipher.from_config(config, mac)
    assert "\n" not in str(info.value)
    assert config[:12] not in str(info.value)


# --- Python -> gpg ---------------------------------------------------------------

_SIZES = [0, 1, 511, 512, 513, 65536, MiB - 6, MiB - 7, MiB + 1234, 9 * MiB + 77]


@pytest.mark.parametrize("size", _SIZES)
def test_gpg_decrypts_what_we_write(gnupghome: Path, cipher: Cipher, size: int) -> None:
    data = os.urandom(size)
    ciphertext = encrypt(data, cipher.passphrase, read_size=MiB)
    assert len(ciphertext) == encrypted_size(size)
    assert gpg_decrypt(gnupghome, cipher, ciphertext) == data
    assert decrypt(ciphertext, cipher.passphrase) == data


def _boundary_sizes(chunk: int = 512) -> list[int]:
    """Sizes whose literal or encrypted packet body ends exactly on, just before or just
    after a ``chunk`` boundary (on: the final chunk has length 0)."""
    found: dict[tuple[str, int], int] = {}
    with mock.patch.object(openpgp, "_CHUNK", chunk):
        for size in range(3 * chunk):
            literal = 6 + size
            seipd = 1 + 18 + openpgp._packet_size(literal) + 22
            for kind, body in (("literal", literal), ("seipd", seipd)):
                if body >= chunk and body % chunk in (0, 1, chunk - 1):
                    found.setdefault((kind, body % chunk), size)
    assert len(found) == 6
    return sorted(set(found.values()))


@pytest.mark.parametrize("size", [0, 1, *_boundary_sizes()])
def test_gpg_reads_our_partial_lengths_at_every_boundary(
    gnupghome: Path, cipher: Cipher, size: int
) -> None:
    data = os.urandom(size)
    with mock.patch.object(openpgp, "_CHUNK", 512):
        ciphertext = encrypt(data, cipher.passphrase, read_size=100)
        assert len(ciphertext) == encrypted_size(size)
    assert gpg_decrypt(gnupghome, cipher, ciphertext) == data


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.integers(0, 6000) | st.sampled_from([510, 511, 512, 513, 1018, 1024]),
    read_size=st.integers(1, 3000),
    piece=st.integers(1, 2000),
)
def test_size_is_exact_and_round_trips(size: int, read_size: int, piece: int) -> None:
    data = random.Random(size).randbytes(size)
    with mock.patch.object(openpgp, "_CHUNK", 512):
        ciphertext = encrypt(data, b"secret", read_size)
        assert len(ciphertext) == encrypted_size(size)
    assert decrypt(ciphertext, b"secret", piece) == data


@given(size=st.integers(0, 1 << 40))
def test_size_formula_is_monotonic_with_small_overhead(size: int) -> None:
    overhead = encrypted_size(size) - size
    assert 48 + 2 + 1 + 18 + 2 + 6 + 22 <= overhead <= 110 + 2 * (size // MiB)
    assert encrypted_size(size + 1) > encrypted_size(size)


class CountingSource(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.largest = 0

    def read(self, n: int | None = -1, /) -> bytes:
        assert n is not None and n >= 0, "the reader must never ask for everything"
        self.largest = max(self.largest, n)
        return super().read(n)


def test_memory_stays_bounded(cipher: Cipher) -> None:
    data = os.urandom(5 * MiB + 3)
    source = CountingSource(data)
    reader = EncryptingReader(source, cipher.passphrase, len(data))
    ciphertext = b"".join(iter(lambda: reader.read(3 * MiB), b""))
    assert source.largest <= MiB
    decryptor = Decryptor(cipher.passphrase)
    pieces = [*decryptor.feed(ciphertext), *decryptor.close()]
    assert b"".join(pieces) == data
    assert max(len(piece) for piece in pieces) <= MiB


def test_wrong_plaintext_size_refused() -> None:
    short = EncryptingReader(io.BytesIO(b"x" * 10), b"secret", 11)
    with pytest.raises(IntegrityError, match="ended before"):
        short.read()
    with pytest.raises(IntegrityError):  # and stays failed
        short.read(1)
    long = EncryptingReader(io.BytesIO(b"x" * 12), b"secret", 11)
    with pytest.raises(IntegrityError, match="longer"):
        long.read()


# --- gpg -> Python ----------------------------------------------------------------

_VARIANTS = [
    [],  # git-annex's default: ZIP compression, AES-256, S2K mode 3 with SHA-1
    ["--compress-algo", "none"],
    ["--compress-algo", "zlib"],
    ["--compress-algo", "bzip2"],
    ["--cipher-algo", "AES128"],
    ["--cipher-algo", "AES192"],
    ["--cipher-algo", "CAST5"],
    ["--cipher-algo", "CAMELLIA256"],
    ["--s2k-mode", "0"],
    ["--s2k-mode", "1"],
    ["--s2k-digest-algo", "SHA1"],
    ["--s2k-digest-algo", "SHA512", "--s2k-count", "1024"],
    *(
        ["--s2k-digest-algo", digest, "--s2k-count", "65536"]
        for digest in ("MD5", "SHA224", "SHA256", "SHA384", "RIPEMD160")
    ),
    *(["--cipher-algo", algo, "--s2k-count", "65536"] for algo in ("3DES", "BLOWFISH", "IDEA")),
]


@pytest.mark.parametrize("extra", _VARIANTS, ids=lambda v: " ".join(v) or "default")
def test_we_decrypt_what_gpg_writes(gnupghome: Path, cipher: Cipher, extra: list[str]) -> None:
    data = sample(100_000, seed=len(extra))
    ciphertext = gpg_encrypt(gnupghome, cipher, data, *extra)
    for piece in (7, 65536, len(ciphertext)):
        assert decrypt(ciphertext, cipher.passphrase, piece) == data


def test_byte_by_byte(gnupghome: Path, cipher: Cipher) -> None:
    data = sample(3000)
    for ciphertext in (gpg_encrypt(gnupghome, cipher, data), encrypt(data, cipher.passphrase)):
        assert decrypt(ciphertext, cipher.passphrase, 1) == data


def test_gpg_file_input_old_format_lengths(gnupghome: Path, cipher: Cipher, tmp_path: Path) -> None:
    """From a file gpg knows the size and writes definite (old-format) lengths."""
    data = os.urandom(100_000)
    plain = tmp_path / "plain"
    plain.write_bytes(data)
    args = ["--compress-algo", "none", *ANNEX_SYMMETRIC, "--output", "-", str(plain)]
    ciphertext = run_gpg(gnupghome, args, b"", annex_feed(cipher)).stdout
    assert ciphertext[15] & 0x40 and not ciphertext[0] & 0x40  # new SEIPD, old SKESK
    assert decrypt(ciphertext, cipher.passphrase) == data


def test_compressed_zeros_stay_bounded(gnupghome: Path, cipher: Cipher) -> None:
    data = bytes(24 * MiB)
    for extra in ([], ["--compress-algo", "bzip2"]):
        ciphertext = gpg_encrypt(gnupghome, cipher, data, *extra)
        assert len(ciphertext) < MiB
        decryptor = Decryptor(cipher.passphrase)
        sizes = [len(piece) for piece in decryptor.feed(ciphertext)]
        sizes += [len(piece) for piece in decryptor.close()]
        assert sum(sizes) == len(data)
        assert max(sizes) <= MiB


def test_marker_packet_is_skipped(gnupghome: Path, cipher: Cipher) -> None:
    data = b"marked"
    marker = b"\xa8\x03PGP"  # old format, tag 10
    for ciphertext in (gpg_encrypt(gnupghome, cipher, data), encrypt(data, cipher.passphrase)):
        assert decrypt(marker + ciphertext, cipher.passphrase) == data
    assert gpg_decrypt(gnupghome, cipher, marker + encrypt(data, cipher.passphrase)) == data


def packet(tag: int, body: bytes) -> bytes:
    """New format, five-byte length."""
    return bytes([0xC0 | tag, 0xFF]) + len(body).to_bytes(4, "big") + body


def old_packet(tag: int, body: bytes | None, length: bytes = b"") -> bytes:
    """Old format: ``body`` None means indeterminate length, to the end of the data."""
    if body is None:
        return bytes([0x80 | tag << 2 | 3])
    kind = {1: 0, 2: 1, 4: 2}[len(length)]
    return bytes([0x80 | tag << 2 | kind]) + length + body


def seal(inner: bytes, passphrase: bytes) -> bytes:
    """Hand-made packets in a minimal message: SKESK (salted S2K with SHA-256, no
    wrapped key) and SEIPD with a definite length, built independently of the code
    under test."""
    salt = os.urandom(8)
    key = hashlib.sha256(salt + passphrase).digest()
    random16 = os.urandom(16)
    plain = random16 + random16[-2:] + inner + b"\xd3\x14"
    plain += hashlib.sha1(plain).digest()
    encryptor = Primitive(algorithms.AES(key), CFB(bytes(16))).encryptor()
    encrypted = encryptor.update(plain) + encryptor.finalize()
    return packet(3, bytes([4, 9, 1, 8]) + salt) + packet(18, b"\x01" + encrypted)


def test_nested_compression_and_old_formats(gnupghome: Path, cipher: Cipher) -> None:
    data = sample(50_000)
    body = b"b\x05hello" + bytes(4) + data  # a file name, which we ignore
    literal = old_packet(11, body, len(body).to_bytes(4, "big"))
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    zipped = packet(8, b"\x01" + deflate.compress(literal) + deflate.flush())
    marker = old_packet(10, b"PGP", b"\x03")
    zlibbed = old_packet(8, None) + b"\x02" + zlib.compress(marker + zipped)
    message = seal(packet(8, b"\x00" + zlibbed), cipher.passphrase)
    assert gpg_decrypt(gnupghome, cipher, message) == data
    for piece in (1000, len(message)):
        assert decrypt(message, cipher.passphrase, piece) == data


def test_text_mode_passes_through(cipher: Cipher) -> None:
    """gpg 2.2 drops every CR from 't' and 'u' literals on output; git-annex never writes
    them (--no-textmode comes last), and we hand the data out unchanged."""
    data = b"a\r\nb\rc\n"
    for mode in b"tub":
        literal = packet(11, bytes([mode, 0]) + bytes(4) + data)
        assert decrypt(seal(literal, cipher.passphrase), cipher.passphrase) == data


def test_hand_made_refusals(cipher: Cipher) -> None:
    literal = packet(11, b"b\x00" + bytes(4) + b"data")
    assert decrypt(seal(literal, cipher.passphrase), cipher.passphrase) == b"data"
    two = seal(literal + literal, cipher.passphrase)
    assert_refused(two, cipher.passphrase, "more than one literal")
    none = seal(old_packet(10, b"PGP", b"\x03"), cipher.passphrase)
    assert_refused(none, cipher.passphrase, "no data packet")
    bomb = literal
    for _ in range(20):
        bomb = packet(8, b"\x00" + bomb)
    assert_refused(seal(bomb, cipher.passphrase), cipher.passphrase, "nested too deeply")
    after = seal(literal, cipher.passphrase) + old_packet(10, b"PGP", b"\x03")
    assert_refused(after, cipher.passphrase, "more data after")


def test_decrypt_stream(cipher: Cipher) -> None:
    data = os.urandom(3 * MiB + 5)
    sink = io.BytesIO()
    decrypt_stream(io.BytesIO(encrypt(data, cipher.passphrase)), sink, cipher.passphrase)
    assert sink.getvalue() == data


# --- Failures ------------------------------------------------------------------------


def assert_refused(ciphertext: bytes, passphrase: bytes, match: str | None = None) -> str:
    with pytest.raises(IntegrityError, match=match) as info:
        decrypt(ciphertext, passphrase)
    message = str(info.value)
    assert message and "\n" not in message
    return message


def test_wrong_passphrase(gnupghome: Path, cipher: Cipher) -> None:
    data = sample(10_000)
    other = Cipher.generate().passphrase
    for ciphertext in (gpg_encrypt(gnupghome, cipher, data), encrypt(data, cipher.passphrase)):
        assert_refused(ciphertext, other, "wrong passphrase")
    # No wrapped key: only the 16-bit quick check (or, 1 in 65536, the MDC) tells.
    ciphertext = gpg_encrypt(gnupghome, cipher, data, "--s2k-mode", "1")
    assert_refused(ciphertext, other)


def test_truncated(gnupghome: Path, cipher: Cipher) -> None:
    data = sample(200_000)
    for ciphertext in (gpg_encrypt(gnupghome, cipher, data), encrypt(data, cipher.passphrase)):
        for cut in (0, 1, 10, 48, 70, len(ciphertext) // 2, len(ciphertext) - 22):
            assert_refused(ciphertext[:cut], cipher.passphrase)
        assert_refused(ciphertext[:-1], cipher.passphrase)


def test_flipped_byte(gnupghome: Path, cipher: Cipher) -> None:
    data = sample(200_000)
    for ciphertext in (
        gpg_encrypt(gnupghome, cipher, data),
        gpg_encrypt(gnupghome, cipher, data, "--compress-algo", "none"),
        encrypt(data, cipher.passphrase),
    ):
        for at in (len(ciphertext) // 2, len(ciphertext) - 3, 30):
            damaged = bytearray(ciphertext)
            damaged[at] ^= 0x01
            assert_refused(bytes(damaged), cipher.passphrase)
    # ours is uncompressed: only the MDC can notice a change in the data
    damaged = bytearray(encrypt(data, cipher.passphrase))
    damaged[len(damaged) // 2] ^= 0x80
    assert_refused(bytes(damaged), cipher.passphrase, "MDC")
    gpg = run_gpg(gnupghome, ["--decrypt"], bytes(damaged), annex_feed(cipher), check=False)
    assert gpg.returncode != 0  # gpg agrees


def test_unprotected_sed_refused(gnupghome: Path, cipher: Cipher) -> None:
    # gpg 2.2 ignores --disable-mdc for symmetric encryption; --rfc2440 still writes SED.
    args = ["--rfc2440", "--symmetric", "--no-textmode"]
    ciphertext = run_gpg(gnupghome, args, b"old", annex_feed(cipher)).stdout
    assert ciphertext[15] == 0xC9  # new format, tag 9
    assert_refused(ciphertext, cipher.passphrase, "without integrity protection")


def test_twofish_refused_clearly(gnupghome: Path, cipher: Cipher) -> None:
    ciphertext = gpg_encrypt(gnupghome, cipher, b"x", "--cipher-algo", "TWOFISH")
    assert_refused(ciphertext, cipher.passphrase, "Twofish")


def test_not_openpgp() -> None:
    assert_refused(b"-----BEGIN PGP MESSAGE-----\n", b"x", "not binary OpenPGP")
    assert_refused(b"", b"x", "truncated")
