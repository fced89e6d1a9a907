"""``annex+http://host[:port]/git-annex/UUID`` and ``annex+https://...`` nodes: git-annex
repositories served over git-annex's HTTP API (``git annex p2phttp``, or our gateway's
``git-annex-remote-proxy http``).

The URL is what git-annex's ``remote.NAME.annexUrl`` holds (``annex+https://host/git-annex/``,
port 9417 when none is given, any path before ``/git-annex/`` kept, as behind a reverse
proxy) followed by the UUID of the repository (or cluster, or gateway target) the server
serves: the requests go to ``/git-annex/UUID/v4/...``. ``?uuid=UUID`` after the
annexUrl says the same. The wire format is ``shared.p2p.httpapi``.

- The protocol version is the highest both sides have (v4 down to v0), found once per
  process: a 404 or 400 at a version means "try an earlier one"; 404 at every version
  means the server serves no repository of that UUID.
- One connection pool per node (urllib3), kept for every request of the process.
- TLS certificates are verified against the system's CAs (``SSL_CERT_FILE`` adds a file
  of them); a certificate that does not verify is an error, never a warning.
- When the server answers 401, credentials come from ``git credential fill`` with the
  annexUrl (``annex+https://host/git-annex/``) as git-annex's client asks for them, so
  both find what either stored; ``approve`` after they worked, ``reject`` when the
  server refused them. A password in the node URL is refused; a username is handed to
  ``git credential``.
- A server that cannot be reached, times out or answers 5xx is ``Unavailable`` (never
  "absent"); 403 is ``PermissionDenied``.
- Stores ask ``putoffset`` first: a key already there is not sent again, and the bytes
  an interrupted upload left in the repository are not sent twice (the source is read
  past them). The repository verifies what it receives, as over ssh.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import SSLError as Urllib3SSLError

from shared.annex.keys import Key
from shared.errors import (
    ConfigError,
    IntegrityError,
    NodeError,
    NotFound,
    PermissionDenied,
    Unavailable,
    Unsupported,
)
from shared.nodes.base import EXPENSIVE_COST, UNKNOWN_SIZE, ExactSource, KnownKeys, Node
from shared.nodes.url import NodeSpec
from shared.p2p import httpapi
from shared.p2p.httpapi import Params
from shared.streams import BLOCK, Readable, Writable
from shared.transport import gitcredential

SCHEMES = ("annex+http", "annex+https")
ANONYMOUS_UUID = "00000000-0000-0000-0000-000000000000"
CONNECT_TIMEOUT = 20.0
IO_TIMEOUT = 60.0
VERIFY_RATE = 50 * 1024 * 1024  # bytes/s we allow the server for hashing what it received
POOL_SIZE = 8  # connections kept per node (the cluster's fan-out and -J)
# Asked for when negotiating the version: any key will do, the answer is not used.
_PROBE = Key.parse("SHA256E-s0--e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
_UUID_RE = re.compile(r"[^\s/?#\[\]]{1,128}")
_PARAMS = ("uuid",)
_FORM = "annex+https://host[:port]/git-annex/UUID"


@dataclass(frozen=True)
class HttpTarget:
    """Where a node's requests go."""

    scheme: str  # "http" or "https"
    netloc: str  # as written (user@host:port), for the credential URL
    host: str
    port: int
    prefix: str  # the path before /git-annex, "" for most servers
    uuid: str
    username: str | None

    @property
    def origin(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def annex_url(self) -> str:
        """The annexUrl, as git-annex's client hands it to git credential."""
        return f"annex+{self.scheme}://{self.netloc}{self.prefix}/{httpapi.PREFIX}/"

    @property
    def public(self) -> str:
        """The annexUrl without the user, for messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if self.port == httpapi.DEFAULT_PORT else f":{self.port}"
        return f"annex+{self.scheme}://{host}{port}{self.prefix}/{httpapi.PREFIX}/"


def parse_http_url(spec: NodeSpec) -> HttpTarget:
    parts = urlsplit(spec.url)
    unknown = sorted(set(spec.params) - set(_PARAMS))
    if unknown:
        raise ConfigError(
            f"node {spec.name}: unknown parameter(s) for {parts.scheme}:// nodes: "
            + ", ".join(unknown)
            + " (known: uuid)"
        )
    if not parts.hostname:
        raise ConfigError(f"node {spec.name}: {parts.scheme}:// URL needs a host: {_FORM}")
    if parts.password is not None:
        raise ConfigError(
            f"node {spec.name}: do not put a password in the node URL; git credential "
            "supplies it (git credential approve, or a credential helper)"
        )
    try:
        port = parts.port or httpapi.DEFAULT_PORT
    except ValueError as e:
        raise ConfigError(f"node {spec.name}: invalid port in {spec.url!r}") from e
    segments = [unquote(s) for s in parts.path.split("/")]
    while segments and segments[-1] == "":
        segments.pop()
    given = spec.params.get("uuid") or None
    if segments and segments[-1] == httpapi.PREFIX:
        uuid, prefix = given, segments[:-1]
    elif len(segments) >= 2 and segments[-2] == httpapi.PREFIX:
        uuid, prefix = segments[-1], segments[:-2]
        if given is not None and given != uuid:
            raise ConfigError(
                f"node {spec.name}: the URL names repository {uuid} and uuid= {given}: give it once"
            )
    else:
        raise ConfigError(f"node {spec.name}: {parts.scheme}:// URL is {_FORM}")
    if not uuid:
        raise ConfigError(
            f"node {spec.name}: the URL needs the repository's UUID after /git-annex/: "
            f"{_FORM} (git config annex.uuid in the repository)"
        )
    if not _UUID_RE.fullmatch(uuid):
        raise ConfigError(f"node {spec.name}: {uuid!r} is not a repository UUID")
    netloc = parts.netloc.rpartition("@")[2]
    user = unquote(parts.username) if parts.username else None
    if user:
        netloc = f"{parts.username}@{netloc}"
    return HttpTarget(
        scheme=parts.scheme.removeprefix("annex+"),
        netloc=netloc,
        host=parts.hostname,
        port=port,
        prefix="/".join(quote(s, safe="") for s in prefix),
        uuid=uuid,
        username=user,
    )


class _Retry(Exception):
    """The server does not have this protocol version: try an earlier one."""


class HTTPNode(Node):
    """A git-annex repository reached through git-annex's HTTP API."""

    default_cost = EXPENSIVE_COST

    def __init__(
        self,
        spec: NodeSpec,
        client_uuid: str | None = None,
        pool: urllib3.PoolManager | None = None,
    ) -> None:
        super().__init__(spec)
        self.target = parse_http_url(spec)
        self.client_uuid = client_uuid or ANONYMOUS_UUID
        #: gateways not to reach (BYPASS, v2+), set before the first request
        self.bypass: tuple[str, ...] = ()
        #: "git-annex repository" or "gateway": how messages name the server's side
        self.peer = "git-annex repository"
        self._http = pool or urllib3.PoolManager(
            num_pools=2, maxsize=POOL_SIZE, block=False, retries=False
        )
        self._lock = threading.Lock()
        self._cred: gitcredential.Credential | None = None
        self._approved = False
        self.version: int | None = None  # negotiated

    @property
    def uuid(self) -> str | None:
        return self.target.uuid

    @property
    def where(self) -> str:
        return f"{self.peer} {self.target.uuid} at {self.target.public}"

    # -- requests -----------------------------------------------------------

    def _url(self, version: int | None, op: str, key: Key | None, params: Params) -> str:
        path = httpapi.path(self.target.uuid, version, op, key if op == httpapi.GET else None)
        query = httpapi.render_query(params)
        return f"{self.target.origin}{self.target.prefix}{path}?{query}"

    def _params(self, version: int, key: Key | None = None, **more: Any) -> Params:
        bypass = self.bypass if version >= 2 else ()
        return Params(clientuuid=self.client_uuid, bypass=bypass, key=key, **more)

    def _headers(self) -> dict[str, str]:
        with self._lock:
            cred = self._cred
        if cred is None:
            return {}
        return {"Authorization": httpapi.basic_auth(cred.username, cred.password)}

    def _send(
        self,
        what: str,
        method: str,
        url: str,
        *,
        body: Any = None,
        headers: dict[str, str] | None = None,
        stream: bool = False,
        read_timeout: float = IO_TIMEOUT,
    ) -> urllib3.BaseHTTPResponse:
        try:
            return self._http.request(
                method,
                url,
                body=body,
                headers={**self._headers(), **(headers or {})},
                preload_content=not stream,
                redirect=False,
                retries=False,
                timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=read_timeout),
            )
        except Urllib3SSLError as e:
            raise Unavailable(
                f"{what}: the TLS connection to {self.target.public} failed ({_reason(e)}); "
                "check the server's certificate, or add its CA with SSL_CERT_FILE",
                self.name,
            ) from None
        except Urllib3Error as e:
            raise Unavailable(
                f"{what}: cannot reach {self.target.public}: {_reason(e)}", self.name
            ) from None

    def _call(
        self,
        what: str,
        method: str,
        op: str,
        key: Key | None = None,
        *,
        version: int | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
        stream: bool = False,
        read_timeout: float = IO_TIMEOUT,
        **params: Any,
    ) -> urllib3.BaseHTTPResponse:
        """One request at the negotiated version (or ``version``), authenticating on a
        401 as git-annex does; errors as our types. ``_Retry`` while negotiating."""
        v = self._version() if version is None else version
        url = self._url(v, op, key, self._params(v, key if op != httpapi.GET else None, **params))
        for _ in range(2):
            r = self._send(
                what,
                method,
                url,
                body=body,
                headers=headers,
                stream=stream,
                read_timeout=read_timeout,
            )
            if r.status == 401 and body is None:  # a body cannot be sent again
                self._authenticate(what, r)
                continue
            self._check_status(what, r, negotiating=version is not None)
            return r
        raise AssertionError("unreachable")

    def _authenticate(self, what: str, r: urllib3.BaseHTTPResponse) -> None:
        _discard(r)
        with self._lock:
            if self._cred is not None:
                cred, self._cred = self._cred, None
                gitcredential.reject(cred)
                raise PermissionDenied(
                    f"{what}: {self.target.public} refused the credentials of user "
                    f"{cred.username!r} (401); fix them with git credential (the helper "
                    "that stored them), then try again",
                    self.name,
                )
            try:
                self._cred = gitcredential.fill(
                    self.target.annex_url,
                    r.headers.getlist("WWW-Authenticate"),
                    self.target.username,
                )
            except gitcredential.CredentialError as e:
                raise PermissionDenied(
                    f"{what}: {self.target.public} needs a username and password (401), "
                    f"and {e}; store them for {self.target.annex_url} with git credential "
                    "approve or a credential helper",
                    self.name,
                ) from None
            self._approved = False

    def _check_status(self, what: str, r: urllib3.BaseHTTPResponse, negotiating: bool) -> None:
        status = r.status
        if 200 <= status < 300:
            with self._lock:
                if self._cred is not None and not self._approved:
                    self._approved = True
                    gitcredential.approve(self._cred)
            return
        detail = _body_text(r)
        if negotiating and status in (400, 404):
            raise _Retry
        if status == 401:
            raise PermissionDenied(f"{what}: {self.target.public} wants credentials (401)")
        if status == 403:
            user = self._cred.username if self._cred is not None else None
            who = f"user {user!r}" if user else "access without credentials"
            raise PermissionDenied(
                f"{what}: {self.where} refused it (403 forbidden): {who} may not do that "
                "there; ask the server's operator for that permission",
                self.name,
            )
        if status == 404:
            raise Unavailable(
                f"{what}: {self.target.public} no longer serves repository {self.target.uuid} "
                "(404)",
                self.name,
            )
        if status >= 500:
            raise Unavailable(
                f"{what}: {self.target.public} failed ({status} {r.reason or ''}"
                + (f": {detail}" if detail else "")
                + "); try again later, or see the server's log",
                self.name,
            )
        if 300 <= status < 400:
            raise Unavailable(
                f"{what}: {self.target.public} redirects ({status}) to "
                f"{r.headers.get('Location', '?')!r}; use that URL for the node",
                self.name,
            )
        raise NodeError(
            f"{what}: {self.where} answered {status} {r.reason or ''}"
            + (f": {detail}" if detail else ""),
            self.name,
        )

    def _version(self) -> int:
        """The highest version both sides have, found once (a checkpresent per version)."""
        if self.version is not None:
            return self.version
        for v in range(httpapi.MAX_VERSION, -1, -1):
            try:
                self._call("connecting", "POST", httpapi.CHECKPRESENT, _PROBE, version=v)
            except _Retry:
                continue
            self.version = v
            return v
        raise Unavailable(
            f"{self.target.public} serves no repository {self.target.uuid} (404 at every "
            "protocol version); check the UUID in the node URL (git config annex.uuid "
            "in the repository)",
            self.name,
        )

    def _json(self, what: str, r: urllib3.BaseHTTPResponse, parse: Any) -> Any:
        try:
            return parse(r.data)
        except httpapi.HttpApiError as e:
            raise Unavailable(
                f"{what}: {self.target.public} answered wrongly: {e}", self.name
            ) from e

    # -- Node interface -----------------------------------------------------

    def check(self) -> None:
        self._version()

    def _present(self, key: Key, what: str) -> bool:
        r = self._call(what, "POST", httpapi.CHECKPRESENT, key)
        result: httpapi.CheckPresentResult = self._json(what, r, httpapi.parse_checkpresent)
        return result.present

    def present(self, key: Key) -> int | None:
        if not self._present(key, f"checking {key}"):
            return None
        size = key.content_size
        return UNKNOWN_SIZE if size is None else size

    def store(self, key: Key, source: Readable, size: int) -> bool:
        what = f"storing {key}"
        if key.is_chunk and (key.size is not None or key.new_hash() is not None):
            raise IntegrityError(
                f"{key} is a chunk of unencrypted content, which a git-annex repository "
                "refuses (it does not match its key); use encryption= with chunk=, or no chunk=",
                self.name,
            )
        offset = 0
        if self._version() >= 1:
            answer = self._putoffset(key, what)
            if answer.alreadyhave:
                return False
            offset = min(answer.offset or 0, size)
        elif self._present(key, what):
            return False
        exact = _Exact(source, size, key, self.name)
        _skip(exact, offset)
        length = size - offset
        if length == 0 and exact.source.read(1):  # the empty body would be complete
            raise IntegrityError(f"received more bytes for {key} than its size", self.name)
        r = self._call(
            what,
            "POST",
            httpapi.PUT,
            key,
            body=exact.blocks(),
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Length": str(length),
                httpapi.DATA_LENGTH: str(length),
            },
            read_timeout=IO_TIMEOUT + size / VERIFY_RATE,
            offset=offset or None,
        )
        result: httpapi.PutResult = self._json(what, r, httpapi.parse_put)
        if not result.stored:
            raise IntegrityError(
                f"{what}: {self.where} did not accept the content (it does not match the "
                "key, or the repository could not store it)",
                self.name,
            )
        return True

    def _putoffset(self, key: Key, what: str) -> httpapi.PutOffsetResult:
        """``putoffset``. git annex p2phttp answers 500 while it still holds the transfer
        lock of an upload whose client went away, for a few seconds: ``Unavailable``
        then, before anything of the source was read, so the retry wrapper tries the
        store again (``store_patience``)."""
        r = self._call(what, "POST", httpapi.PUTOFFSET, key)
        answer: httpapi.PutOffsetResult = self._json(what, r, httpapi.parse_putoffset)
        return answer

    def retrieve(self, key: Key, sink: Writable, offset: int = 0) -> None:
        what = f"reading {key}"
        r = self._call(what, "GET", httpapi.GET, key, stream=True, offset=offset or None)
        got, done = 0, False
        try:
            length = httpapi.parse_data_length(r.headers.get(httpapi.DATA_LENGTH))
            for block in r.stream(BLOCK):
                sink.write(block)
                got += len(block)
            done = True
        except (Urllib3Error, OSError) as e:
            raise Unavailable(
                f"{what}: the download from {self.target.public} broke: {_reason(e)}", self.name
            ) from None
        except httpapi.HttpApiError as e:
            raise Unavailable(
                f"{what}: {self.target.public} answered wrongly: {e}", self.name
            ) from None
        finally:
            if not done:  # the rest of the body is not wanted: never reuse the connection
                r.close()
            r.release_conn()
        expected = key.content_size
        valid = length is None or got == length
        whole = expected is None or offset + got == expected or offset >= expected
        if valid and whole and got > 0:
            return
        if got == 0:  # an absent key is an empty answer from git-annex p2phttp
            if not self._present(key, what):
                raise NotFound(f"{key} is not in {self.where}", self.name)
            if valid and whole:
                return
        raise IntegrityError(
            f"{key} changed or was cut short while read from {self.where} ({got} bytes)",
            self.name,
        )

    def remove(self, key: Key) -> None:
        what = f"removing {key}"
        r = self._call(what, "POST", httpapi.REMOVE, key)
        result: httpapi.RemoveResult = self._json(what, r, httpapi.parse_remove)
        if not result.removed:
            raise NodeError(
                f"{self.where} did not remove {key} (it may be locked by a running "
                "git-annex, or the repository could not be written)",
                self.name,
            )

    def list_names(self) -> Iterator[str]:
        self._version()  # a repository that is not there: Unavailable, as for any request
        raise Unsupported(
            "a repository served over HTTP cannot be listed, only asked about keys", self.name
        )

    def list_keys(self, known: KnownKeys | None = None) -> Iterator[Key]:
        """The API cannot list: the ``known`` keys the repository holds, asked one by
        one (``checkpresent`` over the one kept connection)."""
        if known is None:
            yield from (Key.parse(name) for name in self.list_names())
            return
        for key in known():
            if self._present(key, f"checking {key}"):
                yield key

    def close(self) -> None:
        self._http.clear()


class _Exact(ExactSource):
    """The source, refusing (before the server could commit) anything but exactly
    ``size`` bytes: a short or long source breaks off the request body."""

    def blocks(self) -> Iterator[bytes]:
        while block := self.read(BLOCK):
            # The last bytes complete the request: a longer source must fail before.
            if self.left == 0 and self.source.read(1):
                raise IntegrityError(f"received more bytes for {self.key} than its size", self.node)
            yield block
        if self.left:
            raise IntegrityError(
                f"received {self.left} bytes fewer for {self.key} than its size", self.node
            )


def _skip(source: _Exact, n: int) -> None:
    """Read past the bytes the server already has."""
    while n > 0:
        block = source.read(min(n, BLOCK))
        if not block:
            raise IntegrityError(
                f"the source of {source.key} ended before the resume offset", source.node
            )
        n -= len(block)


def _discard(r: urllib3.BaseHTTPResponse) -> None:
    try:
        r.drain_conn()
    except Exception:
        r.close()
    r.release_conn()


def _body_text(r: urllib3.BaseHTTPResponse) -> str:
    """The first line of an error answer's body, short, for a message."""
    try:
        data = r.data[:300] if r.data else b""
    except Exception:
        data = b""
    text = " ".join(data.decode("utf-8", "replace").split())
    return text[:200]


def _reason(e: BaseException) -> str:
    """One line: the innermost reason urllib3 gives, without URLs' queries."""
    reason = getattr(e, "reason", None) or e
    text = " ".join(str(reason).split())
    text = re.sub(r"\?[^\s)'\"]*", "", text)  # query strings name keys and client UUIDs
    return text[:300] or type(e).__name__
