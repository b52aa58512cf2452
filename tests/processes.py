"""Finding Ray processes by their title or arguments, to kill one mid-run or to clean up a test head."""

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


def pids_with_argument(text: str) -> list[int]:
    """PIDs whose command line contains `text` anywhere: a Ray node's raylet, GCS and agents name the
    node's temp dir in their arguments (its workers retitle themselves, and exit with their raylet)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found
