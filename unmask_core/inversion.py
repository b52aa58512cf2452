"""T̂ for the real-mask fine-tune: an unmasked face from g whose periorbital region matches M.

Found by optimising W+ codes with g frozen (METHOD, RMFRD phase 2): start from f0(M) (or latent_avg),
minimise the periorbital-weighted L2 between g(w) and M (optionally plus LPIPS) with Adam.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from unmask_core.losses import lpips_loss, reconstruction_loss


@dataclass
class InversionResult:
    codes: torch.Tensor  # [B, n_latent, style_dim], detached
    history: list[float]  # batch-mean loss per step, the first entry before any update


def optimise_latents(
    generator: nn.Module,
    masked: torch.Tensor,
    region: torch.Tensor,
    initial_codes: torch.Tensor,
    steps: int = 100,
    lr: float = 0.01,
    lpips_net: nn.Module | None = None,
    lpips_weight: float = 0.0,
) -> InversionResult:
    """masked: [B, 3, S, S] in [-1, 1]; region: [B, 1, S, S] periorbital weights; returns the codes
    whose image best matches M inside the region. The generator's weights are never updated."""
    generator.requires_grad_(False)
    codes = initial_codes.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([codes], lr=lr)
    history = []
    for step in range(steps + 1):
        image = generator(codes)
        per_image = torch.stack(
            [
                reconstruction_loss(masked[i : i + 1], image[i : i + 1], region[i : i + 1])
                for i in range(len(codes))
            ]
        )
        loss = per_image.sum()
        if lpips_net is not None and lpips_weight:
            loss = loss + lpips_weight * lpips_loss(lpips_net, masked, image, region) * len(codes)
        history.append(float(per_image.mean().detach()))
        if step == steps:
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return InversionResult(codes=codes.detach(), history=history)
