"""The jobs under `ray job submit`, against a real Ray head started with `ray start` (token auth on) and a
real S3 server: they attach through RAY_ADDRESS, run from an uploaded working dir that carries code
only, and read and write s3:// like on a cluster.

This head is a Ray instance of its own, separate from the in-process Ray of other test modules, so the
`ray_local` fixture is deliberately not used here.
"""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from ray.job_submission import JobStatus

from tests.conftest import REPO_ROOT
from tests.support.images import encode
from tests.support.ray_head import (
    RayHead,
    hanks_upscaled,
    put,
    start_head,
    submit_and_wait,
)
from unmask_core import local_s3, shards, storage
from unmask_core.faces.samples import load_rgb, sample_photo

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_head(s3_server: local_s3.S3Server) -> Iterator[RayHead]:
    # Short and under /tmp: Ray's Unix socket paths under the temp dir must fit in 107 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="rayhead-", dir="/tmp"))
    head = None
    try:
        # The S3 endpoint and credentials in the head's own environment, so that job drivers and
        # workers inherit them the way cluster nodes get theirs.
        head = start_head(temp_dir, s3_server.env())
        yield head
    finally:
        if head is not None:
            head.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def model_set(s3_server: local_s3.S3Server) -> str:
    """A tiny random model set written by the real CLI (`python -m jobs.models init`) to S3."""
    name = f"models-{secrets.token_hex(4)}"
    local_s3.create_bucket(s3_server, name)
    uri = f"s3://{name}/set"
    subprocess.run(
        [sys.executable, "-m", "jobs.models", "init", "--size", "64", "--output", uri],
        cwd=REPO_ROOT,
        env={**os.environ, **s3_server.env()},
        check=True,
        capture_output=True,
        timeout=120,
    )
    return uri


PROBE = textwrap.dedent(
    """
    import json, os
    import ray
    from unmask_core import ray_session

    ray_session.connect()

    @ray.remote
    def worker_env():
        return {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_REGION")}

    print("PROBE " + json.dumps({
        "ray_address": os.environ.get("RAY_ADDRESS"),
        "gcs_address": ray.get_runtime_context().gcs_address,
        "cluster_cpus": ray.cluster_resources().get("CPU"),
        "working_dir": sorted(os.listdir(".")),
        "worker_env": ray.get(worker_env.remote()),
    }))
    """
)


def test_a_submitted_driver_attaches_to_the_head_through_ray_address(ray_head: RayHead, s3_server):
    logs = submit_and_wait(ray_head, f"python -c {shlex.quote(PROBE)}", timeout_s=90)
    probe = json.loads(next(line for line in logs.splitlines() if line.startswith("PROBE "))[6:])

    # ray_session.connect() joined the head it was submitted to instead of starting a Ray of its own.
    assert probe["ray_address"], "ray job submit sets RAY_ADDRESS for the driver"
    assert probe["gcs_address"] == probe["ray_address"]
    assert probe["gcs_address"].endswith(f":{ray_head.gcs_port}")
    assert probe["cluster_cpus"] == 8
    # Workers inherit the S3 endpoint from the node's environment.
    assert probe["worker_env"]["AWS_ENDPOINT_URL"] == s3_server.endpoint
    # The uploaded working dir holds the code and nothing heavy.
    assert {"jobs", "unmask_core", "pyproject.toml"} <= set(probe["working_dir"])
    assert not {".venv", ".git", "demo_out", ".s3data"} & set(probe["working_dir"])


def test_a_job_may_name_the_s3_endpoint_in_its_runtime_env(ray_head: RayHead, s3_server):
    """The way to point one job at an S3-compatible store when the nodes' environment does not:
    `--runtime-env-json '{"env_vars": {"AWS_ENDPOINT_URL": ...}}'`. ray_session forwards the same
    variable to workers, and Ray refuses a driver runtime_env whose env_vars overlap the job's."""
    logs = submit_and_wait(
        ray_head,
        f"python -c {shlex.quote(PROBE)}",
        timeout_s=90,
        env_vars={"AWS_ENDPOINT_URL": s3_server.endpoint, "AWS_REGION": "us-east-1"},
    )
    probe = json.loads(next(line for line in logs.splitlines() if line.startswith("PROBE "))[6:])
    assert probe["worker_env"] == {"AWS_ENDPOINT_URL": s3_server.endpoint, "AWS_REGION": "us-east-1"}


def test_the_job_server_refuses_requests_without_the_token(ray_head: RayHead):
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{ray_head.dashboard_url}/api/jobs/", timeout=10)
    assert refused.value.code == 401
    request = urllib.request.Request(
        f"{ray_head.dashboard_url}/api/jobs/", headers={"Authorization": f"Bearer {ray_head.token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200


def test_bulk_unmask_job_writes_a_row_for_every_input(ray_head: RayHead, model_set: str, bucket: str):
    gallery = {
        "t1.jpg": sample_photo("t1.jpg").read_bytes(),
        "Tom_Hanks_54745.png": sample_photo("Tom_Hanks_54745.png").read_bytes(),
        "people/hanks_upscaled.png": hanks_upscaled(),
        "people/truncated.jpg": sample_photo("t1.jpg").read_bytes()[:5000],
    }
    for key, payload in gallery.items():
        put(bucket, f"gallery/{key}", payload)
    out = f"{bucket}/out"

    submit_and_wait(
        ray_head,
        f"python -m jobs.unmask --input {bucket}/gallery --output {out} --models {model_set} "
        "--shard-size 2 --batch-size 4",
    )

    rows = shards.read_rows(storage.join(out, "rows")).to_pylist()
    assert {row["id"] for row in rows} == set(gallery)
    status = {row["id"]: row["status"] for row in rows}
    assert status["people/truncated.jpg"] == "decode_error"
    assert status["t1.jpg"] == "ok"
    ok = [row for row in rows if row["status"] == "ok"]
    assert all(storage.exists(row["unmasked_uri"]) for row in ok)


@pytest.fixture(scope="module")
def corpus_pairs(ray_head: RayHead, s3_server: local_s3.S3Server) -> tuple[str, set[str]]:
    """A small identity-folders corpus of real photos in S3, turned into pairs by a submitted
    `jobs.prepare`; returns (pairs URI, corpus keys)."""
    name = f"corpus-{secrets.token_hex(4)}"
    local_s3.create_bucket(s3_server, name)
    t1 = load_rgb(sample_photo("t1.jpg"))
    corpus = {
        "crowd/t1.jpg": encode(Image.fromarray(t1), "JPEG", quality=92),
        "crowd/t1_mirrored.jpg": encode(Image.fromarray(np.ascontiguousarray(t1[:, ::-1])), "JPEG"),
        "hanks/upscaled.png": hanks_upscaled(),
        "hanks/mirrored.png": hanks_upscaled(mirrored=True),
    }
    for key, payload in corpus.items():
        put(f"s3://{name}", f"corpus/{key}", payload)
    pairs = f"s3://{name}/pairs"
    submit_and_wait(
        ray_head,
        f"python -m jobs.prepare --corpus folders --input s3://{name}/corpus --output {pairs} "
        "--test-fraction 0 --image-size 64 --workers 2",
    )
    return pairs, set(corpus)


def test_prepare_job_writes_a_pair_row_for_every_corpus_image(corpus_pairs: tuple[str, set[str]]):
    pairs, corpus_keys = corpus_pairs
    rows = shards.read_rows(storage.join(pairs, "pairs"), columns=["id", "identity", "split", "status"])
    rows = rows.to_pylist()
    assert {row["id"] for row in rows} == corpus_keys
    assert {row["identity"] for row in rows} == {"crowd", "hanks"}
    assert {row["split"] for row in rows} == {"train"}
    assert {row["status"] for row in rows if row["identity"] == "crowd"} == {"ok"}


def test_train_job_checkpoints_to_s3_and_exports_a_model_set(
    ray_head: RayHead, model_set: str, corpus_pairs: tuple[str, set[str]], bucket: str
):
    pairs, _ = corpus_pairs
    runs = f"{bucket}/runs"
    # One worker: two-worker DDP, killed workers included, has its own test (test_training).
    submit_and_wait(
        ray_head,
        f"python -m jobs.train --stage baseline --workers 1 --steps 3 --checkpoint-every 2 --batch-size 2 "
        f"--lpips-backbone random --pairs {pairs} --models {model_set} --output {runs}",
    )

    metrics = storage.read_bytes(storage.join(runs, "baseline", "metrics.csv")).decode()
    assert [int(float(row["step"])) for row in csv.DictReader(io.StringIO(metrics))] == [1, 2, 3]
    trained = storage.list_files(storage.join(runs, "models"))
    assert any(uri.endswith("baseline_encoder.pt") for uri in trained), trained


def test_a_driver_without_the_clusters_token_is_one_line(ray_head: RayHead, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "UNMASK_VERBOSE"))}
    # No token anywhere: not in the environment, and a home without ~/.ray/auth_token.
    env.update(RAY_ADDRESS=f"127.0.0.1:{ray_head.gcs_port}", HOME=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.demo", "--output", str(tmp_path / "demo")],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"unmask demo: error: RAY_ADDRESS=127.0.0.1:{ray_head.gcs_port}: cannot join the Ray cluster (it "
        "refused this process's auth token, or its lack of one); a cluster with token auth (as `ray start` "
        "makes) needs RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH=<its token file> here"
    ]


def test_a_gpu_asked_of_a_cluster_without_gpus_or_autoscaler_is_refused_in_one_line(
    ray_head: RayHead, model_set: str, bucket: str
):
    from unmask_core.prepare.synthetic import write_synthetic_pairs

    pairs = write_synthetic_pairs(f"{bucket}/pairs", n_identities=2, per_identity=2, size=64)
    logs = submit_and_wait(
        ray_head,
        f"python -m jobs.train --gpu --workers 1 --batch-size 2 --lpips-backbone random --pairs {pairs} "
        f"--models {model_set} --output {bucket}/runs",
        expected=JobStatus.FAILED,
    )
    printed = logs.split("Running entrypoint for job", 1)[1].strip().splitlines()[1:]  # past Ray's own lines
    assert printed == [
        "unmask train: error: --gpu: needs CPU 1, GPU 1; this Ray cluster's 1 node(s) have CPU 8, GPU 0 in "
        "all, and no autoscaler could add more"
    ]
    assert not storage.exists(f"{bucket}/runs")
