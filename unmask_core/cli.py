"""`unmask <command>`: one console script that dispatches to the thin entry points in `jobs/`.

`python -m jobs.<name>` runs the same code; that is what `ray job submit -- ...` uses.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn

from unmask_core.config import verbose
from unmask_core.errors import TransientError, UserError

COMMANDS = {
    "prepare": "corpus -> aligned (T, M) pairs as Parquet shards, split by identity",
    "train": "train the baseline encoder f0 or the unmasking encoder f on Ray Train",
    "unmask": "bulk-unmask a gallery archive -> unmasked images + embeddings Parquet",
    "evaluate": "verification AUC (MM/MT/UU/UT/TT) per matcher, PSNR/SSIM, HTML report",
    "demo": "the whole flow on sample faces, CPU only, in minutes (the embedded default)",
    "models": "model sets: `models init` makes a randomly initialised one",
}

USAGE = (
    "usage: unmask <command> [options]   (unmask <command> --help for its options; unmask --version)\n\n"
    "commands:\n" + "\n".join(f"  {name:<9} {text}" for name, text in COMMANDS.items())
)


def version() -> str:
    """The installed package's version, from its metadata (pyproject.toml's `version`)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version("unmask")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed: pip install .)"


JobMain = Callable[[list[str] | None], int | None]  # a job module's `main(argv)`


# Exit statuses (config.EXIT_CODES says them to people).
EXIT_FAILED = 1  # a failure during the work: a rerun resumes what is finished
EXIT_REFUSED = 2  # a refusal before any work: usage, bad settings, bad inputs found by the checks


def run_main(name: str, job_main: JobMain, argv: list[str] | None) -> int:
    """Run a job's `main(argv)`; whatever stops it becomes at most three lines on standard error and
    an exit status (see `report_failure`)."""
    try:
        return int(job_main(argv) or 0)
    except Exception as exc:
        return report_failure(name, exc)


def report_failure(name: str, exc: Exception) -> int:
    """A UserError raised in the driver is a refusal: one line, status 2. A TransientError, or a
    UserError that reached the driver from a Ray worker (the work had begun): one line, status 1.
    Anything else (a bug, a failure of Ray's own) is named in one line, with one more that says where
    its traceback went (--verbose prints it), status 1."""
    cause = _cause(exc)
    if isinstance(cause, UserError) and cause is exc:
        print(f"unmask {name}: error: {_first_line(cause)}", file=sys.stderr)
        return EXIT_REFUSED
    if isinstance(cause, UserError | TransientError):
        kept = "; finished work is kept: rerun once fixed" if isinstance(cause, TransientError) else ""
        print(f"unmask {name}: failed: {_first_line(cause)}{kept}", file=sys.stderr)
        return EXIT_FAILED
    where = _keep_traceback(exc)
    print(f"unmask {name}: failed: {type(cause).__name__}: {_first_line(cause)}", file=sys.stderr)
    print(where, file=sys.stderr)
    return EXIT_FAILED


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _cause(exc: BaseException) -> BaseException:
    """The error under Ray's wrappers (a task's, Ray Train's worker group's or controller's)."""
    for _ in range(8):  # wrappers nest a few levels at most
        failures = getattr(exc, "worker_failures", None)
        inner = (
            next(iter(failures.values()), None)
            if failures
            else getattr(exc, "cause", None) or getattr(exc, "controller_failure", None)
        )
        if not isinstance(inner, BaseException):
            return exc
        exc = inner
    return exc


def _keep_traceback(exc: BaseException) -> str:
    """Print the traceback (--verbose) or append it to the job's log file; returns a line saying where."""
    text = "".join(traceback.format_exception(exc))
    if verbose():
        print(text, file=sys.stderr, end="")
        return "(the traceback is above)"
    from unmask_core.ray_session import log_file_path

    path = log_file_path()
    with open(path, "a") as log:
        log.write(text)
    return f"the traceback: {path} (--verbose prints it here)"


def print_log_line() -> None:
    """End a job's output with the line that names its log file, when that file holds something (the
    messages of Ray, torch and Python's warnings that were not shown)."""
    if "unmask_core.ray_session" not in sys.modules:  # nothing was sent to a log file
        return
    from unmask_core.ray_session import log_line

    line = log_line()
    if line:
        print(line)


def run_job(module_name: str, argv: list[str]) -> int:
    """Run `jobs.<module_name>.main(argv)` as `unmask <module_name>` does."""
    module = importlib.import_module(f"jobs.{module_name}")
    return run_main(module_name, module.main, argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(f"unmask {version()}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"unmask: unknown command {command!r}\n{USAGE}", file=sys.stderr)
        return 2
    return run_job(command, rest)


def exit_process(code: int) -> NoReturn:
    """End a job's process once its work is written and reported: Ray shut down, logs and streams
    flushed, then out without the interpreter's teardown (module cleanup, the destructors of torch,
    Ray and Ray Data), which take seconds at the end of every job with nothing left to save, since a
    job writes and commits all its output before `main` returns. Process entry points only: a
    caller that goes on (a test calling `main`) keeps its process."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        if stream is not None:
            stream.flush()
    os._exit(code)


def console() -> NoReturn:
    """The `unmask` console script."""
    exit_process(main())


def job_process(name: str, job_main: JobMain) -> NoReturn:
    """`python -m jobs.<name>`, what `ray job submit` runs: the same one-line errors, exit codes and
    exit as `unmask <name>`."""
    exit_process(run_main(name, job_main, None))


if __name__ == "__main__":
    console()
