"""Image records, decoding with limits, identity splits and the Parquet schemas.

A corpus (see corpora.py) is listed into `ImageRecord`s (uri, identity, id); everything downstream
works on those. Nothing here knows about prepare, training or bulk.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import signal
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from PIL import Image, ImageOps, UnidentifiedImageError

from unmask_core.output_schema import with_meanings

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

# 40 Mpx is above any camera photo in a gallery and far below a decompression bomb.
DEFAULT_MAX_PIXELS = 40_000_000
# 64 MiB is above any photo file (a 40 Mpx PNG is about that); larger inputs are refused unread.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
MAX_JPEG_SCANS = 100
DECODE_SECONDS = 10.0  # a 40 Mpx photo decodes in about a second on one core
ALLOWED_FORMATS = {"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "MPO"}
EXIF_ORIENTATION = 0x0112


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


class _DecodeTimeout(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise _DecodeTimeout in this thread after `seconds`. PIL decodes in chunks from a Python loop,
    so the alarm lands between chunks. Signals reach only the main thread, where our stages decode;
    elsewhere (a thread pool) the limit does not apply and the scan cap alone guards."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise _DecodeTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _check_jpeg_scans(data: bytes) -> None:
    # A progressive JPEG may repeat its scans: each one is a full pass over the image, and thousands
    # take minutes to decode. Real encoders write at most a dozen or so. In entropy-coded data 0xFF is
    # always stuffed, so FF DA marks a scan (or one of an embedded thumbnail).
    if data[:2] == b"\xff\xd8":
        scans = data.count(b"\xff\xda")
        if scans > MAX_JPEG_SCANS:
            raise ImageDecodeError(
                "decode_error", f"JPEG with {scans} scans (over {MAX_JPEG_SCANS}): refused before decoding"
            )


def decode_image(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, seconds: float = DECODE_SECONDS
) -> np.ndarray:
    """Bytes -> RGB uint8 HxWx3, EXIF orientation applied.

    Grayscale, CMYK, palette and 16-bit images are converted; alpha is composited on white;
    animated images give their first frame. The pixel limit is checked from the header, before any
    pixel is decoded, so a bomb-sized header costs nothing; a JPEG with too many scans is refused
    from its markers; a decode that runs over `seconds` is a `timeout`.
    """
    with _decode_errors(seconds):
        image = _open_header(data, max_pixels)
        image.seek(0)
        image.load()
        image = ImageOps.exif_transpose(image)
    return _to_rgb8(image)


def jpeg_for_device(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int] | None:
    """(height, width) when `data` is a JPEG that a JPEG decoder on an accelerator turns into the same
    picture decode_image gives: 8-bit YCbCr or grayscale, upright (no EXIF rotation to apply) and
    complete (it ends in its end-of-image marker; a cut file is decoded on the host, which names the
    damage). None for any other image: the host decodes it. The header checks are decode_image's, so
    a refused file gets the same row either way; no pixel is decoded here."""
    with _decode_errors(DECODE_SECONDS):
        image = _open_header(data, max_pixels)
        if image.format != "JPEG" or image.mode not in ("RGB", "L"):
            return None
        if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
            return None
    if not data.rstrip(b"\0\r\n ").endswith(b"\xff\xd9"):
        return None
    width, height = image.size
    return height, width


def _open_header(data: bytes, max_pixels: int) -> Image.Image:
    """The image opened lazily (its header read, no pixels) once the checks that need no pixels pass."""
    if not data:
        raise ImageDecodeError("decode_error", "empty file")
    _check_jpeg_scans(data)
    image = Image.open(io.BytesIO(data))
    if image.format not in ALLOWED_FORMATS:
        raise ImageDecodeError("unsupported_format", f"format {image.format} is not accepted")
    width, height = image.size
    if width * height > max_pixels:
        raise ImageDecodeError("too_large", f"{width}x{height} px is over the limit of {max_pixels:,} pixels")
    return image


@contextlib.contextmanager
def _decode_errors(seconds: float) -> Iterator[None]:
    """Whatever PIL raises for a broken, bomb-sized or slow file, as an ImageDecodeError."""
    try:
        with warnings.catch_warnings(), _time_limit(seconds):
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except ImageDecodeError:
        raise
    except _DecodeTimeout as exc:
        raise ImageDecodeError("timeout", f"decoding took over {seconds:g} s") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError("too_large", str(exc)) from exc
    except UnidentifiedImageError as exc:  # its message names the in-memory file object
        raise ImageDecodeError("decode_error", "not an image: no known image format starts this way") from exc
    except Exception as exc:  # PIL raises many types for broken files
        raise ImageDecodeError("decode_error", f"{type(exc).__name__}: {_for_people(str(exc))}") from exc


_OBJECT_REPR = re.compile(r"<[^<>]*? at 0x[0-9a-fA-F]+>")


def _for_people(text: str) -> str:
    """A library's message without object reprs and their memory addresses, which mean nothing in a
    row's reason and differ between runs."""
    return _OBJECT_REPR.sub("the file", text)


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
    """RGB [H, W, 3] or grey [H, W] uint8 -> PNG bytes, as lossless as any PNG. The largest host step
    of the bulk job, so tuned for speed: OpenCV's libpng at zlib level 1 with the RLE strategy, and one
    filter (Up) for every row instead of libpng's trial of all five per row: on faces, much faster than
    all five filters for a few more bytes, and faster and smaller than Pillow at compress_level=1
    (bench/pipeline.py measures it)."""
    import cv2

    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)  # OpenCV writes BGR
    params = [
        *(cv2.IMWRITE_PNG_COMPRESSION, 1),
        *(cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE),
        *(cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP),
    ]
    ok, encoded = cv2.imencode(".png", image, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.shape} {image.dtype} image as PNG")
    return encoded.tobytes()


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    """RGB [H, W, 3] uint8 -> JPEG bytes (libjpeg-turbo through OpenCV) with full-resolution colour
    (4:4:4: no chroma subsampling to blur a face's colours), baseline, for every reader. About a sixth of
    the PNG encoder's CPU and under a third of its bytes for a 256 px face at quality 95
    (bench/pipeline.py)."""
    import cv2

    params = [
        *(cv2.IMWRITE_JPEG_QUALITY, quality),
        *(cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444),
    ]
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.shape} {image.dtype} image as JPEG")
    return encoded.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


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
REAL_MASK_KIND = "real"  # the `mask_kind` of an RMFRD photo with a real mask (it has no pixel-aligned T)

_PAIRS_FIELDS = pa.schema(
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
PAIRS_SCHEMA = with_meanings(_PAIRS_FIELDS, "pairs")  # version and column meanings in the file metadata


# ---------------------------------------------------------------- pairs -> model input


def png_to_tensor(png: bytes, size: int) -> np.ndarray:
    """PNG bytes -> float32 [3, size, size] in [-1, 1], resized with area averaging when needed."""
    import cv2

    image = decode_png(png)
    if image.shape[0] != size:
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return (image.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)
