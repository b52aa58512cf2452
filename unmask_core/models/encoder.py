"""f0 / f: pSp's GradualStyleEncoder (Richardson et al. 2021), state-dict compatible with pSp.

An IR-SE body gives three feature maps: c1, c2, c3 at the ends of stages 2, 3 and 4 (input/4, /8,
/16 px). A small feature pyramid merges them (p2 = up(c3) + lat1(c2), p1 = up(p2) + lat2(c1)), and
one map2style head per W+ layer turns a map into a style vector: coarse styles [0, coarse_ind)
from c3, middle [coarse_ind, middle_ind) from p2, fine [middle_ind, n_styles) from p1. With pSp's
coarse_ind=3, middle_ind=7 this covers 10 styles (64 px generator), 14 (256 px) and 18 (1024 px).
The heads of one pyramid level run together (`StyleHeads`: grouped convolutions, one call per
layer and level) and still load and save pSp's per-head keys `styles.<i>.convs.*`, `styles.<i>.linear.*`.
The output does not include the generator's average latent; see psp.LatentEncoder for f(x).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unmask_core.accelerator import cuda_state
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
    """map2style for one style, as pSp defines it: stride-2 3x3 convs (LeakyReLU 0.01) down to 1x1,
    then an EqualLinear. Its keys are a head's checkpoint layout; `StyleHeads` runs the heads together."""

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


@dataclass(frozen=True)
class HeadLevel:
    """The heads that read pyramid map `source`: styles [first, first + count), each `depth` convs deep."""

    name: str
    source: int
    first: int
    count: int
    depth: int


class StyleHeads(nn.Module):
    """Every map2style head, batched per pyramid level: the first conv of a level is one convolution
    with count x out channels, the next ones are grouped (one group per head), and the EqualLinears
    run as one batched matmul. Parameters are stored stacked per level (`<level>_conv<j>_weight`,
    `<level>_linear_weight` ...); state dicts hold pSp's per-head keys, converted on save and load.
    """

    def __init__(self, in_channels: int, out_channels: int, levels: list[tuple[str, int, int]]) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.linear_scale = 1 / math.sqrt(out_channels)  # EqualLinear with lr_mul 1
        self.levels: list[HeadLevel] = []
        first = 0
        for source, (name, count, spatial) in enumerate(levels):
            level = HeadLevel(name, source, first, count, int(math.log2(spatial)))
            first += count
            if count == 0:
                continue
            self.levels.append(level)
            # pSp's per-head modules give the initialisation (same values, in the same order).
            heads = [GradualStyleBlock(in_channels, out_channels, spatial) for _ in range(count)]
            for key, _ in heads[0].named_parameters():
                stacked = self._stack(key, [head.get_parameter(key).detach() for head in heads])
                self.register_parameter(self._name(level, key), nn.Parameter(stacked))

    @staticmethod
    def _stack(head_key: str, values: list[Tensor]) -> Tensor:
        """Per-head tensors -> the stored one: convs [count * out, ...], linears [count, ...]."""
        stacked = torch.stack(values)
        return stacked.flatten(0, 1) if head_key.startswith("convs.") else stacked

    @staticmethod
    def _per_head(level: HeadLevel, head_key: str, stored: Tensor) -> Tensor:
        """The stored tensor -> [count, <one head's shape>] (views, no copy)."""
        return stored.unflatten(0, (level.count, -1)) if head_key.startswith("convs.") else stored

    @staticmethod
    def _name(level: HeadLevel, head_key: str) -> str:
        """'convs.2.weight' -> '<level>_conv1_weight'; 'linear.bias' -> '<level>_linear_bias'."""
        module, *index, kind = head_key.split(".")
        if module == "convs":
            return f"{level.name}_conv{int(index[0]) // 2}_{kind}"
        return f"{level.name}_{module}_{kind}"

    def _head_keys(self, level: HeadLevel) -> list[str]:
        convs = [f"convs.{2 * j}.{kind}" for j in range(level.depth) for kind in ("weight", "bias")]
        return [*convs, "linear.weight", "linear.bias"]

    def forward(self, maps: tuple[Tensor, ...]) -> Tensor:
        """maps (one per level, in the constructor's order) -> styles [B, n_styles, out_channels]: the
        heads batched per level in the CUDA state (a dozen kernels instead of about sixty), one after
        another elsewhere (pSp's order, on views of the same weights), which a CPU runs faster
        (BENCHMARKS.md, model forms). Both compute the same function."""
        return self.batched(maps) if cuda_state(maps[0].device) else self.per_head(maps)

    def per_head(self, maps: tuple[Tensor, ...]) -> Tensor:
        """pSp's order: each head's convolutions and EqualLinear on its own."""
        styles = []
        for level in self.levels:
            weights = [
                (getattr(self, f"{level.name}_conv{j}_weight"), getattr(self, f"{level.name}_conv{j}_bias"))
                for j in range(level.depth)
            ]
            linear_weight = getattr(self, f"{level.name}_linear_weight")
            linear_bias = getattr(self, f"{level.name}_linear_bias")
            out = self.out_channels
            for h in range(level.count):
                x = maps[level.source]
                for weight, bias in weights:
                    head = slice(h * out, (h + 1) * out)
                    x = F.leaky_relu(F.conv2d(x, weight[head], bias[head], stride=2, padding=1), 0.01)
                x = x.reshape(x.shape[0], out)
                y = F.linear(x, linear_weight[h] * self.linear_scale)
                styles.append(y + linear_bias[h].to(y.dtype))
        return torch.stack(styles, dim=1)

    def batched(self, maps: tuple[Tensor, ...]) -> Tensor:
        """Every head of a level at once: grouped convolutions and one batched matmul."""
        styles = []
        for level in self.levels:
            x = maps[level.source]
            for j in range(level.depth):
                weight = getattr(self, f"{level.name}_conv{j}_weight")
                bias = getattr(self, f"{level.name}_conv{j}_bias")
                x = F.conv2d(x, weight, bias, stride=2, padding=1, groups=1 if j == 0 else level.count)
                x = F.leaky_relu(x, 0.01)
            x = x.reshape(x.shape[0], level.count, self.out_channels)
            weight = getattr(self, f"{level.name}_linear_weight")  # [count, out, out]
            bias = getattr(self, f"{level.name}_linear_bias")
            out = torch.einsum("bhc,hoc->bho", x, weight) * self.linear_scale
            styles.append(out + bias.to(out.dtype))
        return torch.cat(styles, dim=1)

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        for level in self.levels:
            for key in self._head_keys(level):
                value = getattr(self, self._name(level, key))
                per_head = self._per_head(level, key, value if keep_vars else value.detach())
                for h in range(level.count):
                    destination[f"{prefix}{level.first + h}.{key}"] = per_head[h]

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        stacked, used = {}, set()
        for level in self.levels:
            for key in self._head_keys(level):
                name = self._name(level, key)
                keys = [f"{prefix}{level.first + h}.{key}" for h in range(level.count)]
                absent = [k for k in keys if k not in state_dict]
                missing_keys.extend(absent)
                expected = self._per_head(level, key, getattr(self, name)).shape[1:]
                wrong = [k for k in keys if k in state_dict and state_dict[k].shape != expected]
                error_msgs.extend(
                    f"size mismatch for {k}: copying a param with shape {tuple(state_dict[k].shape)}, "
                    f"the shape in current model is {tuple(expected)}."
                    for k in wrong
                )
                used.update(keys)
                if not absent and not wrong:
                    stacked[prefix + name] = self._stack(key, [state_dict[k] for k in keys])
        if strict:
            unexpected_keys.extend(k for k in state_dict if k.startswith(prefix) and k not in used)
        # Stored names left out of `stacked` are already reported under their per-head keys.
        args = (local_metadata, strict, [], unexpected_keys, error_msgs)
        super()._load_from_state_dict(stacked, prefix, *args)


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
        coarse, middle = config.coarse_ind, config.middle_ind
        levels = [
            ("coarse", coarse, c3_size),
            ("middle", middle - coarse, 2 * c3_size),
            ("fine", config.n_styles - middle, 4 * c3_size),
        ]
        self.styles = StyleHeads(widths[3], config.style_dim, levels)
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
        return self.styles((c3, p2, p1))
