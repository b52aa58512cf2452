"""The bulk stages without Ray: finding faces in aligned galleries, and the driver's shard commits."""

from __future__ import annotations

from concurrent import futures
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from unmask_core import data, shards
from unmask_core.bulk.config import BulkConfig
from unmask_core.bulk.stages import STAGE_SCHEMA, FaceFindingStage, ShardCommitter, row_schema


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
    assert committer.committed() == [1]  # shard 1's input count
    assert shards.finished_shards(rows_uri) == {1}
    committer.add(pa.Table.from_pylist([_stage_row(0, 2, "b", 0, 1), _stage_row(0, 2, "a", 0, 2)], schema))
    assert shards.finished_shards(rows_uri) == {1}  # a's second face has not come yet
    # A retried task sends a row twice: it counts once.
    committer.add(pa.Table.from_pylist([_stage_row(0, 2, "a", 1, 2), _stage_row(0, 2, "a", 1, 2)], schema))
    assert committer.finish() == [2]
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
