"""`unmask prepare`: corpus -> aligned (T, M) pairs as Parquet shards (Ray Data)."""

from __future__ import annotations

from unmask_core.cli import job_process, print_log_line
from unmask_core.config import parse_config
from unmask_core.prepare.config import PrepareConfig


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(PrepareConfig, argv, "unmask prepare", __doc__.split(":", 1)[1].strip())
    from unmask_core import shards
    from unmask_core.prepare.run import format_summary, run_prepare

    summary = run_prepare(cfg)  # its checks come before Ray starts
    print(format_summary(summary))
    print(f"pairs: {cfg.output}/pairs/  summary: {cfg.output}/summary.json")
    print_log_line()
    return 0 if shards.succeeded(summary) else 1


if __name__ == "__main__":
    job_process("prepare", main)
