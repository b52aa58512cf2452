"""Which checkpoint a rerun resumes from.

Ray Train hands its workers the newest committed checkpoint (the one its
checkpoint_manager_snapshot.json names). If that checkpoint's state.pt is damaged (a full disk or a kill
during the upload), every worker fails to load it on every retry, and the run can never go on. So the
driver checks the committed checkpoints newest first before Ray Train starts, warns in one line for each
broken one (or one that holds something other than a training state), and tells the workers to skip
those and load the newest whole one. Checkpoint folders that Ray never committed (a run killed while
uploading) are removed.
"""

from __future__ import annotations

import io
import json
import os
import sys
from dataclasses import dataclass
from typing import Any

import torch

from unmask_core import storage
from unmask_core.training.checks import TRAINING_STATE_KEYS, torch_file_problem

SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray Train V2's record of committed checkpoints
STATE_FILE = "state.pt"
CHECKPOINT_PREFIX = "checkpoint_"


@dataclass(frozen=True)
class ResumePlan:
    """What the workers do with Ray's checkpoint: skip it if it is one of `broken`, and then load the
    checkpoint folder `fallback` instead ("": start from step 0)."""

    broken: tuple[str, ...] = ()
    fallback: str = ""

    def as_config(self) -> dict[str, Any]:
        return {"broken": list(self.broken), "fallback": self.fallback}

    @classmethod
    def from_config(cls, value: dict[str, Any] | None) -> ResumePlan:
        value = value or {}
        return cls(tuple(value.get("broken", ())), value.get("fallback", ""))


def committed_checkpoints(run_uri: str) -> list[tuple[int, str]]:
    """(step, folder name) of every checkpoint Ray Train committed in the run folder, newest first."""
    snapshot_uri = storage.join(run_uri, SNAPSHOT_FILE)
    if not storage.exists(snapshot_uri):
        return []
    snapshot = json.loads(storage.read_bytes(snapshot_uri))
    results = list(snapshot.get("checkpoint_results", []))
    if snapshot.get("latest_checkpoint_result"):
        results.append(snapshot["latest_checkpoint_result"])
    # A checkpoint is reported a few steps after its state was taken (loop.CheckpointWriter): its own
    # step is `checkpoint_step`; `step` is the report's.
    found = {r["checkpoint_dir_name"]: int(_checkpoint_step(r.get("metrics", {}))) for r in results}
    return sorted(((step, name) for name, step in found.items()), reverse=True)


def _checkpoint_step(metrics: dict[str, Any]) -> float:
    return metrics.get("checkpoint_step", metrics.get("step", 0))


def damage(state_uri: str) -> str | None:
    """Why the checkpoint file at `state_uri` cannot be resumed from, or None when it can: a zip archive
    whose members pass their CRC checks (truncation and corruption are found without unpickling
    gigabytes of tensors in the driver) and whose pickle holds a training state, not some other
    PyTorch file."""
    return torch_file_problem(state_uri, TRAINING_STATE_KEYS, check_crc=True)


def plan_resume(run_uri: str) -> ResumePlan:
    """Check the run's committed checkpoints newest first (one warning line per broken one), then
    remove the folders of checkpoints that were never committed."""
    committed = committed_checkpoints(run_uri)
    plan = _first_whole(run_uri, committed)
    _remove_uncommitted(run_uri, {name for _, name in committed})
    return plan


def _first_whole(run_uri: str, committed: list[tuple[int, str]]) -> ResumePlan:
    broken: list[str] = []
    for step, name in committed:
        problem = damage(storage.join(run_uri, name, STATE_FILE))
        if problem is None:
            if not broken:
                return ResumePlan()
            print(f"warning: resuming {run_uri} from step {step} ({name})", file=sys.stderr)
            return ResumePlan(tuple(broken), storage.join(run_uri, name))
        broken.append(name)
        print(
            f"warning: checkpoint {storage.join(run_uri, name)} (step {step}) cannot be loaded "
            f"({problem}); trying the one before it",
            file=sys.stderr,
        )
    if broken:
        print(f"warning: no checkpoint of {run_uri} loads; training starts from step 0", file=sys.stderr)
    return ResumePlan(tuple(broken), "")


def _remove_uncommitted(run_uri: str, committed: set[str]) -> None:
    if not storage.exists(run_uri):
        return
    fs, path = storage.fsspec_filesystem(run_uri)
    for entry in fs.ls(path, detail=True):
        name = os.path.basename(entry["name"].rstrip("/"))
        if entry["type"] == "directory" and name.startswith(CHECKPOINT_PREFIX) and name not in committed:
            storage.delete(storage.join(run_uri, name))
            print(
                f"removed {storage.join(run_uri, name)}: a checkpoint that a killed run never committed",
                file=sys.stderr,
            )


def load_resume_state(checkpoint, plan: ResumePlan, device: torch.device) -> dict[str, Any] | None:
    """The training state to resume from (worker side): Ray's checkpoint unless the driver found it
    broken, then the plan's fallback; None starts from step 0."""
    if checkpoint is not None and os.path.basename(checkpoint.path.rstrip("/")) not in plan.broken:
        with checkpoint.as_directory() as folder:
            return torch.load(os.path.join(folder, STATE_FILE), map_location=device, weights_only=True)
    if plan.fallback:
        data = storage.read_bytes(storage.join(plan.fallback, STATE_FILE))
        return torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    return None
