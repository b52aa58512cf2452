"""RMFRD, the real-mask fine-tune: reference candidates, T-hat's latent optimisation on a known latent,
and the whole flow (prepare -> T-hat cache -> train --stage real -> evaluate) on SeaweedFS and Ray."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from unmask_core import cli, data, shards, storage
from unmask_core.data import png_to_tensor
from unmask_core.faces.align import template
from unmask_core.faces.detect import build_detector
from unmask_core.faces.masks import apply_mask
from unmask_core.faces.samples import load_rgb, sample_photo
from unmask_core.models.model_set import ModelSet
from unmask_core.periorbital import periorbital_weight
from unmask_core.prepare.rmfrd import MAX_REFERENCE_CANDIDATES, add_reference_candidates
from unmask_core.prepare.synthetic import smooth_image
from unmask_core.training.config import TrainConfig
from unmask_core.training.t_hat import compute_t_hat, ensure_t_hat_codes, optimise_t_hat, t_hat_settings


def _item(identity: str, name: str, masked: bool) -> dict:
    folder = "AFDB_masked_face_dataset" if masked else "AFDB_face_dataset"
    key = f"{folder}/{identity}/{name}"
    record = data.ImageRecord(uri=f"s3://b/{key}", identity=identity, id=key, masked=masked)
    return {"record": record.__dict__, "split": "train"}


def test_reference_candidates_are_unmasked_photos_of_the_same_person_in_seeded_order() -> None:
    items = [_item("ann", f"{k}.jpg", masked=False) for k in range(12)]
    items += [_item("bob", "0.jpg", masked=False), _item("ann", "m0.jpg", masked=True)]
    items += [_item("ann", "m1.jpg", masked=True), _item("cat", "m0.jpg", masked=True)]
    add_reference_candidates(items, seed=0)
    by_id = {it["record"]["id"]: it for it in items}
    ann = by_id["AFDB_masked_face_dataset/ann/m0.jpg"]["references"]
    assert len(ann) == MAX_REFERENCE_CANDIDATES
    assert all(r["identity"] == "ann" and not r["masked"] for r in ann)
    assert by_id["AFDB_masked_face_dataset/cat/m0.jpg"]["references"] == []  # no unmasked photo of cat
    assert "references" not in by_id["AFDB_face_dataset/ann/0.jpg"]
    # The order is a seeded shuffle: fixed for a seed, independent of listing order, new for a new seed.
    again = list(reversed([dict(it, record=dict(it["record"])) for it in items]))
    add_reference_candidates(again, seed=0)
    assert {it["record"]["id"]: it.get("references") for it in again} == {
        k: it.get("references") for k, it in by_id.items()
    }
    other = [dict(it, record=dict(it["record"])) for it in items]
    add_reference_candidates(other, seed=1)
    reseeded = {it["record"]["id"]: it for it in other}["AFDB_masked_face_dataset/ann/m0.jpg"]
    assert [r["id"] for r in reseeded["references"]] != [r["id"] for r in ann]
    # Each masked photo gets its own order, so one bad reference photo does not fail them all alike.
    assert [r["id"] for r in by_id["AFDB_masked_face_dataset/ann/m1.jpg"]["references"]] != [
        r["id"] for r in ann
    ]


def test_t_hat_optimisation_matches_the_eyes_and_moves_towards_the_true_latent(tiny_model_set: str) -> None:
    """The fast version of bench/latent_optimisation.py: frozen random 64 px g, M = g(w) with the
    lower face covered, T-hat's optimisation from the average latent on the periorbital L2."""
    models = ModelSet(tiny_model_set)
    generator = models.generator()
    n, size = 2, generator.size
    with torch.no_grad():
        z = torch.randn(n, generator.style_dim, generator=torch.Generator().manual_seed(100))
        w = generator.mapping(z)[:, None].repeat(1, generator.n_latent, 1)
        T = generator(w)
    covered = torch.zeros(1, 1, size, size)
    covered[..., int(0.55 * size) :, int(0.2 * size) : int(0.8 * size)] = 1  # where a mask sits
    mask_color = torch.tensor([0.55, 0.75, 0.95]).view(1, 3, 1, 1) * 2 - 1
    M = T * (1 - covered) + mask_color * covered
    region = torch.from_numpy(periorbital_weight(template(size)[:2], size))[None, None].repeat(n, 1, 1, 1)
    start = models.encoder("baseline").latent_avg[None].repeat(n, 1, 1)

    result = optimise_t_hat(generator, M, region, start, steps=24, lr=0.01)
    loss = result.history
    assert len(loss) == 25 and loss[-1] < 0.5 * loss[0], loss
    assert (np.diff(loss) < 0).mean() >= 0.8, loss  # falls on (almost) every step
    assert loss[8] > loss[16] > loss[24]
    codes = result.codes
    distance_to_w = (codes - w).norm(dim=-1).mean(dim=-1), (start - w).norm(dim=-1).mean(dim=-1)
    assert (distance_to_w[0] < distance_to_w[1]).all()
    towards_w = F.cosine_similarity((codes - start).flatten(1), (w - start).flatten(1), dim=1)
    assert towards_w.mean() > 0.05  # the move points at w, not just anywhere
    with torch.no_grad():
        image_l2 = [float((generator(c) - T).pow(2).mean()) for c in (start, codes)]
    assert image_l2[1] < image_l2[0]  # and the covered face follows


def test_t_hat_starts_from_a_trained_f0_and_its_settings_name_the_cache(
    tiny_model_set: str, tmp_path
) -> None:
    models, trained = tiny_model_set, str(tmp_path / "trained")
    cfg = TrainConfig(stage="real", pairs=str(tmp_path / "pairs"), models=models, output="", t_hat_steps=4)
    fresh = t_hat_settings(cfg)
    assert fresh.start == "latent_avg"  # f0 is untrained: f0(M) would be noise
    assert t_hat_settings(cfg).key == fresh.key  # a rerun finds its cache
    assert t_hat_settings(dataclasses.replace(cfg, t_hat_steps=5)).key != fresh.key

    model_set = ModelSet(models)
    f0 = model_set.encoder("baseline")
    with torch.no_grad():
        for parameter in f0.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))  # stands in for training f0
    model_set.save_encoder("baseline", f0, trained)
    settings = t_hat_settings(dataclasses.replace(cfg, init_from=trained))
    assert settings.start == "f0" and settings.baseline_sha256 != fresh.baseline_sha256
    assert settings.key != fresh.key

    rng = np.random.default_rng(0)
    faces = [smooth_image(rng, 256) for _ in range(2)]
    eyes = [list(template(256)[:2].reshape(-1))] * 2
    rows = pa.table({"M": [data.encode_png(face) for face in faces], "eyes": eyes})
    codes, before, after = compute_t_hat(rows, models, trained, settings)
    assert codes.shape == (2, 10, 128) and (after < before).all()
    with torch.no_grad():
        start = ModelSet(trained).encoder("baseline")(
            torch.from_numpy(np.stack([png_to_tensor(data.encode_png(face), 64) for face in faces]))
        )
    moved = codes - start.numpy()
    assert np.abs(moved).max() > 0
    assert np.allclose(moved, moved[:, :1], atol=1e-5)  # one W offset, shared by every layer


# ---------------------------------------------------------------- end to end


def _crop(image: np.ndarray, box: np.ndarray, scale: float, flip: bool) -> np.ndarray:
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1) * scale
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    top, left = int(max(0, cy - side / 2)), int(max(0, cx - side / 2))
    crop = image[top : int(cy + side / 2), left : int(cx + side / 2)]
    return np.ascontiguousarray(crop[:, ::-1] if flip else crop)


def _jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def _write_rmfrd_tree(root: str) -> None:
    """The six people of insightface's t1.jpg: two unmasked crops each, and three crops of the same
    people wearing a surgical mask (drawn on the group photo, standing in for RMFRD's real masks).
    Plus photos in which both eyes cannot be found, and a masked person with no unmasked photo."""
    group = load_rgb(sample_photo("t1.jpg"))
    faces = build_detector("mtcnn").detect(group)
    assert len(faces) == 6
    for i, face in enumerate(faces):
        masked = apply_mask(group, face.landmarks, "surgical", None, 0, f"person{i}").masked
        for k, (scale, flip) in enumerate([(1.8, False), (1.5, True)]):
            storage.write_bytes_atomic(
                f"{root}/AFDB_face_dataset/person{i}/{k}.jpg", _jpeg(_crop(group, face.box, scale, flip))
            )
        for k, (scale, flip) in enumerate([(1.6, False), (2.0, False), (1.6, True)]):
            storage.write_bytes_atomic(
                f"{root}/AFDB_masked_face_dataset/person{i}/{k}.jpg",
                _jpeg(_crop(masked, face.box, scale, flip)),
            )
    covered = _crop(group, faces[1].box, 1.8, False).copy()
    covered[int(0.3 * len(covered)) : int(0.52 * len(covered))] = 20  # a bar over the eyes
    storage.write_bytes_atomic(f"{root}/AFDB_face_dataset/person1/eyes_covered.jpg", _jpeg(covered))
    blank = np.full((200, 200, 3), 128, np.uint8)
    storage.write_bytes_atomic(f"{root}/AFDB_masked_face_dataset/person0/blank.jpg", _jpeg(blank))
    lone = apply_mask(group, faces[0].landmarks, "surgical", None, 0, "x").masked
    lone = _crop(lone, faces[0].box, 1.6, False)
    storage.write_bytes_atomic(f"{root}/AFDB_masked_face_dataset/person6/0.jpg", _jpeg(lone))


def _modified(uri: str) -> dict[str, object]:
    fs, path = storage.fsspec_filesystem(uri)
    return {info["name"]: info.get("LastModified", info.get("mtime")) for info in fs.ls(path, detail=True)}


@pytest.mark.slow
def test_rmfrd_prepare_real_stage_and_evaluation(bucket: str, ray_local) -> None:
    root, pairs = f"{bucket}/rmfrd", f"{bucket}/pairs"
    _write_rmfrd_tree(root)
    argv = ["prepare", "--corpus", "rmfrd", "--input", root, "--output", pairs, "--test-fraction", "0.5"]
    assert cli.main([*argv, "--shard-size", "16", "--seed", "0"]) == 0
    summary = json.loads(storage.read_bytes(f"{pairs}/summary.json"))
    rows = {r["id"]: r for r in shards.read_rows(f"{pairs}/pairs").to_pylist()}
    assert summary["inputs"] == summary["rows"] == len(rows) == 6 * 5 + 3 and summary["reconciled"]

    # Photos without both eyes are error rows with the cascade's reason, counted in the summary.
    status = {key: row["status"] for key, row in rows.items()}
    assert status["AFDB_masked_face_dataset/person0/blank.jpg"] == "no_face"
    assert status["AFDB_face_dataset/person1/eyes_covered.jpg"] in ("no_face", "no_eyes", "one_eye")
    assert status["AFDB_masked_face_dataset/person6/0.jpg"] == "no_reference"
    errors = [row for row in rows.values() if row["status"] != "ok"]
    assert all(row["error"] for row in errors)
    for reason in {row["status"] for row in errors}:
        assert summary["failures_by_reason"][reason] == sum(row["status"] == reason for row in errors)

    # Unmasked photos: phase-1 pairs. Masked photos: M, eyes and another photo of the same person.
    ok = [row for row in rows.values() if row["status"] == "ok"]
    real = [row for row in ok if row["mask_kind"] == "real"]
    synthetic = [row for row in ok if row["mask_kind"] != "real"]
    assert len(real) >= 10 and len(synthetic) >= 8
    for row in synthetic:
        assert row["T"] and row["M"] and row["T_ref"] is None and len(row["eyes"]) == 4
    for row in real:
        assert row["T"] is None and row["mask_region"] is None and row["M"] and row["T_ref"]
        M, reference = data.decode_png(row["M"]), data.decode_png(row["T_ref"])
        assert M.shape == reference.shape == (256, 256, 3)
        assert np.abs(M.astype(int) - reference).mean() > 3  # a different photo, not M itself
        left, right = np.asarray(row["eyes"]).reshape(2, 2)
        assert abs(left[1] - right[1]) < 1 and 40 < right[0] - left[0] < 90  # levelled, FFHQ framed
    train_real = [row for row in real if row["split"] == "train"]
    test_real = {row["identity"] for row in real if row["split"] == "test"}
    assert len(train_real) >= 4 and len(test_real) >= 2

    models, out = f"{bucket}/models", f"{bucket}/runs"
    assert cli.main(["models", "init", "--size", "64", "--output", models]) == 0
    train = ["train", "--stage", "real", "--pairs", pairs, "--models", models, "--output", out]
    train += ["--workers", "1", "--steps", "4", "--batch-size", "2", "--checkpoint-every", "2"]
    train += ["--lpips-backbone", "random", "--t-hat-steps", "6"]
    assert cli.main(train) == 0

    # T-hat: one cached row of codes per real-mask training image, next to the pairs.
    (cache,) = [uri for uri in storage.list_files(f"{pairs}/t_hat", (".parquet",))]
    cache_folder = cache.rsplit("/", 1)[0]
    cached = shards.read_rows(cache_folder).to_pylist()
    assert sorted(r["id"] for r in cached) == sorted(r["id"] for r in train_real)
    assert all(len(r["codes"]) == 10 * 128 for r in cached)  # the 64 px set: 10 x 128 W+ codes
    assert np.mean([r["l2_final"] for r in cached]) < np.mean([r["l2_start"] for r in cached])

    metrics = storage.read_bytes(f"{out}/real/metrics.csv").decode().splitlines()
    header = metrics[0].split(",")
    assert {"l2", "lpips", "id", "latent"} <= set(header) and len(metrics) == 1 + 4
    assert storage.exists(f"{out}/models/model_set.json")

    # Later runs reuse the cache: nothing is optimised or written again.
    before = _modified(cache_folder)
    cfg = TrainConfig(stage="real", pairs=pairs, models=models, output=out, t_hat_steps=6)
    assert ensure_t_hat_codes(cfg) == cache_folder
    assert _modified(cache_folder) == before

    report = f"{bucket}/eval"
    assert cli.main(["evaluate", "--pairs", pairs, "--models", f"{out}/models", "--output", report]) == 0
    result = json.loads(storage.read_bytes(f"{report}/metrics.json"))
    for matcher in ("arcface", "facenet"):
        assert set(result["matchers"][matcher]) == {"MT", "UT"}
        assert all(0.0 <= auc <= 1.0 for auc in result["matchers"][matcher].values())
    assert result["psnr"] is None and result["ssim"] is None  # no pixel-aligned T for real masks
    assert result["n_images"] == sum(row["split"] == "test" for row in real)
