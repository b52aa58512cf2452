"""The bulk job's row protocol: what a row says between the stages, what a committed row says, and when
a shard's rows are all there.

Faces stream through the unmask stage in batches that span shards, so no stage but the commit sees a
whole shard. Every row therefore carries its shard, the shard's input count (`shard_inputs`) and its
input's row count (`input_rows`: its faces, or 1 for an error row); `ShardRows` gathers them at the
commit and says when every row of every input has arrived.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from unmask_core import data, output_schema

FACE_SIZE = 256  # aligned faces travel between stages at the reference size

# What every output row says about one face (or one failed input), shared by the stages and the output.
FACE_FIELDS = [
    ("id", pa.string()),
    ("source_uri", pa.string()),
    ("status", pa.string()),
    ("error", pa.string()),
    ("face_index", pa.int32()),
    ("bbox", pa.list_(pa.float32(), 4)),
    ("landmarks", data.LANDMARKS_TYPE),
    ("detection_score", pa.float32()),
]

STAGE_SCHEMA = pa.schema(
    [
        ("shard", pa.int64()),
        ("shard_inputs", pa.int64()),
        ("input_rows", pa.int64()),  # rows of this row's input (faces, or 1 for an error)
        *FACE_FIELDS,
        ("face", pa.binary()),  # aligned RGB uint8 FACE_SIZE x FACE_SIZE x 3, raw
        # Or, when faces are found on the accelerator, the whole photo: its JPEG bytes, or its decoded
        # RGB uint8 pixels, raw; and its height and width.
        ("jpeg", pa.binary()),
        ("image", pa.binary()),
        ("image_size", pa.list_(pa.int32(), 2)),
        ("decoded_on", pa.string()),  # where a photo's pixels were decoded when faces are found on the device
    ]
)
IMAGE_COLUMNS = ["jpeg", "image", "image_size"]
PROVENANCE_FIELDS = [
    ("matchers", pa.string()),
    ("encoder_sha256", pa.string()),
    ("generator_sha256", pa.string()),
]


def stage_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows as the stages pass them on: every STAGE_SCHEMA column, None where a row has no value."""
    return pa.Table.from_pylist(
        [{name: row.get(name) for name in STAGE_SCHEMA.names} for row in rows], STAGE_SCHEMA
    )


def of_input(rows: list[dict[str, Any]], **shard_fields: int) -> list[dict[str, Any]]:
    """An input's rows (its faces, or its one error row), each told how many rows its input has and,
    given `shard`/`shard_inputs`, where its shard stands."""
    return [dict(row, input_rows=len(rows), **shard_fields) for row in rows]


def error_row(base: dict[str, Any], status: str, error: str, **fields: Any) -> dict[str, Any]:
    """The row of an input (or a face) that yields no unmasked face, with why."""
    return dict(base, status=status, error=error, **fields)


def face_row(base: dict[str, Any], index: int, face, matrix: np.ndarray) -> dict[str, Any]:
    """What a row says of one found face: its box in the photo, its landmarks in the aligned crop."""
    from unmask_core.faces.align import transform_points

    landmarks = transform_points(face.landmarks, matrix).astype(np.float32).reshape(-1).tolist()
    return dict(
        base,
        status="ok",
        error="",
        face_index=index,
        bbox=np.asarray(face.box, np.float32).tolist(),
        landmarks=landmarks,
        detection_score=float(face.score),
    )


def detected_faces(base: dict[str, Any], detected, faces: str, align) -> list[dict[str, Any]]:
    """A photo's rows from its detection: a `detect_error` (`detected` is the exception it raised), a
    `no_face`, or a row per chosen face (the first, or all with faces='all'). `align(face)` returns its
    similarity matrix and the row's extra fields; a face it raises on is an `align_error` row."""
    if isinstance(detected, Exception):
        return [error_row(base, "detect_error", f"{type(detected).__name__}: {detected}")]
    if not detected:
        return [error_row(base, "no_face", "no face detected")]
    found = []
    for index, face in enumerate(detected if faces == "all" else detected[:1]):
        try:
            matrix, extra = align(face)
        except Exception as exc:
            found.append(error_row(base, "align_error", str(exc), face_index=index))
            continue
        found.append(dict(face_row(base, index, face, matrix), **extra))
    return found


def ok_indices(table: pa.Table) -> list[int]:
    """Positions of the rows that hold a face to unmask."""
    return [i for i, status in enumerate(table.column("status").to_pylist()) if status == "ok"]


EMBEDDING_KINDS = ("masked", "unmasked")  # of M and of U


def embedding_field(kind: str, matcher: str, dim: int) -> pa.Field:
    """A fixed-size vector column, named as the output documents it (output_schema.embedding_column)."""
    return pa.field(output_schema.embedding_column(kind, matcher), pa.list_(pa.float32(), dim))


def row_schema(embedding_dims: dict[str, int]) -> pa.Schema:
    """A committed row: the face fields, its image's URI, the embeddings and the model provenance."""
    embeddings = [
        embedding_field(kind, name, dim) for name, dim in embedding_dims.items() for kind in EMBEDDING_KINDS
    ]
    named = [*FACE_FIELDS, ("unmasked_uri", pa.string())]
    fields = [*(pa.field(name, type_) for name, type_ in named), *embeddings]
    fields += [pa.field(name, type_) for name, type_ in PROVENANCE_FIELDS]
    return output_schema.with_meanings(pa.schema(fields), "rows")


class ShardRows:
    """One shard's rows as they arrive at the commit, each (input, face) once however often a retried
    task delivers it; complete when every input of the shard has all its rows."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, int], dict[str, Any]] = {}
        self.inputs: int | None = None

    def add(self, row: dict[str, Any]) -> bool:
        """Take a row; whether it is its input's first (an input begun, for a progress bar)."""
        key = (row["id"], row["face_index"] or 0)
        first = key[1] == 0 and key not in self.rows
        self.rows[key] = row
        self.inputs = row["shard_inputs"]
        return first

    def complete(self) -> bool:
        rows_per_input: dict[str, list[dict[str, Any]]] = {}
        for row in self.rows.values():
            rows_per_input.setdefault(row["id"], []).append(row)
        return len(rows_per_input) == self.inputs and all(
            len(rows) == rows[0]["input_rows"] for rows in rows_per_input.values()
        )

    def inputs_seen(self) -> int:
        return len({key[0] for key in self.rows})

    def sorted_rows(self) -> list[dict[str, Any]]:
        return [self.rows[key] for key in sorted(self.rows)]
