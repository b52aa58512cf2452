"""Corpus layouts, one registry entry each: how to list it, how its faces are aligned, how pairs are made.

A layout is a `CorpusLayout`; `LAYOUTS` maps the `--corpus` name to it. Adding a layout touches its
entry here and, if it needs one, its lister or crop function beside it (docs/extending.md).
"""

from __future__ import annotations

import csv
import io
import posixpath
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

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


def read_manifest(uri: str) -> list[ImageRecord]:
    """A CSV or Parquet manifest with a `uri` column and optional `identity` and `id` columns."""
    if uri.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        fs, path = storage.pyarrow_filesystem(uri)
        rows = pq.read_table(path, filesystem=fs).to_pylist()
    else:
        rows = list(csv.DictReader(io.StringIO(storage.read_bytes(uri).decode("utf-8-sig"))))
    if not rows or "uri" not in rows[0]:
        raise UserError(f"{uri}: a manifest needs a `uri` column")
    base = posixpath.dirname(uri) if storage.is_s3(uri) else None
    records, seen = [], set()
    for row in rows:
        image_uri = str(row["uri"]).strip()
        if not image_uri:
            continue
        if not storage.is_s3(image_uri) and base and not image_uri.startswith("/"):
            image_uri = storage.join(base, image_uri)  # relative to the manifest
        record_id = str(row.get("id") or image_uri.split("://", 1)[-1])
        if record_id in seen:
            raise UserError(f"{uri}: duplicate id {record_id!r}")
        seen.add(record_id)
        identity = str(row.get("identity") or record_id)
        records.append(ImageRecord(uri=image_uri, identity=identity, id=record_id))
    return records


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
