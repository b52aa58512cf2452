"""Faces of whole photos found on the unmask actor's device, when its actors have GPUs: the first
stage only reads each photo (`photo_for_device`), and `DeviceFaceFinder` decodes, detects and aligns it
beside f and g, since MTCNN and decoding are the costliest host steps by far. Its rows follow the row
protocol (bulk/rows.py) like the CPU stage's.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa

from unmask_core import data
from unmask_core.bulk import rows
from unmask_core.bulk.config import BulkConfig


def photo_for_device(raw: bytes, max_pixels: int) -> dict:
    """A photo as the device face finder takes it: a JPEG its decoder can take as it is (the bytes are
    also 5-20 times smaller than the pixels), anything else decoded here."""
    size = data.jpeg_for_device(raw, max_pixels)
    if size is not None:
        return {"jpeg": raw, "image_size": list(size)}
    image = data.decode_image(raw, max_pixels)
    return {"image": image.tobytes(), "image_size": list(image.shape[:2])}


class DeviceFaceFinder:
    """Faces of whole photos, found on the unmask actor's device: JPEGs are decoded there (nvJPEG on
    CUDA, in batches), the host-decoded pixels go up in one (pinned) copy, MTCNN runs on letterboxed
    batches (`detect_batch`), and the similarity warp runs there too, with the CPU path's transform and
    filters. The crops never leave the device before f.

    A JPEG the device decoder refuses is decoded on the CPU, with the host's limits, and uploaded: a
    node whose nvJPEG fails still unmasks every photo. After DEVICE_DECODE_STRIKES such photos in a row,
    this actor stops asking the device decoder. `decoded` counts where photos were decoded, and every
    row carries it (`decoded_on`)."""

    DEVICE_DECODE_STRIKES = 8

    def __init__(self, cfg: BulkConfig, device) -> None:
        import torch

        from unmask_core.faces.detect import build_detector

        self.cfg = cfg
        self.device = torch.device(device)
        self.detector = build_detector(cfg.detector, str(self.device))
        self.decoded: Counter[str] = Counter()
        self.device_decode_strikes = 0

    def upload(self, images: list[np.ndarray]) -> list:
        """The images as uint8 [H, W, 3] tensors on the device, from one host-to-device copy."""
        import torch

        from unmask_core.accelerator import upload

        flat = upload(torch.from_numpy(np.concatenate([image.reshape(-1) for image in images])), self.device)
        views, start = [], 0
        for image in images:
            views.append(flat[start : start + image.size].view(image.shape))
            start += image.size
        return views

    def decode_on_device(self, encoded: list) -> list:
        """JPEG byte tensors -> uint8 [H, W, 3] tensors on the device, in one batched call."""
        from torchvision.io import ImageReadMode, decode_jpeg

        return [x.permute(1, 2, 0) for x in decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.device)]

    def decode_jpegs(self, blobs: list[bytes], sizes: list[list[int]]) -> list[tuple]:
        """(uint8 [H, W, 3] tensor on the device, "device" or "cpu") per JPEG, or (the exception that
        neither decoder got past, None)."""
        import torch

        on_device: list = [None] * len(blobs)
        if self.device_decode_strikes < self.DEVICE_DECODE_STRIKES:
            encoded = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in blobs]
            try:
                on_device = self.decode_on_device(encoded)
            except Exception:  # one file the decoder refuses fails the whole batch: then each on its own
                on_device = [_or_exception(lambda x: self.decode_on_device([x])[0], x) for x in encoded]
        results: list = [None] * len(blobs)
        fallback, pixels = [], []
        for i, (photo, size) in enumerate(zip(on_device, sizes)):
            if isinstance(photo, torch.Tensor) and list(photo.shape[:2]) == size:
                results[i], self.device_decode_strikes = (photo, "device"), 0
                continue
            try:
                pixels.append(data.decode_image(blobs[i], self.cfg.max_pixels))
            except Exception as exc:  # a file no decoder reads: the input's own fault
                results[i] = (exc, None)
                continue
            fallback.append(i)
            self.device_decode_strikes += 1  # the device refused a photo the CPU could decode
        for i, photo in zip(fallback, self.upload(pixels) if pixels else []):
            results[i] = (photo, "cpu")
        return results

    def photos(self, photo_rows: list[dict]) -> list[tuple]:
        """(pixels as a uint8 [H, W, 3] tensor on the device, where they were decoded) per photo row,
        or (why it has none, None)."""
        photos: list = [None] * len(photo_rows)
        jpegs = [i for i, row in enumerate(photo_rows) if row["jpeg"] is not None]
        decoded = [i for i, row in enumerate(photo_rows) if row["jpeg"] is None]
        if jpegs:
            blobs = [photo_rows[i]["jpeg"] for i in jpegs]
            sizes = [photo_rows[i]["image_size"] for i in jpegs]
            for i, photo in zip(jpegs, self.decode_jpegs(blobs, sizes)):
                photos[i] = photo
        if decoded:
            images = [
                np.frombuffer(photo_rows[i]["image"], np.uint8).reshape(*photo_rows[i]["image_size"], 3)
                for i in decoded
            ]
            for i, photo in zip(decoded, self.upload(images)):
                photos[i] = (photo, "cpu")  # decoded by the first stage, on its host
        self.decoded.update(where for _, where in photos if where)
        return photos

    def detect(self, photos: list) -> list:
        """Faces per photo, or the exception its detection raised (one odd photo loses only itself)."""
        from unmask_core.faces.detect import find_faces

        if not hasattr(self.detector, "detect_batch"):  # a detector without a batched device path
            return [_or_exception(find_faces, self.detector, x.cpu().numpy()) for x in photos]
        try:
            return self.detector.detect_batch(photos)
        except Exception:
            return [_or_exception(lambda x: self.detector.detect_batch([x])[0], x) for x in photos]

    def __call__(self, table: pa.Table):
        """(rows of faces and errors, the ok rows' aligned crops: uint8 [K, 256, 256, 3] on the device)."""
        import torch

        given = table.to_pylist()
        todo = rows.ok_indices(table)
        photos = dict(zip(todo, self.photos([given[i] for i in todo])))
        decoded = [i for i in todo if photos[i][1] is not None]
        found = dict(zip(decoded, self.detect([photos[i][0] for i in decoded])))
        out, crops = [], []
        for i, row in enumerate(given):
            base = {k: row[k] for k in ("shard", "shard_inputs", "id", "source_uri")}
            if i not in photos:
                faces_of_input = [row]
            elif i not in found:
                faces_of_input = [rows.error_row(base, *_decode_error(photos[i][0]))]
            else:
                base["decoded_on"] = photos[i][1]
                faces_of_input = self.faces_of(base, found[i], photos[i][0], crops)
            # The photo's pixels stop here.
            out += rows.of_input([dict(face, **dict.fromkeys(rows.IMAGE_COLUMNS)) for face in faces_of_input])
        masked = torch.cat(crops) if crops else None
        return rows.stage_table(out), masked

    def faces_of(self, base: dict, detected, image, crops: list) -> list[dict]:
        from unmask_core.faces.align import align_faces_torch

        if isinstance(detected, Exception):
            return [rows.error_row(base, "detect_error", f"{type(detected).__name__}: {detected}")]
        if not detected:
            return [rows.error_row(base, "no_face", "no face detected")]
        chosen = detected if self.cfg.faces == "all" else detected[:1]
        found = []
        photo = image.permute(2, 0, 1).float()
        for index, face in enumerate(chosen):
            try:
                aligned, matrices = align_faces_torch(photo, [face.landmarks], size=rows.FACE_SIZE)
            except Exception as exc:
                found.append(rows.error_row(base, "align_error", str(exc), face_index=index))
                continue
            crops.append(aligned.round().to(image.dtype).permute(0, 2, 3, 1))
            found.append(rows.face_row(base, index, face, matrices[0]))
        return found


def _decode_error(error: Exception) -> tuple[str, str]:
    """The status and reason of a photo that no decoder could read."""
    if isinstance(error, data.ImageDecodeError):
        return error.status, error.reason
    return "decode_error", f"{type(error).__name__}: {error}"


def _or_exception(function, *args):
    try:
        return function(*args)
    except Exception as exc:
        return exc
