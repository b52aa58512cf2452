"""The `unmask` console script: every subcommand answers --help with its options; configs merge
YAML and flags; bad input is one line, not a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from unmask_core import cli
from unmask_core.config import parse_config, save_config
from unmask_core.errors import UserError
from unmask_core.prepare.config import PrepareConfig

EXPECTED_OPTIONS = {
    "prepare": ["--corpus", "--input", "--output", "--mask-kinds", "--test-fraction", "--seed"],
    "train": ["--stage", "--pairs", "--models", "--out", "--init-from", "--workers", "--gpu", "--steps"],
    "unmask": [
        "--input",
        "--output",
        "--models",
        "--matchers",
        "--faces",
        "--batch-size",
        "--gpus-per-actor",
        "--actors",
    ],
    "evaluate": ["--pairs", "--models", "--out", "--matchers", "--max-pairs"],
    "demo": ["--out"],
}


def test_top_level_help_names_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("prepare", "train", "unmask", "evaluate", "demo", "models"):
        assert command in out


@pytest.mark.parametrize("command", sorted(EXPECTED_OPTIONS))
def test_subcommand_help_names_its_options(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in EXPECTED_OPTIONS[command]:
        assert flag in out, f"{command} --help does not mention {flag}"


def test_models_init_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["models", "init", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--size" in out and "--out" in out


def test_console_script_help_runs_as_a_process() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "unmask_core.cli", "unmask", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "--gpus-per-actor" in proc.stdout


def test_unknown_command_fails() -> None:
    assert cli.main(["frobnicate"]) == 2


def test_flags_override_yaml_which_overrides_defaults(tmp_path) -> None:
    config_file = tmp_path / "prepare.yaml"
    config_file.write_text(yaml.safe_dump({"seed": 7, "test_fraction": 0.3, "input": "in", "output": "out"}))
    cfg = parse_config(PrepareConfig, ["--config", str(config_file), "--seed", "9"], "p", "d")
    assert cfg.seed == 9  # flag wins
    assert cfg.test_fraction == 0.3  # from YAML
    assert cfg.shard_size == PrepareConfig.__dataclass_fields__["shard_size"].default  # default kept
    saved = save_config(cfg, str(tmp_path / "run"))
    assert yaml.safe_load(open(saved))["seed"] == 9


def test_unknown_yaml_key_and_missing_required_option_are_user_errors(tmp_path) -> None:
    config_file = tmp_path / "bad.yaml"
    config_file.write_text("sede: 1\n")
    with pytest.raises(UserError, match="unknown config keys"):
        parse_config(PrepareConfig, ["--config", str(config_file)], "p", "d")
    with pytest.raises(UserError, match="--input"):
        parse_config(PrepareConfig, ["--output", "x"], "p", "d")


def test_missing_local_input_is_one_line_naming_it(tmp_path) -> None:
    missing = tmp_path / "no-such-corpus"
    command = [
        sys.executable,
        "-m",
        "unmask_core.cli",
        "prepare",
        "--input",
        str(missing),
        "--output",
        str(tmp_path),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and "no such file" in lines[0], proc.stderr
