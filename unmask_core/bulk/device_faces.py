"""Faces of whole photos found on the unmask actor's device, when its actors have GPUs: the first
stage only reads each photo (`photo_for_device`), and `DeviceFaceFinder` decodes, detects and aligns it
beside f and g (faces/device.py), since MTCNN and decoding are the costliest host steps by far. Its
rows follow the row protocol (bulk/rows.py) like the CPU stage's.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from unmask_core import data
from unmask_core.bulk import rows
from unmask_core.bulk.config import BulkConfig
from unmask_core.faces.device import DeviceFaces


def photo_for_device(raw: bytes, max_pixels: int) -> dict:
    """A photo as the device face finder takes it: a JPEG its decoder can take as it is (the bytes are
    also 5-20 times smaller than the pixels), anything else decoded here."""
    size = data.jpeg_for_device(raw, max_pixels)
    if size is not None:
        return {"jpeg": raw, "image_size": list(size)}
    image = data.decode_image(raw, max_pixels)
    return {"image": image.tobytes(), "image_size": list(image.shape[:2])}


class DeviceFaceFinder(DeviceFaces):
    """The unmask stage's rows of whole photos -> rows of faces (or errors) and the ok faces' crops on
    the device; every row of a decoded photo says where it was decoded (`decoded_on`)."""

    def __init__(self, cfg: BulkConfig, device) -> None:
        super().__init__(cfg.detector, device, cfg.max_pixels)
        self.cfg = cfg

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
        def align(face) -> tuple[np.ndarray, dict]:
            crop, matrix = self.align(image, face.landmarks, rows.FACE_SIZE)
            crops.append(crop)
            return matrix, {}

        return rows.detected_faces(base, detected, self.cfg.faces, align)


def _decode_error(error: Exception) -> tuple[str, str]:
    """The status and reason of a photo that no decoder could read."""
    if isinstance(error, data.ImageDecodeError):
        return error.status, error.reason
    return "decode_error", f"{type(error).__name__}: {error}"
