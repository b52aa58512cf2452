"""One training worker: the models of a stage, the step (plain PyTorch), and the loop Ray Train runs.

`training_step` and `build_training_models` know nothing of Ray; `train_loop` uses Ray only to get the
data shard, the rank, the checkpoint to resume from, and to report metrics and checkpoints.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from unmask_core import storage
from unmask_core.accelerator import bf16_autocast, cuda_state, pins_memory
from unmask_core.errors import UserError
from unmask_core.losses import TrainingLoss
from unmask_core.models.runtime import compile_in_place
from unmask_core.training.batches import IMAGE_COLUMNS
from unmask_core.training.config import TrainConfig
from unmask_core.training.history import append_metrics, truncate_metrics
from unmask_core.training.resume import STATE_FILE, ResumePlan, load_resume_state
from unmask_core.training.stages import STAGES

# Batches Ray Data decodes ahead of the step: one is being copied to the device while the step runs,
# one more absorbs a slow decode.
PREFETCH_BATCHES = 2
# The encoder's graph is the same every step (no unused parameters, no data-dependent branches), so DDP
# may plan its buckets once (static_graph), and its gradients may live in the all-reduce buckets
# themselves instead of being copied into them (gradient_as_bucket_view).
DDP_OPTIONS = {"gradient_as_bucket_view": True, "static_graph": True}


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
    teacher: torch.nn.Module | None  # f0, frozen, when L_LR's target is f0(T) and not cached
    criterion: TrainingLoss


def build_training_models(cfg: TrainConfig, device: torch.device | str) -> TrainingModels:
    """The trained encoder, the frozen networks and the loss for a stage; no Ray involved."""
    from unmask_core.models.model_set import ModelSet

    stage = cfg.spec
    models = ModelSet(cfg.models, device=device)
    generator = models.generator().eval().requires_grad_(False)
    # --init-from continues the encoder a previous stage or corpus trained (the curriculum).
    init = ModelSet(cfg.init_from, device=device) if cfg.init_from else models
    encoder = init.encoder(stage.trains if cfg.init_from else stage.starts_from)
    encoder.train().requires_grad_(True)
    teacher = None
    if stage.needs_teacher_codes(cfg) and not cfg.cache_targets:
        teacher = init.encoder("baseline").eval().requires_grad_(False)  # f0, frozen (eq. 8)
    arcface = models.arcface().eval() if cfg.id_weight else None
    lpips_net = build_lpips(cfg, cfg.models, spatial=stage.periorbital)
    criterion = TrainingLoss(cfg.loss_weights(), lpips_net.to(device) if lpips_net else None, arcface)
    return TrainingModels(encoder, generator, teacher, criterion)


def make_optimizer(model: torch.nn.Module, lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam over the trainable parameters; fused (one kernel for all of them) in the CUDA state (torch
    has a fused CPU Adam too, so the CUDA state on a CPU takes this path)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.Adam(params, lr=lr, fused=cuda_state(device))


def step_autocast(cfg: TrainConfig, device: torch.device) -> torch.autocast:
    """The training step's precision: bf16 autocast for a --gpu run in the CUDA state, else fp32."""
    return bf16_autocast(device, enabled=cfg.gpu and cuda_state(device))


def prepare_ddp(encoder: torch.nn.Module, bf16_allreduce: bool) -> torch.nn.Module:
    """The encoder moved to this worker's device and wrapped in DDP (when there are several workers)."""
    import ray.train.torch
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import bf16_compress_hook

    model = ray.train.torch.prepare_model(encoder, parallel_strategy_kwargs=DDP_OPTIONS)
    if bf16_allreduce and isinstance(model, DistributedDataParallel):
        model.register_comm_hook(None, bf16_compress_hook)  # None: the default process group
    return model


def optimizer_step(
    micro_batches: list[dict[str, torch.Tensor]],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_of: Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, torch.Tensor]]],
    defer_allreduce: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimizer step on the mean loss of the micro-batches (--accumulate); returns the loss and its
    terms as device tensors, so nothing here waits for the GPU.

    Each micro-batch's loss is a mean over its samples, so with equal micro-batches the mean of their
    losses is the loss of their union: the step equals one on a batch N times larger (up to BatchNorm,
    whose statistics are per micro-batch). Under DDP the first N-1 backward passes run in `no_sync`, so
    gradients are all-reduced once per step; `defer_allreduce=False` all-reduces after each one (the
    same sum, more traffic), which DDP's static graph needs in a process's first step: it records that
    iteration, and one under no_sync fails inside DDP's reducer."""
    optimizer.zero_grad(set_to_none=True)
    n = len(micro_batches)
    total: torch.Tensor | None = None
    terms: dict[str, torch.Tensor] = {}
    for i, batch in enumerate(micro_batches):
        skip = defer_allreduce and i < n - 1 and isinstance(model, DistributedDataParallel)
        with model.no_sync() if skip else contextlib.nullcontext():
            loss, micro_terms = loss_of(batch)
            (loss / n).backward()
        total = loss.detach() / n if total is None else total + loss.detach() / n
        for name, value in micro_terms.items():
            terms[name] = value / n if name not in terms else terms[name] + value / n
    optimizer.step()
    return total, terms


class StepRecords:
    """Each step's loss terms, kept as device tensors until a report reads them all in one transfer
    (one host sync per --report-every steps instead of several per step)."""

    def __init__(self) -> None:
        self._pending: list[tuple[dict[str, float], dict[str, torch.Tensor]]] = []

    def add(self, host_values: dict[str, float], device_values: dict[str, torch.Tensor]) -> None:
        self._pending.append((host_values, device_values))

    def flush(self) -> list[dict[str, float]]:
        if not self._pending:
            return []
        names = list(self._pending[0][1])
        stacked = torch.stack([torch.stack([v[n].float() for n in names]) for _, v in self._pending])
        values = stacked.cpu().tolist()
        rows = [{**host, **dict(zip(names, row))} for (host, _), row in zip(self._pending, values)]
        self._pending = []
        return rows


def _host_copy(value: Any) -> Any:
    """A snapshot of a state dict on the host: the step after this one changes the live tensors."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _host_copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_host_copy(v) for v in value)
    return value


class CheckpointWriter:
    """Rank 0's checkpoints without stalling the step: the state is copied to host memory between two
    steps, then a background thread saves it to a local folder and appends the metrics rows since the
    previous checkpoint to metrics.csv.

    Ray Train registers a checkpoint when it is reported, and a report needs the finished folder, so
    the checkpoint of step N is reported at the next report point (at most min(--report-every,
    --checkpoint-every) steps later), and uploaded by Ray in its own thread (CheckpointUploadMode.ASYNC).
    Until it is registered, the previous checkpoint is the one a restart uses. The last step's
    checkpoint is written and reported at once, so a finished run ends with it. A report's `step` is the
    step it is made at; the attached state's own step goes with it as `checkpoint_step`, which is what
    Ray's record of the checkpoint must say (resume.py reads it)."""

    def __init__(self, run_uri: str) -> None:
        self.run_uri = run_uri
        self._thread: threading.Thread | None = None
        self._folder = ""
        self._step = 0
        self._error: BaseException | None = None

    def start(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, rows) -> None:
        state = {
            "encoder": _host_copy(_unwrap(model).state_dict()),
            "optimizer": _host_copy(optimizer.state_dict()),
            "step": step,
        }
        self._folder, self._step = tempfile.mkdtemp(prefix=f"unmask-checkpoint-{step}-"), step
        self._thread = threading.Thread(target=self._write, args=(state, list(rows)), daemon=True)
        self._thread.start()

    def _write(self, state: dict[str, Any], rows: list[dict[str, float]]) -> None:
        try:
            torch.save(state, os.path.join(self._folder, STATE_FILE))
            append_metrics(self.run_uri, rows)
        except BaseException as exc:  # raised in the training thread by take()
            self._error = exc

    def take(self) -> tuple[str, int] | None:
        """(folder, step) of the checkpoint being written, once written (None when there is none)."""
        if self._thread is None:
            return None
        self._thread.join()
        self._thread = None
        if self._error is not None:
            raise self._error
        return self._folder, self._step

    def discard(self) -> None:
        """Finish the pending write (its metrics rows are needed) and drop its folder."""
        taken = self.take()
        if taken:
            shutil.rmtree(taken[0], ignore_errors=True)


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
    for network in (parts.encoder, parts.generator, parts.teacher):
        if network is not None:
            compile_in_place(network, cfg.compile)  # in place: DDP and checkpoints see the same module
    model = prepare_ddp(parts.encoder, cfg.bf16_allreduce)
    optimizer = make_optimizer(model, cfg.lr, device)
    run_uri = storage.join(cfg.output, cfg.run_name)
    step = resumed_from_step = 0
    resume = ResumePlan.from_config(config.get("resume"))
    state = load_resume_state(ray.train.get_checkpoint(), resume, device)
    if state is not None:
        _unwrap(model).load_state_dict(state["encoder"])
        optimizer.load_state_dict(state["optimizer"])
        step = resumed_from_step = int(state["step"])
    if rank == 0:
        truncate_metrics(run_uri, step)  # rows past the checkpoint are done again

    autocast = step_autocast(cfg, device)

    def loss_of(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with autocast:
            return training_step(cfg.stage, batch, model, parts.generator, parts.teacher, parts.criterion)

    records, writer = StepRecords(), CheckpointWriter(run_uri)
    rows_since_checkpoint: list[dict[str, float]] = []
    shard = ray.train.get_dataset_shard("train")
    micro_batches: list[dict[str, torch.Tensor]] = []
    while step < cfg.steps:
        batches = 0
        for batch in shard.iter_torch_batches(
            batch_size=cfg.batch_size,
            device=device,
            drop_last=True,
            prefetch_batches=PREFETCH_BATCHES,
            pin_memory=pins_memory(device),
        ):
            batches += 1
            micro_batches.append(batch)
            if len(micro_batches) < cfg.accumulate:
                continue
            started = time.perf_counter()
            first = step == resumed_from_step
            loss, terms = optimizer_step(micro_batches, model, optimizer, loss_of, defer_allreduce=not first)
            micro_batches = []
            step += 1
            host = {
                "step": step,
                # Host time of the step: on a GPU the time to queue its work, which runs ahead of it.
                "step_seconds": time.perf_counter() - started,
                "wall_time": time.time(),
                "resumed_from_step": resumed_from_step,
            }
            records.add(host, {"loss": loss, **terms})
            last = step >= cfg.steps
            checkpoint_now = step % cfg.checkpoint_every == 0 or last
            if checkpoint_now or step % cfg.report_every == 0:
                # Not every step: Ray Train's report is a barrier across workers, which costs more
                # than a small step itself.
                rows = records.flush()
                # Adam's own step count continues across a resume only if its state was restored.
                adam_step = float(next(iter(optimizer.state.values()))["step"])
                for row in rows:
                    row["adam_step"] = adam_step - (step - row["step"])
                rows_since_checkpoint += rows
                _report(rank, rows[-1], writer, model, optimizer, rows_since_checkpoint, checkpoint_now, last)
                if checkpoint_now:
                    rows_since_checkpoint = []
            if last:
                break
        if not batches:
            raise UserError(f"{cfg.pairs}: a worker's share of the training pairs is smaller than one batch")


def _report(rank, metrics, writer, model, optimizer, rows, checkpoint_now: bool, last: bool) -> None:
    """Every worker reports at the same steps (Ray Train's report is a barrier); rank 0 attaches the
    checkpoint whose write has finished, and starts writing the next one at a checkpoint step."""
    import ray.train
    from ray.train import CheckpointUploadMode

    taken = None
    if rank == 0:
        if last:  # the final checkpoint is written now and supersedes one still pending
            writer.discard()
            writer.start(int(metrics["step"]), model, optimizer, rows)
            taken = writer.take()
        else:
            taken = writer.take()
            if checkpoint_now:
                writer.start(int(metrics["step"]), model, optimizer, rows)
    checkpoint = None
    if taken:
        folder, checkpoint_step = taken
        checkpoint = ray.train.Checkpoint.from_directory(folder)
        metrics = {**metrics, "checkpoint_step": checkpoint_step}
    ray.train.report(metrics, checkpoint=checkpoint, checkpoint_upload_mode=CheckpointUploadMode.ASYNC)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def decode(generator: torch.nn.Module, codes: torch.Tensor, size: int) -> torch.Tensor:
    """g(codes) at the working size, as the g∘f module (models/psp.py) decodes; training keeps the
    caller's autocast dtype instead of PSP's fp32 output."""
    from unmask_core.models.psp import pool_to

    return pool_to(generator(codes), size)


def normalise_images(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """uint8 image columns -> float in [-1, 1], on whatever device the batch is on (the same values as
    `data.png_to_tensor`); other columns and float images pass through."""
    return {
        k: v.float().div_(127.5).sub_(1.0) if k in IMAGE_COLUMNS and v.dtype == torch.uint8 else v
        for k, v in batch.items()
    }


def training_step(
    stage, batch, model, generator, teacher, criterion
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward pass and the loss of the stage named `stage` (stages.py: eq. 4, eq. 9, or the RMFRD
    phase-2 variant); the terms are detached device tensors."""
    spec = STAGES[stage]
    batch = normalise_images(batch)
    source = batch[spec.source]  # T for f0 (eq. 4), M for f (eq. 9)
    codes = model(source)
    output = decode(generator, codes, source.shape[-1])  # U = g(f(source))
    # L_LR's target (eq. 8): cached f0(T) (--cache-targets) or T-hat (stage real) come with the batch;
    # otherwise the frozen f0 computes f0(T) here.
    target_codes = batch.get("target_codes")
    if target_codes is None and teacher is not None:
        with torch.no_grad():
            target_codes = teacher(batch["T"])
    # L_R and LPIPS against the target (eq. 1/5, 2/6), L_ID against the identity image (eq. 3/7),
    # L_LR against the target codes (eq. 8).
    return criterion(
        batch[spec.target],
        output,
        codes=codes,
        target_codes=target_codes,
        region=batch.get("region"),  # the periorbital weights of a stage that has them
        id_target=batch[spec.identity],
        id_target_features=batch.get("target_embedding"),  # ArcFace(T), with --cache-targets
    )
