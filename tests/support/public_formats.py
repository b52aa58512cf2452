"""Write modules in the public checkpoint layouts that `unmask_core.models.public` reads, so that the
tests can round-trip them without downloading the released files."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from unmask_core.models.format import torch_save
from unmask_core.models.irse import Backbone
from unmask_core.models.psp import PSP
from unmask_core.models.stylegan2 import Generator


def save_rosinality_generator(generator: Generator, uri: str, latent_avg: Tensor | None = None) -> None:
    obj: dict[str, Any] = {"g_ema": generator.state_dict()}
    if latent_avg is not None:
        obj["latent_avg"] = latent_avg.detach().cpu()
    torch_save(obj, uri)


def save_psp(psp: PSP, uri: str, opts: dict[str, Any] | None = None) -> None:
    opts = dict(opts or {})
    opts.setdefault("output_size", psp.decoder.size)
    opts.setdefault("encoder_type", "GradualStyleEncoder")
    opts.setdefault("start_from_latent_avg", True)
    opts.setdefault("learn_in_w", False)
    torch_save(
        {"state_dict": psp.state_dict(), "opts": opts, "latent_avg": psp.latent_avg.detach().cpu()}, uri
    )


def save_irse50(backbone: Backbone, uri: str) -> None:
    torch_save(backbone.state_dict(), uri)


def save_facenet(model: nn.Module, uri: str) -> None:
    torch_save(model.state_dict(), uri)
