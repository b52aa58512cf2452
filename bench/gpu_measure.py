"""Measuring on a GPU (or the CPU of a dry run) for bench/gpu_unmask.py: timings with CUDA events,
time caps checked before every call, FLOP counts, synthetic faces."""

from __future__ import annotations

import dataclasses
import math
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode


class SectionSkipped(Exception):
    """A section that cannot run here, with the reason (recorded, not a failure)."""


class CapReached(Exception):
    """The section's time cap passed before this row had a timed call."""


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = time.perf_counter()

    def passed(self) -> bool:
        return time.perf_counter() - self.started > self.seconds

    def check(self) -> None:
        if self.passed():
            raise CapReached


NO_DEADLINE = Deadline(math.inf)
CAP_NOTE = {"note": "section time cap reached; later rows not measured"}


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def reset_peak_memory(device: str) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib(device: str) -> float:
    """GPU: the most torch held since the last reset. CPU: the process's peak RSS (its whole life)."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


@dataclasses.dataclass
class Timing:
    seconds: float  # median seconds per call
    calls: int  # timed calls
    peak_memory_gib: float  # after warm-up
    cut: bool = False  # fewer trials than planned: the section's cap passed


def measure(
    fn: Callable[[], Any],
    device: str,
    warmup_s: float,
    trials: int,
    trial_s: float,
    warmup_calls: int = 2,
    deadline: Deadline = NO_DEADLINE,
) -> Timing:
    """Median seconds per call of `fn` over `trials` trials of about `trial_s` each (at least one call),
    after at least `warmup_s` and `warmup_calls` of warm-up. CUDA events on a GPU, perf_counter on CPU.
    The deadline is checked before every call: past it, the warm-up ends, and the trials end once one
    was timed (CapReached if none was), so a cap is overrun by at most one call."""
    started = time.perf_counter()
    calls = 0
    while True:
        deadline.check()
        fn()
        synchronize(device)
        calls += 1
        if calls >= warmup_calls and time.perf_counter() - started >= warmup_s:
            break
    # The first calls are the slowest (allocation, kernel selection): this errs towards short trials.
    per_call = (time.perf_counter() - started) / calls
    per_trial = max(1, min(1000, round(trial_s / per_call)))
    reset_peak_memory(device)
    times: list[float] = []
    for _ in range(trials):
        if deadline.passed():
            if not times:
                raise CapReached
            break
        if device == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            for _ in range(per_trial):
                fn()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end) / 1e3 / per_trial)
        else:
            began = time.perf_counter()
            for _ in range(per_trial):
                fn()
            times.append((time.perf_counter() - began) / per_trial)
    return Timing(
        statistics.median(times), len(times) * per_trial, peak_memory_gib(device), len(times) < trials
    )


def count_flops(fn: Callable[[], Any]) -> float:
    """FLOPs of one call (torch's flop counter: convolutions and matmuls, a multiply-add is 2)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def synthetic_faces(count: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth random aligned 'faces', uint8 [count, size, size, 3], lower half covered as by a mask."""
    import cv2

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(count, 8, 8, 3), dtype=np.uint8)
    faces = np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_CUBIC) for c in coarse])
    faces[:, size // 2 :] = 0
    return faces


def weights_dtype(module: torch.nn.Module) -> str:
    """The dtype of a network's first convolution weight: what its rows truly compute in."""
    weight = next(p for p in module.parameters() if p.ndim == 4)
    return str(weight.dtype).removeprefix("torch.")
