"""Corpus layouts, one registry entry each: how to list it, how its faces are aligned, how pairs are made.

A layout is a `CorpusLayout`; `LAYOUTS` maps the `--corpus` name to it. Adding a layout touches its
entry here and, if it needs one, its lister or crop function beside it (docs/extending.md).
"""

from __future__ import annotations

import csv
import io
import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from unmask_core import storage
from unmask_core.data import IMAGE_SUFFIXES, ImageRecord
from unmask_core.errors import UserError
from unmask_core.faces.align import lfw_crop


@dataclass(frozen=True)
class CorpusLayout:
    """`list_records(root) -> records`. `crop`: the corpus is already aligned and this crop (None: the
    whole image) frames its faces like ours; a layout without `aligned` is detected and aligned by
    its 5 landmarks. `pairs`: the pair maker, by name ('synthetic' masks, or 'rmfrd' real masks)."""

    list_records: Callable[[str], list[ImageRecord]]
    aligned: bool = False
    crop: Callable[[np.ndarray], np.ndarray] | None = None
    pairs: str = "synthetic"


# ---------------------------------------------------------------- listers


def _identity_folder_records(root: str, uris: list[str], masked: bool = False) -> list[ImageRecord]:
    records = []
    for uri in uris:
        key = storage.relative_key(root, uri)
        parts = key.split("/")
        if len(parts) < 2:
            continue  # a file directly under the root belongs to no identity
        records.append(ImageRecord(uri=uri, identity=parts[-2], id=key, masked=masked))
    return records


def _identity_folders(root: str) -> list[ImageRecord]:
    return _identity_folder_records(root, storage.list_files(root, IMAGE_SUFFIXES))


def _ffhq_records(root: str) -> list[ImageRecord]:
    # FFHQ has no identity labels: every image is its own identity (the paper splits by image).
    records = []
    for uri in storage.list_files(root, IMAGE_SUFFIXES):
        key = storage.relative_key(root, uri)
        records.append(ImageRecord(uri=uri, identity=posixpath.splitext(key)[0], id=key))
    return records


def _celeba_records(root: str) -> list[ImageRecord]:
    identity_file = storage.join(root, "identity_CelebA.txt")
    images_root = storage.join(root, "img_align_celeba")
    if not storage.exists(identity_file):
        raise UserError(f"{identity_file}: CelebA layout needs identity_CelebA.txt beside img_align_celeba/")
    identities = {}
    for line in storage.read_bytes(identity_file).decode().splitlines():
        parts = line.split()
        if len(parts) == 2:
            identities[parts[0]] = parts[1]
    records = []
    for uri in storage.list_files(images_root, IMAGE_SUFFIXES):
        name = posixpath.basename(uri)
        if name in identities:
            records.append(ImageRecord(uri=uri, identity=identities[name], id=f"img_align_celeba/{name}"))
    return records


# RMFRD ships as AFDB_face_dataset/<identity>/ and AFDB_masked_face_dataset/<identity>/;
# `unmasked/` and `masked/` are accepted as well.
RMFRD_FOLDERS = (("AFDB_face_dataset", "AFDB_masked_face_dataset"), ("unmasked", "masked"))


def _rmfrd_records(root: str) -> list[ImageRecord]:
    for unmasked_name, masked_name in RMFRD_FOLDERS:
        unmasked, masked = storage.join(root, unmasked_name), storage.join(root, masked_name)
        if storage.exists(masked) and storage.exists(unmasked):
            return _identity_folder_records(root, storage.list_files(unmasked, IMAGE_SUFFIXES)) + (
                _identity_folder_records(root, storage.list_files(masked, IMAGE_SUFFIXES), masked=True)
            )
    raise UserError(
        f"{root}: RMFRD layout needs two folders of identity folders: "
        "AFDB_face_dataset/ and AFDB_masked_face_dataset/ (or unmasked/ and masked/)"
    )


MANIFEST_COLUMNS = ("uri", "id", "identity")
MANIFEST_BATCH_ROWS = 65_536


def manifest_batches(uri: str) -> Iterator[pa.Table]:
    """A CSV or Parquet manifest's rows in record batches of (id, uri, identity) strings, in file
    order, never whole in memory. `uri` is required; a relative one is relative to the manifest's
    folder. A missing `id` is the uri (without its scheme), a missing `identity` the id. A file that is
    not UTF-8 CSV, a malformed row, or a row without a uri is one UserError naming the file and the
    row (its line in a CSV, its number in a Parquet file)."""
    parquet = uri.lower().endswith(".parquet")
    base = posixpath.dirname(uri) if storage.is_s3(uri) else str(Path(storage.absolute(uri)).parent)
    rows_before = 0
    for batch in _parquet_batches(uri) if parquet else _csv_batches(uri):
        yield _manifest_table(uri, batch, base, rows_before, parquet)
        rows_before += batch.num_rows


def _open(uri: str):
    fs, path = storage.pyarrow_filesystem(uri)
    try:
        return fs.open_input_file(path)
    except Exception as exc:
        raise storage.storage_error(uri, exc) from exc


def _csv_batches(uri: str) -> Iterator[pa.RecordBatch]:
    import pyarrow.csv as pacsv

    with _open(uri) as header_file:
        try:
            names = pacsv.open_csv(
                header_file, read_options=pacsv.ReadOptions(block_size=1 << 16)
            ).schema.names
        except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
            raise UserError(f"{uri}: {_csv_fault(uri) or _first_line(exc)}") from exc
    columns = _manifest_columns(uri, names)
    convert = pacsv.ConvertOptions(
        column_types={name: pa.string() for name in columns}, include_columns=columns
    )
    with _open(uri) as f:
        try:
            reader = pacsv.open_csv(f, convert_options=convert)
            yield from reader
        except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
            raise UserError(f"{uri}: {_csv_fault(uri) or _first_line(exc)}") from exc


def _csv_fault(uri: str) -> str:
    """Where a CSV file that pyarrow refused goes wrong, as `line N: what` (pyarrow names no row):
    a second, slow read, only after a failure."""
    fs, path = storage.fsspec_filesystem(uri)
    with fs.open(path, "rb") as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")
        reader = csv.reader(text)
        try:
            header = next(reader, [])
            for row in reader:
                if any("\udc80" <= ch <= "\udcff" for field in row for ch in field):
                    return f"line {reader.line_num}: not UTF-8 text"
                if len(row) != len(header) and row:
                    columns = len(header)
                    return f"line {reader.line_num}: {len(row)} values, the header names {columns} columns"
        except csv.Error as exc:
            return f"line {reader.line_num}: {exc}"
    return ""


def _parquet_batches(uri: str) -> Iterator[pa.RecordBatch]:
    import pyarrow.parquet as pq

    with _open(uri) as f:
        try:
            parquet = pq.ParquetFile(f)
            columns = _manifest_columns(uri, parquet.schema_arrow.names)
            yield from parquet.iter_batches(batch_size=MANIFEST_BATCH_ROWS, columns=columns)
        except pa.ArrowException as exc:
            raise UserError(f"{uri}: not a readable Parquet file ({_first_line(exc)})") from exc


def _manifest_columns(uri: str, names: list[str]) -> list[str]:
    if "uri" not in names:
        raise UserError(f"{uri}: a manifest needs a `uri` column (found: {', '.join(names) or 'none'})")
    return [name for name in MANIFEST_COLUMNS if name in names]


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _manifest_table(uri: str, batch: pa.RecordBatch, base: str, rows_before: int, parquet: bool) -> pa.Table:
    import pyarrow.compute as pc

    def text(name: str) -> pa.Array:
        try:
            return pc.utf8_trim_whitespace(batch.column(name).cast(pa.string()))
        except pa.ArrowException as exc:
            raise UserError(f"{uri}: column `{name}` is not text ({batch.schema.field(name).type})") from exc

    uris = text("uri")
    missing = pc.or_kleene(pc.is_null(uris), pc.equal(uris, "")).fill_null(True)
    if pc.any(missing).as_py():
        index = pc.index(missing, True).as_py()
        where = f"row {rows_before + index + 1}" if parquet else f"line {rows_before + index + 2}"
        raise UserError(f"{uri}: {where} has no uri")
    absolute = pc.or_(
        pc.starts_with(uris, "/"), pc.match_substring_regex(uris, r"^[A-Za-z][A-Za-z0-9+.-]*://")
    )
    uris = pc.if_else(absolute, uris, pc.binary_join_element_wise(base, uris, "/"))
    ids = _filled(
        text("id") if "id" in batch.schema.names else None,
        pc.replace_substring_regex(uris, r"^[^:/]+://", ""),
    )
    identities = _filled(text("identity") if "identity" in batch.schema.names else None, ids)
    return pa.table({"id": ids, "uri": uris, "identity": identities})


def _filled(values: pa.Array | None, fallback: pa.Array) -> pa.Array:
    """`values` where they hold text, `fallback` where they are missing or empty."""
    import pyarrow.compute as pc

    if values is None:
        return fallback
    return pc.if_else(pc.fill_null(pc.not_equal(values, ""), False), values, fallback)


def check_manifest(uri: str) -> int:
    """Read a manifest once, checking every row (see `manifest_batches`) and that its ids are unique,
    and return its row count. Memory: 8 bytes per row (a hash of its id), not the rows."""
    hashes = [
        np.fromiter(map(hash, batch.column("id").to_pylist()), np.int64, batch.num_rows)
        for batch in manifest_batches(uri)
    ]
    found = np.sort(np.concatenate(hashes)) if hashes else np.empty(0, np.int64)
    if not len(found):
        raise UserError(f"{uri}: the manifest has no rows")
    repeated = found[1:][found[1:] == found[:-1]]
    if len(repeated):
        duplicate = _duplicate_id(uri, set(repeated.tolist()))
        if duplicate is not None:
            raise UserError(f"{uri}: duplicate id {duplicate!r}")
    return len(found)


def _duplicate_id(uri: str, suspects: set[int]) -> str | None:
    """The first id that really repeats among those whose hash does (two ids may share a hash)."""
    seen = set()
    for batch in manifest_batches(uri):
        for record_id in batch.column("id").to_pylist():
            if hash(record_id) in suspects:
                if record_id in seen:
                    return record_id
                seen.add(record_id)
    return None


def read_manifest(uri: str) -> list[ImageRecord]:
    """A manifest's rows as records (a corpus for `prepare`; the bulk job streams `manifest_batches`)."""
    check_manifest(uri)
    return [ImageRecord(**row) for batch in manifest_batches(uri) for row in batch.to_pylist()]


# ---------------------------------------------------------------- crops of pre-aligned corpora


def celeba_crop(image: np.ndarray) -> np.ndarray:
    # Aligned CelebA is 178x218: take the central 178x178 square (rows 20:198) so that upsampling
    # to 256 keeps the aspect ratio.
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return image[top : top + side, left : left + side]


# ---------------------------------------------------------------- the registry

LAYOUTS: dict[str, CorpusLayout] = {
    "ffhq": CorpusLayout(_ffhq_records, aligned=True),
    "celeba": CorpusLayout(_celeba_records, aligned=True, crop=celeba_crop),
    "lfw": CorpusLayout(_identity_folders, aligned=True, crop=lfw_crop),
    # RMFRD photos are eye-aligned by their own pair maker (OpenCV eyes; see prepare/rmfrd.py).
    "rmfrd": CorpusLayout(_rmfrd_records, pairs="rmfrd"),
    "folders": CorpusLayout(_identity_folders),
    "manifest": CorpusLayout(read_manifest),
}
CORPUS_KINDS = tuple(LAYOUTS)


def layout(kind: str) -> CorpusLayout:
    if kind not in LAYOUTS:
        raise UserError(f"unknown corpus kind {kind!r}; one of {', '.join(LAYOUTS)}")
    return LAYOUTS[kind]


def list_corpus(kind: str, input_uri: str) -> list[ImageRecord]:
    """List a corpus in one of the supported layouts (local or s3://), sorted by id."""
    corpus = layout(kind)
    storage.check_readable(input_uri)
    records = corpus.list_records(input_uri)
    if not records:
        raise UserError(f"{input_uri}: no images found in the {kind} layout")
    return sorted(records, key=lambda r: r.id)
