"""Progress people can read: rates over the work done in this run (a rerun of a finished output has
none to report), plain lines without a terminal, the end said once."""

from __future__ import annotations

import io

import pytest

from unmask_core import progress
from unmask_core.progress import ProgressLines, progress_bar


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lines_of(total: int | None, done: int = 0) -> tuple[ProgressLines, io.StringIO, Clock]:
    out, clock = io.StringIO(), Clock()
    return ProgressLines(total, "prepare", "img", done, file=out, clock=clock), out, clock


def test_a_rerun_of_a_finished_output_reports_no_rate() -> None:
    bar, out, clock = lines_of(474, done=474)
    clock.now += 0.001
    bar.close()
    assert out.getvalue().splitlines() == [
        "prepare: 474/474 img (100%) (474 done by an earlier run)",
        "prepare: 474/474 img (100%): nothing left to do",
    ]


def test_the_rate_and_time_left_count_only_this_runs_work() -> None:
    bar, out, clock = lines_of(100, done=60)
    for _ in range(3):  # 10 images every 10 s: 1 image/s, whatever the 60 an earlier run did
        clock.now += 10
        bar.update(10)
    clock.now += 10
    bar.update(10)
    bar.close()
    assert out.getvalue().splitlines() == [
        "prepare: 60/100 img (60%) (60 done by an earlier run)",
        "prepare: 90/100 img (90%), 1.0 img/s, about 0:10 left",  # the first line 30 s after the start
        "prepare: 100/100 img (100%) in 0:40, 1.0 img/s",
    ]


def test_the_end_is_said_once_and_slow_work_reads_in_seconds_per_image() -> None:
    bar, out, clock = lines_of(2)
    clock.now += 45
    bar.update(1)  # 45 s after the start: a line
    clock.now += 45
    bar.update(1)  # the total reached: left to close(), which says it once
    bar.close()
    bar.close()
    assert out.getvalue().splitlines() == [
        "prepare: 0/2 img (0%)",
        "prepare: 1/2 img (50%), 45.0 s/img, about 0:45 left",
        "prepare: 2/2 img (100%) in 1:30, 45.0 s/img",
    ]


def test_an_unknown_total_counts_up() -> None:
    bar, out, clock = lines_of(None)
    clock.now += 31
    bar.update(64)
    bar.close()
    assert out.getvalue().splitlines() == [
        "prepare: 0 img",
        "prepare: 64 img, 2.1 img/s",
        "prepare: 64 img in 0:31, 2.1 img/s",
    ]


def test_a_terminal_gets_a_bar_that_starts_from_the_earlier_runs_work(monkeypatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    assert isinstance(progress_bar(10, "x", done=4), ProgressLines)  # pytest's stderr is no terminal
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: True, raising=False)
    bar = progress_bar(10, "unmask", done=4)
    try:
        assert (bar.n, bar.format_dict["initial"], bar.format_dict["rate"]) == (4, 4, None)
    finally:
        bar.close()


@pytest.mark.parametrize("ci", ["1", "true"])
def test_ci_gets_lines_even_on_a_terminal(monkeypatch, ci: str) -> None:
    monkeypatch.setenv("CI", ci)
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: True, raising=False)
    bar = progress_bar(10, "x")
    bar.close()
    assert isinstance(bar, ProgressLines)
