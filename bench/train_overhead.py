"""Step throughput of our Ray Train loop against a bare PyTorch loop: same model, batch and machine.

Both run the same `training_step` on the same pairs (1 worker, CPU); the Ray figure is taken from the
wall-clock times the loop records for every step, after the same warm-up. The pairs make an epoch of
`--steps / 2` steps, so the Ray run crosses one epoch boundary, where Ray Data starts the pipeline
again: the ratio is for the steps within an epoch, and the boundary's cost is reported beside it.
Writes both to BENCHMARKS.md.

    python -m bench.train_overhead [--size 64] [--steps 40] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import torch

from bench.benchmarks_md import machine_description, update_section
from tests.support.synthetic import write_synthetic_pairs
from unmask_core import ray_session, shards, storage
from unmask_core.models.model_set import init_model_set
from unmask_core.training.batches import decode_batch
from unmask_core.training.config import TrainConfig
from unmask_core.training.loop import build_training_models, training_step
from unmask_core.training.run import run_training

WARMUP = 5


def bare_loop(cfg: TrainConfig, size: int) -> float:
    """The same steps in a plain loop that decodes each batch of PNG pairs itself, as a DataLoader would."""
    table = shards.read_rows(storage.join(cfg.pairs, "pairs"), columns=["T", "M", "status", "split"])
    table = table.filter(pc.equal(table.column("split"), "train")).to_pydict()
    columns = {k: np.array(v, dtype=object) for k, v in table.items()}
    parts = build_training_models(cfg, "cpu")
    optimizer = torch.optim.Adam(parts.encoder.parameters(), lr=cfg.lr)
    n = len(columns["T"])
    times = []
    for step in range(cfg.steps):
        idx = np.arange(step * cfg.batch_size, (step + 1) * cfg.batch_size) % n
        batch = decode_batch({k: v[idx] for k, v in columns.items()}, size, cfg.stage)
        loss, _ = training_step(
            cfg.stage,
            {k: torch.from_numpy(v) for k, v in batch.items()},
            parts.encoder,
            parts.generator,
            parts.teacher,
            parts.criterion,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.time())
    return (len(times) - WARMUP - 1) / (times[-1] - times[WARMUP])


def ray_loop(cfg: TrainConfig, epoch_steps: int) -> tuple[float, float]:
    """(steps/s within epochs after the warm-up, seconds of the step that starts the second epoch)."""
    import csv

    run_training(cfg)
    rows = list(csv.DictReader(open(Path(cfg.out) / cfg.run_name / "metrics.csv")))
    intervals = np.diff([float(r["wall_time"]) for r in rows])  # intervals[k]: step k+1 -> k+2
    boundary = epoch_steps - 1
    within = [t for k, t in enumerate(intervals) if k >= WARMUP and k != boundary]
    return len(within) / float(np.sum(within)), float(intervals[boundary])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(2)
    epoch_steps = args.steps // 2
    with tempfile.TemporaryDirectory() as folder:
        pairs = write_synthetic_pairs(
            str(Path(folder) / "pairs"), n_identities=4 * epoch_steps * args.batch_size // 3, per_identity=1
        )
        train_pairs = shards.read_rows(storage.join(pairs, "pairs"), columns=["split"]).column("split")
        epoch_steps = sum(s == "train" for s in train_pairs.to_pylist()) // args.batch_size
        models = str(Path(folder) / "models")
        init_model_set(args.size, models)
        common = dict(
            pairs=pairs,
            models=models,
            workers=1,
            cpus_per_worker=torch.get_num_threads(),  # the same threads as the bare loop
            steps=args.steps,
            batch_size=args.batch_size,
            lpips_backbone="random",
            checkpoint_every=args.steps,
            stage="unmask",
        )
        bare = bare_loop(TrainConfig(out=str(Path(folder) / "bare"), **common), args.size)
        ray_session.connect()
        with_ray, boundary_seconds = ray_loop(
            TrainConfig(out=str(Path(folder) / "ray"), **common), epoch_steps
        )
    ratio = with_ray / bare
    text = (
        f"## Training loop overhead (`bench/train_overhead.py`)\n\n"
        f"Machine: {machine_description()}. Stage `unmask` (full loss), {args.size} px model set from "
        f"`models init`, batch {args.batch_size}, {args.steps} steps, 1 worker, "
        f"steps/s after {WARMUP} warm-up steps; synthetic 256 px pairs, {epoch_steps} steps an epoch; "
        f"both decode the PNG pairs as they train (the Ray loop in Ray Data tasks).\n\n"
        f"| loop | steps/s |\n|---|---|\n| bare PyTorch | {bare:.3f} |\n"
        f"| Ray Train (ours), within an epoch | {with_ray:.3f} |\n\n"
        f"Ratio Ray/bare: **{ratio:.3f}** (goal ≥ 0.9). The step that starts the next epoch took "
        f"{boundary_seconds:.1f} s: Ray Data runs the pipeline again for every epoch, so an epoch of a few "
        "steps (a tiny pairs set) is dominated by it; a real corpus has thousands of steps an epoch.\n"
    )
    print(text)
    update_section("train_overhead", text)


if __name__ == "__main__":
    main()
