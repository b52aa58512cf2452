"""The `unmask` console script: every subcommand answers --help with its options; configs merge
YAML and flags; bad input is one line, not a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from unmask_core import cli
from unmask_core.config import parse_config, save_config
from unmask_core.errors import TransientError, UserError
from unmask_core.prepare.config import PrepareConfig

EXPECTED_OPTIONS = {
    "prepare": ["--corpus", "--input", "--output", "--mask-kinds", "--test-fraction", "--seed"],
    "train": ["--stage", "--pairs", "--models", "--output", "--init-from", "--workers", "--gpu", "--steps"],
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
    "evaluate": ["--pairs", "--models", "--output", "--matchers", "--max-pairs"],
    "demo": ["--output"],
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
    assert "--size" in out and "--output" in out


def test_console_script_help_runs_as_a_process() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "unmask_core.cli", "unmask", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "--gpus-per-actor" in proc.stdout


def test_a_process_that_exits_without_teardown_still_delivers_its_output_logs_and_code(tmp_path) -> None:
    log = tmp_path / "job.log"
    script = (
        "import logging, sys\n"
        "from unmask_core.cli import exit_process\n"
        f"handler = logging.FileHandler({str(log)!r})\n"
        "logging.getLogger('job').addHandler(handler)\n"
        "logging.getLogger('job').warning('logged line')\n"
        "print('summary line', end='')\n"  # no newline: block-buffered in a pipe until flushed
        "print('error line', end='', file=sys.stderr)\n"
        "exit_process(3)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "summary line", "error line")
    assert log.read_text() == "logged line\n"


def test_unknown_command_fails() -> None:
    assert cli.main(["frobnicate"]) == 2


def test_version_is_the_installed_packages(capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.metadata
    import tomllib

    from tests.conftest import REPO_ROOT

    assert cli.main(["--version"]) == 0
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert capsys.readouterr().out.strip() == f"unmask {importlib.metadata.version('unmask')}"
    assert importlib.metadata.version("unmask") == pyproject


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


# The console script, and `python -m jobs.<name>` as `ray job submit` runs it.
@pytest.mark.parametrize("entry", [["unmask_core.cli", "prepare"], ["jobs.prepare"], ["jobs.unmask"]])
def test_missing_local_input_is_one_line_naming_it(tmp_path, entry: list[str]) -> None:
    missing = tmp_path / "no-such-corpus"
    command = [sys.executable, "-m", *entry, "--input", str(missing), "--output", str(tmp_path)]
    if entry[-1].endswith("unmask"):
        command += ["--models", str(tmp_path)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and "no such file" in lines[0], proc.stderr
    assert lines[0].startswith(f"unmask {entry[-1].split('.')[-1]}: error: ")


def _job_configs() -> dict[str, type]:
    import importlib

    from jobs.models import ACTIONS

    configs = {}
    for command in ("prepare", "train", "unmask", "evaluate", "demo"):
        job = importlib.import_module(f"jobs.{command}")
        (cls,) = {v for v in vars(job).values() if isinstance(v, type) and v.__name__.endswith("Config")}
        configs[command] = cls
    configs.update({f"models {action}": cls for action, (cls, _, _) in ACTIONS.items()})
    return configs


@pytest.mark.parametrize("command", sorted(_job_configs()))
def test_every_option_with_fixed_choices_lists_them_in_help(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import dataclasses

    fields = dataclasses.fields(_job_configs()[command])
    fixed = {f.name: f.metadata.get("choices") or f.metadata.get("item_choices") for f in fields}
    fixed = {name: values for name, values in fixed.items() if values}
    with pytest.raises(SystemExit):
        cli.main([*command.split(), "--help"])
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for name, values in fixed.items():
        assert f"(choices: {', '.join(map(str, values))})" in help_text, f"--{name} hides its choices"
    if command in ("prepare", "unmask", "train"):
        assert fixed, f"{command}: expected options with fixed choices"


def test_configs_are_checked_however_they_are_built() -> None:
    from unmask_core.bulk.config import BulkConfig
    from unmask_core.training.config import TrainConfig

    # Built in code, a baseline config is normalised like the CLI's: eq. 4 has no latent term.
    assert TrainConfig(stage="baseline", pairs="p", models="m", output="o").latent_weight == 0.0
    with pytest.raises(UserError, match="--stage"):
        TrainConfig(stage="finetune", pairs="p", models="m", output="o")
    with pytest.raises(UserError, match="--matchers"):
        BulkConfig(input="i", output="o", models="m", matchers=["arcface", "vggface"])
    with pytest.raises(UserError, match="--mask-kinds"):
        PrepareConfig(input="i", output="o", mask_kinds=["bandana"])
    with pytest.raises(UserError, match="--shard-size"):
        PrepareConfig(input="i", output="o", shard_size=0)


@pytest.mark.parametrize(
    ("text", "flag", "expected"),
    [
        ("steps: ten", "--steps", "expected an integer"),
        ('gpu: "false"', "--gpu", "expected true or false"),
        ("gpu: 1", "--gpu", "expected true or false"),
        ("lr: fast", "--lr", "expected a number"),
    ],
)
def test_yaml_values_are_type_checked_like_flags(tmp_path, text: str, flag: str, expected: str) -> None:
    from unmask_core.training.config import TrainConfig

    config_file = tmp_path / "train.yaml"
    config_file.write_text(f"pairs: p\nmodels: m\nout: o\n{text}\n")
    with pytest.raises(UserError, match=f"{flag}: {expected}"):
        parse_config(TrainConfig, ["--config", str(config_file)], "t", "d")


def test_yaml_booleans_and_lists_read_as_their_types(tmp_path) -> None:
    from unmask_core.bulk.config import BulkConfig
    from unmask_core.training.config import TrainConfig

    config_file = tmp_path / "train.yaml"
    config_file.write_text("pairs: p\nmodels: m\nout: o\ngpu: false\nlr: 1\n")
    cfg = parse_config(TrainConfig, ["--config", str(config_file)], "t", "d")
    assert cfg.gpu is False and cfg.lr == 1.0 and isinstance(cfg.lr, float)
    bulk_file = tmp_path / "bulk.yaml"
    bulk_file.write_text("input: i\noutput: o\nmodels: m\nmatchers: facenet\n")
    assert parse_config(BulkConfig, ["--config", str(bulk_file)], "u", "d").matchers == ["facenet"]


# ---------------------------------------------------------------- exit statuses and one-line errors


def _stderr_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("command", ["prepare", "train", "unmask", "evaluate", "demo"])
def test_every_jobs_help_says_what_its_exit_statuses_mean(command: str, capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "exit status: 0 done; 1 failed during the work" in help_text
    assert "2 refused before any work (usage, bad settings, or bad inputs found by the checks)" in help_text


def test_a_usage_error_is_one_line_and_exit_status_2(capsys) -> None:
    assert cli.main(["train", "--steps", "ten"]) == cli.EXIT_REFUSED == 2
    lines = _stderr_lines(capsys)
    assert lines == [
        "unmask train: error: argument --steps: invalid int value: 'ten' "
        "(unmask train --help lists the options)"
    ]


def test_bad_settings_are_one_line_and_exit_status_2(capsys) -> None:
    assert cli.main(["prepare", "--input", "i", "--output", "o", "--test-fraction", "1.5"]) == 2
    assert _stderr_lines(capsys) == ["unmask prepare: error: --test-fraction must be in [0, 1)"]


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("input: in\noutput: [out\nseed: 3\n", "line 3, column 5: expected ',' or ']', but got ':'"),
        ("input: in\n  output: out\n", "line 2, column 9: mapping values are not allowed here"),
        ("input: 'in\n", "line 2, column 1: found unexpected end of stream"),
    ],
)
def test_malformed_yaml_is_one_line_naming_the_file_and_line(tmp_path, capsys, text: str, where: str) -> None:
    config_file = tmp_path / "prepare.yaml"
    config_file.write_text(text)
    assert cli.main(["prepare", "--config", str(config_file)]) == 2
    assert _stderr_lines(capsys) == [f"unmask prepare: error: {config_file}: not valid YAML at {where}"]


def test_a_config_file_that_is_not_text_is_one_line(tmp_path, capsys) -> None:
    config_file = tmp_path / "prepare.yaml"
    config_file.write_bytes(b"seed: 1\n\xff\xfe\x00")
    assert cli.main(["prepare", "--config", str(config_file)]) == 2
    assert _stderr_lines(capsys) == [f"unmask prepare: error: {config_file}: not a UTF-8 text file (byte 8)"]


def test_a_transient_failure_during_the_work_is_one_line_and_exit_status_1(capsys) -> None:
    def job(argv):
        raise TransientError("s3://b/out/rows/shard-000001.parquet: cannot reach the S3 endpoint 'http://x'")

    assert cli.run_main("unmask", job, []) == cli.EXIT_FAILED == 1
    assert _stderr_lines(capsys) == [
        "unmask unmask: failed: s3://b/out/rows/shard-000001.parquet: cannot reach the S3 endpoint "
        "'http://x'; finished work is kept: rerun once fixed"
    ]


def test_a_bug_is_one_line_naming_it_and_its_traceback_goes_to_the_log_file(capsys, monkeypatch) -> None:
    monkeypatch.delenv("UNMASK_VERBOSE", raising=False)
    monkeypatch.delenv("UNMASK_RAY_WORKER_LOGS", raising=False)

    def job(argv):
        return {}["missing key"]

    assert cli.run_main("train", job, []) == 1
    lines = _stderr_lines(capsys)
    assert len(lines) == 2 and lines[0] == "unmask train: failed: KeyError: 'missing key'", lines
    log = lines[1].removeprefix("the traceback: ").removesuffix(" (--verbose prints it here)")
    text = open(log).read()
    assert "Traceback (most recent call last)" in text and "return {}['missing key']" in text.replace(
        '"', "'"
    )


def test_with_verbose_a_bugs_traceback_is_printed(capsys, monkeypatch) -> None:
    monkeypatch.setenv("UNMASK_VERBOSE", "1")

    def job(argv):
        raise ValueError("first line\nsecond line")

    assert cli.run_main("demo", job, []) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-2:] == [
        "unmask demo: failed: ValueError: first line",
        "(the traceback is above)",
    ]


def test_the_error_under_rays_wrappers_is_the_one_named(capsys, monkeypatch) -> None:
    from ray.train import WorkerGroupError

    monkeypatch.delenv("UNMASK_VERBOSE", raising=False)

    def job(argv):
        raise WorkerGroupError("rank 0: ...\n" * 30, {0: FileNotFoundError("/no/such/models/generator.pt")})

    assert cli.run_main("train", job, []) == 1
    lines = _stderr_lines(capsys)
    assert (
        lines[0] == "unmask train: failed: FileNotFoundError: /no/such/models/generator.pt"
        and len(lines) == 2
    )
