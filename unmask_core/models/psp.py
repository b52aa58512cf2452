"""The inversion model U = g(f(M)) as pSp composes it (`start_from_latent_avg=True`, W+ codes).

`latent_avg` (the generator's average w, one row per style) is a fixed buffer, not a weight: like
pSp we keep it beside the state dict, so `LatentEncoder.state_dict()` has exactly the keys of a pSp
checkpoint's `encoder.*` part and `PSP.state_dict()` those of its whole `state_dict`.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unmask_core.models.encoder import EncoderConfig, GradualStyleEncoder
from unmask_core.models.stylegan2 import Generator


def as_plus(latent_avg: Tensor, n_styles: int) -> Tensor:
    """latent_avg as [n_styles, style_dim]; pSp keeps one w ([style_dim], [1, style_dim]) or n_styles rows."""
    latent_avg = latent_avg.detach().float()
    if latent_avg.ndim == 1 or latent_avg.shape[0] == 1:
        return latent_avg.reshape(1, -1).repeat(n_styles, 1)
    if latent_avg.ndim != 2 or latent_avg.shape[0] != n_styles:
        raise ValueError(f"latent_avg of shape {list(latent_avg.shape)} does not fit {n_styles} styles")
    return latent_avg.clone()


class LatentEncoder(nn.Module):
    """f0 or f as the paper uses them: image -> W+ codes = GradualStyleEncoder(x) + latent_avg."""

    def __init__(self, encoder: GradualStyleEncoder, latent_avg: Tensor) -> None:
        super().__init__()
        self.encoder = encoder
        self.register_buffer("latent_avg", as_plus(latent_avg, encoder.n_styles), persistent=False)

    @property
    def config(self) -> EncoderConfig:
        return self.encoder.config

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(x) + self.latent_avg.to(x.dtype)


def _autocast(enabled: bool, device_type: str) -> contextlib.AbstractContextManager:
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)


class PSP(nn.Module):
    """pSp: encoder + latent_avg + generator (`decoder`, pSp's name and key prefix).

    `encode(x)` -> codes [B, n_styles, style_dim]; `decode(codes)` -> image pooled to `output_size`;
    `forward(x)` -> decode(encode(x)). fp32 is the reference path. For inference, `bf16=True` runs
    both networks under bfloat16 autocast (outputs are returned as float32) and `channels_last=True`
    keeps the encoder's activations in NHWC, which cuDNN prefers; the generator's per-image grouped
    convolutions gain nothing from NHWC and stay NCHW.
    """

    def __init__(
        self,
        encoder: GradualStyleEncoder,
        decoder: Generator,
        latent_avg: Tensor,
        output_size: int = 256,
        bf16: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if encoder.n_styles != decoder.n_latent or encoder.style_dim != decoder.style_dim:
            raise ValueError(
                f"encoder makes [{encoder.n_styles}, {encoder.style_dim}] codes, "
                f"generator takes [{decoder.n_latent}, {decoder.style_dim}]"
            )
        self.encoder = encoder
        self.decoder = decoder
        self.register_buffer("latent_avg", as_plus(latent_avg, encoder.n_styles), persistent=False)
        self.output_size = output_size
        self.bf16 = bf16
        self.channels_last = channels_last
        if channels_last:
            self.encoder.to(memory_format=torch.channels_last)

    def encode(self, x: Tensor) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(self.bf16, x.device.type):
            codes = self.encoder(x)
        return codes.float() + self.latent_avg

    def decode(self, codes: Tensor) -> Tensor:
        with _autocast(self.bf16, codes.device.type):
            image = self.decoder(codes)
        image = image.float()
        if image.shape[-1] != self.output_size:
            image = F.adaptive_avg_pool2d(image, (self.output_size, self.output_size))
        return image

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))
