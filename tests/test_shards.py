"""The resumable-shards skeleton: the plan pins what made an output, and a refused run writes nothing."""

from __future__ import annotations

import json
import os
import time

import pyarrow as pa
import pytest

from unmask_core import shards, storage
from unmask_core.data import ImageRecord
from unmask_core.errors import UserError

MODELS_A = {"encoder_sha256": "a" * 64, "generator_sha256": "g" * 64, "matchers": "facenet:f"}


def _start(out: str, pins: dict[str, str], overwrite: bool = False, shard_size: int = 2) -> shards.ShardedRun:
    ids = ["a.jpg", "b.jpg", "c.jpg"]
    return shards.start_run(out, f"{out}/rows", ids, ids, shard_size, pins=pins, overwrite=overwrite)


def test_a_rerun_with_other_models_is_refused_naming_what_differs(tmp_path) -> None:
    out = str(tmp_path / "out")
    run = _start(out, MODELS_A)
    assert (
        run.todo == [0, 1] and json.loads((tmp_path / "out" / "_plan.json").read_text())["pins"] == MODELS_A
    )
    shards.write_table_atomic(run.shard_file(0), pa.table({"id": ["a.jpg", "b.jpg"]}))

    other = dict(MODELS_A, encoder_sha256="b" * 64)
    with pytest.raises(UserError, match=r"\(encoder_sha256 differs\).*--overwrite"):
        _start(out, other)
    with pytest.raises(UserError, match="shard_size: 2 before, 3 now"):
        _start(out, MODELS_A, shard_size=3)
    assert _start(out, MODELS_A).todo == [1]  # the same plan resumes

    fresh = _start(out, other, overwrite=True)
    assert fresh.todo == [0, 1] and not fresh.done
    assert json.loads((tmp_path / "out" / "_plan.json").read_text())["pins"] == other


def test_the_input_fingerprint_sees_new_pixels_under_the_same_names(tmp_path) -> None:
    root = tmp_path / "gallery"
    root.mkdir()
    (root / "a.jpg").write_bytes(b"first")
    records = [ImageRecord(uri=str(root / "a.jpg"), identity="", id="a.jpg")]
    before = shards.input_fingerprint(str(root), records)
    assert shards.input_fingerprint(str(root), records) == before
    time.sleep(0.01)
    (root / "a.jpg").write_bytes(b"other pixels")
    os.utime(root / "a.jpg")
    assert shards.input_fingerprint(str(root), records) != before


def test_the_fingerprint_of_a_manifest_covers_the_manifest(tmp_path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("uri\ns3://b/x.jpg\n")
    records = [ImageRecord(uri="s3://b/x.jpg", identity="", id="x")]
    before = shards.input_fingerprint(str(manifest), records)
    manifest.write_text("uri\ns3://b/x.jpg\n\n")
    assert shards.input_fingerprint(str(manifest), records) != before


@pytest.mark.parametrize("argv", [["--shard-size", "0"], ["--mask-kinds", "bandana"], ["--seed", "x"]])
def test_an_invalid_prepare_run_writes_nothing(tmp_path, argv: list[str]) -> None:
    from unmask_core import cli

    (tmp_path / "corpus" / "p").mkdir(parents=True)
    out = tmp_path / "out"
    out.mkdir()
    command = ["prepare", "--input", str(tmp_path / "corpus"), "--output", str(out), *argv]
    try:
        code = cli.main(command)
    except SystemExit as exit_info:  # argparse refuses a value that is not a number itself
        code = exit_info.code
    assert code == 2
    assert list(out.iterdir()) == []


def test_storage_delete_removes_a_prefix(tmp_path, bucket: str) -> None:
    for base in (str(tmp_path), bucket):
        storage.write_bytes_atomic(storage.join(base, "rows", "shard-000000.parquet"), b"x")
        storage.delete(storage.join(base, "rows"))
        assert not storage.exists(storage.join(base, "rows", "shard-000000.parquet"))
        storage.delete(storage.join(base, "rows"))  # nothing there: no error
