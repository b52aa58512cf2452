"""g: the StyleGAN2 generator (Karras et al. 2020), state-dict compatible with rosinality's port.

Keys and shapes equal rosinality's `model.py: Generator` (`style.*`, `input.input`, `conv1`, `to_rgb1`,
`convs.*`, `to_rgbs.*`, `noises.noise_i`, blur `kernel` buffers), so its `g_ema` weights load strictly.
Everything is plain PyTorch. The modulated convolutions run in their shared-weight form: the input
is scaled by the style, one ordinary convolution with the shared weight serves the whole batch, and
the output is demodulated; the per-sample form of the paper (`modulated_conv2d_per_sample`) is the
same maths and is kept as the reference the tests compare against. The skip path's upsample + blur
(upfirdn2d with up=2) is a single depthwise transposed convolution. The blur after the upsampling
modulated convolution stays a separate depthwise convolution: folding it into the transposed
convolution would give a 6x6 kernel and four times the multiply-adds of the 3x3 one.

Precision under bf16 autocast: activations stay in the compute dtype from layer to layer (noise,
noise weight and biases are cast to it). Three things stay in fp32, where rounding would matter:
the styles and demodulation coefficients (`ModulatedConv2d.coefficients`), and the RGB skip path
(ToRGB's output and its upsampling FIR), which accumulates the image over every resolution and is
only 3 channels wide. The blur after the upsampling convolution runs in the compute dtype: its taps
(1, 3, 3, 1) x (1, 3, 3, 1) / 16 are exact in bf16.

The generator is always driven by W+ codes and the fixed noise buffers (rosinality's
`input_is_latent=True, randomize_noise=False`): `g(w_plus) -> image`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BLUR_KERNEL = (1.0, 3.0, 3.0, 1.0)


@dataclass
class GeneratorConfig:
    """Defaults are the reference: rosinality `Generator(size, 512, 8, channel_multiplier=2)`."""

    size: int = 256
    style_dim: int = 512
    n_mlp: int = 8
    channel_multiplier: float = 2
    max_channels: int = 512  # smaller values give narrow models for CPU tests
    lr_mlp: float = 0.01

    def channels(self, resolution: int) -> int:
        # rosinality's table: 512 up to 32 px, then 256*cm at 64, 128*cm at 128, ... = 16384*cm/res.
        return int(min(self.max_channels, 16384 * self.channel_multiplier // resolution))

    @property
    def log_size(self) -> int:
        return int(math.log2(self.size))

    @property
    def n_latent(self) -> int:
        return 2 * self.log_size - 2

    def __post_init__(self) -> None:
        if self.size < 8 or 2**self.log_size != self.size:
            raise ValueError(f"generator size must be a power of two >= 8, got {self.size}")


def make_blur_kernel(taps: tuple[float, ...] = BLUR_KERNEL) -> Tensor:
    """Separable 2-D FIR kernel normalised to sum 1 (rosinality's `make_kernel`). Always computed on the
    CPU: a build on the meta device would otherwise run these ops through torch's reference
    implementations, whose first use imports torch's compiler stack (seconds)."""
    k = torch.tensor(taps, dtype=torch.float32, device="cpu")
    k = k[None, :] * k[:, None]
    return k / k.sum()


def fir_filter(x: Tensor, kernel: Tensor, pad: tuple[int, int]) -> Tensor:
    """upfirdn2d with up=down=1: pad by (pad0, pad1) on both axes, then convolve with `kernel`.

    True convolution (the kernel is flipped), as upfirdn2d does; done depthwise in one conv2d.
    """
    channels = x.shape[1]
    weight = torch.flip(kernel, (0, 1)).to(x.dtype).expand(channels, 1, *kernel.shape)
    if pad[0] == pad[1]:
        return F.conv2d(x, weight, padding=pad[0], groups=channels)
    return F.conv2d(F.pad(x, (pad[0], pad[1], pad[0], pad[1])), weight, groups=channels)


def upsample_fir(x: Tensor, kernel: Tensor, factor: int = 2) -> Tensor:
    """upfirdn2d(up=factor, pad=(p0, p1)) as rosinality's `Upsample` sets it, in one transposed conv.

    Zero-insertion, padding by (p0, p1) = ((K-f+1)//2 + f-1, (K-f)//2) and a true convolution with K
    taps equal a stride-f transposed convolution with the unflipped kernel and padding K-1-p0.
    """
    channels, taps = x.shape[1], kernel.shape[0]
    pad0 = (taps - factor + 1) // 2 + factor - 1
    weight = kernel.to(x.dtype).expand(channels, 1, *kernel.shape)
    return F.conv_transpose2d(x, weight, stride=factor, padding=taps - 1 - pad0, groups=channels)


class PixelNorm(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(torch.mean(x * x, dim=1, keepdim=True) + 1e-8)


def scaled_leaky_relu(x: Tensor) -> Tensor:
    """StyleGAN2's activation: leaky ReLU (0.2) with gain sqrt(2) to keep unit variance."""
    return F.leaky_relu(x, 0.2) * math.sqrt(2)


class EqualLinear(nn.Module):
    """Linear layer with the equalised learning rate: weights stored as N(0,1)/lr_mul, scaled at run time."""

    def __init__(
        self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0, activation: bool = False
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        if self.activation:
            return scaled_leaky_relu(F.linear(x, self.weight * self.scale) + self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class MappingNetwork(nn.Sequential):
    """z -> w: PixelNorm then n_mlp EqualLinear layers (lr_mul 0.01). Index 0 has no weights,
    so the keys are `style.1` ... `style.<n_mlp>` as in rosinality."""

    def __init__(self, style_dim: int, n_mlp: int, lr_mul: float) -> None:
        layers: list[nn.Module] = [PixelNorm()]
        layers += [EqualLinear(style_dim, style_dim, lr_mul=lr_mul, activation=True) for _ in range(n_mlp)]
        super().__init__(*layers)


class Blur(nn.Module):
    def __init__(self, pad: tuple[int, int], upsample_factor: int = 1) -> None:
        super().__init__()
        # rosinality multiplies by factor^2 when the blur follows a zero-inserting upsample.
        self.register_buffer("kernel", make_blur_kernel() * upsample_factor**2)
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return fir_filter(x, self.kernel, self.pad)


class Upsample(nn.Module):
    def __init__(self, factor: int = 2) -> None:
        super().__init__()
        self.register_buffer("kernel", make_blur_kernel() * factor**2)
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return upsample_fir(x, self.kernel, self.factor)


def _fp32(device_type: str) -> torch.autocast:
    """A region that autocast leaves in fp32 (whatever the caller's autocast state)."""
    return torch.autocast(device_type=device_type, enabled=False)


class ModulatedConv2d(nn.Module):
    """Convolution whose weights are scaled per input channel by the style, then demodulated.

    Shared-weight form: conv(x * s, W) * d with d[b, o] = rsqrt(sum_i s[b, i]^2 sum_k W[o, i, k]^2 + eps),
    which equals the per-sample form conv(x, W * s * d) (the equalised-lr `scale` is folded into s).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        style_dim: int,
        demodulate: bool = True,
        upsample: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.demodulate, self.upsample = demodulate, upsample
        if upsample:
            # Transposed 3x3 conv (stride 2) grows HxW to 2H+1; the 4-tap blur with pad (1, 1) trims to 2H.
            factor, taps = 2, len(BLUR_KERNEL)
            p = (taps - factor) - (kernel_size - 1)
            self.blur = Blur(pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)
        self.scale = 1 / math.sqrt(in_channels * kernel_size**2)
        self.padding = kernel_size // 2
        # [1, out, in, k, k] as in rosinality; weight[0] is the shared 4-D convolution weight.
        self.weight = nn.Parameter(torch.randn(1, out_channels, in_channels, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channels, bias_init=1)

    def coefficients(self, style: Tensor) -> tuple[Tensor, Tensor | None]:
        """Styles s [B, in] (times the equalised-lr scale) and demodulation d [B, out] or None, in fp32
        (or the style's dtype when wider)."""
        dtype = torch.promote_types(style.dtype, torch.float32)
        with _fp32(style.device.type):
            modulation = self.modulation
            s = F.linear(style.to(dtype), modulation.weight.to(dtype)) * modulation.scale
            s = (s + modulation.bias.to(dtype) * modulation.lr_mul) * self.scale
            if not self.demodulate:
                return s, None
            weight_energy = self.weight[0].to(dtype).pow(2).sum((2, 3))  # [out, in], once per batch
            return s, torch.rsqrt(s.pow(2) @ weight_energy.t() + 1e-8)

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        s, demod = self.coefficients(style)
        x = x * s.to(x.dtype)[:, :, None, None]
        weight = self.weight[0]
        if self.upsample:
            # A contiguous [in, out, k, k] copy (once per batch): CPU transposed convs are slow on the view.
            out = F.conv_transpose2d(x, weight.transpose(0, 1).contiguous(), stride=2)
        else:
            out = F.conv2d(x, weight, padding=self.padding)
        if demod is not None:
            out = out * demod.to(out.dtype)[:, :, None, None]
        return self.blur(out) if self.upsample else out


def modulated_conv2d_per_sample(conv: ModulatedConv2d, x: Tensor, style: Tensor) -> Tensor:
    """The paper's per-sample form of `conv(x, style)`: the reference for tests and benchmarks.

    Every image gets its own modulated (and demodulated) weight tensor, and one grouped convolution
    (one group per image) applies them all. Same maths as ModulatedConv2d.forward, with B copies
    of the weights in memory.
    """
    batch, _, height, width = x.shape
    style = conv.modulation(style).view(batch, 1, conv.in_channels, 1, 1)
    weight = conv.scale * conv.weight * style  # [B, out, in, k, k]
    if conv.demodulate:
        demod = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8)
        weight = weight * demod.view(batch, conv.out_channels, 1, 1, 1)
    x = x.reshape(1, batch * conv.in_channels, height, width)
    k = conv.kernel_size
    if conv.upsample:
        weight = weight.transpose(1, 2).reshape(batch * conv.in_channels, conv.out_channels, k, k)
        out = F.conv_transpose2d(x, weight, stride=2, padding=0, groups=batch)
        return conv.blur(out.view(batch, conv.out_channels, out.shape[-2], out.shape[-1]))
    weight = weight.reshape(batch * conv.out_channels, conv.in_channels, k, k)
    out = F.conv2d(x, weight, padding=conv.padding, groups=batch)
    return out.view(batch, conv.out_channels, out.shape[-2], out.shape[-1])


class NoiseInjection(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, noise: Tensor) -> Tensor:
        return x + self.weight.to(x.dtype) * noise.to(x.dtype)


class BiasedActivation(nn.Module):
    """Per-channel bias then the scaled leaky ReLU (rosinality's FusedLeakyReLU, key `activate.bias`)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return scaled_leaky_relu(x + self.bias.to(x.dtype).view(1, -1, *([1] * (x.ndim - 2))))


class StyledConv(nn.Module):
    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, style_dim: int, upsample: bool = False
    ) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, kernel_size, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = BiasedActivation(out_channels)

    def forward(self, x: Tensor, style: Tensor, noise: Tensor) -> Tensor:
        return self.activate(self.noise(self.conv(x, style), noise))


class ToRGB(nn.Module):
    """1x1 modulated conv to RGB plus the upsampled skip image; the skip path runs in fp32 (see top)."""

    def __init__(self, in_channels: int, style_dim: int, upsample: bool = True) -> None:
        super().__init__()
        if upsample:
            self.upsample = Upsample()
        self.conv = ModulatedConv2d(in_channels, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, style: Tensor, skip: Tensor | None = None) -> Tensor:
        out = self.conv(x, style).float() + self.bias.float()
        if skip is not None:
            with _fp32(out.device.type):
                out = out + self.upsample(skip.float())
        return out


class ConstantInput(nn.Module):
    def __init__(self, channels: int, size: int = 4) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> Tensor:
        # A copy, not an expand(): a no-grad view of a parameter breaks torch's module tracker (FLOP counter).
        return self.input.repeat(batch, 1, 1, 1)


class Generator(nn.Module):
    """g(w_plus [B, n_latent, style_dim]) -> image [B, 3, size, size] (not clamped; about [-1, 1])."""

    def __init__(self, config: GeneratorConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or GeneratorConfig()
        self.size, self.style_dim, self.n_latent = config.size, config.style_dim, config.n_latent
        self.style = MappingNetwork(config.style_dim, config.n_mlp, config.lr_mlp)
        c4 = config.channels(4)
        self.input = ConstantInput(c4)
        self.conv1 = StyledConv(c4, c4, 3, config.style_dim)
        self.to_rgb1 = ToRGB(c4, config.style_dim, upsample=False)
        self.num_layers = (config.log_size - 2) * 2 + 1
        self.noises = nn.Module()
        for i in range(self.num_layers):
            resolution = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, resolution, resolution))
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        in_channels = c4
        for log_res in range(3, config.log_size + 1):
            out_channels = config.channels(2**log_res)
            self.convs.append(StyledConv(in_channels, out_channels, 3, config.style_dim, upsample=True))
            self.convs.append(StyledConv(out_channels, out_channels, 3, config.style_dim))
            self.to_rgbs.append(ToRGB(out_channels, config.style_dim))
            in_channels = out_channels

    def mapping(self, z: Tensor) -> Tensor:
        """z [B, style_dim] -> w [B, style_dim] (rosinality `g.style`)."""
        return self.style(z)

    @torch.no_grad()
    def mean_latent(self, n: int, generator: torch.Generator | None = None, chunk: int = 10_000) -> Tensor:
        """Mean of the mapping over n random z: [1, style_dim] (rosinality `mean_latent`)."""
        device = self.input.input.device
        total = torch.zeros(1, self.style_dim, device=device, dtype=torch.float64)
        for start in range(0, n, chunk):
            z = torch.randn(min(chunk, n - start), self.style_dim, generator=generator).to(device)
            total += self.mapping(z).double().sum(0, keepdim=True)
        return (total / n).float()

    def noise_buffers(self) -> list[Tensor]:
        return [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]

    def forward(self, w_plus: Tensor) -> Tensor:
        if w_plus.ndim != 3 or w_plus.shape[1:] != (self.n_latent, self.style_dim):
            raise ValueError(
                f"expected W+ codes [B, {self.n_latent}, {self.style_dim}], got {list(w_plus.shape)}"
            )
        noise = self.noise_buffers()
        out = self.input(w_plus.shape[0])
        out = self.conv1(out, w_plus[:, 0], noise[0])
        skip = self.to_rgb1(out, w_plus[:, 1])
        i = 1
        for up_conv, conv, to_rgb, n1, n2 in zip(
            self.convs[::2], self.convs[1::2], self.to_rgbs, noise[1::2], noise[2::2]
        ):
            out = up_conv(out, w_plus[:, i], n1)
            out = conv(out, w_plus[:, i + 1], n2)
            skip = to_rgb(out, w_plus[:, i + 2], skip)
            i += 2
        return skip
