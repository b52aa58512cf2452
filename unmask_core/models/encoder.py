"""f0 / f: pSp's GradualStyleEncoder (Richardson et al. 2021), state-dict compatible with pSp.

An IR-SE body gives three feature maps: c1, c2, c3 at the ends of stages 2, 3 and 4 (input/4, /8,
/16 px). A small feature pyramid merges them (p2 = up(c3) + lat1(c2), p1 = up(p2) + lat2(c1)), and
one map2style head per W+ layer turns a map into a style vector: coarse styles [0, coarse_ind)
from c3, middle [coarse_ind, middle_ind) from p2, fine [middle_ind, n_styles) from p1. With pSp's
coarse_ind=3, middle_ind=7 this covers 10 styles (64 px generator), 14 (256 px) and 18 (1024 px).
The output does not include the generator's average latent; see psp.LatentEncoder for f(x).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unmask_core.models.irse import REFERENCE_WIDTHS, build_body, input_layer, stage_units
from unmask_core.models.stylegan2 import EqualLinear


@dataclass
class EncoderConfig:
    """Defaults are the reference: pSp `GradualStyleEncoder(50, 'ir_se')` for a 256 px generator."""

    input_size: int = 256
    n_styles: int = 14
    style_dim: int = 512
    num_layers: int = 50
    units: tuple[int, ...] | None = None  # overrides num_layers (tiny models)
    widths: tuple[int, ...] = field(default=REFERENCE_WIDTHS)
    mode: str = "ir_se"
    input_nc: int = 3
    coarse_ind: int = 3
    middle_ind: int = 7

    def __post_init__(self) -> None:
        self.widths = tuple(self.widths)
        self.units = tuple(self.units) if self.units is not None else None
        if len(self.widths) != 4 or len(self.stage_units) != 4:
            raise ValueError("the encoder's IR-SE body has exactly four stages")
        if self.input_size < 32 or 2 ** int(math.log2(self.input_size)) != self.input_size:
            raise ValueError(f"encoder input_size must be a power of two >= 32, got {self.input_size}")
        if not 0 < self.coarse_ind <= self.middle_ind <= self.n_styles:
            raise ValueError(f"need 0 < coarse_ind <= middle_ind <= n_styles, got {self}")

    @property
    def stage_units(self) -> tuple[int, ...]:
        return self.units if self.units is not None else stage_units(self.num_layers)


class GradualStyleBlock(nn.Module):
    """map2style: stride-2 3x3 convs (LeakyReLU 0.01) down to 1x1, then an EqualLinear."""

    def __init__(self, in_channels: int, out_channels: int, spatial: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        layers: list[nn.Module] = []
        for i in range(int(math.log2(spatial))):
            layers += [
                nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, 2, 1),
                nn.LeakyReLU(),
            ]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(out_channels, out_channels, lr_mul=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.convs(x).view(-1, self.out_channels))


def upsample_add(x: Tensor, y: Tensor) -> Tensor:
    return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True) + y


class GradualStyleEncoder(nn.Module):
    """image [B, input_nc, S, S] in [-1, 1] -> codes [B, n_styles, style_dim] (without latent_avg)."""

    def __init__(self, config: EncoderConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or EncoderConfig()
        self.n_styles, self.style_dim = config.n_styles, config.style_dim
        widths = config.widths
        self.input_layer = input_layer(config.input_nc, widths[0])
        self.body = build_body(config.stage_units, widths, se=config.mode == "ir_se")
        ends = [sum(config.stage_units[: i + 1]) - 1 for i in range(4)]
        self.taps = (ends[1], ends[2], ends[3])  # c1, c2, c3: body[6], body[20], body[23] for IR-SE50
        c3_size = config.input_size // 16
        self.styles = nn.ModuleList()
        for i in range(config.n_styles):
            spatial = (
                c3_size if i < config.coarse_ind else 2 * c3_size if i < config.middle_ind else 4 * c3_size
            )
            self.styles.append(GradualStyleBlock(widths[3], config.style_dim, spatial))
        self.latlayer1 = nn.Conv2d(widths[2], widths[3], 1)
        self.latlayer2 = nn.Conv2d(widths[1], widths[3], 1)

    def features(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(c1, c2, c3): the body's outputs at the ends of stages 2, 3 and 4."""
        x = self.input_layer(x)
        taps = []
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i in self.taps:
                taps.append(x)
            if i == self.taps[-1]:
                break
        return taps[0], taps[1], taps[2]

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (self.config.input_size, self.config.input_size):
            raise ValueError(f"encoder expects {self.config.input_size} px inputs, got {list(x.shape)}")
        c1, c2, c3 = self.features(x)
        p2 = upsample_add(c3, self.latlayer1(c2))
        p1 = upsample_add(p2, self.latlayer2(c1))
        coarse, middle = self.config.coarse_ind, self.config.middle_ind
        latents = [head(c3) for head in self.styles[:coarse]]
        latents += [head(p2) for head in self.styles[coarse:middle]]
        latents += [head(p1) for head in self.styles[middle:]]
        return torch.stack(latents, dim=1)
