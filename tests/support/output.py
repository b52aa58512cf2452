"""What a person reads from a job: our progress lines, summaries and one-line errors, nothing else."""

from __future__ import annotations

import re

# Lines that come from Ray's, torch's or Python's own machinery rather than from us.
FOREIGN = [
    r"\(raylet\)",
    r"\(\w+ pid=\d+",  # a worker's forwarded line
    r"\.cc:\d+",  # Ray's C++ logging
    r"Warning\b|WARNING\b|warnings\.warn",
    r"Token authentication",
    r"Progress bars",
    r"execution finished",
    r"^\s*\[?\d{4}-\d\d-\d\d[ T]\d\d:\d\d",  # a log record's timestamp
    r"Traceback \(most recent call last\)",
    r"\bINFO\b",
]


def foreign_lines(text: str) -> list[str]:
    lines = [line for chunk in text.splitlines() for line in chunk.split("\r")]
    return [line for line in lines if any(re.search(p, line) for p in FOREIGN)]
