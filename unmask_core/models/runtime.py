"""How the networks are run fast: frozen weights cast once, NHWC, meta-device builds, torch.compile (the
backend flags and the CUDA state are accelerator.py's). Nothing here changes what a model computes
(beyond bf16 rounding when asked for).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

import torch
from torch import Tensor, nn

from unmask_core.models.stylegan2 import ModulatedConv2d

ModuleT = TypeVar("ModuleT", bound=nn.Module)

# Autocast runs normalisation layers with fp32 parameters; their weights stay fp32 when the rest is cast.
NORMALISATION_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)


def to_channels_last(module: ModuleT) -> ModuleT:
    """NHWC for every 4-D weight: ordinary convolutions, and the shared weight of each modulated
    convolution (stored [1, out, in, k, k] for rosinality's keys, so restrided to make weight[0] NHWC).
    Module.to(memory_format=...) cannot do this: it refuses 5-D tensors."""
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, ModulatedConv2d):
                weight = layer.weight.data[0].contiguous(memory_format=torch.channels_last)
                layer.weight.data = weight.unsqueeze(0)
                continue
            for param in layer.parameters(recurse=False):
                if param.ndim == 4:
                    param.data = param.data.contiguous(memory_format=torch.channels_last)
    return module


def cast_weights(module: ModuleT, dtype: torch.dtype) -> ModuleT:
    """Floating-point parameters to `dtype`, once, except normalisation layers'; buffers (noise, FIR
    kernels, running statistics, latent_avg) keep their dtype. Memory formats are kept."""
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, NORMALISATION_LAYERS):
                continue
            for param in layer.parameters(recurse=False):
                if param.is_floating_point():
                    param.data = param.data.to(dtype)
    return module


def prepare_for_inference(
    module: ModuleT, device: str | torch.device, bf16: bool = False, channels_last: bool = False
) -> ModuleT:
    """A frozen model ready to serve: eval mode, no gradients, on `device`; with bf16, its weights are
    cast once (autocast would re-cast frozen weights on every forward) and it must then run under
    bf16 autocast, as PSP(bf16=True) does; with channels_last, NHWC weights (see to_channels_last)."""
    module = module.eval().requires_grad_(False).to(device)
    if channels_last:
        to_channels_last(module)
    if bf16:
        cast_weights(module, torch.bfloat16)
    return module


def build_on_meta(
    factory: Callable[[], ModuleT],
    state_dict: Mapping[str, Tensor],
    fit: Callable[[Mapping[str, Tensor]], None] | None = None,
) -> ModuleT:
    """`factory()` built on the meta device (no random initialisation), then the state dict's tensors
    assigned as its own (no copy), each cast to the module's dtype where it differs. `fit`, if given,
    sees the module's expected state dict (meta tensors: keys, shapes, dtypes) first, to refuse
    weights that do not fit with its own message.

    Parameters and persistent buffers (StyleGAN2's blur kernels and noise, BatchNorm statistics) take
    the state dict's tensors. Non-persistent buffers come from the factory: they are real when made
    from real tensors the factory is given (latent_avg), and any left on the meta device, because
    only the constructor could compute them, are an error rather than a silently empty tensor.
    """
    with torch.device("meta"):
        module = factory()
    expected = module.state_dict()
    if fit is not None:
        fit(expected)
    typed = {k: v.to(expected[k].dtype) if k in expected else v for k, v in state_dict.items()}
    module.load_state_dict(typed, strict=True, assign=True)
    empty = [name for name, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if empty:
        raise RuntimeError(f"still on the meta device after loading: {', '.join(empty)}")
    return module


def compile_in_place(module: ModuleT, enabled: bool) -> ModuleT | Callable[..., Tensor]:
    """torch.compile for a fixed input shape (the caller pads batches to one size: every new shape
    would compile again); the module itself when not enabled."""
    if not enabled:
        return module
    module.compile(dynamic=False)  # in place: the module, its type and its state_dict keys stay as they are
    return module
