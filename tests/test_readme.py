"""The README and the cluster guide are followed as written: every command in their code blocks exists
and every flag they pass is one the command knows (checked against its --help)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

DOCS = [REPO_ROOT / "README.md", REPO_ROOT / "docs" / "cluster.md"]
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
    elif Path(program).name == "unmask":
        path = tokens[1:3] if tokens[1] == "models" else tokens[1:2]
        text = help_text(str(BIN / "unmask"), *path)
    else:
        raise AssertionError(f"unexpected command in the docs: {' '.join(tokens)}")
    for flag in _flags(tokens):
        assert re.search(rf"(^|[\s,\[]){re.escape(flag)}([\s,=\]]|$)", text, re.M), (
            f"{flag} unknown to {tokens[:3]}"
        )


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
        check_command(shlex.split("ray job submit --no-such-option -- python -m jobs.train --steps 3"))


def test_readme_opens_with_the_two_commands() -> None:
    first_block = code_lines(REPO_ROOT / "README.md")[:2]
    assert first_block == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    assert (REPO_ROOT / ".ci" / "run").read_text().strip().endswith("exec bash scripts/test.sh")
