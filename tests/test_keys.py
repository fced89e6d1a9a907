"""Tests for shared.annex.keys: unit, property, and compatibility with the real git-annex."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from shared.annex.keys import ContentVerifier, Key, parse_key
from shared.errors import IntegrityError, InvalidKey

EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
HEX40 = "0123456789abcdef0123456789abcdef01234567"
TESTREMOTE_KEY = (
    "SHA256E-s1048576--"
    "3f0d6c7f1c2cb2b7a3a70d1c5f3b3e8c1b4f7a3b2d91a3c45e6f70812a3b4c5d.this-is-a-test-key"
)


# --- parse / serialize -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        (
            f"SHA256E-s1234--{EMPTY_SHA256}.tar.gz",
            {"backend": "SHA256E", "name": f"{EMPTY_SHA256}.tar.gz", "size": 1234},
        ),
        (f"SHA256--{EMPTY_SHA256}", {"backend": "SHA256", "name": EMPTY_SHA256}),
        (
            "WORM-s42-m1700000000--some-file.txt",
            {"backend": "WORM", "name": "some-file.txt", "size": 42, "mtime": 1700000000},
        ),
        (
            "URL--http://example.com/a/b?c=d&e",
            {"backend": "URL", "name": "http://example.com/a/b?c=d&e"},
        ),
        (
            "URL-s99--https://example.com:8080/x%20y",
            {"backend": "URL", "name": "https://example.com:8080/x%20y", "size": 99},
        ),
        (
            f"SHA256E-s3000000-S1048576-C3--{EMPTY_SHA256}.bin",
            {
                "backend": "SHA256E",
                "name": f"{EMPTY_SHA256}.bin",
                "size": 3000000,
                "chunk_size": 1048576,
                "chunk_num": 3,
            },
        ),
        (f"GPGHMACSHA1--{HEX40}", {"backend": "GPGHMACSHA1", "name": HEX40}),
        (f"GPGHMACSHA256--{EMPTY_SHA256}", {"backend": "GPGHMACSHA256", "name": EMPTY_SHA256}),
        (
            TESTREMOTE_KEY,
            {
                "backend": "SHA256E",
                "name": TESTREMOTE_KEY.split("--", 1)[1],
                "size": 1048576,
            },
        ),
        ("WORM---s5--x", {"backend": "WORM", "name": "-s5--x"}),  # name may start with "-"
        (
            "XFOOE-s0--\u00e9t\u00e9.\u00e9",
            {"backend": "XFOOE", "name": "\u00e9t\u00e9.\u00e9", "size": 0},
        ),
        ("WORM--\udcff\udcfe", {"backend": "WORM", "name": "\udcff\udcfe"}),  # non-UTF-8 bytes
    ],
)
def test_parse_and_serialize(text: str, fields: dict[str, object]) -> None:
    key = Key.parse(text)
    expected = {"size": None, "mtime": None, "chunk_size": None, "chunk_num": None, **fields}
    for attr, value in expected.items():
        assert getattr(key, attr) == value, attr
    assert str(key) == text
    assert parse_key(text) == key
    assert Key(**expected) == key  # type: ignore[arg-type]


def test_chunk_parent_and_properties() -> None:
    chunk = Key.parse(f"SHA256E-s3000000-S1048576-C3--{EMPTY_SHA256}.bin")
    assert chunk.is_chunk
    assert str(chunk.parent) == f"SHA256E-s3000000--{EMPTY_SHA256}.bin"
    assert not chunk.parent.is_chunk
    assert chunk.parent.parent == chunk.parent
    assert chunk.hashdirlower == chunk.parent.hashdirlower
    assert chunk.hashdirmixed == chunk.parent.hashdirmixed
    assert chunk.file_name != chunk.parent.file_name


def test_doc_vector_hashdirs() -> None:
    key = Key.parse(f"SHA256E-s0--{EMPTY_SHA256}")
    assert key.hashdirlower == "f87/4d5/"
    assert key.hashdirmixed == "pX/ZJ/"  # what git-annex 10.2023/10.2026 print


@pytest.mark.parametrize(
    ("text", "file_name"),
    [
        ("WORM--plain", "WORM--plain"),
        ("URL--http://example.com/a/b?c=d&e", "URL--http&c%%example.com%a%b?c=d&ae"),
        ("URL--http://h/100%&x:y", "URL--http&c%%h%100&s&ax&cy"),
        ("WORM--a/..b/c.", "WORM--a%..b%c."),
    ],
)
def test_file_name_escaping(text: str, file_name: str) -> None:
    assert Key.parse(text).file_name == file_name


@pytest.mark.parametrize(
    ("backend", "algorithm"),
    [
        ("SHA256", "sha256"),
        ("SHA256E", "sha256"),
        ("SHA512E", "sha512"),
        ("SHA224", "sha224"),
        ("SHA384E", "sha384"),
        ("SHA1", "sha1"),
        ("MD5E", "md5"),
        ("SHA3_256E", "sha3_256"),
        ("SHA3_512", "sha3_512"),
        ("BLAKE2B512", "blake2b"),
        ("BLAKE2B256E", "blake2b-256"),
        ("BLAKE2S256", "blake2s"),
        ("BLAKE2S160E", "blake2s-160"),
        ("WORM", None),
        ("URL", None),
        ("GPGHMACSHA1", None),
        ("SKEIN256", None),
        ("BLAKE2BP512", None),
        ("XFOO", None),
    ],
)
def test_hash_algorithm(backend: str, algorithm: str | None) -> None:
    key = Key(backend, "abc")
    assert key.hash_algorithm == algorithm
    assert (key.new_hash() is None) == (algorithm is None)


REJECTED = [
    "",
    "WORM--a b",
    "WORM--a\tb",
    "WORM--a\nb",
    "WORM--a\rb",
    "WORM--a\x00b",
    "WORM--a\x7fb",
    "WORM--a\x85b",
    "WORM--a\u2028b",
    "SHA256E-s1 --x",
    "SHA256Es1",
    "SHA256E-s10-x",
    "--x",
    "SHA-256--x",
    "SHA.256--x",
    "SHA:256--x",
    "SHA/256--x",
    "\u00c9--x",
    "WORM-sabc--x",
    "WORM-s--x",
    "WORM-s+5--x",
    "WORM-s-5--x",
    "WORM-s007--x",
    "WORM-s\u0661--x",  # Arabic-Indic digit one
    "WORM-m5-s10--x",  # out of order
    "WORM-s1-s2--x",  # repeated
    "WORM-x1--x",  # unknown field
    "WORM-s5x--a",
    "SHA256E-s5-S10--x",  # -S without -C
    "SHA256E-s5-C3--x",  # -C without -S
    "SHA256E-s5-S10-C0--x",
    "SHA256E-s5-S0-C1--x",
    "SHA256E-s5-C1-S10--x",
    "WORM--",  # empty name
    "WORM-s5--",
    "SHA256E--a." + "x" * 64,  # extension over 64 bytes
    "WORM--" + "x" * 250,  # 256 bytes
    "WORM--" + "\u00e9" * 125,  # 256 bytes in UTF-8
    "URL--" + "&" * 126,  # 131 chars, 257 bytes once escaped
    "WORM--\ud800",  # lone surrogate that is not an escaped byte
    "WORM--\udcc3\udca9",  # escaped bytes that are really UTF-8 for "é"
    "WORM--x/../../other/KEY",  # dot segments: could leave a node's name space
    "WORM--a/../b",
    "URL--http://h/a/./b",
    "URL--http://h/a/..",
    "URL--http://h/.",
    "URL--/../x",
]


@pytest.mark.parametrize("text", REJECTED)
def test_rejects(text: str) -> None:
    with pytest.raises(InvalidKey) as info:
        Key.parse(text)
    assert "\n" not in str(info.value)


def test_limits_are_inclusive() -> None:
    assert len(Key.parse("WORM--" + "x" * 249).file_name) == 255
    assert Key.parse("SHA256E--a." + "x" * 63)
    assert Key.parse("URL--" + "/" * 250).file_name == "URL--" + "%" * 250
    assert Key.parse("URL--" + "&" * 125).file_name == "URL--" + "&a" * 125
    assert len(Key.parse("URL--" + "a" * 125 + "&").file_name) == 132


def test_dotdot_file_name_is_impossible() -> None:
    # A file name can only become ".." via the key itself, which then lacks "--".
    for text in ("..", ".", "./..", "-..--"):
        with pytest.raises(InvalidKey):
            Key.parse(text)
    assert Key.parse("WORM--..").file_name == "WORM--.."


def test_keys_that_could_leave_a_name_space_are_refused_everywhere() -> None:
    """S3 objects are named by the key verbatim: a '.' or '..' segment could reach
    another prefix or bucket through a server that normalises paths. Refused by the
    parser, the constructor and the reading back of file names alike."""
    for text in ("WORM--x/../../other/KEY", "URL--https://h/a/./b", "URL--https://h/.."):
        with pytest.raises(InvalidKey, match=r"'\.' or '\.\.' path segment") as info:
            Key.parse(text)
        assert "\n" not in str(info.value)
    with pytest.raises(InvalidKey, match="path segment"):
        Key("WORM", "x/../y")
    with pytest.raises(InvalidKey, match="path segment"):
        Key.from_file_name("WORM--x%..%..%other%KEY")
    # URL keys keep their '/', empty segments included: they cannot climb out of a prefix.
    for text in ("URL--https://example.com/a/b", "URL--https://example.com/", "URL--h://x//.a"):
        assert str(Key.parse(text)) == text


def test_constructor_validates() -> None:
    with pytest.raises(InvalidKey):
        Key("WORM", "")
    with pytest.raises(InvalidKey):
        Key("WO RM", "x")
    with pytest.raises(InvalidKey):
        Key("WORM", "x", size=-1)
    with pytest.raises(InvalidKey):
        Key("WORM", "x", chunk_size=5)
    with pytest.raises(InvalidKey):
        Key("WORM", "x", size=True)
    with pytest.raises(InvalidKey):
        Key("WORM", "x", mtime=10**5000)
    with pytest.raises(InvalidKey):
        Key.parse(b"WORM--x")  # type: ignore[arg-type]


def test_error_message_is_one_short_line() -> None:
    with pytest.raises(InvalidKey) as info:
        Key.parse("WORM-sx--" + "\n" * 1000)
    message = str(info.value)
    assert "\n" not in message and len(message) < 300


# --- hypothesis --------------------------------------------------------------------

_BACKENDS = st.one_of(
    st.sampled_from(["SHA256E", "SHA256", "WORM", "URL", "GPGHMACSHA1", "MD5E", "XFOO"]),
    st.from_regex(r"[A-Za-z0-9_]{1,12}", fullmatch=True),
)
_NAME_CHARS = st.characters(
    blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp"), blacklist_characters="\x00"
)
_ESCAPED_BYTES = st.binary(min_size=1, max_size=20).map(
    lambda b: b.decode("utf-8", "surrogateescape")
)
_NAMES = st.one_of(
    st.text(_NAME_CHARS, min_size=1, max_size=25),
    st.text(st.sampled_from("abc-/:&%.?=0123456789"), min_size=1, max_size=40),
    _ESCAPED_BYTES,
).filter(lambda n: not any(c.isspace() or ord(c) < 32 or 127 <= ord(c) < 160 for c in n))
_NUMBERS = st.none() | st.integers(min_value=0, max_value=10**20)


@st.composite
def valid_key_texts(draw: st.DrawFn) -> str:
    backend = draw(_BACKENDS)
    name = draw(_NAMES)
    if backend.endswith("E"):
        ext = name.encode("utf-8", "surrogateescape").partition(b".")[1:]
        assume(len(ext[0] + ext[1]) <= 64)
    fields = [(letter, draw(_NUMBERS)) for letter in "sm"]
    if draw(st.booleans()):
        fields.append(("S", draw(st.integers(1, 2**40))))
        fields.append(("C", draw(st.integers(1, 10**6))))
    text = backend + "".join(f"-{f}{v}" for f, v in fields if v is not None) + "--" + name
    escaped = text
    if any(c in text for c in "&%:/"):
        escaped = "".join({"&": "&a", "%": "&s", ":": "&c", "/": "%"}.get(c, c) for c in text)
    assume(len(escaped.encode("utf-8", "surrogateescape")) <= 255)
    assume(not any(seg in (".", "..") for seg in text.split("/")[1:]))
    return text


@given(valid_key_texts())
@settings(max_examples=500)
def test_round_trip(text: str) -> None:
    key = Key.parse(text)
    assert str(key) == text
    assert Key.parse(str(key.parent)) == key.parent
    assert "/" not in key.file_name and key.file_name not in ("", ".", "..")
    assert len(key.hashdirlower) == 8 and len(key.hashdirmixed) == 6
    assert Key.from_file_name(key.file_name) == key  # listings read names back


@pytest.mark.parametrize("name", ["URL--a&b", "URL--a&", "WORM--x&c&z", "URL--a:b", "stray.txt"])
def test_names_no_key_escapes_to_are_refused(name: str) -> None:
    """Only what ``file_name`` produces is read back (a stray file in a node's directory
    is not a key); "URL--a:b" is not escaped, so it is no file name either."""
    with pytest.raises(InvalidKey):
        Key.from_file_name(name)


def _check_any(text: str) -> None:
    try:
        key = Key.parse(text)
    except InvalidKey:
        return
    assert str(key) == text
    name = key.file_name
    assert "/" not in name and "\0" not in name and name not in ("", ".", "..")
    assert len(name.encode("utf-8", "surrogateescape")) <= 255
    assert not any(c.isspace() for c in text)
    assert not any(seg in (".", "..") for seg in text.split("/"))


@given(st.text(max_size=300))
@settings(max_examples=1000)
@example("WORM-s1-m2-S3-C4--x")
@example("-" * 300)
@example("a-s" + "9" * 5000 + "--x")
def test_parse_arbitrary_text(text: str) -> None:
    _check_any(text)


@given(valid_key_texts(), st.integers(0, 300), st.text(min_size=1, max_size=3))
def test_parse_mutated_keys(text: str, at: int, insert: str) -> None:
    _check_any(text[:at] + insert + text[at:])
    _check_any(text[:at] + text[at + 1 :])


# --- ContentVerifier ---------------------------------------------------------------


def _verify(key: str, *parts: bytes) -> None:
    verifier = ContentVerifier(Key.parse(key))
    for part in parts:
        verifier.update(part)
    verifier.verify()


def test_verifier_hash_backends() -> None:
    data = b"hello world\n"
    sha = hashlib.sha256(data).hexdigest()
    _verify(f"SHA256E-s12--{sha}.tar.gz", data[:5], data[5:])
    _verify(f"SHA256-s12--{sha}", data)
    _verify(f"SHA256--{sha}", data)
    _verify(f"SHA256E-s12--\\{sha}.txt", data)  # git-annex's old backslash bug
    _verify(f"BLAKE2B256E--{hashlib.blake2b(data, digest_size=32).hexdigest()}.x", data)
    _verify(f"SHA3_384--{hashlib.sha3_384(data).hexdigest()}", data)
    _verify(f"SHA256E-s0--{EMPTY_SHA256}")
    with pytest.raises(IntegrityError):
        _verify(f"SHA256E-s12--{sha}.txt", b"hello World\n")
    with pytest.raises(IntegrityError):
        _verify(f"SHA256E--{sha}.txt", data + b"x")
    with pytest.raises(IntegrityError):
        _verify(f"SHA256E-s13--{sha}.txt", data)
    with pytest.raises(IntegrityError):
        _verify(f"SHA256E-s12--{sha.upper()}.txt", data)  # git-annex compares exactly


def test_verifier_non_hash_backends_check_size_only() -> None:
    _verify("WORM-s3-m1--f", b"abc")
    _verify("URL--http://x/y", b"anything")
    _verify(f"GPGHMACSHA1--{HEX40}", b"ciphertext")
    verifier = ContentVerifier(Key.parse("WORM--f"))
    assert not verifier.checks_hash
    with pytest.raises(IntegrityError):
        _verify("WORM-s3-m1--f", b"abcd")
    with pytest.raises(IntegrityError):
        _verify("URL-s3--http://x/y", b"ab")


def test_verifier_chunks_check_length_from_position_not_hash() -> None:
    sha = hashlib.sha256(b"whole").hexdigest()
    # -s is the parent's size; chunks of 3000000 bytes at 1 MiB: 1048576, 1048576, 902848.
    base = f"SHA256E-s3000000-S1048576-C{{}}--{sha}.bin"
    _verify(base.format(1), b"\0" * 1048576)
    _verify(base.format(3), b"\0" * 902848)
    assert not ContentVerifier(Key.parse(base.format(1))).checks_hash
    for num, size in ((3, 1048576), (1, 1048575), (4, 0)):
        with pytest.raises(IntegrityError):
            _verify(base.format(num), b"\0" * size)
    _verify(f"SHA256E-s0-S1048576-C1--{EMPTY_SHA256}")  # an empty file is one empty chunk
    _verify(f"SHA256E-S10-C7--{sha}", b"x" * 4)  # no -s: at most -S
    with pytest.raises(IntegrityError):
        _verify(f"SHA256E-S10-C7--{sha}", b"x" * 11)


# --- compatibility with the real git-annex -----------------------------------------

_ROOT = Path(__file__).resolve().parents[1]


def _annex_binaries() -> list[object]:
    """The project's git-annex and Debian's old one (both must agree), else any on PATH."""
    candidates = [
        ("venv", str(_ROOT / ".venv/bin/git-annex")),
        ("debian", "/usr/bin/git-annex"),
        ("path", shutil.which("git-annex")),
    ]
    found: dict[str, object] = {}
    for label, path in candidates:
        if path and os.access(path, os.X_OK) and os.path.realpath(path) not in found:
            marks = [pytest.mark.oldannex] if label == "debian" else []
            found[os.path.realpath(path)] = pytest.param(path, id=label, marks=marks)
    if not found:
        reason = "no git-annex binary found on PATH or in .venv/bin"
        return [pytest.param(None, id="none", marks=pytest.mark.skip(reason=reason))]
    return list(found.values())


@pytest.fixture(scope="module", params=_annex_binaries())
def annex(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path, dict[str, str]]]:
    binary: str = request.param
    home = tmp_path_factory.mktemp("annex-home")
    repo = home / "repo"
    env = {
        **os.environ,
        "HOME": str(home),
        "PATH": f"{Path(binary).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
    }
    subprocess.run(["git", "init", "-q", str(repo)], check=True, env=env)
    subprocess.run([binary, "init", "-q"], cwd=repo, check=True, env=env)
    yield binary, repo, env


COMPAT_KEYS = [
    f"SHA256E-s0--{EMPTY_SHA256}",
    f"SHA256E-s1234--{EMPTY_SHA256}.tar.gz",
    f"SHA256--{EMPTY_SHA256}",
    f"SHA256E-s3000000-S1048576-C1--{EMPTY_SHA256}.bin",
    f"SHA256E-s3000000-S1048576-C3--{EMPTY_SHA256}.bin",
    f"SHA512E-s5-S2-C3--{'ab' * 64}.x",
    f"MD5-s12--{'0' * 32}",
    "WORM-s42-m1700000000--some-file.txt",
    "WORM-s0-m0-S1-C1--f",
    "WORM---s5--x",
    "WORM--a/..b/c.",
    "WORM--\u00e9t\u00e9.\u00e9",
    "WORM--\udcff\udcfe",
    "URL--http://example.com/a/b?c=d&e",
    "URL-s99--https://example.com:8080/x%20y&z=1",
    "URL--http://h/100%&x:y//",
    f"GPGHMACSHA1--{HEX40}",
    f"GPGHMACSHA256--{EMPTY_SHA256}",
    TESTREMOTE_KEY,
    "XFOOE-s1--bar.baz",
    "SHA256E-s1--a." + "x" * 63,  # longest extension git-annex allows, with its dot
    "WORM--" + "x" * 249,
]

# git-annex itself says "bad key" to these; we must refuse them too.
ANNEX_REJECTS = [
    "WORM-m5-s10--foo",
    "WORM-s1-s2--x",
    "WORM-x1--y",
    "WORM-s--x",
    "WORM-s+5--x",
    "WORM-s-5--x",
    "WORM-s\u0661--x",
    "SHA256E--a." + "x" * 64,
    "XFOOE--a." + "x" * 64,
    "nodashes",
]


def test_examinekey_agrees(annex: tuple[str, Path, dict[str, str]]) -> None:
    binary, repo, env = annex
    fmt = r"${hashdirlower}\t${hashdirmixed}\t${key}\t${objectpath}\n"
    stdin = "".join(k + "\n" for k in COMPAT_KEYS).encode("utf-8", "surrogateescape")
    out = subprocess.run(
        [binary, "examinekey", "--batch", f"--format={fmt}"],
        cwd=repo,
        env=env,
        input=stdin,
        capture_output=True,
        check=True,
    ).stdout.decode("utf-8", "surrogateescape")
    rows = [line.split("\t") for line in out.splitlines() if line]
    assert len(rows) == len(COMPAT_KEYS), out
    for text, (lower, mixed, serialized, objectpath) in zip(COMPAT_KEYS, rows, strict=True):
        key = Key.parse(text)
        assert (key.hashdirlower, key.hashdirmixed, str(key)) == (lower, mixed, serialized)
        # Non-bare repo: .git/annex/objects/<hashdirmixed><keyFile>/<keyFile>
        assert objectpath.endswith(f"/{key.hashdirmixed}{key.file_name}/{key.file_name}")


@pytest.mark.parametrize(
    "backend",
    ["SHA256E", "SHA256", "SHA512E", "SHA1", "MD5E", "SHA3_256E", "BLAKE2B256E", "BLAKE2S160"],
)
def test_calckey_content_verifies(annex: tuple[str, Path, dict[str, str]], backend: str) -> None:
    binary, repo, env = annex
    data = os.urandom(1000) + b"\n"
    path = repo / "sample.tar.gz"
    path.write_bytes(data)
    out = subprocess.run(
        [binary, "calckey", f"--backend={backend}", str(path)],
        cwd=repo,
        env=env,
        capture_output=True,
        check=True,
        text=True,
    ).stdout.strip()
    key = Key.parse(out)
    assert key.backend == backend and key.size == len(data)
    verifier = ContentVerifier(key)
    assert verifier.checks_hash
    verifier.update(data)
    verifier.verify()
    verifier = ContentVerifier(key)
    verifier.update(data[:-1] + b"?")
    with pytest.raises(IntegrityError):
        verifier.verify()


@pytest.mark.parametrize("text", ANNEX_REJECTS)
def test_at_least_as_strict_as_annex(annex: tuple[str, Path, dict[str, str]], text: str) -> None:
    binary, repo, env = annex
    result = subprocess.run(
        [binary, "examinekey", "--format=${key}\\n", "--", text],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "bad key" in result.stderr
    with pytest.raises(InvalidKey):
        Key.parse(text)
