"""A real S3 endpoint on 127.0.0.1 for tests (a pytest plugin: ``pytest_plugins = ["s3server"]``).

:class:`S3Server` runs ``moto_server`` (moto's S3, over HTTP, from the virtualenv that
runs pytest; through ``moto_s3.py``, which fixes its routing of SigV2) as a
subprocess on a free loopback port, with its log in its own directory, and
stops it by the pid it started. Tests share one server per session (``s3_server``); the
function-scoped ``s3`` fixture wipes its state first through moto's ``/moto-api/reset``,
which is far cheaper than a restart.

Code under test gets credentials from the environment: merge ``s3_env`` into
``os.environ`` (monkeypatch) or into the environment of a subprocess such as git-annex.

What moto 5.2 does that an S3 client author should know (checked against this version):

* Range GETs are honoured: 206 with Content-Range; ``bytes=N-`` and ``bytes=-N`` work, an
  end past the object is clamped, a start past it is 416 ``InvalidRange``.
* HEAD of a missing key (or a missing bucket) is a bare 404: botocore reports the error
  code as ``"404"``, never ``NoSuchKey``. GET says ``NoSuchKey`` / ``NoSuchBucket``.
* Content-MD5 and ``x-amz-checksum-*`` are *not* verified: a wrong digest is stored and
  echoed back. Corruption in flight therefore shows only if the client checks itself.
* Multipart: parts below 5 MiB (except the last) are refused at completion
  (``EntityTooSmall``); a wrong part ETag is ``InvalidPart``; incomplete uploads are listed
  by ListMultipartUploads and vanish on abort; an *unknown* UploadId (e.g. after an abort)
  answers 500 InternalError, not 404 NoSuchUpload, so retry logic sees it as transient.
* The server (werkzeug) answers every request with ``Connection: close``: no keep-alive.
  :mod:`faultproxy` in front of it gives clients keep-alive connections, like real S3.
* Signatures are not checked, but unsigned (anonymous) object requests get 403: use a
  boto3 client or a presigned URL even for raw HTTP. Chunked request bodies work, chunk
  extensions (``5;ext``) do not (500).
"""

from __future__ import annotations

import contextlib
import importlib.util
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loopback import on_a_port, spawn, terminate

MOTO_LAUNCHER = Path(__file__).resolve().parent / "moto_s3.py"  # moto_server, SigV2 fixed
READY_TIMEOUT = 20.0
REGION = "us-east-1"
ACCESS_KEY = "testing-access-key"
SECRET_KEY = "testing-secret-key"

# Merged into the environment of code under test. No profile, config or credentials
# file of the user's can leak in, and botocore never asks an instance metadata service.
S3_ENV: dict[str, str] = {
    "AWS_ACCESS_KEY_ID": ACCESS_KEY,
    "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}
# Variables that must be *absent*: a dict merge cannot remove them, see :func:`s3_environ`.
S3_ENV_UNSET: tuple[str, ...] = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
)


def s3_environ(base: dict[str, str]) -> dict[str, str]:
    """``base`` with :data:`S3_ENV` merged in and :data:`S3_ENV_UNSET` removed."""
    env = {k: v for k, v in base.items() if k not in S3_ENV_UNSET}
    env.update(S3_ENV)
    return env


# Never through a proxy from the environment: the server is on loopback.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class S3Server:
    """One private ``moto_server`` on 127.0.0.1; the port stays the same across restarts."""

    def __init__(self, root: Path, *, name: str = "moto") -> None:
        self.root = root
        self.name = name
        self.port = 0
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._client: Any = None
        root.mkdir(parents=True, exist_ok=True)
        self.log = root / f"{name}.log"

    def __repr__(self) -> str:
        return f"S3Server({self.name!r}, port={self.port}, pid={self.pid})"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- process ----------------------------------------------------------------

    def start(self) -> None:
        """Start (or start again on the same port); return once it answers HTTP."""
        if self.alive():
            return
        if importlib.util.find_spec("moto.server") is None:
            raise RuntimeError("moto is missing: install the test extra (moto[server])")
        self.port = on_a_port(str(self), self.port, self._spawn_on, self.log)

    def _spawn_on(self, port: int) -> bool:
        if port != self.port:
            self.port, self._client = port, None
        return self._spawn()

    def _spawn(self) -> bool:
        """Run moto_server once; False if it lost a race for its port, raise on other failures."""
        return (
            spawn(
                f"{self}: moto_server",
                [sys.executable, str(MOTO_LAUNCHER), "-H", "127.0.0.1", "-p", str(self.port)],
                self.log,
                lambda _: self._answers(),
                started=self._started,
                stop=self.stop,
                timeout=READY_TIMEOUT,
                in_use="already in use",
                env=s3_environ({"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}),
            )
            is not None
        )

    def _started(self, proc: subprocess.Popen[bytes] | None) -> None:
        self._proc, self.pid = proc, proc.pid if proc is not None else None

    def _answers(self) -> bool:
        try:
            with _OPENER.open(f"{self.endpoint}/moto-api/data.json", timeout=1) as r:
                return int(r.status) == 200
        except (OSError, urllib.error.URLError):
            return False

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """Terminate the pid we started; kill it if it does not go within a few seconds."""
        terminate(self._proc)
        self._proc = self.pid = None

    def restart(self) -> None:
        """Stop and start again on the same port (state is lost: moto keeps it in memory)."""
        self.stop()
        self.start()

    # -- state --------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every bucket, object and multipart upload (moto's ``/moto-api/reset``)."""
        req = urllib.request.Request(f"{self.endpoint}/moto-api/reset", data=b"", method="POST")
        with _OPENER.open(req, timeout=10) as r:
            if int(r.status) != 200:
                raise RuntimeError(f"{self}: reset answered {r.status}")

    def client(self, endpoint: str | None = None, config: Any = None) -> Any:
        """A boto3 S3 client for this server (or ``endpoint``, e.g. a fault proxy in front
        of it): path-style addressing, the dummy credentials, never any user config.
        ``config`` (a ``botocore.config.Config``) is merged over those defaults. The
        default client (no arguments) is made once and shared: boto3 clients are
        thread-safe, and making one costs a tenth of a second."""
        if endpoint is None and config is None and self._client is not None:
            return self._client
        import boto3
        from botocore.config import Config

        base = Config(s3={"addressing_style": "path"}, proxies={}, connect_timeout=5)
        session = boto3.session.Session(
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )
        client = session.client(
            "s3",
            endpoint_url=endpoint or self.endpoint,
            config=base if config is None else base.merge(config),
        )
        if endpoint is None and config is None:
            self._client = client
        return client

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object name in ``bucket`` under ``prefix``, sorted."""
        keys: list[str] = []
        pages = self.client().get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(obj["Key"] for obj in page.get("Contents", ()))
        return sorted(keys)

    def multipart_uploads(self, bucket: str) -> list[dict[str, Any]]:
        """Incomplete (dangling) multipart uploads in ``bucket``: ``Key``, ``UploadId``, ..."""
        uploads: list[dict[str, Any]] = []
        pages = self.client().get_paginator("list_multipart_uploads")
        for page in pages.paginate(Bucket=bucket):
            uploads.extend(page.get("Uploads", ()))
        return uploads

    def get(self, bucket: str, key: str) -> bytes:
        """The content of one object."""
        body = self.client().get_object(Bucket=bucket, Key=key)["Body"]
        with contextlib.closing(body):
            data: bytes = body.read()
        return data

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.client().put_object(Bucket=bucket, Key=key, Body=data)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One moto_server for the whole session, stopped by pid at the end."""
    server = S3Server(tmp_path_factory.mktemp("s3server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server: S3Server) -> S3Server:
    """The session's S3 server with its state wiped: no buckets, no objects, no uploads.
    Started again if an earlier test stopped it."""
    s3_server.start()
    s3_server.reset()
    return s3_server


@pytest.fixture
def s3_env() -> dict[str, str]:
    """Environment variables pointing boto3 at the dummy credentials and nothing else.
    Merge into a subprocess env; also remove :data:`S3_ENV_UNSET` (see :func:`s3_environ`)."""
    return dict(S3_ENV)
