"""The S3 test infrastructure itself: moto_server (tests/s3server.py) and the fault
proxy in front of it (tests/faultproxy.py), driven by plain boto3 with botocore's own
retries off, so that every injected fault reaches the test."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from faultproxy import FaultProxy, Logged
from s3server import S3_ENV, S3_ENV_UNSET, S3Server, s3_environ

MiB = 1024 * 1024
BUCKET = "infra"
NO_RETRIES = Config(retries={"total_max_attempts": 1})
CONNECTION_ERRORS = (ConnectionClosedError, EndpointConnectionError)
STREAM_ERRORS = (ResponseStreamingError, IncompleteReadError)


@pytest.fixture
def server(s3: S3Server) -> S3Server:
    s3.create_bucket(BUCKET)
    return s3


@pytest.fixture
def proxy(server: S3Server) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", server.port) as p:
        yield p


@pytest.fixture
def client(server: S3Server, proxy: FaultProxy) -> Any:
    """boto3 through the proxy, without retries."""
    return server.client(proxy.url, NO_RETRIES)


def error_code(e: ClientError) -> str:
    return str(e.response["Error"]["Code"])


# -- the server ----------------------------------------------------------------


def test_server_answers_boto3(server: S3Server) -> None:
    assert server.endpoint == f"http://127.0.0.1:{server.port}"
    server.put(BUCKET, "a/one", b"1")
    server.put(BUCKET, "a/two", b"22")
    server.put(BUCKET, "b/three", b"333")
    assert server.list_keys(BUCKET) == ["a/one", "a/two", "b/three"]
    assert server.list_keys(BUCKET, "a/") == ["a/one", "a/two"]
    assert server.get(BUCKET, "a/two") == b"22"
    assert server.multipart_uploads(BUCKET) == []


def test_sigv2_signature_with_four_slashes_reaches_s3(server: S3Server) -> None:
    """git-annex signs with SigV2; moto_server alone answered 500 when the base64
    signature held exactly four "/" (read as a SigV4 scope). Our launcher routes it."""
    server.put(BUCKET, "k", b"data")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("HEAD", f"/{BUCKET}/k", headers={"Authorization": "AWS KEY:ab/cd/ef/gh/ij="})
    status = conn.getresponse().status
    conn.close()
    assert status != 500


def test_reset_forgets_everything(server: S3Server) -> None:
    server.put(BUCKET, "k", b"data")
    upload = server.client().create_multipart_upload(Bucket=BUCKET, Key="m")
    assert [u["UploadId"] for u in server.multipart_uploads(BUCKET)] == [upload["UploadId"]]
    server.reset()
    assert server.client().list_buckets()["Buckets"] == []
    server.create_bucket(BUCKET)
    assert server.list_keys(BUCKET) == []
    assert server.multipart_uploads(BUCKET) == []


def test_each_test_starts_empty(s3: S3Server) -> None:
    # test_reset_forgets_everything and others left buckets behind; the fixture wiped them.
    assert s3.client().list_buckets()["Buckets"] == []


def test_env_has_dummy_credentials_and_no_user_config() -> None:
    env = s3_environ({"AWS_PROFILE": "mine", "HOME": "/h", "AWS_SESSION_TOKEN": "t"})
    assert env["HOME"] == "/h"
    assert not set(S3_ENV_UNSET) & set(env)
    assert env["AWS_EC2_METADATA_DISABLED"] == "true"
    assert env["AWS_DEFAULT_REGION"] == "us-east-1"
    assert not Path(S3_ENV["AWS_CONFIG_FILE"]).exists()


def test_s3_env_fixture(s3_env: dict[str, str]) -> None:
    assert s3_env == S3_ENV
    assert s3_env is not S3_ENV


def test_own_server_process_is_gone_after_stop(tmp_path: Path) -> None:
    srv = S3Server(tmp_path / "own", name="own")
    srv.start()
    pid, port = srv.pid, srv.port
    assert pid is not None and srv.alive()
    os.kill(pid, 0)  # exists
    srv.create_bucket("own-bucket")
    assert srv.list_keys("own-bucket") == []
    srv.stop()
    assert srv.pid is None and not srv.alive()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert srv.log.exists()
    srv.stop()  # idempotent


# -- the proxy: plain relaying -------------------------------------------------


def test_proxy_relays_put_get_head_list(client: Any, proxy: FaultProxy) -> None:
    client.put_object(Bucket=BUCKET, Key="x/obj", Body=b"0123456789")
    assert client.get_object(Bucket=BUCKET, Key="x/obj")["Body"].read() == b"0123456789"
    got = client.get_object(Bucket=BUCKET, Key="x/obj", Range="bytes=2-5")
    assert (got["ContentRange"], got["Body"].read()) == ("bytes 2-5/10", b"2345")
    assert client.head_object(Bucket=BUCKET, Key="x/obj")["ContentLength"] == 10
    with pytest.raises(ClientError) as missing:
        client.head_object(Bucket=BUCKET, Key="x/none")
    assert error_code(missing.value) == "404"
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix="x/")
    assert [o["Key"] for o in listed["Contents"]] == ["x/obj"]
    client.delete_object(Bucket=BUCKET, Key="x/obj")
    assert [(r.method, r.result) for r in proxy.requests] == [
        ("PUT", 200),
        ("GET", 200),
        ("GET", 206),
        ("HEAD", 200),
        ("HEAD", 404),
        ("GET", 200),
        ("DELETE", 204),
    ]
    # moto closes after every response; the proxy keeps the client's connection.
    assert proxy.connections == 1


def test_proxy_relays_multipart_upload(client: Any, server: S3Server, proxy: FaultProxy) -> None:
    part1, part2 = os.urandom(5 * MiB), os.urandom(1234)
    upload = client.create_multipart_upload(Bucket=BUCKET, Key="big")["UploadId"]
    etags = [
        client.upload_part(Bucket=BUCKET, Key="big", UploadId=upload, PartNumber=n, Body=b)["ETag"]
        for n, b in ((1, part1), (2, part2))
    ]
    client.complete_multipart_upload(
        Bucket=BUCKET,
        Key="big",
        UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]},
    )
    assert server.get(BUCKET, "big") == part1 + part2
    assert server.multipart_uploads(BUCKET) == []
    assert [r.result for r in proxy.seen("PUT", "uploadId=")] == [200, 200]
    assert "partNumber=2" in proxy.seen("PUT", "partNumber=2")[0].query


# -- the proxy: faults ---------------------------------------------------------


def test_status_rule_answers_slowdown_once(client: Any, proxy: FaultProxy) -> None:
    client.put_object(Bucket=BUCKET, Key="k", Body=b"v")
    rule = proxy.add_rule(method="GET", path_contains="/k", action="status", status=503)
    with pytest.raises(ClientError) as e:
        client.get_object(Bucket=BUCKET, Key="k")
    assert error_code(e.value) == "SlowDown"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert rule.fired == 1 and rule.exhausted
    assert client.get_object(Bucket=BUCKET, Key="k")["Body"].read() == b"v"
    assert [r.result for r in proxy.requests] == [200, 503, 200]


def test_status_rule_on_upload_never_reaches_the_server(
    client: Any, server: S3Server, proxy: FaultProxy
) -> None:
    proxy.add_rule(method="PUT", action="status", status=500, times=2)
    for _ in range(2):
        with pytest.raises(ClientError) as e:
            client.put_object(Bucket=BUCKET, Key="k", Body=b"v" * 1000)
        assert error_code(e.value) == "InternalError"
    assert server.list_keys(BUCKET) == []
    client.put_object(Bucket=BUCKET, Key="k", Body=b"v" * 1000)
    assert server.list_keys(BUCKET) == ["k"]


def test_status_rule_custom_code_and_head(client: Any, proxy: FaultProxy) -> None:
    proxy.add_rule(method="HEAD", action="status", status=403, code="AccessDenied")
    proxy.add_rule(method="GET", action="status", status=400, code="ExpiredToken")
    with pytest.raises(ClientError) as head:
        client.head_object(Bucket=BUCKET, Key="k")
    assert head.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(ClientError) as get:
        client.get_object(Bucket=BUCKET, Key="k")
    assert error_code(get.value) == "ExpiredToken"


def test_rules_match_in_order_and_clear(client: Any, proxy: FaultProxy) -> None:
    client.put_object(Bucket=BUCKET, Key="k", Body=b"v")
    first = proxy.add_rule(method="GET", action="status", status=500)
    second = proxy.add_rule(method="GET", action="status", status=503, times=None)
    codes = []
    for _ in range(3):
        with pytest.raises(ClientError) as e:
            client.get_object(Bucket=BUCKET, Key="k")
        codes.append(error_code(e.value))
    assert codes == ["InternalError", "SlowDown", "SlowDown"]
    assert (first.fired, second.fired) == (1, 2)
    proxy.clear()
    assert client.get_object(Bucket=BUCKET, Key="k")["Body"].read() == b"v"


@pytest.mark.parametrize("rst", [True, False], ids=["rst", "fin"])
def test_cut_request_mid_part_leaves_the_upload_consistent(
    client: Any, server: S3Server, proxy: FaultProxy, rst: bool
) -> None:
    part1, part2 = os.urandom(5 * MiB), os.urandom(2 * MiB)
    upload = client.create_multipart_upload(Bucket=BUCKET, Key="big")["UploadId"]
    etag1 = client.upload_part(Bucket=BUCKET, Key="big", UploadId=upload, PartNumber=1, Body=part1)
    rule = proxy.add_rule(
        method="PUT", query_contains="partNumber=2", action="cut_request", after_bytes=MiB, rst=rst
    )
    with pytest.raises(CONNECTION_ERRORS):
        client.upload_part(Bucket=BUCKET, Key="big", UploadId=upload, PartNumber=2, Body=part2)
    assert rule.fired == 1
    assert proxy.requests[-1] == Logged("PUT", proxy.requests[-1].path, "cut_request")
    parts = server.client().list_parts(Bucket=BUCKET, Key="big", UploadId=upload)
    assert [(p["PartNumber"], p["Size"]) for p in parts.get("Parts", [])] == [(1, 5 * MiB)]
    assert [u["UploadId"] for u in server.multipart_uploads(BUCKET)] == [upload]
    # The client's pool recovers and the upload can go on.
    etag2 = client.upload_part(Bucket=BUCKET, Key="big", UploadId=upload, PartNumber=2, Body=part2)
    client.complete_multipart_upload(
        Bucket=BUCKET,
        Key="big",
        UploadId=upload,
        MultipartUpload={
            "Parts": [
                {"PartNumber": 1, "ETag": etag1["ETag"]},
                {"PartNumber": 2, "ETag": etag2["ETag"]},
            ]
        },
    )
    assert server.get(BUCKET, "big") == part1 + part2


def test_cut_request_of_a_small_put_stores_nothing(
    client: Any, server: S3Server, proxy: FaultProxy
) -> None:
    proxy.add_rule(method="PUT", action="cut_request", after_bytes=10)
    with pytest.raises(CONNECTION_ERRORS):
        client.put_object(Bucket=BUCKET, Key="small", Body=b"x" * 100)
    assert server.list_keys(BUCKET) == []


@pytest.mark.parametrize("rst", [True, False], ids=["rst", "fin"])
def test_cut_response_mid_download_raises_while_reading(
    client: Any, server: S3Server, proxy: FaultProxy, rst: bool
) -> None:
    data = os.urandom(MiB)
    server.put(BUCKET, "obj", data)
    proxy.add_rule(
        method="GET", path_contains="/obj", action="cut_response", after_bytes=1000, rst=rst
    )
    got = client.get_object(Bucket=BUCKET, Key="obj")
    assert got["ContentLength"] == MiB  # the head came through whole
    with pytest.raises(STREAM_ERRORS):
        got["Body"].read()
    assert proxy.requests[-1].result == "cut_response"
    assert client.get_object(Bucket=BUCKET, Key="obj")["Body"].read() == data


def test_cut_response_delivers_exactly_the_first_bytes(server: S3Server, proxy: FaultProxy) -> None:
    data = os.urandom(300_000)
    server.put(BUCKET, "obj", data)
    proxy.add_rule(method="GET", action="cut_response", after_bytes=200_000)
    # moto refuses anonymous reads of private objects: sign the URL.
    url = server.client(proxy.url).generate_presigned_url(
        "get_object", Params={"Bucket": BUCKET, "Key": "obj"}
    )
    target = url.removeprefix(proxy.url)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{proxy.port}\r\n\r\n".encode())
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b"Content-Length: 300000" in head
    assert body == data[:200_000]


def test_delay_rule_slows_one_request(server: S3Server, proxy: FaultProxy) -> None:
    server.put(BUCKET, "k", b"v")
    impatient = server.client(proxy.url, NO_RETRIES.merge(Config(read_timeout=0.3)))
    proxy.add_rule(method="GET", action="delay", seconds=0.8)
    with pytest.raises(ReadTimeoutError):
        impatient.get_object(Bucket=BUCKET, Key="k")
    client = server.client(proxy.url, NO_RETRIES)
    proxy.add_rule(method="GET", action="delay", seconds=1.0)
    start = time.monotonic()
    assert client.get_object(Bucket=BUCKET, Key="k")["Body"].read() == b"v"
    assert time.monotonic() - start >= 1.0
    start = time.monotonic()
    client.get_object(Bucket=BUCKET, Key="k")
    assert time.monotonic() - start < 1.0


def test_stop_closes_connections_and_threads(server: S3Server) -> None:
    before = set(threading.enumerate())
    proxy = FaultProxy("127.0.0.1", server.port).start()
    client = server.client(proxy.url, NO_RETRIES)
    client.list_buckets()  # leaves an idle keep-alive connection in the pool
    proxy.add_rule(action="delay", seconds=30)
    blocked = threading.Thread(target=lambda: _swallow(client.list_buckets), daemon=True)
    blocked.start()
    time.sleep(0.2)
    start = time.monotonic()
    proxy.stop()
    assert time.monotonic() - start < 5
    blocked.join(timeout=5)
    assert not blocked.is_alive()
    assert not [t for t in set(threading.enumerate()) - before if "FaultProxy" in t.name]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=2).close()
    assert proxy._sockets == set()


def _swallow(call: Any) -> None:
    with contextlib.suppress(Exception):
        call()


def test_chunked_request_body_is_relayed(server: S3Server, proxy: FaultProxy) -> None:
    url = server.client(proxy.url).generate_presigned_url(
        "put_object", Params={"Bucket": BUCKET, "Key": "chunked"}
    )
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    conn.request("PUT", url.removeprefix(proxy.url), body=iter([b"hello", b" ", b"world"]))
    response = conn.getresponse()
    response.read()
    assert response.status == 200
    assert server.get(BUCKET, "chunked") == b"hello world"
    conn.close()


class _Upstream(http.server.BaseHTTPRequestHandler):
    """Answers that moto never gives: chunked, EOF-delimited, 204, 304, 1xx."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"abc", b"defgh"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\nX-Trailer: 1\r\n\r\n")
        elif self.path == "/eof":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"until the end")
            self.close_connection = True
        elif self.path == "/304":
            self.send_response(304)
            self.send_header("ETag", '"x"')
            self.end_headers()
        elif self.path == "/early-hints":
            self.send_response_only(103)
            self.send_header("Link", "</x>")
            self.end_headers()
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
        else:
            self.send_response(204)
            self.end_headers()

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "12345")
        self.end_headers()


@pytest.fixture
def plain_upstream() -> Iterator[http.server.ThreadingHTTPServer]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_response_framings_on_one_connection(
    plain_upstream: http.server.ThreadingHTTPServer,
) -> None:
    with FaultProxy("127.0.0.1", plain_upstream.server_address[1]) as proxy:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
        got = []
        for method, path in [
            ("GET", "/chunked"),
            ("HEAD", "/any"),
            ("GET", "/304"),
            ("GET", "/204"),
            ("GET", "/early-hints"),
            ("GET", "/eof"),
        ]:
            conn.request(method, path)
            response = conn.getresponse()
            got.append((response.status, response.read()))
        conn.close()
        assert got == [
            (200, b"abcdefgh"),
            (200, b""),
            (304, b""),
            (204, b""),
            (200, b"ok"),
            (200, b"until the end"),
        ]
        assert proxy.connections == 1  # kept alive until the EOF-delimited answer
        assert [r.result for r in proxy.requests] == [200, 200, 304, 204, 200, 200]


def test_upstream_down_drops_the_connection(tmp_path: Path) -> None:
    srv = S3Server(tmp_path / "down", name="down")
    srv.start()
    try:
        with FaultProxy("127.0.0.1", srv.port) as proxy:
            client = srv.client(proxy.url, NO_RETRIES)
            client.list_buckets()
            srv.stop()
            with pytest.raises(CONNECTION_ERRORS):
                client.list_buckets()
            assert proxy.requests[-1].result == "upstream_error"
            srv.start()  # same port
            assert client.list_buckets()["Buckets"] == []
    finally:
        srv.stop()
