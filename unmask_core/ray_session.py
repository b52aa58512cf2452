"""Start or attach Ray the same way in every job: a cluster when `RAY_ADDRESS` is set (or when running
under `ray job submit`), an in-process local Ray otherwise."""

from __future__ import annotations

import json
import logging
import os

import ray

# Forwarded to workers so that S3-compatible endpoints work everywhere; credentials are never put in
# a runtime_env (it is stored in the cluster's metadata): nodes get them from their own environment or
# instance profile.
_FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_REGION", "UNMASK_S3_INSTANCE_PROFILE")

# On a small machine an actor pool downstream of a read stage can starve it of CPU slots and hang
# without an error; declaring more logical CPUs than cores keeps every stage schedulable.
LOCAL_LOGICAL_CPUS = max(8, 2 * (os.cpu_count() or 2))


def connect(num_cpus: int | None = None) -> None:
    """Idempotently make sure this process is connected to Ray."""
    if ray.is_initialized():
        return
    # Under `ray job submit` the job's runtime_env already reaches every worker, and Ray refuses a
    # driver runtime_env whose env_vars overlap it: forward only what the job did not set.
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    job_env = (job.get("runtime_env") or {}).get("env_vars") or {}
    env_vars = {k: os.environ[k] for k in _FORWARDED_ENV if os.environ.get(k) and k not in job_env}
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env={"env_vars": env_vars}, logging_level=logging.WARNING)
    else:
        ray.init(
            num_cpus=num_cpus or LOCAL_LOGICAL_CPUS,
            include_dashboard=False,
            logging_level=logging.WARNING,
            # Worker logs stay in Ray's session folder (/tmp/ray/session_latest/logs): on a local Ray
            # without a dashboard, Ray Train's monitors would print a warning every second. Errors
            # still reach the driver as exceptions.
            log_to_driver=os.environ.get("UNMASK_RAY_WORKER_LOGS", "") == "1",
        )
    configure_data_context()


def configure_data_context() -> None:
    from ray.data import DataContext

    ctx = DataContext.get_current()
    # Our stages catch per-row errors themselves and turn them into error rows, so a failing block
    # means a real bug: fail loudly rather than drop data.
    ctx.max_errored_blocks = 0
    ctx.enable_progress_bars = False  # we draw one readable bar of our own (rows done / total, rate)
    ctx.print_on_execution_start = False


def actor_pool(low: int, high: int, n_tasks: int):
    """An actor pool of `low`..`high` actors, never more than there are tasks (shards) to run."""
    high = max(1, min(high, n_tasks))
    return ray.data.ActorPoolStrategy(min_size=min(low, high), max_size=high)


def half_the_cpus() -> int:
    """The default pool ceiling for CPU stages: half the cluster's CPUs as it is now (on an autoscaling
    cluster that says little: pass the pool size explicitly there)."""
    return max(1, int(ray.cluster_resources().get("CPU", 2) // 2))
