"""Training batches: pairs rows -> what the encoder eats, streamed through Ray Data.

Stage `real` rows have no pixel-aligned T: they bring T_ref (another unmasked photo of the person),
the eye positions (for the periorbital region) and the cached T-hat codes instead (training/t_hat.py).
This module imports no torch: Ray Data's decode workers start faster without it.
"""

from __future__ import annotations

import numpy as np

from unmask_core.data import png_to_tensor


def periorbital_regions(eyes: list, size: int) -> np.ndarray:
    """[N, 1, size, size] periorbital weights for eyes given in the aligned 256 px frame."""
    from unmask_core.periorbital import periorbital_weight

    scale = size / 256.0
    return np.stack(
        [periorbital_weight(np.asarray(e, np.float32).reshape(2, 2) * scale, size)[None] for e in eyes]
    ).astype(np.float32)


def decode_batch(batch: dict[str, np.ndarray], size: int, stage: str) -> dict[str, np.ndarray]:
    """PNG columns of a pairs batch -> float32 [B, 3, size, size] in [-1, 1] (what the encoder eats)."""
    out = {"M": np.stack([png_to_tensor(b, size) for b in batch["M"]])}
    if stage != "real":
        out["T"] = np.stack([png_to_tensor(b, size) for b in batch["T"]])
    else:
        out["T_ref"] = np.stack([png_to_tensor(b, size) for b in batch["T_ref"]])
        out["region"] = periorbital_regions(list(batch["eyes"]), size)
        out["target_codes"] = np.stack([np.asarray(c, np.float32) for c in batch["T_hat_codes"]])
    return out
