"""The one-shot GPU benchmark (bench/gpu_unmask.py): its CPU dry run runs every section, writes its
results after each, and needs none of the packages the GPU machine's image lacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.support.imports import blocked_python
from unmask_core.faces.samples import sample_photo

# Missing on the GPU image (docs/gpu.md); lpips and facenet-pytorch travel there as wheels.
ABSENT_ON_GPU_IMAGE = ("ray", "s3fs", "insightface")


def run_python(source: str, *args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", source, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )


def strict_json(text: str) -> dict:
    """JSON that holds only finite numbers (json.loads would take NaN and Infinity)."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"non-finite number in the JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_cuda_state_dry_run_runs_every_section_without_ray_s3fs_or_insightface(tmp_path: Path) -> None:
    """The dry run in the CUDA state (backend flags set as on a GPU, bf16 weights, NHWC, bf16 matchers,
    device decode, fused Adam): what a GPU would run, every section ok."""
    run_bench = """
        import runpy
        sys.argv = ["bench.gpu_unmask", *sys.argv[1:]]
        try:
            runpy.run_module("bench.gpu_unmask", run_name="__main__")
        finally:
            loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
            print("LOADED", loaded)
    """.replace("BLOCKED", repr(ABSENT_ON_GPU_IMAGE))
    source = blocked_python(ABSENT_ON_GPU_IMAGE, run_bench)
    photos = tmp_path / "photos"  # as docs/gpu.md has them copied next to the wheels
    photos.mkdir()
    (photos / "t1.jpg").write_bytes(sample_photo("t1.jpg").read_bytes())
    out = tmp_path / "out"
    result = run_python(
        source, "--device", "cpu", "--size", "64", "--quick", "--cuda-state", "--photos", str(photos),
        "--out", str(out), timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "LOADED []" in result.stdout

    report = strict_json((out / "gpu_unmask.json").read_text())
    assert report["cuda_state"] is True
    statuses = {name: section["status"] for name, section in report["sections"].items()}
    assert statuses == {
        "peak": "ok",
        "unmask_stage": "ok",
        "train": "ok",
        "photos": "ok",
        "numerics": "ok",
        "f_g": "ok",
        "forms": "ok",
        "compiled": "skipped",
    }, {n: s.get("error") for n, s in report["sections"].items()}
    assert report["sections"]["compiled"]["reason"] == "--compile not given"
    # The model set was made and loaded before the first section, timed on its own.
    assert report["setup"]["status"] == "ok" and report["setup"]["model_set_s"] > 0
    assert (
        "time plan on an H200" in result.stdout and report["time_plan"]["sections"].keys() == statuses.keys()
    )
    sections = report["sections"]
    assert sections["peak"]["measured_peak_tflops"] > 0
    # bf16 rows run the job's bf16 networks; TF32 and fp32 rows networks built without bf16.
    f_g = sections["f_g"]["rows"]
    assert [(r["module"], r["precision"], r["weights"]) for r in f_g] == [
        (m, p, w)
        for p, w in (("bf16", "bfloat16"), ("tf32", "float32"), ("fp32", "float32"))
        for m in ("f", "g", "f+g")
    ]
    # Both forms of f and of g, on the job's bf16 networks.
    forms = sections["forms"]["rows"]
    assert [(r["module"], r["form"], r["weights"]) for r in forms] == [
        ("f", "per_head", "bfloat16"),
        ("f", "batched", "bfloat16"),
        ("g", "per_sample", "bfloat16"),
        ("g", "shared_weight", "bfloat16"),
    ]
    assert all(r["images_per_s"] > 0 for r in forms)
    assert "f batched/per_head" in sections["forms"]["summary"]
    stage = sections["unmask_stage"]["rows"][0]
    assert (stage["bf16"], stage["weights"]) == (True, "bfloat16")
    assert stage["images_per_s"] > 0 and stage["gflop_per_image"] > 0
    # Two copies of a group photo of 6 faces, both decoded and searched on the "device".
    photo_row = sections["photos"]["rows"][0]
    assert (photo_row["photos"], photo_row["decoded_on_device"], photo_row["decoded_on_cpu"]) == (2, 2, 0)
    assert photo_row["faces"] == 12
    assert photo_row["faces_per_s"] > 0 and photo_row["finding_photos_per_s"] > photo_row["photos_per_s"]
    numerics = sections["numerics"]
    assert numerics["weights"] == {"reference": "float32", "job": "bfloat16"}
    psnr = numerics["rows"][0]
    assert psnr["measure"].startswith("PSNR") and psnr["identical_faces"] == 0
    assert 20 < psnr["min"] < 80  # bf16 is close to true fp32, not equal
    assert [r["measure"] for r in numerics["rows"][1:]] == [
        "cosine of arcface embedding",
        "cosine of facenet embedding",
    ]
    train = sections["train"]
    assert train["precision"] == "bf16 autocast"
    assert train["rows"][0]["samples_per_s"] > 0 and train["rows"][0]["steps"] >= 1
    assert train["rows"][0]["gflop_per_sample"] > 0 and train["rows"][0]["mfu_measured_peak"] > 0

    markdown = (out / "gpu_unmask.md").read_text()
    for name in statuses:
        assert f"## {name}: {statuses[name]}" in markdown
    # Each section was printed as it ended, in order.
    printed = [line.split(":")[0][3:] for line in result.stdout.splitlines() if line.startswith("## ")]
    assert printed == list(statuses)


def test_bench_imports_and_skips_training_without_the_wheels(tmp_path: Path) -> None:
    """Without even lpips and facenet-pytorch (the wheels forgotten), the bench and the library
    modules it uses still import, and the training section says why it is skipped."""
    source = blocked_python(
        (*ABSENT_ON_GPU_IMAGE, "lpips", "facenet_pytorch"),
        f"""
        import argparse
        import unmask_core.bulk.stages, unmask_core.inference, unmask_core.matchers, unmask_core.training.loop
        import unmask_core.models.model_set
        import bench.gpu_unmask as gpu

        args = argparse.Namespace(device="cpu", size=64, quick=True, compile=False, out={str(tmp_path)!r})
        try:
            gpu.section_train(gpu.Bench(args), gpu.Deadline(60))
        except gpu.SectionSkipped as exc:
            print("SKIPPED", exc)
        """,
    )
    result = run_python(source, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "SKIPPED LPIPS needs the lpips package" in result.stdout


def test_the_full_gpu_plan_fits_the_shot_with_a_minute_to_spare() -> None:
    from bench.gpu_plan import SECTIONS, make_plan, time_plan

    plan = time_plan(make_plan("cuda", quick=False))
    assert list(plan["sections"]) == list(SECTIONS)
    for name, section in plan["sections"].items():
        assert 0 < section["planned_s"] <= section["estimate_s"], name
    assert plan["total_s"] == plan["run_s"] + plan["machine_start_s"]
    assert plan["spare_s"] >= 60


def test_the_most_valuable_rows_come_first() -> None:
    """The job's precision and the largest batches first: a section cut by its cap loses the rest."""
    from bench.gpu_plan import SECTIONS, make_plan

    plan = make_plan("cuda", quick=False)
    assert plan.batches == tuple(sorted(plan.batches, reverse=True))
    assert plan.train_batches == tuple(sorted(plan.train_batches, reverse=True))
    assert plan.photo_batches == tuple(sorted(plan.photo_batches, reverse=True))
    assert plan.stage_shapes[0] == max(s for s in plan.stage_shapes if s)
    assert plan.matmul_sizes[0] == 8192  # large enough to show the peak, quicker than 16384
    # The goals' sections right after the yardstick; compiling last.
    assert SECTIONS[:3] == ("peak", "unmask_stage", "train") and SECTIONS[-1] == "compiled"


class CallDeadline:
    """A deadline that passes after `calls` calls of the measured function (no clock involved)."""

    def __init__(self, calls: int) -> None:
        self.calls, self.limit = 0, calls

    def call(self) -> None:
        self.calls += 1

    def passed(self) -> bool:
        return self.calls >= self.limit

    def check(self) -> None:
        from bench.gpu_measure import CapReached

        if self.passed():
            raise CapReached


def test_a_cap_stops_a_row_within_one_call() -> None:
    import bench.gpu_measure as gpu

    # Passed during the trials: they stop, the row keeps what was timed and says it was cut.
    deadline = CallDeadline(3)
    timing = gpu.measure(deadline.call, "cpu", 0.0, trials=10, trial_s=0.0, warmup_calls=2, deadline=deadline)
    assert (deadline.calls, timing.calls, timing.cut) == (3, 1, True)
    # Passed during the warm-up: no call is timed, and none is made past the cap.
    deadline = CallDeadline(1)
    with pytest.raises(gpu.CapReached):
        gpu.measure(deadline.call, "cpu", 0.0, trials=10, trial_s=0.0, warmup_calls=2, deadline=deadline)
    assert deadline.calls == 1


def test_a_section_that_measured_no_row_says_so(tmp_path: Path) -> None:
    import argparse

    import bench.gpu_unmask as gpu

    args = argparse.Namespace(device="cpu", size=64, quick=True, compile=False, photos=None, out=tmp_path)
    bench = gpu.Bench(args)
    try:
        assert bench.setup()["status"] == "ok"
        result = gpu.section_f_g(bench, gpu.Deadline(0))
    finally:
        bench.close()
    assert result["summary"] == "no f+g row measured"
    assert result["rows"][-1] == {"note": "section time cap reached; later rows not measured"}


def test_the_report_writes_non_finite_numbers_as_null(tmp_path: Path) -> None:
    from bench.gpu_report import Report

    report = Report(tmp_path, {"machine": "m", "command": "c", "started": "s", "planned": ["x"]})
    report.record(
        "x", {"status": "ok", "seconds": 1.0, "rows": [{"psnr": float("inf"), "rate": float("nan")}]}
    )
    rows = strict_json((tmp_path / "gpu_unmask.json").read_text())["sections"]["x"]["rows"]
    assert rows == [{"psnr": None, "rate": None}]
