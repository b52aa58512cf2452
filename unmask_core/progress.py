"""One readable progress bar per job (rows done / total, rate); quiet under CI."""

from __future__ import annotations

import os
import sys

from tqdm import tqdm


def progress_bar(total: int | None, desc: str, unit: str = "img") -> tqdm:
    quiet = os.environ.get("CI", "").lower() in ("1", "true", "yes") or not sys.stderr.isatty()
    # Without a terminal a bar would print one line per update; print a line every 30 s instead.
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        dynamic_ncols=True,
        disable=False,
        mininterval=30.0 if quiet else 0.5,
        file=sys.stderr,
    )
