"""The `train` job's configuration: one config for the three stages."""

from __future__ import annotations

from dataclasses import dataclass

from unmask_core import storage
from unmask_core.config import JobConfig, option
from unmask_core.errors import UserError
from unmask_core.losses import LossWeights
from unmask_core.training.stages import STAGES, T_HAT_CODES, Stage


@dataclass
class TrainConfig(JobConfig):
    stage: str = option(
        "baseline", "; ".join(f"{name}: {s.summary}" for name, s in STAGES.items()), choices=list(STAGES)
    )
    pairs: str = option("", "pairs folder written by `unmask prepare` (local or s3://)", required=True)
    models: str = option("", "model set to start from (g, f0, f, ArcFace)", required=True)
    output: str = option(
        "", "run folder: checkpoints, metrics, config and the trained model set", required=True
    )
    init_from: str = option(
        "", "model set of a previous stage/corpus to initialise the encoder from (curriculum)"
    )
    workers: int = option(2, "data-parallel training workers (one GPU each with --gpu)")
    gpu: bool = option(False, "train on GPUs (NCCL, bf16 autocast)")
    cpus_per_worker: int = option(1, "CPUs reserved per worker (on CPU: torch's thread count)")
    node_resource: str = option(
        "",
        "a custom Ray resource each worker also asks for, one unit each (cluster.yaml: nvlink_gpu puts "
        "the workers on its 8-GPU NVLink nodes)",
    )
    steps: int = option(1000, "optimizer steps in total (a resumed run continues to this number)")
    batch_size: int = option(8, "pairs per worker per forward pass (pSp: 8)")
    accumulate: int = option(
        1,
        "micro-batches of --batch-size per optimizer step: gradients add up locally and are all-reduced "
        "once per step (a larger batch without more memory)",
    )
    bf16_allreduce: bool = option(
        False, "all-reduce gradients in bf16 (half the bytes; worth it when workers span nodes)"
    )
    compile: bool = option(
        False,
        "torch.compile f, g and the frozen networks (batches have one shape: the last short one is "
        "dropped); off by default until a GPU measurement says it pays",
    )
    cache_targets: bool = option(
        False,
        "compute f0(T) and ArcFace(T) once per pair before training (cached next to the pairs, keyed by "
        "their sha256) instead of at every step: pays from the second epoch on",
    )
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
        "steps between metric reports to Ray Train (each one waits for every worker and reads the "
        "losses back from the GPU; metrics.csv has every step either way)",
    )
    keep_checkpoints: int = option(3, "checkpoints kept on storage")
    max_failures: int = option(3, "worker failures survived (restart from the last checkpoint)")
    seed: int = option(0, "seed for data order and initialisation")
    name: str = option("", "run name under --output (default: the stage)")
    resource_timeout: float = option(
        900.0,
        "seconds to wait for an autoscaler to add the nodes the workers need (a GPU node with --gpu) "
        "before giving up; a cluster that can never have them is refused at once",
    )

    def check(self) -> None:
        # Ray's workers do not start in the caller's working directory: they get absolute paths.
        for name in ("pairs", "models", "output", "init_from"):
            if getattr(self, name):
                setattr(self, name, storage.absolute(getattr(self, name)))
        if self.lpips_backbone not in ("auto", "random"):
            self.lpips_backbone = storage.absolute(self.lpips_backbone)
        if self.resource_timeout <= 0:
            raise UserError("--resource-timeout must be positive")
        if not self.spec.latent_target and self.latent_weight:
            self.latent_weight = 0.0  # no target codes (f0 has no teacher): eq. 4 has no latent term
        counts = (
            self.workers,
            self.cpus_per_worker,
            self.steps,
            self.batch_size,
            self.accumulate,
            self.checkpoint_every,
            self.report_every,
        )
        if min(counts) < 1:
            raise UserError(
                "--workers, --cpus-per-worker, --steps, --batch-size, --accumulate, --checkpoint-every "
                "and --report-every must be positive"
            )
        if not (self.l2_weight or self.lpips_weight or self.id_weight or self.latent_weight):
            raise UserError("every loss term is switched off")
        if self.cache_targets and self.spec.latent_target == T_HAT_CODES:
            raise UserError(f"--cache-targets: stage {self.stage} already caches its latent targets (T-hat)")
        if self.cache_targets and not (
            self.spec.needs_teacher_codes(self) or self.spec.needs_target_embedding(self)
        ):
            raise UserError("--cache-targets: with these weights the step computes nothing from T to cache")

    @property
    def spec(self) -> Stage:
        """The stage's entry in the stage table."""
        return STAGES[self.stage]

    @property
    def run_name(self) -> str:
        return self.name or self.stage

    def loss_weights(self) -> LossWeights:
        return LossWeights(
            l2=self.l2_weight, lpips=self.lpips_weight, id=self.id_weight, latent=self.latent_weight
        )
