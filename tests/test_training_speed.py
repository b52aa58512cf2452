"""What keeps a GPU busy, checked on CPU: no tensor is read back to Python inside a step, uint8 batches
scale to the encoder's input on the device, gradient accumulation (also under DDP with its fast options)
equals a larger batch, and checkpoints are host snapshots written off the training thread."""

from __future__ import annotations

import gc
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from unmask_core import shards, storage
from unmask_core.data import png_to_tensor
from unmask_core.models.model_set import init_model_set
from unmask_core.prepare.synthetic import write_synthetic_pairs
from unmask_core.training.batches import decode_batch
from unmask_core.training.config import TrainConfig
from unmask_core.training.history import append_metrics, read_metrics, truncate_metrics
from unmask_core.training.loop import (
    DDP_OPTIONS,
    CheckpointWriter,
    StepRecords,
    build_training_models,
    make_optimizer,
    optimizer_step,
    training_step,
)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("models"))
    init_model_set(64, folder, seed=1)
    return folder


@pytest.fixture(scope="module")
def tiny_pairs(tmp_path_factory) -> str:
    return write_synthetic_pairs(
        str(tmp_path_factory.mktemp("pairs")), n_identities=4, per_identity=2, seed=2
    )


def _rows(pairs: str, n: int) -> dict[str, np.ndarray]:
    table = shards.read_rows(storage.join(pairs, "pairs"), columns=["T", "M"]).slice(0, n).to_pydict()
    return {k: np.array(v, dtype=object) for k, v in table.items()}


def _batch(pairs: str, n: int) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in decode_batch(_rows(pairs, n), 64, "unmask").items()}


def _parts(models: str, pairs: str, tmp_path):
    cfg = TrainConfig(
        stage="unmask",
        models=models,
        pairs=pairs,
        output=str(tmp_path),
        lpips_backbone="random",
        batch_size=2,
    )
    torch.manual_seed(0)
    return build_training_models(cfg, "cpu")


def test_decoded_batches_are_uint8_and_normalise_to_the_encoders_input(tiny_pairs: str) -> None:
    rows = _rows(tiny_pairs, 3)
    batch = decode_batch(rows, 64, "unmask")
    assert batch["M"].dtype == np.uint8 and batch["M"].shape == (3, 3, 64, 64)
    from unmask_core.training.loop import normalise_images

    scaled = normalise_images({k: torch.from_numpy(v) for k, v in batch.items()})
    expected = np.stack([png_to_tensor(png, 64) for png in rows["T"]])
    np.testing.assert_allclose(scaled["T"].numpy(), expected, atol=1e-6)


_CONVERSIONS = ("item", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__")


def test_a_training_step_reads_no_tensor_back_to_python(
    tiny_models: str, tiny_pairs: str, tmp_path, monkeypatch
) -> None:
    """Every tensor -> Python conversion waits for the GPU; the step must leave them to the reports."""
    parts = _parts(tiny_models, tiny_pairs, tmp_path)
    optimizer = make_optimizer(parts.encoder, 1e-4, torch.device("cpu"))
    batch = _batch(tiny_pairs, 2)

    def loss_of(b):
        return training_step("unmask", b, parts.encoder, parts.generator, parts.teacher, parts.criterion)

    optimizer_step([batch], parts.encoder, optimizer, loss_of)  # Adam's state exists from here on
    # Adam keeps its step counter on the host when not fused (torch reads it there, without a sync).
    adam_steps = {id(s["step"]) for s in optimizer.state.values()}
    seen: list[str] = []
    for name in _CONVERSIONS:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _name=name, _original=original, **kwargs):
            if id(self) not in adam_steps:
                seen.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    loss, terms = optimizer_step([batch, batch], parts.encoder, optimizer, loss_of)
    monkeypatch.undo()
    assert seen == []
    assert isinstance(loss, torch.Tensor) and all(isinstance(v, torch.Tensor) for v in terms.values())
    assert set(terms) == {"l2", "lpips", "id", "latent"}


def test_step_records_are_read_back_in_one_transfer_with_their_values() -> None:
    records = StepRecords()
    records.add({"step": 1}, {"loss": torch.tensor(0.5), "l2": torch.tensor(0.25)})
    records.add({"step": 2}, {"loss": torch.tensor(0.75, dtype=torch.bfloat16), "l2": torch.tensor(0.5)})
    assert records.flush() == [
        {"step": 1, "loss": 0.5, "l2": 0.25},
        {"step": 2, "loss": 0.75, "l2": 0.5},
    ]
    assert records.flush() == []


def _gradients(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_accumulating_micro_batches_equals_one_step_on_their_union(
    tiny_models: str, tiny_pairs: str, tmp_path
) -> None:
    batch = _batch(tiny_pairs, 4)
    halves = [{k: v[:2] for k, v in batch.items()}, {k: v[2:] for k, v in batch.items()}]
    results = []
    for micro_batches in ([batch], halves):
        parts = _parts(tiny_models, tiny_pairs, tmp_path)
        parts.encoder.eval()  # BatchNorm in eval: its statistics would otherwise be per micro-batch

        def loss_of(b, parts=parts):
            return training_step("unmask", b, parts.encoder, parts.generator, parts.teacher, parts.criterion)

        optimizer = make_optimizer(parts.encoder, 1e-4, torch.device("cpu"))
        loss, terms = optimizer_step(micro_batches, parts.encoder, optimizer, loss_of)
        results.append((_gradients(parts.encoder), loss, terms))
    (whole, whole_loss, whole_terms), (accumulated, accumulated_loss, accumulated_terms) = results
    assert torch.allclose(whole, accumulated, atol=1e-6, rtol=1e-4)
    assert torch.allclose(whole_loss, accumulated_loss, rtol=1e-5)
    for name in whole_terms:
        assert torch.allclose(whole_terms[name], accumulated_terms[name], rtol=1e-5)


def _toy_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def _toy_loss(model):
    def loss_of(batch):
        loss = (model(batch["x"]) - batch["y"]).pow(2).mean()
        return loss, {"l2": loss.detach()}

    return loss_of


def _toy_data() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {"x": torch.randn(8, 6, generator=generator), "y": torch.randn(8, 3, generator=generator)}


def _ddp_worker(rank: int, world: int, port: int, bf16: bool, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import bf16_compress_hook
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model = DistributedDataParallel(_toy_model(), **DDP_OPTIONS)
        if bf16:
            model.register_comm_hook(None, bf16_compress_hook)
        data = _toy_data()
        mine = {k: v[rank * 4 : (rank + 1) * 4] for k, v in data.items()}  # each rank: 2 micro-batches
        micro = [{k: v[:2] for k, v in mine.items()}, {k: v[2:] for k, v in mine.items()}]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        # The first step all-reduces every micro-batch (static_graph records it); the second defers.
        for first in (True, False):
            optimizer_step(micro, model, optimizer, _toy_loss(model), defer_allreduce=not first)
            torch.save(_gradients(model.module), os.path.join(out, f"grad-{rank}-{first}.pt"))
        # Both ranks end their collectives before either exits, and DDP's reducer goes before the group:
        # gloo threads still holding work at interpreter exit abort the process (SIGABRT, about 1 in 5).
        dist.barrier()
        del model, optimizer
        gc.collect()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("bf16", [False, True])
def test_ddp_with_accumulation_and_static_graph_matches_one_process(bf16: bool, tmp_path) -> None:
    mp.spawn(_ddp_worker, args=(2, _free_port(), bf16, str(tmp_path)), nprocs=2, join=True)
    model = _toy_model()
    optimizer_step([_toy_data()], model, torch.optim.SGD(model.parameters(), lr=0.0), _toy_loss(model))
    expected = _gradients(model)
    tolerance = 1e-2 if bf16 else 1e-6  # bf16 keeps 8 bits of mantissa
    for rank in range(2):
        for first in (True, False):
            got = torch.load(tmp_path / f"grad-{rank}-{first}.pt", weights_only=True)
            assert torch.allclose(got, expected, atol=tolerance, rtol=tolerance), (rank, first, bf16)
    if bf16:
        assert not torch.equal(got, expected)  # the hook did compress


def test_checkpoint_writer_saves_the_state_of_its_step_and_appends_metrics(tmp_path) -> None:
    model = _toy_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    optimizer_step([_toy_data()], model, optimizer, _toy_loss(model))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    writer = CheckpointWriter(str(tmp_path / "run"))
    rows = [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}]
    writer.start(2, model, optimizer, rows)
    optimizer_step([_toy_data()], model, optimizer, _toy_loss(model))  # training goes on meanwhile
    folder, step = writer.take()
    state = torch.load(os.path.join(folder, "state.pt"), weights_only=True)
    assert state["step"] == step == 2  # the step Ray's record of the checkpoint is given
    for name, value in before.items():
        assert torch.equal(state["encoder"][name], value)
    assert int(state["optimizer"]["state"][0]["step"]) == 1
    assert read_metrics(str(tmp_path / "run")) == rows
    assert writer.take() is None


def test_metrics_append_and_truncate_to_a_resumed_step(tmp_path) -> None:
    run = str(tmp_path / "run")
    append_metrics(run, [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}])
    append_metrics(run, [{"step": 3, "loss": 0.25}])
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3]
    truncate_metrics(run, 2)
    assert read_metrics(run) == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}]
    truncate_metrics(run, 0)
    assert read_metrics(run) == []
