"""What ``git-annex-remote-proxy http`` tells its operator: Prometheus metrics (served
at ``/metrics``) and one JSON access-log line per request.

Metrics live in a registry of their own per server (``HttpMetrics.registry``), never
prometheus_client's global one, so that several servers in one process (the tests)
count apart. Every label comes from a bounded set: an operation of the API, an HTTP
status, a target and a node of the configuration (named only after a request reached
a target that exists). Never a key, a user or anything else a client chooses, which
would grow the series without bound and leak who does what.

Nodes are observed by the requests that use them (``observe``): an ``Observed`` layer
counts each error a node raised and sets its reachability from the outcome of each
call. No periodic check: asking every node of every target on each scrape, or on a
timer, would cost an ssh session, an S3 request or an HTTP round trip per node even
when nobody uses the gateway, and would wake nodes that are meant to sleep (disks
spun down, hosts on demand), while the requests already learn the same thing for free.
A node nobody used since the start has no reachability series yet;
``..._node_observed_timestamp_seconds`` says how old each observation is.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector

from shared.annex.keys import Key
from shared.errors import (
    IntegrityError,
    NoSpace,
    NotFound,
    PermissionDenied,
    Unavailable,
    Unsupported,
)
from shared.nodes.base import Layer, Node, Usage
from shared.streams import Readable, Writable

PREFIX = "git_annex_proxy"

# The error kinds of ``..._node_errors_total`` (a fixed set: a label value each).
UNAVAILABLE, INTEGRITY, PERMISSION, NOSPACE, OTHER = (
    "unavailable",
    "integrity",
    "permission",
    "nospace",
    "other",
)


def error_kind(exc: BaseException) -> str | None:
    """The kind of a node's error, or None when it is no error of the node's (the
    key is absent, or the node cannot do that at all: it answered)."""
    if isinstance(exc, (NotFound, Unsupported)):
        return None
    if isinstance(exc, Unavailable):
        return UNAVAILABLE
    if isinstance(exc, IntegrityError):
        return INTEGRITY
    if isinstance(exc, PermissionDenied):
        return PERMISSION
    if isinstance(exc, NoSpace):
        return NOSPACE
    return OTHER


class HttpMetrics:
    """The server's metrics, in their own registry."""

    def __init__(self, locks_held: Callable[[], int]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg, p = self.registry, PREFIX
        ProcessCollector(registry=reg)  # memory, CPU, open files of the server process
        self.requests = Counter(
            f"{p}_http_requests",
            "HTTP requests answered, by API operation and status",
            ["operation", "status"],
            registry=reg,
        )
        self.duration = Histogram(
            f"{p}_http_request_duration_seconds",
            "Time from a request's arrival to the end of its response, by operation",
            ["operation"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=reg,
        )
        self.received = Counter(
            f"{p}_http_received_bytes",
            "Request body bytes read, by operation (put: uploads)",
            ["operation"],
            registry=reg,
        )
        self.sent = Counter(
            f"{p}_http_sent_bytes",
            "Response body bytes sent, by operation (key: downloads)",
            ["operation"],
            registry=reg,
        )
        self.in_flight = Gauge(
            f"{p}_http_in_flight",
            "Requests being served, by operation (key: downloads, put: uploads, "
            "keeplocked: clients holding a content lock)",
            ["operation"],
            registry=reg,
        )
        self.aborted = Counter(
            f"{p}_http_aborted",
            "Responses that ended before their last byte (the client went away, or the "
            "content proved wrong and the connection was cut), by operation",
            ["operation"],
            registry=reg,
        )
        self.locks = Gauge(
            f"{p}_http_locks_held",
            "Content locks taken by lockcontent and not yet released",
            registry=reg,
        )
        self.locks.set_function(lambda: float(locks_held()))
        self.node_errors = Counter(
            f"{p}_node_errors",
            "Errors nodes raised to requests (after the node's retries), by target, "
            "node and kind (unavailable, integrity, permission, nospace, other)",
            ["target", "node", "kind"],
            registry=reg,
        )
        self.node_reachable = Gauge(
            f"{p}_node_reachable",
            "1 when the node's last call from a request got an answer, 0 when the node "
            "could not be reached",
            ["target", "node"],
            registry=reg,
        )
        self.node_observed = Gauge(
            f"{p}_node_observed_timestamp_seconds",
            "When a request last learned whether the node is reachable (Unix time)",
            ["target", "node"],
            registry=reg,
        )

    def render(self, accept: str) -> tuple[bytes, str]:
        """The exposition (its body and content type) in the format ``accept`` asks for."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    def observed(self, target: str, node: str, exc: BaseException | None) -> None:
        """A node call by a request ended: with ``exc``, or well (None)."""
        kind = None if exc is None else error_kind(exc)
        if kind is not None:
            self.node_errors.labels(target, node, kind).inc()
        if kind == UNAVAILABLE:
            reachable = 0.0
        elif kind in (None, INTEGRITY, PERMISSION, NOSPACE):
            reachable = 1.0  # it answered (absent, refused, full, or bytes that were wrong)
        else:
            return  # not telling
        self.node_reachable.labels(target, node).set(reachable)
        self.node_observed.labels(target, node).set(time.time())

    def observe(self, target: str) -> Callable[[Node], Node]:
        """What wraps each node of ``target``'s sessions (``gateway.open_backend``)."""
        return lambda node: Observed(node, lambda n, e: self.observed(target, n, e))

    def request_done(self, rec: Exchange) -> None:
        op = rec.operation
        self.requests.labels(op, str(rec.status)).inc()
        self.duration.labels(op).observe(rec.duration)
        if rec.bytes_in:
            self.received.labels(op).inc(rec.bytes_in)
        if rec.bytes_out:
            self.sent.labels(op).inc(rec.bytes_out)
        if rec.aborted:
            self.aborted.labels(op).inc()


# -- nodes, as requests see them ------------------------------------------------------


class _Watched:
    """A source or sink handed to a node: failures of its own are not the node's."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.failed = False

    def read(self, n: int = -1, /) -> bytes:
        try:
            data: bytes = self.inner.read(n)
        except BaseException:
            self.failed = True
            raise
        return data

    def write(self, data: bytes, /) -> None:
        try:
            self.inner.write(data)
        except BaseException:
            self.failed = True
            raise


class Observed(Layer):
    """A node whose calls report their outcome to ``seen(node name, error or None)``.

    An error that came from the request's side (the upload's bytes that failed the
    key's hash, a client that went away while a read streamed to it) is not the
    node's: those calls report nothing."""

    def __init__(self, inner: Node, seen: Callable[[str, BaseException | None], None]) -> None:
        super().__init__(inner)
        self._seen = seen

    def _run(self, fn: Callable[[], Any], watched: _Watched | None = None) -> Any:
        try:
            result = fn()
        except (NotFound, Unsupported):
            self._seen(self.name, None)
            raise
        except Exception as e:
            if watched is None or not watched.failed:
                self._seen(self.name, e)
            raise
        self._seen(self.name, None)
        return result

    def check(self) -> None:
        self._run(self.inner.check)

    def present(self, key: Key) -> int | None:
        found: int | None = self._run(lambda: self.inner.present(key))
        return found

    def store(self, key: Key, source: Readable, size: int) -> bool:
        src = _Watched(source)
        stored: bool = self._run(lambda: self.inner.store(key, src, size), src)
        return stored

    def overwrite(self, key: Key, source: Readable, size: int) -> None:
        src = _Watched(source)
        self._run(lambda: self.inner.overwrite(key, src, size), src)

    @property
    def resumable(self) -> bool:  # type: ignore[override]
        return self.inner.resumable

    def partial(self, key: Key) -> int:
        kept: int = self._run(lambda: self.inner.partial(key))
        return kept

    def store_from(
        self, key: Key, source: Readable, size: int, offset: int, prefix: Callable[[bytes], None]
    ) -> bool:
        src = _Watched(source)

        def checked(kept: bytes) -> None:  # the caller hashes what the node kept
            try:
                prefix(kept)
            except BaseException:
                src.failed = True
                raise

        stored: bool = self._run(
            lambda: self.inner.store_from(key, src, size, offset, checked), src
        )
        return stored

    def retrieve(self, key: Key, sink: Writable, offset: int = 0) -> None:
        out = _Watched(sink)
        self._run(lambda: self.inner.retrieve(key, out, offset), out)

    def remove(self, key: Key) -> None:
        self._run(lambda: self.inner.remove(key))

    def usage(self) -> Usage | None:
        found: Usage | None = self._run(self.inner.usage)
        return found

    def used(self) -> int:
        count: int = self._run(self.inner.used)
        return count

    def list_names(self) -> Iterator[str]:
        return self.inner.list_names()

    def __repr__(self) -> str:
        return f"<observed {self.inner!r}>"


# -- the access log -------------------------------------------------------------------


@dataclass
class Exchange:
    """One request, as the access log and the metrics see it."""

    method: str
    remote: str
    started: float = field(default_factory=time.monotonic)
    at: float = field(default_factory=time.time)
    operation: str = "other"  # an API operation, health, metrics, or other
    target: str = "-"  # the target's UUID
    target_name: str = ""
    key: str = "-"
    user: str = "-"
    status: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    aborted: bool = False
    in_flight: bool = False  # counted in ..._http_in_flight
    forwarded: str | None = None  # X-Forwarded-For, as a reverse proxy set it
    duration: float = 0.0

    def record(self) -> dict[str, Any]:
        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.at))
        out: dict[str, Any] = {
            "time": f"{when}.{int(self.at % 1 * 1000):03d}Z",
            "remote": self.remote,
            "user": self.user,
            "method": self.method,
            "operation": self.operation,
            "target": self.target,
            "key": self.key,
            "status": self.status,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "duration": round(self.duration, 6),
        }
        if self.aborted:
            out["aborted"] = True
        if self.forwarded is not None:
            out["forwarded_for"] = self.forwarded
        return out


class AccessLog:
    """One JSON object per line, to stderr or to a file opened for appending. A file
    that was moved away or deleted (log rotation) is opened again at the next line,
    as logging's WatchedFileHandler does, so no SIGHUP is needed."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        self._id: tuple[int, int] | None = None
        if path is not None:
            self._open()

    def _open(self) -> None:
        assert self.path is not None
        if self._file is not None:
            self._file.close()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._file = os.fdopen(fd, "a", encoding="utf-8")
        st = os.fstat(fd)
        self._id = (st.st_dev, st.st_ino)

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            if self.path is None:
                sys.stderr.write(line)
                sys.stderr.flush()
                return
            try:
                st = os.stat(self.path)
                moved = (st.st_dev, st.st_ino) != self._id
            except FileNotFoundError:
                moved = True
            if moved:
                self._open()
            assert self._file is not None
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
