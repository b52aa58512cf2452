"""docs/output.md is true: its recipes run, as written, on the three outputs its commands make of one
small gallery (the default matchers, dlib alone, and every face of each photo), and give what the page
says; the files carry the schema version and the column meanings."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.conftest import REPO_ROOT
from unmask_core import cli, data, output_schema, shards
from unmask_core.bulk.rows import row_schema
from unmask_core.errors import UserError

DOC = REPO_ROOT / "docs" / "output.md"
_RECIPE = re.compile(r"<!-- recipe: (\w+) -->\n```python\n(.*?)```", re.DOTALL)
OUTPUTS = ("out-default", "out-dlib", "out-all")
MATCHERS = {"out-default": ["arcface", "facenet"], "out-dlib": ["dlib"], "out-all": ["arcface", "facenet"]}
DIMS = {"arcface": 512, "facenet": 512, "dlib": 128}
PEOPLE = 3  # enrolled people in the gallery
each_output = pytest.mark.parametrize("name", OUTPUTS)


def recipes() -> dict[str, str]:
    return dict(_RECIPE.findall(DOC.read_text()))


def doc_commands() -> list[list[str]]:
    """The commands of the doc's shell block: the ones that make the outputs the recipes are tried on."""
    (block,) = re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.DOTALL)
    return [shlex.split(line) for line in block.strip().splitlines()]


def run_recipe(name: str, output: Path, source: str | None = None) -> dict:
    """Execute the doc's code block `name` (or `source`) with OUTPUT bound; its variables come back."""
    namespace = {"OUTPUT": str(output)}
    exec(compile(source or recipes()[name], f"{DOC}:{name}", "exec"), namespace)
    return namespace


def _build_gallery(folder: Path) -> None:
    """Enrolled photos of 3 real people (2 each), the same people with a synthetic mask as probes, a
    group photo of 6 and two inputs that give no face."""
    from unmask_core.demo import _sample_faces
    from unmask_core.faces.detect import build_detector
    from unmask_core.faces.masks import apply_mask, choose_mask
    from unmask_core.faces.samples import sample_photo

    detector = build_detector("mtcnn", "cpu")
    for folder_name in ("probes", "group", "odd"):
        (folder / folder_name).mkdir(parents=True)
    faces = _sample_faces()
    for identity in [f"t1_person{k}" for k in range(PEOPLE)]:  # three of t1.jpg's people
        face = faces[identity]
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
def outputs(tmp_path_factory, ray_local) -> dict[str, Path]:
    """The doc's three commands, as written, with their folders in a temporary one: one shard each."""
    from unmask_core.models.model_set import init_model_set

    root = tmp_path_factory.mktemp("output_doc")
    _build_gallery(root / "gallery")
    init_model_set(64, str(root / "models"), seed=3)
    made = {}
    for tokens in doc_commands():
        assert tokens[:2] == ["unmask", "unmask"], tokens
        local = {"gallery", "models", *OUTPUTS}
        argv = [str(root / token) if token in local else token for token in tokens[1:]]
        assert cli.main(argv) == 0, tokens
        name = tokens[tokens.index("--output") + 1]
        made[name] = root / name
    assert set(made) == set(OUTPUTS)
    return made


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
    assert [tokens[tokens.index("--output") + 1] for tokens in doc_commands()] == list(OUTPUTS)


@pytest.mark.slow  # shares the three outputs: about 30 s on 2 idle CPU cores, all three
@each_output
def test_the_layout_is_as_documented(outputs: dict[str, Path], name: str) -> None:
    output = outputs[name]
    assert {p.name for p in output.iterdir()} == {
        "rows",
        "images",
        "_inputs",
        "_plan.json",
        "_counts.json",
        "summary.json",
        "config.yaml",
    }
    assert [p.name for p in (output / "rows").iterdir()] == ["shard-000000.parquet"]
    assert set(json.loads((output / "_plan.json").read_text())) == {
        "n_inputs",
        "shard_size",
        "first_id",
        "last_id",
        "pins",
    }


@pytest.mark.slow
@each_output
def test_read_with_pyarrow_checks_the_version_and_names_the_matchers(
    outputs: dict[str, Path], name: str
) -> None:
    output = outputs[name]
    found = run_recipe("read_pyarrow", output)
    table = found["table"]
    assert table.num_rows == _summary(output)["rows"]
    assert set(found["meanings"]) == set(table.column_names)
    assert found["matchers"] == MATCHERS[name]
    assert found["ok"].num_rows == _summary(output)["faces_unmasked"]


@pytest.mark.slow
@each_output
def test_read_with_pandas(outputs: dict[str, Path], name: str) -> None:
    output = outputs[name]
    found = run_recipe("read_pandas", output)
    dim = DIMS[MATCHERS[name][0]]
    assert found["vectors"].shape == (_summary(output)["faces_unmasked"], dim)
    assert found["vectors"].dtype == np.float32


@pytest.mark.slow
@each_output
def test_read_with_duckdb(outputs: dict[str, Path], name: str) -> None:
    first = run_recipe("read_duckdb", outputs[name])["first"].fetchall()
    people = sorted(p.name for p in (outputs[name].parent / "gallery" / "enrolled").iterdir())
    assert [row[0] for row in first] == [
        f"enrolled/{people[0]}/0.jpg",
        f"enrolled/{people[0]}/1.jpg",
        f"enrolled/{people[1]}/0.jpg",
    ]


@pytest.mark.slow
@each_output
def test_read_with_ray_data(outputs: dict[str, Path], name: str) -> None:
    assert run_recipe("read_ray", outputs[name])["ok_count"] == _summary(outputs[name])["faces_unmasked"]


@pytest.mark.slow
@each_output
def test_filter_ok_and_count_statuses(outputs: dict[str, Path], name: str) -> None:
    found = run_recipe("statuses", outputs[name])
    summary = _summary(outputs[name])
    assert found["ok_rows"].num_rows == summary["faces_unmasked"]
    assert set(found["ok_rows"]["status"].to_pylist()) == {"ok"}
    counted = {item["values"].as_py(): item["counts"].as_py() for item in found["status_counts"]}
    assert counted == found["by_status"] == summary["status_counts"]
    # what the gallery has: a text file that does not decode, a blank image without a face
    assert summary["status_counts"]["decode_error"] == 1 and summary["status_counts"]["no_face"] >= 1


@pytest.mark.slow
@each_output
def test_identification_duckdb_and_numpy_agree(outputs: dict[str, Path], name: str) -> None:
    by_sql = run_recipe("identify_duckdb", outputs[name])["top5"]
    by_numpy = run_recipe("identify_numpy", outputs[name])["top5_numpy"]
    probes = {(probe, index) for probe, index, *_ in by_sql}
    assert probes == set(by_numpy) and len(probes) >= 2  # every ok probe face, at least two
    if name == "out-all":  # every face of the group photo is a probe too
        assert sum(probe == "group/t1.jpg" for probe, _ in probes) == 6
    for key, expected in by_numpy.items():
        ranked = [
            (person, score, rank) for probe, index, person, score, rank in by_sql if (probe, index) == key
        ]
        assert [rank for *_, rank in ranked] == list(range(1, PEOPLE + 1))
        # Scores agree; names agree except where two people tie in float32 (random demo weights
        # make all unmasked faces alike, so near-ties are common here).
        np.testing.assert_allclose([s for _, s, _ in ranked], [s for _, s in expected], atol=1e-5)
        numpy_scores = dict(expected)
        for person, score, _ in ranked:
            assert person not in numpy_scores or abs(numpy_scores[person] - score) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["identify_duckdb", "identify_numpy"])
def test_identification_without_enrolled_faces_says_so(outputs: dict[str, Path], recipe: str) -> None:
    source = recipes()[recipe].replace('ENROLLED = "enrolled/"', 'ENROLLED = "staff/"')
    with pytest.raises(ValueError, match=r"^0 enrolled faces \(under 'staff/'\),? (and )?\d+ probe faces"):
        run_recipe(recipe, outputs["out-default"], source)


@pytest.mark.slow
@each_output
def test_verification_of_a_pair_with_the_matchers_own_metric(outputs: dict[str, Path], name: str) -> None:
    found = run_recipe("verify", outputs[name])
    assert found["matcher"] == MATCHERS[name][0]
    if found["matcher"] == "dlib":  # dlib's own scale: face_recognition's tolerance applies
        assert found["same_person"] == (found["distance"] <= found["DLIB_TOLERANCE"] == 0.6)
        assert 0 < found["distance"] < 2
    else:
        assert -1.0 <= found["score"] <= 1.0
        assert found["same_person"] == (found["score"] >= found["COSINE_THRESHOLD"])


@pytest.mark.slow
@each_output
def test_join_a_row_to_its_image(outputs: dict[str, Path], name: str) -> None:
    found = run_recipe("join_image", outputs[name])
    assert (
        sum(len(faces) for faces in found["faces_of"].values()) == _summary(outputs[name])["faces_unmasked"]
    )
    assert found["image"].size == (256, 256) and found["image"].mode == "RGB"
    group = found["faces_of"]["group/t1.jpg"]
    assert sorted(group) == (list(range(6)) if name == "out-all" else [0])  # --faces all: its 6 faces
    if name == "out-all":
        assert (outputs[name] / "images" / "group" / "t1-1382f80433-face2.png").is_file()  # the doc's name


@pytest.mark.slow
@each_output
def test_rows_files_carry_version_and_meanings(outputs: dict[str, Path], name: str) -> None:
    for path in (outputs[name] / "rows").iterdir():
        schema = pq.read_schema(path)
        assert output_schema.check_version(schema) == output_schema.SCHEMA_VERSIONS["rows"] == "2"
        meanings = output_schema.column_meanings(schema)
        assert list(meanings) == schema.names
        for matcher in MATCHERS[name]:
            assert matcher in meanings[f"embedding_unmasked_{matcher}"]


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
    newer = schema.with_metadata({**schema.metadata, output_schema.VERSION_KEY: b"3"})
    with pytest.raises(UserError, match="version '3'; this code reads version 2"):
        output_schema.check_version(newer)
    # A reader meeting the previous version is told what changed.
    older = schema.with_metadata({**schema.metadata, output_schema.VERSION_KEY: b"1"})
    with pytest.raises(UserError, match="version '1': its dlib embeddings are at unit length"):
        output_schema.check_version(older)
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
