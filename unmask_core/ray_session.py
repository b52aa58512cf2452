"""Start or attach Ray the same way in every job: a cluster when `RAY_ADDRESS` is set (or when running
under `ray job submit`), an in-process local Ray otherwise."""

from __future__ import annotations

import faulthandler
import io
import json
import logging
import os
import sys
import tempfile
import time

import ray
import ray.data  # noqa: F401  (it sets up its loggers on import: quiet_output comes after)

# Forwarded to workers so that S3-compatible endpoints work everywhere; credentials are never put in
# a runtime_env (it is stored in the cluster's metadata): nodes get them from their own environment or
# instance profile.
_FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_REGION", "UNMASK_S3_INSTANCE_PROFILE")

# On a small machine an actor pool downstream of a read stage can starve it of CPU slots and hang
# without an error; declaring more logical CPUs than cores keeps every stage schedulable.
LOCAL_LOGICAL_CPUS = max(8, 2 * (os.cpu_count() or 2))
TRAIN_POLL_ENV, LOCAL_TRAIN_POLL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5"


def verbose() -> bool:
    """`--verbose` (or UNMASK_RAY_WORKER_LOGS=1): show Ray's, torch's and the workers' own messages."""
    return os.environ.get("UNMASK_VERBOSE") == "1" or os.environ.get("UNMASK_RAY_WORKER_LOGS") == "1"


def log_file() -> str:
    """Where the messages of Ray, torch and Python warnings go when they are not shown: one file per
    job process, named in the job's summary."""
    folder = os.path.join(tempfile.gettempdir(), "unmask-logs")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log")


_LOG_FILE: str | None = None


def quiet_output() -> str | None:
    """Unless verbose: Ray's Python loggers, Python warnings and what Ray's C++ core writes to the
    process's standard error go to `log_file()` (returned), so that a job prints our progress lines,
    summaries and one-line errors only. Idempotent."""
    global _LOG_FILE
    if verbose():
        return None
    if _LOG_FILE is None:
        _LOG_FILE = log_file()
        handler = logging.FileHandler(_LOG_FILE)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.captureWarnings(True)
        for name in ("ray", "ray.data", "ray.train", "ray.tune", "py.warnings"):
            logger = logging.getLogger(name)
            for old in [h for h in logger.handlers if not isinstance(h, logging.FileHandler)]:
                logger.removeHandler(old)
            logger.addHandler(handler)
            logger.propagate = False
        _route_raylet_messages(logging.getLogger("ray.raylet_messages"))
        _native_stderr_to(_LOG_FILE)
    return _LOG_FILE


def _native_stderr_to(path: str) -> None:
    """Ray's C++ core in this process writes its own errors to file descriptor 2, past Python's
    loggers: Ray Data's actor pools always get a 'constructor arguments in the object store' line
    (Ray Data passes its context to each actor by reference, ray-project/ray#57733). Point descriptor 2
    at the log file, and keep `sys.stderr` (our progress bar and one-line errors) on the terminal
    through a copy of the original descriptor. Only in a process that owns its standard error: a
    harness that captures `sys.stderr` (pytest in-process) keeps its own streams."""
    if sys.stderr is None or sys.stderr is not sys.__stderr__:
        return
    try:
        if sys.stderr.fileno() != 2:
            return
    except (AttributeError, OSError, ValueError):
        return
    sys.stderr.flush()
    terminal = os.dup(2)
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 2)
    os.close(log)
    encoding = getattr(sys.__stderr__, "encoding", None) or "utf-8"
    sys.stderr = io.TextIOWrapper(
        io.FileIO(terminal, "w"), encoding=encoding, errors="backslashreplace", line_buffering=True
    )
    # A crash of the process itself (a fault in native code) still shows its Python stack here.
    faulthandler.enable(file=sys.stderr)


def _route_raylet_messages(logger: logging.Logger) -> None:
    """The raylet's messages to the driver (such as its warning about many worker processes, which a
    2-core machine running a demo always sees) are printed by a thread of Ray's that has no logger:
    send the raylet's lines to `logger` and let the workers' lines through as Ray prints them."""
    from ray._private import worker

    print_to_stdstream = worker.print_to_stdstream

    def routed(data, ignore_prefix: bool) -> None:
        if data.get("pid") == "raylet":
            for line in data.get("lines", []):
                logger.warning(line)
            return
        print_to_stdstream(data, ignore_prefix)

    worker.print_to_stdstream = routed


def log_line() -> str:
    """The line a job's summary ends with: where the messages it did not show went."""
    path = quiet_output()
    return f"Ray's and torch's own messages: {path} (--verbose shows them)" if path else ""


def connect(num_cpus: int | None = None) -> None:
    """Idempotently make sure this process is connected to Ray."""
    if ray.is_initialized():
        return
    quiet_output()
    # Under `ray job submit` the job's runtime_env already reaches every worker, and Ray refuses a
    # driver runtime_env whose env_vars overlap it: forward only what the job did not set.
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    job_env = (job.get("runtime_env") or {}).get("env_vars") or {}
    env_vars = {k: os.environ[k] for k in _FORWARDED_ENV if os.environ.get(k) and k not in job_env}
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env={"env_vars": env_vars}, logging_level=logging.WARNING)
    else:
        # Ray Train's controller checks on its workers every 2 s, so a run waits up to that long to
        # learn that its workers started, and again that they finished: a 2-step demo run took 30 s
        # instead of 24 s. Processes of a local Ray inherit this environment; clusters keep Ray's default.
        os.environ.setdefault(TRAIN_POLL_ENV, LOCAL_TRAIN_POLL_S)
        ray.init(
            num_cpus=num_cpus or LOCAL_LOGICAL_CPUS,
            include_dashboard=False,
            logging_level=logging.WARNING,
            # Worker logs stay in Ray's session folder (/tmp/ray/session_latest/logs): on a local Ray
            # without a dashboard, Ray Train's monitors would print a warning every second. Errors
            # still reach the driver as exceptions.
            log_to_driver=verbose(),
        )
    quiet_output()  # ray.init configures its loggers again
    configure_data_context()


def configure_data_context() -> None:
    from ray.data import DataContext

    ctx = DataContext.get_current()
    # Our stages catch per-row errors themselves and turn them into error rows, so a failing block
    # means a real bug: fail loudly rather than drop data.
    ctx.max_errored_blocks = 0
    ctx.enable_progress_bars = False  # we draw one readable bar of our own (rows done / total, rate)
    ctx.print_on_execution_start = False
    # Ray Data's V2 Parquet reader starts 32 footer-reading actors (32 processes) each time a read
    # runs, which a training dataset does every epoch: 13 s on 2 cores before the first batch, against
    # 3 s with the V1 reader (a 2-step, 2-worker training run: 42 s -> 28 s). Our Parquet inputs are
    # pairs folders of a few thousand files at most, whose footers V1 reads at plan time.
    ctx.use_datasource_v2 = False


def retry_args() -> dict:
    """Fault tolerance of our actor stages: a lost actor (a spot node gone, a killed worker) is restarted
    and its task retried, but a few times only. Ray Data's default is infinite restarts and retries,
    so an input that kills its worker by memory would be retried forever; now the job stops, and a
    rerun resumes from the finished shards."""
    return {"max_restarts": 3, "max_task_retries": 3}


def actor_pool(low: int, high: int, n_tasks: int):
    """An actor pool of `low`..`high` actors, never more than there are tasks (shards) to run."""
    high = max(1, min(high, n_tasks))
    return ray.data.ActorPoolStrategy(min_size=min(low, high), max_size=high)


def half_the_cpus() -> int:
    """The default pool ceiling for CPU stages: half the cluster's CPUs as it is now (on an autoscaling
    cluster that says little: pass the pool size explicitly there)."""
    return max(1, int(ray.cluster_resources().get("CPU", 2) // 2))
