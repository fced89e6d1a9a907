"""``git-annex-remote-proxy http``: the gateway's targets over git-annex's P2P protocol
over HTTP (``annex+http``/``annex+https``), as ``git annex p2phttp`` serves it.

A thin shell: each request is authorized (``httpusers.decide``) before anything
reaches a node, then translated into the same ``ClusterBackend`` operations the ssh
``serve`` runs (``gateway.open_backend``): the same verified, resumable uploads,
verified reads, content locks shared with every other session of the gateway, and
BYPASS. The wire format is ``shared.p2p.httpapi``'s.

Sessions (a backend: a target's nodes, opened) are pooled per target and reused by
one request at a time; one that saw an error is closed, never reused. Locks taken by
``lockcontent`` live in ``_LockTable`` until ``keeplocked`` lets go or ten minutes
pass. The HTTP server is cheroot's (streaming bodies both ways, a bounded thread
pool, TLS, clean shutdown; see docs/development.md).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from git_annex_remote_proxy import httpguard, httpmetrics, httpusers
from git_annex_remote_proxy.config import GatewayConfig, Target
from git_annex_remote_proxy.gateway import ClusterBackend, open_backend
from shared.annex.keys import Key
from shared.cluster.fanout import DEPTH
from shared.errors import ClusterError, wrong_content
from shared.nodes.base import Node
from shared.p2p import httpapi as api

StartResponse = Callable[..., Any]
_Response = tuple[int, list[tuple[str, str]], Iterable[bytes]]  # status, headers, body
Environ = dict[str, Any]

_ACTIONS = {
    api.GET: httpusers.READ,
    api.CHECKPRESENT: httpusers.READ,
    api.GETTIMESTAMP: httpusers.READ,
    api.PUT: httpusers.WRITE,
    api.PUTOFFSET: httpusers.WRITE,
    api.REMOVE: httpusers.REMOVE,
    api.REMOVE_BEFORE: httpusers.REMOVE,
    api.LOCKCONTENT: httpusers.LOCK,
    api.KEEPLOCKED: httpusers.LOCK,
}
_STATUS = {
    200: "200 OK",
    400: "400 Bad Request",
    401: "401 Unauthorized",
    403: "403 Forbidden",
    404: "404 Not Found",
    405: "405 Method Not Allowed",
    500: "500 Internal Server Error",
    502: "502 Bad Gateway",
    503: "503 Service Unavailable",
}
# Who may read /metrics (``Options.metrics``): whoever may read every target; anyone;
# nobody (404).
METRICS_MODES = ("auth", "open", "off")


def _log(message: str) -> None:
    print(f"git-annex-remote-proxy http: {message}", file=sys.stderr, flush=True)


class HttpError(Exception):
    def __init__(
        self, status: int, reason: str, headers: list[tuple[str, str]] | None = None
    ) -> None:
        super().__init__(reason)
        self.status, self.headers = status, headers or []


# -- sessions and locks ------------------------------------------------------------


class _Pool:
    """A target's idle backends; ``keep`` of them are kept open. ``wrap``: the layer
    the metrics observe each node through."""

    def __init__(
        self,
        target: Target,
        config_path: Path,
        keep: int,
        wrap: Callable[[Node], Node] | None = None,
    ) -> None:
        self.target, self.config_path, self.keep = target, config_path, keep
        self.wrap = wrap
        self._idle: list[ClusterBackend] = []
        self._lock = threading.Lock()
        self._closed = False

    def acquire(self, bypass: tuple[str, ...]) -> ClusterBackend:
        if not bypass:
            with self._lock:
                if self._idle:
                    return self._idle.pop()
        backend = open_backend(
            self.target, self.config_path, _log, self.wrap, read_ahead=8, fanout_depth=DEPTH
        )
        if bypass:
            try:
                backend.bypass(bypass)
            except BaseException:
                backend.close()
                raise
        return backend

    def release(self, backend: ClusterBackend, reuse: bool) -> None:
        """Back to the pool when ``reuse`` (a clean request without bypass)."""
        if reuse and backend.cluster is backend._opened:
            with self._lock:
                if not self._closed and len(self._idle) < self.keep:
                    self._idle.append(backend)
                    return
        backend.close()

    @contextlib.contextmanager
    def session(self, bypass: tuple[str, ...]) -> Iterator[ClusterBackend]:
        backend = self.acquire(bypass)
        ok = False
        try:
            yield backend
            ok = True
        finally:
            self.release(backend, ok)

    def close(self) -> None:
        with self._lock:
            idle, self._idle, self._closed = self._idle, [], True
        for backend in idle:
            with contextlib.suppress(Exception):
                backend.close()


@dataclass
class _Held:
    target: str
    release: Callable[[], None]
    expires: float


class _LockTable:
    """Content locks of lockcontent, by lock id, until keeplocked lets go or
    ``api.LOCK_SECONDS`` pass (a thread expires them)."""

    def __init__(self, seconds: float = api.LOCK_SECONDS) -> None:
        self.seconds = seconds
        self._held: dict[str, _Held] = {}
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._expire, name="lock expiry", daemon=True)
        self._thread.start()

    def add(self, target: str, release: Callable[[], None]) -> str:
        lockid = str(uuidlib.uuid4())
        with self._cond:
            self._held[lockid] = _Held(target, release, time.monotonic() + self.seconds)
            self._cond.notify()
        return lockid

    def release(self, target: str, lockid: str) -> None:
        with self._cond:
            held = self._held.get(lockid)
            if held is None or held.target != target:
                return
            del self._held[lockid]
        held.release()

    def holds(self, target: str, lockid: str) -> bool:
        with self._cond:
            held = self._held.get(lockid)
            return held is not None and held.target == target

    def _expire(self) -> None:
        with self._cond:
            while not self._stop:
                now = time.monotonic()
                due = [i for i, h in self._held.items() if h.expires <= now]
                for lockid in due:
                    held = self._held.pop(lockid)
                    with contextlib.suppress(Exception):
                        held.release()
                wait = min((h.expires for h in self._held.values()), default=now + 60) - now
                self._cond.wait(timeout=max(0.05, wait))

    def __len__(self) -> int:
        return len(self._held)

    def close(self) -> None:
        with self._cond:
            self._stop = True
            held, self._held = list(self._held.values()), {}
            self._cond.notify()
        for h in held:
            with contextlib.suppress(Exception):
                h.release()
        self._thread.join(timeout=5)


# -- request bodies ----------------------------------------------------------------

_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only


class _Body:
    """A put's body as a Readable of at most ``length`` bytes; ``valid()`` (after the
    last byte) is whether the body had exactly ``length`` bytes. A client that went
    away, stayed silent for the timeout or sent too slowly (``httpguard``) ends it
    ``short``, with one error for the store to fail on; nothing more is read then
    (the connection is closed after the answer)."""

    def __init__(self, stream: Any, length: int) -> None:
        self.stream, self.left, self.length = stream, length, length
        self.short = False
        sock = getattr(stream, "sock", None)  # httpguard's body knows its socket
        tcp = sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6)
        self._sock = sock if tcp else None

    def _ack(self) -> None:
        """Acknowledge what has arrived before waiting for more. git-annex sends a put's
        headers, its body and the chunked end in separate small writes with Nagle's
        algorithm on, so each waits for the ACK of the one before, which Linux delays
        up to 40 ms on a kept-alive connection: two such waits made a 4 KiB put take
        60 ms instead of 25. TCP_QUICKACK sends the ACK now; it lasts only until the
        next one, hence before every read. It changes nothing but when ACKs go out."""
        if self._sock is not None and _QUICKACK is not None:
            with contextlib.suppress(OSError):
                self._sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)

    def read(self, n: int = -1, /) -> bytes:
        if self.left <= 0 or self.short:
            return b""
        want = self.left if n < 0 else min(n, self.left)
        try:
            self._ack()
            data: bytes = self.stream.read(min(want, 1024 * 1024))
        except (OSError, ValueError) as e:  # timed out, too slow, reset, bad chunks
            self.short = True
            raise ClusterError(f"the client stopped sending: {_line(e)}") from None
        if not data:
            self.short = True
            return b""
        self.left -= len(data)
        return data

    def valid(self) -> bool:
        with contextlib.suppress(ClusterError):
            while self.left > 0 and not self.short:
                self.read(1024 * 1024)
            if not self.short:
                self._ack()
                return not self.stream.read(1)  # a longer body than announced is invalid
        return False


# -- the application ---------------------------------------------------------------


@dataclass
class _Request:
    environ: Environ
    route: api.Route
    params: api.Params
    target: Target
    pool: _Pool

    @property
    def version(self) -> int:
        return api.MAX_VERSION if self.route.version is None else self.route.version

    @property
    def key(self) -> Key:
        key = self.route.key or self.params.key
        assert key is not None  # parse_query checked it
        return key


class HttpGateway:
    """The WSGI application.

    ``metrics``: who may read ``/metrics`` (``METRICS_MODES``). It names the targets
    and their nodes and counts the traffic (never keys or users), so by default it
    takes what reading every target takes: a user of the users file not limited to
    some targets (any access), or nobody when ``--unauth-readonly`` (or wider) lets
    anyone read. ``open`` is for a listener only the operator reaches (a unix socket,
    loopback behind a reverse proxy that forwards ``/git-annex/`` only).
    ``/health`` needs nothing and tells nothing but whether the server serves."""

    def __init__(
        self,
        config_path: Path | None,
        policy: httpusers.Policy,
        users: httpusers.Users,
        jobs: int,
        log: Callable[[str], None] = _log,
        metrics: str = "auth",
        access_log: httpmetrics.AccessLog | None = None,
    ) -> None:
        if metrics not in METRICS_MODES:
            raise ClusterError(f"--metrics is one of {', '.join(METRICS_MODES)}, not {metrics}")
        self.config = GatewayConfig.load(config_path)
        self.policy, self.users, self.jobs, self.log = policy, users, jobs, log
        self.locks = _LockTable()
        self.metrics_mode = metrics
        self.metrics = httpmetrics.HttpMetrics(lambda: len(self.locks))
        self.access_log = access_log or httpmetrics.AccessLog()
        self.stopping = threading.Event()  # /health answers 503 from then on
        self._pools: dict[str, _Pool] = {}
        self._pools_lock = threading.Lock()

    def close(self) -> None:
        self.locks.close()
        with self._pools_lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()

    def _pool(self, target: Target) -> _Pool:
        with self._pools_lock:
            pool = self._pools.get(target.uuid)
            if pool is None:
                pool = self._pools[target.uuid] = _Pool(
                    target, self.config.path, self.jobs, self.metrics.observe(target.name)
                )
            return pool

    def _target(self, uuid: str) -> Target:
        target = self.config.by_uuid(uuid)
        if target is None:
            fresh = GatewayConfig.load(self.config.path)  # a target added since we started
            if fresh.by_uuid(uuid) is not None:
                self.config = fresh
                target = fresh.by_uuid(uuid)
        if target is None:
            raise HttpError(404, f"no target {uuid} here")
        return target

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "")
        raw = str(environ.get("REQUEST_URI") or environ.get("PATH_INFO", ""))
        shown = raw.partition("?")[0]
        rec = httpmetrics.Exchange(
            method, environ.get("REMOTE_ADDR") or "unix", forwarded=_forwarded_for(environ)
        )
        counted = _CountingInput(environ.get("wsgi.input"))
        environ["wsgi.input"] = counted
        try:
            status, headers, body = self._handle(environ, method, raw, rec)
        except HttpError as e:
            status, headers, body = e.status, e.headers, _one(f"{e}\n".encode())
            if status >= 500 or status == 400:
                self.log(f"{method} {shown}: {e}")
        except Exception as e:  # a fault of ours: one line, and the server goes on
            status, headers, body = 500, [], _one(b"internal error\n")
            self.log(f"{method} {shown}: internal error: {_line(e)}")
        if method == "HEAD":  # the head alone: a body would be read as the next answer
            close = getattr(body, "close", None)
            if close is not None:
                close()
            body = ()
        start_response(_STATUS.get(status, f"{status} Error"), headers)
        rec.status = status

        def done(sent: int, complete: bool) -> None:
            rec.bytes_in, rec.bytes_out, rec.aborted = counted.count, sent, not complete
            rec.duration = time.monotonic() - rec.started
            if rec.in_flight:
                self.metrics.in_flight.labels(rec.operation).dec()
            self.metrics.request_done(rec)
            self.access_log.write(rec.record())

        return _Logged(body, done)

    def _handle(
        self, environ: Environ, method: str, raw: str, rec: httpmetrics.Exchange
    ) -> _Response:
        path, _, query = raw.partition("?")
        if path == "/health":
            rec.operation = "health"
            return self._health()
        if path == "/metrics":
            rec.operation = "metrics"
            return self._metrics(environ, rec)
        try:
            route = api.parse_path(path)
        except api.HttpApiError as e:
            raise HttpError(e.status, str(e)) from None
        rec.operation = route.operation
        self.metrics.in_flight.labels(route.operation).inc()
        rec.in_flight = True
        target = self._target(route.uuid)
        rec.target, rec.target_name = target.uuid, target.name
        if route.key is not None:
            rec.key = str(route.key)
        try:
            params = api.parse_query(query, route)
        except api.HttpApiError as e:
            raise HttpError(e.status, str(e)) from None
        if params.key is not None:
            rec.key = str(params.key)
        want = "GET" if route.operation == api.GET else "POST"
        if method != want and not (want == "GET" and method == "HEAD"):
            raise HttpError(405, f"{route.operation} is {want}", [("Allow", want)])
        rec.user = self._authorize(environ, target.name, _ACTIONS[route.operation])
        req = _Request(environ, route, params, target, self._pool(target))
        handler = getattr(self, "_op_" + route.operation.replace("-", "_"))
        result: _Response = handler(req)
        return result

    def _authorize(self, environ: Environ, target: str, action: str) -> str:
        """The user allowed to do ``action`` on ``target`` (``-``: no credentials
        needed); 401 or 403 otherwise. Nothing reaches a node before this."""
        secure = environ.get("wsgi.url_scheme") == "https"
        credentials = api.parse_basic_auth(environ.get("HTTP_AUTHORIZATION"))
        try:
            who = httpusers.decide(self.policy, self.users, credentials, secure, target, action)
        except httpusers.Denied as e:
            extra = [("WWW-Authenticate", api.challenge())] if e.status == 401 else []
            raise HttpError(e.status, str(e), extra) from None
        return who if credentials is not None else "-"

    def _health(self) -> _Response:
        """200 while serving; 503 once shutting down, or when the users file cannot be
        read (every request with credentials would fail). Cheap: no node is asked."""
        if self.stopping.is_set():
            return 503, [("Content-Type", "text/plain")], _one(b"stopping\n")
        try:
            self.users.load()  # a stat; the file is read again only when it changed
        except ClusterError as e:
            return 503, [("Content-Type", "text/plain")], _one(f"{e}\n".encode())
        return 200, [("Content-Type", "text/plain")], _one(b"ok\n")

    def _metrics(self, environ: Environ, rec: httpmetrics.Exchange) -> _Response:
        if self.metrics_mode == "off":
            raise HttpError(404, "metrics are off (--metrics off)")
        if self.metrics_mode == "auth":
            try:
                # "" is no target's name: only a user not limited to targets reaches it.
                rec.user = self._authorize(environ, "", httpusers.READ)
            except HttpError as e:
                if e.status == 403:
                    raise HttpError(403, "metrics need a user who may read every target") from None
                raise
        body, content_type = self.metrics.render(environ.get("HTTP_ACCEPT", ""))
        return 200, [("Content-Type", content_type), ("Content-Length", str(len(body)))], [body]

    # -- operations ---------------------------------------------------------------

    def _json(self, answer: api.Answer, version: int) -> _Response:
        body = api.render(answer, version)
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        return 200, headers, _one(body)

    def _op_checkpresent(self, req: _Request) -> _Response:
        with req.pool.session(req.params.bypass) as backend:
            try:
                present = backend.present(req.key)
            except Exception as e:  # unknown is not absent: the client gets an error
                raise _unknown(req.key, e) from None
        return self._json(api.CheckPresentResult(present), req.version)

    def _op_gettimestamp(self, req: _Request) -> _Response:
        return self._json(api.GetTimestampResult(int(time.monotonic())), req.version)

    def _op_remove(self, req: _Request) -> _Response:
        if req.route.operation == api.REMOVE_BEFORE:
            assert req.params.timestamp is not None
            if time.monotonic() >= req.params.timestamp:  # too late: other locks may be gone
                return self._json(api.RemoveResult(False), req.version)
        with req.pool.session(req.params.bypass) as backend:
            try:
                ok, uuids = backend.remove(req.key)
            except Exception as e:
                self.log(f"removing {req.key}: {_line(e)}")
                ok, uuids = False, ()
        return self._json(api.RemoveResult(ok, uuids), req.version)

    _op_remove_before = _op_remove

    def _op_lockcontent(self, req: _Request) -> _Response:
        with req.pool.session(req.params.bypass) as backend:
            try:
                release = backend.take_lock(req.key)
            except Exception as e:
                self.log(f"locking {req.key}: {_line(e)}")
                release = None
        if release is None:
            return self._json(api.LockResult(False), req.version)
        lockid = self.locks.add(req.target.uuid, release)
        return self._json(api.LockResult(True, lockid), req.version)

    def _op_keeplocked(self, req: _Request) -> _Response:
        """Long polling: the lock is released when the client says unlock, or when its
        request ends without that (the client is gone: git annex p2phttp lets go then,
        as our ssh ``serve`` does when its session ends). A client silent for the
        timeout may still rely on the lock (a stock client sends nothing between its
        first line and its unlock): its worker is let go, the lock stays until it
        expires, which also ends a keeplocked that outlives it."""
        assert req.params.lockid is not None
        target, lockid = req.target.uuid, req.params.lockid
        stream = req.environ["wsgi.input"]
        splitter = api.LineSplitter()
        release = False
        try:
            while not release and self.locks.holds(target, lockid):
                # A byte at a time: read(n) waits for n bytes.
                data = stream.read(1)
                lines = splitter.feed(data) if data else splitter.end()
                for line in lines:
                    release = release or api.parse_unlock(line).unlock
                release = release or not data
        except TimeoutError as e:
            self.log(f"keeplocked {lockid}: {_line(e)}; the lock stays until it expires")
        except (OSError, ValueError, api.HttpApiError) as e:
            self.log(f"keeplocked {lockid}: {_line(e)}; the lock is released")
            release = True
        if release:
            self.locks.release(target, lockid)
        return self._json(api.LockResult(False), req.version)

    def _op_putoffset(self, req: _Request) -> _Response:
        with req.pool.session(req.params.bypass) as backend:
            try:
                present = backend.present(req.key)
            except Exception as e:
                raise _unknown(req.key, e) from None
            if present:
                return self._json(api.PutOffsetResult(None, True), req.version)
            try:
                offset = backend.put_offset(req.key)
            except Exception as e:
                self.log(f"resume offset of {req.key}: {_line(e)}")
                offset = 0
        return self._json(api.PutOffsetResult(offset), req.version)

    def _op_put(self, req: _Request) -> _Response:
        try:
            length = api.parse_data_length(req.environ.get("HTTP_X_GIT_ANNEX_DATA_LENGTH"))
        except api.HttpApiError as e:
            raise HttpError(400, str(e)) from None
        if length is None:
            raise HttpError(400, f"put needs the {api.DATA_LENGTH} header")
        body = _Body(req.environ["wsgi.input"], length)
        key, offset = req.key, req.params.offset or 0
        backend = req.pool.acquire(req.params.bypass)
        clean = False
        try:
            if req.params.data_present or _present(backend, key):
                stored = _present(backend, key)
                clean = True
                body.valid()  # consume what was sent regardless
                return self._json(api.PutResult(stored), req.version)
            if offset:
                try:
                    backend.put_offset(key)  # the kept bytes this upload continues
                except Exception as e:
                    self.log(f"resume offset of {key}: {_line(e)}")
            try:
                uuids = backend.store(key, offset, length, body, body.valid)
                stored, clean = True, True
            except Exception as e:
                self.log(f"storing {key}: {_line(e)}")
                uuids, stored = (), False
            if not body.short:
                body.valid()
            return self._json(api.PutResult(stored, uuids), req.version)
        finally:
            req.pool.release(backend, clean)

    def _op_key(self, req: _Request) -> _Response:
        key, offset = req.key, req.params.offset or 0
        if key.content_size is not None and offset > key.content_size:
            raise HttpError(400, f"offset {offset} is past the end of {key}")
        backend = req.pool.acquire(req.params.bypass)
        try:
            found = backend.retrieve(key, offset)
        except Exception as e:
            req.pool.release(backend, False)
            raise HttpError(502, f"cannot read {key}: {_line(e)}") from None
        if found is None:
            req.pool.release(backend, True)
            raise HttpError(404, f"{key} is not here")
        size, blocks = found
        length = max(0, size - offset)
        # A length, not chunks: a body that proves wrong or short ends the connection
        # before its last bytes (``_Download``), which a client reads as an error
        # either way, and the client has less to parse.
        headers = [("Content-Type", "application/octet-stream"), ("Content-Length", str(length))]
        if req.version >= 1:
            headers.append((api.DATA_LENGTH, str(length)))
        return 200, headers, _Download(blocks, length, key, req.pool, backend, self.log)


def _unknown(key: Key, e: Exception) -> HttpError:
    return HttpError(502, f"cannot tell whether {key} is present: {_line(e)}")


def _present(backend: ClusterBackend, key: Key) -> bool:
    try:
        return backend.present(key)
    except Exception:
        return False


def _line(e: BaseException) -> str:
    return " ".join(str(e).split())[:500]


def _one(body: bytes) -> Iterable[bytes]:
    return [body]


class _Download:
    """A GET's body: the backend's verified blocks, exactly ``length`` bytes. Bytes
    that prove wrong, or fewer than announced, end the connection without the end of
    the body, so the client never takes them as complete."""

    def __init__(
        self,
        blocks: Iterator[bytes],
        length: int,
        key: Key,
        pool: _Pool,
        backend: ClusterBackend,
        log: Callable[[str], None],
    ) -> None:
        self.blocks, self.length, self.key = blocks, length, key
        self.pool, self.backend, self.log = pool, backend, log
        self.sent = 0
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        """The last block is held back until the blocks have ended without an error:
        the content is checked as it streams, its hash only at its end, and a body of
        the announced length is the client's only sign that it is valid (the spec's
        rule; a stock client with annex.verify=false keeps what it got)."""
        taken = 0
        held = b""
        try:
            for block in self.blocks:  # to their end, past the length: the check is there
                block = block[: self.length - taken]
                if not block:
                    continue
                taken += len(block)
                if held:
                    self.sent += len(held)
                    yield held
                held = block
        except Exception as e:
            what = "bad content" if wrong_content(e) else "error"
            self.log(f"reading {self.key}: {what}: {_line(e)}; connection ended")
            raise
        if taken < self.length:
            raise ClusterError(f"{self.key} ended {self.length - taken} bytes early")
        if held:
            self.sent += len(held)
            yield held

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        close = getattr(self.blocks, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()
        self.pool.release(self.backend, self.sent >= self.length)


class _Logged:
    """A response body that counts what went out and reports when it is closed:
    ``done(bytes sent, whether the body was sent to its end)``."""

    def __init__(self, body: Iterable[bytes], done: Callable[[int, bool], None]) -> None:
        self.body, self.done = body, done
        self.sent = 0
        self.complete = False

    def __iter__(self) -> Iterator[bytes]:
        for block in self.body:
            self.sent += len(block)
            yield block
        self.complete = True

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            self.done(self.sent, self.complete)


class _CountingInput:
    """``wsgi.input``, counting the bytes read from it (the access log's bytes_in)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.count = 0

    def read(self, size: int | None = None, /) -> bytes:
        data: bytes = self.stream.read() if size is None else self.stream.read(size)
        self.count += len(data)
        return data

    def readline(self, size: int | None = None, /) -> bytes:
        data: bytes = self.stream.readline() if size is None else self.stream.readline(size)
        self.count += len(data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def _forwarded_for(environ: Environ) -> str | None:
    """The X-Forwarded-For a reverse proxy set (the guide's nginx sets it to the
    client's address), for the access log only: never trusted for anything else."""
    value = environ.get("HTTP_X_FORWARDED_FOR")
    return None if value is None else str(value)[:200]


# -- the command ---------------------------------------------------------------------


@dataclass
class Options:
    config: Path | None = None
    users: Path | None = None
    bind: str = "0.0.0.0"
    port: int = api.DEFAULT_PORT
    socket: Path | None = None
    certfile: Path | None = None
    privatekeyfile: Path | None = None
    chainfile: Path | None = None
    jobs: int = 16
    timeout: float = 60.0
    policy: httpusers.Policy = field(default_factory=httpusers.Policy)
    metrics: str = "auth"  # who may read /metrics: METRICS_MODES
    access_log: Path | None = None  # None: stderr


def run(opts: Options) -> int:
    """Serve until SIGTERM or SIGINT, then stop cleanly: workers finish or are cut
    off after a few seconds, content locks are released, node sessions closed."""
    from git_annex_remote_proxy.httpusers import users_path

    if (opts.certfile is None) != (opts.privatekeyfile is None):
        raise ClusterError("--certfile and --privatekeyfile go together (both for HTTPS)")
    try:
        access_log = httpmetrics.AccessLog(opts.access_log)
    except OSError as e:
        raise ClusterError(
            f"cannot open the access log {opts.access_log}: {e.strerror or e}"
        ) from None
    app = HttpGateway(
        opts.config,
        opts.policy,
        httpusers.Users(Path()),
        opts.jobs,
        metrics=opts.metrics,
        access_log=access_log,
    )
    app.users = httpusers.Users(opts.users or users_path(app.config.path))
    app.users.load()  # a broken file is an error now, not at the first request
    bind: str | tuple[str, int] = str(opts.socket) if opts.socket else (opts.bind, opts.port)
    server = httpguard.Server(
        bind,
        app,
        numthreads=opts.jobs,
        max=opts.jobs,
        timeout=int(opts.timeout),
        shutdown_timeout=5,
        server_name="git-annex-remote-proxy",
    )
    if opts.certfile is not None and opts.privatekeyfile is not None:
        server.ssl_adapter = httpguard.TLSAdapter(
            str(opts.certfile),
            str(opts.privatekeyfile),
            str(opts.chainfile) if opts.chainfile else None,
        )
    stop = threading.Event()

    def on_signal(_sig: int, _frame: FrameType | None) -> None:
        app.stopping.set()  # /health says 503 while requests in flight finish
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        server.prepare()
    except OSError as e:
        where = opts.socket or f"{opts.bind}:{opts.port}"
        raise ClusterError(f"cannot listen on {where}: {e.strerror or e}") from None
    scheme = "https" if server.ssl_adapter else "http"
    where = opts.socket or f"{scheme}://{opts.bind}:{server.bind_addr[1]}"
    _log(f"serving {len(app.config.targets)} targets on {where}")
    thread = threading.Thread(target=server.serve, name="http server", daemon=True)
    thread.start()
    try:
        while not stop.wait(0.5):
            if not thread.is_alive():
                break
    finally:
        server.stop()
        thread.join(timeout=10)
        app.close()
        access_log.close()
        _log("stopped")
    return 0
