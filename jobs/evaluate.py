"""`unmask evaluate`: verification AUC (MM/MT/UU/UT/TT) per matcher, PSNR/SSIM, and an HTML report."""

from __future__ import annotations

from unmask_core.cli import job_process, print_log_line
from unmask_core.config import parse_config
from unmask_core.evaluation import EvaluateConfig


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(EvaluateConfig, argv, "unmask evaluate", __doc__.split(":", 1)[1].strip())
    from unmask_core.evaluation import check_evaluation, format_table, run_evaluation

    plan = check_evaluation(cfg)  # before torch or Ray's modules load: a refusal takes seconds
    from unmask_core import ray_session

    ray_session.quiet_output()
    summary = run_evaluation(cfg, plan)
    print(format_table(summary))
    print(f"report: {summary['files']['report.html']}")
    print_log_line()
    return 0


if __name__ == "__main__":
    job_process("evaluate", main)
