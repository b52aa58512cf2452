"""Training f0 (stage `baseline`, eq. 4), f (stage `unmask`, eq. 9) and the RMFRD fine-tune (stage `real`)
with Ray Train: DDP over N workers, pairs streamed from Parquet through Ray Data shards, checkpoints
on the run's storage (local or s3://), resume by rerunning the same command.

The loop itself (`train_loop`) is plain PyTorch; Ray appears only to get the data shard, the rank,
the checkpoint to resume from, and to report metrics and checkpoints.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from unmask_core import data, storage
from unmask_core.config import option
from unmask_core.errors import UserError
from unmask_core.losses import LossWeights, UnmaskLoss

STAGES = ("baseline", "unmask", "real")
ENCODER_OF_STAGE = {"baseline": "baseline", "unmask": "unmask", "real": "unmask"}


@dataclass
class TrainConfig:
    stage: str = option(
        "baseline",
        "baseline: f0 on T (eq. 4); unmask: f on (T, M) (eq. 9); real: RMFRD fine-tune",
        choices=list(STAGES),
    )
    pairs: str = option("", "pairs folder written by `unmask prepare` (local or s3://)", required=True)
    models: str = option("", "model set to start from (g, f0, f, ArcFace)", required=True)
    out: str = option("", "run folder: checkpoints, metrics, config and the trained model set", required=True)
    init_from: str = option(
        "", "model set of a previous stage/corpus to initialise the encoder from (curriculum)"
    )
    workers: int = option(2, "data-parallel training workers (one GPU each with --gpu)")
    gpu: bool = option(False, "train on GPUs (NCCL, bf16 autocast)")
    cpus_per_worker: int = option(1, "CPUs reserved per worker (on CPU: torch's thread count)")
    steps: int = option(1000, "optimizer steps in total (a resumed run continues to this number)")
    batch_size: int = option(8, "pairs per worker per step (pSp: 8)")
    lr: float = option(1e-4, "Adam learning rate (pSp: 1e-4)")
    l2_weight: float = option(1.0, "weight of L_R, eq. 1/5 (0 switches it off)")
    lpips_weight: float = option(0.8, "α: weight of LPIPS, eq. 2/6 (0 switches it off)")
    id_weight: float = option(0.1, "β: weight of the ArcFace identity loss, eq. 3/7 (0 switches it off)")
    latent_weight: float = option(
        1.0, "γ: weight of L_LR = mean squared W+ error to f0(T), eq. 8 (unmask/real)"
    )
    lpips_backbone: str = option(
        "auto",
        "AlexNet weights for LPIPS: auto (lpips_alexnet.pth in --models), a torchvision-format file, "
        "or 'random' (tests and the demo only)",
    )
    t_hat_steps: int = option(100, "stage real: steps of the latent optimisation that finds T-hat (cached)")
    t_hat_lr: float = option(0.01, "stage real: Adam learning rate of the T-hat latent optimisation")
    t_hat_lpips_weight: float = option(
        0.0, "stage real: LPIPS weight (periorbital) in the T-hat optimisation, beside its L2"
    )
    checkpoint_every: int = option(100, "steps between checkpoints")
    report_every: int = option(
        10,
        "steps between metric reports to Ray Train (each one waits for every worker; "
        "metrics.csv has every step either way)",
    )
    keep_checkpoints: int = option(3, "checkpoints kept on storage")
    max_failures: int = option(3, "worker failures survived (restart from the last checkpoint)")
    seed: int = option(0, "seed for data order and initialisation")
    name: str = option("", "run name under --out (default: the stage)")

    def validate(self) -> None:
        if self.stage == "baseline" and self.latent_weight:
            self.latent_weight = 0.0  # f0 has no teacher: eq. 4 has no latent term
        counts = (
            self.workers,
            self.cpus_per_worker,
            self.steps,
            self.batch_size,
            self.checkpoint_every,
            self.report_every,
        )
        if min(counts) < 1:
            raise UserError(
                "--workers, --cpus-per-worker, --steps, --batch-size, --checkpoint-every and "
                "--report-every must be positive"
            )
        if not (self.l2_weight or self.lpips_weight or self.id_weight or self.latent_weight):
            raise UserError("every loss term is switched off")

    @property
    def run_name(self) -> str:
        return self.name or self.stage

    def loss_weights(self) -> LossWeights:
        return LossWeights(
            l2=self.l2_weight, lpips=self.lpips_weight, id=self.id_weight, latent=self.latent_weight
        )


# ---------------------------------------------------------------- data


def training_dataset(cfg: TrainConfig, size: int):
    import ray

    if cfg.stage == "real":
        from unmask_core.rmfrd import real_stage_dataset

        return real_stage_dataset(cfg, size)
    columns = ["T", "M", "status", "split"]
    pairs_uri = storage.join(cfg.pairs, "pairs")
    storage.check_readable(pairs_uri)
    fs, path = storage.pyarrow_filesystem(pairs_uri)
    ds = ray.data.read_parquet(path, filesystem=fs, columns=columns)
    ds = ds.filter(expr="status == 'ok' and split == 'train'")
    # decode_batch lives in data.py, which imports no torch: each Ray Data worker process starts faster.
    return ds.map_batches(
        data.decode_batch, fn_kwargs={"size": size, "stage": cfg.stage}, batch_format="numpy"
    )


# ---------------------------------------------------------------- the loop


def build_lpips(cfg: TrainConfig, models_uri: str, spatial: bool) -> torch.nn.Module | None:
    if not cfg.lpips_weight:
        return None
    from unmask_core.models.public import load_lpips

    backbone = cfg.lpips_backbone
    if backbone == "auto":
        candidate = storage.join(models_uri, "lpips_alexnet.pth")
        if not storage.exists(candidate):
            raise UserError(
                f"{candidate}: LPIPS needs AlexNet weights (torchvision format); put them there, "
                "pass --lpips-backbone PATH, or --lpips-weight 0"
            )
        backbone = candidate
    if backbone != "random":
        return load_lpips(backbone, spatial=spatial)
    # The same random AlexNet on every worker and in every run: a fixed seed, not the global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return load_lpips(None, spatial=spatial)


@dataclass
class TrainingModels:
    encoder: torch.nn.Module  # the one being trained (f0 or f)
    generator: torch.nn.Module  # g, frozen
    teacher: torch.nn.Module | None  # f0, frozen, for L_LR in the unmask stage
    criterion: UnmaskLoss


def build_training_models(cfg: TrainConfig, device: torch.device | str) -> TrainingModels:
    """The trained encoder, the frozen networks and the loss for a stage; no Ray involved."""
    from unmask_core.models.model_set import ModelSet

    models = ModelSet(cfg.models, device=device)
    generator = models.generator().eval().requires_grad_(False)
    init = ModelSet(cfg.init_from, device=device) if cfg.init_from else models
    encoder = init.encoder(ENCODER_OF_STAGE[cfg.stage] if cfg.init_from else _start_encoder(cfg.stage))
    encoder.train().requires_grad_(True)
    teacher = None
    if cfg.stage == "unmask" and cfg.latent_weight:
        teacher = init.encoder("baseline").eval().requires_grad_(False)  # f0, frozen (eq. 8)
    arcface = models.arcface().eval() if cfg.id_weight else None
    lpips_net = build_lpips(cfg, cfg.models, spatial=cfg.stage == "real")
    criterion = UnmaskLoss(cfg.loss_weights(), lpips_net.to(device) if lpips_net else None, arcface)
    return TrainingModels(encoder, generator, teacher, criterion)


def train_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    import ray.train.torch

    cfg = TrainConfig(**config["cfg"])
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(cfg.cpus_per_worker)  # Ray's default for an actor is one thread
    torch.manual_seed(cfg.seed + rank)
    parts = build_training_models(cfg, device)
    model = ray.train.torch.prepare_model(parts.encoder)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    step, history, resumed_from_step = 0, [], 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            state = torch.load(os.path.join(folder, "state.pt"), map_location=device, weights_only=True)
        _unwrap(model).load_state_dict(state["encoder"])
        optimizer.load_state_dict(state["optimizer"])
        step = resumed_from_step = int(state["step"])
        history = json.loads(state["history"])

    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.gpu and device.type == "cuda")
    shard = ray.train.get_dataset_shard("train")
    while step < cfg.steps:
        batches = 0
        for batch in shard.iter_torch_batches(batch_size=cfg.batch_size, device=device, drop_last=True):
            batches += 1
            started = time.perf_counter()
            with autocast:
                loss, terms = training_step(
                    cfg.stage, batch, model, parts.generator, parts.teacher, parts.criterion
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            metrics = {
                "step": step,
                "loss": float(loss.detach()),
                **terms,
                "step_seconds": time.perf_counter() - started,
                "wall_time": time.time(),
                # Adam's own step count continues across a resume only if its state was restored.
                "adam_step": float(next(iter(optimizer.state.values()))["step"]),
                "resumed_from_step": resumed_from_step,
            }
            history.append(metrics)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                _report_with_checkpoint(cfg, metrics, rank, model, optimizer, history)
            elif step % cfg.report_every == 0:
                # Not every step: Ray Train's report is a barrier across workers (measured on 2 CPU
                # workers: 2.0 s a step with a report each step, 0.5 s without).
                ray.train.report(metrics)
            if step >= cfg.steps:
                break
        if not batches:
            raise UserError(f"{cfg.pairs}: a worker's share of the training pairs is smaller than one batch")


def _start_encoder(stage: str) -> str:
    # f starts from f0 (METHOD: "initialised from f0"); f0 starts from the model set's baseline encoder.
    return "baseline" if stage in ("baseline", "unmask") else "unmask"


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def decode(generator: torch.nn.Module, codes: torch.Tensor, size: int) -> torch.Tensor:
    """g(codes), pooled to the working size as pSp does (a 1024 px generator trains on 256 px faces)."""
    image = generator(codes)
    if image.shape[-1] != size:
        image = torch.nn.functional.adaptive_avg_pool2d(image, (size, size))
    return image


def training_step(
    stage, batch, model, generator, teacher, criterion
) -> tuple[torch.Tensor, dict[str, float]]:
    """One forward pass and the loss for the stage (eq. 4, 9, or the RMFRD phase-2 variant)."""
    size = batch["M"].shape[-1]
    if stage == "baseline":
        codes = model(batch["T"])
        return criterion(batch["T"], decode(generator, codes, size))
    codes = model(batch["M"])
    output = decode(generator, codes, size)
    if stage == "unmask":
        target_codes = None
        if teacher is not None:
            with torch.no_grad():
                target_codes = teacher(batch["T"])
        return criterion(batch["T"], output, codes=codes, target_codes=target_codes)
    # real masks: L_R/LPIPS on the periorbital region of M, identity from another unmasked photo,
    # latent target from T_hat (found by latent optimisation, cached with the pairs).
    return criterion(
        batch["M"],
        output,
        codes=codes,
        target_codes=batch["target_codes"],
        region=batch["region"],
        id_target=batch["T_ref"],
    )


def _report_with_checkpoint(cfg: TrainConfig, metrics, rank, model, optimizer, history) -> None:
    import ray.train

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if rank == 0:
            state = {
                "encoder": _unwrap(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": metrics["step"],
                "history": json.dumps(history),
            }
            torch.save(state, os.path.join(folder, "state.pt"))
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint)
    if rank == 0:  # the run's curves so far, to plot while it trains
        write_metrics(storage.join(cfg.out, cfg.run_name), history)


# ---------------------------------------------------------------- driver


def run_training(cfg: TrainConfig) -> dict[str, Any]:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from unmask_core.models.model_set import ModelSet

    storage.check_readable(cfg.models)
    if cfg.init_from:
        storage.check_readable(cfg.init_from)
    storage.check_writable(cfg.out)
    size = ModelSet(cfg.models).image_size
    build_lpips(cfg, cfg.models, spatial=False)  # fail here, not in every worker, when weights are missing
    fs, path = storage.pyarrow_filesystem(cfg.out)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"cfg": asdict(cfg)},
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
        datasets={"train": training_dataset(cfg, size)},
    )
    result = trainer.fit()
    return finish_run(cfg, result)


def _worker_resources(cfg: TrainConfig) -> dict[str, float]:
    return {"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.gpu else {})}


def finish_run(cfg: TrainConfig, result) -> dict[str, Any]:
    """Write the metrics a user can plot and the trained encoder as a model set next to the run."""
    from unmask_core.models.model_set import ModelSet

    if result.checkpoint is None:
        raise RuntimeError(f"training {cfg.run_name} ended without a checkpoint: {result.error}")
    with result.checkpoint.as_directory() as folder:
        state = torch.load(os.path.join(folder, "state.pt"), map_location="cpu", weights_only=True)
    history = json.loads(state["history"])
    run_uri = storage.join(cfg.out, cfg.run_name)
    write_metrics(run_uri, history)
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


def write_metrics(run_uri: str, history: list[dict[str, float]]) -> None:
    """metrics.csv (one row per step, every loss term) and a loss plot."""
    import csv
    import io

    columns = sorted({k for row in history for k in row}, key=lambda k: (k != "step", k))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    storage.write_bytes_atomic(storage.join(run_uri, "metrics.csv"), buffer.getvalue().encode())
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [row["step"] for row in history]
    for name in [c for c in columns if c not in ("step", "step_seconds")]:
        ax.plot(steps, [row.get(name, np.nan) for row in history], label=name)
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.legend()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    storage.write_bytes_atomic(storage.join(run_uri, "losses.png"), image.getvalue())
