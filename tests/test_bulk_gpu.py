"""The bulk job where GPUs are declared: a local Ray of its own that declares one GPU (torch falls back to
the CPU inside the actors), in the CUDA state (bf16 weights, NHWC, bf16 matchers, device decode: what the
actors do on a GPU), with one unmask actor per GPU and with two actors sharing it. Ray refuses some plans
only when GPUs are requested, which a CPU-only CI never sees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.images import encode
from unmask_core.accelerator import CUDA_STATE_ENV
from unmask_core.faces.samples import load_rgb, sample_photo
from unmask_core.models.model_set import init_model_set

REPO = Path(__file__).resolve().parent.parent

# One process, one Ray declaring a GPU, the `unmask` entry point as a user runs it, once per setting.
JOBS = """
import json, sys
import ray
from unmask_core import cli, ray_session
ray.init(num_cpus=8, num_gpus=1, include_dashboard=False, log_to_driver=False)
ray_session.configure_data_context()
codes = {}
for gpus, actors, image_format in (("1", "1,1", "png"), ("0.5", "2,2", "jpeg"), ("0.5", "2,2", "png")):
    out = f"{sys.argv[1]}/out-{gpus}"
    codes[f"{gpus} {image_format}"] = cli.main(["unmask", "--input", sys.argv[2], "--output", out,
        "--models", sys.argv[3], "--gpus-per-actor", gpus, "--actors", actors, "--shard-size", "3",
        "--batch-size", "4", "--matchers", "arcface", "--image-format", image_format])
print("CODES" + json.dumps(codes))
"""


def _gallery(folder: Path) -> int:
    group = load_rgb(sample_photo("t1.jpg"))
    folder.mkdir()
    for k in range(5):
        crop = np.ascontiguousarray(group[:, k * 160 : k * 160 + 420])
        (folder / f"{k}.jpg").write_bytes(encode(Image.fromarray(crop), "JPEG", quality=90))
    (folder / "blank.png").write_bytes(encode(Image.fromarray(np.full((90, 120, 3), 80, np.uint8)), "PNG"))
    return 6


@pytest.mark.slow
def test_bulk_job_runs_on_a_ray_that_declares_a_gpu(tmp_path: Path) -> None:
    from unmask_core import shards

    n_inputs = _gallery(tmp_path / "gallery")
    models = str(tmp_path / "models")
    init_model_set(64, models, seed=1)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO)
    env[CUDA_STATE_ENV] = "1"  # the driver's Ray hands it to every actor
    env.setdefault("RAY_raylet_start_wait_time_s", "120")  # a loaded CI machine starts Ray slowly
    done = subprocess.run(
        [sys.executable, "-c", JOBS, str(tmp_path), str(tmp_path / "gallery"), models],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    codes = json.loads(done.stdout.split("CODES", 1)[1])
    # The third run asks for PNGs where the second wrote JPEGs: refused, as any other change of plan.
    assert codes == {"1 png": 0, "0.5 jpeg": 0, "0.5 png": 2}
    assert "images: jpeg q95 before, png now" in done.stderr
    for gpus, image_format in (("1", "PNG"), ("0.5", "JPEG")):
        out = tmp_path / f"out-{gpus}"
        summary = json.loads((out / "summary.json").read_text())
        assert summary["reconciled"] and summary["inputs"] == n_inputs
        assert summary["shards_processed"] == 2  # 6 inputs in shards of 3, batches of 4 rows span them
        rows = shards.read_rows(str(out / "rows")).to_pylist()
        assert sorted({r["id"] for r in rows}) == sorted(p.name for p in (tmp_path / "gallery").iterdir())
        assert {r["status"] for r in rows if r["id"] == "blank.png"} == {"no_face"}
        # The JPEGs travelled as their bytes and were decoded on the device; the PNG by the first stage.
        assert (summary["decoded_on_device"], summary["decoded_on_cpu"]) == (n_inputs - 1, 1)
        ok = [r for r in rows if r["status"] == "ok"]
        assert len(ok) >= 4
        assert all(Path(r["unmasked_uri"]).is_file() for r in ok)
        for row in ok:
            with Image.open(row["unmasked_uri"]) as image:
                assert image.format == image_format and image.size == (256, 256)
            assert row["unmasked_uri"].endswith(".png" if image_format == "PNG" else ".jpg")
