"""What the one-shot GPU benchmark measures, and a time plan that shows it fits the shot.

A lent GPU gives one call of at most 9 minutes (docs/gpu.md), the machine's start included in the
session's device time. `make_plan` sizes every section; `time_plan` estimates each section's seconds on
an H200 from its rows and FLOPs (the counts of bench/flops.py, in BENCHMARKS.md) with the throughputs
assumed below, caps each at its time cap plus one call, and adds the setup and the machine's start. The
run prints it first and records it in its JSON; tests/test_gpu_bench.py checks that the full plan fits.
"""

from __future__ import annotations

import dataclasses

# In the order they run: the goals' sections first (after the quick yardstick that MFU needs), so that
# a run cut short loses the least valuable ones; compiling, whose length is hardest to foresee, last.
SECTIONS = ("peak", "unmask_stage", "train", "photos", "numerics", "f_g", "forms", "compiled")

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


# Seconds after which a section starts no new call (measure() checks between calls, so a section ends
# at most one call past its cap). They leave the shot's budget a margin: see time_plan.
CAPS = {
    "peak": 15,
    "f_g": 70,
    "forms": 25,
    "unmask_stage": 55,
    "photos": 40,
    "numerics": 15,
    "train": 55,
    "compiled": 90,
}


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much each section measures; `--quick` and the CPU shrink it. Batch sizes come largest
    first and precisions bf16 first (the job's own): a section cut by its cap loses the least
    valuable rows."""

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
    caps: dict[str, float]


def make_plan(device: str, quick: bool) -> Plan:
    if device == "cuda" and not quick:
        return Plan(
            matmul_sizes=(8192, 16384, 4096),
            batches=(256, 64, 16),
            stage_shapes=((512, 256), (256, 128), None, (256, 64)),
            photo_batches=(64, 16),
            numerics_faces=64,
            train_batches=(32, 16, 8),
            train_steps=10,
            warmup_s=0.5,
            warmup_calls=2,
            trials=5,
            trial_s=0.2,
            caps=CAPS,
        )
    half_caps = {name: cap / 2 for name, cap in CAPS.items()}
    if device == "cuda":
        return Plan((8192, 4096), (32,), (None,), (16,), 16, (32, 8), 10, 0.3, 2, 3, 0.1, half_caps)
    if not quick:
        return Plan((512, 256), (32, 8), (None,), (4,), 16, (32, 16, 8), 10, 0.3, 2, 3, 0.2, CAPS)
    # The CI dry run: every code path once, in about a minute on two cores; a CPU's MTCNN takes seconds
    # a photo, so the caps are the GPU's, not halved.
    return Plan((256,), (2,), ((4, 2),), (2,), 4, (4, 2), 2, 0.0, 1, 1, 0.0, CAPS)


# ---------------------------------------------------------------- the time plan (an H200)

# GFLOP per image (bench/flops.py, 256 px set) and per training sample (stage unmask, forward and
# backward, counted with the same counter).
GFLOP = {"f": 119.2, "g": 90.7, "arcface": 12.6, "facenet": 2.9, "train_sample": 774.0}
# Assumed sustained TFLOP/s on an H200 for these convolutional networks (a third of the bf16 spec with
# bf16; TF32 at a quarter of its 494; fp32 without tensor cores at two thirds of 67), and the training
# step's (backward included).
TFLOPS = {"bf16": 330.0, "tf32": 120.0, "fp32": 45.0, "train": 200.0}
PEAK_FRACTION = 0.7  # of the spec, for the dense matmul yardstick
AUTOTUNE_S = 1.0  # cuDNN's search at a new shape and precision
HOST_S_PER_FACE = 0.5e-3  # the stage's Arrow rows, uploads and downloads, per face
DEVICE_FINDING_S_PER_PHOTO = 0.04  # nvJPEG, MTCNN (facenet-pytorch's Python loops) and the warp
COMPILE_S = 45.0  # torch.compile of f, g and the matchers at one shape
# Before the first section: the wheels' install, imports, the 2 GiB model set, three loads of it.
SETUP_S = 45.0
MACHINE_START_S = 90.0  # "a minute or more" (docs/gpu.md)
RUN_LIMIT_S = 540.0  # `timeout -s INT 540` in docs/gpu.md's command
REQUIRED_SPARE_S = 60.0


def measure_seconds(
    call_s: float, plan: Plan, trials: int | None = None, trial_s: float | None = None
) -> float:
    """What measure() spends on a call of `call_s` seconds: its warm-up, then its trials."""
    trials = plan.trials if trials is None else trials
    trial_s = plan.trial_s if trial_s is None else trial_s
    warmup = max(plan.warmup_s, plan.warmup_calls * call_s)
    return warmup + trials * max(trial_s, call_s) + AUTOTUNE_S


def job_stage_shape() -> tuple[int, int]:
    """(shard size, batch size) of the `unmask` job's defaults: the stage rows' None shape."""
    from unmask_core.bulk.config import BulkConfig

    defaults = BulkConfig()
    return defaults.shard_size, defaults.batch_size


def _stage_call_s(faces: int) -> float:
    matchers = 2 * (GFLOP["arcface"] + GFLOP["facenet"])  # on M and on U
    return faces * ((GFLOP["f"] + GFLOP["g"] + matchers) * 1e9 / (TFLOPS["bf16"] * 1e12) + HOST_S_PER_FACE)


def section_estimates(plan: Plan, spec_tflops: float = 989.0) -> dict[str, dict[str, float]]:
    """{section: {"rows", "estimate_s", "cap_s", "planned_s"}}; planned = min(estimate, cap + a call)."""
    sections: dict[str, tuple[int, float, float]] = {}  # rows, estimate, longest call
    peak = [2 * n**3 / (spec_tflops * PEAK_FRACTION * 1e12) for n in plan.matmul_sizes]
    sections["peak"] = (
        len(peak),
        sum(measure_seconds(t, plan, plan.trials + 2, 0.1) + max(1.0, plan.warmup_s) for t in peak),
        max(peak),
    )
    f_g_calls = []
    for batch in plan.batches:
        for precision in ("bf16", "tf32", "fp32"):
            f, g = (batch * GFLOP[part] * 1e9 / (TFLOPS[precision] * 1e12) for part in ("f", "g"))
            f_g_calls += [f, g, f + g]
    sections["f_g"] = (len(f_g_calls), sum(measure_seconds(t, plan) for t in f_g_calls), max(f_g_calls))
    # Per-sample weights move more bytes: timed as if at fp32's rate (their case rests on bytes).
    form_calls = [
        batch * GFLOP[part] * 1e9 / (TFLOPS[precision] * 1e12)
        for batch in plan.batches[:2]
        for part in ("f", "g")
        for precision in ("bf16", "fp32")
    ]
    sections["forms"] = (len(form_calls), sum(measure_seconds(t, plan) for t in form_calls), max(form_calls))
    shapes = [shape or job_stage_shape() for shape in plan.stage_shapes]
    stage = [_stage_call_s(shard) for shard, _ in shapes]
    sections["unmask_stage"] = (
        len(stage),
        sum(measure_seconds(t, plan, trial_s=0.0) + plan.trials * t for t in stage),
        max(stage),
    )
    photo = [n * DEVICE_FINDING_S_PER_PHOTO + _stage_call_s(n) for n in plan.photo_batches]
    # A first call counts the faces; the whole stage is measured, then the finding alone.
    sections["photos"] = (
        len(photo),
        sum(t + measure_seconds(t, plan, trial_s=0.0) + plan.trials * t for t in photo),
        max(photo),
    )
    numerics = 2 * _stage_call_s(plan.numerics_faces)
    sections["numerics"] = (1 + 2, numerics + 2 * AUTOTUNE_S, numerics)
    train = [b * GFLOP["train_sample"] * 1e9 / (TFLOPS["train"] * 1e12) for b in plan.train_batches]
    sections["train"] = (
        len(train),
        5.0 + sum(measure_seconds(t, plan, plan.train_steps, 0.0) for t in train),
        max(train),
    )
    compiled_rows = 1 + 3 * (len(set(plan.batches) | {shapes[0][1]}))
    compiled = COMPILE_S * (1 + len(set(plan.batches) | {shapes[0][1]})) + stage[0] * 10
    sections["compiled"] = (compiled_rows, compiled, COMPILE_S)
    out = {}
    for name in SECTIONS:
        rows, estimate, longest = sections[name]
        planned = min(estimate, plan.caps[name] + longest)
        out[name] = {"rows": rows, "estimate_s": estimate, "cap_s": plan.caps[name], "planned_s": planned}
    return out


def time_plan(plan: Plan, sections: tuple[str, ...] = SECTIONS) -> dict:
    """The whole shot on an H200: setup, each section's planned seconds, the machine's start, and the
    spare under the run's time limit."""
    estimates = {name: v for name, v in section_estimates(plan).items() if name in sections}
    run_s = SETUP_S + sum(v["planned_s"] for v in estimates.values())
    return {
        "device": "H200 (estimated)",
        "setup_s": SETUP_S,
        "sections": estimates,
        "run_s": run_s,
        "machine_start_s": MACHINE_START_S,
        "total_s": run_s + MACHINE_START_S,
        "limit_s": RUN_LIMIT_S,
        "spare_s": RUN_LIMIT_S - run_s - MACHINE_START_S,
        "required_spare_s": REQUIRED_SPARE_S,
    }


def format_time_plan(plan: dict) -> str:
    lines = [
        f"time plan on an H200 (estimated): setup {plan['setup_s']:.0f} s",
        "  section        rows  estimate  cap  planned",
    ]
    for name, v in plan["sections"].items():
        seconds = f"{v['estimate_s']:>8.0f}s {v['cap_s']:>4.0f}s {v['planned_s']:>7.0f}s"
        lines.append(f"  {name:<13} {v['rows']:>5} {seconds}")
    lines.append(
        f"  run {plan['run_s']:.0f} s + machine start {plan['machine_start_s']:.0f} s = "
        f"{plan['total_s']:.0f} s of {plan['limit_s']:.0f} s: {plan['spare_s']:.0f} s spare "
        f"(at least {plan['required_spare_s']:.0f} s wanted)"
    )
    return "\n".join(lines)
