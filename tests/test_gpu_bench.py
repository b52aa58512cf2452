"""The one-shot GPU benchmark (bench/gpu_unmask.py): its CPU dry run runs every section, writes its
results after each, and needs none of the packages the GPU machine's image lacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import REPO_ROOT
from unmask_core.faces.samples import sample_photo

# Missing on the GPU image (docs/gpu.md); lpips and facenet-pytorch travel there as wheels.
ABSENT_ON_GPU_IMAGE = ("ray", "s3fs", "insightface")


def blocked_python(blocked: tuple[str, ...], code: str) -> str:
    """Python source that makes importing any of `blocked` fail, as on a machine without them, then
    runs `code`."""
    return textwrap.dedent(f"""
        import sys

        class BlockImports:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {blocked!r}:
                    raise ImportError(f"{{name}} is blocked: not installed on the GPU image")
                return None

        sys.meta_path.insert(0, BlockImports())
    """) + textwrap.dedent(code)


def run_python(source: str, *args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", source, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )


def test_cpu_dry_run_runs_every_section_without_ray_s3fs_or_insightface(tmp_path: Path) -> None:
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
        source, "--device", "cpu", "--size", "64", "--quick", "--photos", str(photos), "--out", str(out),
        timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "LOADED []" in result.stdout

    report = json.loads((out / "gpu_unmask.json").read_text())
    statuses = {name: section["status"] for name, section in report["sections"].items()}
    assert statuses == {
        "peak": "ok",
        "f_g": "ok",
        "unmask_stage": "ok",
        "photos": "ok",
        "numerics": "ok",
        "train": "ok",
        "compiled": "skipped",
    }, {n: s.get("error") for n, s in report["sections"].items()}
    assert report["sections"]["compiled"]["reason"] == "--compile not given"
    sections = report["sections"]
    assert sections["peak"]["measured_peak_tflops"] > 0
    assert {(r["module"], r["precision"]) for r in sections["f_g"]["rows"]} == {
        (m, p) for m in ("f", "g", "f+g") for p in ("fp32", "bf16")
    }
    stage = sections["unmask_stage"]["rows"][0]
    assert stage["images_per_s"] > 0 and stage["gflop_per_image"] > 0
    # Two copies of a group photo of 6 faces, both decoded and searched on the "device".
    photo_row = sections["photos"]["rows"][0]
    assert (photo_row["photos"], photo_row["decoded_on_device"], photo_row["faces"]) == (2, 2, 12)
    assert photo_row["faces_per_s"] > 0 and photo_row["finding_photos_per_s"] > photo_row["photos_per_s"]
    psnr = sections["numerics"]["rows"][0]
    assert psnr["measure"].startswith("PSNR") and psnr["min"] > 20  # bf16 is close to fp32, not equal
    assert [r["measure"] for r in sections["numerics"]["rows"][1:]] == [
        "cosine of arcface embedding",
        "cosine of facenet embedding",
    ]
    assert sections["train"]["rows"][0]["samples_per_s"] > 0
    assert sections["train"]["rows"][0]["steps"] >= 2

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
