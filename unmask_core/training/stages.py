"""The training stages, one `Stage` entry each: what a stage trains, what it starts from, what its step
reads and compares, and the rows it trains on. Everything that differs between stages reads it here
(the config's rules, the models a worker builds, the dataset, the decoded batch, the step, the target
caches); a new stage is one entry.

This module imports no torch and no Ray at the top (the config reads it); its dataset builders import
theirs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from unmask_core.data import REAL_MASK_KIND

# Where L_LR's target codes come from (eq. 8).
NO_LATENT_TARGET = ""  # no latent term: the config switches --latent-weight off
TEACHER_CODES = "f0(T)"  # the frozen f0 on T, at every step or cached with --cache-targets
T_HAT_CODES = "T-hat"  # codes found by latent optimisation, cached with the pairs (training/t_hat.py)


def _pairs_dataset(cfg, size: int, targets) -> Any:
    from unmask_core.training.batches import pairs_dataset

    return pairs_dataset(cfg, size, targets)


def _real_mask_dataset(cfg, size: int, targets) -> Any:
    from unmask_core.training.t_hat import real_stage_dataset

    return real_stage_dataset(cfg, size)


@dataclass(frozen=True)
class Stage:
    summary: str  # for --stage's help
    trains: str  # the model set's encoder it trains and writes back: 'baseline' (f0) or 'unmask' (f)
    starts_from: str  # the encoder of --models it starts from (with --init-from: that set's `trains`)
    source: str  # the batch image the encoder reads: U = g(f(source))
    target: str  # the image U is compared with by L_R and LPIPS
    identity: str  # the image whose ArcFace embedding is L_ID's target
    latent_target: str  # NO_LATENT_TARGET, TEACHER_CODES or T_HAT_CODES
    periorbital: bool  # L_R and LPIPS only on the periorbital region (from the rows' eye positions)
    mask_kind: str | None  # only rows of this mask kind train it; None: every usable pair
    dataset: Callable[[Any, int, Any], Any]  # (cfg, size, targets) -> Ray dataset of decoded batches

    @property
    def images(self) -> tuple[str, ...]:
        """The PNG columns a batch of this stage holds, decoded."""
        return tuple(dict.fromkeys((self.source, self.target, self.identity)))

    def needs_teacher_codes(self, cfg) -> bool:
        """Whether L_LR's target is f0(T) (computed by a frozen teacher, or cached)."""
        return self.latent_target == TEACHER_CODES and bool(cfg.latent_weight)

    def needs_target_embedding(self, cfg) -> bool:
        """Whether L_ID's target is ArcFace(T) (computed at each step, or cached)."""
        return self.identity == "T" and bool(cfg.id_weight)


STAGES: dict[str, Stage] = {
    # eq. 4: f0 learns to invert unmasked faces T.
    "baseline": Stage(
        summary="f0 on T (eq. 4)",
        trains="baseline",
        starts_from="baseline",
        source="T",
        target="T",
        identity="T",
        latent_target=NO_LATENT_TARGET,
        periorbital=False,
        mask_kind=None,
        dataset=_pairs_dataset,
    ),
    # eq. 9: f, initialised from f0 (METHOD: "initialised from f0"), maps M to T's codes.
    "unmask": Stage(
        summary="f on (T, M) (eq. 9)",
        trains="unmask",
        starts_from="baseline",
        source="M",
        target="T",
        identity="T",
        latent_target=TEACHER_CODES,
        periorbital=False,
        mask_kind=None,
        dataset=_pairs_dataset,
    ),
    # METHOD.md "Training" 4, phase 2: real masks have no pixel-aligned T; L_R and LPIPS on M's
    # periorbital region, identity from another unmasked photo of the person, L_LR towards T-hat.
    "real": Stage(
        summary="RMFRD fine-tune of f on real masks",
        trains="unmask",
        starts_from="unmask",
        source="M",
        target="M",
        identity="T_ref",
        latent_target=T_HAT_CODES,
        periorbital=True,
        mask_kind=REAL_MASK_KIND,
        dataset=_real_mask_dataset,
    ),
}
