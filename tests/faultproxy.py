"""A fault-injecting HTTP/1.1 proxy on 127.0.0.1, for failure tests of HTTP clients (boto3).

Point the client at :attr:`FaultProxy.url` instead of the server; every request is relayed
to the upstream unless a rule added with :meth:`FaultProxy.add_rule` matches it first::

    with FaultProxy("127.0.0.1", s3.port) as proxy:
        client = s3.client(proxy.url)
        proxy.add_rule(method="PUT", query_contains="partNumber=2", action="cut_request",
                       after_bytes=1000)

Actions: ``"status"`` answers at once with an S3 XML error (``status``, ``code``,
``message``) and never reaches the upstream; ``"cut_request"`` relays the request head
and the first ``after_bytes`` body bytes, then drops both connections; ``"cut_response"``
relays the request, the response head and the first ``after_bytes`` body bytes, then drops
the client connection; ``"delay"`` sleeps ``seconds`` before relaying as usual. Dropping
is a TCP reset unless the rule says ``rst=False`` (then an orderly FIN, which a client sees
as a short read). A rule fires ``times`` times (``None``: for ever), rules are tried in
the order they were added, and :meth:`FaultProxy.clear` removes them all.

Client connections are kept alive (bodies framed by Content-Length or chunked transfer
coding, none for HEAD/1xx/204/304) whatever the upstream does: each one gets its own
upstream connection, opened again whenever the upstream closes it. ``Expect:
100-continue`` is answered by the proxy itself and not passed on; other interim (1xx)
answers of the upstream are dropped. Everything is plain stdlib: one daemon thread
listens, one per client connection relays.
"""

from __future__ import annotations

import contextlib
import fcntl
import selectors
import socket
import struct
import termios
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.client import responses
from types import TracebackType
from typing import BinaryIO, Literal, NamedTuple

Action = Literal["status", "cut_request", "cut_response", "delay"]
ACTIONS: tuple[str, ...] = ("status", "cut_request", "cut_response", "delay")
BLOCK = 64 * 1024
MAX_LINE = 64 * 1024
MAX_HEADERS = 200

# S3's own words for the errors a test is likely to inject.
S3_ERRORS: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "An error occurred when parsing the HTTP request."),
    403: ("AccessDenied", "Access Denied"),
    404: ("NoSuchKey", "The specified key does not exist."),
    408: (
        "RequestTimeout",
        "Your socket connection to the server was not read from or "
        "written to within the timeout period.",
    ),
    500: ("InternalError", "We encountered an internal error. Please try again."),
    501: ("NotImplemented", "A header you provided implies functionality that is not implemented."),
    503: ("SlowDown", "Please reduce your request rate."),
}


class Logged(NamedTuple):
    """One request as the proxy saw it: ``result`` is the status the client got, or the
    name of the action that cut the connection (``"cut_request"``, ``"cut_response"``,
    ``"upstream_error"``)."""

    method: str
    path: str  # the request target, query string included
    result: int | str

    @property
    def query(self) -> str:
        return self.path.partition("?")[2]


@dataclass
class Rule:
    """What :meth:`FaultProxy.add_rule` made; ``fired`` counts the requests it hit."""

    method: str | None
    path_contains: str | None
    query_contains: str | None
    action: Action
    times: int | None = 1
    status: int = 503
    code: str | None = None
    message: str | None = None
    after_bytes: int = 0
    seconds: float = 0.0
    rst: bool = True
    fired: int = 0
    hits: list[str] = field(default_factory=list)

    def matches(self, method: str, path: str, query: str) -> bool:
        if self.times is not None and self.fired >= self.times:
            return False
        if self.method is not None and self.method.upper() != method.upper():
            return False
        if self.path_contains is not None and self.path_contains not in path:
            return False
        return self.query_contains is None or self.query_contains in query

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.fired >= self.times


class _Cut(Exception):
    """Raised to end a connection abruptly after a rule's byte budget is spent."""


class _Closed(Exception):
    """The peer closed the connection (or sent something that is not HTTP)."""


class Headers:
    """Header lines in their order and spelling, with case-insensitive lookup."""

    def __init__(self, lines: list[tuple[str, str]]) -> None:
        self.lines = lines

    def get(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        for k, v in self.lines:
            if k.lower() == name:
                return v
        return default

    def tokens(self, name: str) -> list[str]:
        name = name.lower()
        return [
            t.strip().lower()
            for k, v in self.lines
            if k.lower() == name
            for t in v.split(",")
            if t.strip()
        ]

    def without(self, *names: str) -> Headers:
        drop = {n.lower() for n in names}
        return Headers([(k, v) for k, v in self.lines if k.lower() not in drop])

    def with_(self, name: str, value: str) -> Headers:
        return Headers([*self.without(name).lines, (name, value)])

    def encode(self) -> bytes:
        return b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in self.lines) + b"\r\n"


def _read_line(rd: BinaryIO, *, eof_ok: bool = False) -> bytes | None:
    line = rd.readline(MAX_LINE + 1)
    if not line:
        if eof_ok:
            return None
        raise _Closed("connection closed")
    if len(line) > MAX_LINE or not line.endswith(b"\n"):
        raise _Closed("line too long or truncated")
    return line


def _read_head(rd: BinaryIO) -> tuple[str, Headers] | None:
    """First line and headers of a message; None on a clean EOF before it starts."""
    first = _read_line(rd, eof_ok=True)
    while first is not None and first in (b"\r\n", b"\n"):  # tolerate stray CRLFs
        first = _read_line(rd, eof_ok=True)
    if first is None:
        return None
    lines: list[tuple[str, str]] = []
    while True:
        line = _read_line(rd)
        assert line is not None
        if line in (b"\r\n", b"\n"):
            break
        if len(lines) >= MAX_HEADERS or b":" not in line:
            raise _Closed(f"bad header line {line[:80]!r}")
        k, _, v = line.decode("latin-1").partition(":")
        lines.append((k.strip(), v.strip()))
    return first.decode("latin-1").rstrip("\r\n"), Headers(lines)


class _Sink:
    """Where body bytes go: a socket, or nowhere; optionally only the first ``limit``."""

    def __init__(self, sock: socket.socket | None, limit: int | None = None) -> None:
        self.sock = sock
        self.limit = limit
        self.sent = 0

    def write(self, data: bytes) -> None:
        if self.limit is not None:
            data = data[: max(0, self.limit - self.sent)]
        if data and self.sock is not None:
            self.sock.sendall(data)
        self.sent += len(data)
        if self.limit is not None and self.sent >= self.limit:
            raise _Cut


def _relay_exact(rd: BinaryIO, sink: _Sink, n: int) -> None:
    while n > 0:
        data = rd.read(min(n, BLOCK))
        if not data:
            raise _Closed("body cut short")
        n -= len(data)
        sink.write(data)


def _relay_chunked(rd: BinaryIO, sink: _Sink) -> None:
    while True:
        line = _read_line(rd)
        assert line is not None
        sink.write(line)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError as e:
            raise _Closed(f"bad chunk size {line[:40]!r}") from e
        if size == 0:
            while True:  # trailer fields, then the empty line
                trailer = _read_line(rd)
                assert trailer is not None
                sink.write(trailer)
                if trailer in (b"\r\n", b"\n"):
                    return
        _relay_exact(rd, sink, size + 2)  # the data and its CRLF


def _relay_to_eof(rd: BinaryIO, sink: _Sink) -> None:
    while data := rd.read(BLOCK):
        sink.write(data)


def _framing(headers: Headers) -> tuple[str, int]:
    """How a body is delimited: ("chunked", 0), ("length", n) or ("eof", 0)."""
    if "chunked" in headers.tokens("Transfer-Encoding"):
        return "chunked", 0
    length = headers.get("Content-Length")
    if length is not None:
        try:
            n = int(length)
        except ValueError as e:
            raise _Closed(f"bad Content-Length {length!r}") from e
        if n < 0:
            raise _Closed(f"bad Content-Length {length!r}")
        return "length", n
    return "eof", 0


def _relay_body(rd: BinaryIO, sink: _Sink, framing: tuple[str, int]) -> None:
    kind, n = framing
    if kind == "chunked":
        _relay_chunked(rd, sink)
    elif kind == "length":
        _relay_exact(rd, sink, n)
    else:
        _relay_to_eof(rd, sink)


def _unsent(sock: socket.socket) -> int:
    """Bytes still in the kernel's send queue (Linux SIOCOUTQ); 0 if unknown."""
    try:
        buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        return int(struct.unpack("i", buf)[0])
    except OSError:
        return 0


def _abort(sock: socket.socket | None, *, rst: bool, drain: float = 2.0) -> None:
    """Close ``sock`` at once: a TCP reset (after what was sent has left), or a FIN."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        deadline = time.monotonic() + drain
        while _unsent(sock) and time.monotonic() < deadline:
            time.sleep(0.005)
        if rst:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


def s3_error_body(code: str, message: str, resource: str = "") -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<Resource>{resource}</Resource><RequestId>FAULTPROXY</RequestId></Error>"
    ).encode()


class _Conn:
    """One client connection and the upstream connection that serves it."""

    def __init__(self, proxy: FaultProxy, client: socket.socket) -> None:
        self.proxy = proxy
        self.client: socket.socket | None = client
        self.crd: BinaryIO = client.makefile("rb")
        self.upstream: socket.socket | None = None
        self.urd: BinaryIO | None = None

    # -- sockets ---------------------------------------------------------------

    def _connect_upstream(self) -> tuple[socket.socket, BinaryIO]:
        if self.upstream is None or self.urd is None:
            sock = socket.create_connection(
                (self.proxy.upstream_host, self.proxy.upstream_port), timeout=60
            )
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.proxy._track(sock)
            self.upstream, self.urd = sock, sock.makefile("rb")
        return self.upstream, self.urd

    def _drop_upstream(self, *, rst: bool = False) -> None:
        sock, self.upstream = self.upstream, None
        if self.urd is not None:
            with contextlib.suppress(OSError):
                self.urd.close()
            self.urd = None
        self._drop(sock, rst)

    def close(self, *, rst: bool = False) -> None:
        self._drop_upstream(rst=rst)
        sock, self.client = self.client, None
        with contextlib.suppress(OSError):
            self.crd.close()
        self._drop(sock, rst)

    def _drop(self, sock: socket.socket | None, rst: bool) -> None:
        """Close one of our two sockets: with a TCP reset, or an orderly close."""
        if sock is None:
            return
        self.proxy._untrack(sock)
        if rst:
            _abort(sock, rst=True)
        else:
            with contextlib.suppress(OSError):
                sock.close()

    def _send(self, data: bytes) -> None:
        assert self.client is not None
        self.client.sendall(data)

    # -- requests --------------------------------------------------------------

    def serve(self) -> None:
        try:
            while not self.proxy._stopping.is_set():
                head = _read_head(self.crd)
                if head is None:
                    break
                if not self._handle(*head):
                    break
        except (_Closed, _Cut, OSError, ValueError):
            pass
        finally:
            self.close()

    def _handle(self, request_line: str, headers: Headers) -> bool:
        """Serve one request; False when the client connection must be closed."""
        parts = request_line.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            raise _Closed(f"bad request line {request_line!r}")
        method, target, version = parts
        path, _, query = target.partition("?")
        rule = self.proxy._match(method, path, query, target)
        framing = _framing(headers)
        if framing[0] == "eof":  # a request without framing has no body
            framing = ("length", 0)
        keep_alive = "close" not in headers.tokens("Connection") and (
            version != "HTTP/1.0" or "keep-alive" in headers.tokens("Connection")
        )
        expect = "100-continue" in headers.tokens("Expect")
        action = rule.action if rule is not None else None

        if rule is not None and action == "status":
            return self._answer_status(rule, method, target, framing, expect, keep_alive)
        if rule is not None and action == "delay":
            self.proxy._stopping.wait(rule.seconds)

        try:
            upstream, urd = self._connect_upstream()
        except OSError:  # the server is down: the client sees its connection dropped
            self.proxy._log(method, target, "upstream_error")
            self.close(rst=True)
            return False
        if expect:
            self._send(b"HTTP/1.1 100 Continue\r\n\r\n")
        out = headers.without("Expect", "Connection", "Keep-Alive", "Proxy-Connection")
        upstream.sendall(f"{request_line}\r\n".encode("latin-1") + out.encode())

        if rule is not None and action == "cut_request":
            self.proxy._log(method, target, "cut_request")
            with contextlib.suppress(_Cut):
                _relay_body(self.crd, _Sink(upstream, rule.after_bytes), framing)
            self.close(rst=rule.rst)
            return False
        _relay_body(self.crd, _Sink(upstream), framing)

        while True:
            head = _read_head(urd)
            if head is None:
                raise _Closed("upstream closed before answering")
            status_line, rheaders = head
            rparts = status_line.split(None, 2)
            if len(rparts) < 2 or not rparts[1].isdigit():
                raise _Closed(f"bad status line {status_line!r}")
            status = int(rparts[1])
            if 100 <= status < 200:  # 100 answered ourselves; others confuse http.client
                continue
            break

        upstream_keeps = "close" not in rheaders.tokens("Connection") and rparts[0] != "HTTP/1.0"
        no_body = method.upper() == "HEAD" or status in (204, 304)
        rframing = ("length", 0) if no_body else _framing(rheaders)
        if rframing[0] == "eof":
            keep_alive = upstream_keeps = False
        out_headers = rheaders.without("Connection", "Keep-Alive")
        out_headers = out_headers.with_("Connection", "keep-alive" if keep_alive else "close")
        # Logged before the client can see the end of the answer, so that a test that
        # got its response always finds it in the log.
        cut = rule is not None and action == "cut_response"
        self.proxy._log(method, target, "cut_response" if cut else status)
        self._send(f"{status_line}\r\n".encode("latin-1") + out_headers.encode())

        assert self.client is not None
        if rule is not None and cut:
            with contextlib.suppress(_Cut):
                _relay_body(urd, _Sink(self.client, rule.after_bytes), rframing)
            self.close(rst=rule.rst)
            return False
        _relay_body(urd, _Sink(self.client), rframing)
        if not upstream_keeps:
            self._drop_upstream()
        return keep_alive

    def _answer_status(
        self,
        rule: Rule,
        method: str,
        target: str,
        framing: tuple[str, int],
        expect: bool,
        keep_alive: bool,
    ) -> bool:
        """Answer with an S3 error without asking the upstream. A client waiting for
        ``100 Continue`` never sends its body, so that connection is closed after."""
        if expect:
            keep_alive = False
        else:
            _relay_body(self.crd, _Sink(None), framing)  # read and discard the body
        code, message = S3_ERRORS.get(rule.status, ("InternalError", "Injected fault"))
        body = s3_error_body(rule.code or code, rule.message or message, target.partition("?")[0])
        reason = responses.get(rule.status, "Error")
        head = Headers(
            [
                ("Date", formatdate(usegmt=True)),
                ("Content-Type", "application/xml"),
                ("x-amz-request-id", "FAULTPROXY"),
                ("Content-Length", str(len(body))),
                ("Connection", "keep-alive" if keep_alive else "close"),
            ]
        )
        data = f"HTTP/1.1 {rule.status} {reason}\r\n".encode("latin-1") + head.encode()
        if method.upper() != "HEAD":
            data += body
        self.proxy._log(method, target, rule.status)
        self._send(data)
        return keep_alive


class FaultProxy:
    """HTTP/1.1 proxy on 127.0.0.1 in front of ``upstream_host:upstream_port``."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.port = 0
        self.requests: list[Logged] = []
        self.connections = 0  # client connections accepted so far
        self.rules: list[Rule] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._workers: set[threading.Thread] = set()
        self._sockets: set[socket.socket] = set()

    def __repr__(self) -> str:
        return f"FaultProxy(:{self.port} -> {self.upstream_host}:{self.upstream_port})"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- rules -----------------------------------------------------------------

    def add_rule(
        self,
        method: str | None = None,
        path_contains: str | None = None,
        query_contains: str | None = None,
        action: Action = "status",
        times: int | None = 1,
        *,
        status: int = 503,
        code: str | None = None,
        message: str | None = None,
        after_bytes: int = 0,
        seconds: float = 0.0,
        rst: bool = True,
    ) -> Rule:
        """Add a rule after those already there (see the module docstring for actions).

        ``status``/``code``/``message``: the answer of ``"status"`` (code and message
        default to S3's for that status: 503 SlowDown, 500 InternalError, ...).
        ``after_bytes``: body bytes relayed before a cut. ``seconds``: a delay.
        ``rst``: cut with a TCP reset (default) or with an orderly close.
        """
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}; one of {ACTIONS}")
        if times is not None and times < 1:
            raise ValueError("times must be at least 1 (or None: for ever)")
        rule = Rule(
            method=method,
            path_contains=path_contains,
            query_contains=query_contains,
            action=action,
            times=times,
            status=status,
            code=code,
            message=message,
            after_bytes=after_bytes,
            seconds=seconds,
            rst=rst,
        )
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        """Remove every rule (the request log stays)."""
        with self._lock:
            self.rules.clear()

    def _match(self, method: str, path: str, query: str, target: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, path, query):
                    rule.fired += 1
                    rule.hits.append(f"{method} {target}")
                    return rule
        return None

    def _log(self, method: str, target: str, result: int | str) -> None:
        with self._lock:
            self.requests.append(Logged(method, target, result))

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> FaultProxy:
        if self._thread is not None:
            return self
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.setblocking(False)
        self.port = int(listener.getsockname()[1])
        self._listener = listener
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._accept_loop, name=f"{self}", daemon=True)
        self._thread.start()
        return self

    def _accept_loop(self) -> None:
        assert self._listener is not None and self._wake_r is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self._listener, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _ in sel.select():
                    if key.fileobj is self._wake_r:
                        return
                    try:
                        client, _addr = self._listener.accept()
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        return
                    client.setblocking(True)
                    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    self._track(client)
                    with self._lock:
                        self.connections += 1
                    worker = threading.Thread(
                        target=self._serve, args=(client,), name=f"{self} conn", daemon=True
                    )
                    with self._lock:
                        self._workers.add(worker)
                    worker.start()

    def _serve(self, client: socket.socket) -> None:
        try:
            _Conn(self, client).serve()
        finally:
            with self._lock:
                self._workers.discard(threading.current_thread())

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)
        if self._stopping.is_set():  # raced with stop(): do not outlive it
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)

    def stop(self) -> None:
        """Stop listening, cut every open connection, and wait for the threads."""
        if self._thread is None:
            return
        self._stopping.set()
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")
        self._thread.join(timeout=10)
        with self._lock:
            socks, workers = list(self._sockets), list(self._workers)
        for sock in socks:  # shutdown() wakes a thread blocked in recv(); close() would not
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for worker in workers:
            worker.join(timeout=5)
        with self._lock:
            socks = list(self._sockets)
            self._sockets.clear()
        extra = (self._listener, self._wake_r, self._wake_w)
        for leftover in [*socks, *(s for s in extra if s is not None)]:
            with contextlib.suppress(OSError):
                leftover.close()
        self._listener = self._wake_r = self._wake_w = None
        self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- assertions ------------------------------------------------------------

    def seen(self, method: str | None = None, contains: str = "") -> list[Logged]:
        """Logged requests with that method whose target contains ``contains``."""
        with self._lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method.upper()) and contains in r.path
            ]


@contextlib.contextmanager
def fault_proxy(upstream_host: str, upstream_port: int) -> Iterator[FaultProxy]:
    """``with fault_proxy(host, port) as proxy:`` (the same as ``with FaultProxy(...)``)."""
    proxy = FaultProxy(upstream_host, upstream_port)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
