"""`unmask train`: train f0 (baseline), f (unmask) or the RMFRD fine-tune (real) on Ray Train (DDP)."""

from __future__ import annotations

import json

from unmask_core.cli import job_process
from unmask_core.config import parse_config
from unmask_core.training.config import TrainConfig


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(TrainConfig, argv, "unmask train", __doc__.split(":", 1)[1].strip())
    from unmask_core.training.run import run_training

    result = run_training(cfg)  # checks first (before Ray is even imported), then config.yaml and the run
    from unmask_core import ray_session

    print(json.dumps(result, indent=2))
    print(f"trained model set: {result['models']}  (use it as --models or --init-from for the next stage)")
    print(ray_session.log_line())
    return 0


if __name__ == "__main__":
    job_process("train", main)
