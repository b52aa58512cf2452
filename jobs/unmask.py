"""`unmask unmask`: gallery archive -> unmasked face images + embeddings Parquet (Ray Data, GPU actors)."""

from __future__ import annotations

from unmask_core.bulk.config import BulkConfig
from unmask_core.cli import job_process, print_log_line
from unmask_core.config import parse_config


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(BulkConfig, argv, "unmask unmask", __doc__.split(":", 1)[1].strip())
    from unmask_core import shards
    from unmask_core.bulk.run import format_summary, run_bulk

    summary = run_bulk(cfg)
    print(format_summary(summary))
    print(f"rows: {cfg.output}/rows/  images: {cfg.output}/images/")
    print_log_line()
    return 0 if shards.succeeded(summary) else 1


if __name__ == "__main__":
    job_process("unmask", main)
