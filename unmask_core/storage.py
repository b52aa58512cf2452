"""Every path is a URI: a local path or `s3://bucket/key`. This is the one module that knows about
S3 endpoints; everything else asks it for a filesystem.

The S3 endpoint comes from `AWS_ENDPOINT_URL` (S3-compatible stores such as SeaweedFS or MinIO);
without it, AWS's own endpoint is used, which needs credentials from the usual AWS chain.
"""

from __future__ import annotations

import io
import os
import posixpath
import re
import stat
import uuid
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import fsspec
import pyarrow.fs as pafs

from unmask_core.errors import UserError

S3_SCHEMES = ("s3://", "s3a://")


def is_s3(uri: str) -> bool:
    return uri.startswith(S3_SCHEMES)


def _split_s3(uri: str) -> tuple[str, str]:
    path = uri.split("://", 1)[1]
    bucket, _, key = path.partition("/")
    if not bucket:
        raise UserError(f"{uri}: an S3 URI needs a bucket (s3://bucket/key)")
    return bucket, key


def absolute(uri: str) -> str:
    """A local path made absolute (s3:// URIs as they are): what a Ray task, whose working directory
    is not the caller's, must be handed."""
    return uri if is_s3(uri) else str(Path(uri).expanduser().absolute())


def join(base: str, *parts: str) -> str:
    """Join URI parts with '/', for local paths and s3:// alike."""
    if is_s3(base):
        return posixpath.join(base.rstrip("/"), *parts)
    return str(Path(base, *parts))


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")


def _require_endpoint(uri: str) -> None:
    # Without an endpoint and without any AWS credentials, boto would spend a minute on metadata-service
    # retries and then fail deep inside a worker; say what is missing up front instead.
    if _endpoint() is None and not (
        os.environ.get("AWS_ACCESS_KEY_ID")
        or os.environ.get("AWS_PROFILE")
        or os.environ.get("AWS_ROLE_ARN")
        or os.environ.get("UNMASK_S3_INSTANCE_PROFILE")
    ):
        raise UserError(
            f"{uri}: no S3 endpoint or credentials configured "
            "(set AWS_ENDPOINT_URL and AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
            "or UNMASK_S3_INSTANCE_PROFILE=1 on a cloud node with an instance profile)"
        )


@lru_cache(maxsize=8)
def _s3fs(endpoint: str | None) -> fsspec.AbstractFileSystem:
    import s3fs

    client_kwargs = {"endpoint_url": endpoint} if endpoint else {}
    return s3fs.S3FileSystem(client_kwargs=client_kwargs, use_listings_cache=False)


def fsspec_filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path within it) for a URI, for code that wants file objects."""
    if is_s3(uri):
        _require_endpoint(uri)
        bucket, key = _split_s3(uri)
        return _s3fs(_endpoint()), f"{bucket}/{key}".rstrip("/")
    return fsspec.filesystem("file"), str(Path(uri).expanduser().absolute())


def pyarrow_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path within it) for a URI, for Parquet and Ray Data."""
    if is_s3(uri):
        _require_endpoint(uri)
        bucket, key = _split_s3(uri)
        endpoint = _endpoint()
        kwargs: dict = {"region": os.environ.get("AWS_REGION", "us-east-1")}
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            kwargs.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
        return pafs.S3FileSystem(**kwargs), f"{bucket}/{key}".rstrip("/")
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().absolute())


def _translate_errors(uri: str, exc: BaseException) -> UserError:
    text = str(exc)
    if isinstance(exc, FileNotFoundError) or "NoSuchBucket" in text or "does not exist" in text:
        if is_s3(uri) and ("NoSuchBucket" in text or "bucket" in text.lower()):
            return UserError(f"{uri}: bucket {_split_s3(uri)[0]!r} does not exist")
        return UserError(f"{uri}: no such file or prefix")
    if isinstance(exc, PermissionError) or "AccessDenied" in text or "Forbidden" in text:
        return UserError(f"{uri}: access denied")
    if (
        "Could not connect" in text
        or "Connection refused" in text
        or "ConnectTimeout" in text
        or "EndpointConnectionError" in type(exc).__name__
    ):
        return UserError(f"{uri}: cannot reach the S3 endpoint {_endpoint()!r}")
    if isinstance(exc, OSError) and exc.errno is not None:
        return UserError(f"{uri}: {os.strerror(exc.errno).lower()}")
    return UserError(f"{uri}: {type(exc).__name__}: {text.splitlines()[0] if text else ''}")


def exists(uri: str) -> bool:
    fs, path = fsspec_filesystem(uri)
    try:
        return fs.exists(path)
    except Exception as exc:  # boto and s3fs errors come in many types
        raise _translate_errors(uri, exc) from exc


def check_readable(uri: str) -> None:
    """Fail with one clear line if `uri` (file or prefix) cannot be read."""
    fs, path = fsspec_filesystem(uri)
    try:
        if is_s3(uri):
            bucket = path.split("/", 1)[0]
            if not fs.exists(bucket):
                raise UserError(f"{uri}: bucket {bucket!r} does not exist")
        if not fs.exists(path):
            raise UserError(f"{uri}: no such file or prefix")
    except UserError:
        raise
    except Exception as exc:
        raise _translate_errors(uri, exc) from exc


def check_writable(uri: str) -> None:
    """Fail early when an output URI points into a missing bucket (local folders are created)."""
    if is_s3(uri):
        fs, path = fsspec_filesystem(uri)
        bucket = path.split("/", 1)[0]
        try:
            ok = fs.exists(bucket)
        except Exception as exc:
            raise _translate_errors(uri, exc) from exc
        if not ok:
            raise UserError(f"{uri}: bucket {bucket!r} does not exist")
    else:
        Path(uri).expanduser().mkdir(parents=True, exist_ok=True)


def local_file(uri: str) -> str:
    """The absolute path of the local regular file `uri` (a FIFO or a device would block or never end),
    or one clear UserError."""
    path = absolute(uri)
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise _translate_errors(uri, exc) from exc
    if not stat.S_ISREG(mode):
        raise UserError(f"{uri}: not a regular file")
    return path


def read_bytes(uri: str, max_bytes: int | None = None) -> bytes:
    """The whole object at `uri`. Only regular files are read, and with `max_bytes` a larger object is
    refused before it is read."""
    fs, path = fsspec_filesystem(uri)
    if not is_s3(uri):
        local_file(uri)
    try:
        with fs.open(path, "rb") as f:
            data = f.read() if max_bytes is None else f.read(max_bytes + 1)
    except UserError:
        raise
    except Exception as exc:
        raise _translate_errors(uri, exc) from exc
    if max_bytes is not None and len(data) > max_bytes:
        raise UserError(f"{uri}: larger than the limit of {max_bytes:,} bytes (--max-bytes)")
    return data


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write a whole object so that readers see either nothing or all of it.

    An S3 PUT is atomic by itself; on a local disk we write a temporary file and rename it, and remove
    the temporary file when the write fails (a full disk, say). Errors are one line naming `uri`.
    """
    fs, path = fsspec_filesystem(uri)
    try:
        if is_s3(uri):
            fs.pipe_file(path, data)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name[:200]}.{uuid.uuid4().hex}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    except Exception as exc:
        raise _translate_errors(uri, exc) from exc


def append_bytes(uri: str, data: bytes) -> None:
    """Append to the object at `uri` (on S3, s3fs rewrites it: keep such files small)."""
    fs, path = fsspec_filesystem(uri)
    try:
        with fs.open(path, "ab") as f:
            f.write(data)
    except Exception as exc:
        raise _translate_errors(uri, exc) from exc


def first_line(uri: str) -> str:
    fs, path = fsspec_filesystem(uri)
    try:
        with fs.open(path, "rb") as f:
            return f.readline().decode().rstrip("\r\n")
    except Exception as exc:
        raise _translate_errors(uri, exc) from exc


def write_json(uri: str, value: object) -> None:
    import json

    write_bytes_atomic(uri, json.dumps(value, indent=2).encode())


def delete(uri: str) -> None:
    """Remove the file or the whole prefix at `uri`, if there is one."""
    fs, path = fsspec_filesystem(uri)
    try:
        if not fs.exists(path):
            return
        folders = []
        if is_s3(uri) and fs.isdir(path):
            found = fs.find(path, withdirs=True, detail=True)
            folders = [p for p, info in found.items() if info["type"] == "directory" and p != path] + [path]
        fs.rm(path, recursive=True)
        # S3-compatible stores with real folders (SeaweedFS) keep the emptied ones, listed and `exists`
        # as before, until their "prefix/" entries go too, innermost first; AWS has none to delete.
        for folder in sorted(folders, key=len, reverse=True):
            fs.rm_file(f"{folder}/")
    except Exception as exc:
        raise _translate_errors(uri, exc) from exc


def list_files(uri: str, suffixes: tuple[str, ...] | None = None) -> list[str]:
    """All files under a prefix (recursive), as sorted full URIs (dotfiles included: every input counts)."""
    fs, path = fsspec_filesystem(uri)
    check_readable(uri)
    try:
        if fs.isfile(path):
            found = [path]
        else:
            found = fs.find(path)
    except Exception as exc:
        raise _translate_errors(uri, exc) from exc
    out = []
    for p in found:
        name = posixpath.basename(p)
        if suffixes and not name.lower().endswith(suffixes):
            continue
        out.append(f"s3://{p}" if is_s3(uri) else p)
    return sorted(out)


def versions(uri: str) -> dict[str, str]:
    """URI -> "size:etag-or-mtime" for the file at `uri` or every file under it: what changes when a
    file's content does (one listing, like `list_files`)."""
    fs, path = fsspec_filesystem(uri)
    try:
        found = {path: fs.info(path)} if fs.isfile(path) else fs.find(path, detail=True)
    except Exception as exc:
        raise _translate_errors(uri, exc) from exc
    out = {}
    for p, info in found.items():
        stamp = info.get("ETag") or info.get("LastModified") or info.get("mtime") or ""
        out[f"s3://{p}" if is_s3(uri) else p] = f"{info.get('size')}:{str(stamp).strip(chr(34))}"
    return out


def relative_key(base: str, uri: str) -> str:
    """The part of `uri` below the prefix `base`, with '/' separators."""
    base_path = fsspec_filesystem(base)[1].rstrip("/")
    path = fsspec_filesystem(uri)[1]
    if path.startswith(base_path + "/"):
        return path[len(base_path) + 1 :]
    return posixpath.basename(path)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


MAX_KEY_PART_BYTES = 255  # a file name on every common filesystem
MAX_KEY_BYTES = 1024  # an S3 key


def safe_relative_path(key: str, max_part: int = 120, max_total: int = MAX_KEY_BYTES) -> str:
    """Turn an input key into a relative path that cannot escape its output folder.

    Drops empty, '.' and '..' parts and any leading '/', and replaces every character outside
    [A-Za-z0-9._-] (spaces, unicode, backslashes, ':') with '_'. Part lengths are capped at `max_part`
    (at most MAX_KEY_PART_BYTES), and the path at `max_total` bytes by dropping leading folders: callers
    that need uniqueness add a hash of the raw key.
    """
    parts = []
    for raw in re.split(r"[\\/]+", key):
        if raw in ("", ".", ".."):
            continue
        part = _UNSAFE.sub("_", raw).strip(".") or "_"
        parts.append(part[: min(max_part, MAX_KEY_PART_BYTES)])
    while len(parts) > 1 and len("/".join(parts)) > max_total:
        parts.pop(0)
    path = "/".join(parts) or "_"
    return path[-max_total:]


def file_sizes(uri: str) -> dict[str, int]:
    """Name -> size in bytes of each file directly in the folder `uri`, from one listing (no reads)."""
    fs, path = fsspec_filesystem(uri)
    try:
        found = fs.ls(path, detail=True)
    except Exception as exc:
        raise _translate_errors(uri, exc) from exc
    return {posixpath.basename(info["name"]): int(info["size"]) for info in found if info["type"] == "file"}


class _EndsFile(io.RawIOBase):
    """A read-only file of an object that fetches its first and its last `block` bytes once each (one
    ranged read each) and any other range when asked: for formats indexed at both ends (zip)."""

    def __init__(self, uri: str, fetch: Callable[[int, int], bytes], size: int, block: int) -> None:
        super().__init__()
        self.name, self._fetch, self._size, self._block = uri, fetch, size, block
        self._pos = 0
        self._ends: dict[int, bytes] = {}  # start -> bytes: the head and the tail, once fetched

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), self._size - self._pos))
        if n:
            buffer[:n] = self._range(self._pos, self._pos + n)
            self._pos += n
        return n

    def _range(self, start: int, stop: int) -> bytes:
        for end_start in (0, max(0, self._size - self._block)):
            end_stop = min(self._size, end_start + self._block)
            if end_start <= start and stop <= end_stop:
                if end_start not in self._ends:
                    self._ends[end_start] = self._fetch(end_start, end_stop)
                return self._ends[end_start][start - end_start : stop - end_start]
        return self._fetch(start, stop)


def open_ranged(uri: str, size: int | None = None, block: int = 1 << 17) -> io.RawIOBase:
    """A seekable binary file of `uri` for formats indexed at both ends of a large file (zip, so
    torch's): on S3 its first and last `block` bytes are read once each (one ranged GET each) and any
    other range when asked; with `size` known, no HEAD."""
    if not is_s3(uri):
        return open(local_file(uri), "rb", buffering=0)  # noqa: SIM115 - the caller closes it
    fs, path = fsspec_filesystem(uri)

    def fetch(start: int, stop: int) -> bytes:
        try:
            return fs.cat_file(path, start=start, end=stop)
        except Exception as exc:
            raise _translate_errors(uri, exc) from exc

    if size is None:
        try:
            size = int(fs.size(path))
        except Exception as exc:
            raise _translate_errors(uri, exc) from exc
    return _EndsFile(uri, fetch, size, block)


def download(uri: str, local_path: str | Path) -> None:
    """Copy the object at `uri` into the local file `local_path`, streamed (one GET on S3; s3fs resumes
    a broken stream from where it stopped). A full disk is a TransientError; the caller removes the
    partial file."""
    import errno

    from unmask_core.errors import TransientError

    fs, path = fsspec_filesystem(uri)
    try:
        fs.get_file(path, str(local_path), max_concurrency=1)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise TransientError(f"{local_path}: disk full while copying {uri}") from exc
        raise _translate_errors(uri, exc) from exc
    except Exception as exc:
        raise _translate_errors(uri, exc) from exc
