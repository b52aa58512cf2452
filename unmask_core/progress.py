"""One readable progress bar per job phase: work done of the total, and a rate and time left measured
over the work done in this run (work a previous run finished counts in the total, never in the rate).

On a terminal, a tqdm bar. Without one (a log file, CI, `ray job logs`), a plain line at the start,
one every 30 s while the count moves, and one at the end, so that a log reads top to bottom."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import TextIO

from tqdm import tqdm

LINE_EVERY_S = 30.0  # without a terminal: at most one progress line this often


def progress_bar(total: int | None, desc: str, unit: str = "img", done: int = 0) -> ProgressLines | tqdm:
    """A bar for `total` units (None: not known yet) of which `done` were finished by an earlier run.
    Both kinds take `update(n)` and `close()`."""
    quiet = os.environ.get("CI", "").lower() in ("1", "true", "yes") or not sys.stderr.isatty()
    if quiet:
        return ProgressLines(total, desc, unit, done)
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        initial=done,  # tqdm's rate counts from here: (n - initial) / elapsed
        dynamic_ncols=True,
        mininterval=0.5,
        file=sys.stderr,
    )


class ProgressLines:
    """Progress as whole lines: `desc: 40/100 img (40%), 2.1 img/s, about 0:29 left`."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "img",
        done: int = 0,
        file: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.done_before = self.n = done
        self.file = file or sys.stderr
        self.clock = clock
        self.started = self.last_line = clock()
        self.closed = False
        before = f" ({done} done by an earlier run)" if done else ""
        self._say(f"{self._count()}{before}")

    def update(self, n: int = 1) -> None:
        self.n += n
        finished = self.total is not None and self.n >= self.total  # close() says that, once
        if not finished and self.clock() - self.last_line >= LINE_EVERY_S:
            self._say(self._status())

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.n == self.done_before:
            self._say(f"{self._count()}: nothing left to do" if self.total == self.n else self._count())
            return
        elapsed = self.clock() - self.started
        self._say(f"{self._count()} in {_duration(elapsed)}, {_rate(self.rate(), self.unit)}")

    def rate(self) -> float | None:
        """Units per second over this run's work, or None before any."""
        elapsed = self.clock() - self.started
        worked = self.n - self.done_before
        return worked / elapsed if worked and elapsed > 0 else None

    def _count(self) -> str:
        if self.total is None:
            return f"{self.desc}: {self.n} {self.unit}"
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        return f"{self.desc}: {self.n}/{self.total} {self.unit}{share}"

    def _status(self) -> str:
        rate = self.rate()
        text = self._count()
        if rate is None:
            return text
        text += f", {_rate(rate, self.unit)}"
        if self.total is not None and self.total > self.n:
            text += f", about {_duration((self.total - self.n) / rate)} left"
        return text

    def _say(self, line: str) -> None:
        self.last_line = self.clock()
        print(line, file=self.file, flush=True)


def _rate(rate: float | None, unit: str) -> str:
    if not rate:
        return f"? {unit}/s"
    return f"{rate:.1f} {unit}/s" if rate >= 1 else f"{1 / rate:.1f} s/{unit}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
