"""``s3://bucket/prefix`` nodes: objects in an S3 or S3-compatible bucket, on boto3.

Objects are named ``prefix + key``, flat, as git-annex's S3 special remote names
them, so a bucket written by one can be read by the other (chunking and
encryption are layers above this module: ``shared.nodes.chunked`` and
``shared.nodes.encrypted``).

Transfers stream with bounded memory: an upload larger than one part is a
multipart upload with at most ``concurrency`` parts in flight, each part retried
on its own; a failed multipart upload is aborted, so neither a partial object nor
a dangling upload is left behind. A download is one streamed GET that continues
with a ranged GET from the byte reached when the connection drops.

Retries happen here, per request, with tenacity (exponential backoff with
jitter) on throttling, 5xx answers and dropped connections; botocore's own
retries are switched off so that the two never multiply.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit

from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from shared.annex.keys import Key
from shared.errors import (
    ConfigError,
    IntegrityError,
    InvalidKey,
    NodeError,
    NoSpace,
    NotFound,
    PermissionDenied,
    Unavailable,
    Unsupported,
)
from shared.nodes.base import KnownKeys, Node, check_size
from shared.nodes.owner import MARKER, MARKER_MAX, marker_text, parse_marker
from shared.nodes.url import NodeSpec, parse_size
from shared.streams import BLOCK, Readable, Writable, read_up_to

T = TypeVar("T")

MiB = 1024 * 1024
# HEAD of an object in a missing bucket is a bare 404, like a missing object: a 404
# is only taken for "absent" once the bucket was seen to exist within this many seconds
# (one HEAD of the bucket at most this often, not one per key).
BUCKET_RECHECK = 10.0
DEFAULT_PARTSIZE = 8 * MiB
MIN_PARTSIZE = 5 * MiB  # S3's limit for every part but the last
MAX_PARTS = 10_000

PARAMS = (
    "endpoint",
    "region",
    "style",
    "storageclass",
    "profile",
    "partsize",
    "concurrency",
    "attempts",
)

# Answers that may succeed when asked again (S3's own list, plus 5xx).
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequests",
        "TooManyRequestsException",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
        "BandwidthLimitExceeded",
        "500",
        "502",
        "503",
        "504",
    }
)
_DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "403",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "AllAccessDisabled",
    }
)
_ABSENT_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


def _code(exc: BaseException) -> str | None:
    """The S3 error code of a botocore ClientError, None for anything else."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    error = response.get("Error") or {}
    code = error.get("Code")
    if code is None:
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        code = str(status) if status is not None else None
    return str(code) if code is not None else None


def _is_connection_error(exc: BaseException) -> bool:
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import (
        HTTPClientError,
        IncompleteReadError,
        ResponseStreamingError,
    )
    from urllib3.exceptions import HTTPError as Urllib3Error

    # HTTPClientError: ConnectionClosedError, ReadTimeoutError and the other drops.
    return isinstance(
        exc,
        BotoConnectionError
        | HTTPClientError
        | ResponseStreamingError
        | IncompleteReadError
        | Urllib3Error
        | ConnectionError
        | TimeoutError,
    )


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, _Truncated):
        return True
    code = _code(exc)
    if code is not None:
        return code in _TRANSIENT_CODES or code.startswith("5")
    return _is_connection_error(exc)


class _Truncated(Exception):
    """A download ended before the object did, without an error from the connection."""


class S3Node(Node):
    """One bucket (and prefix) of an S3 endpoint."""

    def __init__(self, spec: NodeSpec) -> None:
        super().__init__(spec)
        parts = urlsplit(spec.url)
        params = dict(spec.params)
        unknown = sorted(set(params) - set(PARAMS))
        if unknown:
            raise ConfigError(
                f"node {spec.name}: unknown parameter(s) for s3:// nodes: {', '.join(unknown)} "
                f"(known: {', '.join(PARAMS)}, chunk, encryption, mac, annexremote)"
            )
        self.bucket = parts.hostname or ""
        if not self.bucket:
            raise ConfigError(
                f"node {spec.name}: {spec.url!r} names no bucket: write s3://BUCKET/PREFIX, "
                "or s3://?annexremote=NAME to use a git-annex S3 remote's bucket"
            )
        if parts.port is not None or parts.username:
            raise ConfigError(
                f"node {spec.name}: write the endpoint as ?endpoint=URL, not in the bucket part "
                f"of {spec.url!r}"
            )
        self.prefix = unquote(parts.path).lstrip("/")
        self.endpoint = params.get("endpoint") or None
        if self.endpoint is not None and urlsplit(self.endpoint).scheme not in ("http", "https"):
            raise ConfigError(
                f"node {spec.name}: endpoint={self.endpoint!r} must be an http:// or https:// URL"
            )
        self.region = params.get("region") or None
        style = params.get("style", "path" if self.endpoint else "virtual")
        if style not in ("path", "virtual"):
            raise ConfigError(f"node {spec.name}: style must be path or virtual, not {style!r}")
        self.style = style
        self.storageclass = params.get("storageclass") or None
        self.profile = params.get("profile") or None
        try:
            self.partsize = parse_size(params.get("partsize", str(DEFAULT_PARTSIZE)))
            self.concurrency = int(params.get("concurrency", "4"))
            self.attempts = int(params.get("attempts", "5"))
        except (ConfigError, ValueError) as e:
            raise ConfigError(
                f"node {spec.name}: partsize must be a size, concurrency and attempts numbers"
            ) from e
        if self.partsize < MIN_PARTSIZE:
            raise ConfigError(f"node {spec.name}: partsize must be at least 5MiB (S3's minimum)")
        if not 1 <= self.concurrency <= 64 or not 1 <= self.attempts <= 20:
            raise ConfigError(f"node {spec.name}: concurrency must be 1 to 64 and attempts 1 to 20")
        self._client_obj: Any = None
        self._client_lock = threading.Lock()
        self._bucket_seen = float("-inf")  # when the bucket was last seen to exist
        self._parts_pool: ThreadPoolExecutor | None = None
        # Tests shorten the backoff; users get S3's recommended exponential backoff.
        self.initial_wait = 0.25
        self.max_wait = 8.0

    @property
    def where(self) -> str:
        host = self.endpoint or "AWS"
        return f"s3://{self.bucket}/{self.prefix} at {host}"

    # -- plumbing -----------------------------------------------------------

    @property
    def _client(self) -> Any:
        """One boto3 client per node, created on first use (it is thread-safe)."""
        with self._client_lock:
            if self._client_obj is None:
                import boto3
                from botocore.config import Config

                try:
                    session = boto3.session.Session(profile_name=self.profile)
                except Exception as e:  # botocore.exceptions.ProfileNotFound and friends
                    raise ConfigError(f"node {self.name}: S3 profile: {e}") from e
                config = Config(
                    region_name=self.region or session.region_name or "us-east-1",
                    s3={"addressing_style": self.style},
                    retries={"total_max_attempts": 1},  # we retry, per request
                    connect_timeout=10,
                    read_timeout=60,
                    max_pool_connections=self.concurrency + 4,
                    tcp_keepalive=True,
                )
                self._client_obj = session.client("s3", endpoint_url=self.endpoint, config=config)
            return self._client_obj

    def _object(self, key: Key) -> str:
        """``prefix + key``, as git-annex's S3 remote names objects; raises Unsupported
        for keys S3 cannot name (not UTF-8). Keys may hold ``/`` (URL keys), never a
        ``.`` or ``..`` segment (``shared.annex.keys``, checked again here): no name leaves
        the prefix, even through a server that normalises paths."""
        text = str(key)
        if "/." in text and any(seg in (".", "..") for seg in text.split("/")):
            raise InvalidKey(f"{text!r:.80}: a '.' or '..' segment would leave the prefix")
        name = self.prefix + text
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise Unsupported(
                f"{key!s:.80} cannot be stored: S3 object names must be UTF-8 (the key has "
                "other bytes); use encryption=shared, which names objects by an HMAC",
                self.name,
            ) from None
        return name

    def _translate(self, exc: BaseException, what: str) -> NodeError:
        """One line a user can act on, naming the bucket and what to do."""
        from botocore.exceptions import NoCredentialsError, PartialCredentialsError

        if isinstance(exc, NodeError):
            return exc
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return PermissionDenied(
                f"{what}: no S3 credentials found; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or name a profile with ?profile=NAME",
                self.name,
            )
        code = _code(exc)
        if code in _ABSENT_CODES:
            return NotFound(f"{what}: not in {self.where}", self.name)
        if code == "NoSuchBucket":
            return Unavailable(
                f"{what}: bucket {self.bucket!r} does not exist at {self.endpoint or 'AWS'} "
                "(deleted, or the URL names the wrong bucket); create it or fix the node URL",
                self.name,
            )
        if code in _DENIED_CODES:
            return PermissionDenied(
                f"{what}: {self.where} refused access ({code}); check the credentials "
                "and the bucket policy",
                self.name,
            )
        if code in ("EntityTooLarge", "QuotaExceeded", "StorageFull"):
            return NoSpace(f"{what}: {self.where} refused the data ({code})", self.name)
        if code is not None:
            message = " ".join(str(getattr(exc, "response", {}).get("Error", {})).split())
            return Unavailable(f"{what}: {self.where} answered {code} {message}", self.name)
        return Unavailable(f"{what}: {self.where}: {type(exc).__name__}: {exc}", self.name)

    def _retrying(self) -> Retrying:
        return Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=self.initial_wait, max=self.max_wait)
            + wait_random(0, self.initial_wait),
            retry=retry_if_exception(_is_transient),
            reraise=True,
        )

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one request with retries; translate what still fails.

        (tenacity's iterator form: its call form keeps ``fn``, and with it an upload's
        buffer, in reference cycles that only the cyclic GC frees, so memory grew
        with the size of a transfer.)"""
        try:
            for attempt in self._retrying():
                with attempt:
                    return fn()
        except Exception as e:
            raise self._translate(e, what) from e
        raise AssertionError("unreachable: tenacity reraises")

    def _head(self, name: str, what: str) -> int | None:
        """The object's size, None when absent."""

        def head() -> int | None:
            try:
                reply = self._client.head_object(Bucket=self.bucket, Key=name)
            except Exception as e:
                if _code(e) in _ABSENT_CODES:
                    return None
                raise
            return int(reply["ContentLength"])

        return self._call(what, head)

    # -- Node ---------------------------------------------------------------

    def check(self) -> None:
        def head() -> None:
            try:
                self._client.head_bucket(Bucket=self.bucket)
            except Exception as e:
                if _code(e) in _ABSENT_CODES:  # HEAD has no body, hence no NoSuchBucket
                    e.response["Error"]["Code"] = "NoSuchBucket"  # type: ignore[attr-defined]
                raise

        self._call("checking the bucket", head)

    # -- the owner marker (shared.nodes.owner) -------------------------------

    records_owner = True

    def _record(self, name: str, what: str) -> str | None:
        """The UUID the small object ``name`` holds; None when there is no such object."""

        def get() -> bytes | None:
            try:
                reply = self._client.get_object(Bucket=self.bucket, Key=name)
            except Exception as e:
                if _code(e) == "NoSuchKey":  # not a bare 404: that may be a missing bucket
                    return None
                raise
            body = reply["Body"]
            try:
                return bytes(body.read(MARKER_MAX))
            finally:
                body.close()

        data = self._call(what, get)
        if data is None:
            return None
        return parse_marker(data, self.name, f"s3://{self.bucket}/{name}")

    def owner(self) -> str | None:
        return self._record(self.prefix + MARKER, "reading the owner record")

    def native_owner(self) -> str | None:
        # git-annex's S3 remote (Remote/S3.hs, writeUUIDFile) puts its UUID, bare, in
        # <fileprefix>annex-uuid when it creates or first uses the bucket (not for
        # exporttree/importtree remotes, whose objects are named after files).
        return self._record(self.prefix + "annex-uuid", "reading git-annex's annex-uuid")

    def claim(self, uuid: str, take_over: bool = False) -> str:
        current = self.owner()
        if current == uuid or (current is not None and not take_over):
            return current
        name = self.prefix + MARKER
        text = marker_text(uuid)
        # Unowned: a conditional PUT, so that of two first claims one wins.
        conditional = {"IfNoneMatch": "*"} if current is None else {}

        def put() -> None:
            try:
                self._client.put_object(Bucket=self.bucket, Key=name, Body=text, **conditional)
            except Exception as e:
                code = _code(e)
                if conditional and code in ("PreconditionFailed", "412"):
                    return  # another claim came first: read below whose
                if conditional and code in ("NotImplemented", "501"):
                    # An endpoint without conditional writes: a plain PUT (atomic too).
                    self._client.put_object(Bucket=self.bucket, Key=name, Body=text)
                    return
                raise

        self._call("recording the owner", put)
        return self.owner() or uuid

    def present(self, key: Key) -> int | None:
        try:
            name = self._object(key)
        except Unsupported:
            return None  # it cannot be here
        what = f"checking {key}"
        size = self._head(name, what)
        if size is None:
            self._bucket_exists(what)  # a bare 404 is also what a missing bucket answers
            return None
        return check_size(key, size, self.name, f"s3://{self.bucket}/{self.prefix}")

    def _bucket_exists(self, what: str) -> None:
        """Raise Unavailable unless the bucket exists: asked at most once per
        ``BUCKET_RECHECK`` seconds, so a copy of a thousand new keys pays it once or
        twice, while a bucket deleted (or misnamed) makes every absent key "cannot
        tell" within seconds. A refused HEAD (403) is a bucket that exists."""
        now = time.monotonic()
        if now - self._bucket_seen < BUCKET_RECHECK:
            return

        def head() -> None:
            try:
                self._client.head_bucket(Bucket=self.bucket)
            except Exception as e:
                code = _code(e)
                if code in ("403", "AccessDenied"):
                    return  # S3 answers 404 for a missing bucket, 403 for another's
                if code in _ABSENT_CODES:  # HEAD has no body, hence no NoSuchBucket
                    e.response["Error"]["Code"] = "NoSuchBucket"  # type: ignore[attr-defined]
                raise

        self._call(what, head)
        self._bucket_seen = now

    def store(self, key: Key, source: Readable, size: int) -> bool:
        if self._head(self._object(key), f"storing {key}") == size:
            return False
        self.overwrite(key, source, size)
        return True

    def overwrite(self, key: Key, source: Readable, size: int) -> None:
        name = self._object(key)
        # (A little over one part is still one request: an encrypted chunk of exactly
        # partsize grows by a few hundred bytes of OpenPGP framing.)
        if size <= self.partsize + self.partsize // 8:
            data = _read_exact(source, size, key, self.name)
            self._call(f"storing {key}", lambda: self._put(name, data))
        else:
            self._multipart(key, name, source, size)

    def _put(self, name: str, data: bytes) -> None:
        extra = {"StorageClass": self.storageclass} if self.storageclass else {}
        self._client.put_object(Bucket=self.bucket, Key=name, Body=data, **extra)

    def _pool(self) -> ThreadPoolExecutor:
        if self._parts_pool is None:
            self._parts_pool = ThreadPoolExecutor(
                max_workers=self.concurrency, thread_name_prefix=f"s3-{self.name}"
            )
        return self._parts_pool

    def _multipart(self, key: Key, name: str, source: Readable, size: int) -> None:
        """Parts are read in order and uploaded ``concurrency`` at a time; any failure
        (including a short or long source) aborts the upload."""
        what = f"storing {key}"
        partsize = max(self.partsize, -(-size // MAX_PARTS))
        extra = {"StorageClass": self.storageclass} if self.storageclass else {}
        upload = self._call(
            what,
            lambda: self._client.create_multipart_upload(Bucket=self.bucket, Key=name, **extra),
        )
        upload_id = upload["UploadId"]
        etags: dict[int, str] = {}
        pending: set[Future[None]] = set()

        def send(number: int, data: bytes) -> None:
            def part() -> None:
                reply = self._client.upload_part(
                    Bucket=self.bucket,
                    Key=name,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=data,
                )
                etags[number] = reply["ETag"]

            self._call(f"{what} (part {number})", part)

        def settle(block: bool) -> None:
            nonlocal pending
            if not pending:
                return
            done, pending = wait(pending, timeout=None if block else 0, return_when=FIRST_COMPLETED)
            for fut in done:
                fut.result()

        try:
            remaining = size
            number = 0
            while remaining > 0:
                number += 1
                data = read_up_to(source, min(partsize, remaining))
                if len(data) < min(partsize, remaining):
                    raise IntegrityError(
                        f"received {size - remaining + len(data)} bytes for {key}, expected {size}",
                        self.name,
                    )
                remaining -= len(data)
                while len(pending) >= self.concurrency:
                    settle(block=True)
                pending.add(self._pool().submit(send, number, data))
                del data
                settle(block=False)
            if source.read(1):
                raise IntegrityError(f"received more than {size} bytes for {key}", self.name)
            while pending:
                settle(block=True)
            parts = [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]
            self._call(
                what,
                lambda: self._client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=name,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                ),
            )
        except BaseException:
            for fut in pending:
                fut.cancel()
            wait(pending)
            self._abort(name, upload_id)
            raise

    def _abort(self, name: str, upload_id: str) -> None:
        """Best effort: a dangling upload costs storage but holds no visible object."""
        with contextlib.suppress(NodeError):
            self._call(
                "aborting an upload",
                lambda: self._client.abort_multipart_upload(
                    Bucket=self.bucket, Key=name, UploadId=upload_id
                ),
            )

    def retrieve(self, key: Key, sink: Writable, offset: int = 0) -> None:
        try:
            name = self._object(key)
        except Unsupported as e:
            raise NotFound(str(e), self.name) from e
        position = offset

        def attempt() -> None:
            nonlocal position
            ranged = {"Range": f"bytes={position}-"} if position else {}
            try:
                reply = self._client.get_object(Bucket=self.bucket, Key=name, **ranged)
            except Exception as e:
                if _code(e) == "InvalidRange":
                    size = self._head(name, f"getting {key}")
                    if size is not None and size <= position:
                        return  # nothing left to send
                raise
            total = _total_size(reply, position)
            body = reply["Body"]
            expected = key.content_size
            if total is not None and expected is not None and total != expected:
                body.close()  # not the key: not one byte of it goes to the sink
                check_size(key, total, self.name, f"s3://{self.bucket}/{self.prefix}")
            try:
                for block in _blocks(body):
                    sink.write(block)
                    position += len(block)
            finally:
                body.close()
            if total is not None and position < total:
                raise _Truncated(f"the download stopped at byte {position} of {total}")

        self._call(f"getting {key}", attempt)

    def remove(self, key: Key) -> None:
        try:
            name = self._object(key)
        except Unsupported:
            return  # it cannot be here
        self._call(
            f"removing {key}", lambda: self._client.delete_object(Bucket=self.bucket, Key=name)
        )

    counts_bytes = True

    def used(self) -> int:
        return sum(size for _, size in self._listing())

    def list_names(self) -> Iterator[str]:
        for name, _ in self._listing():
            yield name

    def list_keys(self, known: KnownKeys | None = None) -> Iterator[Key]:
        """Object names are keys as they are (not git-annex's escaped file names)."""
        for name in self.list_names():
            try:
                yield Key.parse(name)
            except InvalidKey:
                continue

    def _listing(self) -> Iterator[tuple[str, int]]:
        """Object names under the prefix, prefix removed, streamed page by page
        (git-annex's S3 remote keeps its UUID in ``annex-uuid`` there, and the node its
        owner in ``.cluster-owner``: neither is an object)."""
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=self.prefix)
        try:
            for page in pages:
                for item in page.get("Contents", []):
                    name = item["Key"][len(self.prefix) :]
                    if name not in ("annex-uuid", MARKER):
                        yield name, int(item.get("Size", 0))
        except Exception as e:
            raise self._translate(e, "listing the bucket") from e

    def close(self) -> None:
        if self._parts_pool is not None:
            self._parts_pool.shutdown(wait=False, cancel_futures=True)
        client, self._client_obj = self._client_obj, None
        if client is not None:
            client.close()

    def __repr__(self) -> str:
        return f"<S3Node {self.name} {self.where}>"


def _blocks(body: Any) -> Iterator[bytes]:
    while block := body.read(BLOCK):
        yield block


def _total_size(reply: dict[str, Any], position: int) -> int | None:
    """The object's whole size, from Content-Range (ranged) or Content-Length."""
    content_range = reply.get("ContentRange")
    if content_range and "/" in content_range:
        total = content_range.rpartition("/")[2]
        return int(total) if total.isdigit() else None
    length = reply.get("ContentLength")
    return position + int(length) if length is not None else None


def _read_exact(source: Readable, size: int, key: Key, node: str) -> bytes:
    data = read_up_to(source, size)
    if len(data) != size:
        raise IntegrityError(f"received {len(data)} bytes for {key}, expected {size}", node)
    if source.read(1):
        raise IntegrityError(f"received more than {size} bytes for {key}", node)
    return data


_DATACENTERS = {"US": "us-east-1", "EU": "eu-west-1"}
# What git-annex keeps in a remote's configuration that changes where or how objects are
# stored, and that we cannot honour.
_UNSUPPORTED = {
    "chunksize": "legacy chunksize= chunking",
    "exporttree": "exporttree=yes (objects named after files, not keys)",
    "importtree": "importtree=yes (objects named after files, not keys)",
    "mungekeys": "mungekeys= (Internet Archive object names)",
}


def _same_size(field: str, ours: str, theirs: str) -> bool:
    """``chunk=1153434`` in the node URL and git-annex's ``chunk=1.1MiB`` agree."""
    if field != "chunk":
        return False
    try:
        return parse_size(ours) == parse_size(theirs)
    except ConfigError:
        return False


def adopt_annex_remote(spec: NodeSpec, cwd: Path | None = None) -> NodeSpec:
    """Fill in bucket, prefix, endpoint, chunking and cipher from the repository's git-annex
    S3 remote named by ``annexremote=``, so both read and write the same objects."""
    from dataclasses import replace

    from shared.annex.remotelog import annex_remote_config

    params = dict(spec.params)
    name = params.pop("annexremote")
    uuid, config = annex_remote_config(name, cwd)
    where = f"node {spec.name}: annexremote={name}"
    if config.get("type") != "S3":
        raise ConfigError(f"{where} is a {config.get('type', 'unknown')} remote, not an S3 remote")
    for field, what in _UNSUPPORTED.items():
        if config.get(field) not in (None, "", "no", "0"):
            raise ConfigError(f"{where} uses {what}, which S3 nodes cannot read or write")
    encryption = config.get("encryption", "none" if "cipher" not in config else "hybrid")
    if encryption not in ("none", "shared"):
        raise ConfigError(
            f"{where} uses encryption={encryption}; only encryption=none and shared can be "
            "adopted (the cipher of the others is encrypted to gpg keys)"
        )
    adopted: dict[str, str] = {}
    adopted["encryption"] = encryption
    if encryption == "shared":
        adopted["cipher"] = config["cipher"]
        adopted["mac"] = config.get("mac", "HMACSHA1")
    chunk = config.get("chunk", "")
    if chunk and chunk != "0":
        try:  # the same size as git-annex, or the two sides miss each other's chunks
            parse_size(chunk)
        except ConfigError as e:
            raise ConfigError(f"{where} has chunk={chunk}, which cannot be read: {e}") from e
        adopted["chunk"] = chunk
    for key, value in adopted.items():
        if key in params and params[key] != value and not _same_size(key, params[key], value):
            raise ConfigError(f"{where} has {key}={value}, but the node URL says {params[key]}")
    host = config.get("host")
    if host and "endpoint" not in params:
        port = config.get("port")
        protocol = config.get("protocol") or ("https" if port == "443" else "http")
        params["endpoint"] = f"{protocol}://{host}" + (f":{port}" if port else "")
    if "style" not in params:
        params["style"] = "path" if config.get("requeststyle") == "path" else "virtual"
    region = config.get("region") or _DATACENTERS.get(
        config.get("datacenter", "US"), config.get("datacenter", "")
    )
    if region and "region" not in params:
        params["region"] = region
    if config.get("storageclass") and "storageclass" not in params:
        params["storageclass"] = config["storageclass"]
    params.update(adopted)
    bucket = (config.get("bucket") or f"{name}-{uuid}").lower()
    prefix = config.get("fileprefix", "")
    parts = urlsplit(spec.url)
    if parts.hostname and (parts.hostname, unquote(parts.path).lstrip("/")) != (bucket, prefix):
        raise ConfigError(
            f"{where} stores in s3://{bucket}/{prefix}, not {spec.url}; write s3://?annexremote="
        )
    return replace(spec, url=f"s3://{bucket}/{quote(prefix)}", params=params)
