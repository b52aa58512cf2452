"""Training batches: pairs rows -> what the encoder eats, streamed through Ray Data.

Images travel as uint8 [B, 3, H, W] (a quarter of float32's bytes through the object store and the
host-to-device copy); the training loop turns them into [-1, 1] floats on the device (`IMAGE_COLUMNS`).
Which columns a stage's batch holds is its entry in stages.py: stage `real`'s rows have no
pixel-aligned T; they bring T_ref (another unmasked photo of the person), the eye positions (for the
periorbital region) and the cached T-hat codes instead (training/t_hat.py).
This module imports no torch: Ray Data's decode workers start faster without it.
"""

from __future__ import annotations

import numpy as np

from unmask_core.data import decode_png
from unmask_core.training.stages import STAGES, T_HAT_CODES

# uint8 in a batch, normalised on the device: every image a stage reads (M, T, T_ref).
IMAGE_COLUMNS = tuple(dict.fromkeys(name for stage in STAGES.values() for name in stage.images))


def png_to_uint8(png: bytes, size: int) -> np.ndarray:
    """PNG bytes -> uint8 [3, size, size], resized with area averaging when needed (the same pixels as
    `data.png_to_tensor` before its scaling to [-1, 1])."""
    import cv2

    image = decode_png(png)
    if image.shape[0] != size:
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image.transpose(2, 0, 1))


def periorbital_regions(eyes: list, size: int) -> np.ndarray:
    """[N, 1, size, size] periorbital weights for eyes given in the aligned 256 px frame."""
    from unmask_core.periorbital import periorbital_weight

    scale = size / 256.0
    return np.stack(
        [periorbital_weight(np.asarray(e, np.float32).reshape(2, 2) * scale, size)[None] for e in eyes]
    ).astype(np.float32)


def decode_batch(batch: dict[str, np.ndarray], size: int, stage: str, targets=None) -> dict[str, np.ndarray]:
    """PNG columns of a pairs batch -> uint8 [B, 3, size, size] images, the ones stage `stage` reads
    (plus, where its entry says so, the periorbital region weights from the eye positions and the
    T-hat codes, float32). `targets` (a `targets.TargetsLookup`, with --cache-targets) adds the cached
    f0(T) and ArcFace(T) of the rows, found by their `id` and `path` columns."""
    spec = STAGES[stage]
    out = {name: np.stack([png_to_uint8(b, size) for b in batch[name]]) for name in spec.images}
    if targets is not None:
        out.update(targets.columns(batch["id"], batch["path"]))
    if spec.periorbital:
        out["region"] = periorbital_regions(list(batch["eyes"]), size)
    if spec.latent_target == T_HAT_CODES:
        out["target_codes"] = np.stack([np.asarray(c, np.float32) for c in batch["T_hat_codes"]])
    return out


def pairs_dataset(cfg, size: int, targets=None):
    """A stage's training pairs (status ok, split train) as a Ray Data dataset of decoded batches (with
    their cached targets when `targets` is given)."""
    import ray
    from ray.data.expressions import col

    from unmask_core import storage

    pairs_uri = storage.join(cfg.pairs, "pairs")
    storage.check_readable(pairs_uri)
    fs, path = storage.pyarrow_filesystem(pairs_uri)
    spec = cfg.spec
    columns = [*spec.images, "status", "split", *(["mask_kind"] if spec.mask_kind else [])]
    columns += ["id", "path"] if targets else []
    ds = ray.data.read_parquet(path, filesystem=fs, include_paths=targets is not None).select_columns(columns)
    usable = (col("status") == "ok") & (col("split") == "train")
    if spec.mask_kind:
        usable = usable & (col("mask_kind") == spec.mask_kind)
    ds = ds.filter(expr=usable)
    # decode_batch's module imports no torch: each Ray Data worker process starts faster. It emits
    # uint8 images; the training loop scales them on the device.
    return ds.map_batches(
        decode_batch, fn_kwargs={"size": size, "stage": cfg.stage, "targets": targets}, batch_format="numpy"
    )
