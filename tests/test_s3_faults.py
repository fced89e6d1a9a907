"""S3 nodes under faults: a fault-injecting HTTP proxy on loopback between the node and
the S3 endpoint answers 500/503 SlowDown and cuts connections mid-part during uploads
and mid-body during downloads. Each transfer either completes after retries or fails
cleanly, leaving no partial object and no dangling multipart upload."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from faultproxy import FaultProxy
from node_conformance import make_key, payload
from s3server import S3Server
from test_s3_node import BUCKET, CIPHER, base_of, fast_retries

from shared.errors import NodeError, Unavailable
from shared.nodes import open_node
from shared.nodes.base import Node
from shared.nodes.url import parse_node

MiB = 1024 * 1024
BIG = 12 * MiB + 333  # three parts of 5 MiB


@pytest.fixture(autouse=True)
def _aws_env(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in s3_env.items():
        monkeypatch.setenv(k, v)


@pytest.fixture
def proxy(s3: S3Server) -> Iterator[FaultProxy]:
    s3.create_bucket(BUCKET)
    with FaultProxy("127.0.0.1", s3.port) as p:
        yield p


def node_via(proxy: FaultProxy, attempts: int = 4, **params: str) -> Node:
    query = "&".join(
        f"{k}={v}"
        for k, v in {
            "endpoint": proxy.url,
            "partsize": "5MiB",
            "attempts": str(attempts),
            **params,
        }.items()
    )
    node = open_node(parse_node(f"n=s3://{BUCKET}/f/?{query}"))
    fast_retries(node)
    return node


def clean(s3: S3Server) -> bool:
    return s3.multipart_uploads(BUCKET) == []


def fetch(node: Node, key: object, offset: int = 0) -> bytes:
    out = io.BytesIO()
    node.retrieve(key, out, offset)  # type: ignore[arg-type]
    return out.getvalue()


@pytest.mark.parametrize(
    ("status", "code"), [(503, "SlowDown"), (500, "InternalError"), (503, "ServiceUnavailable")]
)
def test_upload_parts_are_retried_after_errors(
    proxy: FaultProxy, s3: S3Server, status: int, code: str
) -> None:
    node = node_via(proxy)
    data = payload(BIG)
    key = make_key(data)
    proxy.add_rule(method="PUT", query_contains="partNumber=2", status=status, code=code, times=2)
    assert node.store(key, io.BytesIO(data), len(data))
    assert proxy.rules[0].fired == 2
    assert fetch(node, key) == data
    assert clean(s3)


def test_upload_part_cut_mid_body_is_sent_again(proxy: FaultProxy, s3: S3Server) -> None:
    node = node_via(proxy)
    data = payload(BIG)
    key = make_key(data)
    proxy.add_rule(
        method="PUT", query_contains="partNumber=1", action="cut_request", after_bytes=MiB
    )
    proxy.add_rule(
        method="PUT", query_contains="partNumber=3", action="cut_request", after_bytes=10
    )
    assert node.store(key, io.BytesIO(data), len(data))
    assert all(r.fired == 1 for r in proxy.rules)
    assert fetch(node, key) == data
    assert clean(s3)


def test_single_put_cut_mid_body_is_sent_again(proxy: FaultProxy, s3: S3Server) -> None:
    node = node_via(proxy)
    data = payload(2 * MiB)
    key = make_key(data)
    proxy.add_rule(method="PUT", action="cut_request", after_bytes=100_000)
    assert node.store(key, io.BytesIO(data), len(data))
    assert fetch(node, key) == data


def test_upload_that_keeps_failing_is_aborted_and_leaves_nothing(
    proxy: FaultProxy, s3: S3Server
) -> None:
    node = node_via(proxy, attempts=3)
    data = payload(BIG)
    key = make_key(data)
    proxy.add_rule(method="PUT", query_contains="partNumber=2", action="cut_request", times=None)
    with pytest.raises(Unavailable, match="part 2"):
        node.store(key, io.BytesIO(data), len(data))
    proxy.clear()
    assert node_via(proxy).present(key) is None
    assert s3.list_keys(BUCKET) == []
    assert clean(s3)
    # The node was marked down for a while; a fresh handle stores fine.
    node = node_via(proxy)
    assert node.store(key, io.BytesIO(data), len(data))
    assert fetch(node, key) == data


def test_complete_that_fails_is_retried(proxy: FaultProxy, s3: S3Server) -> None:
    node = node_via(proxy)
    data = payload(BIG)
    key = make_key(data)
    proxy.add_rule(method="POST", query_contains="uploadId", status=500, times=1)
    assert node.store(key, io.BytesIO(data), len(data))
    assert fetch(node, key) == data
    assert clean(s3)


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_download_cut_mid_body_resumes_with_a_ranged_get(
    proxy: FaultProxy, s3: S3Server, encrypted: bool
) -> None:
    extra = {"encryption": "shared", "cipher": CIPHER.to_config()} if encrypted else {}
    node = node_via(proxy, **extra)
    data = payload(BIG)
    key = make_key(data)
    node.store(key, io.BytesIO(data), len(data))
    proxy.add_rule(method="GET", action="cut_response", after_bytes=3 * MiB, times=2)
    assert fetch(node, key) == data
    gets = [r for r in proxy.requests if r.method == "GET"]
    assert len(gets) == 3
    assert proxy.rules[0].fired == 2


def test_download_errors_are_retried(proxy: FaultProxy, s3: S3Server) -> None:
    node = node_via(proxy, chunk="1MiB")
    data = payload(3 * MiB + 5)
    key = make_key(data)
    node.store(key, io.BytesIO(data), len(data))
    proxy.add_rule(method="GET", status=503, code="SlowDown", times=3)
    proxy.add_rule(method="HEAD", status=500, times=1)
    assert fetch(node, key, 1234) == data[1234:]


def test_presence_of_an_unreachable_node_is_unknown_not_absent(
    proxy: FaultProxy, s3: S3Server
) -> None:
    node = node_via(proxy, attempts=2)
    proxy.add_rule(method="HEAD", status=503, times=None)
    with pytest.raises(Unavailable):
        node.present(make_key(b"anything"))


def test_chunked_upload_failing_midway_resumes_from_the_first_missing_chunk(
    proxy: FaultProxy, s3: S3Server
) -> None:
    node = node_via(proxy, attempts=2, chunk="1MiB")
    data = payload(4 * MiB)
    key = make_key(data)
    # The third chunk's PUT fails every time: the store fails, two chunks stay.
    chunks = node.inner.chunks(key)  # type: ignore[attr-defined]
    proxy.add_rule(method="PUT", path_contains=str(chunks[2]), status=500, times=None)
    with pytest.raises(NodeError):
        node.store(key, io.BytesIO(data), len(data))
    proxy.clear()
    # (The failing node is marked down for a while: the next process tries again.)
    assert node_via(proxy, chunk="1MiB").present(key) is None  # a partial set is not the key
    before = len(proxy.requests)
    node = node_via(proxy, chunk="1MiB")
    assert node.store(key, io.BytesIO(data), len(data))
    puts = [r.path for r in proxy.requests[before:] if r.method == "PUT"]
    assert any(str(chunks[2]) in p for p in puts)
    assert not any(str(c) in p for c in chunks[:2] for p in puts)  # not sent again
    assert fetch(node, key) == data
    assert clean(s3)
    assert base_of(node).bucket == BUCKET
