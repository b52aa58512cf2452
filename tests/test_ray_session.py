"""How jobs start Ray. Quiet by default: what Ray's C++ core writes to the process's standard error goes
to the job's log file, our own lines on `sys.stderr` still reach the terminal, `--verbose` shows
everything. A local Ray's processes poll Ray Train's workers at a short interval."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import REPO_ROOT

# Writes as Ray's C++ logger does (straight to descriptor 2), then as our progress lines do.
SCRIPT = textwrap.dedent(
    """
    import os, sys
    from unmask_core import ray_session
    path = ray_session.quiet_output()
    os.write(2, b"core_worker.cc:2465: a native line\\n")
    print("our progress line", file=sys.stderr)
    print(path or "", flush=True)
    if "--crash" in sys.argv:
        import ctypes
        ctypes.string_at(0)  # a fault in native code
    """
)


def _run(env_extra: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    quiet = ("UNMASK_VERBOSE", "UNMASK_RAY_WORKER_LOGS")
    env = {k: v for k, v in os.environ.items() if k not in quiet} | env_extra
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )


def test_native_stderr_goes_to_the_log_file_and_ours_to_the_terminal() -> None:
    proc = _run({})
    assert proc.returncode == 0, proc.stderr
    assert "our progress line" in proc.stderr
    assert "native line" not in proc.stderr
    log = Path(proc.stdout.strip())
    assert "core_worker.cc:2465: a native line" in log.read_text()


def test_a_crash_of_the_process_still_shows_on_the_terminal() -> None:
    proc = _run({}, "--crash")
    assert proc.returncode != 0
    assert "Fatal Python error" in proc.stderr and "native line" not in proc.stderr


def test_verbose_shows_native_lines() -> None:
    proc = _run({"UNMASK_VERBOSE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "native line" in proc.stderr and "our progress line" in proc.stderr
    assert proc.stdout.strip() == ""


def test_a_local_rays_processes_check_on_ray_train_workers_every_half_second(ray_local) -> None:
    import ray

    from unmask_core import ray_session

    @ray.remote
    def poll_interval() -> str | None:  # read where Ray Train's controller reads it: in a Ray process
        return os.environ.get(ray_session.TRAIN_POLL_ENV)

    assert ray.get(poll_interval.remote()) == ray_session.LOCAL_TRAIN_POLL_S == "0.5"


def _job(env_extra: dict[str, str], args: list[str], script: str = "") -> subprocess.CompletedProcess:
    """`python -m jobs.demo ARGS` (its first step is joining or starting Ray), or `script ARGS`."""
    env = {k: v for k, v in os.environ.items() if k not in ("UNMASK_VERBOSE", "UNMASK_RAY_WORKER_LOGS")}
    command = [sys.executable, "-c", script, *args] if script else [sys.executable, "-m", "jobs.demo", *args]
    return subprocess.run(
        command, cwd=REPO_ROOT, env=env | env_extra, capture_output=True, text=True, timeout=300
    )


def test_a_ray_address_where_nothing_listens_is_one_line_at_once(tmp_path) -> None:
    import socket

    with socket.socket() as s:  # a port that was free a moment ago, and is closed now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = _job({"RAY_ADDRESS": f"127.0.0.1:{port}"}, ["--output", str(tmp_path / "demo")])
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"unmask demo: error: RAY_ADDRESS=127.0.0.1:{port}: no Ray cluster answers there (Connection "
        "refused); start it, or unset RAY_ADDRESS to run on a local Ray"
    ]
    assert not (tmp_path / "demo").exists()


# Two jobs that start their local Rays at the same moment may collide; whatever ray.init raises then is
# injected here, twice (no retry can help) and once (the retry starts Ray).
FAILING_START = textwrap.dedent(
    """
    import sys, ray
    from unmask_core import cli, ray_session
    failures = int(sys.argv[1])
    real_init = ray.init
    def init(*args, **kwargs):
        global failures
        if failures:
            failures -= 1
            raise RuntimeError("Failed to start the GCS server\\nand more lines of Ray's")
        return real_init(*args, **kwargs)
    ray.init = init
    code = cli.run_main("demo", lambda argv: ray_session.connect(), [])
    print("connected" if ray.is_initialized() else "not connected", code)
    """
)


def test_a_local_ray_that_fails_to_start_twice_is_one_line_and_exit_status_1() -> None:
    proc = _job({}, ["2"], FAILING_START)
    assert proc.stdout.split() == ["not", "connected", "1"], proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "unmask demo: failed: could not start a local Ray: Failed to start the GCS server; Ray's messages: "
    ), proc.stderr


def test_a_local_ray_that_fails_to_start_once_is_started_again() -> None:
    proc = _job({}, ["1"], FAILING_START)
    assert proc.stdout.split() == ["connected", "0"], proc.stderr
    assert proc.stderr.strip() == "", proc.stderr


def test_resources_the_local_ray_holds_are_required_at_once(ray_local) -> None:
    from unmask_core import ray_session

    ray_session.require_resources([{"CPU": 1}, {"CPU": 1}], timeout_s=1, asked_by="--workers")
    ray_session.require_resources([{"GPU": 0}, {"GPU": -1.0}], timeout_s=1, asked_by="--gpus-per-actor")


def test_a_bulk_job_asking_for_a_gpu_on_a_cpu_only_local_ray_is_refused_before_its_plan(
    tiny_model_set: str, tmp_path, capsys, ray_local
) -> None:
    import ray

    from unmask_core import cli

    assert not ray.cluster_resources().get("GPU")
    (tmp_path / "gallery").mkdir()
    (tmp_path / "gallery" / "a.jpg").write_bytes(b"not even a photo")
    out = tmp_path / "out"
    argv = ["unmask", "--input", str(tmp_path / "gallery"), "--output", str(out), "--models", tiny_model_set]
    assert cli.main([*argv, "--gpus-per-actor", "1"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "unmask unmask: error: --gpus-per-actor: needs GPU 1; this Ray cluster's 1 node(s) have GPU 0 in "
        "all, and no autoscaler could add more"
    ]
    assert not (out / "_plan.json").exists() and not (out / "config.yaml").exists()


def test_an_error_raised_in_a_ray_worker_is_its_own_one_line_and_exit_status_1(ray_local, capsys) -> None:
    import ray

    from unmask_core import cli
    from unmask_core.errors import UserError

    @ray.remote(max_retries=0)
    def read_input() -> None:
        raise UserError("s3://b/gallery/x.jpg: no such file or prefix")

    assert cli.run_main("unmask", lambda argv: ray.get(read_input.remote()), []) == cli.EXIT_FAILED
    assert capsys.readouterr().err.strip().splitlines() == [
        "unmask unmask: failed: s3://b/gallery/x.jpg: no such file or prefix"
    ]
