"""The stages of bulk unmasking, each a Ray Data callable class that knows nothing of Ray:

[FaceFindingStage: read, decode, detect, align]                         (CPU actors)
[UnmaskingStage: U = g(f(M)) in micro-batches, embed M and U per matcher] (GPU actors)
[ShardWriter: images, then the shard's rows Parquet in one atomic write] (CPU actors)
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections import Counter

import numpy as np
import pyarrow as pa

from unmask_core import data, output_schema, shards, storage
from unmask_core.bulk.config import BulkConfig
from unmask_core.errors import UserError

FACE_SIZE = 256  # aligned faces travel between stages at the reference size


def unmasked_image_key(record_id: str, face_index: int) -> str:
    """A safe, unique relative name for an unmasked face: the sanitised key plus a hash of the raw key
    (two keys that sanitise alike, such as 'a b.jpg' and 'a_b.jpg', must not collide)."""
    # 700 bytes leave room under S3's 1,024-byte keys for the output prefix and `images/`.
    stem = posixpath.splitext(storage.safe_relative_path(record_id, max_total=700))[0]
    digest = hashlib.sha256(record_id.encode()).hexdigest()[:10]
    return f"{stem}-{digest}-face{face_index}.png"


# ---------------------------------------------------------------- stage 1: faces (CPU)


class FaceFindingStage:
    """Read, decode with limits, detect and align every image of a shard; one row per face or error."""

    def __init__(self, cfg: BulkConfig) -> None:
        from unmask_core.faces.detect import build_detector

        self.cfg = cfg
        self.detector = build_detector(cfg.detector, "cpu")

    def faces_of(self, record: dict) -> list[dict]:
        from unmask_core.faces.align import align_face, transform_points

        base = {"id": record["id"], "source_uri": record["uri"]}
        try:
            raw = storage.read_bytes(record["uri"], self.cfg.max_bytes)
            image = data.decode_image(raw, self.cfg.max_pixels)
        except UserError as exc:
            return [dict(base, status="read_error", error=str(exc))]
        except data.ImageDecodeError as exc:
            return [dict(base, status=exc.status, error=exc.reason)]
        try:
            detected = self.detector.detect(image)
        except Exception as exc:  # a detector failure on one odd image must not lose the shard
            return [dict(base, status="detect_error", error=f"{type(exc).__name__}: {exc}")]
        if not detected:
            return [dict(base, status="no_face", error="no face detected")]
        chosen = detected if self.cfg.faces == "all" else detected[:1]
        rows = []
        for index, face in enumerate(chosen):
            try:
                aligned, matrix = align_face(image, face.landmarks, size=FACE_SIZE)
            except Exception as exc:
                rows.append(dict(base, status="align_error", error=str(exc), face_index=index))
                continue
            rows.append(
                dict(
                    base,
                    status="ok",
                    error="",
                    face_index=index,
                    bbox=np.asarray(face.box, np.float32).tolist(),
                    landmarks=transform_points(face.landmarks, matrix)
                    .astype(np.float32)
                    .reshape(-1)
                    .tolist(),
                    detection_score=float(face.score),
                    face=aligned.tobytes(),
                )
            )
        return rows

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        rows = []
        for shard_index, payload in zip(batch["shard"], batch["records"]):
            records = json.loads(payload)
            for record in records:
                for row in self.faces_of(record):
                    row.update(shard=int(shard_index), shard_inputs=len(records))
                    rows.append(row)
        return pa.Table.from_pylist([_complete(r) for r in rows], schema=STAGE_SCHEMA)


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
        *FACE_FIELDS,
        ("face", pa.binary()),  # aligned RGB uint8 FACE_SIZE x FACE_SIZE x 3, raw
    ]
)


def _complete(row: dict) -> dict:
    return {name: row.get(name) for name in STAGE_SCHEMA.names}


# ---------------------------------------------------------------- stage 2: unmask and embed (GPU)


class UnmaskingStage:
    """Holds g, f and the matchers on one device; U = g(f(M)) for every face of a shard."""

    def __init__(self, cfg: BulkConfig) -> None:
        import torch

        from unmask_core.inference import Unmasker

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.cfg = cfg
        self.unmasker = Unmasker(cfg.models, cfg.matchers, device=device, bf16=cfg.bf16 and device == "cuda")

    def __call__(self, table: pa.Table) -> pa.Table:
        ok = [i for i, s in enumerate(table.column("status").to_pylist()) if s == "ok"]
        faces = table.column("face").to_pylist()
        masked = (
            np.stack([np.frombuffer(faces[i], np.uint8).reshape(FACE_SIZE, FACE_SIZE, 3) for i in ok])
            if ok
            else None
        )
        result = self.unmasker.run(masked, self.cfg.batch_size) if ok else None
        table = table.drop_columns(["face"])
        unmasked_png: list[bytes | None] = [None] * table.num_rows
        columns: dict[str, list] = {}
        for name, dim in self.unmasker.embedding_dims.items():
            for kind in ("masked", "unmasked"):
                values: list = [None] * table.num_rows
                if result is not None:
                    for j, i in enumerate(ok):
                        values[i] = result.embeddings[kind][name][j]
                columns[f"embedding_{kind}_{name}"] = (values, dim)
        if result is not None:
            for j, i in enumerate(ok):
                unmasked_png[i] = data.encode_png(result.unmasked[j])
        table = table.append_column("unmasked_png", pa.array(unmasked_png, pa.binary()))
        for column, (values, dim) in columns.items():
            flat = [None if v is None else np.asarray(v, np.float32) for v in values]
            table = table.append_column(column, pa.array(flat, pa.list_(pa.float32(), dim)))
        return table


# ---------------------------------------------------------------- stage 3: write (CPU)


def row_schema(embedding_dims: dict[str, int]) -> pa.Schema:
    fields = [*FACE_FIELDS, ("unmasked_uri", pa.string())]
    for name, dim in embedding_dims.items():
        fields += [
            (f"embedding_masked_{name}", pa.list_(pa.float32(), dim)),
            (f"embedding_unmasked_{name}", pa.list_(pa.float32(), dim)),
        ]
    fields += [("matchers", pa.string()), ("encoder_sha256", pa.string()), ("generator_sha256", pa.string())]
    return output_schema.with_meanings(pa.schema(fields), "rows")


class ShardWriter:
    """Writes a shard's unmasked images, then its rows in one atomic write; returns its counts."""

    def __init__(self, output: str, provenance: dict[str, str], embedding_dims: dict[str, int]) -> None:
        self.output = output
        self.provenance = provenance
        self.schema = row_schema(embedding_dims)

    def __call__(self, table: pa.Table) -> dict[str, list]:
        summaries = []
        for shard_index in sorted(set(table.column("shard").to_pylist())):
            part = table.filter(pa.compute.equal(table.column("shard"), shard_index))
            expected = part.column("shard_inputs")[0].as_py()
            got = len(set(part.column("id").to_pylist()))
            if got != expected:
                raise RuntimeError(f"shard {shard_index}: {got} of {expected} inputs reached the writer")
            rows = part.to_pylist()
            for row in rows:
                png = row.pop("unmasked_png")
                row["unmasked_uri"] = None
                if png is not None:
                    key = unmasked_image_key(row["id"], row["face_index"])
                    row["unmasked_uri"] = storage.join(self.output, "images", key)
                    storage.write_bytes_atomic(row["unmasked_uri"], png)
                row.update(self.provenance)
            out = pa.Table.from_pylist(
                [{n: r.get(n) for n in self.schema.names} for r in rows], schema=self.schema
            )
            shards.write_table_atomic(shards.shard_file(storage.join(self.output, "rows"), shard_index), out)
            summaries.append(
                json.dumps({"inputs": expected, "status": dict(Counter(r["status"] for r in rows))})
            )
        return {"summary": summaries}
