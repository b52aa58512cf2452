"""One-shot GPU benchmark of the unmask stage and of training (`python -m bench.gpu_unmask --out DIR`).

Built for a lent GPU machine that is rare and short (docs/gpu.md): it imports only what that image has
(torch, numpy, pyarrow, pillow, opencv) plus the small wheels that travel (lpips, facenet-pytorch);
never ray, s3fs or insightface. The model set is made and loaded first (timed on its own), then each
section runs in its own try/except under its own time cap (bench/gpu_plan.py, with the time plan that
shows the shot fits), and after each one DIR/gpu_unmask.json and DIR/gpu_unmask.md are rewritten, so a
crash or a kill loses at most the section in flight. Sections, in the order they run:

- peak: bf16 dense matmul, the yardstick for MFU, against the card's spec;
- unmask_stage: the bulk job's stage class itself (U = g(f(M)), matchers on M and U) on synthetic
  shards of aligned faces, with the job's own config;
- train: stage unmask with the training module's own step, loss and optimizer, at several batch sizes;
- photos (--photos DIR): the same stage as a GPU actor runs it on whole photos, finding their faces on
  the device first (JPEG decode with its CPU fallback, MTCNN, the alignment warp);
- numerics: the job's bf16 networks against true fp32 ones, as PSNR of U and cosine of each embedding;
- f_g: f, g and f+g in bf16 (the job's networks), TF32 and fp32 (networks built without bf16);
- forms: both forms of f's heads and of g's modulated convolutions, the job's networks, two batches;
- compiled (--compile): the stage and f, g, f+g in bf16 with torch.compile'd networks.

Models are a random-weight model set of the reference architectures (speed does not depend on the
values). `--device cpu --size 64 --quick --cuda-state` is the CI dry run: every section, on a CPU put in
the state CUDA puts the code in (unmask_core/accelerator.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from bench.benchmarks_md import machine_description
from bench.gpu_measure import (
    CAP_NOTE,
    CapReached,
    Deadline,
    SectionSkipped,
    count_flops,
    measure,
    synthetic_faces,
    weights_dtype,
)
from bench.gpu_plan import SECTIONS, format_time_plan, job_stage_shape, make_plan, spec_bf16_tflops, time_plan
from bench.gpu_report import Report, section_markdown
from unmask_core.accelerator import CUDA_STATE_ENV, configure_backends, cuda_state, tf32

GOALS = {"unmask_stage": "≥ 1,300 faces/s per H100-class GPU", "train": "≥ 400 samples/s"}


# ---------------------------------------------------------------- shared state


class Bench:
    """What sections share: arguments, the plan, the peak, and the networks `setup` builds once: the
    job's unmask stage (its Unmasker is the job's: bf16 in the CUDA state), the same stage finding faces
    on whole photos (with --photos), and the same networks built without bf16 (true fp32)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device: str = args.device
        self.cuda_state = cuda_state(self.device)
        configure_backends(self.device)  # what a GPU actor's first step does, before any section
        self.plan = make_plan(self.device, args.quick)
        self.device_name = torch.cuda.get_device_name(0) if self.device == "cuda" else platform.processor()
        self.spec_tflops = spec_bf16_tflops(self.device_name) if self.device == "cuda" else None
        self.measured_peak_tflops: float | None = None
        self.models_folder: str | None = None
        self.setup_error: str | None = None
        self._stage = self._photo_stage = self._fp32 = None

    def setup(self) -> dict[str, Any]:
        """Make the random-weight model set at --size (in a temporary folder, not under --out: a 256 px
        set is 2 GiB) and load the networks; seconds of each step, or the error that stopped it."""
        from unmask_core.bulk.config import BulkConfig
        from unmask_core.bulk.stages import UnmaskingStage
        from unmask_core.inference import Unmasker
        from unmask_core.models.model_set import init_model_set

        seconds: dict[str, float] = {}

        def timed(name: str, build: Callable[[], Any]) -> Any:
            started = time.perf_counter()
            built = build()
            seconds[name] = time.perf_counter() - started
            return built

        try:
            self.models_folder = tempfile.mkdtemp(prefix="gpu_unmask_models_")
            timed("model_set_s", lambda: init_model_set(self.args.size, self.models_folder))
            job = BulkConfig(input="synthetic", output="unused", models=self.models_folder)
            self._stage = timed("stage_load_s", lambda: UnmaskingStage(job))
            self._fp32 = timed(
                "fp32_load_s", lambda: Unmasker(self.models_folder, job.matchers, self.device, bf16=False)
            )
            if self.args.photos is not None:
                photos = dataclasses.replace(job, input="photos", faces="all")
                self._photo_stage = timed(
                    "photo_stage_load_s", lambda: UnmaskingStage(photos, find_faces=True)
                )
        except Exception as exc:
            self.setup_error = f"{type(exc).__name__}: {exc}"
            return {"status": "failed", "error": self.setup_error, **seconds}
        return {"status": "ok", **seconds}

    def _built(self, network):
        if network is None:
            raise RuntimeError(f"setup failed: {self.setup_error}")
        return network

    @property
    def stage(self):
        """The bulk job's UnmaskingStage, as an unmask actor builds it."""
        return self._built(self._stage)

    @property
    def photo_stage(self):
        """The same stage finding the faces of whole photos on the device (faces='all')."""
        return self._built(self._photo_stage)

    @property
    def fp32(self):
        """An Unmasker of the same model set built with bf16 off: fp32 weights, no autocast."""
        return self._built(self._fp32)

    def close(self) -> None:
        if self.models_folder is not None:
            shutil.rmtree(self.models_folder, ignore_errors=True)

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
            rows.append(CAP_NOTE)
            break
        a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        timing = measure(
            lambda a=a, b=b: a @ b, device, max(1.0, plan.warmup_s), plan.trials + 2, 0.1, deadline=deadline
        )
        tflops = 2 * n**3 / timing.seconds / 1e12
        rows.append({"n": n, "tflops": tflops, "ms_per_matmul": timing.seconds * 1e3, "calls": timing.calls})
        del a, b
    measured = [r for r in rows if "tflops" in r]
    if not measured:
        raise RuntimeError("no matmul size was measured within the section's time cap")
    bench.measured_peak_tflops = max(r["tflops"] for r in measured)
    for row in measured:
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


def _precisions(bench: Bench) -> list[tuple[str, Any, bool]]:
    """(name, the Unmasker whose f and g it runs, TF32 on): bf16 first (the job's own networks, where
    they are bf16), then TF32 (only in the CUDA state: NVIDIA's) and fp32 on the fp32 networks."""
    rows = [("bf16", bench.stage.unmasker, False)] if bench.stage.unmasker.bf16 else []
    if bench.cuda_state:
        rows.append(("tf32", bench.fp32, True))
    return rows + [("fp32", bench.fp32, False)]


def _f_g_flops(bench: Bench, model) -> dict[str, float]:
    """FLOPs per image of f, g and f+g (uncompiled modules: the counter sees no compiled graph)."""
    size = bench.args.size
    with torch.inference_mode():
        probe = torch.zeros(1, 3, size, size, device=bench.device)
        codes = model.encode(probe)
        flops = {"f": count_flops(lambda: model.encode(probe)), "g": count_flops(lambda: model.decode(codes))}
    return {**flops, "f+g": flops["f"] + flops["g"]}


def _f_g_calls(
    encode: Callable, decode: Callable, x: torch.Tensor, codes: torch.Tensor
) -> dict[str, Callable]:
    return {"f": lambda: encode(x), "g": lambda: decode(codes), "f+g": lambda: decode(encode(x))}


def _f_g_rows(
    bench: Bench,
    deadline: Deadline,
    precisions: list[tuple[str, Any, bool]],
    flops: dict[str, float],
    compile_networks: bool = False,
    batches: tuple[int, ...] = (),
) -> list[dict]:
    """f (PSP.encode), g (PSP.decode) and f+g of each precision's networks, batch by batch."""
    plan, device = bench.plan, bench.device
    size = bench.args.size
    rows = []
    for batch in batches or plan.batches:
        x = torch.rand(batch, 3, size, size, device=device) * 2 - 1  # contiguous, as Unmasker.run feeds f
        for precision, unmasker, use_tf32 in precisions:
            model = unmasker.model
            encode, decode = model.encode, model.decode
            if compile_networks:
                encode, decode = torch.compile(encode), torch.compile(decode)
            with torch.inference_mode():
                codes = model.encode(x)
            calls = _f_g_calls(encode, decode, x, codes)
            for module in ("f", "g", "f+g"):
                if deadline.passed():
                    return rows + [CAP_NOTE]
                network = {"f": model.encoder, "g": model.decoder, "f+g": model}[module]
                row = {
                    "module": module,
                    "precision": precision,
                    "batch": batch,
                    "weights": weights_dtype(network),
                }
                try:
                    with tf32(use_tf32), torch.inference_mode():
                        timing = measure(
                            calls[module], device, plan.warmup_s, plan.trials, plan.trial_s,
                            plan.warmup_calls, deadline,
                        )  # fmt: skip
                except torch.OutOfMemoryError:
                    bench.free_memory()
                    rows.append({**row, "note": "out of memory"})
                    continue
                except CapReached:
                    return rows + [CAP_NOTE]
                rate = batch / timing.seconds
                rows.append(
                    {
                        **row,
                        "images_per_s": rate,
                        "ms_per_batch": timing.seconds * 1e3,
                        "gflop_per_image": flops[module] / 1e9,
                        **bench.mfu(rate * flops[module]),
                        "peak_memory_gib": timing.peak_memory_gib,
                        **({"compiled": True} if compile_networks else {}),
                        **({"cut": True} if timing.cut else {}),
                    }
                )
            del codes
        del x
        bench.free_memory()
    return rows


def section_f_g(bench: Bench, deadline: Deadline) -> dict:
    flops = _f_g_flops(bench, bench.fp32.model)
    rows = _f_g_rows(bench, deadline, _precisions(bench), flops)
    measured = [r for r in rows if r.get("module") == "f+g" and "images_per_s" in r]
    if not measured:
        return {"summary": "no f+g row measured", "rows": rows}
    best = max(measured, key=lambda r: r["images_per_s"])
    return {
        "summary": f"f+g best {best['images_per_s']:.0f} images/s "
        f"({best['precision']}, batch {best['batch']})",
        "rows": rows,
    }


def _form_rows(bench: Bench, deadline: Deadline, batch: int) -> list[dict]:
    """f in both head forms and g in both modulated forms, the job's networks, at one batch size."""
    from bench.forms import HEAD_FORMS, MODULATED_FORMS, heads_form, modulated_form

    plan, model = bench.plan, bench.stage.unmasker.model
    x = torch.rand(batch, 3, bench.args.size, bench.args.size, device=bench.device) * 2 - 1
    with torch.inference_mode():
        codes = model.encode(x)
    forms = [("f", form, heads_form(model.encoder, form), lambda: model.encode(x)) for form in HEAD_FORMS]
    forms += [
        ("g", form, modulated_form(model.decoder, form), lambda: model.decode(codes))
        for form in MODULATED_FORMS
    ]
    rows = []
    for module, form, forced, call in forms:
        if deadline.passed():
            return rows + [CAP_NOTE]
        row = {"module": module, "form": form, "batch": batch, "weights": weights_dtype(model.encoder)}
        try:
            with forced, torch.inference_mode():
                timing = measure(
                    call, bench.device, plan.warmup_s, plan.trials, plan.trial_s, plan.warmup_calls, deadline
                )
        except torch.OutOfMemoryError:
            bench.free_memory()
            rows.append({**row, "note": "out of memory"})
            continue
        except CapReached:
            return rows + [CAP_NOTE]
        rows.append({**row, "images_per_s": batch / timing.seconds, "ms_per_batch": timing.seconds * 1e3})
    return rows


def section_forms(bench: Bench, deadline: Deadline) -> dict:
    """Both forms of f's heads (one by one, batched per level) and of g's modulated convolutions
    (per-sample weights, shared weight), the job's networks in its precision, at the two largest batch
    sizes: which form the GPU should run, from numbers (docs/gpu.md says which it runs until then)."""
    rows = []
    for batch in bench.plan.batches[:2]:
        rows += _form_rows(bench, deadline, batch)
        bench.free_memory()
        if rows and rows[-1] is CAP_NOTE:
            break
    rate = {(r["module"], r["form"], r["batch"]): r["images_per_s"] for r in rows if "images_per_s" in r}
    ratios = []
    for module, a, b in (("f", "per_head", "batched"), ("g", "per_sample", "shared_weight")):
        for batch in bench.plan.batches[:2]:
            if (module, a, batch) in rate and (module, b, batch) in rate:
                ratios.append(
                    f"{module} {b}/{a} {rate[module, b, batch] / rate[module, a, batch]:.2f}x (batch {batch})"
                )
    return {"summary": "; ".join(ratios) or "no pair of forms measured", "rows": rows}


def _stage_table(shard: np.ndarray) -> pa.Table:
    """A shard of aligned faces as the face-finding stage hands it to the unmask stage."""
    from unmask_core.bulk.rows import stage_table

    base = {"shard": 0, "shard_inputs": len(shard), "source_uri": "synthetic", "input_rows": 1}
    records = [
        dict(base, id=f"face{i}", status="ok", error="", face_index=0, face=face.tobytes())
        for i, face in enumerate(shard)
    ]
    return stage_table(records)


def stage_flops(bench: Bench) -> float:
    """FLOPs per face of the unmask stage's compute (f, g, the matchers on M and U), counted on the
    uncompiled job stage (the counter sees no compiled graph; compiling changes no FLOP)."""
    return count_flops(lambda: bench.stage.unmasker.run(synthetic_faces(1, 256), 1))


def _stage_rows(
    bench: Bench, deadline: Deadline, stage, shapes: tuple[tuple[int, int] | None, ...], flops: float
) -> list[dict]:
    """One row per (shard size, batch size) of `stage`, in the plan's order; None: the job's defaults."""
    base_cfg = stage.cfg
    sizes = [shape or job_stage_shape() for shape in shapes]
    faces = synthetic_faces(max(shard for shard, _ in sizes), 256)
    rows = []
    for (shard_size, batch_size), flags in zip(sizes, shapes):
        if deadline.passed():
            rows.append(CAP_NOTE)
            break
        # The stage reads its batch size from its config, as an actor does.
        stage.cfg = dataclasses.replace(base_cfg, batch_size=batch_size, shard_size=shard_size)
        shard = faces[:shard_size]
        row = {
            "config": "job defaults" if flags is None else "flags",
            "shard_size": shard_size,
            "batch_size": batch_size,
            "device": stage.unmasker.device.type,
            "bf16": stage.unmasker.bf16,
            "weights": weights_dtype(stage.unmasker.model),
            **({"compiled": True} if stage.unmasker.compiled else {}),
        }
        try:
            row.update(_measure_stage(bench, stage, _stage_table(shard), shard, batch_size, flops, deadline))
        except torch.OutOfMemoryError:
            row["note"] = "out of memory"
        except CapReached:
            rows.append(CAP_NOTE)
            break
        rows.append(row)
        bench.free_memory()
    stage.cfg = base_cfg
    return rows


def _measure_stage(
    bench: Bench, stage, table: pa.Table, faces: np.ndarray, batch_size: int, flops: float, deadline: Deadline
) -> dict:
    unmasker, plan = stage.unmasker, bench.plan
    device = unmasker.device.type
    whole = measure(
        lambda: stage(table), device, plan.warmup_s, plan.trials, 0.0, plan.warmup_calls, deadline
    )
    compute = measure(lambda: unmasker.run(faces, batch_size), device, 0.0, plan.trials, 0.0, 1, deadline)
    rate = len(faces) / whole.seconds
    return {
        "images_per_s": rate,
        "compute_images_per_s": len(faces) / compute.seconds,
        "ms_per_shard": whole.seconds * 1e3,
        "gflop_per_image": flops / 1e9,
        **bench.mfu(rate * flops),
        "peak_memory_gib": max(whole.peak_memory_gib, compute.peak_memory_gib),
        **({"cut": True} if whole.cut or compute.cut else {}),
    }


def _best_row(rows: list[dict], rate: str, what: str) -> dict:
    """The row with the highest `rate`; a section that measured none has failed."""
    measured = [r for r in rows if rate in r]
    if not measured:
        raise RuntimeError(f"no {what} row measured: {rows}")
    return max(measured, key=lambda r: r[rate])


def section_unmask_stage(bench: Bench, deadline: Deadline) -> dict:
    rows = _stage_rows(bench, deadline, bench.stage, bench.plan.stage_shapes, stage_flops(bench))
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
            rows.append(CAP_NOTE)
            break
        try:
            rows.append(_photo_row(bench, [files[i % len(files)] for i in range(batch)], deadline))
        except CapReached:
            rows.append(CAP_NOTE)
            break
        bench.free_memory()
    best = _best_row(rows, "faces_per_s", "photo")
    return {
        "summary": f"best {best['faces_per_s']:.0f} faces/s, {best['photos_per_s']:.0f} photos/s "
        f"({best['photos']} photos a call); goal {GOALS['unmask_stage']}",
        "what": "UnmaskingStage(find_faces=True).__call__ on photos from --photos: JPEG decode (on the "
        "device, the CPU where the device refuses one), MTCNN and the alignment warp on the device, then "
        "f, g and the matchers on every face (faces='all'); finding_photos_per_s is the face finding alone",
        "rows": rows,
    }


def _photo_row(bench: Bench, files: list[Path], deadline: Deadline) -> dict:
    from unmask_core.bulk.device_faces import photo_for_device
    from unmask_core.bulk.rows import stage_table

    stage = bench.photo_stage
    base = {"shard": 0, "shard_inputs": len(files), "input_rows": 1, "status": "ok", "error": ""}
    records = [
        dict(
            base, id=f"photo{i}", source_uri=f.name, **photo_for_device(f.read_bytes(), stage.cfg.max_pixels)
        )
        for i, f in enumerate(files)
    ]
    table = stage_table(records)
    stage.face_finder.decoded.clear()
    outputs: list[pa.Table] = []  # the first call's rows say how many faces each call unmasks
    plan, device = bench.plan, stage.unmasker.device.type
    whole = measure(
        lambda: outputs.append(stage(table)),
        device,
        plan.warmup_s,
        plan.trials,
        0.0,
        plan.warmup_calls,
        deadline,
    )
    faces = outputs[0].column("status").to_pylist().count("ok")
    decoded = {where: n // len(outputs) for where, n in stage.face_finder.decoded.items()}  # per call
    finding = measure(lambda: stage.face_finder(table), device, 0.0, plan.trials, 0.0, 1, deadline)
    return {
        "photos": len(files),
        "jpegs": sum(r["jpeg"] is not None for r in records),
        "decoded_on_device": decoded.get("device", 0),
        "decoded_on_cpu": decoded.get("cpu", 0),
        "faces": faces,
        "batch_size": stage.cfg.batch_size,
        "photos_per_s": len(files) / whole.seconds,
        "faces_per_s": faces / whole.seconds,
        "finding_photos_per_s": len(files) / finding.seconds,
        "peak_memory_gib": max(whole.peak_memory_gib, finding.peak_memory_gib),
        **({"cut": True} if whole.cut or finding.cut else {}),
    }


def psnr(a: np.ndarray, b: np.ndarray) -> float | None:
    """PSNR in dB of two uint8-valued images; None when they are equal (no finite value)."""
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return 10 * math.log10(255**2 / mse) if mse > 0 else None


def section_numerics(bench: Bench, deadline: Deadline) -> dict:
    """U and embeddings of the job's networks (bf16 in the CUDA state) against the same weights built
    without bf16 (fp32 weights, no autocast, TF32 off), on the same faces."""
    from unmask_core.inference import to_tensor, to_uint8

    job, reference = bench.stage.unmasker, bench.fp32
    if not job.bf16:
        raise SectionSkipped("the job's networks are fp32 here (no CUDA state): nothing to compare")
    faces = synthetic_faces(bench.plan.numerics_faces, 256, seed=1)
    outputs = {}
    for precision, unmasker in (("fp32", reference), ("bf16", job)):
        deadline.check()
        with tf32(False), torch.inference_mode():
            unmasked = unmasker.unmask(to_tensor(faces, unmasker.image_size, unmasker.device))
            # The matchers as Unmasker.run feeds them U: each in its network's own precision.
            embeddings = {name: m.embed(unmasked.clamp(-1, 1)) for name, m in unmasker.matchers.items()}
        outputs[precision] = (to_uint8(unmasked), embeddings, weights_dtype(unmasker.model))
    (u32, e32, w32), (u16, e16, w16) = outputs["fp32"], outputs["bf16"]
    per_face = [psnr(a, b) for a, b in zip(u32, u16)]
    finite = [p for p in per_face if p is not None]
    rows = [
        {
            "measure": "PSNR of U (uint8, dB)",
            "mean": float(np.mean(finite)) if finite else None,
            "min": float(np.min(finite)) if finite else None,
            "identical_faces": len(per_face) - len(finite),  # bf16 equal to fp32: a sign of no bf16 at all
        }
    ]
    for name in e32:
        a, b = e32[name], e16[name]
        cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
        rows.append(
            {
                "measure": f"cosine of {name} embedding",
                "mean": float(cosine.mean()),
                "min": float(cosine.min()),
            }
        )
    psnr_text = f"PSNR {rows[0]['mean']:.1f} dB" if finite else "U identical in bf16 and fp32"
    return {
        "summary": f"{psnr_text}; "
        + ", ".join(f"{r['measure'].split()[2]} cosine {r['min']:.4f} min" for r in rows[1:]),
        "faces": len(faces),
        "weights": {"reference": w32, "job": w16},
        "rows": rows,
    }


def section_train(bench: Bench, deadline: Deadline) -> dict:
    """Stage unmask, full loss, one optimizer step as train_loop takes it, at several batch sizes."""
    try:
        importlib.import_module("lpips")
    except ImportError as exc:
        raise SectionSkipped(f"LPIPS needs the lpips package ({exc}); see docs/gpu.md, gpu_wheels") from None
    # The training module's own config, models, step, precision and optimizer: the imports to follow.
    from unmask_core.training.config import TrainConfig
    from unmask_core.training.loop import build_training_models, make_optimizer, step_autocast, training_step

    device, plan = torch.device(bench.device), bench.plan
    if bench.models_folder is None or bench.setup_error:
        raise RuntimeError(f"setup failed: {bench.setup_error}")
    cfg = TrainConfig(
        stage="unmask", pairs="synthetic", models=bench.models_folder, output="unused",
        lpips_backbone="random", gpu=bench.cuda_state, batch_size=max(plan.train_batches),
    )  # fmt: skip
    parts = build_training_models(cfg, device)
    optimizer = make_optimizer(parts.encoder, cfg.lr, device)
    autocast = step_autocast(cfg, device)
    size = bench.args.size
    faces = synthetic_faces(max(plan.train_batches), size, seed=2)
    full = torch.from_numpy(faces).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(device)
    rows = []
    flops_per_sample = None
    for batch_size in plan.train_batches:
        if deadline.passed():
            rows.append(CAP_NOTE)
            break
        masked = full[:batch_size]
        batch = {"M": masked, "T": masked.flip(2)}  # any T: only shapes matter for speed

        def step(batch=batch) -> None:
            with autocast:
                loss, _ = training_step(
                    cfg.stage, batch, parts.encoder, parts.generator, parts.teacher, parts.criterion
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        row = {"batch": batch_size}
        try:
            if flops_per_sample is None:  # forward and backward: the same per sample at any batch size
                flops_per_sample = count_flops(step) / batch_size
            # One step per trial: at least train_steps timed steps after the warm-up.
            timing = measure(
                step, device.type, plan.warmup_s, plan.train_steps, 0.0, plan.warmup_calls, deadline
            )
        except torch.OutOfMemoryError:
            bench.free_memory()
            rows.append({**row, "note": "out of memory"})
            continue
        except CapReached:
            rows.append(CAP_NOTE)
            break
        rate = batch_size / timing.seconds
        rows.append(
            {
                **row,
                "samples_per_s": rate,
                "ms_per_step": timing.seconds * 1e3,
                "steps": timing.calls,
                "gflop_per_sample": flops_per_sample / 1e9,
                **bench.mfu(rate * flops_per_sample),
                "peak_memory_gib": timing.peak_memory_gib,
                **({"cut": True} if timing.cut else {}),
            }
        )
    best = _best_row(rows, "samples_per_s", "training")
    return {
        "summary": f"best {best['samples_per_s']:.1f} samples/s (batch {best['batch']}); "
        f"goal {GOALS['train']}",
        "what": "training_step (L2 + LPIPS + ID + L_LR, f0 teacher), backward and the fused Adam step, "
        "autocast as train_loop (step_autocast); LPIPS AlexNet random (speed only)",
        "precision": "bf16 autocast" if cfg.gpu else "fp32",
        "rows": rows,
    }


def section_compiled(bench: Bench, deadline: Deadline) -> dict:
    """The stage at the job's defaults as `--compile` builds it, then f, g and f+g of the job's networks
    torch.compile'd, bf16 only (the job's precision: every other one would compile everything again)."""
    if not bench.args.compile:
        raise SectionSkipped("--compile not given")
    from unmask_core.bulk.stages import UnmaskingStage

    compiled_stage = UnmaskingStage(dataclasses.replace(bench.stage.cfg, compile=True))
    shape = bench.plan.stage_shapes[0]
    rows = _stage_rows(bench, deadline, compiled_stage, (shape,), stage_flops(bench))
    del compiled_stage
    bench.free_memory()
    job = [p for p in _precisions(bench) if p[0] == "bf16"]
    # The stage's micro-batch size first (its compiled shape in the job), then the largest.
    stage_batch = (shape or job_stage_shape())[1]
    batches = tuple(dict.fromkeys([stage_batch, *bench.plan.batches]))
    rows += _f_g_rows(bench, deadline, job, _f_g_flops(bench, bench.stage.unmasker.model), True, batches)
    stage = [r for r in rows if "shard_size" in r and "images_per_s" in r]
    summary = f"stage {stage[0]['images_per_s']:.0f} faces/s compiled" if stage else "no stage row measured"
    return {"summary": summary, "rows": rows}


SECTION_FUNCTIONS = {
    "peak": section_peak,
    "f_g": section_f_g,
    "forms": section_forms,
    "unmask_stage": section_unmask_stage,
    "photos": section_photos,
    "numerics": section_numerics,
    "train": section_train,
    "compiled": section_compiled,
}


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
        "--cuda-state",
        action="store_true",
        help=f"on the CPU, take every path CUDA takes (sets {CUDA_STATE_ENV}=1): the dry run's mode",
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
    if args.cuda_state:
        os.environ[CUDA_STATE_ENV] = "1"
    args.out.mkdir(parents=True, exist_ok=True)
    bench = Bench(args)
    planned = time_plan(bench.plan)
    print(format_time_plan(planned), flush=True)
    meta = {
        "machine": machine_description(),
        "device": args.device,
        "device_name": bench.device_name,
        "cuda_state": bench.cuda_state,
        "command": " ".join(["python -m bench.gpu_unmask", *(argv if argv is not None else sys.argv[1:])]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
        "packages": package_versions(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "plan": dataclasses.asdict(bench.plan),
        "time_plan": planned,
        "goals": GOALS,
        "planned": list(SECTIONS),
    }
    report = Report(args.out, meta)
    report.write()
    started = time.perf_counter()
    try:
        print("== setup: the model set made and the networks loaded (no cap)", flush=True)
        meta["setup"] = bench.setup()
        print(f"setup: {meta['setup']}", flush=True)
        report.write()
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
    return 1 if failed or meta["setup"]["status"] != "ok" else 0


if __name__ == "__main__":
    raise SystemExit(main())
