"""docs/output.md is true: its recipes run, as written, on a small real bulk output, and give what the
page says; the files carry the schema version and the column meanings."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.conftest import REPO_ROOT
from unmask_core import cli, data, output_schema, shards
from unmask_core.bulk.stages import row_schema
from unmask_core.errors import UserError

DOC = REPO_ROOT / "docs" / "output.md"
_RECIPE = re.compile(r"<!-- recipe: (\w+) -->\n```python\n(.*?)```", re.DOTALL)


def recipes() -> dict[str, str]:
    return dict(_RECIPE.findall(DOC.read_text()))


def run_recipe(name: str, output: Path) -> dict:
    """Execute the doc's code block `name` with OUTPUT bound; its variables come back."""
    namespace = {"OUTPUT": str(output)}
    exec(compile(recipes()[name], f"{DOC}:{name}", "exec"), namespace)
    return namespace


def _build_gallery(folder: Path) -> None:
    """Enrolled photos of 8 real people (2 each), the same people with a synthetic mask as probes, a
    group photo of 6 and two inputs that give no face."""
    from unmask_core.demo import _sample_faces
    from unmask_core.faces.detect import build_detector
    from unmask_core.faces.masks import apply_mask, choose_mask
    from unmask_core.faces.samples import sample_photo

    detector = build_detector("mtcnn", "cpu")
    for folder_name in ("probes", "group", "odd"):
        (folder / folder_name).mkdir(parents=True)
    for identity, face in _sample_faces().items():
        (folder / "enrolled" / identity).mkdir(parents=True)
        for k, image in enumerate([face, np.ascontiguousarray(face[:, ::-1])]):
            Image.fromarray(image).save(folder / "enrolled" / identity / f"{k}.jpg", quality=92)
        kind, color = choose_mask(seed=0, image_id=identity)
        landmarks = detector.detect(face)[0].landmarks
        masked = apply_mask(face, landmarks, kind, color, seed=0, image_id=identity).masked
        Image.fromarray(masked).save(folder / "probes" / f"{identity}.png")
    (folder / "group" / "t1.jpg").write_bytes(sample_photo("t1.jpg").read_bytes())
    Image.fromarray(np.full((120, 160, 3), 90, np.uint8)).save(folder / "odd" / "blank.png")
    (folder / "odd" / "notes.txt").write_text("not an image")


@pytest.fixture(scope="module")
def output(tmp_path_factory, ray_local) -> Path:
    from unmask_core.models.model_set import init_model_set

    root = tmp_path_factory.mktemp("output_doc")
    _build_gallery(root / "gallery")
    init_model_set(64, str(root / "models"), seed=3)
    out = root / "out"
    command = ["unmask", "--input", str(root / "gallery"), "--output", str(out), "--models"]
    command += [str(root / "models"), "--faces", "all", "--shard-size", "8", "--batch-size", "8"]
    assert cli.main(command) == 0
    return out


def _summary(output: Path) -> dict:
    return json.loads((output / "summary.json").read_text())


def test_every_recipe_in_the_doc_is_tested() -> None:
    tested = {
        "read_pyarrow",
        "read_pandas",
        "read_duckdb",
        "read_ray",
        "statuses",
        "identify_duckdb",
        "identify_numpy",
        "verify",
        "join_image",
    }
    assert set(recipes()) == tested
    assert DOC.read_text().count("```python") == len(tested)  # no untested python block


@pytest.mark.slow  # shares one bulk run (about 2 minutes on 2 CPU cores)
def test_the_layout_is_as_documented(output: Path) -> None:
    assert {p.name for p in output.iterdir()} == {
        "rows",
        "images",
        "_inputs",
        "_plan.json",
        "_counts.json",
        "summary.json",
        "config.yaml",
    }
    assert all(re.fullmatch(r"shard-\d{6}\.parquet", p.name) for p in (output / "rows").iterdir())
    assert set(json.loads((output / "_plan.json").read_text())) == {
        "n_inputs",
        "shard_size",
        "first_id",
        "last_id",
        "pins",
    }


@pytest.mark.slow  # shares one bulk run (about 2 minutes on 2 CPU cores)
def test_read_with_pyarrow_checks_the_version(output: Path) -> None:
    found = run_recipe("read_pyarrow", output)
    table = found["table"]
    assert table.num_rows == _summary(output)["rows"]
    assert set(found["meanings"]) == set(table.column_names)
    assert found["ok"].num_rows == _summary(output)["faces_unmasked"]


@pytest.mark.slow  # shares one bulk run (about 2 minutes on 2 CPU cores)
def test_read_with_pandas(output: Path) -> None:
    found = run_recipe("read_pandas", output)
    assert found["vectors"].shape == (_summary(output)["faces_unmasked"], 512)
    assert found["vectors"].dtype == np.float32


@pytest.mark.slow  # shares one bulk run (about 2 minutes on 2 CPU cores)
def test_read_with_duckdb(output: Path) -> None:
    first = run_recipe("read_duckdb", output)["first"].fetchall()
    assert [row[0] for row in first] == [
        "enrolled/astronaut/0.jpg",
        "enrolled/astronaut/1.jpg",
        "enrolled/t1_person0/0.jpg",
    ]


@pytest.mark.slow  # shares one bulk run (about 2 minutes on 2 CPU cores)
def test_read_with_ray_data(output: Path) -> None:
    assert run_recipe("read_ray", output)["ok_count"] == _summary(output)["faces_unmasked"]


@pytest.mark.slow  # shares one bulk run (about 2 minutes on 2 CPU cores)
def test_filter_ok_and_count_statuses(output: Path) -> None:
    found = run_recipe("statuses", output)
    summary = _summary(output)
    assert found["ok_rows"].num_rows == summary["faces_unmasked"]
    assert set(found["ok_rows"]["status"].to_pylist()) == {"ok"}
    counted = {item["values"].as_py(): item["counts"].as_py() for item in found["status_counts"]}
    assert counted == found["by_status"] == summary["status_counts"]
    # what the example has: a text file that does not decode, a blank image and missed masked faces
    assert summary["status_counts"]["decode_error"] == 1 and summary["status_counts"]["no_face"] >= 1


@pytest.mark.slow  # shares one bulk run (about 2 minutes on 2 CPU cores)
def test_identification_duckdb_and_numpy_agree(output: Path) -> None:
    by_sql = run_recipe("identify_duckdb", output)["top5"]
    by_numpy = run_recipe("identify_numpy", output)["top5_numpy"]
    probes = {(probe, index) for probe, index, *_ in by_sql}
    assert probes == set(by_numpy) and len(probes) >= 2  # every ok probe face, at least two
    for key, expected in by_numpy.items():
        ranked = [
            (identity, score, rank) for probe, index, identity, score, rank in by_sql if (probe, index) == key
        ]
        assert [rank for *_, rank in ranked] == [1, 2, 3, 4, 5]
        # Scores agree; names agree except where two identities tie in float32 (random demo weights
        # make all unmasked faces alike, so near-ties are common here).
        np.testing.assert_allclose([s for _, s, _ in ranked], [s for _, s in expected], atol=1e-5)
        numpy_scores = dict(expected)
        for identity, score, _ in ranked:
            assert identity not in numpy_scores or abs(numpy_scores[identity] - score) < 1e-5


@pytest.mark.slow  # shares one bulk run (about 2 minutes on 2 CPU cores)
def test_verification_of_a_pair(output: Path) -> None:
    found = run_recipe("verify", output)
    assert set(found["row"]) == {found["PROBE"], found["ENROLLED"]}, "the doc's example faces must be ok"
    assert -1.0 <= found["score"] <= 1.0
    assert found["same_person"] == (found["score"] >= found["THRESHOLD"])


@pytest.mark.slow  # shares one bulk run (about 2 minutes on 2 CPU cores)
def test_join_a_row_to_its_image(output: Path) -> None:
    found = run_recipe("join_image", output)
    assert sorted(found["images"]) == list(range(6))  # --faces all: the group photo's 6 faces
    assert all(image.size == (256, 256) and image.mode == "RGB" for image in found["images"].values())
    assert (output / "images" / "group" / "t1-1382f80433-face2.png").is_file()  # the doc's example name


@pytest.mark.slow  # shares one bulk run (about 2 minutes on 2 CPU cores)
def test_rows_files_carry_version_and_meanings(output: Path) -> None:
    for path in (output / "rows").iterdir():
        schema = pq.read_schema(path)
        assert output_schema.check_version(schema) == output_schema.SCHEMA_VERSION
        meanings = output_schema.column_meanings(schema)
        assert list(meanings) == schema.names
        assert "arcface" in meanings["embedding_unmasked_arcface"]


def test_pairs_files_carry_version_and_meanings(tmp_path: Path) -> None:
    path = tmp_path / "pairs.parquet"
    shards.write_table_atomic(str(path), pa.Table.from_pylist([], schema=data.PAIRS_SCHEMA))
    schema = pq.read_schema(path)
    assert output_schema.check_version(schema, "pairs") == "1"
    assert list(output_schema.column_meanings(schema)) == data.PAIRS_SCHEMA.names
    with pytest.raises(UserError, match="not an unmask rows file"):
        output_schema.check_version(schema, "rows")


def test_a_file_of_another_version_or_origin_is_refused() -> None:
    schema = row_schema({"arcface": 512})
    newer = schema.with_metadata({**schema.metadata, output_schema.VERSION_KEY: b"2"})
    with pytest.raises(UserError, match="version '2'"):
        output_schema.check_version(newer)
    with pytest.raises(UserError, match="absent"):
        output_schema.check_version(pa.schema([("id", pa.string())]))


def test_every_column_has_a_meaning_and_the_doc_names_it() -> None:
    documented = set(re.findall(r"^\| `(\w+?)(?:<matcher>)?` \|", DOC.read_text(), re.MULTILINE))
    rows = row_schema({"facenet": 512})
    assert set(rows.names) - {"embedding_masked_facenet", "embedding_unmasked_facenet"} <= documented
    assert {"embedding_masked_", "embedding_unmasked_"} <= documented
    assert set(data.PAIRS_SCHEMA.names) <= documented
    with pytest.raises(KeyError, match="no documented meaning"):
        output_schema.with_meanings(pa.schema([("mystery", pa.string())]), "rows")
