"""git-annex's P2P protocol over HTTP (``doc/design/p2p_protocol_over_http.mdwn``): the
wire format, for a server and a client alike. Pure functions, no I/O.

- Paths: ``/git-annex/<server uuid>/<version>/<operation>`` (``v0`` to ``v4``; which
  operations each version has is the table ``OPERATIONS``), ``.../<version>/key/<key>``
  for a GET, and the unversioned ``/git-annex/<uuid>/key/<key>``. ``parse_path`` and
  ``path``; a path we do not serve is ``RouteNotFound`` (HTTP 404, which tells a client
  to fall back to an earlier version).
- Values: a key, UUID or file name that is not plain UTF-8, or that is itself wrapped
  in ``[...]``, travels as ``[base64url]`` (``encode_value``/``decode_value``).
- Query parameters: ``Params`` (``parse_query``/``render_query``).
- JSON bodies: one dataclass per answer, ``render(answer, version)`` (v0 and v1 drop
  ``plusuuids``) and ``parse_*`` for a client; ``UnlockRequest`` lines of keeplocked.
- ``X-git-annex-data-length`` (``DATA_LENGTH``, ``parse_data_length``) and the
  ``Authorization: Basic`` header (``parse_basic_auth``, ``basic_auth``).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote_to_bytes

from shared.annex.keys import Key
from shared.errors import ClusterError, InvalidKey

PREFIX = "git-annex"
DEFAULT_PORT = 9417
DATA_LENGTH = "X-git-annex-data-length"
REALM = "git-annex"
LOCK_SECONDS = 10 * 60  # a lockcontent lock lives this long without keeplocked's unlock
MAX_VERSION = 4

# Operations by version (P2P/Http.hs's API): remove-before and gettimestamp from v3,
# putoffset from v1, the rest from v0. "key" is the versioned GET.
GET = "key"
CHECKPRESENT = "checkpresent"
LOCKCONTENT = "lockcontent"
KEEPLOCKED = "keeplocked"
REMOVE = "remove"
REMOVE_BEFORE = "remove-before"
GETTIMESTAMP = "gettimestamp"
PUT = "put"
PUTOFFSET = "putoffset"
_SINCE = {
    GET: 0,
    CHECKPRESENT: 0,
    LOCKCONTENT: 0,
    KEEPLOCKED: 0,
    REMOVE: 0,
    REMOVE_BEFORE: 3,
    GETTIMESTAMP: 3,
    PUT: 0,
    PUTOFFSET: 1,
}
OPERATIONS: dict[int, frozenset[str]] = {
    v: frozenset(op for op, since in _SINCE.items() if since <= v) for v in range(MAX_VERSION + 1)
}
# The ones that carry a key in the query (``key=``), which is then required.
_KEY_PARAM = frozenset({CHECKPRESENT, LOCKCONTENT, REMOVE, REMOVE_BEFORE, PUT, PUTOFFSET})
# The ones whose clientuuid is optional (the spec: "All parameters are optional").
_CLIENTUUID_OPTIONAL = frozenset({GET, KEEPLOCKED})

_VERSION_RE = re.compile(r"v(0|[1-9][0-9]{0,3})")
_NUM_RE = re.compile(r"0|[1-9][0-9]{0,29}")


class HttpApiError(ClusterError):
    """A request (or answer) that does not follow the spec; ``status`` is the HTTP
    status a server answers it with."""

    status = 400


class RouteNotFound(HttpApiError):
    """A path the API does not have (an unknown version answers this too)."""

    status = 404


# -- values: [base64url] ----------------------------------------------------------


def encode_value(raw: bytes | str) -> str:
    """A key, UUID or file name as the API writes it: itself when it is UTF-8 and not
    already wrapped in ``[...]``, ``[base64url]`` otherwise. A str is taken as bytes
    with surrogate escapes (as ``Key`` holds non-UTF-8 names)."""
    data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and not (text.startswith("[") and text.endswith("]")):
        return text
    return "[" + base64.urlsafe_b64encode(data).decode("ascii") + "]"


def decode_value(text: str) -> bytes:
    """The bytes of a value as the API writes it (``encode_value``'s inverse)."""
    if text.startswith("[") and text.endswith("]") and len(text) >= 2:
        inner = text[1:-1]
        try:
            return base64.urlsafe_b64decode(_padded(inner).encode("ascii"))
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise HttpApiError(f"bad base64url value {text[:80]!r}") from None
    return text.encode("utf-8", "surrogateescape")


def _padded(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]*={0,2}", text):
        raise ValueError("not base64url")
    return text + "=" * (-len(text) % 4)


def decode_text(text: str) -> str:
    """A decoded value as a str (non-UTF-8 bytes as surrogate escapes)."""
    return decode_value(text).decode("utf-8", "surrogateescape")


def decode_key(text: str) -> Key:
    try:
        return Key.parse(decode_text(text))
    except InvalidKey as e:
        raise HttpApiError(f"invalid key: {e}") from None


_NOT_IN_UUID = re.compile(r"[\x00-\x1f\s]")  # (one search: a test per character cost 10% of a GET)


def decode_uuid(text: str) -> str:
    uuid = decode_text(text)
    if not uuid or len(uuid) > 128 or _NOT_IN_UUID.search(uuid):
        raise HttpApiError(f"invalid UUID {uuid[:80]!r}")
    return uuid


# -- paths ------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """What a path asks for. ``version`` is None for the unversioned key GET; ``key``
    is set for GETs only (other operations take it from the query)."""

    uuid: str
    version: int | None
    operation: str
    key: Key | None = None


def parse_path(raw_path: str) -> Route:
    """The route of a request's path as sent (percent-encoded, without the query).
    ``RouteNotFound`` for anything the API does not have; ``HttpApiError`` for a key
    or UUID that is malformed."""
    parts = raw_path.split("/")
    if len(parts) < 4 or parts[0] != "" or parts[1] != PREFIX:
        raise RouteNotFound(f"no such path {raw_path[:200]!r}")
    segs = [_unquote(p) for p in parts[2:]]
    uuid = decode_uuid(segs[0])
    rest = segs[1:]
    if len(rest) == 2 and rest[0] == GET:
        return Route(uuid, None, GET, decode_key(rest[1]))
    if not rest or not (m := _VERSION_RE.fullmatch(rest[0])):
        raise RouteNotFound(f"no such path {raw_path[:200]!r}")
    version = int(m.group(1))
    ops = OPERATIONS.get(version)
    if ops is None:
        raise RouteNotFound(f"protocol version {version} is not supported")
    if len(rest) == 3 and rest[1] == GET:
        return Route(uuid, version, GET, decode_key(rest[2]))
    if len(rest) != 2 or rest[1] == GET or rest[1] not in ops:
        raise RouteNotFound(f"no such path {raw_path[:200]!r} in protocol version {version}")
    return Route(uuid, version, rest[1])


def _unquote(segment: str) -> str:
    try:
        return unquote_to_bytes(segment).decode("utf-8")
    except UnicodeDecodeError:
        raise HttpApiError("a path segment is not UTF-8 (use [base64url])") from None


def path(uuid: str, version: int | None, operation: str, key: Key | None = None) -> str:
    """The path of a request (percent-encoded); ``key`` for GETs."""
    parts = ["", PREFIX, encode_value(uuid)]
    if version is not None:
        parts.append(f"v{version}")
    parts.append(operation)
    if operation == GET:
        if key is None:
            raise ValueError("a GET path needs the key")
        parts.append(encode_value(str(key)))
    return "/".join(quote(p, safe="") for p in parts)


# -- query parameters -------------------------------------------------------------


@dataclass(frozen=True)
class Params:
    """A request's query parameters, decoded."""

    clientuuid: str | None = None
    bypass: tuple[str, ...] = ()
    key: Key | None = None
    associatedfile: str | None = None
    offset: int | None = None
    timestamp: int | None = None
    lockid: str | None = None
    data_present: bool = False


def parse_query(query: str, route: Route | None = None) -> Params:
    """Decode a query string; with ``route``, also check what its operation requires
    (``HttpApiError``, 400, when something is missing or malformed)."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=False, errors="strict")
    except UnicodeDecodeError:
        raise HttpApiError("the query is not UTF-8 (use [base64url])") from None
    got: dict[str, Any] = {}
    bypass: list[str] = []
    for name, value in pairs:
        if name == "bypass":
            bypass.append(decode_uuid(value))
        elif name == "clientuuid":
            got[name] = decode_uuid(value)
        elif name == "key":
            got[name] = decode_key(value)
        elif name == "associatedfile":
            got[name] = decode_text(value)
        elif name in ("offset", "timestamp"):
            got[name] = _number(name, value)
        elif name == "lockid":
            got[name] = decode_text(value)
        elif name == "data-present":
            if value not in ("true", "false"):
                raise HttpApiError(f"data-present must be true or false, not {value[:20]!r}")
            got["data_present"] = value == "true"
        # others: ignored, as servant ignores unknown query parameters
    params = Params(bypass=tuple(bypass), **got)
    if route is not None:
        _check(route, params)
    return params


def _number(name: str, value: str) -> int:
    if not _NUM_RE.fullmatch(value):
        raise HttpApiError(f"{name} must be a decimal number, not {value[:40]!r}")
    return int(value)


def _check(route: Route, params: Params) -> None:
    op = route.operation
    if route.version is None:
        return  # the unversioned GET: every parameter optional
    if params.clientuuid is None and op not in _CLIENTUUID_OPTIONAL:
        raise HttpApiError(f"{op} needs the clientuuid parameter")
    if op in _KEY_PARAM and params.key is None:
        raise HttpApiError(f"{op} needs the key parameter")
    if op == REMOVE_BEFORE and params.timestamp is None:
        raise HttpApiError("remove-before needs the timestamp parameter")
    if op == KEEPLOCKED and params.lockid is None:
        raise HttpApiError("keeplocked needs the lockid parameter")
    if params.bypass and route.version < 2:
        raise HttpApiError("bypass needs protocol version 2 or later")
    if params.data_present and route.version < 4:
        raise HttpApiError("data-present needs protocol version 4")


def render_query(params: Params) -> str:
    """The query string of ``params`` (for a client)."""
    pairs: list[tuple[str, str]] = []
    if params.key is not None:
        pairs.append(("key", encode_value(str(params.key))))
    if params.clientuuid is not None:
        pairs.append(("clientuuid", encode_value(params.clientuuid)))
    pairs += [("bypass", encode_value(u)) for u in params.bypass]
    if params.associatedfile is not None:
        pairs.append(("associatedfile", encode_value(params.associatedfile)))
    if params.offset is not None:
        pairs.append(("offset", str(params.offset)))
    if params.timestamp is not None:
        pairs.append(("timestamp", str(params.timestamp)))
    if params.lockid is not None:
        pairs.append(("lockid", encode_value(params.lockid)))
    if params.data_present:
        pairs.append(("data-present", "true"))
    return "&".join(f"{quote(n, safe='')}={quote(v, safe='')}" for n, v in pairs)


# -- headers ----------------------------------------------------------------------


def parse_data_length(value: str | None) -> int | None:
    """``X-git-annex-data-length``: None when absent, ``HttpApiError`` when malformed."""
    if value is None:
        return None
    value = value.strip()
    if not _NUM_RE.fullmatch(value):
        raise HttpApiError(f"{DATA_LENGTH} must be a decimal number, not {value[:40]!r}")
    return int(value)


def parse_basic_auth(header: str | None) -> tuple[str, str] | None:
    """(user, password) of an ``Authorization: Basic`` header (UTF-8, as the spec
    says); None when there is none or it is not basic auth or is malformed."""
    if not header:
        return None
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(rest.strip().encode("ascii"), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep:
        return None
    return user, password


def basic_auth(user: str, password: str) -> str:
    """The ``Authorization`` header's value for ``user`` and ``password``."""
    raw = f"{user}:{password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def challenge() -> str:
    """The ``WWW-Authenticate`` header's value of a 401."""
    return f'Basic realm="{REALM}", charset="UTF-8"'


# -- JSON bodies ------------------------------------------------------------------


@dataclass(frozen=True)
class CheckPresentResult:
    present: bool


@dataclass(frozen=True)
class RemoveResult:
    removed: bool
    plusuuids: tuple[str, ...] = ()


@dataclass(frozen=True)
class PutResult:
    stored: bool
    plusuuids: tuple[str, ...] = ()


@dataclass(frozen=True)
class PutOffsetResult:
    """``offset`` to continue at, or ``alreadyhave`` (then ``offset`` is None)."""

    offset: int | None
    alreadyhave: bool = False
    plusuuids: tuple[str, ...] = ()


@dataclass(frozen=True)
class LockResult:
    locked: bool
    lockid: str | None = None


@dataclass(frozen=True)
class GetTimestampResult:
    timestamp: int


@dataclass(frozen=True)
class UnlockRequest:
    unlock: bool


Answer = (
    CheckPresentResult
    | RemoveResult
    | PutResult
    | PutOffsetResult
    | LockResult
    | GetTimestampResult
    | UnlockRequest
)


def render(answer: Answer, version: int = MAX_VERSION) -> bytes:
    """The JSON body of ``answer`` as the API at ``version`` has it (``plusuuids`` from
    v2 on, and only where the answer type has it)."""
    plus = version >= 2
    obj: dict[str, Any]
    if isinstance(answer, CheckPresentResult):
        obj = {"present": answer.present}
    elif isinstance(answer, RemoveResult):
        obj = {"removed": answer.removed}
        if plus:
            obj["plusuuids"] = list(answer.plusuuids)
    elif isinstance(answer, PutResult):
        obj = {"stored": answer.stored}
        if plus:
            obj["plusuuids"] = list(answer.plusuuids)
    elif isinstance(answer, PutOffsetResult):
        if answer.alreadyhave:
            obj = {"alreadyhave": True}
            if plus:
                obj["plusuuids"] = list(answer.plusuuids)
        else:
            obj = {"offset": answer.offset}
    elif isinstance(answer, LockResult):
        obj = {"locked": answer.locked}
        if answer.lockid is not None:
            obj["lockid"] = encode_value(answer.lockid)
    elif isinstance(answer, GetTimestampResult):
        obj = {"timestamp": answer.timestamp}
    else:
        obj = {"unlock": answer.unlock}
    return json.dumps(obj, separators=(",", ":")).encode()


def _object(body: bytes | str, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise HttpApiError(f"{what}: not JSON: {_show(body)}") from None
    if not isinstance(obj, dict):
        raise HttpApiError(f"{what}: not a JSON object: {_show(body)}")
    return obj


def _show(body: bytes | str) -> str:
    text = body if isinstance(body, str) else body.decode("utf-8", "replace")
    return repr(text[:200])


def _bool(obj: dict[str, Any], name: str, what: str) -> bool:
    value = obj.get(name)
    if not isinstance(value, bool):
        raise HttpApiError(f"{what}: field {name!r} must be true or false")
    return value


def _uuids(obj: dict[str, Any], what: str) -> tuple[str, ...]:
    value = obj.get("plusuuids", [])
    if not isinstance(value, list) or not all(isinstance(u, str) for u in value):
        raise HttpApiError(f"{what}: plusuuids must be a list of strings")
    return tuple(decode_uuid(u) for u in value)


def parse_checkpresent(body: bytes | str) -> CheckPresentResult:
    return CheckPresentResult(_bool(_object(body, "checkpresent"), "present", "checkpresent"))


def parse_remove(body: bytes | str) -> RemoveResult:
    obj = _object(body, "remove")
    return RemoveResult(_bool(obj, "removed", "remove"), _uuids(obj, "remove"))


def parse_put(body: bytes | str) -> PutResult:
    obj = _object(body, "put")
    return PutResult(_bool(obj, "stored", "put"), _uuids(obj, "put"))


def parse_putoffset(body: bytes | str) -> PutOffsetResult:
    obj = _object(body, "putoffset")
    offset = obj.get("offset")
    if isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0:
        return PutOffsetResult(offset)
    if obj.get("alreadyhave") is True:
        return PutOffsetResult(None, True, _uuids(obj, "putoffset"))
    raise HttpApiError(f"putoffset: neither an offset nor alreadyhave: {_show(body)}")


def parse_lock(body: bytes | str) -> LockResult:
    obj = _object(body, "lockcontent")
    lockid = obj.get("lockid")
    if lockid is not None and not isinstance(lockid, str):
        raise HttpApiError("lockcontent: lockid must be a string")
    locked = _bool(obj, "locked", "lockcontent")
    return LockResult(locked, None if lockid is None else decode_text(lockid))


def parse_timestamp(body: bytes | str) -> GetTimestampResult:
    value = _object(body, "gettimestamp").get("timestamp")
    if not isinstance(value, int) or isinstance(value, bool):
        raise HttpApiError("gettimestamp: timestamp must be a number")
    return GetTimestampResult(value)


def parse_unlock(line: bytes | str) -> UnlockRequest:
    """One line of keeplocked's request body."""
    return UnlockRequest(_bool(_object(line, "keeplocked"), "unlock", "keeplocked"))


@dataclass
class LineSplitter:
    """keeplocked's request body is newline-framed JSON: feed bytes, get whole lines
    (bounded: a line longer than ``limit`` is an error)."""

    limit: int = 4096
    pending: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[bytes]:
        self.pending += data
        lines = []
        while (nl := self.pending.find(b"\n")) >= 0:
            line = bytes(self.pending[:nl]).strip()
            del self.pending[: nl + 1]
            if line:
                lines.append(line)
        if len(self.pending) > self.limit:
            raise HttpApiError("keeplocked: a line of the request body is too long")
        return lines

    def end(self) -> list[bytes]:
        """The last line, when the body ended without a newline."""
        line, self.pending = bytes(self.pending).strip(), bytearray()
        return [line] if line else []
