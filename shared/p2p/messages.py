"""The P2P protocol's messages and their line serialization (git-annex's ``P2P/Protocol.hs``).

A message is one line: the command, then its fields separated by single spaces,
then ``\\n``. As in git-annex, the *last* field of a fixed-arity message takes
the rest of the line (so ``ERROR`` text may hold spaces), the fields before it
end at the next whitespace, and list messages (``SUCCESS-PLUS`` and friends)
split on any whitespace. "Whitespace" is Haskell's ``isSpace``, which is not
Python's: git-annex sends ``\\x1c``-``\\x1f``, NEL and U+2028/9 raw inside a field.
``AssociatedFile`` is the one field that is not last and may be empty:
whitespace in it is sent as ``%`` and ``%`` as ``%%``, which is lossy and only
for display.

Pure functions, no I/O: ``encode`` makes the line, ``parse`` validates one.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from shared.annex.keys import Key
from shared.errors import InvalidKey

MAX_LINE = 32 * 1024  # git-annex gives up on a line this long without a newline
MAX_VERSION = 4

_UUID_RE = re.compile(r"[^\s]{1,128}")  # git-annex accepts any non-empty word as a UUID
_NUM_RE = re.compile(r"0|[1-9][0-9]{0,29}")  # no signs, no leading zeros, bounded
_SERVICES = ("git-upload-pack", "git-receive-pack")


def _is_space(c: str) -> bool:
    """Haskell's ``Data.Char.isSpace``, which git-annex splits and escapes on: space,
    ``\\t\\n\\v\\f\\r``, NBSP and the other Unicode space separators (category Zs)."""
    o = ord(c)
    if o <= 0x377:
        return o == 32 or 9 <= o <= 13 or o == 0xA0
    return unicodedata.category(c) == "Zs"


class MalformedMessage(ValueError):
    """A line that is not a valid P2P message. ``known`` tells a bad request for a
    command we know (wrong fields) from a command we have never heard of."""

    def __init__(self, reason: str, known: bool) -> None:
        super().__init__(reason)
        self.known = known


# -- the messages --------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """Base class; ``command`` is the wire name."""

    command = ""

    def fields(self) -> list[str]:
        return []


@dataclass(frozen=True)
class Auth(Message):
    uuid: str
    token: str
    command = "AUTH"

    def fields(self) -> list[str]:
        return [self.uuid, self.token]


@dataclass(frozen=True)
class AuthSuccess(Message):
    uuid: str
    command = "AUTH-SUCCESS"

    def fields(self) -> list[str]:
        return [self.uuid]


@dataclass(frozen=True)
class AuthFailure(Message):
    command = "AUTH-FAILURE"


@dataclass(frozen=True)
class Version(Message):
    version: int
    command = "VERSION"

    def fields(self) -> list[str]:
        return [str(self.version)]


@dataclass(frozen=True)
class Bypass(Message):
    uuids: tuple[str, ...]
    command = "BYPASS"

    def fields(self) -> list[str]:
        return list(self.uuids)


@dataclass(frozen=True)
class CheckPresent(Message):
    key: Key
    command = "CHECKPRESENT"

    def fields(self) -> list[str]:
        return [str(self.key)]


@dataclass(frozen=True)
class LockContent(Message):
    key: Key
    command = "LOCKCONTENT"

    def fields(self) -> list[str]:
        return [str(self.key)]


@dataclass(frozen=True)
class UnlockContent(Message):
    """git-annex sends it bare, although its design doc shows a key; a key is accepted."""

    command = "UNLOCKCONTENT"


@dataclass(frozen=True)
class Remove(Message):
    key: Key
    command = "REMOVE"

    def fields(self) -> list[str]:
        return [str(self.key)]


@dataclass(frozen=True)
class RemoveBefore(Message):
    timestamp: int
    key: Key
    command = "REMOVE-BEFORE"

    def fields(self) -> list[str]:
        return [str(self.timestamp), str(self.key)]


@dataclass(frozen=True)
class GetTimestamp(Message):
    command = "GETTIMESTAMP"


@dataclass(frozen=True)
class Timestamp(Message):
    timestamp: int
    command = "TIMESTAMP"

    def fields(self) -> list[str]:
        return [str(self.timestamp)]


@dataclass(frozen=True)
class Get(Message):
    offset: int
    af: str | None
    key: Key
    command = "GET"

    def fields(self) -> list[str]:
        return [str(self.offset), encode_af(self.af), str(self.key)]


@dataclass(frozen=True)
class Put(Message):
    af: str | None
    key: Key
    command = "PUT"

    def fields(self) -> list[str]:
        return [encode_af(self.af), str(self.key)]


@dataclass(frozen=True)
class PutFrom(Message):
    offset: int
    command = "PUT-FROM"

    def fields(self) -> list[str]:
        return [str(self.offset)]


@dataclass(frozen=True)
class AlreadyHave(Message):
    command = "ALREADY-HAVE"


@dataclass(frozen=True)
class AlreadyHavePlus(Message):
    uuids: tuple[str, ...]
    command = "ALREADY-HAVE-PLUS"

    def fields(self) -> list[str]:
        return list(self.uuids)


@dataclass(frozen=True)
class Success(Message):
    command = "SUCCESS"


@dataclass(frozen=True)
class SuccessPlus(Message):
    uuids: tuple[str, ...]
    command = "SUCCESS-PLUS"

    def fields(self) -> list[str]:
        return list(self.uuids)


@dataclass(frozen=True)
class Failure(Message):
    command = "FAILURE"


@dataclass(frozen=True)
class FailurePlus(Message):
    uuids: tuple[str, ...]
    command = "FAILURE-PLUS"

    def fields(self) -> list[str]:
        return list(self.uuids)


@dataclass(frozen=True)
class Data(Message):
    """Announces exactly ``length`` raw bytes, which follow with no newline after them."""

    length: int
    command = "DATA"

    def fields(self) -> list[str]:
        return [str(self.length)]


@dataclass(frozen=True)
class DataPresent(Message):
    command = "DATA-PRESENT"


@dataclass(frozen=True)
class Valid(Message):
    command = "VALID"


@dataclass(frozen=True)
class Invalid(Message):
    command = "INVALID"


@dataclass(frozen=True)
class Error(Message):
    text: str
    command = "ERROR"

    def fields(self) -> list[str]:
        return [self.text]


@dataclass(frozen=True)
class Connect(Message):
    service: str
    command = "CONNECT"

    def fields(self) -> list[str]:
        return [self.service]


@dataclass(frozen=True)
class ConnectDone(Message):
    exit_code: int
    command = "CONNECTDONE"

    def fields(self) -> list[str]:
        return [str(self.exit_code)]


@dataclass(frozen=True)
class NotifyChange(Message):
    command = "NOTIFYCHANGE"


@dataclass(frozen=True)
class Changed(Message):
    refs: str
    command = "CHANGED"

    def fields(self) -> list[str]:
        return [self.refs]


# -- AssociatedFile ------------------------------------------------------------


def encode_af(af: str | None) -> str:
    """Whitespace becomes ``%``, ``%`` becomes ``%%``; no file is the empty field."""
    if not af:
        return ""
    return "".join("%%" if c == "%" else "%" if _is_space(c) else c for c in af)


def decode_af(text: str) -> str | None:
    """git-annex's reading: ``%%`` is ``%``, a lone ``%`` (was whitespace) and control
    characters become ``_``; an absolute path is refused."""
    if not text:
        return None
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "%":
            if text.startswith("%%", i):
                out.append("%")
                i += 2
                continue
            out.append("_")
        elif ord(c) < 32 or 127 <= ord(c) < 160:  # Haskell's isControl
            out.append("_")
        else:
            out.append(c)
        i += 1
    af = "".join(out)
    if af.startswith("/"):
        raise MalformedMessage(f"associated file {af!r} is an absolute path", known=True)
    return af


# -- encoding and parsing ------------------------------------------------------


def encode(msg: Message) -> bytes:
    """The message's line, newline included. Refuses (ValueError) what the peer could
    not parse back: checked by parsing the line, so numbers, UUIDs, keys and an
    absolute AssociatedFile are held to the same rules as on receipt."""
    fields = msg.fields()
    for i, f in enumerate(fields):
        last = i == len(fields) - 1
        if "\n" in f or "\r" in f or (not last and any(_is_space(c) for c in f)):
            raise ValueError(f"{msg.command}: field {f!r} cannot be sent on one line")
    lists = (Bypass, AlreadyHavePlus, SuccessPlus, FailurePlus)
    if isinstance(msg, lists) and any(not _UUID_RE.fullmatch(u) for u in msg.uuids):
        raise ValueError(f"{msg.command}: a UUID must be one word")
    line = " ".join([msg.command, *fields]).encode("utf-8", "surrogateescape")
    try:
        parse(line)
    except MalformedMessage as e:
        raise ValueError(f"{msg.command}: the peer could not parse it back: {e}") from None
    return line + b"\n"


def _num(text: str, what: str) -> int:
    if not _NUM_RE.fullmatch(text):
        raise MalformedMessage(f"{what} {text!r} is not a number", known=True)
    return int(text)


def _key(text: str) -> Key:
    try:
        return Key.parse(text)
    except InvalidKey as e:
        raise MalformedMessage(str(e), known=True) from None


def _uuid(text: str) -> str:
    if not _UUID_RE.fullmatch(text):
        raise MalformedMessage(f"invalid UUID {text!r}", known=True)
    return text


def _split_word(text: str) -> tuple[str, str, bool]:
    """git-annex's splitWord: up to the first whitespace character, and what follows it."""
    for i, c in enumerate(text):
        if _is_space(c):
            return text[:i], text[i + 1 :], True
    return text, "", False


def _split(rest: str, n: int, command: str) -> list[str]:
    """Exactly ``n`` fields: the first n-1 end at whitespace, the last takes the rest."""
    if n == 0:
        if rest:
            raise MalformedMessage(f"{command} takes no fields", known=True)
        return []
    fields = []
    for _ in range(n - 1):
        word, rest, found = _split_word(rest)
        if not found:
            raise MalformedMessage(f"{command} needs {n} fields", known=True)
        fields.append(word)
    fields.append(rest)
    return fields


def _uuids(rest: str) -> tuple[str, ...]:
    """git-annex's ``words``: split on runs of whitespace, ignoring it at both ends."""
    words: list[str] = []
    start = -1
    for i, c in enumerate(rest):
        if not _is_space(c):
            start = i if start < 0 else start
        elif start >= 0:
            words.append(rest[start:i])
            start = -1
    if start >= 0:
        words.append(rest[start:])
    return tuple(_uuid(w) for w in words)


_PARSERS: dict[str, tuple[int, Callable[[list[str]], Message]]] = {
    "AUTH": (2, lambda f: Auth(_uuid(f[0]), f[1])),
    "AUTH-SUCCESS": (1, lambda f: AuthSuccess(_uuid(f[0]))),
    "AUTH-FAILURE": (0, lambda f: AuthFailure()),
    "VERSION": (1, lambda f: Version(_num(f[0], "version"))),
    "CHECKPRESENT": (1, lambda f: CheckPresent(_key(f[0]))),
    "LOCKCONTENT": (1, lambda f: LockContent(_key(f[0]))),
    "UNLOCKCONTENT": (0, lambda f: UnlockContent()),
    "REMOVE": (1, lambda f: Remove(_key(f[0]))),
    "REMOVE-BEFORE": (2, lambda f: RemoveBefore(_num(f[0], "timestamp"), _key(f[1]))),
    "GETTIMESTAMP": (0, lambda f: GetTimestamp()),
    "TIMESTAMP": (1, lambda f: Timestamp(_num(f[0], "timestamp"))),
    "GET": (3, lambda f: Get(_num(f[0], "offset"), decode_af(f[1]), _key(f[2]))),
    "PUT": (2, lambda f: Put(decode_af(f[0]), _key(f[1]))),
    "PUT-FROM": (1, lambda f: PutFrom(_num(f[0], "offset"))),
    "ALREADY-HAVE": (0, lambda f: AlreadyHave()),
    "SUCCESS": (0, lambda f: Success()),
    "FAILURE": (0, lambda f: Failure()),
    "DATA": (1, lambda f: Data(_num(f[0], "length"))),
    "DATA-PRESENT": (0, lambda f: DataPresent()),
    "VALID": (0, lambda f: Valid()),
    "INVALID": (0, lambda f: Invalid()),
    "ERROR": (1, lambda f: Error(f[0])),
    "CONNECT": (1, lambda f: Connect(_service(f[0]))),
    "CONNECTDONE": (1, lambda f: ConnectDone(_num(f[0], "exit code"))),
    "NOTIFYCHANGE": (0, lambda f: NotifyChange()),
    "CHANGED": (1, lambda f: Changed(f[0])),
}
_LISTS = {
    "BYPASS": Bypass,
    "ALREADY-HAVE-PLUS": AlreadyHavePlus,
    "SUCCESS-PLUS": SuccessPlus,
    "FAILURE-PLUS": FailurePlus,
}


def _service(text: str) -> str:
    if text not in _SERVICES:
        raise MalformedMessage(f"unknown service {text!r}", known=True)
    return text


def parse(line: bytes) -> Message:
    """Parse one line (without its ``\\n``; a trailing ``\\r`` is dropped, as git-annex does)."""
    if len(line) > MAX_LINE:
        raise MalformedMessage(f"line of {len(line)} bytes is too long", known=False)
    if b"\n" in line:
        raise MalformedMessage("a message is one line", known=False)
    text = line.removesuffix(b"\r").decode("utf-8", "surrogateescape")
    command, rest, _ = _split_word(text)
    if command in _LISTS:
        return _LISTS[command](_uuids(rest))
    if command not in _PARSERS:
        raise MalformedMessage(f"unknown command {command[:40]!r}", known=False)
    if command == "UNLOCKCONTENT" and rest:  # the design doc's form, with the key
        _key(rest)
        rest = ""
    arity, build = _PARSERS[command]
    return build(_split(rest, arity, command))
