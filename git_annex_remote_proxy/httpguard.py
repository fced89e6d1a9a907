"""cheroot with bounds on what a misbehaving client can hold (docs/http.md, "Faults
and limits"). As it comes, cheroot:

- hands a new connection straight to a worker, which then waits up to the socket
  timeout for its first byte: as many silent connections as there are workers stop
  the server for that long;
- does each TLS handshake in its one accepting thread: one client that connects and
  says nothing delays every new connection by the whole timeout;
- gives a request head as long as it likes, in time (as long as a byte comes every
  timeout) and in size (a header line of 1 GiB is 1 GiB of memory);
- holds each chunk of a chunked request body in memory whole, whatever size the
  client announces, and reads what the application left of a body in one piece (a
  refused upload of 1 GiB takes 1 GiB of memory) before it answers;
- skips closing the response (the application's node session stays taken) when the
  client is gone before the headers went out;
- out of file descriptors, spins on the accept error, logging a traceback each time.

Here a new connection waits in cheroot's selector, holding no worker, until it sends
something, and is closed if it sends nothing for ``head_seconds``; the TLS handshake
is the worker's; a request head, handshake included, must be in within
``head_seconds`` however it trickles (a watchdog shuts the connection down
otherwise) and within ``MAX_HEAD`` bytes; request bodies are read in pieces of one
socket read at most, at no less than ``MIN_RATE`` on average once ``timeout`` has
passed; what the application left of a body is read and dropped the same way before
the answer, unless the body broke (the client vanished, went silent or too slow, or
sent garbage), and then the connection is closed; the response is always closed;
and out of file descriptors the server says so once in a while and goes on.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import re
import socket
import ssl
import threading
import time
from typing import Any

from cheroot import connections, errors, server, wsgi
from cheroot.makefile import MakeFile
from cheroot.ssl.builtin import BuiltinSSLAdapter

from shared.p2p import httpapi as api

HEAD_SECONDS = 10.0  # a request head (and TLS handshake) has this long, at most the timeout
MIN_RATE = 1024  # bytes/s a request body must average once the timeout has passed
PIECE = 1024 * 1024  # the most one socket read of a body asks for
_LINE = 1024  # the longest chunk-size or trailer line
_TRAILERS = 64  # the most trailer lines
MAX_HEAD = 64 * 1024  # the longest request head (cheroot's default: no limit)
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")  # a chunk size (int() would take "-1", "0x1")


class TooSlow(TimeoutError):
    """A request body arrives slower than ``MIN_RATE``."""


class Body:
    """A request body (``wsgi.input``), read one socket read at a time so that a
    client that vanishes, goes silent or trickles is noticed between any two reads.
    ``broken``: it ended early (read errors are raised, an early end reads as EOF);
    ``min_rate`` 0 lets a long-polling reader (keeplocked) wait as long as it likes."""

    def __init__(self, conn: server.HTTPConnection, grace: float) -> None:
        self.rfile, self.sock, self.grace = conn.rfile, conn.socket, grace
        self.min_rate = MIN_RATE
        self.broken = False
        self.done = False
        self.waited = 0.0  # seconds spent waiting for the client
        self.got = 0

    def _piece(self, n: int) -> bytes:
        """Up to ``n`` bytes of the body (b"" at its end or when it broke off)."""
        raise NotImplementedError

    def read1(self, n: int = PIECE, /) -> bytes:
        if self.done or self.broken or n == 0:
            return b""
        try:
            return self._piece(min(n, PIECE) if n > 0 else PIECE)
        except BaseException:
            self.broken = True
            raise

    def read(self, n: int = -1, /) -> bytes:
        """``n`` bytes (all of it for -1) unless the body ends first."""
        pieces: list[bytes] = []
        left = n if n >= 0 else -1
        while left:
            data = self.read1(PIECE if left < 0 else left)
            if not data:
                break
            pieces.append(data)
            left = left - len(data) if left > 0 else left
        return b"".join(pieces)

    def readline(self, limit: int = -1, /) -> bytes:
        line = bytearray()
        while limit < 0 or len(line) < limit:
            byte = self.read1(1)
            line += byte
            if not byte or byte == b"\n":
                break
        return bytes(line)

    def readlines(self, hint: int = -1, /) -> list[bytes]:
        return list(iter(self.readline, b""))

    def __iter__(self) -> Any:
        return iter(self.readline, b"")

    def drain(self) -> None:
        """Read what is left of the body and drop it (errors only make it broken)."""
        self.min_rate = MIN_RATE
        with contextlib.suppress(Exception):
            while self.read1(PIECE):
                pass

    def _recv(self, n: int) -> bytes:
        """Up to ``n`` bytes with at most one read from the socket: what the connection
        holds buffered, else one read (straight from the socket unless it is small)."""
        started = time.monotonic()
        try:
            if self.rfile.has_data() or n < 4096:
                data: bytes = self.rfile.read1(n)
            else:
                data = self.sock.recv(n)
        finally:
            self.waited += time.monotonic() - started
        self.got += len(data)
        late = self.waited - self.grace
        if self.min_rate and late > 0 and self.got < late * self.min_rate:
            raise TooSlow(f"the client sent {self.got} bytes in {self.waited:.0f} s")
        return data


class _Sized(Body):
    """A body of ``Content-Length`` bytes (none without the header)."""

    def __init__(self, conn: server.HTTPConnection, grace: float, length: int) -> None:
        super().__init__(conn, grace)
        self.left = length
        self.done = length == 0

    def _piece(self, n: int) -> bytes:
        data = self._recv(min(n, self.left))
        if not data:
            self.broken = True  # the client went away
            return b""
        self.left -= len(data)
        self.done = self.left == 0
        return data


class _Chunked(Body):
    """A body in chunked transfer encoding, a piece of a chunk at a time."""

    def __init__(self, conn: server.HTTPConnection, grace: float) -> None:
        super().__init__(conn, grace)
        self.left = 0  # of the current chunk

    def _piece(self, n: int) -> bytes:
        if self.left == 0:
            size = self._line().split(b";", 1)[0].strip()
            if not size:
                self.broken = True  # the client went away
                return b""
            if not _HEX.fullmatch(size):
                raise ValueError(f"bad chunk size {size[:40]!r}")
            self.left = int(size, 16)
            if self.left == 0:
                for _ in range(_TRAILERS):  # trailers, up to the blank line
                    if not self._line().strip():
                        self.done = True
                        return b""
                raise ValueError("too many trailer lines")
        data = self._recv(min(n, self.left))
        if not data:
            self.broken = True
            return b""
        self.left -= len(data)
        if self.left == 0:
            end = self._recv(2)
            if end == b"\r":
                end += self._recv(1)
            if end != b"\r\n":
                raise ValueError("a chunk does not end in CRLF")
        return data

    def _line(self) -> bytes:
        line = b""
        while not line.endswith(b"\n"):
            data = self.rfile.peek(1)[:_LINE] if self.rfile.has_data() else self._fill()
            if not data:
                self.broken = True
                return b""
            nl = data.find(b"\n")
            piece = self.rfile.read1(nl + 1 if nl >= 0 else len(data))
            line += piece
            if len(line) > _LINE:
                raise ValueError("a chunk-size line is too long")
        return line

    def _fill(self) -> bytes:
        """One read from the socket into the connection's buffer; what it holds."""
        started = time.monotonic()
        try:
            data: bytes = self.rfile.peek(1)
        finally:
            self.waited += time.monotonic() - started
        late = self.waited - self.grace
        if self.min_rate and late > 0 and self.got < late * self.min_rate:
            raise TooSlow(f"the client sent {self.got} bytes in {self.waited:.0f} s")
        return data[:_LINE]


class _Deadlines:
    """Sockets to shut down when their time is up (a blocked read then returns EOF and
    its worker lets the connection go), checked by one thread twice a second."""

    def __init__(self) -> None:
        self._due: dict[int, tuple[float, socket.socket]] = {}
        self._tokens = itertools.count()
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="head deadlines", daemon=True)
        self._thread.start()

    def add(self, sock: socket.socket, seconds: float) -> int:
        token = next(self._tokens)
        with self._cond:
            self._due[token] = (time.monotonic() + seconds, sock)
        return token

    def discard(self, token: int) -> None:
        with self._cond:
            self._due.pop(token, None)

    def _run(self) -> None:
        with self._cond:
            while not self._stop:
                now = time.monotonic()
                for token, (when, sock) in list(self._due.items()):
                    if when <= now:
                        del self._due[token]
                        with contextlib.suppress(OSError):
                            # The plain socket's shutdown, also under TLS (an SSLSocket's
                            # own would unwrap it under its reader's feet).
                            socket.socket.shutdown(sock, socket.SHUT_RDWR)
                self._cond.wait(0.5)

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=5)


_DIRECT_WRITE = 64 * 1024  # body pieces this big bypass cheroot's writer (_Request.write)

_PLAIN_TO_TLS = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    b"Content-Length: 47\r\n\r\nThis server speaks HTTPS only: use https:// .\n"
)


class _Gateway(wsgi.Gateway_10):
    """cheroot's WSGI gateway, but the response is closed (its node session let go,
    its request logged) even when the client is gone before the headers went out."""

    def respond(self) -> None:
        response = self.req.server.wsgi_app(self.env, self.start_response)
        try:
            for chunk in response:
                if chunk:
                    self.write(chunk)
        finally:
            try:
                self.req.ensure_headers_sent()
            finally:
                close = getattr(response, "close", None)
                if close is not None:
                    close()


class _Request(server.HTTPRequest):
    server: Server
    conn: _Connection

    def parse_request(self) -> None:
        """The head (after the TLS handshake, on a new connection) within the deadline."""
        token = self.server.deadlines.add(self.conn.socket, self.server.head_seconds)
        try:
            if not self.conn.handshaken and not self._handshake():
                return  # not ready: the connection is closed
            super().parse_request()
        finally:
            self.server.deadlines.discard(token)

    def _handshake(self) -> bool:
        sock = self.conn.socket
        try:
            sock.do_handshake()
        except ssl.SSLError as e:
            if "http request" in str(e).lower():  # plain HTTP to the HTTPS port
                with contextlib.suppress(OSError):
                    socket.socket.sendall(sock, _PLAIN_TO_TLS)
            return False
        except OSError:
            return False
        self.conn.handshaken = True
        return True

    def respond(self) -> None:
        """cheroot's, with our bodies instead of its KnownLengthRFile and ChunkedRFile."""
        grace = float(self.server.timeout)
        body: Body
        if self.chunked_read:
            body = _Chunked(self.conn, grace)
        else:
            body = _Sized(self.conn, grace, int(self.inheaders.get(b"Content-Length", 0)))
        if self.path.rstrip(b"/").endswith(b"/" + api.KEEPLOCKED.encode()):
            body.min_rate = 0  # long polling: the client may send a line now and then
        self.rfile = body
        try:
            self.server.gateway(self).respond()
            if self.ready:
                self.ensure_headers_sent()
            if self.chunked_write:
                self.conn.wfile.write(b"0\r\n\r\n")
        except BaseException:
            # A head still held goes nowhere: the connection closes without an answer,
            # which no client takes for a complete one (an empty body under
            # "Content-Length: 0" would be).
            held = self.conn.wfile
            if isinstance(held, _HeldHead):
                held.drop()
            raise
        held = self.conn.wfile
        if isinstance(held, _HeldHead):
            held.release()

    def write(self, chunk: bytes) -> None:
        """cheroot's, but a big piece of a body goes to the socket as it is: cheroot's
        writer copies what it is given into its buffer, and what is left of that again
        after every partial send (several copies of each MiB of a download)."""
        if self.chunked_write or len(chunk) < _DIRECT_WRITE:
            super().write(chunk)
            return
        held = self.conn.wfile
        if isinstance(held, _HeldHead):
            held.release()
        sock = self.conn.socket
        view = memoryview(chunk)
        while view:  # each send within the socket's timeout, as cheroot's are
            view = view[sock.send(view) :]

    def send_headers(self) -> None:
        """Before the answer, what the application left of the body is read and
        dropped, so that the client, which reads the answer once it has sent its
        body, gets it; a broken body closes the connection instead.

        cheroot writes the head, then each piece of the body, each in a write of its
        own: the head is held until the first piece (cheroot sends it right before
        that piece anyway), so that a small answer leaves in one write, one segment
        and one wake-up of the client instead of two or three."""
        body = self.rfile
        if isinstance(body, Body) and not self.close_connection:
            body.drain()
            self.close_connection = body.broken
        real = self.conn.wfile
        head = _Capture()
        self.conn.wfile = head
        try:
            super().send_headers()
        finally:
            self.conn.wfile = real
        self.conn.wfile = _HeldHead(self.conn, real, b"".join(head.parts))


class _Capture:
    """Where cheroot writes a response's head, to be sent with what follows it."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)


class _HeldHead:
    """The connection's writer while a response's head waits: the next write sends
    the head and its data together, then the connection's own writer is back."""

    def __init__(self, conn: server.HTTPConnection, real: Any, head: bytes) -> None:
        self.conn, self.real, self.head = conn, real, head

    def write(self, data: bytes) -> Any:
        self.conn.wfile = self.real
        return self.real.write(self.head + data)

    def release(self) -> None:
        """Send the head, if nothing did yet (an empty body)."""
        if self.conn.wfile is self:
            self.conn.wfile = self.real
            self.real.write(self.head)

    def drop(self) -> None:
        if self.conn.wfile is self:
            self.conn.wfile = self.real

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class _Connection(server.HTTPConnection):
    RequestHandlerClass = _Request

    def __init__(self, srv: Server, sock: socket.socket, makefile: Any = MakeFile) -> None:
        super().__init__(srv, sock, makefile)
        self.fresh = True  # not yet waited in the selector for its first bytes
        self.handshaken = not isinstance(sock, ssl.SSLSocket)


_OUT_OF_FILES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class _Connections(connections.ConnectionManager):
    """cheroot's, but out of file descriptors it says so once in a while, waits a
    little and goes on. cheroot's accept raises then, out of the loop before it closes
    the connections idle too long: it spins on the error, a traceback each time, and
    with new connections waiting in that loop (``Server.process_conn``) nothing would
    ever free a descriptor."""

    server: Server

    def _from_server_socket(self, server_socket: socket.socket) -> Any:
        try:
            return super()._from_server_socket(server_socket)  # type: ignore[misc]
        except OSError as e:
            if e.errno not in _OUT_OF_FILES:
                raise
            self.server.out_of_files(e)
            time.sleep(0.05)
            return None


class Server(wsgi.Server):
    """cheroot's WSGI server with the bounds above."""

    ConnectionClass = _Connection
    _connections: Any  # cheroot's ConnectionManager, made in prepare()

    def __init__(self, *args: Any, head_seconds: float = HEAD_SECONDS, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_seconds = min(head_seconds, float(self.timeout))
        self.deadlines = _Deadlines()
        self.gateway = _Gateway
        self.max_request_header_size = MAX_HEAD
        self._quiet_until = 0.0  # out of files: said once per 10 s
        # Idle keep-alive connections beyond this are closed after their answer. New
        # connections count too while they wait for their first bytes: room for them.
        workers = self.requests.max if self.requests.max != float("inf") else self.requests.min
        self.keep_alive_conn_limit = max(self.keep_alive_conn_limit, 4 * int(workers))

    def prepare(self) -> None:
        super().prepare()
        plain, self._connections = self._connections, _Connections(self)
        plain.close()  # it watched only the listening socket so far

    def out_of_files(self, e: OSError) -> None:
        now = time.monotonic()
        if now >= self._quiet_until:
            self._quiet_until = now + 10
            self.error_log(
                f"git-annex-remote-proxy http: cannot accept connections: {e.strerror}; "
                "raise the limit of open files (systemd: LimitNOFILE=)"
            )

    def process_conn(self, conn: Any) -> None:
        """A new connection waits in the selector, not in a worker, until it sends
        something; it is closed after ``head_seconds`` if it does not."""
        if isinstance(conn, _Connection) and conn.fresh:
            conn.fresh = False
            self._connections.put(conn)
            conn.last_used -= max(0.0, float(self.timeout) - self.head_seconds)
            return
        super().process_conn(conn)

    def stop(self) -> None:
        super().stop()
        self.deadlines.close()


class TLSAdapter(BuiltinSSLAdapter):
    """cheroot's TLS, with the handshake left to the worker (``_Request``)."""

    def wrap(self, sock: socket.socket) -> tuple[socket.socket, dict[str, str]]:
        try:
            tls = self.context.wrap_socket(sock, do_handshake_on_connect=False, server_side=True)
        except OSError as e:
            raise errors.FatalSSLAlert(*e.args) from e
        return tls, {"wsgi.url_scheme": "https", "HTTPS": "on"}
