"""Tests for shared.p2p.messages: the P2P line codec (git-annex's ``P2P/Protocol.hs``).

Round trips for every message type, the lossy AssociatedFile mapping exactly as
git-annex implements it, strict rejection of malformed lines (always
``MalformedMessage``), and lines as real git-annex-shell sends them.
"""

from __future__ import annotations

import contextlib
import hashlib
import string
import unicodedata

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from shared.annex.keys import Key
from shared.p2p import messages as m
from shared.p2p.messages import MAX_LINE, MalformedMessage, Message, decode_af, encode, parse

pytestmark = pytest.mark.timeout(60)  # a quadratic parse of a long line would show here

SETTINGS = settings(
    deadline=None,
    max_examples=200,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)

SERVER_UUID = "2cd1e7c9-ca5e-45a8-a12e-162bb49045d5"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
KEY = Key.parse(f"SHA256E-s0--{EMPTY_SHA256}.txt")


def hs_isspace(c: str) -> bool:
    """GHC's ``Data.Char.isSpace``: what git-annex splits fields on and escapes in an AF."""
    o = ord(c)
    if o <= 0x377:
        return o == 32 or 9 <= o <= 13 or o == 0xA0
    return unicodedata.category(c) == "Zs"


def expected_af(af: str | None) -> str | None:
    """What the peer reads back for an AssociatedFile we sent, by git-annex's rules:
    each whitespace character is sent as ``%`` and ``%`` as ``%%``; the reader turns
    ``%%`` into ``%``, a lone ``%`` and control characters into ``_``. So whitespace
    comes back as ``_``, except that two whitespace characters in a row (or whitespace
    then ``%``) meet as ``%%`` and come back as one ``%``."""
    if not af:
        return None
    wire = "".join("%%" if c == "%" else "%" if hs_isspace(c) else c for c in af)
    out: list[str] = []
    i = 0
    while i < len(wire):
        if wire.startswith("%%", i):
            out.append("%")
            i += 2
            continue
        c = wire[i]
        out.append("_" if c == "%" or unicodedata.category(c) == "Cc" else c)
        i += 1
    return "".join(out)


def line(msg: Message) -> bytes:
    """The encoded line without its newline, as ``parse`` takes it."""
    data = encode(msg)
    assert data.endswith(b"\n")
    assert data.count(b"\n") == 1
    return data[:-1]


# --- strategies ----------------------------------------------------------------------

NAME_CHARS = st.characters(
    codec="utf-8",
    exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp"),
    exclude_characters="\x1c\x1d\x1e\x1f\x85",
)


@st.composite
def sha256e_keys(draw: st.DrawFn) -> Key:
    digest = hashlib.sha256(draw(st.binary(max_size=16))).hexdigest()
    ext = draw(st.sampled_from(["", ".txt", ".tar.gz", ".jpg", ".a1"]))
    size = draw(st.none() | st.integers(0, 2**63))
    if draw(st.booleans()) and size:
        chunk = draw(st.integers(1, 2**40))
        num = draw(st.integers(1, 2**20))
        return Key("SHA256E", digest + ext, size=size, chunk_size=chunk, chunk_num=num)
    return Key("SHA256E", digest + ext, size=size)


@st.composite
def worm_keys(draw: st.DrawFn) -> Key:
    name = draw(st.text(NAME_CHARS, min_size=1, max_size=40))
    return Key(
        "WORM",
        name,
        size=draw(st.none() | st.integers(0, 2**63)),
        mtime=draw(st.none() | st.integers(0, 2**40)),
    )


@st.composite
def url_keys(draw: st.DrawFn) -> Key:
    path = draw(st.text(string.ascii_letters + string.digits + "/-_.%:?&=~", max_size=60))
    return Key("URL", f"https://example.com/{path}", size=draw(st.none() | st.integers(0, 2**40)))


keys = st.one_of(sha256e_keys(), worm_keys(), url_keys())
uuids = st.one_of(
    st.uuids().map(str),
    st.text(NAME_CHARS, min_size=1, max_size=40),
)
uuid_lists = st.lists(uuids, max_size=5).map(tuple)
numbers = st.integers(0, 2**63)
# Any text we could put on a line: no newline, no CR, no lone surrogates.
line_text = st.text(st.characters(codec="utf-8", exclude_characters="\n\r"), max_size=80)
afs = st.one_of(
    st.none(),
    st.just(""),
    st.text(st.characters(codec="utf-8"), max_size=40).filter(lambda s: not s.startswith("/")),
    st.text(" \t%/._-aé€😀\x01\x7f\x85\u2028\u3000", max_size=20).filter(
        lambda s: not s.startswith("/")
    ),
)

MESSAGES: dict[type[Message], st.SearchStrategy[Message]] = {
    m.Auth: st.builds(m.Auth, uuids, line_text),
    m.AuthSuccess: st.builds(m.AuthSuccess, uuids),
    m.AuthFailure: st.just(m.AuthFailure()),
    m.Version: st.builds(m.Version, st.integers(0, 10**29)),
    m.Bypass: st.builds(m.Bypass, uuid_lists),
    m.CheckPresent: st.builds(m.CheckPresent, keys),
    m.LockContent: st.builds(m.LockContent, keys),
    m.UnlockContent: st.just(m.UnlockContent()),
    m.Remove: st.builds(m.Remove, keys),
    m.RemoveBefore: st.builds(m.RemoveBefore, numbers, keys),
    m.GetTimestamp: st.just(m.GetTimestamp()),
    m.Timestamp: st.builds(m.Timestamp, numbers),
    m.Get: st.builds(m.Get, numbers, afs, keys),
    m.Put: st.builds(m.Put, afs, keys),
    m.PutFrom: st.builds(m.PutFrom, numbers),
    m.AlreadyHave: st.just(m.AlreadyHave()),
    m.AlreadyHavePlus: st.builds(m.AlreadyHavePlus, uuid_lists),
    m.Success: st.just(m.Success()),
    m.SuccessPlus: st.builds(m.SuccessPlus, uuid_lists),
    m.Failure: st.just(m.Failure()),
    m.FailurePlus: st.builds(m.FailurePlus, uuid_lists),
    m.Data: st.builds(m.Data, numbers),
    m.DataPresent: st.just(m.DataPresent()),
    m.Valid: st.just(m.Valid()),
    m.Invalid: st.just(m.Invalid()),
    m.Error: st.builds(m.Error, line_text),
    m.Connect: st.builds(m.Connect, st.sampled_from(["git-upload-pack", "git-receive-pack"])),
    m.ConnectDone: st.builds(m.ConnectDone, st.integers(0, 255)),
    m.NotifyChange: st.just(m.NotifyChange()),
    m.Changed: st.builds(m.Changed, line_text),
}
messages = st.one_of(*MESSAGES.values())


def test_every_message_type_has_a_strategy() -> None:
    assert set(MESSAGES) == {cls for cls in vars(m).values() if _is_message_class(cls)}


def _is_message_class(obj: object) -> bool:
    return isinstance(obj, type) and issubclass(obj, Message) and obj is not Message


# --- round trips ----------------------------------------------------------------------


@SETTINGS
@given(messages)
def test_encode_parse_round_trip(msg: Message) -> None:
    parsed = parse(line(msg))
    if isinstance(msg, m.Get):
        assert isinstance(parsed, m.Get)
        assert (parsed.offset, parsed.key, parsed.af) == (msg.offset, msg.key, expected_af(msg.af))
    elif isinstance(msg, m.Put):
        assert isinstance(parsed, m.Put)
        assert (parsed.key, parsed.af) == (msg.key, expected_af(msg.af))
    else:
        assert parsed == msg
    # What was parsed is canonical: it survives another round trip unchanged.
    assert parse(line(parsed)) == parsed


@SETTINGS
@given(keys)
def test_key_fields_are_sent_verbatim(key: Key) -> None:
    assert line(m.CheckPresent(key)) == b"CHECKPRESENT " + str(key).encode()
    assert line(m.Remove(key)) == b"REMOVE " + str(key).encode()
    assert line(m.Get(7, None, key)) == b"GET 7  " + str(key).encode()


@SETTINGS
@given(afs)
@example("my file.txt")
@example("tab\there")
@example("100%.txt")
@example("%%")
@example("ctrl\x01\x1f\x7f\x9f.txt")
@example("dir/sub dir/ünïcödé 😀.txt")
@example(" /leading-space-then-slash")
@example("line\nbreak\rcarriage")
@example("nel\x85 ls\u2028 ps\u2029 ideo\u3000 nbsp\xa0")
def test_associated_file_mapping(af: str | None) -> None:
    for msg in (m.Put(af, KEY), m.Get(0, af, KEY)):
        parsed = parse(line(msg))
        assert isinstance(parsed, (m.Put, m.Get))
        assert parsed.af == expected_af(af)


@pytest.mark.parametrize(
    ("af", "wire", "back"),
    [
        (None, "", None),
        ("", "", None),
        ("a b", "a%b", "a_b"),
        ("a\tb", "a%b", "a_b"),
        ("50%", "50%%", "50%"),
        ("a%%b", "a%%%%b", "a%%b"),
        ("x %y", "x%%%y", "x%_y"),  # "%%" then a lone "%"
        ("a  b", "a%%b", "a%b"),  # two spaces meet as "%%"
        ("dir/é.txt", "dir/é.txt", "dir/é.txt"),
        ("bell\x07", "bell\x07", "bell_"),
        ("del\x7f", "del\x7f", "del_"),
        ("us\x1f", "us\x1f", "us_"),  # a control character, not whitespace, for git-annex
        ("nel\x85", "nel\x85", "nel_"),
        ("ls\u2028", "ls\u2028", "ls\u2028"),  # neither space nor control for git-annex
        ("ideo\u3000", "ideo%", "ideo_"),
    ],
)
def test_associated_file_exact_forms(af: str | None, wire: str, back: str | None) -> None:
    encoded = line(m.Put(af, KEY))
    assert encoded == f"PUT {wire} {KEY}".encode()
    parsed = parse(encoded)
    assert isinstance(parsed, m.Put)
    assert parsed.af == back


def test_empty_associated_file_gives_double_space() -> None:
    assert encode(m.Put(None, KEY)) == f"PUT  {KEY}\n".encode()
    assert encode(m.Put("", KEY)) == f"PUT  {KEY}\n".encode()
    assert encode(m.Get(0, None, KEY)) == f"GET 0  {KEY}\n".encode()
    assert parse(f"PUT  {KEY}".encode()) == m.Put(None, KEY)
    assert parse(f"GET 12  {KEY}".encode()) == m.Get(12, None, KEY)


def test_decode_af_directly() -> None:
    assert decode_af("") is None
    assert decode_af("a%b%%c") == "a_b%c"
    assert decode_af("%") == "_"
    assert decode_af("%%%") == "%_"
    with pytest.raises(MalformedMessage):
        decode_af("/etc/passwd")
    with pytest.raises(MalformedMessage):
        decode_af("/%x")


@pytest.mark.parametrize("af", ["/etc/passwd", "/", "//x", "/a%b"])
def test_absolute_associated_file_is_refused(af: str) -> None:
    for text in (f"PUT {af} {KEY}", f"GET 0 {af} {KEY}"):
        with pytest.raises(MalformedMessage) as exc:
            parse(text.encode())
        assert exc.value.known
    with pytest.raises(ValueError):  # and we never send one
        encode(m.Put(af, KEY))


def test_exact_encodings() -> None:
    assert encode(m.Version(4)) == b"VERSION 4\n"
    assert encode(m.AuthSuccess(SERVER_UUID)) == f"AUTH-SUCCESS {SERVER_UUID}\n".encode()
    assert encode(m.Data(0)) == b"DATA 0\n"
    assert encode(m.SuccessPlus(())) == b"SUCCESS-PLUS\n"
    assert encode(m.Bypass(("u1", "u2"))) == b"BYPASS u1 u2\n"
    assert encode(m.UnlockContent()) == b"UNLOCKCONTENT\n"
    assert encode(m.Error("no such key here")) == b"ERROR no such key here\n"
    assert encode(m.RemoveBefore(9700, KEY)) == f"REMOVE-BEFORE 9700 {KEY}\n".encode()
    assert encode(m.Get(5, "a b", KEY)) == f"GET 5 a%b {KEY}\n".encode()
    assert encode(m.Error("")) == b"ERROR \n"
    assert parse(b"ERROR ") == m.Error("")
    assert encode(m.Data(2**63)) == b"DATA 9223372036854775808\n"


# --- lines as real git-annex sends them -------------------------------------------------

K = f"SHA256E-s3--{hashlib.sha256(b'foo').hexdigest()}.txt"
KK = Key.parse(K)


@pytest.mark.parametrize(
    ("wire", "msg"),
    [
        (f"AUTH-SUCCESS {SERVER_UUID}", m.AuthSuccess(SERVER_UUID)),
        ("AUTH-FAILURE", m.AuthFailure()),
        (f"AUTH {SERVER_UUID} sometoken", m.Auth(SERVER_UUID, "sometoken")),
        ("VERSION 4", m.Version(4)),
        ("VERSION 1", m.Version(1)),
        ("VERSION 0", m.Version(0)),
        ("PUT-FROM 0", m.PutFrom(0)),
        ("PUT-FROM 1048576", m.PutFrom(1048576)),
        ("DATA 2", m.Data(2)),
        ("DATA 0", m.Data(0)),
        ("TIMESTAMP 9689", m.Timestamp(9689)),
        ("GETTIMESTAMP", m.GetTimestamp()),
        ("ERROR unexpected command", m.Error("unexpected command")),
        ("ERROR unknown command", m.Error("unknown command")),
        (
            "ERROR this repository is read-only; write access denied",
            m.Error("this repository is read-only; write access denied"),
        ),
        (
            "ERROR this repository is append-only; removal denied",
            m.Error("this repository is append-only; removal denied"),
        ),
        ("ERROR expected VALID or INVALID", m.Error("expected VALID or INVALID")),
        ("SUCCESS", m.Success()),
        ("FAILURE", m.Failure()),
        ("SUCCESS-PLUS uuid1 uuid2", m.SuccessPlus(("uuid1", "uuid2"))),
        ("FAILURE-PLUS uuid1", m.FailurePlus(("uuid1",))),
        ("ALREADY-HAVE", m.AlreadyHave()),
        ("ALREADY-HAVE-PLUS uuid1 uuid2", m.AlreadyHavePlus(("uuid1", "uuid2"))),
        (f"BYPASS {SERVER_UUID}", m.Bypass((SERVER_UUID,))),
        ("DATA-PRESENT", m.DataPresent()),
        ("VALID", m.Valid()),
        ("INVALID", m.Invalid()),
        ("UNLOCKCONTENT", m.UnlockContent()),
        (f"UNLOCKCONTENT {K}", m.UnlockContent()),  # the design doc's form
        (f"CHECKPRESENT {K}", m.CheckPresent(KK)),
        (f"LOCKCONTENT {K}", m.LockContent(KK)),
        (f"REMOVE {K}", m.Remove(KK)),
        (f"REMOVE-BEFORE 9700 {K}", m.RemoveBefore(9700, KK)),
        (f"PUT  {K}", m.Put(None, KK)),
        (f"PUT foo {K}", m.Put("foo", KK)),
        (f"PUT my%file.txt {K}", m.Put("my_file.txt", KK)),
        (f"PUT 100%%.txt {K}", m.Put("100%.txt", KK)),
        (f"GET 0 foo {K}", m.Get(0, "foo", KK)),
        (f"GET 1 sub/dir%%x {K}", m.Get(1, "sub/dir%x", KK)),
        (f"GET 0  {K}", m.Get(0, None, KK)),
        ("CONNECT git-upload-pack", m.Connect("git-upload-pack")),
        ("CONNECTDONE 0", m.ConnectDone(0)),
        ("NOTIFYCHANGE", m.NotifyChange()),
        (
            "CHANGED refs/heads/master refs/heads/git-annex",
            m.Changed("refs/heads/master refs/heads/git-annex"),
        ),
        ("SUCCESS\r", m.Success()),  # a trailing CR is dropped
    ],
)
def test_transcript_lines(wire: str, msg: Message) -> None:
    assert parse(wire.encode()) == msg


# --- rejection ---------------------------------------------------------------------------


@settings(deadline=None, max_examples=500, derandomize=True)
@given(st.binary(max_size=300))
@example(b"")
@example(b"\xff\xfe")
@example(b"PUT \xff \xff")
@example(b"ERROR \xff")
@example(b"DATA \xd9\xa1")  # ARABIC-INDIC DIGIT ONE: a digit to int(), not to us
def test_random_bytes_parse_or_raise_malformed(data: bytes) -> None:
    try:
        msg = parse(data)
    except MalformedMessage:
        return
    # Whatever parses is either refused by encode or survives a round trip.
    try:
        again = encode(msg)
    except ValueError:
        return
    assert parse(again[:-1]) == msg


@SETTINGS
@given(
    st.sampled_from(
        [
            "PUT ",
            "GET ",
            "GET 0 ",
            "DATA ",
            "VERSION ",
            "CHECKPRESENT ",
            "REMOVE-BEFORE ",
            "AUTH ",
            "SUCCESS-PLUS ",
            "UNLOCKCONTENT ",
            "AUTH-SUCCESS ",
            "CONNECTDONE ",
            "CONNECT ",
        ]
    ),
    st.text(st.characters(exclude_characters="\n"), max_size=60),
)
def test_known_commands_with_random_fields(prefix: str, rest: str) -> None:
    try:
        parse((prefix + rest).encode("utf-8", "surrogatepass"))
    except MalformedMessage as e:
        assert e.known


@pytest.mark.parametrize(
    "wire",
    [
        "",
        " ",
        "HELLO",
        "success",  # commands are case-sensitive
        "PUTFROM 0",
        "DATA_PRESENT",
        " SUCCESS",
        "GET-TIMESTAMP",
        "X" * 100,
    ],
)
def test_unknown_commands(wire: str) -> None:
    with pytest.raises(MalformedMessage) as exc:
        parse(wire.encode())
    assert not exc.value.known


@pytest.mark.parametrize(
    "wire",
    [
        "SUCCESS extra",
        "ALREADY-HAVE x",
        "GETTIMESTAMP now",
        "VALID 1",
        "DATA-PRESENT x",
        "AUTH-FAILURE why",
        "AUTH onlyone",
        "AUTH-SUCCESS",
        "AUTH-SUCCESS ",
        "AUTH-SUCCESS a b",
        "CHECKPRESENT",
        "CHECKPRESENT ",
        f"CHECKPRESENT {K} extra",
        f"CHECKPRESENT  {K}",
        f"PUT {K}",
        f"PUT a b {K}",
        f"GET 0 {K}",
        f"GET {K}",
        "REMOVE-BEFORE 5",
        f"REMOVE-BEFORE {K}",
        "DATA",
        "DATA ",
        "VERSION",
        "VERSION 1 2",
        "PUT-FROM",
        "TIMESTAMP",
        "UNLOCKCONTENT  ",
        "UNLOCKCONTENT not-a-key",
        "CONNECT git-annex",
        "CONNECT",
        "CONNECTDONE",
        f"LOCKCONTENT {K} {K}",
    ],
)
def test_wrong_fields(wire: str) -> None:
    with pytest.raises(MalformedMessage) as exc:
        parse(wire.encode())
    assert exc.value.known


BAD_NUMBERS = [
    *("-1", "+1", "-0", "01", "00", "007", "1.0", "1e3", "0x10", "1_000", " 1", "1 ", ""),
    *("a", "\u0661", "\uff11", "1" + "0" * 30, "9" * 31, "NaN", "\u221e"),
]


@pytest.mark.parametrize("number", BAD_NUMBERS)
@pytest.mark.parametrize(
    "template",
    [
        "VERSION {}",
        "DATA {}",
        "PUT-FROM {}",
        "TIMESTAMP {}",
        "GET {} af " + K,
        "REMOVE-BEFORE {} " + K,
        "CONNECTDONE {}",
    ],
)
def test_bad_numbers(template: str, number: str) -> None:
    with pytest.raises(MalformedMessage):
        parse(template.format(number).encode())


def test_number_bounds() -> None:
    assert parse(b"DATA 9223372036854775808") == m.Data(2**63)
    assert parse(("DATA " + "9" * 30).encode()) == m.Data(10**30 - 1)
    assert parse(b"PUT-FROM 0") == m.PutFrom(0)


@pytest.mark.parametrize(
    "key",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "..",
        "..--x",
        "SHA256/E--abc",
        "SHA256E--",
        "--abc",
        "SHA256E-s01--abc",
        "SHA256E-s-1--abc",
        "WORM--a\x01b",
        "WORM--a\x7fb",
        "SHA256E-s1--" + "a" * 300,
    ],
)
def test_invalid_keys(key: str) -> None:
    for wire in (
        f"CHECKPRESENT {key}",
        f"LOCKCONTENT {key}",
        f"REMOVE {key}",
        f"REMOVE-BEFORE 1 {key}",
        f"PUT  {key}",
        f"GET 0 af {key}",
    ):
        with pytest.raises(MalformedMessage) as exc:
            parse(wire.encode())
        assert exc.value.known


@pytest.mark.parametrize("sep", [" ", "\t", "\x0b", "\x0c"])
def test_keys_with_whitespace_are_refused(sep: str) -> None:
    with pytest.raises(MalformedMessage):
        parse(f"CHECKPRESENT WORM--a{sep}b".encode())
    with pytest.raises(MalformedMessage):
        parse(f"PUT  WORM--a{sep}b".encode())


@pytest.mark.parametrize("sep", ["\x1c", "\x1f", "\x85", "\u2028", "\u2029"])
def test_fields_split_only_on_git_annex_whitespace(sep: str) -> None:
    """git-annex sends these characters of a file name raw (they are not ``isSpace`` to
    Haskell), so they must not end the AssociatedFile field."""
    parsed = parse(f"PUT a{sep}b {K}".encode())
    assert parsed == m.Put(expected_af(f"a{sep}b"), KK)
    parsed = parse(f"GET 3 a{sep}b {K}".encode())
    assert parsed == m.Get(3, expected_af(f"a{sep}b"), KK)


def test_trailing_space_after_a_bare_command() -> None:
    assert parse(b"SUCCESS ") == m.Success()  # git-annex's parse0 sees an empty rest too


def test_uuid_lists_split_on_any_whitespace_run() -> None:
    assert parse(b"SUCCESS-PLUS  a \t b ") == m.SuccessPlus(("a", "b"))
    assert parse(b"BYPASS") == m.Bypass(())
    assert parse(b"FAILURE-PLUS") == m.FailurePlus(())


@pytest.mark.parametrize(
    "wire",
    [
        b"SUCCESS-PLUS" + b" a" * (MAX_LINE // 2 - 7),
        b"BYPASS" + b" " * (MAX_LINE - 6),
        b"PUT " + b"%" * (MAX_LINE - 4),
        b"PUT " + b"%" * (MAX_LINE - 200) + b" " + str(KEY).encode(),
        b"GET 0 " + b"a" * (MAX_LINE - 6),
        b"ERROR " + b"\xff" * (MAX_LINE - 6),
    ],
)
def test_worst_case_lines(wire: bytes) -> None:
    """Lines of MAX_LINE bytes built to be slow to split or unescape parse in linear time."""
    assert len(wire) <= MAX_LINE
    with contextlib.suppress(MalformedMessage):
        parse(wire)


def test_lines_over_max_line() -> None:
    long = b"ERROR " + b"x" * MAX_LINE
    with pytest.raises(MalformedMessage):
        parse(long)
    assert parse(long[:MAX_LINE]) == m.Error("x" * (MAX_LINE - 6))
    with pytest.raises(MalformedMessage):
        parse(b"SUCCESS\nSUCCESS")


@pytest.mark.parametrize(
    "msg",
    [
        m.Error("two\nlines"),
        m.Error("carriage\r"),
        m.Changed("a\nb"),
        m.Auth("has space", "token"),
        m.Auth("", "token"),
        m.AuthSuccess(""),
        m.AuthSuccess("has space"),
        m.SuccessPlus(("ok", "not ok")),
        m.Bypass(("",)),
        m.AlreadyHavePlus(("a\nb",)),
        m.Version(-1),
        m.Data(-1),
        m.PutFrom(-5),
        m.Timestamp(-1),
        m.Get(-1, None, KEY),
        m.ConnectDone(-1),
        m.Connect("git-annex"),
        m.Put("/abs", KEY),
    ],
)
def test_encode_refuses_what_cannot_be_parsed_back(msg: Message) -> None:
    with pytest.raises(ValueError):
        encode(msg)
