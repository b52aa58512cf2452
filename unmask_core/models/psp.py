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
from unmask_core.models.runtime import to_channels_last
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
        # Type promotion keeps latent_avg's fp32 precision when the encoder ran in bf16.
        return self.encoder(x) + self.latent_avg


def pool_to(image: Tensor, size: int) -> Tensor:
    """g's output at the working size, average-pooled as pSp does (a 1024 px g trains on 256 px faces)."""
    if image.shape[-1] != size:
        image = F.adaptive_avg_pool2d(image, (size, size))
    return image


def _autocast(enabled: bool, device_type: str) -> contextlib.AbstractContextManager:
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)


class PSP(nn.Module):
    """U = g(f(x)), the one g∘f module: pSp's encoder + latent_avg + generator (`decoder`, pSp's name
    and key prefix), used wherever f and g run together (inference, evaluation, training's decode).

    `encode(x)` -> codes [B, n_styles, style_dim] (fp32, latent_avg included); `decode(codes, size)` ->
    image (fp32) pooled to `size` (default `output_size`) as pSp pools; `forward(x)` ->
    decode(encode(x)). fp32 is the reference path. `bf16=True` runs both networks under bfloat16
    autocast (weights may be cast once beforehand: runtime.prepare_for_inference); `channels_last=True`
    makes the weights of both networks and the input NHWC, which cuDNN prefers.
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
            to_channels_last(self)

    @classmethod
    def compose(
        cls,
        f: LatentEncoder,
        g: Generator,
        output_size: int = 256,
        bf16: bool = False,
        channels_last: bool = False,
    ) -> PSP:
        """g∘f from f (a LatentEncoder, which carries latent_avg) and g; shares their modules."""
        return cls(f.encoder, g, f.latent_avg, output_size, bf16, channels_last)

    def encode(self, x: Tensor) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(self.bf16, x.device.type):
            codes = self.encoder(x)
        return codes.float() + self.latent_avg

    def decode(self, codes: Tensor, size: int | None = None) -> Tensor:
        with _autocast(self.bf16, codes.device.type):
            image = self.decoder(codes)
        return pool_to(image.float(), size or self.output_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))
