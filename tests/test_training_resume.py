"""Which checkpoint a rerun resumes from, without Ray: committed checkpoints are checked newest first,
broken ones are named in one warning line each and skipped, and folders never committed are removed.
(The run on Ray Train with a truncated checkpoint in S3 is in test_training.py.)"""

from __future__ import annotations

import json
import os

import torch

from unmask_core.training.resume import STATE_FILE, ResumePlan, damage, load_resume_state, plan_resume


def _checkpoint(run: str, name: str, step: int) -> str:
    folder = os.path.join(run, name)
    os.makedirs(folder)
    torch.save(
        {"step": step, "encoder": {"w": torch.full((4096,), float(step))}, "optimizer": {}},
        os.path.join(folder, STATE_FILE),
    )
    return folder


def _run_folder(tmp_path, steps: list[int]) -> str:
    """A run folder as Ray Train V2 leaves it: checkpoint folders and its snapshot naming them. The loop
    reports a checkpoint at a later step than its state's (here 2 later), naming that as checkpoint_step."""
    run = str(tmp_path / "run")
    results = [
        {
            "checkpoint_dir_name": f"checkpoint_2026-12-01_00-00-{step:02d}.000000",
            "metrics": {"step": step + 2, "checkpoint_step": step},
        }
        for step in steps
    ]
    for result in results:
        _checkpoint(run, result["checkpoint_dir_name"], result["metrics"]["checkpoint_step"])
    snapshot = {"checkpoint_results": results, "latest_checkpoint_result": results[-1]}
    with open(os.path.join(run, "checkpoint_manager_snapshot.json"), "w") as f:
        json.dump(snapshot, f)
    return run


def _truncate(path: str) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _flip_a_byte_inside(path: str) -> None:
    data = bytearray(open(path, "rb").read())
    data[len(data) // 3] ^= 0xFF
    open(path, "wb").write(bytes(data))


def test_whole_checkpoints_resume_where_ray_says(tmp_path, capsys) -> None:
    run = _run_folder(tmp_path, [4, 8, 12])
    assert plan_resume(run) == ResumePlan()
    assert capsys.readouterr().err == ""


def test_a_broken_newest_checkpoint_is_named_and_the_one_before_is_used(tmp_path, capsys) -> None:
    run = _run_folder(tmp_path, [4, 8, 12])
    newest, middle = "checkpoint_2026-12-01_00-00-12.000000", "checkpoint_2026-12-01_00-00-08.000000"
    _truncate(os.path.join(run, newest, STATE_FILE))
    stray = _checkpoint(run, "checkpoint_2026-12-01_00-00-16.000000", 16)  # never committed
    plan = plan_resume(run)
    assert plan == ResumePlan((newest,), os.path.join(run, middle))
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"warning: checkpoint {os.path.join(run, newest)} (step 12) cannot be loaded")
    assert err[1] == f"warning: resuming {run} from step 8 ({middle})"
    assert f"removed {stray}" in err[2]
    assert not os.path.exists(stray)

    # The workers skip Ray's checkpoint when it is the broken one, and load the fallback.
    from ray.train import Checkpoint

    state = load_resume_state(Checkpoint.from_directory(os.path.join(run, newest)), plan, torch.device("cpu"))
    assert state["step"] == 8
    # A checkpoint reported later in the same run (not broken) is Ray's to give.
    state = load_resume_state(Checkpoint.from_directory(os.path.join(run, middle)), ResumePlan(), "cpu")
    assert state["step"] == 8


def test_corruption_inside_is_found_and_no_loadable_checkpoint_starts_over(tmp_path, capsys) -> None:
    run = _run_folder(tmp_path, [4, 8])
    _flip_a_byte_inside(os.path.join(run, "checkpoint_2026-12-01_00-00-08.000000", STATE_FILE))
    os.remove(os.path.join(run, "checkpoint_2026-12-01_00-00-04.000000", STATE_FILE))
    assert "CRC" in damage(os.path.join(run, "checkpoint_2026-12-01_00-00-08.000000", STATE_FILE))
    plan = plan_resume(run)
    assert plan.fallback == "" and len(plan.broken) == 2
    assert (
        capsys.readouterr().err.splitlines()[-1]
        == f"warning: no checkpoint of {run} loads; training starts from step 0"
    )
    assert load_resume_state(None, plan, "cpu") is None


def test_a_first_run_has_nothing_to_resume_and_removes_uncommitted_folders(tmp_path) -> None:
    run = str(tmp_path / "run")
    stray = _checkpoint(run, "checkpoint_2026-12-01_00-00-04.000000", 4)
    assert plan_resume(run) == ResumePlan()
    assert not os.path.exists(stray)
    assert plan_resume(str(tmp_path / "never-ran")) == ResumePlan()


def test_a_checkpoint_that_holds_something_else_is_skipped_like_a_broken_one(tmp_path, capsys) -> None:
    run = _run_folder(tmp_path, [4, 8])
    foreign = os.path.join(run, "checkpoint_2026-12-01_00-00-08.000000", STATE_FILE)
    # Whole PyTorch files, of other things: a model file, a bare tensor.
    torch.save({"format": "unmask-checkpoint/1", "state_dict": torch.nn.Linear(2, 2).state_dict()}, foreign)
    assert "holds keys format, state_dict, not encoder, optimizer, step" in damage(foreign)
    torch.save(torch.zeros(3), foreign + ".tensor")
    assert "holds a single object, not a dict of encoder, optimizer, step" in damage(foreign + ".tensor")
    plan = plan_resume(run)
    assert plan == ResumePlan(
        ("checkpoint_2026-12-01_00-00-08.000000",), os.path.join(run, "checkpoint_2026-12-01_00-00-04.000000")
    )
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and "(step 8) cannot be loaded (holds keys format, state_dict" in lines[0], lines
    assert "resuming" in lines[1] and "from step 4" in lines[1], lines
    state = load_resume_state(None, plan, torch.device("cpu"))
    assert state["step"] == 4
