"""One-shot GPU benchmark of the unmask stage and of training (`python -m bench.gpu_unmask --out DIR`).

Built for a lent GPU machine that is rare and short (docs/gpu.md): it imports only what that image has
(torch, numpy, pyarrow, pillow, opencv) plus the small wheels that travel (lpips, facenet-pytorch);
never ray, s3fs or insightface. Each section runs in its own try/except under its own time cap, and
after each one DIR/gpu_unmask.json and DIR/gpu_unmask.md are rewritten, so a crash or a kill loses
at most the section in flight. Sections:

- peak: bf16 dense matmul, the yardstick for MFU, against the card's spec;
- f_g: f, g and f+g in fp32, TF32 and bf16 over batch sizes;
- unmask_stage: the bulk job's stage class itself (U = g(f(M)), matchers on M and U, PNG encoding)
  on a synthetic shard of aligned faces, with the job's own config defaults;
- photos (--photos DIR): the same stage as a GPU actor runs it on whole photos, finding their faces on
  the device first (JPEG decode, MTCNN, the alignment warp);
- numerics: bf16 against fp32, as PSNR of the delivered U and cosine of each matcher's embedding;
- train: stage unmask with the training module's own step and loss, batch 8, 16 and 32;
- compiled (--compile): f, g, f+g and the stage again with torch.compile'd f and g.

Models are a random-weight model set of the reference architectures (speed does not depend on the
values). `--device cpu --size 64 --quick` is the CI dry run of every section.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import json
import math
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.benchmarks_md import machine_description

SECTIONS = ("peak", "f_g", "unmask_stage", "photos", "numerics", "train", "compiled")
GOALS = {"unmask_stage": "≥ 1,300 faces/s per H100-class GPU", "train": "≥ 400 samples/s"}

# Dense (no sparsity) bf16 tensor-core TFLOP/s from the vendor's data sheets, matched in this order
# against torch.cuda.get_device_name (so 'GH200' before 'H200', 'L40S' before 'L40' before 'L4').
SPEC_BF16_TFLOPS = (
    ("GH200", 989.0),
    ("H200 NVL", 835.0),
    ("H200", 989.0),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # 'NVIDIA H100 80GB HBM3' is the SXM card
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
)


def spec_bf16_tflops(device_name: str) -> float | None:
    for key, tflops in SPEC_BF16_TFLOPS:
        if key in device_name:
            return tflops
    return None


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much each section measures; `--quick` and the CPU shrink it."""

    matmul_sizes: tuple[int, ...]
    batches: tuple[int, ...]  # f, g, f+g and compiled
    # (shard size, batch size) of the stage rows, as `unmask` job flags; None: the job's defaults
    stage_shapes: tuple[tuple[int, int] | None, ...]
    photo_batches: tuple[int, ...]  # photos per stage call in `photos`
    numerics_faces: int
    train_batches: tuple[int, ...]
    train_steps: int  # timed steps after the warm-up
    warmup_s: float
    warmup_calls: int
    trials: int
    trial_s: float
    caps: dict[str, float]  # seconds after which a section starts no new row


# On an H200 the sections' caps add up to 7.5 minutes, inside the 9 the run may take (docs/gpu.md).
CAPS = {"peak": 25, "f_g": 80, "unmask_stage": 70, "photos": 40, "numerics": 20, "train": 75, "compiled": 140}


def make_plan(device: str, quick: bool) -> Plan:
    if device == "cuda" and not quick:
        return Plan(
            matmul_sizes=(4096, 8192, 16384),
            batches=(16, 64, 256),
            stage_shapes=(None, (256, 64), (256, 128), (512, 256)),
            photo_batches=(16, 64),
            numerics_faces=64,
            train_batches=(8, 16, 32),
            train_steps=10,
            warmup_s=0.5,
            warmup_calls=2,
            trials=5,
            trial_s=0.2,
            caps=CAPS,
        )
    half_caps = {name: cap / 2 for name, cap in CAPS.items()}
    if device == "cuda":
        return Plan((4096, 8192), (32,), (None,), (16,), 16, (8, 32), 10, 0.3, 2, 3, 0.1, half_caps)
    if not quick:
        return Plan((256, 512), (8, 32), (None,), (4,), 16, (8, 16, 32), 10, 0.3, 2, 3, 0.2, CAPS)
    # The CI dry run: every code path once, in well under a minute on two free cores.
    return Plan((256,), (2,), ((4, 2),), (2,), 4, (2, 4), 2, 0.0, 1, 2, 0.0, half_caps)


# ---------------------------------------------------------------- measuring


class SectionSkipped(Exception):
    """A section that cannot run here, with the reason (recorded, not a failure)."""


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = time.perf_counter()

    def passed(self) -> bool:
        return time.perf_counter() - self.started > self.seconds


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


def measure(
    fn: Callable[[], Any], device: str, warmup_s: float, trials: int, trial_s: float, warmup_calls: int = 2
) -> Timing:
    """Median seconds per call of `fn` over `trials` trials of about `trial_s` each (at least one call),
    after at least `warmup_s` and `warmup_calls` of warm-up. CUDA events on a GPU, perf_counter on CPU."""
    started = time.perf_counter()
    calls = 0
    while True:
        fn()
        synchronize(device)
        calls += 1
        if calls >= warmup_calls and time.perf_counter() - started >= warmup_s:
            break
    # The first calls are the slowest (allocation, kernel selection): this errs towards short trials.
    per_call = (time.perf_counter() - started) / calls
    per_trial = max(1, min(1000, round(trial_s / per_call)))
    reset_peak_memory(device)
    times = []
    for _ in range(trials):
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
    return Timing(statistics.median(times), trials * per_trial, peak_memory_gib(device))


def count_flops(fn: Callable[[], Any]) -> float:
    """FLOPs of one call (torch's flop counter: convolutions and matmuls, a multiply-add is 2)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


@contextmanager
def tf32(enabled: bool):
    """TF32 for matmuls and convolutions on or off, restored afterwards (torch's defaults differ:
    matmul off, cuDNN on)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def synthetic_faces(count: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth random aligned 'faces', uint8 [count, size, size, 3], lower half covered as by a mask."""
    from tests.support.synthetic import smooth_image

    rng = np.random.default_rng(seed)
    faces = np.stack([smooth_image(rng, size) for _ in range(count)])
    faces[:, size // 2 :] = 0
    return faces


# ---------------------------------------------------------------- shared state


class Bench:
    """What sections share: arguments, the plan, the model set (made once, lazily) and the peak."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device: str = args.device
        self.plan = make_plan(self.device, args.quick)
        self.device_name = torch.cuda.get_device_name(0) if self.device == "cuda" else platform.processor()
        self.spec_tflops = spec_bf16_tflops(self.device_name) if self.device == "cuda" else None
        self.measured_peak_tflops: float | None = None
        self._models_folder: str | None = None
        self._models_error: BaseException | None = None

    def models_uri(self) -> str:
        """A random-weight model set at --size, written once into a temporary folder (not under --out:
        a 256 px set is 2 GiB)."""
        if self._models_error is not None:
            raise RuntimeError(f"the model set could not be made: {self._models_error}")
        if self._models_folder is None:
            from unmask_core.models.model_set import init_model_set

            folder = tempfile.mkdtemp(prefix="gpu_unmask_models_")
            try:
                init_model_set(self.args.size, folder)
            except BaseException as exc:
                self._models_error = exc
                shutil.rmtree(folder, ignore_errors=True)
                raise
            self._models_folder = folder
        return self._models_folder

    def close(self) -> None:
        if self._models_folder is not None:
            shutil.rmtree(self._models_folder, ignore_errors=True)

    def mfu(self, flops_per_second: float) -> dict[str, float | None]:
        return {
            "mfu_measured_peak": flops_per_second / (self.measured_peak_tflops * 1e12)
            if self.measured_peak_tflops
            else None,
            "mfu_spec": flops_per_second / (self.spec_tflops * 1e12) if self.spec_tflops else None,
        }

    def free_memory(self) -> None:
        if self.device == "cuda":
            torch.cuda.empty_cache()


# ---------------------------------------------------------------- sections


def section_peak(bench: Bench, deadline: Deadline) -> dict:
    """bf16 dense matmul: at least 1 s of warm-up, then the median of several trials."""
    plan, device = bench.plan, bench.device
    rows = []
    for n in plan.matmul_sizes:
        if deadline.passed():
            break
        a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        timing = measure(lambda a=a, b=b: a @ b, device, max(1.0, plan.warmup_s), plan.trials + 2, 0.1)
        tflops = 2 * n**3 / timing.seconds / 1e12
        rows.append({"n": n, "tflops": tflops, "ms_per_matmul": timing.seconds * 1e3, "calls": timing.calls})
        del a, b
    if not rows:
        raise RuntimeError("no matmul size was measured within the section's time cap")
    bench.measured_peak_tflops = max(r["tflops"] for r in rows)
    for row in rows:
        row["of_measured_peak"] = row["tflops"] / bench.measured_peak_tflops
        row["of_spec"] = row["tflops"] / bench.spec_tflops if bench.spec_tflops else None
    of_spec = f", {bench.measured_peak_tflops / bench.spec_tflops:.0%} of spec" if bench.spec_tflops else ""
    return {
        "summary": f"{bench.measured_peak_tflops:.1f} TFLOP/s bf16 measured{of_spec}",
        "device_name": bench.device_name,
        "measured_peak_tflops": bench.measured_peak_tflops,
        "spec_tflops": bench.spec_tflops,
        "rows": rows,
    }


def _precisions(device: str) -> list[tuple[str, bool, bool]]:
    """(name, TF32 on, bf16 autocast); TF32 exists only on NVIDIA GPUs."""
    names = [("fp32", False, False), ("tf32", True, False), ("bf16", False, True)]
    return names if device == "cuda" else [p for p in names if p[0] != "tf32"]


def _networks(bench: Bench, matchers: list[str]):
    """f and g exactly as the job's Unmasker holds them (eval, frozen, channels_last on a GPU)."""
    from unmask_core.inference import Unmasker

    return Unmasker(bench.models_uri(), matchers, device=bench.device, bf16=bench.device == "cuda")


def _f_g_flops(bench: Bench, encoder, generator) -> dict[str, float]:
    """FLOPs per image of f, g and f+g (uncompiled modules: the counter sees no compiled graph)."""
    size = bench.args.size
    with torch.inference_mode():
        probe = torch.zeros(1, 3, size, size, device=bench.device)
        codes = encoder(probe)
        flops = {"f": count_flops(lambda: encoder(probe)), "g": count_flops(lambda: generator(codes))}
    return {**flops, "f+g": flops["f"] + flops["g"]}


def _f_g_rows(
    bench: Bench,
    deadline: Deadline,
    encoder,
    generator,
    precisions,
    flops: dict[str, float],
    compiled: bool = False,
    batches: tuple[int, ...] = (),
) -> list[dict]:
    plan, device = bench.plan, bench.device
    size = bench.args.size
    rows = []
    for batch in batches or plan.batches:
        x = torch.rand(batch, 3, size, size, device=device) * 2 - 1  # contiguous, as Unmasker.run feeds f
        with torch.inference_mode():
            codes = encoder(x).float()
        calls = {"f": lambda x=x: encoder(x), "g": lambda c=codes: generator(c)}
        calls["f+g"] = lambda x=x: generator(encoder(x))
        for precision, use_tf32, bf16 in precisions:
            for module in ("f", "g", "f+g"):
                if deadline.passed():
                    return rows + [{"note": "section time cap reached; later rows not measured"}]
                row = {"module": module, "precision": precision, "batch": batch}
                try:
                    with (
                        tf32(use_tf32),
                        torch.inference_mode(),
                        torch.autocast(device, dtype=torch.bfloat16, enabled=bf16),
                    ):
                        timing = measure(
                            calls[module], device, plan.warmup_s, plan.trials, plan.trial_s, plan.warmup_calls
                        )
                except torch.OutOfMemoryError:
                    bench.free_memory()
                    rows.append({**row, "note": "out of memory"})
                    continue
                rate = batch / timing.seconds
                rows.append(
                    {
                        **row,
                        "images_per_s": rate,
                        "ms_per_batch": timing.seconds * 1e3,
                        "gflop_per_image": flops[module] / 1e9,
                        **bench.mfu(rate * flops[module]),
                        "peak_memory_gib": timing.peak_memory_gib,
                        **({"compiled": True} if compiled else {}),
                    }
                )
        del x, codes
        bench.free_memory()
    return rows


def section_f_g(bench: Bench, deadline: Deadline) -> dict:
    unmasker = _networks(bench, matchers=[])
    encoder, generator = unmasker.model.encode, unmasker.model.decoder
    flops = _f_g_flops(bench, encoder, generator)
    rows = _f_g_rows(bench, deadline, encoder, generator, _precisions(bench.device), flops)
    best = max((r for r in rows if r.get("module") == "f+g" and "images_per_s" in r),
               key=lambda r: r["images_per_s"], default=None)  # fmt: skip
    summary = f"f+g best {best['images_per_s']:.0f} images/s ({best['precision']}, batch {best['batch']})"
    return {"summary": summary if best else "no f+g row measured", "rows": rows}


def _stage_rows(bench: Bench, deadline: Deadline, compile_networks: bool = False) -> list[dict]:
    """One row per (shard size, batch size): a fresh stage built from the job's config, as an actor is."""
    # The bulk job's stage class and config: the one import to follow if bulk moves or renames them.
    from unmask_core.bulk.config import BulkConfig
    from unmask_core.bulk.stages import STAGE_SCHEMA, UnmaskingStage

    defaults = BulkConfig()
    shapes = [s or (defaults.shard_size, defaults.batch_size) for s in bench.plan.stage_shapes]
    if compile_networks:
        shapes = shapes[:1]
    faces = synthetic_faces(max(shard for shard, _ in shapes), 256)
    rows = []
    for (shard_size, batch_size), flags in zip(shapes, bench.plan.stage_shapes):
        if deadline.passed():
            rows.append({"note": "section time cap reached; later rows not measured"})
            break
        cfg = BulkConfig(
            input="synthetic", output="unused", models=bench.models_uri(), batch_size=batch_size,
            shard_size=shard_size,
        )  # fmt: skip
        stage = UnmaskingStage(cfg)
        shard = faces[:shard_size]
        flops = count_flops(functools.partial(stage.unmasker.run, shard[:1], batch_size))
        if compile_networks:
            stage.unmasker.model = torch.compile(stage.unmasker.model)  # the one g∘f module
        records = [
            {"shard": 0, "shard_inputs": shard_size, "id": f"face{i}", "source_uri": "synthetic",
             "input_rows": 1, "status": "ok", "error": "", "face_index": 0, "face": face.tobytes()}
            for i, face in enumerate(shard)
        ]  # fmt: skip
        table = pa.Table.from_pylist(
            [{n: r.get(n) for n in STAGE_SCHEMA.names} for r in records], schema=STAGE_SCHEMA
        )
        row = {
            "config": "job defaults" if flags is None else "flags",
            "shard_size": shard_size,
            "batch_size": batch_size,
            "device": stage.unmasker.device.type,
            "bf16": stage.unmasker.bf16,
            **({"compiled": True} if compile_networks else {}),
        }
        try:
            row.update(_measure_stage(bench, stage, table, shard, batch_size, flops))
        except torch.OutOfMemoryError:
            row["note"] = "out of memory"
        rows.append(row)
        del stage
        bench.free_memory()
    return rows


def _measure_stage(
    bench: Bench, stage, table: pa.Table, faces: np.ndarray, batch_size: int, flops: float
) -> dict:
    unmasker, plan = stage.unmasker, bench.plan
    device = unmasker.device.type
    whole = measure(lambda: stage(table), device, plan.warmup_s, plan.trials, 0.0, plan.warmup_calls)
    compute = measure(lambda: unmasker.run(faces, batch_size), device, 0.0, plan.trials, 0.0, 1)
    rate = len(faces) / whole.seconds
    return {
        "images_per_s": rate,
        "compute_images_per_s": len(faces) / compute.seconds,
        "ms_per_shard": whole.seconds * 1e3,
        "gflop_per_image": flops / 1e9,
        **bench.mfu(rate * flops),
        "peak_memory_gib": max(whole.peak_memory_gib, compute.peak_memory_gib),
    }


def _best_row(rows: list[dict], rate: str, what: str) -> dict:
    """The row with the highest `rate`; a section that measured none has failed."""
    measured = [r for r in rows if rate in r]
    if not measured:
        raise RuntimeError(f"no {what} row measured: {rows}")
    return max(measured, key=lambda r: r[rate])


def section_unmask_stage(bench: Bench, deadline: Deadline) -> dict:
    rows = _stage_rows(bench, deadline)
    best = _best_row(rows, "images_per_s", "stage")
    return {
        "summary": f"best {best['images_per_s']:.0f} faces/s (shard {best['shard_size']}, batch "
        f"{best['batch_size']}, {best['config']}); goal {GOALS['unmask_stage']}",
        "what": "UnmaskingStage.__call__ on a batch of aligned faces: f, g, matchers on M and U (PNG "
        "encoding is the image writer's); compute_images_per_s is Unmasker.run alone (no Arrow)",
        "rows": rows,
    }


def section_photos(bench: Bench, deadline: Deadline) -> dict:
    """The unmask stage as a GPU actor of the job runs it (`--face-finding`'s default there): whole
    photos in, their faces found on the device, then f, g and the matchers on every face."""
    if bench.args.photos is None:
        raise SectionSkipped("--photos not given (a folder of face photos; docs/gpu.md, step 1)")
    files = sorted(p for p in bench.args.photos.iterdir() if p.is_file())
    if not files:
        raise SectionSkipped(f"no files in {bench.args.photos}")
    rows = []
    for batch in bench.plan.photo_batches:
        if deadline.passed():
            rows.append({"note": "section time cap reached; later rows not measured"})
            break
        rows.append(_photo_row(bench, [files[i % len(files)] for i in range(batch)]))
        bench.free_memory()
    best = _best_row(rows, "faces_per_s", "photo")
    return {
        "summary": f"best {best['faces_per_s']:.0f} faces/s, {best['photos_per_s']:.0f} photos/s "
        f"({best['photos']} photos a call); goal {GOALS['unmask_stage']}",
        "what": "UnmaskingStage(find_faces=True).__call__ on photos from --photos: JPEG decode, MTCNN "
        "and the alignment warp on the device, then f, g and the matchers on every face (faces='all'); "
        "finding_photos_per_s is the face finding alone",
        "rows": rows,
    }


def _photo_row(bench: Bench, files: list[Path]) -> dict:
    from unmask_core.bulk.config import BulkConfig
    from unmask_core.bulk.stages import STAGE_SCHEMA, UnmaskingStage, photo_for_device

    cfg = BulkConfig(input="photos", output="unused", models=bench.models_uri(), faces="all")
    stage = UnmaskingStage(cfg, find_faces=True)
    base = {"shard": 0, "shard_inputs": len(files), "input_rows": 1, "status": "ok", "error": ""}
    records = [
        dict(base, id=f"photo{i}", source_uri=f.name, **photo_for_device(f.read_bytes(), cfg.max_pixels))
        for i, f in enumerate(files)
    ]
    table = pa.Table.from_pylist(
        [{n: r.get(n) for n in STAGE_SCHEMA.names} for r in records], schema=STAGE_SCHEMA
    )
    faces = stage(table).column("status").to_pylist().count("ok")
    plan, device = bench.plan, stage.unmasker.device.type
    whole = measure(lambda: stage(table), device, plan.warmup_s, plan.trials, 0.0, plan.warmup_calls)
    finding = measure(lambda: stage.face_finder(table), device, 0.0, plan.trials, 0.0, 1)
    return {
        "photos": len(files),
        "decoded_on_device": sum(r["jpeg"] is not None for r in records),
        "faces": faces,
        "batch_size": cfg.batch_size,
        "photos_per_s": len(files) / whole.seconds,
        "faces_per_s": faces / whole.seconds,
        "finding_photos_per_s": len(files) / finding.seconds,
        "peak_memory_gib": max(whole.peak_memory_gib, finding.peak_memory_gib),
    }


def section_numerics(bench: Bench, deadline: Deadline) -> dict:
    """U and embeddings with bf16 autocast against fp32 (TF32 off), same weights, same faces."""
    from unmask_core.bulk.config import BulkConfig
    from unmask_core.inference import to_tensor, to_uint8

    matchers = BulkConfig().matchers
    unmasker = _networks(bench, matchers)
    faces = synthetic_faces(bench.plan.numerics_faces, 256, seed=1)
    device = bench.device
    outputs = {}
    # The autocast of Unmasker.unmask, on the device's own type so that the CPU dry run exercises bf16.
    for precision, bf16 in (("fp32", False), ("bf16", True)):
        with tf32(False), torch.inference_mode():
            with torch.autocast(device, torch.bfloat16, enabled=bf16):
                unmasked = unmasker.model(to_tensor(faces, unmasker.image_size, device))
            # Matchers outside autocast, as in Unmasker.run: only U's precision differs.
            unmasked = unmasked.float().clamp(-1, 1)
            embeddings = {name: m.embed(unmasked) for name, m in unmasker.matchers.items()}
        outputs[precision] = (to_uint8(unmasked).astype(np.float64), embeddings)
    (u32, e32), (u16, e16) = outputs["fp32"], outputs["bf16"]
    squared = ((u32 - u16) ** 2).reshape(len(faces), -1).mean(axis=1)
    psnr = [10 * math.log10(255**2 / s) if s > 0 else math.inf for s in squared]
    rows = [
        {"measure": "PSNR of U (uint8, dB)", "mean": float(np.mean(psnr)), "min": float(np.min(psnr))},
    ]
    for name in matchers:
        a, b = e32[name], e16[name]
        cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
        rows.append({"measure": f"cosine of {name} embedding", "mean": float(cosine.mean()),
                     "min": float(cosine.min())})  # fmt: skip
    return {
        "summary": f"PSNR {rows[0]['mean']:.1f} dB; "
        + ", ".join(f"{r['measure'].split()[2]} cosine {r['min']:.4f} min" for r in rows[1:]),
        "faces": len(faces),
        "rows": rows,
    }


def section_train(bench: Bench, deadline: Deadline) -> dict:
    """Stage unmask, full loss, one optimizer step as train_loop takes it, at several batch sizes."""
    try:
        importlib.import_module("lpips")
    except ImportError as exc:
        raise SectionSkipped(f"LPIPS needs the lpips package ({exc}); see docs/gpu.md, gpu_wheels") from None
    # The training module's own config, models and step; the one import to follow if training moves.
    from unmask_core.training.config import TrainConfig
    from unmask_core.training.loop import build_training_models, make_optimizer, training_step

    device, plan = bench.device, bench.plan
    cfg = TrainConfig(
        stage="unmask", pairs="synthetic", models=bench.models_uri(), out="unused", lpips_backbone="random",
        gpu=device == "cuda", batch_size=max(plan.train_batches),
    )  # fmt: skip
    parts = build_training_models(cfg, device)
    optimizer = make_optimizer(parts.encoder, cfg.lr, torch.device(device))
    size = bench.args.size
    faces = synthetic_faces(max(plan.train_batches), size, seed=2)
    full = torch.from_numpy(faces).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(device)
    rows = []
    for batch_size in plan.train_batches:
        if deadline.passed():
            rows.append({"note": "section time cap reached; later rows not measured"})
            break
        masked = full[:batch_size]
        batch = {"M": masked, "T": masked.flip(2)}  # any T: only shapes matter for speed

        def step(batch=batch) -> None:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.gpu and device == "cuda"):
                loss, _ = training_step(
                    cfg.stage, batch, parts.encoder, parts.generator, parts.teacher, parts.criterion
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        row = {"batch": batch_size}
        try:
            # One step per trial: at least train_steps timed steps after the warm-up.
            timing = measure(step, device, plan.warmup_s, plan.train_steps, 0.0, plan.warmup_calls)
        except torch.OutOfMemoryError:
            bench.free_memory()
            rows.append({**row, "note": "out of memory"})
            break
        rows.append(
            {
                **row,
                "samples_per_s": batch_size / timing.seconds,
                "ms_per_step": timing.seconds * 1e3,
                "steps": timing.calls,
                "peak_memory_gib": timing.peak_memory_gib,
            }
        )
    best = _best_row(rows, "samples_per_s", "training")
    return {
        "summary": f"best {best['samples_per_s']:.1f} samples/s (batch {best['batch']}); "
        f"goal {GOALS['train']}",
        "what": "training_step (L2 + LPIPS + ID + L_LR, f0 teacher), backward and Adam step, autocast as "
        "train_loop; LPIPS AlexNet random (speed only)",
        "rows": rows,
    }


def section_compiled(bench: Bench, deadline: Deadline) -> dict:
    """The stage with the job's defaults, then f, g and f+g, with f and g torch.compile'd, bf16 only (the
    job's precision: every other one would compile everything again)."""
    if not bench.args.compile:
        raise SectionSkipped("--compile not given")
    rows = _stage_rows(bench, deadline, compile_networks=True)
    unmasker = _networks(bench, matchers=[])
    flops = _f_g_flops(bench, unmasker.model.encode, unmasker.model.decoder)
    encoder, generator = torch.compile(unmasker.model.encode), torch.compile(unmasker.model.decoder)
    bf16 = [p for p in _precisions(bench.device) if p[0] == "bf16"]
    # The stage's micro-batch size first: each new batch size compiles again.
    stage_batch = rows[0].get("batch_size") or bench.plan.batches[0]
    batches = tuple(sorted(set(bench.plan.batches) | {stage_batch}, key=lambda b: b != stage_batch))
    rows += _f_g_rows(bench, deadline, encoder, generator, bf16, flops, compiled=True, batches=batches)
    stage = [r for r in rows if "shard_size" in r and "images_per_s" in r]
    summary = f"stage {stage[0]['images_per_s']:.0f} faces/s compiled" if stage else "no stage row measured"
    return {"summary": summary, "rows": rows}


SECTION_FUNCTIONS = {
    "peak": section_peak,
    "f_g": section_f_g,
    "unmask_stage": section_unmask_stage,
    "photos": section_photos,
    "numerics": section_numerics,
    "train": section_train,
    "compiled": section_compiled,
}


# ---------------------------------------------------------------- report


def _cell(value: Any) -> str:
    """A markdown table cell: 3 significant digits, thousands separators, no '|' or line breaks."""
    if value is None:
        return ""
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def section_markdown(name: str, result: dict) -> str:
    lines = [f"## {name}: {result['status']} ({result.get('seconds', 0):.1f} s)", ""]
    for key in ("summary", "reason", "what", "error"):
        if result.get(key):
            lines.append(f"{key}: {result[key]}  ")
    rows = result.get("rows") or []
    if rows:
        columns = list(dict.fromkeys(k for row in rows for k in row))
        lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    if result.get("traceback"):
        lines += ["", "```", result["traceback"].rstrip(), "```"]
    return "\n".join(lines) + "\n"


class Report:
    """DIR/gpu_unmask.json and DIR/gpu_unmask.md, rewritten (atomically) after every section."""

    def __init__(self, out: Path, meta: dict) -> None:
        self.out = out
        self.meta = meta
        self.sections: dict[str, dict] = {}

    def record(self, name: str, result: dict) -> None:
        self.sections[name] = result
        self.write()

    def write(self) -> None:
        payload = {**self.meta, "sections": self.sections}
        self._write("gpu_unmask.json", json.dumps(payload, indent=2, default=str) + "\n")
        self._write("gpu_unmask.md", self.markdown())

    def markdown(self) -> str:
        meta = self.meta
        lines = [
            "# GPU benchmark (`bench/gpu_unmask.py`)",
            "",
            f"Machine: {meta['machine']}. Command: `{meta['command']}`. Started {meta['started']}.",
            "",
            "| section | status | seconds | summary |",
            "|---|---|---|---|",
        ]
        for name in meta["planned"]:
            result = self.sections.get(name)
            if result is None:
                lines.append(f"| {name} | not run yet | | |")
                continue
            summary = result.get("summary") or result.get("reason") or result.get("error", "")
            lines.append(f"| {name} | {result['status']} | {result['seconds']:.1f} | {_cell(summary)} |")
        lines.append("")
        lines += [section_markdown(name, self.sections[name]) for name in self.sections]
        return "\n".join(lines)

    def _write(self, filename: str, text: str) -> None:
        partial = self.out / f".{filename}.partial"
        partial.write_text(text)
        os.replace(partial, self.out / filename)


def run_section(bench: Bench, report: Report, name: str) -> None:
    print(f"== {name} (time cap {bench.plan.caps[name]:.0f} s)", flush=True)
    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        result = {"status": "ok", **SECTION_FUNCTIONS[name](bench, Deadline(bench.plan.caps[name]))}
    except SectionSkipped as exc:
        result = {"status": "skipped", "reason": str(exc)}
    except Exception as exc:  # one section's failure must not cost the others their measurements
        result = {
            "status": "failed",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
        }
        bench.free_memory()
    except KeyboardInterrupt:  # `timeout -s INT` at the run's time limit: say where it stopped, then stop
        result = {"status": "failed", "error": "interrupted (SIGINT)", "traceback": traceback.format_exc()}
        _finish_section(report, name, result, started, cpu_started)
        raise
    _finish_section(report, name, result, started, cpu_started)


def _finish_section(report: Report, name: str, result: dict, started: float, cpu_started: float) -> None:
    result["seconds"] = time.perf_counter() - started
    result["cpu_seconds"] = time.process_time() - cpu_started  # this process's, all threads
    report.record(name, result)
    print(section_markdown(name, result), flush=True)


def package_versions() -> dict[str, str | None]:
    """What the run could import: the travelling wheels, and the packages it must not need."""
    from importlib import metadata

    versions = {}
    for name in ("torch", "lpips", "facenet-pytorch", "requests", "ray", "s3fs", "insightface"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument(
        "--size", type=int, choices=[256, 64], default=256, help="model set size (64: tiny, CPU)"
    )
    parser.add_argument("--quick", action="store_true", help="fewer sizes, batches and trials (a smoke run)")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile'd f and g")
    parser.add_argument(
        "--photos", type=Path, help="a folder of face photos for the `photos` section (skipped without it)"
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="folder for gpu_unmask.json and gpu_unmask.md"
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    args.out.mkdir(parents=True, exist_ok=True)
    bench = Bench(args)
    meta = {
        "machine": machine_description(),
        "device": args.device,
        "device_name": bench.device_name,
        "command": " ".join(["python -m bench.gpu_unmask", *(argv if argv is not None else sys.argv[1:])]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
        "packages": package_versions(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "plan": dataclasses.asdict(bench.plan),
        "goals": GOALS,
        "planned": list(SECTIONS),
    }
    report = Report(args.out, meta)
    report.write()
    started = time.perf_counter()
    try:
        for name in SECTIONS:
            run_section(bench, report, name)
    except KeyboardInterrupt:
        print("interrupted: the sections above are in gpu_unmask.json", flush=True)
        return 130
    finally:
        bench.close()
        report.meta["total_seconds"] = time.perf_counter() - started
        report.write()
    failed = [n for n, r in report.sections.items() if r["status"] == "failed"]
    print(f"done in {report.meta['total_seconds']:.0f} s; failed: {', '.join(failed) or 'none'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
