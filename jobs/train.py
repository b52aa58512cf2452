"""`unmask train`: train f0 (baseline), f (unmask) or the RMFRD fine-tune (real) on Ray Train (DDP)."""

from __future__ import annotations

from unmask_core.cli import job_process, print_log_line
from unmask_core.config import parse_config
from unmask_core.training.config import TrainConfig


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(TrainConfig, argv, "unmask train", __doc__.split(":", 1)[1].strip())
    from unmask_core.training.run import run_training

    result = run_training(cfg)  # checks first (before Ray is even imported), then config.yaml and the run
    from unmask_core.training.history import format_losses

    print(f"trained {cfg.stage} to step {result['step']}: {format_losses(result['final'])}")
    print(f"metrics: {result['metrics']}")
    print(f"trained model set: {result['models']}  (use it as --models or --init-from for the next stage)")
    print_log_line()
    return 0


if __name__ == "__main__":
    job_process("train", main)
