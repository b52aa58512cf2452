"""BENCHMARKS.md sections carry the load they were measured under, and a loaded run says so."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from bench import benchmarks_md
from bench.benchmarks_md import LoadWatch, update_section


def test_a_timing_records_the_load_around_it() -> None:
    with LoadWatch() as load:
        sum(range(200_000))
    assert load.cores >= 1 and load.load_before >= 0 and load.load_after >= 0
    assert 0.0 <= load.idle_share <= 1.0
    assert f"on {load.cores} cores" in load.line()


def test_other_processes_count_as_load_and_the_benchmarks_own_do_not() -> None:
    """A busy loop outside this process's tree (a double fork, as another job would be) is load; the
    same loop as this process's child is the benchmark's own work."""
    busy = [sys.executable, "-c", "import time\nend = time.time() + 3\nwhile time.time() < end: pass"]
    with LoadWatch() as own:
        child = subprocess.Popen(busy)
        time.sleep(2)
    child.wait()
    with LoadWatch() as other:
        subprocess.run(["sh", "-c", 'exec "$0" "$@" >/dev/null 2>&1 &', *busy], check=True)
        time.sleep(2)
    assert other.others_cores - own.others_cores > 0.6, (own.others_cores, other.others_cores)
    assert "other processes kept" in other.line()


def test_a_loaded_section_is_marked_not_comparable(tmp_path: Path, monkeypatch) -> None:
    page = tmp_path / "BENCHMARKS.md"
    monkeypatch.setattr(benchmarks_md, "BENCHMARKS", page)
    quiet = LoadWatch(cores=2, load_before=1.5, load_after=3.4, idle_share=0.1, others_cores=0.1)
    busy = LoadWatch(cores=2, load_before=1.5, load_after=3.4, idle_share=0.0, others_cores=1.2)
    update_section("quiet", "## Quiet\n\n| a |\n|---|\n| 1 |", quiet)
    update_section("busy", "## Busy\n\nfigures", busy)
    text = page.read_text()
    quiet_block = text.split("<!-- quiet:start -->")[1].split("<!-- quiet:end -->")[0]
    busy_block = text.split("<!-- busy:start -->")[1].split("<!-- busy:end -->")[0]
    # Its own processes took the load average over the cores; others did not: not loaded.
    assert "Loaded" not in quiet_block and "1.5 before and 3.4 after" in quiet_block
    assert LoadWatch(cores=2, load_before=2.5).loaded
    assert busy_block.startswith("\n## Busy\n\n**Loaded, not comparable.** Load: 1-min average 1.5")
    # Rewriting a section replaces it, whatever the load was before.
    update_section("busy", "## Busy\n\nfigures again", quiet)
    assert "Loaded" not in page.read_text() and page.read_text().count("<!-- busy:start -->") == 1
