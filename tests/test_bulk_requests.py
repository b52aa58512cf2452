"""What the bulk job asks of S3, counted by a proxy in front of the real server: a fresh run lists its
input once (one request per 1,000 keys) and reads each input with one GET; a resume lists nothing and
does the inputs that were planned, however the bucket changed since."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.images import gallery_photos
from unmask_core import local_s3, shards, storage

REPO_ROOT = Path(__file__).resolve().parent.parent
JUNK = 1100  # files that are no images: cheap inputs (a GET and a decode_error row), two list pages


def _run(command: list[str], proxy: local_s3.CountingProxy) -> subprocess.CompletedProcess:
    env = {**os.environ, "AWS_ENDPOINT_URL": proxy.endpoint}
    env.pop("RAY_ADDRESS", None)
    proxy.reset()
    return subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_one_listing_one_get_per_input_and_a_resume_that_lists_nothing(
    bucket: str, tiny_model_set: str, tmp_path
) -> None:
    client, name, _ = storage.s3_client(bucket)
    inputs = {f"g/photos/{k}": payload for k, payload in gallery_photos(2).items()}
    inputs.update({f"g/junk/{k:04d}.jpg": f"not an image {k}".encode() for k in range(JUNK)})
    for key, payload in inputs.items():
        client.put_object(Bucket=name, Key=key, Body=payload)
    out = tmp_path / "out"  # local: every S3 request the proxy sees is about the input
    job = [
        sys.executable, "-m", "jobs.unmask", "--input", f"{bucket}/g", "--output", str(out),
        "--models", tiny_model_set, "--matchers", "arcface", "--shard-size", "64", "--actors", "1,1",
        "--cpu-actors", "1,2",
    ]  # fmt: skip

    with local_s3.CountingProxy(os.environ["AWS_ENDPOINT_URL"]) as proxy:
        first = _run(job, proxy)
        assert first.returncode == 0, first.stderr[-3000:]
        assert proxy.counts()["LIST"] == 2  # ceil(1,102 / 1,000)
        gets = proxy.gets_by_key()
        assert {key: gets[f"{name}/{key}"] for key in inputs} == dict.fromkeys(inputs, 1)
        assert proxy.counts()["GET"] == len(inputs) and proxy.counts()["HEAD"] <= 2  # the bucket's check

        # As a run killed before these commits leaves its output; and the bucket changes meanwhile.
        redone = [0, 17]  # the first shard and the last (1,102 = 17 x 64 + 14)
        for shard in redone:
            os.remove(shards.shard_file(str(out / "rows"), shard))
        client.put_object(Bucket=name, Key="g/junk/0000-new.jpg", Body=b"added after the plan")
        client.put_object(Bucket=name, Key="g/junk/1099.jpg", Body=b"rewritten after the plan")
        second = _run(job, proxy)
        assert second.returncode == 0, second.stderr[-3000:]
        assert proxy.counts()["LIST"] == 0
        assert proxy.counts()["GET"] == 64 + 14  # the two shards' inputs, once each

    summary = json.loads((out / "summary.json").read_text())
    assert (summary["inputs"], summary["shards_processed"], summary["shards_skipped"]) == (len(inputs), 2, 16)
    assert summary["reconciled"]
    rows = shards.read_rows(str(out / "rows"), columns=["id", "status", "error"]).to_pylist()
    assert sorted(row["id"] for row in rows) == sorted(key[2:] for key in inputs)  # the planned inputs
    changed = next(row for row in rows if row["id"] == "junk/1099.jpg")
    assert changed["status"] == "read_error" and "changed since the job was planned" in changed["error"]
