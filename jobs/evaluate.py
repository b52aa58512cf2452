"""`unmask evaluate`: verification AUC (MM/MT/UU/UT/TT) per matcher, PSNR/SSIM, and an HTML report."""

from __future__ import annotations

from unmask_core.cli import job_process
from unmask_core.config import parse_config
from unmask_core.evaluation import EvaluateConfig


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(EvaluateConfig, argv, "unmask evaluate", __doc__.split(":", 1)[1].strip())
    from unmask_core import ray_session
    from unmask_core.evaluation import format_table, run_evaluation

    ray_session.quiet_output()
    summary = run_evaluation(cfg)
    print(format_table(summary))
    print(f"report: {summary['files']['report.html']}")
    print(ray_session.log_line())
    return 0


if __name__ == "__main__":
    job_process("evaluate", main)
