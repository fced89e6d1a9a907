"""s3:// nodes against a real S3 endpoint (moto_server on loopback): the conformance
suite for plain, chunked, encrypted and chunked+encrypted nodes, plus what is
particular to S3 (multipart, object names, retries, aborted uploads)."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from node_conformance import NodeConformance, NodeFactory, make_key, payload
from s3server import S3Server

from shared.crypto import Cipher
from shared.errors import ConfigError, IntegrityError, PermissionDenied, Unavailable
from shared.nodes import open_node
from shared.nodes.base import Node
from shared.nodes.chunked import ChunkedNode
from shared.nodes.encrypted import EncryptedNode
from shared.nodes.retry import RetryingNode
from shared.nodes.s3 import S3Node
from shared.nodes.url import parse_node

BUCKET = "nodes"
CIPHER = Cipher.generate()
MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def _aws_env(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in s3_env.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(k, raising=False)


def s3_url(server: S3Server, prefix: str = "annex/", **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"endpoint": server.endpoint, **params}.items())
    return f"n=s3://{BUCKET}/{prefix}?{query}"


def open_s3(server: S3Server, prefix: str = "annex/", **params: str) -> Node:
    node = open_node(parse_node(s3_url(server, prefix, **params)))
    fast_retries(node)
    return node


def base_of(node: Node) -> S3Node:
    while not isinstance(node, S3Node):
        node = node.inner  # type: ignore[attr-defined]
    return node


def fast_retries(node: Node) -> None:
    base = base_of(node)
    base.initial_wait = 0.01
    base.max_wait = 0.05


class S3Conformance(NodeConformance):
    params: dict[str, str] = {}  # noqa: RUF012 - per-class constant
    utf8_names_only = True

    @pytest.fixture
    def make_node(self, s3: S3Server) -> NodeFactory:
        s3.create_bucket(BUCKET)
        return lambda: open_s3(s3, **self.params)

    @pytest.fixture
    def make_missing_node(self, s3: S3Server) -> NodeFactory:
        def make() -> Node:
            url = s3_url(s3, **self.params).replace(f"s3://{BUCKET}/", "s3://no-such-bucket/")
            node = open_node(parse_node(url))
            fast_retries(node)
            return node

        return make

    @pytest.fixture(autouse=True)
    def _server(self, s3: S3Server) -> None:
        self.server = s3

    def leftovers(self, node: Node) -> list[str]:
        return [str(u) for u in self.server.multipart_uploads(BUCKET)]


class TestS3NodeConformance(S3Conformance):
    # Several parts of the smallest part size S3 allows: exercises multipart uploads.
    big_size = 11 * MiB + 12345


class TestChunkedS3NodeConformance(S3Conformance):
    params = {"chunk": "1MiB"}  # noqa: RUF012


class TestEncryptedS3NodeConformance(S3Conformance):
    utf8_names_only = False  # objects are named by an HMAC
    tells_sizes = False  # the stored size is the ciphertext's
    checks_stored_size = False
    params = {"encryption": "shared", "cipher": CIPHER.to_config()}  # noqa: RUF012


class TestChunkedEncryptedS3NodeConformance(S3Conformance):
    utf8_names_only = False
    tells_sizes = False
    checks_stored_size = False
    params = {"chunk": "1MiB", "encryption": "shared", "cipher": CIPHER.to_config()}  # noqa: RUF012


# -- layout and layering ------------------------------------------------------


@pytest.fixture
def server(s3: S3Server) -> Iterator[S3Server]:
    s3.create_bucket(BUCKET)
    yield s3


def test_objects_are_named_prefix_plus_key(server: S3Server) -> None:
    node = open_s3(server, prefix="some/prefix-")
    data = payload(1000)
    key = make_key(data)
    node.store(key, io.BytesIO(data), len(data))
    assert server.list_keys(BUCKET) == [f"some/prefix-{key}"]


def test_chunked_names_are_git_annex_chunk_keys(server: S3Server) -> None:
    node = open_s3(server, chunk="1000")
    data = payload(2500)
    key = make_key(data)
    node.store(key, io.BytesIO(data), len(data))
    names = sorted(server.list_keys(BUCKET))
    stem = str(key).split("--", 1)
    assert names == sorted(f"annex/{stem[0]}-S1000-C{n}--{stem[1]}" for n in (1, 2, 3))


def test_encrypted_names_are_hmac_of_the_chunk_keys(server: S3Server) -> None:
    node = open_s3(server, chunk="1000", encryption="shared", cipher=CIPHER.to_config())
    data = payload(1500)
    key = make_key(data)
    node.store(key, io.BytesIO(data), len(data))
    chunked = ChunkedNode(node, 1000)  # only to name the chunks
    expected = sorted("annex/" + CIPHER.encrypt_key(str(c)) for c in chunked.chunks(key))
    assert sorted(server.list_keys(BUCKET)) == expected
    assert all(n.startswith("annex/GPGHMACSHA1--") for n in expected)


def test_open_node_layers_in_git_annex_order(server: S3Server) -> None:
    node = open_s3(server, chunk="1MiB", encryption="shared", cipher=CIPHER.to_config())
    assert isinstance(node, RetryingNode)
    assert isinstance(node.inner, ChunkedNode)
    assert isinstance(node.inner.inner, EncryptedNode)
    assert isinstance(node.inner.inner.inner, S3Node)


def test_encryption_without_cipher_is_refused(server: S3Server) -> None:
    with pytest.raises(ConfigError, match="no cipher is recorded"):
        open_s3(server, encryption="shared")


def test_unknown_parameter_is_refused(server: S3Server) -> None:
    with pytest.raises(ConfigError, match="unknown parameter"):
        open_s3(server, colour="blue")


def test_cipher_never_shows_in_repr(server: S3Server) -> None:
    node = open_s3(server, encryption="shared", cipher=CIPHER.to_config())
    assert CIPHER.to_config()[:20] not in repr(node)


def test_chunked_store_resumes_at_the_first_missing_chunk(server: S3Server) -> None:
    node = open_s3(server, chunk="1000")
    data = payload(3500)
    key = make_key(data)
    chunker = node.inner  # type: ignore[attr-defined]
    first_two = chunker.chunks(key)[:2]
    for c in first_two:
        base_of(node).store(c, io.BytesIO(data[: c.content_size]), c.content_size or 0)
    # The first two chunks hold the wrong bytes: a trusted store does not rewrite them,
    # which shows it resumed after them.
    node.store(key, io.BytesIO(data), len(data))
    got = io.BytesIO()
    node.retrieve(key, got)
    assert got.getvalue()[2000:] == data[2000:]
    assert got.getvalue()[:1000] == data[:1000]


def test_untrusted_chunked_store_rewrites_and_cleans_up(server: S3Server) -> None:
    spec = parse_node(s3_url(server, chunk="1000"))
    node = open_node(spec, trusted_source=False)
    fast_retries(node)
    data = payload(3500)
    key = make_key(data)
    chunker = node.inner  # type: ignore[attr-defined]
    stale = chunker.chunks(key)[0]
    base_of(node).store(stale, io.BytesIO(b"x" * 1000), 1000)
    node.store(key, io.BytesIO(data), len(data))
    got = io.BytesIO()
    node.retrieve(key, got)
    assert got.getvalue() == data
    # A failed untrusted store removes the chunks it wrote.
    node.remove(key)
    with pytest.raises(IntegrityError):
        node.store(key, io.BytesIO(data[:-1]), len(data))
    assert server.list_keys(BUCKET) == []


def test_retrieve_from_offset_inside_a_later_chunk(server: S3Server) -> None:
    node = open_s3(server, chunk="1000", encryption="shared", cipher=CIPHER.to_config())
    data = payload(3500)
    key = make_key(data)
    node.store(key, io.BytesIO(data), len(data))
    for offset in (0, 999, 1000, 2501, 3499, 3500):
        got = io.BytesIO()
        node.retrieve(key, got, offset)
        assert got.getvalue() == data[offset:], offset


def test_chunked_node_reads_whole_objects_stored_before_chunking(server: S3Server) -> None:
    data = payload(3000)
    key = make_key(data)
    open_s3(server).store(key, io.BytesIO(data), len(data))
    chunked = open_s3(server, chunk="1000")
    assert chunked.present(key) == 3000
    got = io.BytesIO()
    chunked.retrieve(key, got)
    assert got.getvalue() == data
    chunked.remove(key)
    assert server.list_keys(BUCKET) == []


def test_missing_bucket_is_a_clear_error(s3: S3Server) -> None:
    node = open_s3(s3)
    with pytest.raises(Unavailable, match="bucket 'nodes' does not exist"):
        node.check()


def test_missing_credentials_are_a_clear_error(
    server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    node = open_s3(server)
    with pytest.raises(PermissionDenied, match="no S3 credentials"):
        node.present(make_key(b"x"))


def test_large_object_memory_stays_bounded(server: S3Server) -> None:
    """A 100 MiB multipart upload holds a few parts at once, not the object."""
    import tracemalloc

    node = open_s3(server, partsize="5MiB", concurrency="2")

    class Zeros:
        def __init__(self, n: int) -> None:
            self.left = n

        def read(self, n: int = -1) -> bytes:
            n = self.left if n < 0 else min(n, self.left)
            self.left -= n
            return bytes(n)

    size = 100 * MiB
    key = make_key(b"zeros")
    key = type(key)("SHA256E", "0" * 64, size=size)
    tracemalloc.start()
    try:
        node.store(key, Zeros(size), size)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert node.present(key) == size
    assert peak < 8 * 5 * MiB, peak  # (concurrency + reading + copies in flight) parts


# -- presence that means it ------------------------------------------------------------


def _count_requests(node: Node) -> dict[str, int]:
    """Requests the node's client sends, by operation name (botocore's event hooks)."""
    counts: dict[str, int] = {}

    def count(model: object, **_kwargs: object) -> None:
        name = getattr(model, "name", "?")
        counts[name] = counts.get(name, 0) + 1

    base_of(node)._client.meta.events.register("before-call.s3", count)
    return counts


def test_a_deleted_bucket_is_unavailable_not_absent(server: S3Server) -> None:
    """HEAD of an object in a missing bucket is a bare 404, like a missing object's:
    the node asks about the bucket before it says "absent"."""
    node = open_s3(server)
    data = payload(100)
    key = make_key(data)
    node.store(key, io.BytesIO(data), len(data))
    assert node.present(make_key(b"other")) is None  # the bucket is seen to exist
    client = server.client()
    client.delete_object(Bucket=BUCKET, Key=f"annex/{key}")
    client.delete_bucket(Bucket=BUCKET)
    fresh = open_s3(server)  # a new process: nothing seen yet
    for op in (lambda: fresh.present(key), lambda: fresh.remove(key)):
        with pytest.raises(Unavailable, match=r"bucket 'nodes' does not exist .*\(deleted"):
            op()


def test_the_bucket_is_asked_about_at_most_once_per_interval(
    server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy of many new keys must not double its requests: one HEAD of the bucket per
    BUCKET_RECHECK seconds, and none at all for keys that are there."""
    import shared.nodes.s3 as s3_module

    node = open_s3(server)
    counts = _count_requests(node)
    data = payload(10)
    held = make_key(data)
    node.store(held, io.BytesIO(data), len(data))
    counts.clear()
    assert node.present(held) == 10
    assert counts == {"HeadObject": 1}
    for n in range(50):
        assert node.present(make_key(b"absent %d" % n)) is None
    assert counts == {"HeadObject": 51, "HeadBucket": 1}
    # After the interval, the next 404 asks again: a bucket deleted meanwhile shows.
    server.client().delete_object(Bucket=BUCKET, Key=f"annex/{held}")
    server.client().delete_bucket(Bucket=BUCKET)
    monkeypatch.setattr(s3_module, "BUCKET_RECHECK", 0.0)
    with pytest.raises(Unavailable, match="does not exist"):
        node.present(held)


def test_a_wrong_size_object_is_a_bad_replica_with_both_sizes(server: S3Server) -> None:
    from shared.errors import BadReplica

    node = open_s3(server)
    data = payload(5000)
    key = make_key(data)
    server.put(BUCKET, f"annex/{key}", b"")
    with pytest.raises(BadReplica) as info:
        node.present(key)
    assert str(info.value) == (
        f"node n: {key} in s3://{BUCKET}/annex/ has 0 bytes, not 5000: a bad replica, "
        "not a copy (a store replaces it)"
    )
    assert node.store(key, io.BytesIO(data), len(data)) is True
    assert server.get(BUCKET, f"annex/{key}") == data


def test_url_keys_keep_their_slashes_dot_segments_never_reach_the_endpoint(
    server: S3Server,
) -> None:
    """Objects are named as git-annex's S3 remote names them (fileprefix ++ key, '/'
    and all, so both read each other's URL keys); a key with a '.' or '..' segment is
    refused before any request, even one made without the parser's checks."""
    from shared.annex.keys import Key
    from shared.errors import InvalidKey

    node = open_s3(server)
    url_key = Key.parse("URL--https://example.com/a//b/")
    node.store(url_key, io.BytesIO(b"page"), 4)
    assert server.list_keys(BUCKET) == ["annex/URL--https://example.com/a//b/"]
    with pytest.raises(InvalidKey):
        Key.parse("WORM--x/../../other/KEY")
    forged = object.__new__(Key)  # past __post_init__, as a bug elsewhere might make one
    for field, value in (("backend", "WORM"), ("name", "x/../../other/KEY")):
        object.__setattr__(forged, field, value)
    for field in ("size", "mtime", "chunk_size", "chunk_num"):
        object.__setattr__(forged, field, None)
    counts = _count_requests(node)
    for op in (
        lambda: node.present(forged),
        lambda: node.store(forged, io.BytesIO(b"x"), 1),
        lambda: node.remove(forged),
        lambda: node.retrieve(forged, io.BytesIO()),
    ):
        with pytest.raises(InvalidKey, match="segment"):
            op()
    assert counts == {}


def test_a_chunk_of_the_wrong_size_is_a_bad_replica_and_a_store_rewrites_it(
    server: S3Server,
) -> None:
    """Every chunk must be there with the exact size its position gives it."""
    from shared.errors import BadReplica

    node = open_s3(server, chunk="1000")
    data = payload(2500)
    key = make_key(data)
    node.store(key, io.BytesIO(data), len(data))
    second = ChunkedNode(node, 1000).chunks(key)[1]
    server.put(BUCKET, f"annex/{second}", data[1000:1500])
    with pytest.raises(BadReplica, match=r"-C2--.* has 500 bytes, not 1000"):
        node.present(key)
    assert node.store(key, io.BytesIO(data), len(data)) is True
    assert node.present(key) == 2500
    assert server.get(BUCKET, f"annex/{second}") == data[1000:2000]
