"""The bulk job's checks before any work: a refused run says why in one line and leaves nothing behind,
not even an empty output folder."""

from __future__ import annotations

import dataclasses

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from unmask_core import cli, storage
from unmask_core.bulk.config import BulkConfig
from unmask_core.errors import TransientError
from unmask_core.faces.samples import sample_photo


@pytest.fixture
def gallery(tmp_path) -> str:
    (tmp_path / "gallery").mkdir()
    (tmp_path / "gallery" / "t1.jpg").write_bytes(sample_photo("t1.jpg").read_bytes())
    return str(tmp_path / "gallery")


def _refused(argv: list[str], capsys) -> str:
    code = cli.main(["unmask", *argv])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    return lines[0]


def test_every_bulk_setting_is_pinned_or_operational() -> None:
    groups = (BulkConfig.SUBJECT, BulkConfig.PINNED, BulkConfig.OPERATIONAL)
    named = [name for group in groups for name in group]
    assert sorted(named) == sorted(field.name for field in dataclasses.fields(BulkConfig))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--max-bytes", "-5"], "--max-bytes must be positive (got -5)"),
        (["--max-pixels", "0"], "--max-pixels must be positive (got 0)"),
        (["--detector", "/nonexistent"], "--detector /nonexistent: no such folder"),
    ],
)
def test_bad_settings_are_refused_before_anything_is_written(
    tmp_path, gallery: str, tiny_model_set: str, capsys, extra: list[str], message: str
) -> None:
    out = tmp_path / "out"
    line = _refused(["--input", gallery, "--output", str(out), "--models", tiny_model_set, *extra], capsys)
    assert message in line
    assert not out.exists()


def test_a_detector_folder_without_a_readable_detector_is_refused(
    tmp_path, gallery: str, tiny_model_set: str, capsys
) -> None:
    (tmp_path / "det").mkdir()
    (tmp_path / "det" / "det_10g.onnx").write_bytes(b"half a download")
    out = tmp_path / "out"
    argv = ["--input", gallery, "--output", str(out), "--models", tiny_model_set]
    assert "--detector" in _refused([*argv, "--detector", str(tmp_path / "det")], capsys)
    assert not out.exists()


def test_an_input_inside_the_output_is_refused(tmp_path, gallery: str, tiny_model_set: str, capsys) -> None:
    line = _refused(["--input", gallery, "--output", str(tmp_path), "--models", tiny_model_set], capsys)
    assert "lies inside --output" in line


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("m.csv", b"uri,id\na.jpg,1\nb\xff.jpg,2\n", "m.csv: line 3: not UTF-8 text"),
        ("m.parquet", {"uri": ["a.jpg", None]}, "m.parquet: row 2 has no uri"),
    ],
)
def test_a_bad_manifest_is_refused_in_one_line(
    tmp_path, tiny_model_set: str, capsys, name: str, content, message: str
) -> None:
    manifest = tmp_path / name
    if isinstance(content, dict):
        pq.write_table(pa.table(content), manifest)
    else:
        manifest.write_bytes(content)
    out = tmp_path / "out"
    line = _refused(["--input", str(manifest), "--output", str(out), "--models", tiny_model_set], capsys)
    assert message in line
    assert not out.exists()


def test_an_unreachable_s3_endpoint_is_named_at_start(tmp_path, tiny_model_set: str, monkeypatch) -> None:
    from unmask_core.bulk.run import run_bulk
    from unmask_core.local_s3 import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "someone")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    cfg = BulkConfig(input="s3://unmask/gallery", output=str(tmp_path / "out"), models=tiny_model_set)
    with pytest.raises(
        TransientError, match=f"s3://unmask/gallery: cannot reach the S3 endpoint '{endpoint}'"
    ):
        run_bulk(cfg)
    assert not storage.exists(str(tmp_path / "out"))
