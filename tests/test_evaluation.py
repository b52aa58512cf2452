"""`unmask evaluate` refuses a split it cannot evaluate in one line, before it loads the models, and
leaves no output folder behind. (Its full run is in test_demo.py and test_rmfrd.py.)"""

from __future__ import annotations

import pytest

from unmask_core import cli
from unmask_core.prepare.synthetic import write_synthetic_pairs


@pytest.mark.parametrize(
    ("identities", "fraction", "why"),
    [
        (3, 0.0, "no usable pairs in the test split"),
        (1, 0.0, "the train split needs two identities, one of them with two images"),
    ],
)
def test_a_split_that_cannot_be_evaluated_is_refused_leaving_no_output(
    tiny_model_set: str, tmp_path, capsys, identities: int, fraction: float, why: str
) -> None:
    pairs = write_synthetic_pairs(
        str(tmp_path / "pairs"), n_identities=identities, per_identity=2, size=64, test_fraction=fraction
    )
    split = "train" if "train" in why else "test"
    out = tmp_path / "report"
    argv = ["evaluate", "--pairs", pairs, "--models", tiny_model_set, "--output", str(out), "--split", split]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"unmask evaluate: error: {pairs}: {why}"]
    assert not out.exists()
