"""Bad and odd image files for the decode tests and the end-to-end jobs, built from real photos."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def bomb_header_png(width: int = 50_000, height: int = 50_000) -> bytes:
    """A tiny file whose PNG header claims width x height RGB pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def odd_files(photo: np.ndarray) -> dict[str, bytes]:
    """name -> bytes: every kind of bad or unusual input a gallery archive holds."""
    rgb = Image.fromarray(photo)
    jpeg = encode(rgb, "JPEG", quality=90)
    gray16 = Image.fromarray((np.asarray(rgb.convert("L"), np.uint16) * 257).astype(np.uint16))
    rgba = rgb.convert("RGBA")
    rgba.putalpha(200)
    frames = [rgb, rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return {
        "zero_byte.jpg": b"",
        "truncated.jpg": jpeg[: len(jpeg) // 3],
        "text_named.jpg": b"this is not an image, just text\n" * 10,
        "cmyk.jpg": encode(rgb.convert("CMYK"), "JPEG"),
        "sixteen_bit.png": encode(gray16, "PNG"),
        "grayscale.png": encode(rgb.convert("L"), "PNG"),
        "rgba.png": encode(rgba, "PNG"),
        "animated.gif": gif.getvalue(),
        "bomb_header.png": bomb_header_png(),
    }


def bogus_sampling_jpeg(jpeg: bytes) -> bytes:
    """A JPEG whose header reads fine (size, mode) but whose first component claims sampling factors
    of 0: every decoder refuses it, only once it decodes."""
    out = bytearray(jpeg)
    sof = out.index(b"\xff\xc0")
    # SOF0: marker(2) length(2) precision(1) height(2) width(2) components(1), then id, HV, table each
    out[sof + 11] = 0x00
    return bytes(out)


def gallery_photos(count: int) -> dict[str, bytes]:
    """`count` gallery photos with faces, as JPEG files by name: crops of a real group photo around
    different people, every other one flipped."""
    from unmask_core.faces.samples import load_rgb, sample_photo

    group = load_rgb(sample_photo("t1.jpg"))
    photos = {}
    for k in range(count):
        left = (k * 180) % max(1, group.shape[1] - 400)
        crop = group[:, left : left + 400]
        if k % 2:
            crop = crop[:, ::-1]
        photos[f"{k:03d}.jpg"] = encode(Image.fromarray(np.ascontiguousarray(crop)), "JPEG", quality=90)
    return photos
