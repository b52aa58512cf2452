"""The node-local model cache: one verified copy of each remote weights file per node, shared by every
process on the node (the actors of a job, their restarts, later jobs).

An entry is named by the sha256 of the file's bytes (from the model set's manifest), so a file that
changes is a new entry and an entry never goes stale. One process downloads it, under a file lock,
into a temporary file beside it, checks its size and sha256, and renames it into place; the others
wait on the lock and then find it there. A file whose bytes do not hash to the manifest's sha256 is
refused and never cached. An entry that no longer matches (a disk fault, a hand edit) is removed and
downloaded again.

The cache folder is `$UNMASK_MODEL_CACHE`, else DEFAULT_CACHE_DIR. Entries are never evicted here:
a node keeps one copy per distinct weights file it has loaded (1.23 GB for a 256 px set).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from unmask_core import storage
from unmask_core.errors import TransientError, UserError

CACHE_ENV = "UNMASK_MODEL_CACHE"
DEFAULT_CACHE_DIR = "/tmp/unmask-model-cache"


class ChecksumError(UserError):
    """A weights file whose bytes are not the ones its model set's manifest describes."""


@dataclass(frozen=True)
class FileChecksum:
    """What a model set's manifest records of each file: its size in bytes and the sha256 of its bytes."""

    size: int
    sha256: str

    @classmethod
    def of_bytes(cls, data: bytes) -> FileChecksum:
        return cls(len(data), hashlib.sha256(data).hexdigest())

    @classmethod
    def of_file(cls, path: str | Path) -> FileChecksum:
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
            return cls(os.fstat(f.fileno()).st_size, digest)


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR)


def _entry_path(uri: str, expected: FileChecksum) -> Path:
    # The suffix keeps the file type visible (and torch.load's path handling happy); the hash is the key.
    return cache_dir() / f"{expected.sha256}{Path(uri).suffix}"


def lock_path(entry: Path) -> Path:
    """The file whose flock a process holds while it downloads `entry`."""
    return entry.with_name(f"{entry.name}.lock")


def _matches(path: Path, expected: FileChecksum) -> bool:
    return path.stat().st_size == expected.size and FileChecksum.of_file(path) == expected


def cached_copy(uri: str, expected: FileChecksum) -> str:
    """The path of a local copy of `uri` whose bytes match `expected` (size and sha256), downloaded at
    most once per node. Raises ChecksumError (one line naming `uri`) when the remote file does not
    match, and TransientError when the cache's disk is full or cannot be written."""
    entry = _entry_path(uri, expected)
    if entry.exists() and _matches(entry, expected):
        return str(entry)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        lock = open(lock_path(entry), "a")  # noqa: SIM115 - held until the download is in place
    except OSError as exc:
        raise TransientError(f"{entry.parent}: cannot use the model cache: {exc.strerror}") from exc
    with lock:
        # Released by the kernel when this process closes it, or dies.
        fcntl.flock(lock, fcntl.LOCK_EX)
        # Another process may have finished the download while this one waited for the lock.
        if entry.exists():
            if _matches(entry, expected):
                return str(entry)
            entry.unlink()  # a damaged entry: download it again
        _download_verified(uri, entry, expected)
        return str(entry)


def _download_verified(uri: str, entry: Path, expected: FileChecksum) -> None:
    try:
        fd, name = tempfile.mkstemp(dir=entry.parent, prefix=f".{entry.name}.", suffix=".part")
        os.close(fd)
    except OSError as exc:
        raise TransientError(f"{entry.parent}: cannot write to the model cache: {exc.strerror}") from exc
    partial = Path(name)
    try:
        storage.download(uri, partial)
        found = FileChecksum.of_file(partial)
        if found != expected:
            raise ChecksumError(
                f"{uri}: {found.size:,} bytes with sha256 {found.sha256[:16]}..., the model set's "
                f"manifest says {expected.size:,} bytes with sha256 {expected.sha256[:16]}... "
                "(altered or corrupted after the set was written)"
            )
        partial.chmod(0o444)  # entries are shared and never written again
        os.replace(partial, entry)
    finally:
        partial.unlink(missing_ok=True)
