"""Real faults of the world for tests: an S3 server of a test's own that it stops and restarts, and a
small disk (a tmpfs) that fills and then grows.

The disk is a tmpfs mounted in a mount namespace of an unprivileged user namespace (`unshare -rm`):
the kernel's own ENOSPC, no root needed, nothing mounted where other processes look. A process
runs inside with `FullDisk.command`, and the test reads the namespace's files through
`/proc/<holder>/root`.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from unmask_core import local_s3


class OwnS3:
    """A SeaweedFS server that one test stops and restarts on the same port and data: the session's
    server stays up for every other test."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.server = local_s3.start(folder)
        self.port = int(self.server.endpoint.rsplit(":", 1)[1])

    def env(self) -> dict[str, str]:
        return self.server.env()

    def put(self, uri: str, payload: bytes) -> None:
        import boto3

        bucket, _, key = uri.removeprefix("s3://").partition("/")
        env = self.env()
        boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name=env["AWS_REGION"],
        ).put_object(Bucket=bucket, Key=key, Body=payload)

    def stop(self) -> None:
        """Gone at once, as a crashed or unplugged server is (no graceful shutdown)."""
        self.server.process.kill()
        self.server.process.wait()

    def restart(self) -> None:
        self.server = local_s3.start(self.folder, self.port)

    def close(self) -> None:
        self.server.stop()


@contextmanager
def own_s3(folder: Path) -> Iterator[OwnS3]:
    s3 = OwnS3(folder)
    try:
        yield s3
    finally:
        s3.close()


class FullDisk:
    """A tmpfs of `size` mounted at `path` inside a namespace that a holder process keeps alive."""

    def __init__(self, path: Path, size: str) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.holder = subprocess.Popen(["unshare", "-rm", "--propagation", "private", "sleep", "3600"])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the holder is inside once its mount namespace differs
            if os.readlink(f"/proc/{self.holder.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt"):
                break
            time.sleep(0.05)
        self.run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))

    def command(self, *argv: str) -> list[str]:
        """`argv` as a command that runs inside the namespace, where the tmpfs is."""
        return ["nsenter", "-t", str(self.holder.pid), "-U", "-m", *argv]

    def run(self, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*argv), check=True, capture_output=True, text=True, timeout=60)

    def fill(self) -> None:
        """Leave no free byte: a filler file takes what is left (dd stops at ENOSPC)."""
        subprocess.run(
            self.command("dd", "if=/dev/zero", f"of={self.path}/.filler", "bs=64k"),
            capture_output=True,
            timeout=60,
        )

    def grow(self, size: str) -> None:
        self.run("mount", "-o", f"remount,size={size}", str(self.path))

    def seen(self, path: str | Path) -> Path:
        """`path` as the namespace sees it (the tmpfs over `self.path`), readable from outside."""
        return Path(f"/proc/{self.holder.pid}/root{Path(path).absolute()}")

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait()


@contextmanager
def full_disk(path: Path, size: str = "1m") -> Iterator[FullDisk]:
    disk = FullDisk(path, size)
    try:
        yield disk
    finally:
        disk.close()
