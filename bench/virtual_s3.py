"""An S3 endpoint on 127.0.0.1 that serves a bucket of virtual keys: `count` objects named
`<prefix><00000000..>.jpg`, listed (ListObjectsV2, 1,000 keys a page, StartAfter and continuation
tokens), read (GET, HEAD) and checked (HEAD on the bucket), without storing any of them. For benchmarks
at a million keys and more, which cannot be uploaded to a real server here; bench/scale.py checks it
against SeaweedFS. It checks no signature and accepts no write.
"""

from __future__ import annotations

import hashlib
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import escape

PAYLOAD = b"virtual image bytes\n"
ETAG = hashlib.md5(PAYLOAD).hexdigest()
MODIFIED = "2026-01-01T00:00:00.000Z"
PAGE = 1000


class VirtualBucket:
    """`count` keys `prefix` + 8 digits + `.jpg` in bucket `bucket`, in key order."""

    def __init__(self, bucket: str, prefix: str, count: int) -> None:
        self.bucket, self.prefix, self.count = bucket, prefix, count

    def key(self, index: int) -> str:
        return f"{self.prefix}{index:08d}.jpg"

    def index_after(self, key: str) -> int:
        """The index of the first key that sorts after `key`."""
        if not key.startswith(self.prefix):
            return 0 if key < self.prefix else self.count
        digits = key[len(self.prefix) :][:8]
        if len(digits) < 8 or not digits.isdigit():
            return 0 if key < self.key(0) else self.count
        index = int(digits)
        return index + 1 if key >= self.key(index) else index

    def exists(self, key: str) -> bool:
        if not (key.startswith(self.prefix) and key.endswith(".jpg")):
            return False
        digits = key[len(self.prefix) : -4]
        return len(digits) == 8 and digits.isdigit() and int(digits) < self.count


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _target(self) -> tuple[str, str, dict[str, str]]:
        split = urllib.parse.urlsplit(self.path)
        bucket, _, key = urllib.parse.unquote(split.path).lstrip("/").partition("/")
        query = {k: v[0] for k, v in urllib.parse.parse_qs(split.query, keep_blank_values=True).items()}
        return bucket, key, query

    def do_HEAD(self) -> None:
        bucket, key, _ = self._target()
        virtual = self.server.virtual
        if bucket != virtual.bucket or (key and not virtual.exists(key)):
            self._reply(404)
        elif not key:
            self._reply(200)
        else:
            self._reply(200, headers=self._object_headers())

    def _object_headers(self) -> dict[str, str]:
        return {
            "ETag": f'"{ETAG}"',
            "Last-Modified": "Thu, 01 Jan 2026 00:00:00 GMT",
            "Content-Type": "image/jpeg",
        }

    def do_GET(self) -> None:
        bucket, key, query = self._target()
        virtual = self.server.virtual
        if bucket != virtual.bucket:
            self._reply(404, b"<Error><Code>NoSuchBucket</Code></Error>")
        elif not key:
            self._reply(200, self._listing(query), {"Content-Type": "application/xml"})
        elif virtual.exists(key):
            self._reply(200, PAYLOAD, self._object_headers())
        else:
            self._reply(404, b"<Error><Code>NoSuchKey</Code></Error>")

    def _listing(self, query: dict[str, str]) -> bytes:
        virtual = self.server.virtual
        prefix = query.get("prefix", "")
        limit = min(PAGE, int(query.get("max-keys", PAGE)))
        after = query.get("continuation-token") or query.get("start-after") or ""
        start = virtual.index_after(after) if after else 0
        keys = []
        if virtual.prefix.startswith(prefix) or prefix.startswith(virtual.prefix):
            keys = [virtual.key(i) for i in range(start, min(virtual.count, start + limit))]
            keys = [key for key in keys if key.startswith(prefix)]
        truncated = bool(keys) and virtual.index_after(keys[-1]) < virtual.count
        contents = "".join(
            f"<Contents><Key>{escape(key)}</Key><LastModified>{MODIFIED}</LastModified>"
            f"<ETag>&quot;{ETAG}&quot;</ETag><Size>{len(PAYLOAD)}</Size>"
            "<StorageClass>STANDARD</StorageClass></Contents>"
            for key in keys
        )
        token = f"<NextContinuationToken>{escape(keys[-1])}</NextContinuationToken>" if truncated else ""
        return (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<Name>{virtual.bucket}</Name><Prefix>{escape(prefix)}</Prefix><KeyCount>{len(keys)}</KeyCount>"
            f"<MaxKeys>{limit}</MaxKeys><IsTruncated>{str(truncated).lower()}</IsTruncated>"
            f"{contents}{token}</ListBucketResult>"
        ).encode()

    def do_PUT(self) -> None:
        self._reply(501)

    do_POST = do_DELETE = do_PUT


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, virtual: VirtualBucket) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.virtual = virtual


class VirtualS3:
    """The endpoint, serving in a thread while the context is open: `endpoint` is its URL."""

    def __init__(self, bucket: str, prefix: str, count: int) -> None:
        self._server = _Server(VirtualBucket(bucket, prefix, count))
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="virtual-s3", daemon=True)

    def __enter__(self) -> VirtualS3:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
