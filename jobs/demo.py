"""`unmask demo`: the whole flow on sample faces shipped with our dependencies, CPU only, in minutes."""

from __future__ import annotations

from unmask_core.cli import job_process, print_log_line
from unmask_core.config import parse_config
from unmask_core.demo import NEXT_STEPS, UNTRAINED_NOTE, DemoConfig


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(DemoConfig, argv, "unmask demo", __doc__.split(":", 1)[1].strip())
    from unmask_core import ray_session
    from unmask_core.demo import run_demo

    ray_session.connect()
    result = run_demo(cfg)
    print(NEXT_STEPS.format(UNTRAINED_NOTE=UNTRAINED_NOTE, **result))
    print(f"demo finished in {result['seconds']:.0f}s")
    print_log_line()
    return 0


if __name__ == "__main__":
    job_process("demo", main)
