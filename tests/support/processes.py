"""Finding Ray processes by their title, to kill one mid-run, by their node, to clean up a test head, or
as orphans that a Ray left behind."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Process:
    pid: int
    ppid: int
    session: int
    start_time: str  # clock ticks after boot: with the PID, tells a reused PID apart
    args: list[bytes]

    @property
    def title(self) -> str:
        """Its process title (Ray sets it to `ray::<actor>.<method>`)."""
        return self.args[0].decode(errors="replace") if self.args else ""

    def environ(self) -> bytes:
        return Path(f"/proc/{self.pid}/environ").read_bytes()


def processes() -> Iterator[Process]:
    """Every live process but this one (exited ones waiting to be reaped are skipped)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            # Fields after the parenthesised name: state, ppid, pgrp, session, ..., start time (the 20th).
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if fields[0] != "Z":
            yield Process(int(entry.name), int(fields[1]), int(fields[3]), fields[19], args)


def pids_with_title(prefix: str) -> list[int]:
    """PIDs whose process title starts with `prefix`, among this process's descendants: the workers of
    the Ray this test run started, never those of a user's job running beside the tests."""
    every = list(processes())
    children: dict[int, list[int]] = {}
    for process in every:
        children.setdefault(process.ppid, []).append(process.pid)
    ours, stack = set(), [os.getpid()]
    while stack:
        for child in children.get(stack.pop(), []):
            ours.add(child)
            stack.append(child)
    return [p.pid for p in every if p.pid in ours and p.title.startswith(prefix)]


def pids_of_ray_node(temp_dir: str, session: int) -> list[int]:
    """PIDs of a test's own Ray node: started in `session` (a `ray start` run with start_new_session),
    or naming the node's `temp_dir` in their command line (the raylet, the GCS) or in their environment
    (the agents, which retitle themselves `ray::DashboardAgent` and are missed by their command line).
    An agent left behind by a killed raylet spins on a core for as long as it lives: the rest of the
    suite then ran on one core of two."""
    needle = temp_dir.encode()
    found = []
    for process in processes():
        try:
            if (
                process.session == session
                or any(needle in a for a in process.args)
                or needle in process.environ()
            ):
                found.append(process.pid)
        except OSError:  # gone meanwhile
            continue
    return found


def orphaned_ray_processes() -> dict[str, str]:
    """Ray processes whose parent is gone (adopted by init), what a Ray that was not shut down leaves
    behind: {'PID:start time' (a reused PID is another key): 'PID title'}."""
    return {
        f"{p.pid}:{p.start_time}": f"{p.pid} {p.title[:60]}"
        for p in processes()
        if p.ppid == 1 and (p.title.startswith("ray::") or any(b"/ray/" in arg for arg in p.args[:3]))
    }
