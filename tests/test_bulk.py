"""Bulk unmasking end to end on SeaweedFS and a local Ray: real photos, odd files, hostile keys,
exactly-once under a killed driver and a killed actor."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.support.images import encode, odd_files
from tests.support.processes import pids_with_title
from unmask_core import cli, local_s3, shards, storage
from unmask_core.faces.samples import load_rgb, sample_photo
from unmask_core.models.model_set import init_model_set

HOSTILE_KEYS = ["with space/a b.jpg", "ünïcödé/фото.jpg", "dots/..hidden.jpg"]
# S3 stores refuse '..' path segments in keys; such names reach the job as manifest ids instead.
HOSTILE_IDS = ["../../escape.jpg", "/etc/absolute.jpg", "a/../../../b.jpg"]


def _s3_client():
    return boto3.client("s3")


def _put(bucket_uri: str, key: str, payload: bytes) -> None:
    # boto3 directly, so keys reach the store exactly as written ('..' included)
    _s3_client().put_object(Bucket=bucket_uri[5:], Key=key, Body=payload)


def _real_photos() -> dict[str, bytes]:
    import skimage.data

    hanks = load_rgb(sample_photo("Tom_Hanks_54745.png"))
    padded = np.pad(np.kron(hanks, np.ones((2, 2, 1), np.uint8)), ((40, 40), (40, 40), (0, 0)), mode="edge")
    return {
        "t1.jpg": sample_photo("t1.jpg").read_bytes(),
        "tom_hanks_upscaled.png": encode(Image.fromarray(padded), "PNG"),
        "astronaut.png": encode(Image.fromarray(skimage.data.astronaut()), "PNG"),
    }


def _generated_photos(count: int) -> dict[str, bytes]:
    """Variations of a real group photo (crops around different people, flips): generated gallery images."""
    group = load_rgb(sample_photo("t1.jpg"))
    out = {}
    for k in range(count):
        left = (k * 180) % max(1, group.shape[1] - 400)
        crop = group[:, left : left + 400]
        if k % 2:
            crop = crop[:, ::-1]
        out[f"generated/{k:03d}.jpg"] = encode(
            Image.fromarray(np.ascontiguousarray(crop)), "JPEG", quality=90
        )
    return out


@pytest.fixture(scope="module")
def models_uri(tmp_path_factory, s3_server) -> str:
    bucket = f"s3://models-{os.getpid()}"
    local_s3.create_bucket(s3_server, bucket[5:])
    init_model_set(64, f"{bucket}/set", seed=3)
    return f"{bucket}/set"


def _read_rows(out: str):
    return shards.read_rows(storage.join(out, "rows"))


def _all_keys(bucket: str) -> list[str]:
    response = _s3_client().list_objects_v2(Bucket=bucket[5:])
    return [item["Key"] for item in response.get("Contents", [])]


@pytest.mark.slow
def test_gallery_end_to_end_with_odd_inputs(bucket: str, models_uri: str, ray_local, tmp_path) -> None:
    photo = load_rgb(sample_photo("t1.jpg"))[100:400, 200:500]
    inputs = {**_real_photos(), **_generated_photos(2)}
    inputs.update({f"bad/{name}": payload for name, payload in odd_files(photo).items()})
    blank = encode(Image.fromarray(np.full((120, 160, 3), 90, np.uint8)), "PNG")
    inputs["no_face.png"] = blank
    for key in HOSTILE_KEYS:
        inputs[key] = inputs["astronaut.png"]
    for key, payload in inputs.items():
        _put(bucket, f"gallery/{key}", payload)

    out = f"{bucket}/out"
    code = cli.main(
        [
            "unmask",
            "--input",
            f"{bucket}/gallery",
            "--output",
            out,
            "--models",
            models_uri,
            "--shard-size",
            "5",
            "--batch-size",
            "4",
        ]
    )
    assert code == 0

    table = _read_rows(out)
    rows = table.to_pylist()
    by_id: dict[str, list[dict]] = {}
    for row in rows:
        by_id.setdefault(row["id"], []).append(row)
    listed = set(
        storage.relative_key(f"{bucket}/gallery", u) for u in storage.list_files(f"{bucket}/gallery")
    )
    assert set(by_id) == listed  # every input has a row, nothing else does
    status = {key: {r["status"] for r in group} for key, group in by_id.items()}
    assert status["bad/zero_byte.jpg"] == {"decode_error"}
    assert status["bad/truncated.jpg"] == {"decode_error"}
    assert status["bad/text_named.jpg"] == {"decode_error"}
    assert status["bad/bomb_header.png"] == {"too_large"}
    assert status["no_face.png"] == {"no_face"}
    for ok_key in ("t1.jpg", "tom_hanks_upscaled.png", "astronaut.png", "bad/cmyk.jpg", "bad/rgba.png"):
        assert status[ok_key] == {"ok"}, (ok_key, by_id[ok_key])
    for row in rows:
        assert row["status"] == "ok" or row["error"], row
    for key in HOSTILE_KEYS:
        assert status[key] == {"ok"}

    # Embeddings: fixed-size lists of the matcher's dimension, L2-normalised where the matcher says so.
    from unmask_core.inference import describe_model_set

    info = describe_model_set(models_uri, ["arcface", "facenet"])
    ok_rows = [r for r in rows if r["status"] == "ok"]
    for name, dim in info.embedding_dims.items():
        for kind in ("masked", "unmasked"):
            field = table.schema.field(f"embedding_{kind}_{name}")
            assert field.type.list_size == dim
            vectors = np.array([r[f"embedding_{kind}_{name}"] for r in ok_rows], np.float32)
            assert vectors.shape == (len(ok_rows), dim)
            if info.normalized[name]:
                assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert {r["encoder_sha256"] for r in rows} == {info.provenance["encoder_sha256"]}

    # Unmasked images exist where the rows say, under OUTPUT, and decode.
    for row in ok_rows:
        assert row["unmasked_uri"].startswith(f"{out}/images/")
        assert Image.open(io.BytesIO(storage.read_bytes(row["unmasked_uri"]))).size[0] > 0

    # The Parquet opens in pandas, pyarrow and duckdb.
    local = tmp_path / "rows"
    local.mkdir()
    for uri in storage.list_files(storage.join(out, "rows"), (".parquet",)):
        (local / os.path.basename(uri)).write_bytes(storage.read_bytes(uri))
    import duckdb
    import pandas as pd

    frame = pd.read_parquet(local)
    assert len(frame) == len(rows)
    assert pq.read_table(local).num_rows == len(rows)
    count = duckdb.sql(
        f"select count(*) from read_parquet('{local}/*.parquet') where status = 'ok'"
    ).fetchall()[0][0]
    assert count == len(ok_rows)
    summary = json.loads(storage.read_bytes(storage.join(out, "summary.json")))
    assert summary["reconciled"] and summary["inputs"] == len(listed)

    # A manifest whose ids try to climb out of the output: names are sanitised, nothing escapes.
    manifest = "uri,id\n" + "".join(f"{bucket}/gallery/astronaut.png,{i}\n" for i in HOSTILE_IDS)
    _put(bucket, "manifest.csv", manifest.encode())
    out2 = f"{bucket}/out2"
    code = cli.main(
        [
            "unmask",
            "--input",
            f"{bucket}/manifest.csv",
            "--output",
            out2,
            "--models",
            models_uri,
            "--matchers",
            "arcface",
        ]
    )
    assert code == 0
    rows2 = _read_rows(out2).to_pylist()
    assert sorted(r["id"] for r in rows2) == sorted(HOSTILE_IDS)
    assert all(r["status"] == "ok" and r["unmasked_uri"].startswith(f"{out2}/images/") for r in rows2)
    assert all(".." not in r["unmasked_uri"].split("/") for r in rows2)
    keys = _all_keys(bucket)
    assert all(k.startswith(("gallery/", "out/", "out2/", "manifest.csv")) for k in keys), keys


def _gallery(bucket: str, count: int) -> str:
    for key, payload in _generated_photos(count).items():
        _put(bucket, f"g/{key}", payload)
    return f"{bucket}/g"


@pytest.mark.slow
def test_killed_driver_rerun_redoes_only_unfinished_shards(bucket: str, models_uri: str) -> None:
    inputs = 6  # shards of one: the kill comes after 2 of them, with 4 still to do
    gallery, out = _gallery(bucket, inputs), f"{bucket}/out"
    command = [
        sys.executable,
        "-m",
        "jobs.unmask",
        "--input",
        gallery,
        "--output",
        out,
        "--models",
        models_uri,
        "--shard-size",
        "1",
        # Faces stream to the unmask stage in batches that span shards: batches of one face let shards
        # finish one by one, so that the driver dies with some of them done and some not.
        "--batch-size",
        "1",
        "--actors",
        "1,1",
    ]
    rows_uri = storage.join(out, "rows")
    with local_s3.CountingProxy(os.environ["AWS_ENDPOINT_URL"]) as proxy:
        env = {**os.environ, "AWS_ENDPOINT_URL": proxy.endpoint}
        env.pop("RAY_ADDRESS", None)
        # The last 4 inputs' reads stall until the driver is dead: the kill cannot come too late,
        # however fast the machine finishes shards.
        listed = _s3_client().list_objects_v2(Bucket=bucket[5:], Prefix="g/")["Contents"]  # in key order
        proxy.hold(f"{bucket[5:]}/{obj['Key']}" for obj in listed[2:])
        first = subprocess.Popen(
            command, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(shards.finished_shards(rows_uri)) < 2:
            assert first.poll() is None, "the job ended before it could be killed"
            time.sleep(0.2)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        time.sleep(3)  # let the killed job's workers notice their driver is gone
        proxy.release()
        finished_before = shards.finished_shards(rows_uri)
        assert finished_before == {0, 1}

        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads(storage.read_bytes(storage.join(out, "summary.json")))
    assert summary["shards_skipped"] == len(finished_before)
    assert summary["shards_processed"] == inputs - len(finished_before)
    ids = _read_rows(out).column("id").to_pylist()
    assert sorted(set(ids)) == sorted(ids) and len(ids) == inputs  # one row per input, no duplicates


@pytest.mark.slow
def test_killed_actor_is_survived_exactly_once(bucket: str, models_uri: str, ray_local) -> None:
    from unmask_core.bulk.config import BulkConfig
    from unmask_core.bulk.run import run_bulk

    gallery, out = _gallery(bucket, 8), f"{bucket}/out"
    # Batches of one face: shards finish one by one, so the actor can be killed between two of them.
    cfg = BulkConfig(
        input=gallery,
        output=out,
        models=models_uri,
        shard_size=1,
        batch_size=1,
        actors="1,1",
        matchers=["arcface"],
    )
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(summary=run_bulk(cfg)))
    thread.start()
    killed = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and thread.is_alive():
        actors = pids_with_title("ray::MapWorker(MapBatches(UnmaskingStage))")
        if actors and shards.finished_shards(storage.join(out, "rows")):
            killed = actors[0]
            os.kill(killed, signal.SIGKILL)
            break
        time.sleep(0.1)
    thread.join(timeout=400)
    assert killed is not None, "the job finished before an actor could be killed"
    assert result["summary"]["reconciled"]
    ids = _read_rows(out).column("id").to_pylist()
    assert sorted(set(ids)) == sorted(ids) and len(ids) == 8
