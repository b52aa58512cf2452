"""RMFRD, the real-mask corpus (METHOD.md, "Training" 4 and "Data"): its pairs.

RMFRD has unmasked photos (AFDB_face_dataset/<identity>/) and, separately, masked photos of the same
people (AFDB_masked_face_dataset/<identity>/); no masked photo has a pixel-aligned unmasked twin.

Every photo is eye-aligned (`rmfrd_align`: OpenCV must find both eyes). Unmasked photos get a synthetic
mask and become ordinary phase-1 pairs (T, M). Masked photos become real-mask rows: M, the eye
positions, and T_ref, a different unmasked photo of the same person (for L_ID); T is null. Training on
them (T-hat, stage `real`) lives in training/t_hat.py.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Any

import numpy as np

from unmask_core import data
from unmask_core.data import REAL_MASK_KIND
from unmask_core.faces.align import AlignmentError, RMFRDAlignment, rmfrd_align
from unmask_core.prepare.pairs import RowError, detect_faces, empty_pairs_row, masked_pair_columns, read_image

# A masked photo keeps this many same-identity reference candidates (the first that aligns is used).
# RMFRD has up to hundreds of unmasked photos per person; a seeded sample bounds the work per image.
MAX_REFERENCE_CANDIDATES = 8


def _rank(seed: int, masked_id: str, reference_id: str) -> bytes:
    return hashlib.sha256(f"{seed}\x1f{masked_id}\x1f{reference_id}".encode()).digest()


def add_reference_candidates(items: list[dict[str, Any]], seed: int) -> None:
    """For each masked item, `item["references"]`: record dicts of unmasked photos of the same
    identity, in an order fixed by (seed, masked id, reference id) alone, at most
    MAX_REFERENCE_CANDIDATES of them. Unmasked items are left as they are."""
    unmasked: dict[str, list[dict]] = defaultdict(list)
    for item in items:
        if not item["record"].get("masked"):
            unmasked[item["record"]["identity"]].append(item["record"])
    for item in items:
        record = item["record"]
        if record.get("masked"):
            candidates = sorted(
                unmasked.get(record["identity"], []),
                key=lambda ref: (_rank(seed, record["id"], ref["id"]), ref["id"]),
            )
            item["references"] = candidates[:MAX_REFERENCE_CANDIDATES]


class RMFRDPairMaker:
    """`PairMaker` for RMFRD: one photo -> a phase-1 pair, a real-mask row, or an error row whose
    status is the reason (e.g. `no_eyes`, `one_eye`, `no_face`, `no_reference`); never raises."""

    def __init__(self, cfg) -> None:  # cfg: PrepareConfig
        from unmask_core.faces.detect import build_detector

        self.cfg = cfg
        self.detector = build_detector(cfg.detector, "cpu")
        # Reference photos are shared by all masked photos of a person: align each once per worker.
        self._references: dict[str, np.ndarray | str] = {}

    def make(self, record: data.ImageRecord, split: str, item: dict | None = None) -> dict[str, Any]:
        row = empty_pairs_row(record, split)
        try:
            if record.masked:
                row.update(self._real_mask_row(record, (item or {}).get("references", [])))
            else:
                row.update(self._synthetic_pair_row(record))
        except RowError as exc:
            row.update(status=exc.status, error=exc.reason)
        except Exception as exc:  # a bug must not lose the row: record it, and the job exits non-zero
            row.update(status="internal_error", error=f"{type(exc).__name__}: {exc}")
        return row

    def _decode(self, uri: str) -> np.ndarray:
        return read_image(uri, self.cfg)

    def _align(self, image: np.ndarray) -> RMFRDAlignment:
        try:
            return rmfrd_align(image, size=self.cfg.image_size)
        except AlignmentError as exc:
            raise RowError(exc.reason, str(exc)) from exc

    def _synthetic_pair_row(self, record: data.ImageRecord) -> dict[str, Any]:
        alignment = self._align(self._decode(record.uri))
        # The mask is fitted to landmarks found on the eye-aligned face, as for the other corpora.
        faces = detect_faces(self.detector, alignment.aligned)
        if not faces:
            raise RowError("no_face", "no face detected in the eye-aligned image")
        columns = masked_pair_columns(
            alignment.aligned, faces[0].landmarks, faces[0].box, self.cfg, record.id
        )
        return {**columns, "eyes": _flat_eyes(alignment.eyes)}

    def _real_mask_row(self, record: data.ImageRecord, references: list[dict]) -> dict[str, Any]:
        alignment = self._align(self._decode(record.uri))
        failures = []
        for reference in references:
            aligned = self._aligned_reference(reference["uri"])
            if isinstance(aligned, np.ndarray):
                return {
                    "M": data.encode_png(alignment.aligned),
                    "T_ref": data.encode_png(aligned),
                    "mask_kind": REAL_MASK_KIND,
                    "eyes": _flat_eyes(alignment.eyes),
                }
            failures.append(aligned)
        if not references:
            raise RowError("no_reference", f"no unmasked photo of {record.identity!r}")
        raise RowError(
            "no_reference",
            f"none of the {len(references)} unmasked photos of {record.identity!r} aligns "
            f"({', '.join(sorted(set(failures)))})",
        )

    def _aligned_reference(self, uri: str) -> np.ndarray | str:
        """The eye-aligned reference photo, or the reason it cannot be one."""
        if uri not in self._references:
            if len(self._references) >= 256:
                self._references.clear()  # a shard's masked photos are few identities: bound memory
            try:
                self._references[uri] = self._align(self._decode(uri)).aligned
            except RowError as exc:
                self._references[uri] = exc.status
        return self._references[uri]


def _flat_eyes(eyes: np.ndarray) -> list[float]:
    return np.asarray(eyes, dtype=np.float32).reshape(4).tolist()
