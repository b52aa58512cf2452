"""One training worker: the models of a stage, the step (plain PyTorch), and the loop Ray Train runs.

`training_step` and `build_training_models` know nothing of Ray; `train_loop` uses Ray only to get the
data shard, the rank, the checkpoint to resume from, and to report metrics and checkpoints.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import torch

from unmask_core import storage
from unmask_core.errors import UserError
from unmask_core.losses import TrainingLoss
from unmask_core.training.config import ENCODER_OF_STAGE, TrainConfig
from unmask_core.training.history import write_metrics


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
    criterion: TrainingLoss


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
    criterion = TrainingLoss(cfg.loss_weights(), lpips_net.to(device) if lpips_net else None, arcface)
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
