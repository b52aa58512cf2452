"""The GPU benchmark's report: DIR/gpu_unmask.json (finite numbers only) and DIR/gpu_unmask.md, rewritten
atomically after every section."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def _cell(value: Any) -> str:
    """A markdown table cell: 3 significant digits, thousands separators, no '|' or line breaks."""
    if value is None:
        return ""
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def section_markdown(name: str, result: dict) -> str:
    lines = [f"## {name}: {result['status']} ({result.get('seconds', 0):.1f} s)", ""]
    for key in ("summary", "reason", "what", "error"):
        if result.get(key):
            lines.append(f"{key}: {result[key]}  ")
    rows = result.get("rows") or []
    if rows:
        columns = list(dict.fromkeys(k for row in rows for k in row))
        lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    if result.get("traceback"):
        lines += ["", "```", result["traceback"].rstrip(), "```"]
    return "\n".join(lines) + "\n"


def finite(value: Any) -> Any:
    """`value` with every non-finite float (a rate over no time, a PSNR of equal images) as None: the
    JSON holds numbers a reader can use, and json.dumps(allow_nan=False) enforces it."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


class Report:
    """DIR/gpu_unmask.json and DIR/gpu_unmask.md, rewritten (atomically) after every section."""

    def __init__(self, out: Path, meta: dict) -> None:
        self.out = out
        self.meta = meta
        self.sections: dict[str, dict] = {}

    def record(self, name: str, result: dict) -> None:
        self.sections[name] = result
        self.write()

    def write(self) -> None:
        payload = finite({**self.meta, "sections": self.sections})
        self._write("gpu_unmask.json", json.dumps(payload, indent=2, default=str, allow_nan=False) + "\n")
        self._write("gpu_unmask.md", self.markdown())

    def markdown(self) -> str:
        meta = self.meta
        lines = [
            "# GPU benchmark (`bench/gpu_unmask.py`)",
            "",
            f"Machine: {meta['machine']}. Command: `{meta['command']}`. Started {meta['started']}.",
            "",
            f"Setup (model set made, networks loaded; outside every cap): {_cell(meta.get('setup'))}",
            "",
            "| section | status | seconds | summary |",
            "|---|---|---|---|",
        ]
        for name in meta["planned"]:
            result = self.sections.get(name)
            if result is None:
                lines.append(f"| {name} | not run yet | | |")
                continue
            summary = result.get("summary") or result.get("reason") or result.get("error", "")
            lines.append(f"| {name} | {result['status']} | {result['seconds']:.1f} | {_cell(summary)} |")
        lines.append("")
        lines += [section_markdown(name, self.sections[name]) for name in self.sections]
        return "\n".join(lines)

    def _write(self, filename: str, text: str) -> None:
        partial = self.out / f".{filename}.partial"
        partial.write_text(text)
        os.replace(partial, self.out / filename)
