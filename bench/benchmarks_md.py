"""Each benchmark owns one section of BENCHMARKS.md and rewrites only that section, with the machine's
load around its timing: a section measured on a machine busier than its cores says so on its first line
("loaded, not comparable"), here and nowhere else."""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
HEADER = (
    "# Benchmarks\n\nEvery figure names the machine it was measured on. Ratios are measured in one run.\n"
)


def machine_description() -> str:
    """One line naming the machine: CPU model and cores, or the GPU."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (GPU), torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return f"{cpu}, {os.cpu_count()} cores, CPU only, torch {torch.__version__}"


def _cpu_ticks() -> tuple[int, int]:
    """(idle, total) clock ticks of all cores since boot, from /proc/stat's first line."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[3] + fields[4], sum(fields)  # idle + iowait


@dataclass
class LoadWatch:
    """The machine's load around a timing: the 1-minute load average at its start and end, and the
    share of the cores' time that was idle in between (/proc/stat). Use as `with LoadWatch() as load:`
    around the timed part, then hand it to update_section."""

    cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    load_before: float = 0.0
    load_after: float = 0.0
    idle_share: float = 0.0
    _ticks: tuple[int, int] = (0, 0)

    def __enter__(self) -> LoadWatch:
        self.load_before, self._ticks = os.getloadavg()[0], _cpu_ticks()
        return self

    def __exit__(self, *exc: object) -> None:
        self.until_now()

    def until_now(self) -> LoadWatch:
        """The load from the start to now (a benchmark that writes its section as it goes)."""
        idle, total = _cpu_ticks()
        self.load_after = os.getloadavg()[0]
        self.idle_share = (idle - self._ticks[0]) / max(1, total - self._ticks[1])
        return self

    @property
    def loaded(self) -> bool:
        """A timing to not compare: the load average went above the core count."""
        return max(self.load_before, self.load_after) > self.cores

    def line(self) -> str:
        return (
            f"Load: 1-min average {self.load_before:.1f} before and {self.load_after:.1f} after the timing, "
            f"on {self.cores} cores; cores idle {self.idle_share:.0%} of the time in between."
        )


def update_section(name: str, markdown: str, load: LoadWatch) -> None:
    """Replace (or append) the section delimited by markers for `name` in BENCHMARKS.md, with the load
    it was measured under; a loaded run's section is marked as such right under its title."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    title, _, body = markdown.strip().partition("\n")
    mark = "**Loaded, not comparable.** " if load.loaded else ""
    block = f"{start}\n{title}\n\n{mark}{load.line()}\n{body}\n{end}"
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = (
        pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    )
    BENCHMARKS.write_text(text)
