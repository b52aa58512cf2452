"""An input listed page by page: every file under an S3 prefix or a local folder, or every row of a
manifest, in a stable order, as tables of (id, uri, size, version) that never hold more than a page.

S3 lists in key order, 1,000 keys a request; a folder is walked depth first with each folder's entries
sorted by name; a manifest is read in file order. A listing continues after a given row (`after`), so
a job that stopped half way through listing goes on where it stopped, and each page is listed once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa

from unmask_core import storage
from unmask_core.errors import UserError

PAGE_ROWS = 1000  # an S3 list request's page; folders and manifests are paged alike

LISTING_SCHEMA = pa.schema(
    [
        ("id", pa.string()),  # the key below the input prefix, or the manifest's id
        ("uri", pa.string()),
        ("size", pa.int64()),  # bytes; null for a manifest's row (no listing says it)
        ("version", pa.string()),  # the S3 ETag or the file's mtime in ns; null for a manifest's row
    ]
)


def is_manifest(uri: str) -> bool:
    return uri.lower().endswith((".csv", ".parquet"))


@dataclass(frozen=True)
class Page:
    """Rows of a listing; `last`: no row follows (known without another request)."""

    table: pa.Table
    last: bool


@dataclass(frozen=True)
class After:
    """Where a listing resumes: after the row `rows - 1`, whose id is `last_id` (nothing: the start)."""

    rows: int = 0
    last_id: str = ""


def pages(input_uri: str, exclude: str | None = None, after: After = After()) -> Iterator[Page]:
    """The input's rows after `after`, in pages of at most PAGE_ROWS (LISTING_SCHEMA). Files under
    `exclude` (an output inside the input) are left out. An empty listing yields no page; a listing
    whose last page had no row to give (all left out) may end without a page marked `last`."""
    if is_manifest(input_uri):
        tables = _manifest_pages(input_uri, after)
    elif storage.is_s3(input_uri):
        yield from _s3_pages(input_uri, exclude, after)
        return
    else:
        tables = _folder_pages(input_uri, exclude, after)
    yield from _with_last(tables)


def _with_last(tables: Iterator[pa.Table]) -> Iterator[Page]:
    """Pages of a listing that does not know its end: one table read ahead (local reads)."""
    previous = None
    for table in tables:
        if previous is not None:
            yield Page(previous, last=False)
        previous = table
    if previous is not None:
        yield Page(previous, last=True)


def _table(rows: list[tuple]) -> pa.Table:
    ids, uris, sizes, versions = zip(*rows) if rows else ((), (), (), ())
    return pa.table([list(ids), list(uris), list(sizes), list(versions)], schema=LISTING_SCHEMA)


# ---------------------------------------------------------------- S3


def _s3_pages(input_uri: str, exclude: str | None, after: After) -> Iterator[Page]:
    client, bucket, key = storage.s3_client(input_uri)
    prefix = key.rstrip("/") + "/" if key.strip("/") else ""
    excluded = _s3_key(exclude) if exclude and storage.is_within(exclude, input_uri) else None
    request = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": PAGE_ROWS}
    if after.rows:
        request["StartAfter"] = prefix + after.last_id
    listed_any = bool(after.rows)
    while True:
        response = storage.retrying(input_uri, lambda: client.list_objects_v2(**request))
        rows = [
            (
                item["Key"][len(prefix) :],
                f"s3://{bucket}/{item['Key']}",
                item["Size"],
                item["ETag"].strip('"'),
            )
            for item in response.get("Contents", [])
            # A "folder/" entry (S3-compatible stores with real folders list them) is not an input.
            if not item["Key"].endswith("/")
            and not (excluded and (item["Key"] + "/").startswith(excluded.rstrip("/") + "/"))
        ]
        more = bool(response.get("IsTruncated"))
        if rows:
            listed_any = True
            yield Page(_table(rows), last=not more)
        if not more:
            break
        request["ContinuationToken"] = response["NextContinuationToken"]
        request.pop("StartAfter", None)
    if not listed_any and prefix:
        yield from _s3_single_object(input_uri, client, bucket, key)


def _s3_single_object(input_uri: str, client, bucket: str, key: str) -> Iterator[Page]:
    """An input that names one object rather than a prefix: that object alone (its id its name)."""
    try:
        head = storage.retrying(input_uri, lambda: client.head_object(Bucket=bucket, Key=key))
    except UserError:
        return
    name = key.rsplit("/", 1)[-1]
    row = (name, f"s3://{bucket}/{key}", head["ContentLength"], head["ETag"].strip('"'))
    yield Page(_table([row]), last=True)


def _s3_key(uri: str) -> str:
    return uri.split("://", 1)[1].partition("/")[2]


# ---------------------------------------------------------------- local folders


def _folder_pages(input_uri: str, exclude: str | None, after: After) -> Iterator[pa.Table]:
    root = storage.path_of(input_uri)
    if os.path.isfile(root):
        if not after.rows:
            yield _table([_file_row(os.path.basename(root), root)])
        return
    excluded = storage.path_of(exclude) if exclude else None
    resume = tuple(after.last_id.split("/")) if after.rows else ()
    rows: list[tuple] = []
    for record_id, path in _walk(root, (), resume, excluded):
        rows.append(_file_row(record_id, path))
        if len(rows) == PAGE_ROWS:
            yield _table(rows)
            rows = []
    if rows:
        yield _table(rows)


def _file_row(record_id: str, path: str) -> tuple:
    try:
        info = os.stat(path)
        return record_id, path, info.st_size, str(info.st_mtime_ns)
    except OSError:  # a dangling link: listed, and its read says why it fails
        return record_id, path, None, None


def _walk(folder: str, parts: tuple[str, ...], resume: tuple[str, ...], excluded: str | None):
    """(id, path) of every file below `folder`, depth first, each folder's entries sorted by name:
    the order of the ids' parts as tuples. With `resume`, only the files after that id."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        raise storage.storage_error(folder, exc) from exc
    for name in names:
        path, here = os.path.join(folder, name), (*parts, name)
        if resume and here < resume[: len(here)]:
            continue  # wholly before the resume point
        if excluded and (path == excluded or path.startswith(excluded + os.sep)):
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            inside = resume if resume[: len(here)] == here else ()
            yield from _walk(path, here, inside, excluded)
        elif not resume or here > resume:
            yield "/".join(here), path


# ---------------------------------------------------------------- manifests


def _manifest_pages(input_uri: str, after: After) -> Iterator[pa.Table]:
    from unmask_core.corpora import manifest_batches

    skip = after.rows
    for batch in manifest_batches(input_uri):
        if skip >= batch.num_rows:
            skip -= batch.num_rows
            continue
        batch, skip = batch.slice(skip), 0
        for start in range(0, batch.num_rows, PAGE_ROWS):
            page = batch.slice(start, PAGE_ROWS)
            nulls = pa.nulls(page.num_rows)
            yield pa.table(
                [page["id"], page["uri"], nulls.cast(pa.int64()), nulls.cast(pa.string())],
                schema=LISTING_SCHEMA,
            )
