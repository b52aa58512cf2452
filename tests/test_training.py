"""Training on Ray Train: losses and ablation switches, DDP on 2 CPU workers with checkpoints in S3,
resume, and surviving a killed worker."""

from __future__ import annotations

import csv
import io
import os
import signal
import threading
import time

import numpy as np
import pytest
import torch

from tests.support.processes import pids_with_title
from unmask_core import storage
from unmask_core.losses import LossWeights
from unmask_core.prepare.synthetic import write_synthetic_pairs
from unmask_core.training.batches import decode_batch
from unmask_core.training.config import TrainConfig
from unmask_core.training.loop import build_training_models, training_step
from unmask_core.training.resume import STATE_FILE, committed_checkpoints
from unmask_core.training.run import run_training


@pytest.fixture(scope="module")
def tiny_pairs(tmp_path_factory) -> str:
    return write_synthetic_pairs(
        str(tmp_path_factory.mktemp("pairs")), n_identities=6, per_identity=3, seed=2
    )


@pytest.fixture(scope="module")
def run_pairs(tmp_path_factory) -> str:
    # Enough pairs that a run of a few dozen steps spans one or two epochs: on 2 cores each new epoch
    # restarts the Ray Data pipeline, which costs far more than a tiny model's step.
    return write_synthetic_pairs(
        str(tmp_path_factory.mktemp("run_pairs")), n_identities=12, per_identity=6, size=64, seed=3
    )


def _fixed_batch(pairs: str, n: int = 4) -> dict[str, torch.Tensor]:
    from unmask_core import shards

    table = shards.read_rows(storage.join(pairs, "pairs"), columns=["T", "M"]).slice(0, n).to_pydict()
    batch = decode_batch({k: np.array(v, dtype=object) for k, v in table.items()}, 64, "unmask")
    return {k: torch.from_numpy(v) for k, v in batch.items()}


def _config(models: str, pairs: str, out: str, **overrides) -> TrainConfig:
    values = dict(
        stage="unmask", models=models, pairs=pairs, output=out, lpips_backbone="random", batch_size=2
    )
    values.update(overrides)
    return TrainConfig(**values)


def test_overfitting_a_fixed_batch_halves_the_loss(tiny_model_set: str, tiny_pairs: str, tmp_path) -> None:
    torch.manual_seed(0)
    cfg = _config(tiny_model_set, tiny_pairs, str(tmp_path), lr=1e-3)
    parts = build_training_models(cfg, "cpu")
    batch = _fixed_batch(tiny_pairs, n=2)
    optimizer = torch.optim.Adam(parts.encoder.parameters(), lr=cfg.lr)
    losses = []
    for _ in range(25):
        loss, terms = training_step(
            "unmask", batch, parts.encoder, parts.generator, parts.teacher, parts.criterion
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert set(terms) == {"l2", "lpips", "id", "latent"}
    assert losses[-1] <= 0.5 * losses[0], losses


@pytest.mark.parametrize("state", ["cuda", "plain cpu"])
def test_a_gpu_runs_step_in_bf16_with_the_fused_optimizer_in_the_cuda_state(
    state: str, tiny_model_set: str, tiny_pairs: str, tmp_path, request
) -> None:
    """`train --gpu` takes the CUDA state's paths wherever the device is in it (bf16 autocast, fused
    Adam), and a plain CPU stays fp32 with the plain optimizer."""
    from unmask_core.training.loop import make_optimizer, step_autocast

    if state == "cuda":
        request.getfixturevalue("cuda_state")
    device = torch.device("cpu")
    cfg = _config(tiny_model_set, tiny_pairs, str(tmp_path), gpu=True)
    parts = build_training_models(cfg, device)
    optimizer = make_optimizer(parts.encoder, cfg.lr, device)
    batch = _fixed_batch(tiny_pairs, n=2)
    before = [p.detach().clone() for p in parts.encoder.parameters()]
    with step_autocast(cfg, device):
        # The encoder's own output (before latent_avg, which keeps codes fp32) is bf16 under autocast.
        features_dtype = parts.encoder.encoder(batch["M"].float().div(127.5).sub(1)).dtype
        loss, _ = training_step(
            "unmask", batch, parts.encoder, parts.generator, parts.teacher, parts.criterion
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    in_cuda_state = state == "cuda"
    assert optimizer.defaults["fused"] is in_cuda_state
    assert features_dtype == (torch.bfloat16 if in_cuda_state else torch.float32)
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, parts.encoder.parameters()))


def _gradient(cfg: TrainConfig, batch) -> tuple[torch.Tensor, dict[str, float]]:
    torch.manual_seed(0)
    parts = build_training_models(cfg, "cpu")
    loss, terms = training_step(
        "unmask", batch, parts.encoder, parts.generator, parts.teacher, parts.criterion
    )
    loss.backward()
    grads = [p.grad.flatten() for p in parts.encoder.parameters() if p.grad is not None]
    return torch.cat(grads), terms


@pytest.mark.parametrize("term", ["l2", "lpips", "id", "latent"])
def test_each_ablation_switch_removes_its_term(
    term: str, tiny_model_set: str, tiny_pairs: str, tmp_path
) -> None:
    batch = _fixed_batch(tiny_pairs, n=2)
    weights = {"l2": "l2_weight", "lpips": "lpips_weight", "id": "id_weight", "latent": "latent_weight"}
    full_grad, full_terms = _gradient(_config(tiny_model_set, tiny_pairs, str(tmp_path)), batch)
    without_grad, without_terms = _gradient(
        _config(tiny_model_set, tiny_pairs, str(tmp_path), **{weights[term]: 0}), batch
    )
    others_off = {weights[t]: 0 for t in weights if t != term}
    only_grad, only_terms = _gradient(_config(tiny_model_set, tiny_pairs, str(tmp_path), **others_off), batch)
    assert term in full_terms and term not in without_terms and set(only_terms) == {term}
    assert full_terms[term] > 0
    # The gradient is linear in the terms: switching one off removes exactly its contribution.
    assert torch.allclose(full_grad, without_grad + only_grad, atol=1e-5, rtol=1e-3)
    assert only_grad.abs().max() > 0 and not torch.allclose(full_grad, without_grad)


def test_loss_weights_defaults_are_psp_defaults() -> None:
    assert (LossWeights().l2, LossWeights().lpips, LossWeights().id) == (1.0, 0.8, 0.1)


def _metrics(out: str, name: str) -> list[dict[str, float]]:
    text = storage.read_bytes(storage.join(out, name, "metrics.csv")).decode()
    return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(io.StringIO(text))]


def _checkpoints(out: str, name: str) -> list[str]:
    fs, path = storage.fsspec_filesystem(storage.join(out, name))
    return sorted(p for p in fs.ls(path) if os.path.basename(p).startswith("checkpoint_"))


def _kill_a_worker_after_a_committed_checkpoint(out: str, run: threading.Thread) -> int | None:
    """SIGKILL one Ray Train worker once Ray has committed a checkpoint of the run (its snapshot file
    exists: a checkpoint folder alone may still be unregistered, and a restart would not see it)."""
    snapshot = storage.join(out, "unmask", "checkpoint_manager_snapshot.json")
    deadline = time.monotonic() + 300
    while run.is_alive() and time.monotonic() < deadline:
        if storage.exists(snapshot):
            workers = pids_with_title("ray::RayTrainWorker")
            if workers:
                os.kill(workers[-1], signal.SIGKILL)
                return workers[-1]
        time.sleep(0.1)
    return None


@pytest.mark.slow
def test_two_workers_survive_a_killed_worker_and_resume_past_a_broken_checkpoint(
    tiny_model_set: str, run_pairs: str, bucket: str, ray_local, capsys, tmp_path, monkeypatch
) -> None:
    out = f"{bucket}/runs"
    # Given as relative paths, which the workers (in other working directories) must find all the same.
    monkeypatch.chdir(tmp_path)
    models, pairs = os.path.relpath(tiny_model_set), os.path.relpath(run_pairs)
    # 12 steps, a checkpoint every 4: the kill comes after the first committed one, with steps left.
    cfg = _config(models, pairs, out, workers=2, steps=12, checkpoint_every=4, max_failures=2)
    result: dict = {}
    run = threading.Thread(target=lambda: result.update(first=run_training(cfg)))
    run.start()
    killed = _kill_a_worker_after_a_committed_checkpoint(out, run)
    run.join(timeout=400)
    assert killed is not None, "the run ended before a committed checkpoint and a live worker were seen"
    assert not run.is_alive(), "the run did not finish after a worker was killed"
    assert result["first"]["step"] == 12
    history = _metrics(out, "unmask")
    assert [row["step"] for row in history] == list(range(1, 13))
    for term in ("l2", "lpips", "id", "latent", "loss"):
        assert all(np.isfinite(row[term]) for row in history)
    restarted_at = max(row["resumed_from_step"] for row in history)
    assert restarted_at > 0 and restarted_at % 4 == 0  # the workers restarted from a checkpoint, not step 0
    assert len(_checkpoints(out, "unmask")) >= 1
    assert storage.exists(storage.join(out, "models", "unmask_encoder.pt"))

    # Rerunning the same command with more steps resumes from the newest checkpoint that loads: here the
    # newest (step 12) is truncated, as a full disk would leave it, and a folder that a killed run never
    # committed lies beside them.
    run_uri = storage.join(out, "unmask")
    (newest_step, newest), (previous_step, _) = committed_checkpoints(run_uri)[:2]
    assert newest_step == 12
    state_uri = storage.join(run_uri, newest, STATE_FILE)
    storage.write_bytes_atomic(state_uri, storage.read_bytes(state_uri)[:5000])
    stray = storage.join(run_uri, "checkpoint_2026-01-01_00-00-00.000000")
    storage.write_bytes_atomic(storage.join(stray, STATE_FILE), b"half written")
    capsys.readouterr()
    second = run_training(_config(models, pairs, out, workers=2, steps=14, checkpoint_every=4))
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings[0].startswith(f"warning: checkpoint {storage.join(run_uri, newest)} (step 12) cannot")
    assert f"from step {previous_step}" in warnings[1]
    assert not storage.exists(stray)
    assert second["step"] == 14
    resumed = _metrics(out, "unmask")
    assert [row["step"] for row in resumed] == list(range(1, 15))
    assert resumed[previous_step]["resumed_from_step"] == previous_step
    assert resumed[previous_step]["adam_step"] == previous_step + 1  # a fresh optimizer: step 1
