"""The bulk job when the world fails: a storage outage and a full disk are never an input's answer;
the job stops in one line with every completed shard committed, and the rerun after recovery does
exactly the rest. A resume never mixes settings, and an output inside the input still resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.faults import full_disk, own_s3
from tests.support.images import gallery_photos
from unmask_core import cli, faults, local_s3, shards, storage

REPO_ROOT = Path(__file__).resolve().parent.parent


def _rows(out: str | Path) -> list[dict]:
    rows_uri = storage.join(str(out), "rows")
    if not shards.finished_shards(rows_uri):
        return []
    return shards.read_rows(rows_uri, columns=["id", "status", "error", "unmasked_uri"]).to_pylist()


@pytest.mark.slow
def test_a_storage_outage_and_a_full_disk_lose_nothing(tmp_path, tiny_model_set: str) -> None:
    photos = gallery_photos(6)
    out = tmp_path / "out"
    with own_s3(tmp_path / "s3") as s3, full_disk(out / "images", size="64m") as disk:
        local_s3.create_bucket(s3.server, "gallery")
        env = {**os.environ, **s3.env(), faults.PATIENCE_ENV: "3"}
        env.pop("RAY_ADDRESS", None)
        for name, payload in photos.items():
            s3.put(f"s3://gallery/g/{name}", payload)
        # Shards of one photo, read one at a time: the outage comes while they are being read.
        job = disk.command(
            sys.executable, "-m", "jobs.unmask", "--input", "s3://gallery/g", "--output", str(out),
            "--models", tiny_model_set, "--matchers", "arcface", "--shard-size", "1", "--batch-size", "1",
            "--actors", "1,1", "--cpu-actors", "1,1",
        )  # fmt: skip

        # 1. S3 goes down once the run is planned: the reads fail, and the job stops naming the endpoint.
        first = subprocess.Popen(job, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 300
        while not (out / "_plan.json").exists() and time.monotonic() < deadline:
            assert first.poll() is None, first.communicate()
            time.sleep(0.05)
        s3.stop()
        _, stderr = first.communicate(timeout=300)
        assert first.returncode == 1, stderr.decode()[-3000:]
        assert f"cannot reach the S3 endpoint '{s3.server.endpoint}'" in stderr.decode()
        assert {row["status"] for row in _rows(out)} <= {"ok"}  # what was committed is whole

        # 2. S3 is back, but the disk is full: the images cannot be written, and the job stops.
        s3.restart()
        disk.fill()
        second = subprocess.run(job, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
        assert second.returncode == 1
        assert f"{out}/images/" in second.stderr and "no space left on device" in second.stderr

        # 3. The disk grows: the rerun does exactly what is missing.
        disk.grow("128m")
        third = subprocess.run(job, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
        assert third.returncode == 0, third.stderr[-3000:]
        rows = _rows(out)
        assert sorted(row["id"] for row in rows) == sorted(photos)  # each input exactly once
        assert {row["status"] for row in rows} == {"ok"}
        for row in rows:
            assert disk.seen(row["unmasked_uri"]).stat().st_size > 0


@pytest.mark.slow
def test_an_output_inside_its_input_resumes_and_other_settings_are_refused(
    tmp_path, tiny_model_set: str, ray_local, capsys
) -> None:
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for name, payload in gallery_photos(3).items():
        (gallery / name).write_bytes(payload)
    out = gallery / "unmasked"  # inside the input: the listing leaves it out
    argv = ["unmask", "--input", str(gallery), "--output", str(out), "--models", tiny_model_set]
    argv += ["--matchers", "arcface", "--shard-size", "1"]
    assert cli.main(argv) == 0
    (out / "rows" / "shard-000001.parquet").unlink()  # as a run killed before that commit leaves it

    plan, config = (out / "_plan.json").read_bytes(), (out / "config.yaml").read_bytes()
    capsys.readouterr()
    assert cli.main([*argv, "--aligned"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "aligned: false before, true now" in error[0]
    assert (out / "_plan.json").read_bytes() == plan and (out / "config.yaml").read_bytes() == config

    assert cli.main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["shards_processed"], summary["shards_skipped"]) == (1, 2)
    assert sorted(row["id"] for row in _rows(out)) == ["000.jpg", "001.jpg", "002.jpg"]
