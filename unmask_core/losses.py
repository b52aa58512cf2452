"""The paper's losses (METHOD.md), one home for each term, with switches for the ablations.

    L0   = L_R(T, g(f0(T))) + α L_LPIPS + β L_ID                         (eq. 4, baseline f0)
    L_UM = L_R(T, g(f(M)))  + α L_LPIPS + β L_ID + γ L_LR(f0(T), f(M))    (eq. 9, unmasking f)

A term whose weight is 0 is not computed at all: it is absent from the reported terms and cannot
contribute a gradient. Optional per-pixel region weights restrict L_R and LPIPS to a region (the
periorbital fine-tune on real masks).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class LossWeights:
    l2: float = 1.0  # L_R, eq. 1/5 (pSp default 1.0)
    lpips: float = 0.8  # α, eq. 2/6 (pSp default 0.8)
    id: float = 0.1  # β, eq. 3/7 (pSp default 0.1)
    latent: float = 1.0  # γ, eq. 8: mean squared error between W+ codes


def reconstruction_loss(
    target: torch.Tensor, output: torch.Tensor, region: torch.Tensor | None = None
) -> torch.Tensor:
    """L_R (eq. 1/5): mean squared pixel error, or its region-weighted mean."""
    squared = (output - target).pow(2)
    if region is None:
        return squared.mean()
    weight = region.expand_as(squared)
    return (squared * weight).sum() / weight.sum().clamp_min(1e-8)


def lpips_loss(
    lpips_net: nn.Module, target: torch.Tensor, output: torch.Tensor, region: torch.Tensor | None = None
) -> torch.Tensor:
    """L_LPIPS (eq. 2/6), region-weighted through LPIPS' spatial distance map when a region is given."""
    if region is None:
        return lpips_net(output, target).mean()
    spatial = lpips_net(output, target)  # built with spatial=True: [B, 1, H, W]
    if spatial.shape[-2:] != region.shape[-2:]:
        region = F.interpolate(region, size=spatial.shape[-2:], mode="area")
    return (spatial * region).sum() / region.sum().clamp_min(1e-8)


def identity_loss(
    arcface: nn.Module,
    id_target: torch.Tensor,
    output: torch.Tensor,
    target_features: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_ID (eq. 3/7): 1 - <AF(T), AF(U)>, with AF the L2-normalised ArcFace embedding (IR-SE50).
    `target_features`: AF(T) computed beforehand (train --cache-targets), used instead of id_target."""
    from unmask_core.models.irse import id_preprocess

    if target_features is None:
        with torch.no_grad():
            target_features = arcface(id_preprocess(id_target, arcface.input_size))
    output_features = arcface(id_preprocess(output, arcface.input_size))
    return (1 - (target_features * output_features).sum(dim=1)).mean()


def latent_loss(target_codes: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """L_LR (eq. 8): distance between the frozen baseline's codes f0(T) and f(M), as mean squared error."""
    return (codes - target_codes.detach()).pow(2).mean()


class TrainingLoss(nn.Module):
    """The combined loss (eq. 4/9). Frozen helper networks are held here but never trained."""

    def __init__(self, weights: LossWeights, lpips_net: nn.Module | None, arcface: nn.Module | None) -> None:
        super().__init__()
        if weights.lpips and lpips_net is None:
            raise ValueError("an LPIPS network is needed when the LPIPS weight is non-zero")
        if weights.id and arcface is None:
            raise ValueError("an ArcFace network is needed when the ID weight is non-zero")
        self.weights = weights
        self.lpips_net = lpips_net
        self.arcface = arcface
        for module in (lpips_net, arcface):
            if module is not None:
                module.eval().requires_grad_(False)

    def forward(
        self,
        target: torch.Tensor,
        output: torch.Tensor,
        codes: torch.Tensor | None = None,
        target_codes: torch.Tensor | None = None,
        region: torch.Tensor | None = None,
        id_target: torch.Tensor | None = None,
        id_target_features: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """target, output: images in [-1, 1]; codes / target_codes: W+ codes of f(M) and f0(T);
        region: [B, 1, H, W] weights for L_R and LPIPS; id_target: the image whose identity U should
        carry (T itself unless the RMFRD fine-tune supplies another image of the same person);
        id_target_features: its ArcFace embedding, when cached (then id_target is not used).

        Returns the total and each term, detached but still tensors: reading a value on the host waits
        for the GPU, so the caller does it only when it reports."""
        w = self.weights
        terms: dict[str, torch.Tensor] = {}
        if w.l2:
            terms["l2"] = reconstruction_loss(target, output, region)
        if w.lpips:
            terms["lpips"] = lpips_loss(self.lpips_net, target, output, region)
        if w.id:
            id_image = target if id_target is None else id_target
            terms["id"] = identity_loss(self.arcface, id_image, output, id_target_features)
        if w.latent:
            if codes is None or target_codes is None:
                raise ValueError("the latent loss needs codes and target_codes")
            terms["latent"] = latent_loss(target_codes, codes)
        if not terms:
            raise ValueError("every loss term is switched off")
        scale = {"l2": w.l2, "lpips": w.lpips, "id": w.id, "latent": w.latent}
        total = sum(scale[name] * value for name, value in terms.items())
        return total, {name: value.detach() for name, value in terms.items()}
