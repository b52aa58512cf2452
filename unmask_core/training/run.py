"""The `train` run on Ray Train: DDP over N workers, pairs streamed from Parquet through Ray Data shards,
checkpoints on the run's storage (local or s3://), resume by rerunning the same command."""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any

import torch

from unmask_core import storage
from unmask_core.config import save_config
from unmask_core.training.checks import check_training_inputs
from unmask_core.training.config import TrainConfig
from unmask_core.training.history import plot_metrics, read_metrics
from unmask_core.training.loop import train_loop
from unmask_core.training.resume import STATE_FILE, plan_resume
from unmask_core.training.targets import TargetsLookup, ensure_targets


def training_dataset(cfg: TrainConfig, size: int, targets: TargetsLookup | None = None):
    """The stage's training rows as a Ray Data dataset of decoded batches (with their cached targets
    when `targets` is given)."""
    return cfg.spec.dataset(cfg, size, targets)


def run_training(cfg: TrainConfig) -> dict[str, Any]:
    """Check everything that can be checked before Ray starts (training/checks.py), then that the
    cluster can hold the workers, and only then write: config.yaml, the resume plan's clean-up, the
    targets cache, the run."""
    from unmask_core.models.model_set import ModelSet

    check_training_inputs(cfg)
    size = ModelSet(cfg.models).image_size
    # Ray's modules load once the checks have passed: a refusal takes seconds.
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from unmask_core import ray_session

    ray_session.connect()
    worker = _worker_resources(cfg)
    asked_by = "--gpu" if cfg.gpu else "--workers/--cpus-per-worker"
    ray_session.require_resources([worker] * cfg.workers, cfg.resource_timeout, asked_by)
    run_uri = storage.join(cfg.output, cfg.run_name)
    save_config(cfg, run_uri)
    resume = plan_resume(run_uri)
    targets = ensure_targets(cfg) if cfg.cache_targets else None
    fs, path = storage.pyarrow_filesystem(cfg.output)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"cfg": asdict(cfg), "resume": resume.as_config()},
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.gpu, resources_per_worker=worker),
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
    run_uri = storage.join(cfg.output, cfg.run_name)
    history = read_metrics(run_uri)
    plot_metrics(run_uri)
    models_out = storage.join(cfg.output, "models")
    base = ModelSet(cfg.models)
    encoder = base.encoder(cfg.spec.trains)
    encoder.load_state_dict(state["encoder"])
    base.save_encoder(cfg.spec.trains, encoder, models_out)
    return {
        "step": int(state["step"]),
        "final": history[-1] if history else {},
        "models": models_out,
        "metrics": storage.join(run_uri, "metrics.csv"),
    }
