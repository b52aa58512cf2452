"""The README and the guides are followed as written: every command in their code blocks exists, every
flag they pass is one the command knows (checked against its --help), and every `unmask` job they show
is parsed by that job's own parser and config checks (list values, choices), so that the syntax they
teach cannot drift from the code's."""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from unmask_core.config import JobArgumentParser, add_config_arguments, build_config, parse_config
from unmask_core.errors import UserError

DOCS = [REPO_ROOT / "README.md", REPO_ROOT / "docs" / "cluster.md", REPO_ROOT / "docs" / "output.md"]
BIN = Path(sys.executable).parent
RAY_GROUPS = {"job"}  # `ray job <sub>`


def code_lines(path: Path) -> list[str]:
    lines, inside = [], False
    for line in path.read_text().splitlines():
        if line.strip().startswith("```"):
            inside = not inside and line.strip() in ("```bash", "```sh", "```console")
            continue
        if inside and line.strip() and not line.strip().startswith("#"):
            lines.append(line.strip())
    joined = "\n".join(lines).replace("\\\n", " ")
    return [" ".join(shlex.split(line, comments=True)) for line in joined.splitlines() if line.strip()]


@cache
def help_text(*command: str) -> str:
    proc = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert proc.returncode == 0, f"{' '.join(command)} --help failed: {proc.stderr[-500:]}"
    return proc.stdout


def _flags(tokens: list[str]) -> list[str]:
    return [t.split("=", 1)[0] for t in tokens if t.startswith("--") and len(t) > 2]


def check_command(tokens: list[str]) -> None:
    program = tokens[0]
    if program in ("export", "source", "cd"):
        return
    if program == "pip":  # installing this package: the extras it names exist
        assert tokens[1] == "install", tokens
        for target in tokens[2:]:
            extras = re.fullmatch(r"(?:\.|unmask)(?:\[([\w,]+)\])?", target)
            assert extras, f"pip installs something else than this package: {target}"
            known = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"][
                "optional-dependencies"
            ]
            assert set(filter(None, (extras.group(1) or "").split(","))) <= set(known), target
        return
    if program == "bash":
        assert (REPO_ROOT / tokens[1]).is_file(), tokens[1]
        return
    if program == "ray":
        if "--" in tokens:  # ray job submit [options] -- <entrypoint>
            split = tokens.index("--")
            check_command(tokens[split + 1 :])
            tokens = tokens[:split]
        path = tokens[1:3] if tokens[1] in RAY_GROUPS else tokens[1:2]
        text = help_text(str(BIN / "ray"), *path)
    elif program == "python" and tokens[1] == "-m":
        assert tokens[2].startswith("jobs."), tokens
        text = help_text(sys.executable, "-m", tokens[2])
        job, args = tokens[2].removeprefix("jobs."), tokens[3:]
    elif Path(program).name == "unmask":
        path = tokens[1:3] if tokens[1] == "models" else tokens[1:2]
        text = help_text(str(BIN / "unmask"), *path)
        job, args = tokens[1], tokens[2:]
    else:
        raise AssertionError(f"unexpected command in the docs: {' '.join(tokens)}")
    for flag in _flags(tokens):
        assert re.search(rf"(^|[\s,\[]){re.escape(flag)}([\s,=\]]|$)", text, re.M), (
            f"{flag} unknown to {tokens[:3]}"
        )
    if program != "ray":
        parse_job(job, args)


def parse_job(job: str, args: list[str]) -> None:
    """Parse a documented job's arguments as the job does, with its config's checks (nothing runs)."""
    if job == "models":
        from jobs.models import ACTIONS

        cls = ACTIONS[args[0]][0]
        parser = JobArgumentParser(prog=f"unmask models {args[0]}")
        add_config_arguments(parser, cls)
        build_config(cls, parser.parse_args(args[1:]))
        return
    module = importlib.import_module(f"jobs.{job}")
    (cls,) = {v for v in vars(module).values() if isinstance(v, type) and v.__name__.endswith("Config")}
    parse_config(cls, args, f"unmask {job}", "")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_documented_command_and_flag_exists(doc: Path) -> None:
    lines = code_lines(doc)
    assert lines, f"no shell code blocks in {doc}"
    for line in lines:
        check_command(shlex.split(line))


def test_the_check_catches_a_made_up_flag() -> None:
    with pytest.raises(AssertionError, match="--frobnicate"):
        check_command(shlex.split("python -m jobs.unmask --input x --frobnicate 3"))
    with pytest.raises(AssertionError):
        check_command(
            shlex.split(
                "ray job submit --no-such-option -- python -m jobs.train --pairs p --models m --output o"
            )
        )


@pytest.mark.parametrize(
    ("command", "why"),
    [
        ("unmask unmask --input g --output o --models m --matchers arcface facenet", "comma-separated"),
        ("python -m jobs.evaluate --pairs p --models m --output o --matchers arcface,vggface", "vggface"),
        ("unmask train --pairs p --models m --out runs", "--out"),  # hidden: not taught any more
        ("unmask models init --size 128 --output m", "invalid choice"),
    ],
)
def test_the_check_catches_a_value_the_job_would_refuse(command: str, why: str) -> None:
    with pytest.raises((AssertionError, UserError), match=why):
        check_command(shlex.split(command))


def test_readme_opens_with_the_two_commands() -> None:
    first_block = code_lines(REPO_ROOT / "README.md")[:2]
    assert first_block == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    assert (REPO_ROOT / ".ci" / "run").read_text().strip().endswith("exec bash scripts/test.sh")
