"""One CLI convention, and refusals before any work: every job takes --output (the old --out still
works, hidden, with a note); a list option is one comma-separated value everywhere; a missing extra
and every check that needs no cluster are refused in one line (exit status 2) before Ray is imported,
let alone started, leaving nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO_ROOT
from tests.support.imports import blocked_python
from unmask_core import cli, extras

JOBS_WITH_OUTPUT = ["prepare", "train", "unmask", "evaluate", "demo", "models init", "models import"]

# A job run in a fresh interpreter, which then says whether Ray's or torch's modules were ever imported.
_PROBE = """
from unmask_core import cli

code = cli.main(sys.argv[1:])
loaded = [name for name in ("ray", "torch") if name in sys.modules]
print("LOADED " + ",".join(loaded), flush=True)
sys.exit(code)
"""


def run_job(argv: list[str], blocked: tuple[str, ...] = ()) -> tuple[int, list[str], list[str]]:
    """(exit status, standard error's lines, the modules of Ray and torch the job imported)."""
    proc = subprocess.run(
        [sys.executable, "-c", blocked_python(blocked, "import sys\n" + _PROBE), *argv],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    loaded = next(line for line in proc.stdout.splitlines() if line.startswith("LOADED"))
    return proc.returncode, proc.stderr.strip().splitlines(), loaded.removeprefix("LOADED ").split(",")


@pytest.mark.parametrize("command", JOBS_WITH_OUTPUT)
def test_every_job_takes_output_and_no_prefix_of_an_option(command: str, tmp_path, capsys) -> None:
    out = str(tmp_path / "out")
    assert cli.main([*command.split(), "--output", out, "--frobnicate"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "unrecognized arguments: --frobnicate (" in lines[0], lines  # --output known
    # The old name still works for one release, said in a note; a prefix of a name is not a name.
    assert cli.main([*command.split(), "--out", out, "--outp", out]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].endswith("note: --out is now --output"), lines
    assert "unrecognized arguments: --outp" in lines[1] and "--out " not in lines[1], lines
    with pytest.raises(SystemExit):
        cli.main([*command.split(), "--help"])
    shown = capsys.readouterr().out
    assert "--output" in shown and "--out " not in shown and "--out," not in shown


def test_the_old_config_key_out_is_read_as_output(tmp_path, capsys) -> None:
    from unmask_core.config import parse_config
    from unmask_core.training.config import TrainConfig

    config_file = tmp_path / "train.yaml"
    config_file.write_text("pairs: p\nmodels: m\nout: runs\n")
    cfg = parse_config(TrainConfig, ["--config", str(config_file)], "unmask train", "")
    assert Path(cfg.output).name == "runs"
    assert capsys.readouterr().err.strip() == f"note: {config_file}: the key 'out' is now 'output'"


@pytest.mark.parametrize(
    ("command", "example"),
    [
        ("unmask --input i --output o --models m --matchers arcface dlib", "--matchers arcface,facenet"),
        ("evaluate --pairs p --models m --output o --matchers arcface dlib", "--matchers arcface,facenet"),
        ("prepare --input i --output o --mask-kinds surgical cloth", "--mask-kinds surgical,"),
    ],
)
def test_a_list_written_with_spaces_is_one_line_showing_the_comma_form(command, example, capsys) -> None:
    argv = command.split()
    assert cli.main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"unrecognized arguments: {argv[-1]}; a list is one comma-separated value, e.g. {example}" in line


def _corpus(folder: Path) -> Path:
    (folder / "person").mkdir(parents=True)
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(folder / "person" / "0.png")
    return folder


NEEDS_DLIB = "needs the dlib extra, which is not installed: pip install 'unmask[dlib]'"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unmask --matchers dlib", f"--matchers dlib {NEEDS_DLIB}"),
        ("evaluate --matchers dlib", f"--matchers dlib {NEEDS_DLIB}"),
        ("prepare --mask-fit dlib68", f"--mask-fit dlib68 {NEEDS_DLIB}"),
        ("demo", f"the demo's matcher dlib {NEEDS_DLIB}"),
        ("prepare into an output of other settings", "holds the output of other inputs, models or settings"),
        ("evaluate a folder that is not a model set", "not a model set (no model_set.json)"),
        ("evaluate missing pairs", "no such file or prefix"),
        ("train a folder that is not a model set", "not a model set"),
        ("models import a missing checkpoint", "no such file or prefix"),
        ("demo into s3", "--output: the demo writes to a local folder"),
    ],
)
def test_a_refusal_is_one_line_before_ray_is_even_imported(
    case: str, expected: str, tiny_model_set: str, tmp_path
) -> None:
    corpus, out, empty = _corpus(tmp_path / "corpus"), tmp_path / "out", tmp_path / "empty"
    empty.mkdir()
    pairs = tmp_path / "no-pairs"
    job = case.split()[0]
    blocked: tuple[str, ...] = ()
    if "dlib" in case or case == "demo":
        blocked = extras.EXTRAS["dlib"]  # as where the extra was never installed
    argv = {
        "unmask": ["--input", str(corpus), "--models", tiny_model_set, "--output", str(out)],
        "evaluate": ["--pairs", str(pairs), "--models", tiny_model_set, "--output", str(out)],
        "prepare": ["--input", str(corpus), "--output", str(out)],
        "train": ["--pairs", str(pairs), "--models", str(empty), "--output", str(out)],
        "demo": ["--output", str(out)],
        "models": ["import", "--output", str(out), "--irse50", str(tmp_path / "missing.pth")],
    }[job]
    argv += {
        "unmask --matchers dlib": ["--matchers", "dlib"],
        "evaluate --matchers dlib": ["--matchers", "dlib"],
        "prepare --mask-fit dlib68": ["--mask-fit", "dlib68"],
        "evaluate a folder that is not a model set": ["--models", str(empty)],
        "models import a missing checkpoint": ["--facenet", str(tmp_path / "missing.pt")],
        "demo into s3": ["--output", "s3://bucket/demo"],
    }.get(case, [])
    if "not a model set" in case:  # pairs that exist, so that the model set is what is refused
        (pairs / "pairs").mkdir(parents=True)
    if case == "prepare into an output of other settings":
        out.mkdir()
        plan = {"n_inputs": 1, "shard_size": 8, "first_id": "person/0.png", "last_id": "person/0.png"}
        (out / "_plan.json").write_text(json.dumps({**plan, "pins": {}}))
    existed = out.exists() and sorted(out.iterdir())

    code, lines, loaded = run_job([job, *argv], blocked)

    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"unmask {job}: error: ") and expected in lines[0], lines
    assert "ray" not in loaded, f"{case}: refused only after Ray's modules were imported"
    assert (out.exists() and sorted(out.iterdir())) == existed  # nothing written
