"""Operating ``git-annex-remote-proxy http``: ``/metrics`` (Prometheus), ``/health``
and the JSON access log, read from a real server process on a free loopback port
after real requests (raw HTTP with real credentials; the stock-client path through
nginx is tests/test_docs_deploy.py)."""

from __future__ import annotations

import base64
import http.client
import json
import random
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_http_server import (
    PROXY,
    Server,
    key_of,
    keyq,
    op_path,
    start_server,
    users_cli,
)

from git_annex_remote_proxy import httpusers
from git_annex_remote_proxy.httpserver import HttpGateway
from shared.p2p import httpapi as api

pytestmark = pytest.mark.timeout(300)

PASSWORD = "pw-rw-Secret"  # rw's password: it must never reach a log


@dataclass
class Ops:
    config: Path
    dirs: dict[str, Path]


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory) -> Ops:
    """Targets archive (file nodes n1, n2) and flaky (good, and gone: a disk that was
    unmounted after the target was set up); users rw (every target) and one (flaky
    only). Each test has a server of its own."""
    tmp_path = tmp_path_factory.mktemp("ops")
    config = tmp_path / "gw" / "gw.toml"
    config.parent.mkdir()
    dirs = {n: tmp_path / n for n in ("n1", "n2", "good", "gone")}
    for d in dirs.values():
        d.mkdir()
    add = [PROXY, "gateway", "--config", str(config), "add"]
    subprocess.run(
        [*add, "archive", f"n1=file://{dirs['n1']}", f"n2=file://{dirs['n2']}"], check=True
    )
    subprocess.run(
        [*add, "flaky", f"good=file://{dirs['good']}", f"gone=file://{dirs['gone']}"], check=True
    )
    shutil.rmtree(dirs["gone"])
    users_cli(config, "add", "rw", "--access", "readwrite", password=PASSWORD)
    users_cli(config, "add", "one", "--access", "readwrite", "--target", "flaky", password="pw-one")
    return Ops(config, dirs)


@pytest.fixture
def server(tmp_path: Path, ops: Ops) -> Iterator[Server]:
    srv = start_server(
        ops.config, tmp_path / "server.log", "--auth-http", "--access-log", str(access(tmp_path))
    )
    yield srv
    srv.stop()


def access(tmp_path: Path) -> Path:
    return tmp_path / "access.log"


def creds(user: str = "rw", password: str = PASSWORD) -> dict[str, str]:
    return {"Authorization": api.basic_auth(user, password)}


def request(
    srv: Server,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes, dict[str, str]]:
    """Status, body and headers of one request (errors included)."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{srv.port}{path}", data=body, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return int(resp.status), resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as e:
        return int(e.code), e.read(), dict(e.headers)


def put(srv: Server, target: str, data: bytes, key: str | None = None) -> dict[str, object]:
    key = key or key_of(data)
    headers = {**creds(), api.DATA_LENGTH: str(len(data))}
    status, body, _ = request(srv, "POST", op_path(srv, target, "put", keyq(key)), data, headers)
    assert status == 200, body
    answer: dict[str, object] = json.loads(body)
    return answer


def metrics(srv: Server, **headers: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The samples of /metrics (rw's credentials unless ``headers`` say otherwise), by
    name and labels."""
    status, body, got = request(srv, "GET", "/metrics", headers=headers or creds())
    assert status == 200, body
    assert got["Content-Type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float | None:  # fmt: skip
    return samples.get((f"git_annex_proxy_{name}", frozenset(labels.items())))


# -- metrics ------------------------------------------------------------------------------


def test_metrics_count_requests_bytes_transfers_and_locks(server: Server) -> None:
    data = bytes(range(256)) * 400  # 100 KiB
    key = key_of(data)
    assert put(server, "archive", data)["stored"] is True
    status, got, _ = request(server, "GET", op_path(server, "archive", f"key/{key}", keyq(key)),
                             headers=creds())  # fmt: skip
    assert status == 200 and got == data
    assert request(server, "POST", op_path(server, "archive", "checkpresent", keyq(key)))[0] == 401
    status, body, _ = request(server, "POST", op_path(server, "archive", "lockcontent",
                                                      keyq(key)), headers=creds())  # fmt: skip
    assert json.loads(body)["locked"] is True

    # An upload in flight: its head and half its body sent, the rest held back.
    other = bytes(range(256)) * 100
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        head = (
            f"POST {op_path(server, 'archive', 'put', keyq(key_of(other)))} HTTP/1.1\r\n"
            f"Host: 127.0.0.1\r\nAuthorization: {creds()['Authorization']}\r\n"
            f"{api.DATA_LENGTH}: {len(other)}\r\nContent-Length: {len(other)}\r\n\r\n"
        )
        sock.sendall(head.encode() + other[: len(other) // 2])
        during = {}
        for _ in range(50):  # until the server has read the head
            during = metrics(server)
            if value(during, "http_in_flight", operation="put"):
                break
            time.sleep(0.1)
        sock.sendall(other[len(other) // 2 :])
        assert b" 200 " in sock.recv(65536).split(b"\r\n")[0]
    assert value(during, "http_in_flight", operation="put") == 1
    assert value(during, "http_locks_held") == 1

    # A request is counted when its response is closed, just after its last byte went
    # out: the client may ask for the metrics before the server got there.
    after = metrics(server)
    for _ in range(50):
        if value(after, "http_requests_total", operation="put", status="200") == 2:
            break
        time.sleep(0.1)
        after = metrics(server)
    assert value(after, "http_requests_total", operation="put", status="200") == 2
    assert value(after, "http_requests_total", operation="key", status="200") == 1
    assert value(after, "http_requests_total", operation="checkpresent", status="401") == 1
    assert value(after, "http_requests_total", operation="lockcontent", status="200") == 1
    assert value(after, "http_received_bytes_total", operation="put") == len(data) + len(other)
    assert value(after, "http_sent_bytes_total", operation="key") == len(data)
    assert value(after, "http_in_flight", operation="put") == 0
    assert value(after, "http_in_flight", operation="key") == 0
    assert value(after, "http_request_duration_seconds_count", operation="put") == 2
    assert value(after, "http_locks_held") == 1  # until keeplocked or its expiry
    for node in ("n1", "n2"):
        assert value(after, "node_reachable", target="archive", node=node) == 1
        assert not value(after, "node_errors_total", target="archive", node=node,
                         kind="unavailable")  # fmt: skip
    assert after.get(("process_resident_memory_bytes", frozenset())) is not None
    # Labels are operations, statuses, targets, nodes and error kinds: never a key or a user.
    names = {"operation", "status", "target", "node", "kind", "le"}
    assert all(dict(labels).keys() <= names for _name, labels in after)
    assert {v for _name, labels in after for _l, v in labels}.isdisjoint({key, "rw", PASSWORD})


def test_downloads_say_their_length_and_keep_the_connection(server: Server) -> None:
    """A GET answers with Content-Length (the held-back head and the first bytes leave
    together): empty, small (read whole) and big (streamed) keys, whole and from an
    offset, one after the other on one kept-alive connection, so each answer must end
    exactly where it says."""
    blobs = [b"", b"tiny", random.Random(5).randbytes(3 * 1024 * 1024 + 7)]
    for data in blobs:
        put(server, "archive", data)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        for data in blobs:
            key = key_of(data)
            for offset in sorted({0, len(data) // 2, len(data)}):
                query = keyq(key) + (f"&offset={offset}" if offset else "")
                conn.request(
                    "GET", op_path(server, "archive", f"key/{key}", query), headers=creds()
                )
                resp = conn.getresponse()
                assert resp.status == 200
                assert resp.headers["Content-Length"] == str(len(data) - offset)
                assert resp.headers["Transfer-Encoding"] is None
                assert resp.read() == data[offset:], (len(data), offset)
                assert not resp.will_close
            # HEAD: the head alone, or the body would be read as the next answer.
            conn.request(
                "HEAD", op_path(server, "archive", f"key/{key}", keyq(key)), headers=creds()
            )
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read() == b""
            assert resp.headers["Content-Length"] == str(len(data))
        # An offset past the end: refused, and no copy is taken for a bad one.
        key = key_of(blobs[1])
        query = keyq(key) + f"&offset={len(blobs[1]) + 1}"
        conn.request("GET", op_path(server, "archive", f"key/{key}", query), headers=creds())
        resp = conn.getresponse()
        assert resp.status == 400 and b"past the end" in resp.read()
    finally:
        conn.close()


def test_metrics_see_node_errors_and_reachability(server: Server) -> None:
    key = key_of(b"abc")
    status, body, _ = request(server, "POST", op_path(server, "flaky", "checkpresent", keyq(key)),
                              headers=creds())  # fmt: skip
    assert status == 502, body  # unknown is not absent: a node could not be asked
    samples = metrics(server)
    assert value(samples, "node_reachable", target="flaky", node="gone") == 0
    assert value(samples, "node_reachable", target="flaky", node="good") == 1
    assert value(samples, "node_errors_total", target="flaky", node="gone", kind="unavailable") == 1
    observed = value(samples, "node_observed_timestamp_seconds", target="flaky", node="gone")
    assert observed is not None and abs(observed - time.time()) < 60
    assert value(samples, "node_reachable", target="archive", node="n1") is None  # not asked yet


def test_bad_upload_is_the_clients_fault_not_the_nodes(server: Server) -> None:
    """Bytes that fail the key's hash fail the upload, not the node: no node error."""
    data = b"x" * 5000
    wrong = key_of(b"y" * 5000)
    assert put(server, "archive", data, key=wrong)["stored"] is False
    samples = metrics(server)
    for node in ("n1", "n2"):
        assert value(samples, "node_reachable", target="archive", node=node) == 1
        for kind in ("integrity", "unavailable", "other"):
            assert not value(samples, "node_errors_total", target="archive", node=node, kind=kind)


def test_who_may_read_metrics(tmp_path: Path, server: Server, ops: Ops) -> None:
    """By default a user who may read every target; ``open``: anyone; ``off``: 404."""
    status, _, headers = request(server, "GET", "/metrics")
    assert status == 401 and headers["WWW-Authenticate"] == api.challenge()
    assert request(server, "GET", "/metrics", headers=creds("one", "pw-one"))[0] == 403
    assert request(server, "GET", "/metrics", headers=creds("rw", "wrong"))[0] == 401
    assert request(server, "GET", "/metrics", headers=creds())[0] == 200
    for mode, want in (("open", 200), ("off", 404)):
        srv = start_server(ops.config, tmp_path / f"{mode}.log", "--metrics", mode)
        try:
            assert request(srv, "GET", "/metrics")[0] == want
            assert request(srv, "GET", "/health")[0] == 200
        finally:
            srv.stop()


# -- health -------------------------------------------------------------------------------


def test_health(server: Server, ops: Ops) -> None:
    """ok while serving, with no credentials and no node asked; 503 when the users
    file is broken (every request with credentials would fail)."""
    assert request(server, "GET", "/health")[:2] == (200, b"ok\n")
    assert request(server, "HEAD", "/health")[0] == 200
    users = httpusers.users_path(ops.config)
    good = users.read_text()
    users.write_text("{not json")
    status, body, _ = request(server, "GET", "/health")
    assert status == 503 and b"users file" in body
    query = keyq(key_of(b"abc"))
    assert request(server, "POST", op_path(server, "archive", "checkpresent", query),
                   headers=creds())[0] == 500  # fmt: skip
    assert "checkpresent: internal error: cannot read the users file" in server.log.read_text()
    users.write_text(good)
    assert request(server, "GET", "/health")[0] == 200


def test_health_says_503_once_stopping(ops: Ops) -> None:
    """From SIGTERM on (``run`` sets ``stopping``), while requests in flight finish."""
    app = HttpGateway(ops.config, httpusers.Policy(), httpusers.Users(Path("/nonexistent")), 2)
    try:
        statuses = []

        def start_response(status: str, _headers: list[tuple[str, str]]) -> None:
            statuses.append(status)

        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/health", "REMOTE_ADDR": "127.0.0.1"}
        assert b"".join(app(dict(environ), start_response)) == b"ok\n"
        app.stopping.set()
        assert b"".join(app(dict(environ), start_response)) == b"stopping\n"
        assert statuses == ["200 OK", "503 Service Unavailable"]
    finally:
        app.close()


# -- the access log -----------------------------------------------------------------------


def test_access_log_is_json_and_holds_no_credentials(tmp_path: Path, server: Server) -> None:
    data = b"hello access log\n" * 100
    key = key_of(data)
    put(server, "archive", data)
    get = op_path(server, "archive", f"key/{key}", keyq(key))
    assert request(server, "GET", get, headers=creds())[0] == 200
    assert request(server, "GET", get, headers=creds("rw", "a-wrong-Password"))[0] == 401
    assert request(server, "GET", "/health")[0] == 200
    assert request(server, "GET", "/git-annex/nothing-here")[0] == 404

    lines = access(tmp_path).read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [(r["operation"], r["status"]) for r in records] == [
        ("put", 200), ("key", 200), ("key", 401), ("health", 200), ("other", 404)
    ]  # fmt: skip
    up, down, refused = records[0], records[1], records[2]
    uuid = server.uuid("archive")
    assert up["user"] == "rw" and up["method"] == "POST" and up["target"] == uuid
    assert up["key"] == key and up["bytes_in"] == len(data) and up["remote"] == "127.0.0.1"
    assert down["bytes_out"] == len(data) and down["bytes_in"] == 0 and down["key"] == key
    assert refused["user"] == "-" and refused["bytes_out"] < 100
    for r in records:
        assert set(r) >= {"time", "remote", "user", "method", "operation", "target", "key",
                          "status", "bytes_in", "bytes_out", "duration"}  # fmt: skip
        assert r["time"].endswith("Z") and r["duration"] >= 0
    # Neither log holds a password, nor the Authorization header's value.
    logs = access(tmp_path).read_text() + server.log.read_text()
    for secret in (PASSWORD, "a-wrong-Password"):
        user_pass = f"rw:{secret}".encode()
        assert secret not in logs
        assert base64.b64encode(user_pass).decode() not in logs
        assert base64.urlsafe_b64encode(user_pass).decode().rstrip("=") not in logs
    assert "Basic " not in logs and "Authorization" not in logs


def test_access_log_is_reopened_after_rotation(tmp_path: Path, server: Server) -> None:
    assert request(server, "GET", "/health")[0] == 200
    rotated = tmp_path / "access.log.1"
    access(tmp_path).rename(rotated)
    assert request(server, "GET", "/health")[0] == 200
    assert len(rotated.read_text().splitlines()) == 1
    assert json.loads(access(tmp_path).read_text())["operation"] == "health"


def test_access_log_goes_to_stderr_by_default(tmp_path: Path, ops: Ops) -> None:
    srv = start_server(ops.config, tmp_path / "stderr.log")
    try:
        assert request(srv, "GET", "/health")[0] == 200
    finally:
        srv.stop()
    lines = [line for line in srv.log.read_text().splitlines() if line.startswith("{")]
    assert [json.loads(line)["operation"] for line in lines] == ["health"]
