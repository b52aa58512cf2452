"""Finding Ray worker processes by their title, to kill one mid-run in fault-tolerance tests."""

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
