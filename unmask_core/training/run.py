"""The `train` run on Ray Train: DDP over N workers, pairs streamed from Parquet through Ray Data shards,
checkpoints on the run's storage (local or s3://), resume by rerunning the same command."""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any

import torch

from unmask_core import storage
from unmask_core.errors import UserError
from unmask_core.training.batches import decode_batch
from unmask_core.training.config import ENCODER_OF_STAGE, TrainConfig
from unmask_core.training.history import plot_metrics, read_metrics
from unmask_core.training.loop import build_lpips, train_loop
from unmask_core.training.resume import STATE_FILE, plan_resume
from unmask_core.training.targets import TargetsLookup, ensure_targets


def training_dataset(cfg: TrainConfig, size: int, targets: TargetsLookup | None = None):
    """The stage's training rows as a Ray Data dataset of decoded batches (with their cached targets
    when `targets` is given)."""
    import ray
    from ray.data.expressions import col

    if cfg.stage == "real":
        from unmask_core.training.t_hat import real_stage_dataset

        return real_stage_dataset(cfg, size)
    pairs_uri = storage.join(cfg.pairs, "pairs")
    storage.check_readable(pairs_uri)
    fs, path = storage.pyarrow_filesystem(pairs_uri)
    columns = ["T", "M", "status", "split", *(["id", "path"] if targets else [])]
    ds = ray.data.read_parquet(path, filesystem=fs, include_paths=targets is not None).select_columns(columns)
    ds = ds.filter(expr=(col("status") == "ok") & (col("split") == "train"))
    # decode_batch's module imports no torch: each Ray Data worker process starts faster. It emits
    # uint8 images; the training loop scales them on the device.
    return ds.map_batches(
        decode_batch, fn_kwargs={"size": size, "stage": cfg.stage, "targets": targets}, batch_format="numpy"
    )


def check_pairs_schema(pairs_uri: str) -> None:
    """The pairs folder holds what `unmask prepare` writes: one line naming what is missing, in the
    driver, before Ray Train starts (Ray Data would retry its read tasks, and say why only in its logs)."""
    import pyarrow.dataset as pads

    from unmask_core.data import PAIRS_SCHEMA

    uri = storage.join(pairs_uri, "pairs")
    storage.check_readable(uri)
    fs, path = storage.pyarrow_filesystem(uri)
    try:
        schema = pads.dataset(path, filesystem=fs, format="parquet").schema
    except Exception as exc:  # pyarrow raises several types for files that are not Parquet
        raise UserError(f"{uri}: not a pairs folder of Parquet files ({type(exc).__name__}: {exc})") from None
    missing = [name for name in PAIRS_SCHEMA.names if name not in schema.names]
    if missing:
        raise UserError(
            f"{uri}: not pairs written by `unmask prepare` (no column {', '.join(missing)}); prepare the "
            "corpus with `unmask prepare` and pass its output as --pairs"
        )


def run_training(cfg: TrainConfig) -> dict[str, Any]:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from unmask_core.models.model_set import ModelSet

    storage.check_readable(cfg.models)
    if cfg.init_from:
        storage.check_readable(cfg.init_from)
    storage.check_writable(cfg.out)
    size = ModelSet(cfg.models).image_size
    check_pairs_schema(cfg.pairs)
    # Missing LPIPS weights fail here, not in every worker; a random AlexNet cannot fail (3 s to build).
    if cfg.lpips_backbone != "random":
        build_lpips(cfg, cfg.models, spatial=False)
    resume = plan_resume(storage.join(cfg.out, cfg.run_name))
    targets = ensure_targets(cfg) if cfg.cache_targets else None
    fs, path = storage.pyarrow_filesystem(cfg.out)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"cfg": asdict(cfg), "resume": resume.as_config()},
        scaling_config=ScalingConfig(
            num_workers=cfg.workers, use_gpu=cfg.gpu, resources_per_worker=_worker_resources(cfg)
        ),
        run_config=RunConfig(
            name=cfg.run_name,
            storage_path=path,
            storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
        ),
        datasets={"train": training_dataset(cfg, size, targets)},
    )
    result = trainer.fit()
    return finish_run(cfg, result)


def _worker_resources(cfg: TrainConfig) -> dict[str, float]:
    return {
        "CPU": cfg.cpus_per_worker,
        **({"GPU": 1} if cfg.gpu else {}),
        **({cfg.node_resource: 1} if cfg.node_resource else {}),
    }


def finish_run(cfg: TrainConfig, result) -> dict[str, Any]:
    """The loss plot (from metrics.csv, which the workers wrote) and the trained encoder as a model set
    next to the run."""
    from unmask_core.models.model_set import ModelSet

    if result.checkpoint is None:
        raise RuntimeError(f"training {cfg.run_name} ended without a checkpoint: {result.error}")
    with result.checkpoint.as_directory() as folder:
        state = torch.load(os.path.join(folder, STATE_FILE), map_location="cpu", weights_only=True)
    run_uri = storage.join(cfg.out, cfg.run_name)
    history = read_metrics(run_uri)
    plot_metrics(run_uri)
    models_out = storage.join(cfg.out, "models")
    base = ModelSet(cfg.models)
    encoder = base.encoder(ENCODER_OF_STAGE[cfg.stage])
    encoder.load_state_dict(state["encoder"])
    base.save_encoder(ENCODER_OF_STAGE[cfg.stage], encoder, models_out)
    return {
        "step": int(state["step"]),
        "final": history[-1] if history else {},
        "models": models_out,
        "metrics": storage.join(run_uri, "metrics.csv"),
    }
