"""bench/scale.py runs the real bulk job with probes for its model stages: a small run of it, so that a
change to the stages' interface cannot break the benchmark unseen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.slow
def test_scale_bench_lists_by_page_reaches_the_model_stage_and_resumes_unlisted(
    tmp_path: Path,
) -> None:
    figures = tmp_path / "scale.json"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run(
        [sys.executable, "-m", "bench.scale", "--sizes", "1500", "--kinds", "s3", "--workdir", str(tmp_path),
         "--json", str(figures)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    runs = json.loads(figures.read_text())["s3"]["1500"]
    fresh, resume = runs["fresh"], runs["resume"]
    assert fresh["first_model_call_s"] > 0 and fresh["summary"]["reconciled"]
    assert fresh["requests"]["LIST"] == 2  # ceil(1,500 / 1,000) pages
    assert resume["requests"].get("LIST", 0) == 0
