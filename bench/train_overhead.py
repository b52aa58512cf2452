"""Step throughput of our Ray Train loop against a bare PyTorch loop: same model, batch and machine.

Both run the same `training_step` on the same pairs (1 worker, CPU); the Ray figure is taken from the
wall-clock times the loop reports, after the same warm-up. Writes the ratio to BENCHMARKS.md.

    python -m bench.train_overhead [--size 64] [--steps 40] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.benchmarks_md import machine_description, update_section
from unmask_core import ray_session, shards, storage
from unmask_core.models.checkpoints import init_model_set
from unmask_core.synthetic import write_synthetic_pairs
from unmask_core.training import TrainConfig, build_training_models, decode_batch, run_training, training_step

WARMUP = 5


def bare_loop(cfg: TrainConfig, size: int) -> float:
    table = shards.read_rows(
        storage.join(cfg.pairs, "pairs"), columns=["T", "M", "status", "split"]
    ).to_pydict()
    batch = decode_batch({k: np.array(v, dtype=object) for k, v in table.items()}, size, cfg.stage)
    tensors = {k: torch.from_numpy(v) for k, v in batch.items()}
    parts = build_training_models(cfg, "cpu")
    optimizer = torch.optim.Adam(parts.encoder.parameters(), lr=cfg.lr)
    n = len(tensors["T"])
    times = []
    for step in range(cfg.steps):
        idx = torch.arange(step * cfg.batch_size, (step + 1) * cfg.batch_size) % n
        loss, _ = training_step(
            cfg.stage,
            {k: v[idx] for k, v in tensors.items()},
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


def ray_loop(cfg: TrainConfig) -> float:
    run_training(cfg)
    import csv

    rows = list(csv.DictReader(open(Path(cfg.out) / cfg.run_name / "metrics.csv")))
    times = [float(r["wall_time"]) for r in rows]
    return (len(times) - WARMUP - 1) / (times[-1] - times[WARMUP])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as folder:
        pairs = write_synthetic_pairs(str(Path(folder) / "pairs"), n_identities=8, per_identity=4)
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
        with_ray = ray_loop(TrainConfig(out=str(Path(folder) / "ray"), **common))
    ratio = with_ray / bare
    text = (
        f"## Training loop overhead (`bench/train_overhead.py`)\n\n"
        f"Machine: {machine_description()}. Stage `unmask` (full loss), {args.size} px model set from "
        f"`models init`, batch {args.batch_size}, {args.steps} steps, 1 worker, "
        f"steps/s after {WARMUP} warm-up steps.\n\n"
        f"| loop | steps/s |\n|---|---|\n| bare PyTorch | {bare:.3f} |\n"
        f"| Ray Train (ours) | {with_ray:.3f} |\n\n"
        f"Ratio Ray/bare: **{ratio:.3f}** (goal ≥ 0.9).\n"
    )
    print(text)
    update_section("train_overhead", text)


if __name__ == "__main__":
    main()
