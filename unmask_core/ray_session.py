"""Start or attach Ray the same way in every job: a cluster when `RAY_ADDRESS` is set (or when running
under `ray job submit`), an in-process local Ray otherwise."""

from __future__ import annotations

import faulthandler
import io
import json
import logging
import os
import random
import socket
import sys
import tempfile
import time

import ray
import ray.data  # noqa: F401  (it sets up its loggers on import: quiet_output comes after)

from unmask_core.config import verbose
from unmask_core.errors import TransientError, UserError

# Forwarded to workers so that S3-compatible endpoints work everywhere; credentials are never put in
# a runtime_env (it is stored in the cluster's metadata): nodes get them from their own environment or
# instance profile.
_FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_REGION", "UNMASK_S3_INSTANCE_PROFILE")

# On a small machine an actor pool downstream of a read stage can starve it of CPU slots and hang
# without an error; declaring more logical CPUs than cores keeps every stage schedulable.
LOCAL_LOGICAL_CPUS = max(8, 2 * (os.cpu_count() or 2))
TRAIN_POLL_ENV, LOCAL_TRAIN_POLL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5"
CONNECT_TIMEOUT_S = 5.0  # to reach RAY_ADDRESS's port at all
AUTH_REFUSALS = ("InvalidAuthToken", "Unauthenticated")  # what Ray's core logs for a refused token


def log_file() -> str:
    """Where the messages of Ray, torch and Python warnings go when they are not shown: one file per
    job process, named in the job's summary."""
    folder = os.path.join(tempfile.gettempdir(), "unmask-logs")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log")


_LOG_FILE: str | None = None
_QUIET = False


def log_file_path() -> str:
    """This job's log file (see `log_file`), made on first use."""
    global _LOG_FILE
    if _LOG_FILE is None:
        _LOG_FILE = log_file()
    return _LOG_FILE


def quiet_output() -> str | None:
    """Unless verbose: Ray's Python loggers, Python warnings and what Ray's C++ core writes to the
    process's standard error go to `log_file_path()` (returned), so that a job prints our progress
    lines, summaries and one-line errors only. Idempotent."""
    global _QUIET
    if verbose():
        return None
    if not _QUIET:
        _QUIET = True
        handler = logging.FileHandler(log_file_path())
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.captureWarnings(True)
        for name in ("ray", "ray.data", "ray.train", "ray.tune", "py.warnings"):
            logger = logging.getLogger(name)
            for old in [h for h in logger.handlers if not isinstance(h, logging.FileHandler)]:
                logger.removeHandler(old)
            logger.addHandler(handler)
            logger.propagate = False
        _route_raylet_messages(logging.getLogger("ray.raylet_messages"))
        _native_stderr_to(log_file_path())
    return log_file_path()


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
    """The raylet's and the autoscaler's messages to the driver (such as the raylet's warning about many
    worker processes, which a 2-core machine running a demo always sees, or the autoscaler's events
    while a job waits for a node) are printed by a thread of Ray's that has no logger: send their lines
    to `logger` and let the workers' lines through as Ray prints them."""
    from ray._private import worker

    print_to_stdstream = worker.print_to_stdstream

    def routed(data, ignore_prefix: bool) -> None:
        if data.get("pid") in ("raylet", "autoscaler"):
            for line in data.get("lines", []):
                logger.warning(line)
            return
        print_to_stdstream(data, ignore_prefix)

    worker.print_to_stdstream = routed


def log_line() -> str:
    """The line a job's summary ends with: where the messages it did not show went, if there were any
    ('' when they were shown, or when none came)."""
    path = quiet_output()
    if not path or not os.path.exists(path) or os.path.getsize(path) == 0:
        return ""
    return f"Ray's and torch's own messages: {path} (--verbose shows them)"


_STARTED_HERE = False  # whether connect() started this process's Ray (a local one: no autoscaler)


def connect(num_cpus: int | None = None) -> None:
    """Idempotently make sure this process is connected to Ray: one line (an error) when it cannot."""
    global _STARTED_HERE
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
        _join(address, env_vars)
    else:
        # Ray Train's controller checks on its workers every 2 s, so a run waits up to that long to
        # learn that its workers started, and again that they finished: seconds of every short local
        # run. Processes of a local Ray inherit this environment; clusters keep Ray's default.
        os.environ.setdefault(TRAIN_POLL_ENV, LOCAL_TRAIN_POLL_S)
        _start_local(num_cpus or LOCAL_LOGICAL_CPUS)
        _STARTED_HERE = True
    quiet_output()  # ray.init configures its loggers again
    configure_data_context()


def _join(address: str, env_vars: dict[str, str]) -> None:
    """Attach to the cluster at `address`. Ray itself retries an address where nothing listens for
    as long as it runs, and turns a refused token into a bare "Failed to connect": both become one line
    that says what to fix."""
    host, _, port = address.rpartition(":")
    if host and "://" not in address and port.isdigit():
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
        except OSError as exc:
            raise UserError(
                f"RAY_ADDRESS={address}: no Ray cluster answers there ({exc.strerror or exc}); start it, "
                "or unset RAY_ADDRESS to run on a local Ray"
            ) from None
    try:
        ray.init(address=address, runtime_env={"env_vars": env_vars}, logging_level=logging.WARNING)
    except ConnectionError as exc:
        if _log_mentions(AUTH_REFUSALS):
            why = "it refused this process's auth token, or its lack of one"
        else:
            why = str(exc).splitlines()[0]
        raise UserError(
            f"RAY_ADDRESS={address}: cannot join the Ray cluster ({why}); a cluster with token auth (as "
            "`ray start` makes) needs RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH=<its token file> here"
        ) from None


def _start_local(num_cpus: int) -> None:
    """Start an in-process local Ray; once more after a failure (two jobs starting their local Rays at
    the same moment may collide), then one line."""
    for attempt in range(2):
        try:
            ray.init(
                num_cpus=num_cpus,
                include_dashboard=False,
                logging_level=logging.WARNING,
                # Worker logs stay in Ray's session folder (/tmp/ray/session_latest/logs): on a local
                # Ray without a dashboard, Ray Train's monitors would print a warning every second.
                # Errors still reach the driver as exceptions.
                log_to_driver=verbose(),
            )
            return
        except Exception as exc:
            ray.shutdown()  # whatever half-started
            if attempt:
                where = f"; Ray's messages: {_LOG_FILE}" if _LOG_FILE else ""
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise TransientError(f"could not start a local Ray: {first}{where}") from exc
            time.sleep(random.uniform(1.0, 3.0))


def _log_mentions(words: tuple[str, ...]) -> bool:
    """Whether this job's log file (where Ray's C++ core writes, unless --verbose) holds any of
    `words`."""
    if _LOG_FILE is None or not os.path.exists(_LOG_FILE):
        return False
    with open(_LOG_FILE, errors="replace") as log:
        text = log.read()
    return any(word in text for word in words)


def configure_data_context() -> None:
    from ray.data import DataContext

    ctx = DataContext.get_current()
    # Our stages catch per-row errors themselves and turn them into error rows, so a failing block
    # means a real bug: fail loudly rather than drop data.
    ctx.max_errored_blocks = 0
    ctx.enable_progress_bars = False  # we draw one readable bar of our own (rows done / total, rate)
    ctx.print_on_execution_start = False
    # Ray Data's V2 Parquet reader starts 32 footer-reading actors (32 processes) each time a read
    # runs, which a training dataset does every epoch: on a small machine, seconds before the first
    # batch that the V1 reader does not spend. Our Parquet inputs are pairs folders of a few thousand
    # files at most, whose footers V1 reads at plan time.
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


WAITING_LINE_EVERY_S = 30
AUTOSCALER_REPORT_WAIT_S = 10.0  # a head's autoscaler reports every few seconds from its start


def require_resources(bundles: list[dict[str, float]], timeout_s: float, asked_by: str) -> None:
    """Make sure the cluster can give a job what it asks for (e.g. {"GPU": 1} per worker) before work
    starts that would otherwise wait for it without a word: at once when its nodes hold it; one line (a
    UserError) when no node has it and no autoscaler can add one; else a request that the autoscaler
    acts on, a "waiting for a GPU node (n s)" line every 30 s, and a TransientError after `timeout_s`.
    `asked_by` names the flag that asked. Amounts of 0 or less ask for nothing."""
    needed = [b for b in ({k: v for k, v in bundle.items() if v > 0} for bundle in bundles) if b]
    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    if not needed or _fits(needed, nodes):
        return
    if not _autoscaler_may_add():
        have = {k: sum(node.get(k, 0) for node in nodes) for k in sorted({k for b in needed for k in b})}
        raise UserError(
            f"{asked_by}: needs {_describe(needed)}; this Ray cluster's {len(nodes)} node(s) have "
            f"{_describe([have])} in all, and no autoscaler could add more"
        )
    _wait_for(needed, timeout_s, asked_by)


def _fits(bundles: list[dict[str, float]], nodes: list[dict[str, float]]) -> bool:
    """Whether the nodes' total resources hold every bundle (first fit, largest bundles first)."""
    free = [dict(node) for node in nodes]
    for bundle in sorted(bundles, key=lambda b: -sum(b.values())):
        node = next((n for n in free if all(n.get(k, 0) >= v for k, v in bundle.items())), None)
        if node is None:
            return False
        for k, v in bundle.items():
            node[k] -= v
    return True


def _describe(bundles: list[dict[str, float]]) -> str:
    counts: dict[str, int] = {}
    for bundle in bundles:
        text = ", ".join(f"{k} {v:g}" for k, v in sorted(bundle.items()))
        counts[text] = counts.get(text, 0) + 1
    return " + ".join(text if n == 1 else f"{n} x ({text})" for text, n in counts.items())


def _autoscaler_may_add() -> bool:
    """Whether an autoscaler watches this cluster with node types of its own. The local Ray a job
    starts has none; a cluster without an autoscaling config runs Ray's read-only one, which names each
    node's type after the node itself; autoscaler v2 (`ray up`'s) reports what it cannot fit."""
    if _STARTED_HERE:
        return False
    from ray.autoscaler.v2.utils import is_autoscaler_v2

    if is_autoscaler_v2(fetch_from_server=True):
        return True
    report = _autoscaler_v1_report()
    mapping = (report or {}).get("node_type_mapping") or {}
    return any(node_type != f"node_{node_id}" for node_id, node_type in mapping.items())


def _autoscaler_v1_report() -> dict | None:
    """The report of the cluster's (v1) autoscaler, waiting a few seconds for its first one."""
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get

    deadline = time.monotonic() + AUTOSCALER_REPORT_WAIT_S
    while True:
        status = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        if status:
            return json.loads(status).get("autoscaler_report")
        if time.monotonic() > deadline:
            return None
        time.sleep(0.5)


def _wait_for(bundles: list[dict[str, float]], timeout_s: float, asked_by: str) -> None:
    """A placement group of `bundles` is a request the autoscaler acts on, and it is ready once the
    nodes are there; it is removed either way (and goes with this driver if it dies)."""
    from ray.util.placement_group import placement_group, remove_placement_group

    what = "a GPU node" if any("GPU" in b for b in bundles) else f"nodes for {_describe(bundles)}"
    group = placement_group(bundles, strategy="PACK")
    started = time.monotonic()
    next_line = WAITING_LINE_EVERY_S
    try:
        while not group.wait(timeout_seconds=1):
            waited = time.monotonic() - started
            if _infeasible(group.id.hex()):
                raise UserError(
                    f"{asked_by}: needs {_describe(bundles)}, and the cluster's autoscaler has no node "
                    "type that fits it"
                )
            if waited >= timeout_s:
                raise TransientError(
                    f"{asked_by}: {what} did not come up in {timeout_s:g} s (--resource-timeout); "
                    "the cluster's autoscaler may be out of capacity or quota"
                )
            if waited >= next_line:
                print(f"waiting for {what} ({waited:.0f} s)", file=sys.stderr)
                next_line += WAITING_LINE_EVERY_S
    finally:
        remove_placement_group(group)


def _infeasible(group_id: str) -> bool:
    """Whether autoscaler v2 reports the placement group as one no node type can hold (v1 keeps that
    in its own log)."""
    from ray.core.generated.autoscaler_pb2 import GetClusterStatusReply

    try:
        reply = GetClusterStatusReply()
        reply.ParseFromString(ray._private.worker.global_worker.gcs_client.get_cluster_status(timeout_s=10))
    except Exception:  # an older or busy GCS: keep waiting, the timeout still holds
        return False
    return any(
        group_id in request.details for request in reply.autoscaling_state.infeasible_gang_resource_requests
    )
