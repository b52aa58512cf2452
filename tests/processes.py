"""Finding Ray processes by their title, to kill one mid-run, or by their node, to clean up a test head."""

from __future__ import annotations

import os
from pathlib import Path


def pids_with_title(prefix: str) -> list[int]:
    """PIDs whose process title (Ray sets it to `ray::<actor>.<method>`) starts with `prefix`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            title = (entry / "cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
        except OSError:
            continue
        if title.startswith(prefix):
            found.append(int(entry.name))
    return found


def pids_of_ray_node(temp_dir: str, session: int) -> list[int]:
    """PIDs of a test's own Ray node: started in `session` (a `ray start` run with start_new_session),
    or naming the node's `temp_dir` in their command line (the raylet, the GCS) or in their environment
    (the agents, which retitle themselves `ray::DashboardAgent` and are missed by their command line).
    An agent left behind by a killed raylet spins on a core for as long as it lives: the rest of the
    suite then ran on one core of two."""
    found = []
    needle = temp_dir.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            # Fields after the parenthesised name: state, ppid, pgrp, session.
            state, _, _, sid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:4]
            if state == "Z":  # exited, waiting for its parent to reap it
                continue
            in_session = int(sid) == session
            mentions = any(needle in (entry / name).read_bytes() for name in ("cmdline", "environ"))
        except (OSError, ValueError, IndexError):
            continue
        if in_session or mentions:
            found.append(int(entry.name))
    return found


def orphaned_ray_processes() -> dict[str, str]:
    """Ray processes whose parent is gone (adopted by init), what a Ray that was not shut down leaves
    behind: {'PID:start time' (a reused PID is another key): 'PID title'}."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # Fields after the parenthesised name: state, ppid, ..., start time (the 20th).
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        title = args[0].decode(errors="replace")
        is_ray = title.startswith("ray::") or any(b"/ray/" in arg for arg in args[:3])
        if fields[0] != "Z" and fields[1] == "1" and is_ray:
            found[f"{entry.name}:{fields[19]}"] = f"{entry.name} {title[:60]}"
    return found
