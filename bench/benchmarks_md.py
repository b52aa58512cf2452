"""Each benchmark owns one section of BENCHMARKS.md and rewrites only that section, with the machine's
load around its timing: a section measured on a machine busy with other work says so on its first line
("loaded, not comparable"), here and nowhere else.

Busy with other work: a 1-minute load average above the core count when the timing starts, or other
processes (not the benchmark's own tree) keeping more than half a core busy on average while it runs.
The load average at the end is recorded but does not decide: it counts the benchmark's own processes
(a job with its Ray, two torch threads), which a benchmark runs by design."""

from __future__ import annotations

import os
import platform
import re
import threading
import time
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


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
OTHERS_LIMIT_CORES = 0.5  # other processes' average busy cores that make a timing "loaded"


PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def process_stats() -> dict[int, tuple[int, float, int]]:
    """pid -> (parent pid, CPU seconds so far (user + system), resident bytes) of every process, from
    /proc/<pid>/stat."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # fields 3.. of proc(5)'s stat
        cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        found[int(entry.name)] = (int(fields[1]), cpu, int(fields[21]) * PAGE_BYTES)
    return found


def descendants(root: int, processes: dict[int, tuple[int, float, int]]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (parent, *_) in processes.items():
        children.setdefault(parent, []).append(pid)
    tree, stack = set(), [root]
    while stack:
        pid = stack.pop()
        tree.add(pid)
        stack.extend(children.get(pid, []))
    return tree


def _cpu_ticks() -> tuple[int, int]:
    """(idle, total) clock ticks of all cores since boot, from /proc/stat's first line."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[3] + fields[4], sum(fields)  # idle + iowait


@dataclass
class LoadWatch:
    """The machine's load around a timing: the 1-minute load average at its start and end, the share of
    the cores' time that was idle in between (/proc/stat), and the cores that other processes kept
    busy on average (processes alive at the end that this process's tree never held). Use as
    `with LoadWatch() as load:` around the timed part, then hand it to update_section."""

    cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    load_before: float = 0.0
    load_after: float = 0.0
    idle_share: float = 0.0
    others_cores: float = 0.0
    _ticks: tuple[int, int] = (0, 0)
    _started: float = 0.0
    _processes: dict[int, tuple[int, float, int]] = field(default_factory=dict, repr=False)
    _ours: set[int] = field(default_factory=set, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    def __enter__(self) -> LoadWatch:
        self.load_before, self._ticks = os.getloadavg()[0], _cpu_ticks()
        self._started, self._processes = time.monotonic(), process_stats()
        self._ours = descendants(os.getpid(), self._processes)
        # Every process of this benchmark's tree, seen once a second: one that outlives its parent
        # (a job's Ray daemon, reparented to init) is still the benchmark's own.
        threading.Thread(target=self._watch, name="load-watch", daemon=True).start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            self._ours |= descendants(os.getpid(), process_stats())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.until_now()

    def until_now(self) -> LoadWatch:
        """The load from the start to now (a benchmark that writes its section as it goes)."""
        idle, total = _cpu_ticks()
        self.load_after = os.getloadavg()[0]
        self.idle_share = (idle - self._ticks[0]) / max(1, total - self._ticks[1])
        now = process_stats()
        ours = self._ours | descendants(os.getpid(), now)
        # A process that started in between spent all its CPU time in between.
        others = sum(now[pid][1] - self._processes.get(pid, (0, 0.0, 0))[1] for pid in now.keys() - ours)
        self.others_cores = others / max(1e-6, time.monotonic() - self._started)
        return self

    @property
    def loaded(self) -> bool:
        """A timing to not compare: the machine was busier than its cores when it began, or other
        processes took more than half a core while it ran."""
        return self.load_before > self.cores or self.others_cores > OTHERS_LIMIT_CORES

    def line(self) -> str:
        return (
            f"Load: 1-min average {self.load_before:.1f} before and {self.load_after:.1f} after the timing, "
            f"on {self.cores} cores; cores idle {self.idle_share:.0%} of the time in between; other "
            f"processes kept {self.others_cores:.2f} cores busy on average."
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
