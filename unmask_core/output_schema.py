"""What our Parquet outputs mean, carried inside them: a schema version and one sentence per column,
in the files' key-value metadata (docs/output.md is the long form).

Readers in any language see three keys: `unmask.schema` ('rows' for `unmask unmask`, 'pairs' for
`unmask prepare`), `unmask.schema_version`, and `unmask.columns` (JSON: column -> meaning).
The version changes when a column changes meaning, type or name; new columns do not change it.
"""

from __future__ import annotations

import json

import pyarrow as pa

from unmask_core.errors import UserError

SCHEMA_KEY = b"unmask.schema"
VERSION_KEY = b"unmask.schema_version"
COLUMNS_KEY = b"unmask.columns"
# Per kind. rows 2: dlib embeddings are stored as dlib computes them (version 1 stored them at unit length).
SCHEMA_VERSIONS = {"rows": "2", "pairs": "1"}
# What changed since each earlier version, for a reader that meets one.
EARLIER_VERSIONS = {("rows", "1"): "its dlib embeddings are at unit length, not as dlib computes them"}

# The columns a bulk row and a pairs row share (from the input listing and the per-image work).
_INPUT_COLUMNS = {
    "id": "the input's key below --input (or the manifest's id); unique per input image",
    "source_uri": "the input image's full URI",
    "status": "'ok', or why this input (or face) produced no result: see docs/output.md",
    "error": "'' when status is 'ok', else a human-readable reason",
}

ROWS_COLUMNS = {
    **_INPUT_COLUMNS,
    "face_index": "rank of this face in its image by box area (0 = largest); null when the image gave "
    "no face (no_face, read and decode errors)",
    "bbox": "face box (x1, y1, x2, y2) in input-image pixels; null unless status is 'ok'",
    "landmarks": "5 points (x, y) flattened, in the 256 px aligned face (= the unmasked image); "
    "null unless status is 'ok'",
    "detection_score": "the detector's confidence in [0, 1]; null unless status is 'ok'",
    "unmasked_uri": "URI of the unmasked face, 256x256 RGB PNG (JPEG with --image-format jpeg) under "
    "<output>/images/; null unless status is 'ok'",
    "matchers": "matcher:sha256 of its weights (as in model_set.json), comma-separated",
    "encoder_sha256": "sha256 of the unmasking encoder f's weights (model_set.json: sha256.unmask)",
    "generator_sha256": "sha256 of the StyleGAN2 generator g's weights (model_set.json: sha256.generator)",
}
EMBEDDING_COLUMNS = {
    "masked": "{matcher} embedding of the aligned input face as found (masked); "
    "compare with cosine; null unless status is 'ok'",
    "unmasked": "{matcher} embedding of the unmasked face U = g(f(M)); "
    "compare with cosine; null unless status is 'ok'",
}

PAIRS_COLUMNS = {
    **_INPUT_COLUMNS,
    "identity": "the person, from the corpus layout (folder name, manifest column, ...)",
    "split": "'train' or 'test', by identity (no identity is in both)",
    "T": "aligned unmasked face, PNG; null for an RMFRD real-mask row or unless status is 'ok'",
    "M": "the same face with a synthetic (RMFRD: real) mask, PNG; null unless status is 'ok'",
    "mask_kind": "the mask style drawn on M, or 'real' for an RMFRD real-mask photo",
    "mask_color": "the mask's colour as 'R,G,B'; null for real masks",
    "mask_region": "PNG, 255 where the synthetic mask covers M; null for real masks",
    "landmarks": "5 points (x, y) flattened, in the aligned frame; null for real-mask rows",
    "T_ref": "RMFRD real-mask rows: another unmasked photo of the same identity, PNG; else null",
    "eyes": "RMFRD rows: (x, y) of both eyes in the aligned frame; else null",
}


def embedding_column(kind: str, matcher: str) -> str:
    """'embedding_masked_arcface' and the like: one column per (masked|unmasked, matcher)."""
    return f"embedding_{kind}_{matcher}"


def _meaning(name: str, columns: dict[str, str]) -> str:
    if name in columns:
        return columns[name]
    for kind, template in EMBEDDING_COLUMNS.items():
        prefix = embedding_column(kind, "")
        if name.startswith(prefix):
            return template.format(matcher=name[len(prefix) :])
    raise KeyError(f"column {name!r} has no documented meaning (add it to unmask_core/output_schema.py)")


def with_meanings(schema: pa.Schema, kind: str) -> pa.Schema:
    """`schema` carrying its kind ('rows' or 'pairs'), the schema version and every column's meaning."""
    columns = {"rows": ROWS_COLUMNS, "pairs": PAIRS_COLUMNS}[kind]
    meanings = {name: _meaning(name, columns) for name in schema.names}
    return schema.with_metadata(
        {
            SCHEMA_KEY: kind.encode(),
            VERSION_KEY: SCHEMA_VERSIONS[kind].encode(),
            COLUMNS_KEY: json.dumps(meanings).encode(),
        }
    )


def column_meanings(schema: pa.Schema) -> dict[str, str]:
    """Column -> meaning, as stored in a file's metadata."""
    return json.loads((schema.metadata or {}).get(COLUMNS_KEY, b"{}"))


def check_version(schema: pa.Schema, kind: str = "rows") -> str:
    """The schema version of a file we wrote (e.g. `pq.read_schema(path)`); a UserError when the file
    is not of `kind` or has a version this code does not read."""
    metadata = schema.metadata or {}
    found_kind = metadata.get(SCHEMA_KEY, b"").decode()
    version = metadata.get(VERSION_KEY, b"").decode()
    if found_kind != kind:
        raise UserError(f"not an unmask {kind} file (its unmask.schema is {found_kind or 'absent'!r})")
    expected = SCHEMA_VERSIONS[kind]
    if version != expected:
        change = EARLIER_VERSIONS.get((kind, version))
        why = f": {change}" if change else ""
        raise UserError(
            f"unmask {kind} schema version {version!r}{why}; this code reads version {expected} "
            "(rerun the job into a new output to get it)"
        )
    return version
