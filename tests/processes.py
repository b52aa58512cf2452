"""Finding Ray worker processes by their title, to kill one mid-run in fault-tolerance tests."""

from __future__ import annotations

import os
from pathlib import Path


def pids_with_title(fragment: str) -> list[int]:
    """PIDs whose command line (Ray sets it to the actor/task name) contains `fragment`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fragment in cmdline:
            found.append(int(entry.name))
    return found
