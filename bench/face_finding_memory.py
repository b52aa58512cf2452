"""Why the face-finding actor's memory grows with the images it has seen, and what a fix would cost:
its resident memory after 1, 8, 32 and 128 gallery photos, and the seconds they took, with glibc's
malloc as it is and with its mmap threshold fixed (MALLOC_MMAP_THRESHOLD_), each in a fresh process.

    python -m bench.face_finding_memory [--n 128]

By default glibc raises its mmap threshold each time a large block is freed, so MTCNN's large,
short-lived tensors move from mmap into the heap, where freed space stays resident: memory grows
until the heap holds the working set's high-water mark. A fixed threshold keeps them in mmap.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.benchmarks_md import LoadWatch, machine_description, update_section

REPO = Path(__file__).resolve().parent.parent
MARKS = (1, 8, 32, 128, 512)
SETTINGS = {
    "glibc's default (dynamic threshold)": {},
    "MALLOC_MMAP_THRESHOLD_=4194304": {"MALLOC_MMAP_THRESHOLD_": "4194304"},
    "MALLOC_MMAP_THRESHOLD_=131072": {"MALLOC_MMAP_THRESHOLD_": "131072"},
}


def measure(folder: str) -> None:
    """In the child: the bulk job's CPU face-finding stage over every photo of `folder`."""
    from unmask_core.bulk.config import BulkConfig
    from unmask_core.bulk.stages import FaceFindingStage

    def resident_mib() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 2**20

    stage = FaceFindingStage(BulkConfig(input="-", output="-", models="-"))
    marks, started = {}, time.perf_counter()
    for k, path in enumerate(sorted(Path(folder).iterdir()), start=1):
        stage.faces_of({"id": path.name, "uri": str(path)})
        if k in MARKS:
            marks[k] = resident_mib()
    print(json.dumps({"rss_mib": marks, "seconds": time.perf_counter() - started}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=128, help="photos (the pipeline section's gallery)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # the child: a folder of photos
    args = parser.parse_args()
    if args.measure:
        measure(args.measure)
        return
    from bench.pipeline import make_gallery

    results = {}
    with tempfile.TemporaryDirectory() as folder, LoadWatch() as load:
        make_gallery(Path(folder), args.n)
        for name, env in SETTINGS.items():
            child = subprocess.run(
                [sys.executable, "-m", "bench.face_finding_memory", "--measure", folder],
                cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, check=True,
            )  # fmt: skip
            results[name] = json.loads(child.stdout.strip().splitlines()[-1])
    marks = [k for k in MARKS if k <= args.n]
    default = results[next(iter(SETTINGS))]["seconds"]
    rows = "".join(
        f"| {name} | "
        + " | ".join(str(r["rss_mib"][str(k)]) for k in marks)  # JSON keys are strings
        + f" | {r['seconds']:.1f} s ({r['seconds'] / default:.2f}x) |\n"
        for name, r in results.items()
    )
    text = (
        "## The face-finding actor's memory and glibc's malloc (`bench/face_finding_memory.py`)\n\n"
        f"Machine: {machine_description()}. The bulk job's CPU face-finding stage (MTCNN, alignment) over "
        f"{args.n} gallery photos of the pipeline section, one process per setting; resident MiB after "
        "so many photos, and the seconds they took.\n\n"
        "| malloc | " + " | ".join(f"after {k}" for k in marks) + " | time |\n"
        "|---|" + "---:|" * (len(marks) + 1) + "\n" + rows
    )
    print(text)
    update_section("face_finding_memory", text, load)


if __name__ == "__main__":
    main()
