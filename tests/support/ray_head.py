"""A Ray head of a test's own, started with `ray start` (token auth on), and jobs submitted to it as
`ray job submit` does: for the tests of submitted jobs and of autoscaling."""

from __future__ import annotations

import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import boto3
import numpy as np
from PIL import Image
from ray.job_submission import JobStatus, JobSubmissionClient

from tests.conftest import REPO_ROOT
from tests.support.images import encode
from tests.support.processes import pids_of_ray_node
from unmask_core.faces.samples import load_rgb, sample_photo

# What a job's working dir must never carry: environments, VCS data, caches and local outputs. Ray
# 2.60 already skips .git/.venv and honours .gitignore; naming them keeps the upload small even where
# those defaults are overridden (RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES). Models and data stay
# in object storage and are passed as s3:// URIs.
WORKING_DIR_EXCLUDES = [
    ".venv",
    ".git",
    "demo_out",
    ".s3data",
    "build",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
]

HEAD_START_TIMEOUT_S = 150
# Generous: the 2-core machine is shared with other test runs, and under load the training job alone
# has taken over two minutes.
JOB_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RayHead:
    process: subprocess.Popen
    gcs_port: int
    dashboard_url: str
    token: str
    temp_dir: Path
    log_path: Path

    def client(self) -> JobSubmissionClient:
        # The token goes in explicitly rather than through this process's RAY_AUTH_* state, which the
        # in-process Ray of other test modules owns (and points at ~/.ray/auth_token).
        return JobSubmissionClient(self.dashboard_url, headers={"Authorization": f"Bearer {self.token}"})

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        """SIGTERM to the blocking `ray start` tears down this head's processes only (a plain `ray
        stop` would stop every Ray on the machine, other sessions' included)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                # Its graceful stop often outlasts any wait (in CI it ran into a 30 s one), and what it
                # leaves is killed below: a short wait only spares a clean exit its kill.
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # Every process of this node (worker nodes an autoscaler started included) is killed and waited
        # for: a leftover may write into the temp dir after the caller has removed it, and an agent
        # whose raylet is gone spins on a core for the rest of the suite.
        deadline = time.monotonic() + 15
        while leftovers := pids_of_ray_node(str(self.temp_dir), self.process.pid):
            assert time.monotonic() < deadline, f"processes of the test head survive SIGKILL: {leftovers}"
            for pid in leftovers:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)


def start_head(
    temp_dir: Path,
    extra_env: dict[str, str],
    node_args: Sequence[str] = ("--num-cpus=8",),
    gcs_port: int = 0,
) -> RayHead:
    """`ray start --head --block` on free ports (`gcs_port` if given), with token auth on and `extra_env`
    for every process; `node_args` say what the head offers (and may name an autoscaling config).

    Auth: Ray 2.60 turns token auth on for `ray start` whenever a token exists (~/.ray/auth_token).
    Rather than disabling it for the test (RAY_AUTH_MODE=disabled), we run it as on a cluster: a fresh
    random token in a file of this head's own (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH), which the
    job driver inherits and the client sends as a bearer header.
    """
    token = secrets.token_hex(32)
    token_file = temp_dir / "auth_token"
    token_file.write_text(token)
    token_file.chmod(0o600)

    # Nothing of the test process's own Ray (RAY_ADDRESS, its auth settings) may leak into this head.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(extra_env)
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file))
    # `python` in an entrypoint is this venv's, as it is the image's Python on a cluster node.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"

    gcs_port, dashboard_port = gcs_port or free_port(), free_port()
    # Below the kernel's ephemeral range (where free_port() draws from) and above the in-process Ray's
    # default worker ports (10002-19999).
    min_worker_port = random.randrange(20000, 32000, 200)
    cmd = [
        str(Path(sys.executable).with_name("ray")),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs_port}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        f"--ray-client-server-port={free_port()}",
        f"--min-worker-port={min_worker_port}",
        f"--max-worker-port={min_worker_port + 199}",
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        *node_args,
        f"--object-store-memory={500 * 1024**2}",
        f"--temp-dir={temp_dir / 'ray'}",
        "--disable-usage-stats",
    ]
    log_path = temp_dir / "head.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    head = RayHead(process, gcs_port, f"http://127.0.0.1:{dashboard_port}", token, temp_dir, log_path)

    # Ready means a job is accepted: the job server answers only after its node's dashboard agent has
    # registered, which on a loaded machine comes well after the dashboard itself (the server waits
    # just 10 s for it, then answers "No available agent to submit job").
    deadline = time.monotonic() + HEAD_START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"ray start exited with {process.returncode}:\n{head.log_tail()}")
        try:
            head.client().submit_job(entrypoint="true")
            return head
        except Exception as exc:  # not up yet: connection refused, or no agent yet
            if time.monotonic() > deadline:
                head.stop()
                raise RuntimeError(
                    f"head not up after {HEAD_START_TIMEOUT_S}s ({exc}):\n{head.log_tail()}"
                ) from exc
            time.sleep(0.5)


def submit_and_wait(
    head: RayHead,
    entrypoint: str,
    timeout_s: float = JOB_TIMEOUT_S,
    env_vars: dict[str, str] | None = None,
    expected: JobStatus = JobStatus.SUCCEEDED,
) -> str:
    """Submit like `ray job submit --working-dir . -- <entrypoint>`; return the logs once it ended
    `expected`."""
    client = head.client()
    runtime_env: dict = {"working_dir": str(REPO_ROOT), "excludes": WORKING_DIR_EXCLUDES}
    if env_vars:
        runtime_env["env_vars"] = env_vars
    job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
    started = time.monotonic()
    status = client.get_job_status(job_id)
    while not status.is_terminal() and time.monotonic() - started < timeout_s:
        time.sleep(1)
        status = client.get_job_status(job_id)
    logs = client.get_job_logs(job_id)
    if not status.is_terminal():
        client.stop_job(job_id)
    assert status == expected, (
        f"{entrypoint}\n{status} after {time.monotonic() - started:.0f}s; job logs:\n{logs[-6000:]}\n"
        f"head log:\n{head.log_tail(1500)}"
    )
    return logs


def put(bucket: str, key: str, payload: bytes) -> None:
    boto3.client("s3").put_object(Bucket=bucket.removeprefix("s3://"), Key=key, Body=payload)


def hanks_upscaled(mirrored: bool = False) -> bytes:
    """The 112 px aligned sample, doubled and padded so that a detector sees a face in context."""
    hanks = load_rgb(sample_photo("Tom_Hanks_54745.png"))
    if mirrored:
        hanks = np.ascontiguousarray(hanks[:, ::-1])
    big = np.kron(hanks, np.ones((2, 2, 1), np.uint8))
    return encode(Image.fromarray(np.pad(big, ((40, 40), (40, 40), (0, 0)), mode="edge")), "PNG")
