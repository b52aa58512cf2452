"""`unmask prepare` end to end on SeaweedFS: real faces, bad inputs, identity split, reruns."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.support.images import encode, odd_files
from unmask_core import cli, corpora, data, shards, storage
from unmask_core.faces.detect import build_detector
from unmask_core.faces.samples import load_rgb, sample_photo


def _face_crops() -> list[np.ndarray]:
    """Loose crops around each of the six people in insightface's t1.jpg."""
    group = load_rgb(sample_photo("t1.jpg"))
    crops = []
    for face in build_detector("mtcnn").detect(group):
        x1, y1, x2, y2 = face.box
        side = max(x2 - x1, y2 - y1) * 1.8
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        box = [int(max(0, cx - side / 2)), int(max(0, cy - side / 2)), int(cx + side / 2), int(cy + side / 2)]
        crops.append(np.ascontiguousarray(group[box[1] : box[3], box[0] : box[2]]))
    return crops


@pytest.mark.slow
def test_prepare_folders_corpus_with_bad_inputs(bucket: str, ray_local) -> None:
    crops = _face_crops()
    assert len(crops) == 6
    root = f"{bucket}/corpus"
    for index, crop in enumerate(crops):
        for k, variant in enumerate([crop, crop[:, ::-1]]):
            storage.write_bytes_atomic(
                f"{root}/person{index}/{k}.jpg",
                encode(Image.fromarray(np.ascontiguousarray(variant)), "JPEG"),
            )
    bad = odd_files(crops[0])
    chosen = [
        "zero_byte.jpg",
        "truncated.jpg",
        "text_named.jpg",
        "grayscale.png",
        "rgba.png",
        "bomb_header.png",
    ]
    for name in chosen:
        storage.write_bytes_atomic(f"{root}/odd/{name}", bad[name])
    storage.write_bytes_atomic(
        f"{root}/odd/no_face.png", encode(Image.fromarray(np.full((200, 200, 3), 128, np.uint8)), "PNG")
    )

    out = f"{bucket}/pairs"
    argv = [
        "prepare",
        "--corpus",
        "folders",
        "--input",
        root,
        "--output",
        out,
        "--test-fraction",
        "0.3",
        "--shard-size",
        "4",
        "--seed",
        "5",
    ]
    assert cli.main(argv) == 0
    summary = json.loads(storage.read_bytes(f"{out}/summary.json"))
    table = shards.read_rows(f"{out}/pairs")
    rows = {r["id"]: r for r in table.to_pylist()}
    n_inputs = 12 + len(chosen) + 1
    assert summary["inputs"] == summary["rows"] == len(rows) == n_inputs
    assert summary["pairs"] + summary["errors"] == n_inputs and summary["reconciled"]

    assert rows["odd/zero_byte.jpg"]["status"] == "decode_error"
    assert rows["odd/truncated.jpg"]["status"] == "decode_error"
    assert rows["odd/text_named.jpg"]["status"] == "decode_error"
    assert rows["odd/bomb_header.png"]["status"] == "too_large"
    assert rows["odd/no_face.png"]["status"] == "no_face"
    for name in ("grayscale.png", "rgba.png"):  # odd but valid: they become pairs
        assert rows[f"odd/{name}"]["status"] == "ok", rows[f"odd/{name}"]["error"]
    assert sum(summary["failures_by_reason"].values()) == summary["errors"]

    # Pairs: aligned 256 px T and M that differ only where the mask is.
    ok = [r for r in rows.values() if r["status"] == "ok"]
    for row in ok:
        T, M = data.decode_png(row["T"]), data.decode_png(row["M"])
        region = data.decode_png(row["mask_region"])[..., 0] > 127
        assert T.shape == M.shape == (256, 256, 3)
        assert (
            np.array_equal(T[~region], M[~region]) or np.abs(T[~region].astype(int) - M[~region]).mean() < 1
        )
        assert np.abs(T[region].astype(int) - M[region]).mean() > 5
    # Identity-disjoint split.
    train_ids = {r["identity"] for r in ok if r["split"] == "train"}
    test_ids = {r["identity"] for r in ok if r["split"] == "test"}
    assert train_ids and test_ids and not train_ids & test_ids

    # A rerun is reproducible: nothing to redo, same rows.
    assert cli.main(argv) == 0
    again = json.loads(storage.read_bytes(f"{out}/summary.json"))
    assert again["shards_processed"] == 0 and again["shards_skipped"] == summary["shards_processed"]
    assert shards.read_rows(f"{out}/pairs").sort_by("id").equals(table.sort_by("id"))


@pytest.mark.slow
def test_a_bug_becomes_an_internal_error_row_and_the_job_exits_non_zero(
    tmp_path, ray_local, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from unmask_core.prepare import pairs
    from unmask_core.prepare.config import PrepareConfig
    from unmask_core.prepare.run import ShardWorker

    crop = _face_crops()[0]
    root = tmp_path / "corpus"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        Image.fromarray(crop).save(root / name / "0.png")
    out = str(tmp_path / "pairs")
    argv = ["prepare", "--input", str(root), "--output", out, "--shard-size", "2", "--test-fraction", "0"]

    def planted_bug(*args, **kwargs):
        raise KeyError("planted")

    # The shard runs in this process with the bug planted (Ray workers would not see the patch); the
    # job then finds the shard finished and must still fail, naming the bug.
    monkeypatch.setattr(pairs, "masked_pair_columns", planted_bug)
    cfg = PrepareConfig(input=str(root), output=out, shard_size=2, test_fraction=0.0)
    records = [{"record": r.__dict__, "split": "train"} for r in corpora.list_corpus("folders", str(root))]
    shards.check_plan(out, shards.ShardPlan(2, 2, records[0]["record"]["id"], records[-1]["record"]["id"]))
    ShardWorker(cfg, f"{out}/pairs")({"shard": np.array([0]), "records": np.array([json.dumps(records)])})

    assert cli.main(argv) == 1
    summary = json.loads(storage.read_bytes(f"{out}/summary.json"))
    assert summary["reconciled"] and summary["internal_errors"] == 2
    assert summary["first_internal_error"] == "a/0.png: KeyError: 'planted'"
    assert "INTERNAL ERRORS: 2" in capsys.readouterr().out


def test_mask_fit_dlib68_places_the_mask_from_dlibs_68_landmarks_in_the_detector_box() -> None:
    from unmask_core.errors import UserError
    from unmask_core.faces.dlib_models import landmarks68
    from unmask_core.faces.masks import apply_mask, choose_mask
    from unmask_core.prepare.config import PrepareConfig
    from unmask_core.prepare.pairs import SyntheticPairMaker, masked_pair_columns

    five = PrepareConfig(input="in", output="out")
    fitted = PrepareConfig(input="in", output="out", mask_fit="dlib68")
    with pytest.raises(UserError, match="mask_fit|mask-fit"):
        PrepareConfig(input="in", output="out", mask_fit="dlib81")
    group = load_rgb(sample_photo("t1.jpg"))
    aligned, landmarks, box = SyntheticPairMaker(five).aligned_face(group)
    # The box, carried into the aligned frame, frames the face there as the detector would.
    again = build_detector("mtcnn").detect(aligned)[0].box
    assert np.abs(box - again).max() < 0.08 * (again[2] - again[0])
    plain = masked_pair_columns(aligned, landmarks, box, five, "t1")
    columns = masked_pair_columns(aligned, landmarks, box, fitted, "t1")
    assert columns["T"] == plain["T"] and columns["M"] != plain["M"]
    kind, color = choose_mask(fitted.mask_kinds, fitted.seed, "t1")
    expected = apply_mask(
        aligned, landmarks, kind, color, 0, "t1", fit="dlib68", landmarks68=landmarks68(aligned, box)
    )
    np.testing.assert_array_equal(data.decode_png(columns["M"]), expected.masked)


def test_prepare_and_the_bulk_job_give_a_bad_photo_the_same_status_and_a_reason_for_people(tmp_path) -> None:
    from unmask_core.bulk.config import BulkConfig
    from unmask_core.bulk.stages import FaceFindingStage
    from unmask_core.prepare.config import PrepareConfig
    from unmask_core.prepare.pairs import SyntheticPairMaker

    photos = {
        "one_pixel.png": encode(Image.fromarray(np.zeros((1, 1, 3), np.uint8)), "PNG"),
        "eleven_pixels.jpg": encode(Image.fromarray(np.full((11, 11, 3), 90, np.uint8)), "JPEG"),
        "text_named.jpg": b"just some text, not an image\n",
    }
    for name, payload in photos.items():
        (tmp_path / name).write_bytes(payload)
    prepare = SyntheticPairMaker(PrepareConfig(input=str(tmp_path), output="-"))
    bulk = FaceFindingStage(BulkConfig(input=str(tmp_path), output="-", models="-"))
    for name in photos:
        uri = str(tmp_path / name)
        pair_row = prepare.make(data.ImageRecord(uri=uri, identity="x", id=name), "train")
        (bulk_row,) = bulk.faces_of({"id": name, "uri": uri})
        assert pair_row["status"] == bulk_row["status"] != "internal_error", (pair_row["error"], bulk_row)
        for reason in (pair_row["error"], bulk_row["error"]):
            assert reason and " at 0x" not in reason and "<" not in reason, reason
    assert pair_row["status"] == "decode_error"
    assert pair_row["error"] == "not an image: no known image format starts this way"


def test_a_refused_prepare_leaves_no_output_folder(tmp_path, capsys) -> None:
    (tmp_path / "corpus").mkdir()
    out = tmp_path / "pairs"
    assert cli.main(["prepare", "--input", str(tmp_path / "corpus"), "--output", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"unmask prepare: error: {tmp_path / 'corpus'}: no images found in the folders layout"]
    assert not out.exists()
