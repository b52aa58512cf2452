"""Where the networks run, and the CUDA state: the code paths a CUDA device takes.

On a CUDA device the code is in its CUDA state: cuDNN autotuning and TF32 (`configure_backends`), frozen
networks served in bf16 with NHWC weights, bf16 matchers, bf16 autocast in training with the fused
optimizer, non-blocking uploads, and JPEGs decoded on the device with a CPU fallback. `UNMASK_CUDA_STATE=1`
puts a CPU in that same state, so that tests and the GPU benchmark's dry run take every one of those
branches without a GPU; a branch that only a GPU reaches would be untested code.

What truly needs a CUDA driver is decided here and nowhere else: page-locked host memory (`pins_memory`).
Everything else runs on the CPU's own kernels (autocast, decode_jpeg, the fused Adam, the convolutions).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

CUDA_STATE_ENV = "UNMASK_CUDA_STATE"


def emulating_cuda() -> bool:
    """True when UNMASK_CUDA_STATE asks a CPU to take CUDA's code paths (tests, dry runs)."""
    return os.environ.get(CUDA_STATE_ENV, "") not in ("", "0")


def cuda_state(device: str | torch.device) -> bool:
    """Whether code on `device` takes CUDA's paths: on a CUDA device, or on the CPU with
    UNMASK_CUDA_STATE=1."""
    kind = torch.device(device).type
    return kind == "cuda" or (kind == "cpu" and emulating_cuda())


def best_device(gpu: bool = True) -> torch.device:
    """The CUDA device when there is one (and `gpu`), else the CPU."""
    return torch.device("cuda" if gpu and torch.cuda.is_available() else "cpu")


def configure_backends(device: str | torch.device) -> None:
    """In the CUDA state: cuDNN picks the fastest algorithm per shape, and fp32 matmuls and convolutions
    may use TF32 tensor cores. Through torch's fp32_precision API only: once it is set, any read or write
    of the legacy `allow_tf32` flags raises (torch 2.11 to 2.14), so no code of ours may use those."""
    if not cuda_state(device):
        return
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    torch.backends.cudnn.conv.fp32_precision = "tf32"


def pins_memory(device: str | torch.device) -> bool:
    """Whether uploads to `device` go through page-locked host memory: only on a real CUDA device
    (pinning needs its driver; in the CUDA state on a CPU the copy stays a plain one)."""
    return torch.device(device).type == "cuda"


def upload(tensor: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """A host tensor on `device`, in one non-blocking copy from pinned memory where pinning exists."""
    if pins_memory(device):
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def bf16_autocast(device: str | torch.device, enabled: bool = True) -> torch.autocast:
    """bf16 autocast on `device`'s own type (CUDA's on a GPU, the CPU's in the CUDA state on a CPU)."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=enabled)


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 for fp32 matmuls and convolutions on or off (fp32_precision "tf32" or "ieee"), the previous
    settings restored afterwards; the new API only (see configure_backends)."""
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    saved = matmul.fp32_precision, conv.fp32_precision
    matmul.fp32_precision = conv.fp32_precision = "tf32" if enabled else "ieee"
    try:
        yield
    finally:
        matmul.fp32_precision, conv.fp32_precision = saved
