"""The `prepare` pipeline: corpus -> aligned (T, M) pairs as Parquet shards, split by identity.

Ray Data runs one actor per CPU slot; each actor keeps a face detector loaded and turns whole shards
into Parquet files (pairs and error rows together), written atomically, so reruns skip finished shards.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from unmask_core import data, shards, storage
from unmask_core.config import option
from unmask_core.errors import UserError


@dataclass
class PrepareConfig:
    corpus: str = option("folders", "corpus layout", choices=list(data.CORPUS_KINDS))
    input: str = option("", "corpus root or manifest (local path or s3://)", required=True)
    output: str = option("", "output folder for pairs Parquet (local path or s3://)", required=True)
    mask_kinds: list[str] = option(
        ["surgical", "n95", "kn95", "cloth", "black"], "synthetic mask kinds to draw"
    )
    test_fraction: float = option(0.2, "fraction of identities in the test split")
    seed: int = option(0, "seed for masks and the identity split")
    detector: str = option("mtcnn", "face detector: mtcnn, or a folder with an insightface detector ONNX")
    image_size: int = option(256, "aligned face size")
    shard_size: int = option(64, "images per output shard")
    max_pixels: int = option(data.DEFAULT_MAX_PIXELS, "larger images become `too_large` error rows")
    workers: int = option(0, "parallel prepare actors (0: one per CPU)")

    def validate(self) -> None:
        if not 0 <= self.test_fraction < 1:
            raise UserError("--test-fraction must be in [0, 1)")
        from unmask_core.faces.masks import MASK_KINDS

        unknown = sorted(set(self.mask_kinds) - set(MASK_KINDS))
        if unknown:
            raise UserError(f"unknown mask kinds {unknown}; one of {', '.join(MASK_KINDS)}")


def _crop_celeba(image: np.ndarray) -> np.ndarray:
    # Aligned CelebA is 178x218: take the central 178x178 square (rows 20:198) so that upsampling
    # to 256 keeps the aspect ratio.
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return image[top : top + side, left : left + side]


class PairMaker:
    """Turns one decoded image into a pair row (or an error row). Holds the detector."""

    def __init__(self, cfg: PrepareConfig) -> None:
        from unmask_core.faces.detect import build_detector

        self.cfg = cfg
        self.detector = build_detector(cfg.detector, "cpu")

    def aligned_face(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(aligned face, its 5 landmarks in the aligned frame) by the corpus' recipe."""
        import cv2

        from unmask_core.faces.align import align_face, lfw_crop, transform_points

        size = self.cfg.image_size
        if self.cfg.corpus in ("folders", "manifest"):
            faces = self.detector.detect(image)
            if not faces:
                raise RowError("no_face", "no face detected")
            aligned, matrix = align_face(image, faces[0].landmarks, size=size)
            return aligned, transform_points(faces[0].landmarks, matrix)
        # Pre-aligned corpora keep their geometry; we only look for landmarks to fit the mask.
        if self.cfg.corpus == "lfw":
            aligned = lfw_crop(image)
        elif self.cfg.corpus == "celeba":
            aligned = _crop_celeba(image)
        else:
            aligned = image
        if aligned.shape[:2] != (size, size):
            aligned = cv2.resize(aligned, (size, size), interpolation=cv2.INTER_CUBIC)
        faces = self.detector.detect(aligned)
        if not faces:
            raise RowError("no_face", "no face detected in the aligned image")
        return aligned, faces[0].landmarks

    def make(self, record: data.ImageRecord, split: str, item: dict | None = None) -> dict[str, Any]:
        from unmask_core.faces.masks import MaskError, apply_mask, choose_mask

        row = empty_pairs_row(record, split)
        try:
            try:
                raw = storage.read_bytes(record.uri)
            except UserError as exc:
                raise RowError("read_error", str(exc)) from exc
            try:
                image = data.decode_image(raw, self.cfg.max_pixels)
            except data.ImageDecodeError as exc:
                raise RowError(exc.status, exc.reason) from exc
            aligned, landmarks = self.aligned_face(image)
            kind, color = choose_mask(self.cfg.mask_kinds, self.cfg.seed, record.id)
            try:
                mask = apply_mask(aligned, landmarks, kind, color, self.cfg.seed, record.id)
            except MaskError as exc:
                raise RowError("mask_failed", str(exc)) from exc
        except RowError as exc:
            row.update(status=exc.status, error=exc.reason)
            return row
        except Exception as exc:  # a bug must not lose the row: record it and move on
            row.update(status="internal_error", error=f"{type(exc).__name__}: {exc}")
            return row
        row.update(
            T=data.encode_png(aligned),
            M=data.encode_png(mask.masked),
            mask_kind=mask.kind,
            mask_color=",".join(str(int(c)) for c in mask.color) if mask.color is not None else None,
            mask_region=data.encode_png(mask.region.astype(np.uint8) * 255),
            landmarks=np.asarray(landmarks, dtype=np.float32).reshape(-1).tolist(),
        )
        return row


class RowError(Exception):
    """An input that becomes an error row: `status` is the machine-readable kind, `reason` the words."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def empty_pairs_row(record: data.ImageRecord, split: str) -> dict[str, Any]:
    """A pairs row for `record` with every image column empty and status ok (filled in by the maker)."""
    row: dict[str, Any] = {name: None for name in data.PAIRS_SCHEMA.names}
    row.update(
        id=record.id, identity=record.identity, split=split, source_uri=record.uri, status="ok", error=""
    )
    return row


class ShardWorker:
    """Ray Data actor: one call = one shard, written atomically; returns the shard's counts."""

    def __init__(self, cfg: PrepareConfig, rows_uri: str) -> None:
        if cfg.corpus == "rmfrd":
            from unmask_core.rmfrd import RMFRDPairMaker

            self.maker = RMFRDPairMaker(cfg)
        else:
            self.maker = PairMaker(cfg)
        self.rows_uri = rows_uri

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        summaries = []
        for index, payload in zip(batch["shard"], batch["records"]):
            items = json.loads(payload)
            rows = [self.maker.make(data.ImageRecord(**it["record"]), it["split"], it) for it in items]
            table = pa.Table.from_pylist(rows, schema=data.PAIRS_SCHEMA)
            shards.write_table_atomic(shards.shard_file(self.rows_uri, int(index)), table)
            summaries.append(json.dumps(_count(rows)))
        return {"summary": summaries}


def _count(rows: list[dict]) -> dict:
    return {
        "rows": len(rows),
        "status": dict(Counter(r["status"] for r in rows)),
        "by_split": dict(Counter(r["split"] for r in rows if r["status"] == "ok")),
    }


def run_prepare(cfg: PrepareConfig) -> dict[str, Any]:
    import ray

    from unmask_core.progress import progress_bar

    storage.check_writable(cfg.output)
    records = data.list_corpus(cfg.corpus, cfg.input)
    split_of = data.identity_split([r.identity for r in records], cfg.test_fraction, cfg.seed)
    items = [{"record": r.__dict__, "split": split_of[r.identity]} for r in records]
    if cfg.corpus == "rmfrd":
        from unmask_core.rmfrd import add_reference_candidates

        add_reference_candidates(items, cfg.seed)  # masked photos need unmasked ones of the same person
    plan = shards.ShardPlan(len(items), cfg.shard_size, records[0].id, records[-1].id)
    shards.check_plan(cfg.output, plan)
    rows_uri = storage.join(cfg.output, "pairs")
    done = shards.finished_shards(rows_uri)
    todo = [
        {"shard": i, "records": json.dumps(chunk)}
        for i, chunk in enumerate(shards.split_into_shards(items, cfg.shard_size))
        if i not in done
    ]
    bar = progress_bar(len(items), "prepare")
    bar.update(sum(min(cfg.shard_size, len(items) - i * cfg.shard_size) for i in done))
    if todo:
        workers = cfg.workers or max(1, int(ray.cluster_resources().get("CPU", 2) // 2))
        ds = ray.data.from_items(todo, override_num_blocks=len(todo)).map_batches(
            ShardWorker,
            fn_constructor_args=(cfg, rows_uri),
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=min(workers, len(todo))),
            num_cpus=1,
        )
        for row in ds.iter_rows():
            bar.update(json.loads(row["summary"])["rows"])
    bar.close()
    summary = summarize(cfg.output, records, split_of, skipped_shards=len(done), processed_shards=len(todo))
    storage.write_bytes_atomic(
        storage.join(cfg.output, "summary.json"), json.dumps(summary, indent=2).encode()
    )
    return summary


def summarize(
    out_uri: str,
    records: list[data.ImageRecord],
    split_of: dict[str, str],
    skipped_shards: int,
    processed_shards: int,
) -> dict[str, Any]:
    """Counts in the layout of the paper's Table 1, plus failures by reason; inputs = pairs + errors."""
    table = shards.read_rows(storage.join(out_uri, "pairs"), columns=["identity", "split", "status"])
    rows = table.to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    failures = Counter(r["status"] for r in rows if r["status"] != "ok")
    split_ids = {s: {r["identity"] for r in ok if r["split"] == s} for s in ("train", "test")}
    summary = {
        "inputs": len(records),
        "rows": len(rows),
        "pairs": len(ok),
        "errors": sum(failures.values()),
        "failures_by_reason": dict(sorted(failures.items())),
        "identities": len(split_of),
        "train_identities": len(split_ids["train"]),
        "test_identities": len(split_ids["test"]),
        "train_images": sum(r["split"] == "train" for r in ok),
        "test_images": sum(r["split"] == "test" for r in ok),
        "shards_processed": processed_shards,
        "shards_skipped": skipped_shards,
    }
    summary["reconciled"] = summary["inputs"] == summary["rows"] == summary["pairs"] + summary["errors"]
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"images {summary['inputs']}, pairs {summary['pairs']}, errors {summary['errors']}",
        f"train: {summary['train_identities']} identities, {summary['train_images']} images; "
        f"test: {summary['test_identities']} identities, {summary['test_images']} images",
    ]
    for reason, count in summary["failures_by_reason"].items():
        lines.append(f"  {reason}: {count}")
    lines.append("counts reconcile" if summary["reconciled"] else "COUNTS DO NOT RECONCILE")
    return "\n".join(lines)
