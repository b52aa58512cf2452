"""The README's first command runs the whole flow on the embedded default and says what it made."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO_ROOT
from tests.support.output import foreign_lines


@pytest.mark.slow
def test_readme_demo_command_produces_report_metrics_and_parquet(tmp_path: Path) -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    command = next(line.split("#")[0].strip() for line in readme.splitlines() if "demo.sh" in line)
    assert command == "bash scripts/demo.sh"
    out = tmp_path / "demo_out"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # The set-up is pip's business (a fresh clone installs first); then demo.sh's own set-up is a no-op.
    subprocess.run(["bash", "scripts/setup.sh"], cwd=REPO_ROOT, env=env, check=True, capture_output=True)
    # Small, and still every step: 2 images per person (one genuine pair each), 2 steps on 1 worker
    # (two-worker DDP training has its own tests).
    small = ["--steps", "2", "--variants", "2", "--workers", "1"]
    proc = subprocess.run(
        [*command.split(), "--output", str(out), *small],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # Quiet by default: our lines only; Ray's and torch's go to the log file the demo names, when any
    # came. No raw dicts (a loss dict, a metrics row with its epoch timestamp) in what people read.
    assert foreign_lines(proc.stdout + proc.stderr) == []
    for log_line in [line for line in proc.stdout.splitlines() if "--verbose shows them" in line]:
        assert Path(log_line.split(": ", 1)[1].split(" (")[0]).stat().st_size > 0
    assert "{" not in proc.stdout and "wall_time" not in proc.stdout, proc.stdout
    assert "untrained" in proc.stdout or "randomly initialised" in proc.stdout
    for step in range(1, 8):
        assert f"[demo {step}/7" in proc.stdout
    report = out / "report"
    for name in ("report.html", "metrics.json", "table.md", "roc.png"):
        assert (report / name).stat().st_size > 0, name
    metrics = json.loads((report / "metrics.json").read_text())
    assert set(metrics["matchers"]) == {"arcface", "facenet", "dlib"}
    assert metrics["weights"]["dlib"]["pretrained"] and not metrics["weights"]["facenet"]["pretrained"]
    assert set(metrics["matchers"]["facenet"]) == {"MM", "MT", "UU", "UT", "TT"}
    assert metrics["n_pairs"] > 0
    pairs = pq.read_table(out / "pairs" / "pairs")
    rows = pq.read_table(out / "unmasked" / "rows")
    assert pairs.num_rows > 0 and rows.num_rows > 0
    assert set(rows.column("status").to_pylist()) <= {"ok", "no_face"}
