"""Bulk unmasking: end-to-end images/s of `unmask unmask` against a bare loop of the same models over the
same decoded images, on the same machine (CPU), and the job's peak RSS at N and 4N images.

    python -m bench.pipeline [--size 256] [--n 8]

The bare loop does only the work per image (detect, align, unmask, embed) on images already decoded in
memory; the job also lists, reads, decodes, writes images and Parquet, and runs on Ray Data. Peak RSS is
the largest sum of resident memory over the job's whole process tree (driver, raylet, workers), sampled
every 0.2 s.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.benchmarks_md import machine_description, update_section
from unmask_core.faces.samples import load_rgb, sample_photo

REPO = Path(__file__).resolve().parent.parent
SHARD_SIZE = 4


def make_gallery(folder: Path, n: int) -> list[np.ndarray]:
    """n photos: crops of a real group photo around its people, flipped alternately."""
    group = load_rgb(sample_photo("t1.jpg"))
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for k in range(n):
        left = (k * 97) % (group.shape[1] - 420)
        crop = np.ascontiguousarray(group[:, left : left + 420][:, :: (-1 if k % 2 else 1)])
        Image.fromarray(crop).save(folder / f"{k:05d}.jpg", quality=92)
        images.append(np.asarray(Image.open(folder / f"{k:05d}.jpg").convert("RGB")))
    return images


GOAL_FACES_PER_S = 1300  # per H100-class GPU (DESIGN.md, "The bulk job on a GPU node")
BEFORE = "(before, not in the sums) "  # a host step as it was, measured beside its replacement
READ, DECODE, HANDOFF, UPLOAD = (
    "read",
    "decode (PIL, CPU path)",
    "handoff (header check, JPEG bytes to a tensor)",
    "upload (atomic write)",
)
PNG, JPEG = "PNG encode (256 px face)", "JPEG encode (256 px face, q95 4:4:4; --image-format jpeg)"


def host_steps(
    folder: Path, images: list[np.ndarray], repeat: int = 3
) -> tuple[dict[str, float], dict[str, int]]:
    """Single-thread CPU milliseconds per image of each host step of the GPU configuration (process
    time, so a loaded machine's waiting does not count): read the bytes, decode them (PIL: the CPU path),
    hand them to the device decoder (the CPU actor's header check, `photo_for_device`, then the unmask
    actor's copy of the bytes into a tensor for nvJPEG), encode the 256 px unmasked face (PNG, or JPEG
    with --image-format jpeg), and upload it (an atomic local write: an S3 PUT's CPU cost is of the same
    order). Also each encoding's bytes, and the PNG encoders before."""
    import torch

    from unmask_core import data, storage
    from unmask_core.bulk.stages import photo_for_device

    paths = sorted(folder.glob("*.jpg"))
    face = np.ascontiguousarray(images[0][100:356, 80:336])

    def per_image(step) -> float:
        best = float("inf")
        for _ in range(repeat):
            started = time.process_time()
            for path in paths:
                step(path)
            best = min(best, (time.process_time() - started) / len(paths))
        return 1000 * best

    def handoff(path: Path) -> None:
        row = photo_for_device(path.read_bytes(), data.DEFAULT_MAX_PIXELS)
        torch.frombuffer(bytearray(row["jpeg"]), dtype=torch.uint8)

    def pillow_png(path: Path | None = None) -> bytes:  # the encoder before issue 14, for comparison
        buffer = io.BytesIO()
        Image.fromarray(face).save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()

    def all_filters_png(path: Path | None = None) -> bytes:  # before the Up filter for every row
        import cv2

        params = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
        return cv2.imencode(".png", cv2.cvtColor(face, cv2.COLOR_RGB2BGR), params)[1].tobytes()

    out = folder.parent / f"{folder.name}_upload"
    png = data.encode_png(face)
    sizes = {
        "PNG now": len(png),
        "PNG, all five filters": len(all_filters_png()),
        "PNG, Pillow": len(pillow_png()),
        "JPEG q95 4:4:4 (--image-format jpeg)": len(data.encode_jpeg(face)),
    }
    steps = {
        READ: per_image(lambda p: p.read_bytes()),
        DECODE: per_image(lambda p: data.decode_image(p.read_bytes())),
        HANDOFF: per_image(handoff),
        PNG: per_image(lambda p: data.encode_png(face)),
        JPEG: per_image(lambda p: data.encode_jpeg(face)),
        UPLOAD: per_image(lambda p: storage.write_bytes_atomic(str(out / p.name), png)),
        f"{BEFORE}PNG encode with Pillow, compress_level=1": per_image(pillow_png),
        f"{BEFORE}PNG encode with OpenCV, RLE, libpng's trial of all five filters": per_image(
            all_filters_png
        ),
    }
    return steps, sizes


def bare_loop(images: list[np.ndarray], models: str, batch_size: int) -> float:
    import torch

    from unmask_core.faces.align import align_face
    from unmask_core.faces.detect import build_detector
    from unmask_core.inference import Unmasker

    detector = build_detector("mtcnn", "cpu")
    unmasker = Unmasker(models, ["arcface", "facenet"], device="cpu")
    torch.set_num_threads(os.cpu_count() or 2)
    started = time.perf_counter()
    faces = []
    for image in images:
        found = detector.detect(image)
        if found:
            faces.append(align_face(image, found[0].landmarks, size=256)[0])
    unmasker.run(np.stack(faces), batch_size)
    return len(images) / (time.perf_counter() - started)


def _tree_rss(root: int) -> int:
    """Resident bytes of a process and all its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        pid, ppid = int(entry.name), int(fields.get("PPid", "0").strip())
        children.setdefault(ppid, []).append(pid)
        rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def run_job(gallery: Path, out: Path, models: str, batch_size: int) -> tuple[float, float, int]:
    """Runs `jobs.unmask` as a user would; returns (inputs, seconds, peak RSS of its process tree)."""
    command = [
        sys.executable,
        "-m",
        "jobs.unmask",
        "--input",
        str(gallery),
        "--output",
        str(out),
        "--models",
        models,
        "--batch-size",
        str(batch_size),
        "--shard-size",
        str(SHARD_SIZE),
        # Fixed pools, so that N and 4N run the same processes and RSS compares the data's footprint.
        "--actors",
        "2,2",
        "--cpu-actors",
        "1,1",
    ]
    peak = 0
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )

    def sample() -> None:
        nonlocal peak
        while process.poll() is None:
            peak = max(peak, _tree_rss(process.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample)
    started = time.perf_counter()
    sampler.start()
    _, stderr = process.communicate()
    elapsed = time.perf_counter() - started
    sampler.join()
    if process.returncode:
        raise RuntimeError(stderr[-3000:])
    summary = json.loads((out / "summary.json").read_text())
    return summary["inputs"], elapsed, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=256, help="model set size (models init)")
    parser.add_argument(
        "--n", type=int, default=8, help="N: images in the small gallery (the large one has 4N)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    load_at_start = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    from unmask_core.models.model_set import init_model_set

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        models = str(root / "models")
        init_model_set(args.size, models)
        make_gallery(root / "gallery_n", args.n)
        large = make_gallery(root / "gallery_4n", 4 * args.n)
        steps, file_sizes = host_steps(root / "gallery_4n", large)
        bare = bare_loop(large, models, args.batch_size)
        n_small, t_small, rss_small = run_job(root / "gallery_n", root / "out_n", models, args.batch_size)
        n_large, t_large, rss_large = run_job(root / "gallery_4n", root / "out_4n", models, args.batch_size)
    job_small, job_large = n_small / t_small, n_large / t_large
    # The extra 3N images cost t(4N) - t(N): the job's rate once Ray and the actors are up.
    marginal = (n_large - n_small) / (t_large - t_small)
    text = (
        "## Bulk unmasking pipeline (`bench/pipeline.py`)\n\n"
        f"Machine: {machine_description()}. {args.size} px model set from `models init` (f + g + ArcFace + "
        f"FaceNet), MTCNN detection, batch {args.batch_size}, gallery photos 420x886 px; job with "
        f"shards of {SHARD_SIZE}, 2 unmask actors and 1 detect/align actor (fixed pools).\n\n"
        "| run | images | images/s | peak RSS (process tree) |\n|---|---|---|---|\n"
        f"| bare loop (decoded images in memory) | {4 * args.n} | {bare:.3f} | – |\n"
        f"| `unmask unmask` job | {args.n} | {job_small:.3f} | {rss_small / 2**30:.2f} GiB |\n"
        f"| `unmask unmask` job | {4 * args.n} | {job_large:.3f} | {rss_large / 2**30:.2f} GiB |\n"
        f"| job, marginal (3N extra images / extra seconds) | {3 * args.n} | {marginal:.3f} | – |\n\n"
        f"Throughput ratio job/bare at 4N: **{job_large / bare:.3f}** end to end (goal ≥ 0.9; includes "
        f"starting Ray and loading the models in every actor, {t_small:.0f} s for the N run in all), "
        f"**{marginal / bare:.3f}** at the job's marginal rate. "
        f"Peak RSS 4N / N: **{rss_large / rss_small:.3f}** (goal ≤ 1.1).\n"
    )
    gpu_path = steps[READ] + steps[HANDOFF] + steps[PNG] + steps[UPLOAD]
    with_decode = steps[READ] + steps[DECODE] + steps[PNG] + steps[UPLOAD]
    jpeg_out = steps[READ] + steps[HANDOFF] + steps[JPEG] + steps[UPLOAD]

    def cores(ms: float) -> str:
        return f"{GOAL_FACES_PER_S * ms / 1000:.1f}"

    text += (
        "\nHost steps of the GPU configuration, single-thread CPU ms per image (process time, best of 3; "
        "gallery JPEGs 420x886, unmasked faces 256 px):\n\n| step | CPU ms / image |\n|---|---|\n"
        + "".join(f"| {name} | {ms:.2f} |\n" for name, ms in steps.items())
        + "\nThe 256 px face's file: "
        + ", ".join(f"{name} {size / 1000:.1f} KB" for name, size in file_sizes.items())
        + ".\n\n"
        f"CPU cores per GPU at {GOAL_FACES_PER_S} faces/s (one face per image; goal ≤ 4 vCPUs per GPU):\n\n"
        "| configuration | host ms / face | cores per GPU |\n|---|---|---|\n"
        f"| JPEG decoding on the device, PNG out (the default) | {gpu_path:.2f} | **{cores(gpu_path)}** |\n"
        f"| JPEG decoding on the device, `--image-format jpeg` | {jpeg_out:.2f} | **{cores(jpeg_out)}** |\n"
        f"| PIL decoding on the CPU, PNG out | {with_decode:.2f} | **{cores(with_decode)}** |\n\n"
        "Each sum is read + (handoff or decode) + encode + upload. Detection and alignment run on the device "
        "in the GPU configuration and are not host work. Load average at the start of the run: "
        f"{load_at_start}.\n"
    )
    print(text)
    update_section("pipeline", text)


if __name__ == "__main__":
    main()
