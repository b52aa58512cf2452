"""Pair makers: one listed image -> one pairs row (T, M and what made them) or an error row.

`SyntheticPairMaker` serves every layout but RMFRD (prepare/rmfrd.py): it frames the face by the
layout's recipe (corpora.py), then draws a synthetic mask on it (faces/masks).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from unmask_core import corpora, data, extras, storage
from unmask_core.errors import UserError
from unmask_core.prepare.config import MASK_FIT_EXTRAS


class RowError(Exception):
    """An input that becomes an error row: `status` is the machine-readable kind, `reason` the words."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def empty_pairs_row(record: data.ImageRecord, split: str) -> dict[str, Any]:
    """A pairs row for `record` with every image column empty and status ok (filled in by the maker)."""
    row: dict[str, Any] = {name: None for name in data.PAIRS_SCHEMA.names}
    row.update(
        id=record.id, identity=record.identity, split=split, source_uri=record.uri, status="ok", error=""
    )
    return row


def read_image(uri: str, cfg) -> np.ndarray:  # cfg: PrepareConfig
    """The decoded RGB image at `uri`, or a RowError naming why it cannot be one."""
    try:
        raw = storage.read_bytes(uri, cfg.max_bytes)
    except UserError as exc:
        raise RowError("read_error", str(exc)) from exc
    try:
        return data.decode_image(raw, cfg.max_pixels)
    except data.ImageDecodeError as exc:
        raise RowError(exc.status, exc.reason) from exc


def masked_pair_columns(
    aligned: np.ndarray,
    landmarks: np.ndarray,
    box: np.ndarray,
    cfg,  # PrepareConfig: mask_kinds, mask_fit, seed
    image_id: str,
) -> dict[str, Any]:
    """T, M and the mask's columns for an aligned face whose 5 landmarks and detector box (x0, y0, x1,
    y1) are known, in the aligned frame. The 'dlib68' fit finds dlib's 68 landmarks in that box."""
    from unmask_core.faces.masks import MaskError, apply_mask, choose_mask

    kind, color = choose_mask(cfg.mask_kinds, cfg.seed, image_id)
    landmarks68 = None
    if cfg.mask_fit == "dlib68":
        from unmask_core.faces.dlib_models import landmarks68 as find_landmarks68

        landmarks68 = find_landmarks68(aligned, tuple(box))
    try:
        mask = apply_mask(
            aligned, landmarks, kind, color, cfg.seed, image_id, fit=cfg.mask_fit, landmarks68=landmarks68
        )
    except MaskError as exc:
        raise RowError("mask_failed", str(exc)) from exc
    return {
        "T": data.encode_png(aligned),
        "M": data.encode_png(mask.masked),
        "mask_kind": mask.kind,
        "mask_color": ",".join(str(int(c)) for c in mask.color) if mask.color is not None else None,
        "mask_region": data.encode_png(mask.region.astype(np.uint8) * 255),
        "landmarks": np.asarray(landmarks, dtype=np.float32).reshape(-1).tolist(),
    }


def detect_faces(detector, image: np.ndarray) -> list:
    """The detector's faces in `image`; its failure on one odd image (one too small for its image
    pyramid) is that input's `detect_error` row, as in the bulk job, not a bug."""
    try:
        return detector.detect(image)
    except Exception as exc:
        height, width = image.shape[:2]
        raise RowError(
            "detect_error",
            f"the face detector failed on this {width}x{height} px image ({type(exc).__name__}: {exc})",
        ) from exc


def box_in_aligned(box: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """A detector box (x0, y0, x1, y1) carried by the 2x3 similarity `matrix` into the aligned frame:
    its centre mapped, its sides scaled. The face is upright there, so the box stays a square-on box
    (the bounding box of its turned corners would grow with the face's roll)."""
    from unmask_core.faces.align import transform_points

    box = np.asarray(box, dtype=np.float64)
    centre = transform_points((box[:2] + box[2:]) / 2, matrix)
    half = (box[2:] - box[:2]) / 2 * float(np.sqrt(abs(np.linalg.det(np.asarray(matrix)[:, :2]))))
    return np.concatenate([centre - half, centre + half])


class SyntheticPairMaker:
    """Turns one listed image into a pair row with a synthetic mask (or an error row). Holds the detector."""

    def __init__(self, cfg) -> None:  # cfg: PrepareConfig
        from unmask_core.faces.detect import build_detector

        # Checked with the config already; again here, where a missing module would make every row an
        # internal_error.
        extras.require(MASK_FIT_EXTRAS.get(cfg.mask_fit), f"--mask-fit {cfg.mask_fit}")
        self.cfg = cfg
        self.layout = corpora.layout(cfg.corpus)
        self.detector = build_detector(cfg.detector, "cpu")

    def aligned_face(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(aligned face, its 5 landmarks and its detector box in the aligned frame) by the layout's
        recipe."""
        import cv2

        from unmask_core.faces.align import align_face, transform_points

        size = self.cfg.image_size
        if not self.layout.aligned:
            faces = detect_faces(self.detector, image)
            if not faces:
                raise RowError("no_face", "no face detected")
            aligned, matrix = align_face(image, faces[0].landmarks, size=size)
            return aligned, transform_points(faces[0].landmarks, matrix), box_in_aligned(faces[0].box, matrix)
        # Pre-aligned corpora keep their geometry; we only look for landmarks to fit the mask.
        aligned = self.layout.crop(image) if self.layout.crop else image
        if aligned.shape[:2] != (size, size):
            aligned = cv2.resize(aligned, (size, size), interpolation=cv2.INTER_CUBIC)
        faces = detect_faces(self.detector, aligned)
        if not faces:
            raise RowError("no_face", "no face detected in the aligned image")
        return aligned, faces[0].landmarks, faces[0].box

    def make(self, record: data.ImageRecord, split: str, item: dict | None = None) -> dict[str, Any]:
        row = empty_pairs_row(record, split)
        try:
            aligned, landmarks, box = self.aligned_face(read_image(record.uri, self.cfg))
            row.update(masked_pair_columns(aligned, landmarks, box, self.cfg, record.id))
        except RowError as exc:
            row.update(status=exc.status, error=exc.reason)
        except Exception as exc:  # a bug must not lose the row: record it, and the job exits non-zero
            row.update(status="internal_error", error=f"{type(exc).__name__}: {exc}")
        return row
