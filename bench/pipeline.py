"""Bulk unmasking: end-to-end images/s of `unmask unmask` against a bare loop of the same models over the
same decoded images, on the same machine (CPU), and the job's peak RSS at N and 4N images.

    python -m bench.pipeline [--size 256] [--n 8]
    python -m bench.pipeline --memory [--n 8]   # peak RSS per process role at N, 4N, 16N (64 px set)

The bare loop does only the work per image (detect, align, unmask, embed) on images already decoded in
memory; the job also lists, reads, decodes, writes images and Parquet, and runs on Ray Data. Peak RSS is
the largest sum of resident memory over the job's whole process tree (driver, raylet, workers), sampled
every 0.2 s; the same samples give each process's CPU seconds, summed per part of the job (driver,
each stage's actors, Ray's own processes).
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from bench.benchmarks_md import LoadWatch, machine_description, process_stats, update_section
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
    from unmask_core.bulk.device_faces import photo_for_device

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


def bare_loop(images: list[np.ndarray], models: str, batch_size: int) -> tuple[float, float]:
    """Images/s of the bare loop, and the CPU seconds it spent per image (all its threads)."""
    import torch

    from unmask_core.faces.align import align_face
    from unmask_core.faces.detect import build_detector
    from unmask_core.inference import Unmasker

    detector = build_detector("mtcnn", "cpu")
    unmasker = Unmasker(models, ["arcface", "facenet"], device="cpu")
    torch.set_num_threads(os.cpu_count() or 2)
    started, cpu_started = time.perf_counter(), time.process_time()
    faces = []
    for image in images:
        found = detector.detect(image)
        if found:
            faces.append(align_face(image, found[0].landmarks, size=256)[0])
    unmasker.run(np.stack(faces), batch_size)
    cpu_per_image = (time.process_time() - cpu_started) / len(images)
    return len(images) / (time.perf_counter() - started), cpu_per_image


# Which part of the job a process is, by its title (Ray titles actor processes `ray::<class>`).
DRIVER, OTHERS = "driver (`jobs.unmask`: Ray Data's executor, shard commits)", "Ray's own processes"
ROLES = (
    ("UnmaskingStage", "unmask actors (2)"),
    ("FaceFindingStage", "detect/align actor"),
    ("ImageWriter", "image writer actors"),
)


@dataclass
class ProcessTree:
    """A job's process tree as sampled: the peak of its summed resident memory, the peak of each
    role's (the driver, each stage's actors, Ray's own processes), and each process's title and CPU
    seconds (user + system) when last seen."""

    root: int
    peak_rss: int = 0
    peak_rss_by_role: dict[str, int] = field(default_factory=dict)
    cpu_s: dict[int, float] = field(default_factory=dict)
    titles: dict[int, str] = field(default_factory=dict)

    def role_of(self, pid: int) -> str:
        title = self.titles.get(pid, "")
        return DRIVER if pid == self.root else next((r for key, r in ROLES if key in title), OTHERS)

    def sample(self) -> None:
        # Only each process's stat for the whole machine (parent, CPU times, resident pages): the
        # sampler shares the cores it measures. Titles are read for the job's own processes.
        processes = process_stats()
        children: dict[int, list[int]] = {}
        for pid, (parent, *_) in processes.items():
            children.setdefault(parent, []).append(pid)
        stats = {pid: (rss, cpu) for pid, (_, cpu, rss) in processes.items()}
        total, stack, by_role = 0, [self.root], dict.fromkeys((DRIVER, *(r for _, r in ROLES), OTHERS), 0)
        while stack:
            pid = stack.pop()
            stack.extend(children.get(pid, []))
            if pid not in stats:
                continue
            total += stats[pid][0]
            self.cpu_s[pid] = stats[pid][1]
            try:
                args = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            title = args.replace(b"\0", b" ").decode(errors="replace").strip()
            # An exiting process has no command line, and an idle worker may yet become an actor.
            if title and "ray::IDLE" not in title:
                self.titles[pid] = title
            by_role[self.role_of(pid)] += stats[pid][0]
        self.peak_rss = max(self.peak_rss, total)
        for role, rss in by_role.items():
            self.peak_rss_by_role[role] = max(self.peak_rss_by_role.get(role, 0), rss)

    def cpu_by_role(self) -> dict[str, float]:
        roles = {name: 0.0 for name in (DRIVER, *(role for _, role in ROLES), OTHERS)}
        for pid, cpu in self.cpu_s.items():
            roles[self.role_of(pid)] += cpu
        return roles


def run_job(gallery: Path, out: Path, models: str, batch_size: int) -> tuple[float, float, ProcessTree]:
    """Runs `jobs.unmask` as a user would; returns (inputs, seconds, its process tree as sampled)."""
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
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    tree = ProcessTree(process.pid)

    def sample() -> None:
        while process.poll() is None:
            tree.sample()
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
    return summary["inputs"], elapsed, tree


def cpu_accounting(
    small: ProcessTree, large: ProcessTree, n: int, bare: float, bare_cpu_per_image: float
) -> str:
    """Where the job's CPU goes, per part: its CPU seconds at N and 4N images, split by a line through
    the two into a fixed part (start-up, shut-down, polling) and a part per image; and the ratio that
    fixed part leaves possible on this machine's cores."""
    at_n, at_4n = small.cpu_by_role(), large.cpu_by_role()
    rows, fixed_total, per_image_total = "", 0.0, 0.0
    for role in at_n:
        per_image = (at_4n[role] - at_n[role]) / (3 * n)
        fixed = at_n[role] - per_image * n
        fixed_total, per_image_total = fixed_total + fixed, per_image_total + per_image
        rows += f"| {role} | {at_n[role]:.1f} | {at_4n[role]:.1f} | {fixed:.1f} | {per_image:.2f} |\n"
    cores = os.cpu_count() or 1
    bare_s = 4 * n / bare
    ceiling = bare_s / (bare_s + fixed_total / cores)
    return (
        "\nWhere the job's CPU goes (CPU seconds, user + system, of each process of its tree; fixed and "
        "per image from the line through N and 4N):\n\n"
        "| part | CPU s at N | CPU s at 4N | fixed CPU s | CPU s per image |\n|---|---|---|---|---|\n"
        + rows
        + f"| all | {sum(at_n.values()):.1f} | {sum(at_4n.values()):.1f} | {fixed_total:.1f} | "
        f"{per_image_total:.2f} |\n\n"
        f"The bare loop spends {bare_cpu_per_image:.2f} CPU s per image. The job's fixed "
        f"{fixed_total:.0f} CPU s are at least {fixed_total / cores:.0f} s of wall time on {cores} cores, "
        f"so even at the bare loop's cost per image the job's ratio at 4N stays under "
        f"{bare_s:.0f} / ({bare_s:.0f} + {fixed_total / cores:.0f}) = **{ceiling:.2f}** on this machine.\n"
    )


def memory_growth(n: int, batch_size: int) -> None:
    """The job's peak RSS at N, 4N and 16N images, per role, with the 64 px model set (the models'
    share is small, so growth with the data shows): which process grows, and whether it plateaus."""
    from unmask_core.models.model_set import init_model_set

    sizes = (n, 4 * n, 16 * n)
    trees: list[ProcessTree] = []
    with tempfile.TemporaryDirectory() as folder, LoadWatch() as load:
        root = Path(folder)
        models = str(root / "models")
        init_model_set(64, models)
        for size in sizes:
            make_gallery(root / f"gallery_{size}", size)
            trees.append(run_job(root / f"gallery_{size}", root / f"out_{size}", models, batch_size)[2])
    roles = [*trees[0].peak_rss_by_role, "whole tree"]

    def peak(tree: ProcessTree, role: str) -> int:
        return tree.peak_rss if role == "whole tree" else tree.peak_rss_by_role.get(role, 0)

    mib = 2**20
    rows = "".join(
        f"| {role} | "
        + " | ".join(f"{peak(t, role) / mib:.0f}" for t in trees)
        + f" | {peak(trees[2], role) / max(1, peak(trees[0], role)):.3f} |\n"
        for role in roles
    )
    text = (
        "## Bulk job memory at N, 4N and 16N images (`bench/pipeline.py --memory`)\n\n"
        f"Machine: {machine_description()}. 64 px model set, the same job, galleries and fixed pools as "
        f"the pipeline section; peak resident memory (MiB) of each part of the job's process tree, "
        "sampled every 0.2 s (a part's peak is the largest sum over its processes at one sample).\n\n"
        f"| part | N = {sizes[0]} | 4N = {sizes[1]} | 16N = {sizes[2]} | 16N / N |\n"
        "|---|---:|---:|---:|---:|\n" + rows
    )
    print(text)
    update_section("pipeline_memory", text, load)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=256, help="model set size (models init)")
    parser.add_argument(
        "--n", type=int, default=8, help="N: images in the small gallery (the large one has 4N)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--memory", action="store_true", help="only the peak RSS per part at N, 4N and 16N (64 px set)"
    )
    args = parser.parse_args()
    if args.memory:
        memory_growth(args.n, args.batch_size)
        return
    from unmask_core.models.model_set import init_model_set

    with tempfile.TemporaryDirectory() as folder, LoadWatch() as load:
        root = Path(folder)
        models = str(root / "models")
        init_model_set(args.size, models)
        make_gallery(root / "gallery_n", args.n)
        large = make_gallery(root / "gallery_4n", 4 * args.n)
        steps, file_sizes = host_steps(root / "gallery_4n", large)
        bare, bare_cpu_per_image = bare_loop(large, models, args.batch_size)
        n_small, t_small, small = run_job(root / "gallery_n", root / "out_n", models, args.batch_size)
        n_large, t_large, large_tree = run_job(root / "gallery_4n", root / "out_4n", models, args.batch_size)
    rss_small, rss_large = small.peak_rss, large_tree.peak_rss
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
    text += cpu_accounting(small, large_tree, args.n, bare, bare_cpu_per_image)
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
        "in the GPU configuration and are not host work.\n"
    )
    print(text)
    update_section("pipeline", text, load)


if __name__ == "__main__":
    main()
