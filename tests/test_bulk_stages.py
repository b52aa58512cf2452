"""The bulk stages without Ray: finding faces in aligned galleries, and the driver's shard commits."""

from __future__ import annotations

import json
from concurrent import futures
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from unmask_core import data, shards
from unmask_core.bulk.config import BulkConfig, micro_batch_size
from unmask_core.bulk.rows import STAGE_SCHEMA, row_schema, stage_table
from unmask_core.bulk.stages import FaceFindingStage, ShardCommitter
from unmask_core.shard_counts import read_summary


@pytest.fixture(scope="module")
def demo_masked_crops(tmp_path_factory) -> list[Path]:
    """The demo's gallery of aligned masked crops: the test split of the demo corpus, masked as `prepare`
    masks it (demo.build_gallery writes these M images)."""
    from unmask_core import corpora
    from unmask_core.demo import build_sample_corpus
    from unmask_core.prepare.config import PrepareConfig
    from unmask_core.prepare.pairs import SyntheticPairMaker

    root = tmp_path_factory.mktemp("demo")
    build_sample_corpus(root / "corpus", variants=4, seed=0)
    records = corpora.layout("folders").list_records(str(root / "corpus"))
    split = data.identity_split([r.identity for r in records], 0.4, 0)
    maker = SyntheticPairMaker(PrepareConfig(input=str(root / "corpus"), output="unused", test_fraction=0.4))
    gallery = root / "gallery"
    gallery.mkdir()
    for record in records:
        if split[record.identity] == "test":
            row = maker.make(record, "test")
            assert row["status"] == "ok", row
            (gallery / f"{record.id.replace('/', '__')}.png").write_bytes(row["M"])
    return sorted(gallery.iterdir())


def _find(paths: list[Path], aligned: bool) -> list[list[dict]]:
    stage = FaceFindingStage(BulkConfig(input="-", output="-", models="-", aligned=aligned))
    return [stage.faces_of({"id": p.name, "uri": str(p)}) for p in paths]


def test_aligned_gallery_skips_detection_and_keeps_every_face(demo_masked_crops) -> None:
    from unmask_core.faces.align import template

    assert len(demo_masked_crops) == 12
    for path, rows in zip(demo_masked_crops, _find(demo_masked_crops, aligned=True)):
        assert [r["status"] for r in rows] == ["ok"]
        face = np.frombuffer(rows[0]["face"], np.uint8).reshape(256, 256, 3)
        assert np.array_equal(face, data.decode_png(path.read_bytes()))  # the image is the face
        assert rows[0]["bbox"] == [0.0, 0.0, 256.0, 256.0]
        assert np.allclose(np.reshape(rows[0]["landmarks"], (5, 2)), template(256), atol=1e-3)


def test_faces_filling_their_frame_are_found_without_the_aligned_flag(demo_masked_crops) -> None:
    found = [rows[0]["status"] == "ok" for rows in _find(demo_masked_crops, aligned=False)]
    assert sum(found) >= 11, found


def _stage_row(shard: int, shard_inputs: int, record_id: str, face_index: int, input_rows: int) -> dict:
    return {
        "shard": shard,
        "shard_inputs": shard_inputs,
        "input_rows": input_rows,
        "id": record_id,
        "source_uri": f"/g/{record_id}",
        "status": "ok",
        "error": "",
        "face_index": face_index,
        "unmasked_uri": f"/o/images/{record_id}-{face_index}.png",
    }


def test_a_shard_is_committed_once_all_rows_of_all_its_inputs_arrived(tmp_path: Path) -> None:
    schema = pa.schema([*(f for f in STAGE_SCHEMA if f.name != "face"), ("unmasked_uri", pa.string())])
    provenance = {"matchers": "m", "encoder_sha256": "e", "generator_sha256": "g"}
    committer = ShardCommitter(str(tmp_path), provenance, {})
    rows_uri = str(tmp_path / "rows")
    # Shard 0: input a (two faces) and b; shard 1: input c. Batches interleave shards, as the stream does.
    committer.add(pa.Table.from_pylist([_stage_row(0, 2, "a", 0, 2), _stage_row(1, 1, "c", 0, 1)], schema))
    futures.wait(committer.commits)
    assert [(shard, summary["inputs"]) for shard, summary in committer.committed()] == [(1, 1)]
    assert shards.finished_shards(rows_uri) == {1}
    committer.add(pa.Table.from_pylist([_stage_row(0, 2, "b", 0, 1), _stage_row(0, 2, "a", 0, 2)], schema))
    assert shards.finished_shards(rows_uri) == {1}  # a's second face has not come yet
    # A retried task sends a row twice: it counts once.
    committer.add(pa.Table.from_pylist([_stage_row(0, 2, "a", 1, 2), _stage_row(0, 2, "a", 1, 2)], schema))
    ((shard, summary),) = committer.finish()
    assert shard == 0 and summary == read_summary(shards.shard_file(rows_uri, 0))
    assert (summary["inputs"], summary["rows"], summary["status_counts"]) == (2, 3, {"ok": 3})
    table = shards.read_rows(rows_uri)
    assert table.schema.equals(row_schema({}))
    assert sorted(zip(table.column("id").to_pylist(), table.column("face_index").to_pylist())) == [
        ("a", 0),
        ("a", 1),
        ("b", 0),
        ("c", 0),
    ]
    assert set(table.column("encoder_sha256").to_pylist()) == {"e"}


def test_a_shard_with_missing_rows_fails_loudly(tmp_path: Path) -> None:
    schema = pa.schema([*(f for f in STAGE_SCHEMA if f.name != "face"), ("unmasked_uri", pa.string())])
    committer = ShardCommitter(str(tmp_path), {}, {})
    committer.add(pa.Table.from_pylist([_stage_row(3, 2, "a", 0, 1)], schema))
    with pytest.raises(RuntimeError, match="shard 3: 1 of 2 inputs"):
        committer.finish()


def _photo_gallery(folder: Path) -> list[dict]:
    """Photos with several faces, a blank image, a truncated file and a JPEG whose header reads but whose
    data does not decode: one shard's records."""
    from PIL import Image

    from tests.support.images import bogus_sampling_jpeg, encode
    from unmask_core.faces.samples import load_rgb, sample_photo

    folder.mkdir()
    group = load_rgb(sample_photo("t1.jpg"))
    (folder / "t1.jpg").write_bytes(sample_photo("t1.jpg").read_bytes())
    (folder / "crop.png").write_bytes(encode(Image.fromarray(np.ascontiguousarray(group[:, 300:800])), "PNG"))
    (folder / "blank.png").write_bytes(encode(Image.fromarray(np.full((90, 120, 3), 80, np.uint8)), "PNG"))
    (folder / "truncated.jpg").write_bytes(sample_photo("t1.jpg").read_bytes()[:300])
    (folder / "bogus.jpg").write_bytes(bogus_sampling_jpeg(sample_photo("t1.jpg").read_bytes()))
    return [{"id": p.name, "uri": str(p)} for p in sorted(folder.iterdir())]


def _unmask_shard(cfg: BulkConfig, records: list[dict], on_device: bool) -> list[dict]:
    from unmask_core.bulk.stages import UnmaskingStage

    found = FaceFindingStage(cfg, detect=not on_device)(
        {"shard": np.array([0]), "records": np.array([json.dumps(records)])}
    )
    return UnmaskingStage(cfg, find_faces=on_device)(found).to_pylist()


def test_faces_found_on_the_device_are_the_faces_the_cpu_stage_finds(tmp_path: Path, tiny_model_set) -> None:
    records = _photo_gallery(tmp_path / "gallery")
    cfg = BulkConfig(
        input="-", output="-", models=tiny_model_set, matchers=["arcface"], faces="all", batch_size=4
    )
    cpu, device = (_unmask_shard(cfg, records, on_device) for on_device in (False, True))
    summary = lambda rows: sorted((r["id"], r["status"], r["input_rows"], r["shard_inputs"]) for r in rows)  # noqa: E731
    assert summary(device) == summary(cpu)
    assert {r["id"]: r["status"] for r in device} == {
        "t1.jpg": "ok",
        "crop.png": "ok",
        "blank.png": "no_face",
        "truncated.jpg": "decode_error",
        "bogus.jpg": "decode_error",
    }
    # A JPEG the device decoder refuses is decoded on the CPU: its reason is the CPU path's, word for word.
    error_of = lambda rows, name: next(r["error"] for r in rows if r["id"] == name)  # noqa: E731
    assert error_of(device, "bogus.jpg") == error_of(cpu, "bogus.jpg") != ""
    assert sorted(r["face_index"] for r in device if r["id"] == "t1.jpg") == list(range(6))
    for c in (r for r in cpu if r["status"] == "ok"):
        # Faces of about one size may come in another order (largest first): pair them by their boxes.
        d = min(
            (r for r in device if r["id"] == c["id"]),
            key=lambda r: np.abs(np.subtract(r["bbox"], c["bbox"])).max(),
        )
        width = c["bbox"][2] - c["bbox"][0]
        assert np.abs(np.subtract(c["bbox"], d["bbox"])).max() < 0.08 * width
        # As in test_faces_device: the letterbox canvas moves MTCNN's points a little (5 px of 256 here).
        assert np.abs(np.subtract(c["landmarks"], d["landmarks"])).max() < 0.03 * 256
        unmasked = [np.frombuffer(r["unmasked"], np.uint8).astype(float) for r in (c, d)]
        assert np.abs(unmasked[0] - unmasked[1]).mean() < 3.0
        # The matcher is randomly initialised, so its embeddings move with every pixel; still, the device
        # twin must be the nearest of the photo's device faces to the CPU face.
        embedding = lambda r: np.asarray(r["embedding_masked_arcface"])  # noqa: E731
        nearest = max(
            (r for r in device if r["id"] == c["id"]), key=lambda r: np.dot(embedding(r), embedding(c))
        )
        assert nearest is d


def test_plain_jpegs_travel_as_their_bytes_and_decode_on_the_device(tmp_path: Path, tiny_model_set) -> None:
    from unmask_core.bulk.device_faces import DeviceFaceFinder
    from unmask_core.faces.samples import load_rgb, sample_photo

    cfg = BulkConfig(input="-", output="-", models=tiny_model_set)
    records = _photo_gallery(tmp_path / "gallery")
    rows = FaceFindingStage(cfg, detect=False)(
        {"shard": np.array([0]), "records": np.array([json.dumps(records)])}
    ).to_pylist()
    travel = {r["id"]: ("jpeg" if r["jpeg"] else "pixels" if r["image"] else None) for r in rows}
    # The JPEGs whose header reads travel as they are; the PNGs as pixels; the cut file is a host error row.
    assert travel == {
        "t1.jpg": "jpeg",
        "bogus.jpg": "jpeg",
        "crop.png": "pixels",
        "blank.png": "pixels",
        "truncated.jpg": None,
    }
    t1 = next(r for r in rows if r["id"] == "t1.jpg")
    assert len(t1["jpeg"]) == sample_photo("t1.jpg").stat().st_size
    finder = DeviceFaceFinder(cfg, "cpu")
    photos = finder.photos([r for r in rows if r["status"] == "ok"])
    by_id = dict(zip([r["id"] for r in rows if r["status"] == "ok"], photos))
    assert isinstance(by_id["bogus.jpg"][0], Exception) and by_id["bogus.jpg"][1] is None
    decoded, where = by_id["t1.jpg"]
    assert where == "device"
    assert np.abs(decoded.numpy().astype(int) - load_rgb(sample_photo("t1.jpg"))).mean() < 1
    # The PNGs were decoded by the first stage's host; bogus.jpg by nobody.
    assert finder.decoded == {"device": 1, "cpu": 2}


def test_a_jpeg_the_device_decoder_refuses_is_decoded_on_the_cpu(
    tmp_path: Path, tiny_model_set, cuda_state, monkeypatch
) -> None:
    """nvJPEG failing on a node (here: the device decoder made to fail) costs no photo: each is decoded
    on the CPU instead, counted, and after a few such photos the actor stops asking the device."""
    from unmask_core.bulk.device_faces import DeviceFaceFinder
    from unmask_core.bulk.stages import UnmaskingStage

    calls = []

    def refuse(self, encoded):
        calls.append(len(encoded))
        raise RuntimeError("nvJPEG is not available on this node")

    monkeypatch.setattr(DeviceFaceFinder, "decode_on_device", refuse)
    cfg = BulkConfig(input="-", output="-", models=tiny_model_set, matchers=["arcface"], faces="all")
    records = _photo_gallery(tmp_path / "gallery")
    found = FaceFindingStage(cfg, detect=False)(
        {"shard": np.array([0]), "records": np.array([json.dumps(records)])}
    )
    stage = UnmaskingStage(cfg, find_faces=True)
    assert stage.unmasker.bf16  # the CUDA state: the job's GPU precision
    rows = stage(found).to_pylist()
    status = {r["id"]: r["status"] for r in rows}
    assert status == {
        "t1.jpg": "ok", "crop.png": "ok", "blank.png": "no_face", "truncated.jpg": "decode_error",
        "bogus.jpg": "decode_error",
    }  # fmt: skip
    assert sum(r["id"] == "t1.jpg" and r["unmasked"] is not None for r in rows) == 6
    assert {r["decoded_on"] for r in rows if r["id"] == "t1.jpg"} == {"cpu"}
    # t1.jpg decoded on the CPU after the device refused it; the PNGs on the first stage's host.
    assert stage.face_finder.decoded == {"cpu": 3}
    assert calls == [2, 1, 1]  # the batch, then each JPEG on its own
    # Strikes: a node whose device decoder refuses photos the CPU reads stops asking it.
    finder = stage.face_finder
    finder.device_decode_strikes = finder.DEVICE_DECODE_STRIKES
    stage(found)
    assert calls == [2, 1, 1] and finder.decoded == {"cpu": 6}


def test_faces_filling_their_frame_are_found_on_the_device_too(demo_masked_crops, tiny_model_set) -> None:
    from unmask_core.bulk.device_faces import DeviceFaceFinder

    cfg = BulkConfig(input="-", output="-", models=tiny_model_set)
    decoder = FaceFindingStage(cfg, detect=False)
    rows = [decoder.faces_of({"id": p.name, "uri": str(p)})[0] for p in demo_masked_crops]
    for row in rows:
        row.update(shard=0, shard_inputs=len(rows), input_rows=1)
    table = stage_table(rows)
    faces, crops = DeviceFaceFinder(cfg, "cpu")(table)
    found = faces.column("status").to_pylist()
    assert found.count("ok") >= 11, found
    assert crops.dtype == torch.uint8 and tuple(crops.shape) == (found.count("ok"), 256, 256, 3)
    assert faces.column("image").null_count == faces.num_rows  # the photos do not travel on


def test_a_small_jobs_batches_shrink_to_an_even_share_per_unmask_actor() -> None:
    assert micro_batch_size(32, 10_000, 4) == 32  # a large job: --batch-size as asked
    assert micro_batch_size(8, 8, 2) == 4  # 8 photos, 2 actors: one batch each, not one for one actor
    assert micro_batch_size(8, 9, 2) == 5
    assert micro_batch_size(8, 1, 4) == 1
