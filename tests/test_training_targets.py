"""`train --cache-targets`: f0(T) and ArcFace(T) computed once per pair on the S3 store, reused while the
models are the same, joined to the right rows in the training pipeline, and giving the step the loss it
computes without the cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unmask_core import shards, storage
from unmask_core.errors import UserError
from unmask_core.models.irse import id_preprocess
from unmask_core.models.model_set import ModelSet, init_model_set
from unmask_core.prepare.synthetic import write_synthetic_pairs
from unmask_core.training.batches import decode_batch
from unmask_core.training.config import TrainConfig
from unmask_core.training.loop import build_training_models, normalise_images, training_step
from unmask_core.training.run import training_dataset
from unmask_core.training.targets import _cache_pairs_file, ensure_targets, target_settings


@pytest.fixture(scope="module")
def s3_pairs(s3_server, tmp_path_factory) -> str:
    """Synthetic pairs in two Parquet files on the S3 server (train and test rows in each)."""
    from unmask_core import local_s3

    local = write_synthetic_pairs(
        str(tmp_path_factory.mktemp("pairs")), n_identities=6, per_identity=2, seed=3
    )
    table = shards.read_rows(storage.join(local, "pairs"))
    local_s3.create_bucket(s3_server, "targets-pairs")
    pairs = "s3://targets-pairs/corpus"
    half = len(table) // 2
    for index, part in enumerate((table.slice(0, half), table.slice(half))):
        shards.write_table_atomic(shards.shard_file(storage.join(pairs, "pairs"), index), part)
    return pairs


def _config(models: str, pairs: str, **overrides) -> TrainConfig:
    values = dict(stage="unmask", models=models, pairs=pairs, output="unused", lpips_backbone="random")
    return TrainConfig(**{**values, "cache_targets": True, **overrides})


def _train_rows(pairs: str, pairs_path: str = "") -> dict[str, np.ndarray]:
    """The training rows of every pairs file, with the `path` Ray Data gives each row (as pairs_path/file)."""
    rows: dict[str, list] = {}
    for uri in storage.list_files(storage.join(pairs, "pairs"), (".parquet",)):
        table = shards.read_rows(uri, columns=["id", "T", "M", "split"])
        table = table.filter(np.array([s == "train" for s in table["split"].to_pylist()])).to_pydict()
        table["path"] = [f"{pairs_path}/{uri.rsplit('/', 1)[1]}"] * len(table["id"])
        for name, values in table.items():
            rows.setdefault(name, []).extend(values)
    return {name: np.array(values, dtype=object) for name, values in rows.items()}


def test_targets_are_f0_and_arcface_of_t_computed_once_per_model_pair(
    tiny_model_set: str, s3_pairs: str, ray_local, capsys, tmp_path
) -> None:
    cfg = _config(tiny_model_set, s3_pairs)
    lookup = ensure_targets(cfg)
    assert "0 of 2 pairs files, computing 2" in capsys.readouterr().err
    cache_files = storage.list_files(lookup.cache_uri, (".parquet",))
    assert [f.rsplit("/", 1)[1] for f in cache_files] == ["shard-000000.parquet", "shard-000001.parquet"]

    rows = _train_rows(s3_pairs, lookup.pairs_path)
    found = lookup.columns(rows["id"], rows["path"])
    models = ModelSet(tiny_model_set)
    images = normalise_images({"T": torch.from_numpy(decode_batch(rows, 64, "unmask")["T"])})["T"]
    with torch.no_grad():
        codes = models.encoder("baseline").eval()(images)
        arcface = models.arcface()
        embedding = arcface(id_preprocess(images, arcface.input_size))
    np.testing.assert_allclose(found["target_codes"], codes.numpy(), atol=1e-5)
    np.testing.assert_allclose(found["target_embedding"], embedding.numpy(), atol=1e-5)

    # The task as a --gpu run starts it (torch falls back to the CPU here): the same file.
    on_gpu = str(tmp_path / "gpu.parquet")
    _cache_pairs_file(
        f"s3://{lookup.pairs_path}/shard-000001.parquet",
        on_gpu,
        tiny_model_set,
        tiny_model_set,
        target_settings(cfg),
        gpu=True,
    )
    mine, ray_made = shards.read_rows(on_gpu), shards.read_rows(cache_files[1])
    assert mine["id"].equals(ray_made["id"]) and mine.schema.metadata == ray_made.schema.metadata
    for column in ("codes", "embedding"):  # threads differ: float sums in another order
        np.testing.assert_allclose(
            np.stack(mine[column].to_numpy(zero_copy_only=False)),
            np.stack(ray_made[column].to_numpy(zero_copy_only=False)),
            atol=1e-5,
        )

    versions = storage.versions(lookup.cache_uri)
    assert ensure_targets(cfg) == lookup  # the same models: nothing computed, nothing rewritten
    assert "2 of 2 pairs files, computing 0" in capsys.readouterr().err
    assert storage.versions(lookup.cache_uri) == versions

    other_f0 = str(tmp_path / "other")
    init_model_set(64, other_f0, seed=99)
    moved = target_settings(_config(tiny_model_set, s3_pairs, init_from=other_f0))
    assert moved.key != target_settings(cfg).key  # another f0, another cache
    baseline_only = target_settings(_config(tiny_model_set, s3_pairs, stage="baseline"))
    assert baseline_only.baseline_sha256 == "" and baseline_only.arcface_sha256


def test_the_pipeline_joins_each_pair_to_its_own_targets(
    tiny_model_set: str, s3_pairs: str, ray_local
) -> None:
    """Rows come out of Ray Data in its own order: each decoded T must carry f0 and ArcFace of itself."""
    cfg = _config(tiny_model_set, s3_pairs)
    dataset = training_dataset(cfg, 64, ensure_targets(cfg))
    batches = list(dataset.iter_batches(batch_size=3, batch_format="numpy"))
    n_train = len(_train_rows(s3_pairs)["id"])
    assert sum(len(b["T"]) for b in batches) == n_train
    models = ModelSet(tiny_model_set)
    f0, arcface = models.encoder("baseline").eval(), models.arcface()
    for batch in batches:
        images = normalise_images({"T": torch.from_numpy(batch["T"].copy())})["T"]
        with torch.no_grad():
            np.testing.assert_allclose(batch["target_codes"], f0(images).numpy(), atol=1e-5)
            expected = arcface(id_preprocess(images, arcface.input_size)).numpy()
            np.testing.assert_allclose(batch["target_embedding"], expected, atol=1e-5)


def test_a_step_on_cached_targets_has_the_loss_of_the_step_without(
    tiny_model_set: str, s3_pairs: str, ray_local
) -> None:
    cfg = _config(tiny_model_set, s3_pairs)
    lookup = ensure_targets(cfg)
    rows = {k: v[:3] for k, v in _train_rows(s3_pairs, lookup.pairs_path).items()}
    cached = {k: torch.from_numpy(v) for k, v in decode_batch(rows, 64, "unmask", lookup).items()}
    plain = {k: v for k, v in cached.items() if not k.startswith("target_")}

    torch.manual_seed(0)
    with_teacher = build_training_models(_config(tiny_model_set, s3_pairs, cache_targets=False), "cpu")
    assert with_teacher.teacher is not None
    without = build_training_models(cfg, "cpu")
    assert without.teacher is None  # f0 is not even loaded
    without.encoder.load_state_dict(with_teacher.encoder.state_dict())
    expected, expected_terms = training_step(
        "unmask",
        plain,
        with_teacher.encoder,
        with_teacher.generator,
        with_teacher.teacher,
        with_teacher.criterion,
    )
    loss, terms = training_step("unmask", cached, without.encoder, without.generator, None, without.criterion)
    assert set(terms) == {"l2", "lpips", "id", "latent"}
    for name in terms:
        assert float(terms[name]) == pytest.approx(float(expected_terms[name]), rel=1e-5, abs=1e-7), name
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)


def test_a_pair_missing_from_the_cache_is_named(tiny_model_set: str, s3_pairs: str, ray_local) -> None:
    lookup = ensure_targets(_config(tiny_model_set, s3_pairs))
    with pytest.raises(UserError, match="no cached targets for pair 'id9999/0'.*delete"):
        lookup.columns(["id9999/0"], [f"{lookup.pairs_path}/shard-000000.parquet"])


def test_cache_targets_refuses_what_has_nothing_to_cache() -> None:
    with pytest.raises(UserError, match="stage real already caches"):
        TrainConfig(stage="real", pairs="p", models="m", output="o", cache_targets=True)
    with pytest.raises(UserError, match="nothing from T to cache"):
        TrainConfig(stage="baseline", pairs="p", models="m", output="o", cache_targets=True, id_weight=0)
    TrainConfig(stage="baseline", pairs="p", models="m", output="o", cache_targets=True)  # ArcFace(T)


def test_a_relative_pairs_folder_keeps_its_cache_beside_it_and_finds_it_again(
    tiny_model_set: str, ray_local, tmp_path, monkeypatch, capsys
):
    write_synthetic_pairs(str(tmp_path / "corpus"), n_identities=4, per_identity=1, size=64, seed=4)
    monkeypatch.chdir(tmp_path)
    cfg = _config(tiny_model_set, "corpus")
    ensure_targets(cfg)
    ensure_targets(cfg)
    assert "1 of 1 pairs files, computing 0" in capsys.readouterr().err
    beside_the_pairs = list((tmp_path / "corpus" / "targets").glob("*/shard-000000.parquet"))
    assert len(beside_the_pairs) == 1  # not in the Ray workers' working directory
