"""`train` checks what it can before Ray starts: each problem is one line and exit status 2, and a refused
run leaves nothing at --output (no config.yaml, not even the folder). Relative paths become absolute ones
before anything reaches a worker; a cluster that can never hold the workers (a GPU asked for where there
is none) is refused in one line."""

from __future__ import annotations

import dataclasses
import os
import shutil

import pyarrow as pa
import pytest

from unmask_core import cli, data, shards, storage
from unmask_core.prepare.synthetic import write_synthetic_pairs
from unmask_core.training.checks import check_training_inputs
from unmask_core.training.config import TrainConfig


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> str:
    return write_synthetic_pairs(
        str(tmp_path_factory.mktemp("pairs")), n_identities=4, per_identity=4, size=64
    )


def _train(capsys, models: str, pairs: str, out: str, *flags: str) -> tuple[int, list[str]]:
    """`unmask train` in this process: its exit status and the lines it printed on standard error."""
    capsys.readouterr()
    argv = ["train", "--stage", "unmask", "--pairs", pairs, "--models", models, "--output", out]
    code = cli.main([*argv, "--lpips-backbone", "random", "--batch-size", "2", *flags])
    return code, capsys.readouterr().err.strip().splitlines()


def _refused(code: int, lines: list[str], out: str, *words: str) -> None:
    assert code == cli.EXIT_REFUSED, lines
    assert len(lines) == 1 and lines[0].startswith("unmask train: error: "), lines
    for word in words:
        assert word in lines[0], lines
    assert not os.path.exists(out), "a refused run left its output folder"


def test_a_truncated_teacher_is_refused_in_one_line(
    tiny_model_set: str, pairs: str, tmp_path, capsys
) -> None:
    models = str(tmp_path / "models")
    shutil.copytree(tiny_model_set, models)
    teacher = os.path.join(models, "baseline_encoder.pt")
    with open(teacher, "r+b") as f:
        f.truncate(os.path.getsize(teacher) // 2)
    out = str(tmp_path / "out")
    code, lines = _train(capsys, models, pairs, out)
    _refused(code, lines, out, teacher, "truncated")


def test_pairs_with_the_right_columns_of_the_wrong_types_are_refused(
    tiny_model_set: str, tmp_path, capsys
) -> None:
    wrong = {"T": pa.array(["not png bytes"]), "split": pa.array([1], pa.int64())}
    columns = {f.name: wrong.get(f.name, pa.nulls(1, f.type)) for f in data.PAIRS_SCHEMA}
    shards.write_table_atomic(shards.shard_file(str(tmp_path / "typed" / "pairs"), 0), pa.table(columns))
    out = str(tmp_path / "out")
    code, lines = _train(capsys, tiny_model_set, str(tmp_path / "typed"), out)
    _refused(code, lines, out, "T is string, not binary", "split is int64, not string")


def test_pairs_of_another_schema_are_refused(tiny_model_set: str, tmp_path, capsys) -> None:
    shards.write_table_atomic(
        shards.shard_file(str(tmp_path / "other" / "pairs"), 0), pa.table({"id": ["a"], "image": [b"x"]})
    )
    out = str(tmp_path / "out")
    code, lines = _train(capsys, tiny_model_set, str(tmp_path / "other"), out)
    _refused(code, lines, out, "not pairs written by `unmask prepare` (no column identity, split")


def test_fewer_pairs_than_one_batch_per_worker_are_refused(tiny_model_set: str, tmp_path, capsys) -> None:
    one_pair = write_synthetic_pairs(str(tmp_path / "one"), n_identities=1, per_identity=1, size=64)
    out = str(tmp_path / "out")
    code, lines = _train(capsys, tiny_model_set, one_pair, out, "--batch-size", "8", "--workers", "2")
    _refused(code, lines, out, "1 training pairs", "one batch of 8 for each of 2 workers", "needs 16")


def test_relative_paths_reach_the_workers_absolute(
    tiny_model_set: str, pairs: str, tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    relative = {
        "models": os.path.relpath(tiny_model_set),
        "pairs": os.path.relpath(pairs),
        "output": "runs",
        "init_from": os.path.relpath(tiny_model_set),
    }
    cfg = TrainConfig(stage="unmask", lpips_backbone="random", batch_size=2, **relative)
    check_training_inputs(cfg)  # the checks find them from here
    handed_over = dataclasses.asdict(cfg)  # what train_loop_config gives every worker
    for name, path in relative.items():
        assert os.path.isabs(handed_over[name]) and os.path.normpath(handed_over[name]) == os.path.abspath(
            path
        )
    # A worker rebuilds the config from it, in another working directory: the same paths.
    monkeypatch.chdir("/")
    assert dataclasses.asdict(TrainConfig(**handed_over)) == handed_over
    assert storage.exists(storage.join(handed_over["models"], "model_set.json"))


def test_a_gpu_asked_for_on_a_cpu_only_local_ray_is_refused_in_one_line(
    tiny_model_set: str, pairs: str, tmp_path, capsys, ray_local
) -> None:
    import ray

    assert not ray.cluster_resources().get("GPU")
    out = str(tmp_path / "out")
    code, lines = _train(capsys, tiny_model_set, pairs, out, "--gpu", "--workers", "1")
    _refused(code, lines, out, "--gpu: needs CPU 1, GPU 1", "GPU 0 in all", "no autoscaler")
