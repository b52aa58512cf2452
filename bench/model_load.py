"""An unmask actor's start-up: a fresh Python process that loads the model set (f, g, ArcFace, FaceNet)
as the unmask stage does (`inference.Unmasker`), timed from the outside, for one or more source trees
in alternating rounds (so that a drifting machine speed falls on both alike).

    git worktree add /tmp/before <commit>          # the code to compare against
    python -m bench.model_load --tree /tmp/before=before --tree .=now [--size 256] [--rounds 5]

Each round starts one process per tree, in turn; the table gives each tree's median seconds (process
start to models ready, imports included) and the median of the per-round ratios to the first tree.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.benchmarks_md import LoadWatch, machine_description, update_section

LOAD = (
    "from unmask_core.inference import Unmasker; Unmasker({models!r}, ['arcface', 'facenet'], device='cpu')"
)


def load_seconds(tree: Path, models: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", LOAD.format(models=models)],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--tree", action="append", required=True, help="PATH[=LABEL]: a source tree (repeat)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    labels = {Path(t.split("=", 1)[0]).resolve(): t.split("=", 1)[1] if "=" in t else "" for t in args.tree}
    trees = list(labels)
    from unmask_core.models.model_set import init_model_set

    with tempfile.TemporaryDirectory() as folder, LoadWatch() as load:
        models = str(Path(folder) / "models")
        init_model_set(args.size, models)
        load_seconds(trees[-1], models)  # warm-up: the page cache holds the files for every tree alike
        times: dict[Path, list[float]] = {t: [] for t in trees}
        for _ in range(args.rounds):
            for tree in trees:
                times[tree].append(load_seconds(tree, models))
    first = times[trees[0]]
    rows = []
    for tree in trees:
        ratios = [b / a for a, b in zip(first, times[tree], strict=True)]
        commit = subprocess.run(
            ["git", "-C", str(tree), "log", "-1", "--format=%h (%cs)"], capture_output=True, text=True
        ).stdout.strip()
        median, ratio = statistics.median(times[tree]), statistics.median(ratios)
        rows.append(f"| `{commit}` {labels[tree]} | {median:.2f} | {ratio:.3f} |")
    text = (
        "## Unmask actor start-up: loading the model set (`bench/model_load.py`)\n\n"
        f"Machine: {machine_description()}. {args.size} px model set from `models init` (f + g + ArcFace + "
        f"FaceNet, local files, in the page cache); a fresh process per load, imports included; "
        f"{args.rounds} alternating rounds.\n\n"
        "| source tree | median s | ratio to the first (median of rounds) |\n|---|---|---|\n"
        + "\n".join(rows)
        + "\n"
    )
    print(text)
    update_section("model_load", text, load)


if __name__ == "__main__":
    main()
