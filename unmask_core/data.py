"""Corpus layouts, image decoding with limits, identity splits and the Parquet schemas.

A corpus is listed into `ImageRecord`s (uri, identity, id); everything downstream works on those.
"""

from __future__ import annotations

import csv
import hashlib
import io
import posixpath
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from PIL import Image, ImageOps

from unmask_core import storage
from unmask_core.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
CORPUS_KINDS = ("ffhq", "celeba", "lfw", "rmfrd", "folders", "manifest")

# 40 Mpx is above any camera photo in a gallery and far below a decompression bomb.
DEFAULT_MAX_PIXELS = 40_000_000
ALLOWED_FORMATS = {"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "MPO"}


@dataclass(frozen=True)
class ImageRecord:
    uri: str
    identity: str
    id: str  # stable, unique within the corpus: the key below the corpus root
    masked: bool = False  # RMFRD: a photo with a real mask


# ---------------------------------------------------------------- decoding


class ImageDecodeError(Exception):
    """An input that cannot become an RGB image; `status` is the row status it maps to."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Bytes -> RGB uint8 HxWx3, EXIF orientation applied.

    Grayscale, CMYK, palette and 16-bit images are converted; alpha is composited on white;
    animated images give their first frame. The pixel limit is checked from the header, before any
    pixel is decoded, so a bomb-sized header costs nothing.
    """
    if not data:
        raise ImageDecodeError("decode_error", "empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in ALLOWED_FORMATS:
                raise ImageDecodeError("unsupported_format", f"format {image.format} is not accepted")
            width, height = image.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    "too_large", f"{width}x{height} px is over the limit of {max_pixels:,} pixels"
                )
            image.seek(0)
            image.load()
            image = ImageOps.exif_transpose(image)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError("too_large", str(exc)) from exc
    except Exception as exc:  # PIL raises many types for broken files
        raise ImageDecodeError("decode_error", f"{type(exc).__name__}: {exc}") from exc
    return _to_rgb8(image)


def _to_rgb8(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if array.max() > 255 else 255.0
        gray = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


# ---------------------------------------------------------------- corpus layouts


def _identity_folder_records(root: str, uris: list[str], masked: bool = False) -> list[ImageRecord]:
    records = []
    for uri in uris:
        key = storage.relative_key(root, uri)
        parts = key.split("/")
        if len(parts) < 2:
            continue  # a file directly under the root belongs to no identity
        records.append(ImageRecord(uri=uri, identity=parts[-2], id=key, masked=masked))
    return records


def list_corpus(kind: str, input_uri: str) -> list[ImageRecord]:
    """List a corpus in one of the supported layouts (local or s3://), sorted by id."""
    if kind not in CORPUS_KINDS:
        raise UserError(f"unknown corpus kind {kind!r}; one of {', '.join(CORPUS_KINDS)}")
    storage.check_readable(input_uri)
    if kind == "manifest":
        return read_manifest(input_uri)
    if kind == "ffhq":
        # FFHQ has no identity labels: every image is its own identity (the paper splits by image).
        uris = storage.list_files(input_uri, IMAGE_SUFFIXES)
        records = []
        for uri in uris:
            key = storage.relative_key(input_uri, uri)
            records.append(ImageRecord(uri=uri, identity=posixpath.splitext(key)[0], id=key))
    elif kind == "celeba":
        records = _celeba_records(input_uri)
    elif kind in ("lfw", "folders"):
        records = _identity_folder_records(input_uri, storage.list_files(input_uri, IMAGE_SUFFIXES))
    else:
        records = _rmfrd_records(input_uri)
    if not records:
        raise UserError(f"{input_uri}: no images found in the {kind} layout")
    return sorted(records, key=lambda r: r.id)


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


# ---------------------------------------------------------------- splits


def _stable_hash(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "big")


def identity_split(identities: Sequence[str], test_fraction: float, seed: int) -> dict[str, str]:
    """Identity -> 'train'|'test', disjoint by construction and deterministic.

    Identities are ordered by a seeded hash and the first round(n * fraction) go to test, so the
    result depends only on the set of identities and the seed, never on listing order.
    """
    unique = sorted(set(identities))
    ranked = sorted(unique, key=lambda name: (_stable_hash(seed, name), name))
    n_test = round(len(unique) * test_fraction)
    if test_fraction > 0 and len(unique) >= 2:
        n_test = min(max(n_test, 1), len(unique) - 1)
    test = set(ranked[:n_test])
    return {name: ("test" if name in test else "train") for name in unique}


# ---------------------------------------------------------------- schemas

LANDMARKS_TYPE = pa.list_(pa.float32(), 10)  # 5 (x, y) points, flattened

PAIRS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("identity", pa.string()),
        ("split", pa.string()),
        ("source_uri", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("T", pa.binary()),  # aligned unmasked face, PNG
        ("M", pa.binary()),  # the same face with a synthetic (or, for RMFRD, real) mask, PNG
        ("mask_kind", pa.string()),
        ("mask_color", pa.string()),
        ("mask_region", pa.binary()),  # PNG of the mask's pixel region (255 inside)
        ("landmarks", LANDMARKS_TYPE),  # in the aligned 256 px frame
        ("T_ref", pa.binary()),  # RMFRD: a different unmasked image of the same identity, PNG
        ("eyes", pa.list_(pa.float32(), 4)),  # RMFRD: (x, y) of both eyes in the aligned frame
    ]
)


# ---------------------------------------------------------------- pairs -> model input


def png_to_tensor(png: bytes, size: int) -> np.ndarray:
    """PNG bytes -> float32 [3, size, size] in [-1, 1], resized with area averaging when needed."""
    import cv2

    image = decode_png(png)
    if image.shape[0] != size:
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return (image.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)


def decode_batch(batch: dict[str, np.ndarray], size: int, stage: str) -> dict[str, np.ndarray]:
    """PNG columns of a pairs batch -> float32 [B, 3, size, size] in [-1, 1] (what the encoder eats).

    Stage `real` rows have no pixel-aligned T: they bring T_ref (another unmasked photo of the person),
    the eye positions (for the periorbital region) and the cached T-hat codes instead."""
    out = {"M": np.stack([png_to_tensor(b, size) for b in batch["M"]])}
    if stage != "real":
        out["T"] = np.stack([png_to_tensor(b, size) for b in batch["T"]])
    else:
        from unmask_core.periorbital import periorbital_weight

        out["T_ref"] = np.stack([png_to_tensor(b, size) for b in batch["T_ref"]])
        scale = size / 256.0
        out["region"] = np.stack(
            [
                periorbital_weight(np.asarray(e, np.float32).reshape(2, 2) * scale, size)[None]
                for e in batch["eyes"]
            ]
        ).astype(np.float32)
        out["target_codes"] = np.stack([np.asarray(c, np.float32) for c in batch["T_hat_codes"]])
    return out
