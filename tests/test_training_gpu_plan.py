"""A `train --gpu` run's Ray Train plan, built as run_training builds it, without fitting: CI declares no
GPU, so nothing else would ever construct it."""

from __future__ import annotations

from ray.train import ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from unmask_core.training.config import TrainConfig
from unmask_core.training.run import _worker_resources


def test_a_gpu_training_run_builds_its_scaling_config_and_trainer() -> None:
    cfg = TrainConfig(pairs="p", models="m", output="o", gpu=True, workers=2, cpus_per_worker=3)
    scaling = ScalingConfig(
        num_workers=cfg.workers, use_gpu=cfg.gpu, resources_per_worker=_worker_resources(cfg)
    )
    assert scaling.total_resources == {"CPU": 6.0, "GPU": 2.0}
    assert scaling.num_gpus_per_worker == 1
    # TorchConfig's backend None means NCCL when GPUs are requested (gloo otherwise).
    trainer = TorchTrainer(lambda config: None, scaling_config=scaling, torch_config=TorchConfig())
    assert trainer.scaling_config.use_gpu
