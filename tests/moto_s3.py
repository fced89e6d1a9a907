"""``moto_server``, except that SigV2-signed requests always go to S3.

moto reads the Authorization header as a SigV4 credential scope; a SigV2 header
(``AWS KEYID:SIGNATURE``, which git-annex's S3 remote sends) whose base64 signature
happens to contain exactly four "/" then names no service, and moto answers 500
(seen once in about a thousand requests). Only S3 still accepts SigV2.
Run as ``python moto_s3.py -H HOST -p PORT`` (moto_server's own options).
"""

from __future__ import annotations

import sys
from typing import Any

from moto import server
from moto.moto_server import werkzeug_app


class _S3ForSigV2(werkzeug_app.DomainDispatcherApplication):
    def infer_service_region_host(self, environ: dict[str, Any], path: str) -> str | None:
        if str(environ.get("HTTP_AUTHORIZATION", "")).startswith("AWS "):
            return "s3.us-east-1.amazonaws.com"
        return super().infer_service_region_host(environ, path)  # type: ignore[no-any-return]


if __name__ == "__main__":
    server.DomainDispatcherApplication = _S3ForSigV2  # type: ignore[misc]
    server.main(sys.argv[1:])
