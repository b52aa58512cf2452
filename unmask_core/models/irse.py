"""IR-SE backbone (ArcFace's improved residual units with squeeze-and-excitation).

State dicts use the layout of TreB1eN's / pSp's `Backbone(input_size, num_layers, mode='ir_se')`:
`input_layer.*`, `output_layer.*`, `body.<unit>.res_layer.*` / `body.<unit>.shortcut_layer.*`, so
`model_ir_se50.pth` loads strictly. The same body is the pSp encoder's feature extractor
(encoder.py). Widths and units per stage are configurable so that tiny models exist for CPU tests;
the defaults are the reference IR-SE50 at 112 px.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

UNITS_BY_DEPTH = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}
REFERENCE_WIDTHS = (64, 128, 256, 512)


def stage_units(num_layers: int) -> tuple[int, ...]:
    if num_layers not in UNITS_BY_DEPTH:
        raise ValueError(f"IR-SE depth must be one of {sorted(UNITS_BY_DEPTH)}, got {num_layers}")
    return UNITS_BY_DEPTH[num_layers]


class SEModule(nn.Module):
    """Squeeze-and-excitation: rescale channels by a gate computed from their global average."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, max(1, channels // reduction), 1, bias=False)
        self.fc2 = nn.Conv2d(max(1, channels // reduction), channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate = F.adaptive_avg_pool2d(x, 1)
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(gate))))
        return x * gate


class Subsample(nn.Module):
    """Identity shortcut with a stride (pSp's MaxPool2d(1, stride)): no weights."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        return x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x


class BottleneckIR(nn.Module):
    """BN-conv-PReLU-conv(stride)-BN[-SE] plus a shortcut (projected when the width changes)."""

    def __init__(self, in_channels: int, depth: int, stride: int, se: bool = True) -> None:
        super().__init__()
        if in_channels == depth:
            self.shortcut_layer: nn.Module = Subsample(stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, depth, 1, stride, bias=False), nn.BatchNorm2d(depth)
            )
        layers: list[nn.Module] = [
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        ]
        if se:
            layers.append(SEModule(depth))
        self.res_layer = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


def build_body(units: tuple[int, ...], widths: tuple[int, ...], se: bool) -> nn.Sequential:
    """Stages of units; the first unit of each stage halves the resolution."""
    modules: list[nn.Module] = []
    in_channels = widths[0]
    for count, depth in zip(units, widths):
        for i in range(count):
            modules.append(BottleneckIR(in_channels, depth, 2 if i == 0 else 1, se=se))
            in_channels = depth
    return nn.Sequential(*modules)


def input_layer(in_channels: int, width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.PReLU(width)
    )


@dataclass
class BackboneConfig:
    """Defaults are the reference: pSp's `Backbone(112, 50, mode='ir_se', drop_ratio=0.6, affine=True)`."""

    input_size: int = 112
    num_layers: int = 50
    units: tuple[int, ...] | None = None  # overrides num_layers (tiny models)
    widths: tuple[int, ...] = field(default=REFERENCE_WIDTHS)
    mode: str = "ir_se"
    drop_ratio: float = 0.6
    affine: bool = True
    embedding_dim: int = 512

    def __post_init__(self) -> None:
        self.widths = tuple(self.widths)
        self.units = tuple(self.units) if self.units is not None else None
        if self.mode not in ("ir", "ir_se"):
            raise ValueError(f"mode must be 'ir' or 'ir_se', got {self.mode!r}")
        if len(self.stage_units) != len(self.widths):
            raise ValueError(f"units {self.stage_units} and widths {self.widths} differ in length")
        if self.input_size % 16:
            raise ValueError(f"input_size must be a multiple of 16, got {self.input_size}")

    @property
    def stage_units(self) -> tuple[int, ...]:
        return self.units if self.units is not None else stage_units(self.num_layers)


class Backbone(nn.Module):
    """Face embedding network: image [B, 3, S, S] in [-1, 1] RGB -> L2-normalised [B, embedding_dim]."""

    def __init__(self, config: BackboneConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or BackboneConfig()
        self.input_size = config.input_size
        self.input_layer = input_layer(3, config.widths[0])
        spatial = config.input_size // 16  # four stride-2 stages
        width = config.widths[-1]
        # Registered before the body so the state dict order matches pSp's (input, output, body).
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(width),
            nn.Dropout(config.drop_ratio),
            nn.Flatten(),
            nn.Linear(width * spatial * spatial, config.embedding_dim),
            nn.BatchNorm1d(config.embedding_dim, affine=config.affine),
        )
        self.body = build_body(config.stage_units, config.widths, se=config.mode == "ir_se")

    def forward(self, x: Tensor) -> Tensor:
        x = self.output_layer(self.body(self.input_layer(x)))
        return x / torch.norm(x, 2, 1, keepdim=True)  # no eps, as the reference's l2_norm


# pSp's IDLoss crop for 256 px FFHQ-aligned faces: rows 35:223, cols 32:220 (a 188x188 box).
ID_CROP_256 = (35, 223, 32, 220)


def id_preprocess(x: Tensor, input_size: int = 112) -> Tensor:
    """The ID-loss face crop: [B, 3, H, H] -> [B, 3, input_size, input_size] for the ArcFace backbone.

    At 256 px exactly pSp's crop (rows 35:223, cols 32:220) and AdaptiveAvgPool2d; other sizes use
    the same box scaled by H/256.
    """
    height = x.shape[-2]
    top, bottom, left, right = (round(v * height / 256) for v in ID_CROP_256)
    return F.adaptive_avg_pool2d(x[:, :, top:bottom, left:right], (input_size, input_size))
