"""Bulk unmasking of a gallery archive on Ray Data.

    list inputs -> deterministic shards -> [FaceStage: read, decode, detect, align]        (CPU actors)
                -> [UnmaskStage: U = g(f(M)) in micro-batches, embed M and U per matcher] (GPU actors)
                -> [write_shard: images, then the shard's rows Parquet in one atomic write] (CPU tasks)

One Ray Data block is one shard all the way through, so a shard's rows are written together, once.
A finished shard's rows file is the commit marker: reruns skip it, and a re-executed task rewrites the
same image objects under the same names (no duplicates).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from unmask_core import data, shards, storage
from unmask_core.config import option
from unmask_core.errors import UserError

FACE_SIZE = 256  # aligned faces travel between stages at the reference size


@dataclass
class UnmaskConfig:
    input: str = option(
        "", "gallery prefix of image files, or a manifest (.csv/.parquet with uri[, id])", required=True
    )
    output: str = option("", "output folder: images/ and rows/ (local path or s3://)", required=True)
    models: str = option("", "model set folder (see `unmask models init`)", required=True)
    matchers: list[str] = option(["arcface", "facenet"], "matchers to embed masked and unmasked faces with")
    faces: str = option("largest", "which faces of each image to unmask", choices=["largest", "all"])
    batch_size: int = option(32, "faces per forward pass in the unmask actors")
    gpus_per_actor: float = option(-1.0, "GPUs per unmask actor (-1: 1 if the cluster has GPUs, else 0)")
    actors: str = option("1,4", "MIN,MAX size of the unmask actor pool (autoscaling between them)")
    cpu_actors: str = option(
        "", "MIN,MAX size of the decode/detect/align actor pool (default: 1 to half the CPUs)"
    )
    shard_size: int = option(64, "images per shard (the unit of exactly-once and resume)")
    max_pixels: int = option(data.DEFAULT_MAX_PIXELS, "larger images become `too_large` rows")
    detector: str = option("mtcnn", "face detector: mtcnn, or a folder with an insightface detector ONNX")
    bf16: bool = option(True, "bf16 autocast for the unmask stage on GPU (CPU stays fp32)")

    def validate(self) -> None:
        if self.batch_size < 1 or self.shard_size < 1:
            raise UserError("--batch-size and --shard-size must be positive")
        known = {"arcface", "facenet"}
        if not self.matchers or set(self.matchers) - known:
            raise UserError(f"--matchers must be a non-empty subset of {sorted(known)}")
        _pool_range(self.actors, "--actors")
        if self.cpu_actors:
            _pool_range(self.cpu_actors, "--cpu-actors")


def _pool_range(text: str, flag: str) -> tuple[int, int]:
    try:
        low, high = (int(x) for x in text.split(","))
    except ValueError as exc:
        raise UserError(f"{flag} must be MIN,MAX (got {text!r})") from exc
    if not 1 <= low <= high:
        raise UserError(f"{flag} must satisfy 1 <= MIN <= MAX (got {text!r})")
    return low, high


# ---------------------------------------------------------------- inputs and names


def list_inputs(uri: str) -> list[data.ImageRecord]:
    """Every file under a prefix (whatever its name: a non-image becomes a `decode_error` row), or the
    rows of a manifest."""
    storage.check_readable(uri)
    lowered = uri.lower()
    if lowered.endswith((".csv", ".parquet")):
        return sorted(data.read_manifest(uri), key=lambda r: r.id)
    records = [
        data.ImageRecord(uri=u, identity="", id=storage.relative_key(uri, u)) for u in storage.list_files(uri)
    ]
    if not records:
        raise UserError(f"{uri}: no files found")
    return sorted(records, key=lambda r: r.id)


def unmasked_image_key(record_id: str, face_index: int) -> str:
    """A safe, unique relative name for an unmasked face: the sanitised key plus a hash of the raw key
    (two keys that sanitise alike, such as 'a b.jpg' and 'a_b.jpg', must not collide)."""
    stem = posixpath.splitext(storage.safe_relative_path(record_id))[0]
    digest = hashlib.sha256(record_id.encode()).hexdigest()[:10]
    return f"{stem}-{digest}-face{face_index}.png"


# ---------------------------------------------------------------- stage 1: faces (CPU)


class FaceStage:
    """Read, decode with limits, detect and align every image of a shard; one row per face or error."""

    def __init__(self, cfg: UnmaskConfig) -> None:
        from unmask_core.faces.detect import build_detector

        self.cfg = cfg
        self.detector = build_detector(cfg.detector, "cpu")

    def faces_of(self, record: dict) -> list[dict]:
        from unmask_core.faces.align import align_face, transform_points

        base = {"id": record["id"], "source_uri": record["uri"]}
        try:
            raw = storage.read_bytes(record["uri"])
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


class UnmaskStage:
    """Holds g, f and the matchers on one device; U = g(f(M)) for every face of a shard."""

    def __init__(self, cfg: UnmaskConfig) -> None:
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
    return pa.schema(fields)


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


# ---------------------------------------------------------------- driver


def run_unmask(cfg: UnmaskConfig) -> dict[str, Any]:
    import ray

    from unmask_core.inference import describe_model_set
    from unmask_core.progress import progress_bar

    storage.check_writable(cfg.output)
    model_info = describe_model_set(cfg.models, cfg.matchers)
    records = list_inputs(cfg.input)
    payload = [{"uri": r.uri, "id": r.id} for r in records]
    shards.check_plan(
        cfg.output, shards.ShardPlan(len(records), cfg.shard_size, records[0].id, records[-1].id)
    )
    rows_uri = storage.join(cfg.output, "rows")
    done = shards.finished_shards(rows_uri)
    chunks = shards.split_into_shards(payload, cfg.shard_size)
    todo = [{"shard": i, "records": json.dumps(c)} for i, c in enumerate(chunks) if i not in done]

    bar = progress_bar(len(records), "unmask")
    bar.update(sum(len(chunks[i]) for i in done))
    if todo:
        gpus = cfg.gpus_per_actor
        if gpus < 0:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        low, high = _pool_range(cfg.actors, "--actors")
        high = min(high, len(todo))
        low = min(low, high)
        # On an autoscaling cluster the CPUs present at start say little: then pass --cpu-actors.
        cpu_high = max(1, int(ray.cluster_resources().get("CPU", 2) // 2))
        cpu_low, cpu_high = _pool_range(cfg.cpu_actors, "--cpu-actors") if cfg.cpu_actors else (1, cpu_high)
        cpu_high = min(cpu_high, len(todo))
        cpu_low = min(cpu_low, cpu_high)
        ds = (
            ray.data.from_items(todo, override_num_blocks=len(todo))
            .map_batches(
                FaceStage,
                fn_constructor_args=(cfg,),
                batch_size=1,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(min_size=cpu_low, max_size=cpu_high),
                num_cpus=1,
            )
            .map_batches(
                UnmaskStage,
                fn_constructor_args=(cfg,),
                batch_size=None,  # one block = one shard; micro-batching happens inside
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(min_size=low, max_size=high),
                num_gpus=gpus,
                num_cpus=0.5 if gpus else 1,
            )
            .map_batches(
                ShardWriter,
                fn_constructor_args=(cfg.output, model_info.provenance, model_info.embedding_dims),
                batch_size=None,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=2),
                num_cpus=0.25,
            )
        )
        for row in ds.iter_rows():
            bar.update(json.loads(row["summary"])["inputs"])
    bar.close()
    summary = summarize(cfg.output, records, skipped_shards=len(done), processed_shards=len(todo))
    storage.write_json(storage.join(cfg.output, "summary.json"), summary)
    return summary


def summarize(
    out_uri: str, records: list[data.ImageRecord], skipped_shards: int, processed_shards: int
) -> dict:
    table = shards.read_rows(storage.join(out_uri, "rows"), columns=["id", "status"])
    ids = table.column("id").to_pylist()
    statuses = Counter(table.column("status").to_pylist())
    input_ids = {r.id for r in records}
    covered = set(ids)
    summary = {
        "inputs": len(records),
        "rows": len(ids),
        "inputs_with_rows": len(covered & input_ids),
        "faces_unmasked": statuses.get("ok", 0),
        "status_counts": dict(sorted(statuses.items())),
        "shards_processed": processed_shards,
        "shards_skipped": skipped_shards,
    }
    summary["reconciled"] = covered == input_ids
    return summary


def format_summary(summary: dict) -> str:
    lines = [
        f"inputs {summary['inputs']}, rows {summary['rows']}, faces unmasked {summary['faces_unmasked']}",
        "status: " + ", ".join(f"{k} {v}" for k, v in summary["status_counts"].items()),
        f"shards: {summary['shards_processed']} processed, {summary['shards_skipped']} already done",
        "every input has a row" if summary["reconciled"] else "SOME INPUTS HAVE NO ROW",
    ]
    return "\n".join(lines)
