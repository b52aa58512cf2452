"""The stages of bulk unmasking, each a Ray Data callable class that knows nothing of Ray, and the
driver's shard commits:

[FaceFindingStage: read, decode, detect, align]                   (CPU actors, a shard per call)
[UnmaskingStage: U = g(f(M)), embed M and U per matcher]           (GPU actors, `batch_size` rows)
    When the unmask actors have GPUs, the first stage only reads (and decodes what is not a plain
    JPEG), and the unmask stage decodes, detects and aligns on its device (bulk/device_faces.py):
    MTCNN and decoding are the costliest host steps by far.
[ImageWriter: encode (PNG or JPEG) and upload unmasked faces, concurrently]  (CPU actors, any batch)
[ShardCommitter: a shard's rows Parquet once all its rows arrived] (the driver, a few threads)

Faces stream through the unmask stage in fixed-size batches that span shards, so no stage but the last
sees a whole shard: the rows follow the row protocol of bulk/rows.py, and the committer writes a shard's
rows (the exactly-once marker) when they are all there, after their images.

Each stage declares what one actor of it needs and how many rows a call takes (`RESOURCES`, `BATCH_SIZE`;
the unmask stage's batch is the job's `--batch-size`); the pipeline (bulk/run.py) reads them.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from unmask_core import data, shards, storage
from unmask_core.bulk import rows
from unmask_core.bulk.config import BulkConfig
from unmask_core.bulk.device_faces import DeviceFaceFinder, photo_for_device
from unmask_core.bulk.rows import FACE_SIZE, row_schema
from unmask_core.errors import TransientError, UserError
from unmask_core.shard_counts import ShardRanges, shard_summary, with_summary


def unmasked_image_key(record_id: str, face_index: int, suffix: str = ".png") -> str:
    """A safe, unique relative name for an unmasked face: the sanitised key plus a hash of the raw key
    (two keys that sanitise alike, such as 'a b.jpg' and 'a_b.jpg', must not collide)."""
    # 700 bytes leave room under S3's 1,024-byte keys for the output prefix and `images/`.
    stem = posixpath.splitext(storage.safe_relative_path(record_id, max_total=700))[0]
    digest = hashlib.sha256(record_id.encode()).hexdigest()[:10]
    return f"{stem}-{digest}-face{face_index}{suffix}"


# ---------------------------------------------------------------- stage 1: faces (CPU)


class FaceFindingStage:
    """Read, decode with limits, detect and align every image of a shard; one row per face or error.

    With `aligned`, an input is one face already in the generator's framing: no detection, the whole
    image is the face. With `detect=False`, a photo leaves whole for the unmask stage to find its faces
    on the accelerator: a plain JPEG as its bytes (decoded there), any other image decoded here."""

    RESOURCES = {"num_cpus": 1}
    BATCH_SIZE = 1  # a shard per call: its rows leave together

    def __init__(self, cfg: BulkConfig, detect: bool = True) -> None:
        from unmask_core.faces.detect import build_detector

        self.cfg = cfg
        self.detect = detect and not cfg.aligned
        self.detector = build_detector(cfg.detector, "cpu") if self.detect else None

    def faces_of(self, record: dict) -> list[dict]:
        base = {"id": record["id"], "source_uri": record["uri"]}
        try:
            # One GET: the size and version come from the listing (a manifest's rows have neither).
            raw = storage.read_bytes(
                record["uri"], self.cfg.max_bytes, record.get("size"), record.get("version")
            )
            if not self.detect and not self.cfg.aligned:
                return [dict(base, status="ok", error="", **photo_for_device(raw, self.cfg.max_pixels))]
            image = data.decode_image(raw, self.cfg.max_pixels)
        except UserError as exc:  # the input's own fault; a TransientError stops the job instead
            return [rows.error_row(base, "read_error", str(exc))]
        except data.ImageDecodeError as exc:
            return [rows.error_row(base, exc.status, exc.reason)]
        if self.cfg.aligned:
            return [dict(base, **aligned_input_face(image))]
        return self.detected_faces(base, image)

    def detected_faces(self, base: dict, image: np.ndarray) -> list[dict]:
        from unmask_core.faces.align import align_face
        from unmask_core.faces.detect import find_faces

        try:
            detected = find_faces(self.detector, image)
        except Exception as exc:  # a detector failure on one odd image must not lose the shard
            detected = exc

        def align(face) -> tuple[np.ndarray, dict]:
            aligned, matrix = align_face(image, face.landmarks, size=FACE_SIZE)
            return matrix, {"face": aligned.tobytes()}

        return rows.detected_faces(base, detected, self.cfg.faces, align)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        out = []
        for shard_index, payload in zip(batch["shard"], batch["records"]):
            records = json.loads(payload)
            for record in records:
                out += rows.of_input(self.faces_of(record), shard=int(shard_index), shard_inputs=len(records))
        return rows.stage_table(out)


def aligned_input_face(image: np.ndarray) -> dict:
    """The face row of an image that is already an aligned face: resized to FACE_SIZE, its bbox the
    whole image, its landmarks the template's (no detector ran, so no detection score)."""
    import cv2

    from unmask_core.faces.align import template

    height, width = image.shape[:2]
    if (height, width) != (FACE_SIZE, FACE_SIZE):
        shrink = min(height, width) > FACE_SIZE
        image = cv2.resize(
            image, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
        )
    return {
        "status": "ok",
        "error": "",
        "face_index": 0,
        "bbox": [0.0, 0.0, float(width), float(height)],
        "landmarks": template(FACE_SIZE).astype(np.float32).reshape(-1).tolist(),
        "detection_score": None,
        "face": np.ascontiguousarray(image).tobytes(),
    }


# ---------------------------------------------------------------- stage 2: unmask and embed (GPU)


class UnmaskingStage:
    """Holds g, f and the matchers on one device; U = g(f(M)) and the embeddings for a batch of rows
    (faces and error rows of any shards). With `find_faces`, the rows are whole photos (JPEG bytes or
    decoded pixels), and their faces are found here first, on the same device. The unmasked faces leave as
    raw pixels: PNG encoding is host work for the writers, off the accelerator's critical path."""

    @staticmethod
    def resources(gpus: float) -> dict[str, float]:
        """What one actor needs: `gpus` GPUs, and then no CPU slot. CPU-stage actors that reach a new
        GPU node first would otherwise take all its CPUs, leave the GPU actor pending, and make the
        autoscaler start another GPU node (an 8-GPU training node, if that is what fits)."""
        return {"num_gpus": gpus, "num_cpus": 0 if gpus else 1}

    def __init__(self, cfg: BulkConfig, find_faces: bool = False) -> None:
        from unmask_core.accelerator import best_device
        from unmask_core.inference import Unmasker

        device = best_device()
        self.cfg = cfg
        # bf16 where the device is in its CUDA state (the Unmasker decides): fp32 on a plain CPU.
        self.unmasker = Unmasker(
            cfg.models, cfg.matchers, device=device, bf16=cfg.bf16, compile_networks=cfg.compile
        )
        self.face_finder = DeviceFaceFinder(cfg, device) if find_faces else None

    def __call__(self, table: pa.Table) -> pa.Table:
        if self.face_finder is not None:
            table, masked = self.face_finder(table)
            ok = rows.ok_indices(table)
        else:
            ok = rows.ok_indices(table)
            faces = table.column("face").to_pylist()
            masked = (
                np.stack([np.frombuffer(faces[i], np.uint8).reshape(FACE_SIZE, FACE_SIZE, 3) for i in ok])
                if ok
                else None
            )
        result = self.unmasker.run(masked, self.cfg.batch_size) if ok else None
        table = table.drop_columns(["face", *rows.IMAGE_COLUMNS])

        def column(values_of_ok: list) -> list:  # a value per ok row -> a value per row
            values: list = [None] * table.num_rows
            for i, value in zip(ok, values_of_ok):
                values[i] = value
            return values

        unmasked = [] if result is None else [face.tobytes() for face in result.unmasked]
        table = table.append_column("unmasked", pa.array(column(unmasked), pa.binary()))
        for name, dim in self.unmasker.embedding_dims.items():
            for kind in rows.EMBEDDING_KINDS:
                vectors = (
                    [] if result is None else list(np.asarray(result.embeddings[kind][name], np.float32))
                )
                field = rows.embedding_field(kind, name, dim)
                table = table.append_column(field, pa.array(column(vectors), field.type))
        return table


# ---------------------------------------------------------------- stage 3: images (CPU)


class ImageWriter:
    """Encodes (PNG, or JPEG) and uploads a batch's unmasked faces in a thread pool (concurrent PUTs; the
    encoders and the uploads release the GIL), and passes the rows on without pixels, each with its
    image's URI. A write that fails after storage's retries (a full disk, an unreachable endpoint) is
    never a row: it raises a TransientError, which stops the job with the shard uncommitted."""

    RESOURCES = {"num_cpus": 0.25}  # mostly waiting on uploads
    BATCH_SIZE = None  # whatever block arrives: its rows are pixel-free soon after

    def __init__(
        self, output: str, image_format: str = "png", jpeg_quality: int = 95, threads: int = 16
    ) -> None:
        self.output = output
        if image_format == "png":
            self.suffix, self.encode = ".png", data.encode_png
        else:
            self.suffix, self.encode = ".jpg", lambda face: data.encode_jpeg(face, jpeg_quality)
        self.pool = ThreadPoolExecutor(max_workers=threads)

    def write(self, record_id: str, face_index: int, pixels: bytes) -> str:
        uri = storage.join(self.output, "images", unmasked_image_key(record_id, face_index, self.suffix))
        face = np.frombuffer(pixels, np.uint8).reshape(FACE_SIZE, FACE_SIZE, 3)
        storage.write_bytes_atomic(uri, self.encode(face))
        return uri

    def __call__(self, table: pa.Table) -> pa.Table:
        pixels = table.column("unmasked").to_pylist()
        ids = table.column("id").to_pylist()
        face_indices = table.column("face_index").to_pylist()
        uploads = {
            i: self.pool.submit(self.write, ids[i], face_indices[i], p) for i, p in enumerate(pixels) if p
        }
        uris: list[str | None] = [None] * table.num_rows
        for i, upload in uploads.items():
            try:
                uris[i] = upload.result()
            except UserError as exc:
                # Not this input's fault: its shard must not commit, and the job stops (a rerun writes it).
                raise TransientError(str(exc)) from exc
        table = table.drop_columns(["unmasked"])
        return table.append_column("unmasked_uri", pa.array(uris, pa.string()))


# ---------------------------------------------------------------- the commit (driver)


class ShardCommitter:
    """Gathers the pixel-free rows streaming out of the job and writes each shard's rows file, in one
    atomic write, once every row of every input of the shard has arrived (their images are written by
    then). A row seen twice (a retried task) counts once."""

    def __init__(
        self, output: str, provenance: dict[str, str], embedding_dims: dict[str, int], threads: int = 4
    ) -> None:
        self.rows_uri = storage.join(output, "rows")
        self.provenance = provenance
        self.schema = row_schema(embedding_dims)
        self.pending: dict[int, rows.ShardRows] = {}
        self.pool = ThreadPoolExecutor(max_workers=threads)
        self.submitted = ShardRanges()  # a few ranges, however many shards
        self.commits: list[Future] = []

    def add(self, table: pa.Table) -> int:
        """Take a batch of rows; the number of inputs it finished (their first row, seen once), for a
        progress bar that moves as images finish rather than as shards commit."""
        touched, finished = set(), 0
        for row in table.to_pylist():
            shard = row["shard"]
            if shard in self.submitted:
                continue  # a late duplicate of a committed shard's row
            finished += self.pending.setdefault(shard, rows.ShardRows()).add(row)
            touched.add(shard)
        for shard in touched:
            if self.pending[shard].complete():
                self.submitted.add(shard)
                self.commits.append(self.pool.submit(self._commit, shard, self.pending.pop(shard)))
        return finished

    def _commit(self, shard: int, arrived: rows.ShardRows) -> tuple[int, dict]:
        shard_rows = arrived.sorted_rows()
        out = pa.Table.from_pylist(
            [{**{n: r.get(n) for n in self.schema.names}, **self.provenance} for r in shard_rows],
            schema=self.schema,
        )
        summary = shard_summary(shard_rows, arrived.inputs)
        shards.write_table_atomic(shards.shard_file(self.rows_uri, shard), with_summary(out, summary))
        return shard, summary

    def committed(self, ignore_failures: bool = False) -> list[tuple[int, dict]]:
        """(shard, its summary) of the shards committed since the last call; a commit that failed
        raises (or, with `ignore_failures`, is left to the rerun)."""
        done = [future for future in self.commits if future.done()]
        self.commits = [future for future in self.commits if future not in done]
        if ignore_failures:
            done = [future for future in done if future.exception() is None]
        return [future.result() for future in done]

    def drain(self) -> None:
        """Wait for the commits already submitted, when the job stops early: every shard that completed
        is kept; one whose commit failed is left to the rerun."""
        self.pool.shutdown(wait=True)

    def finish(self) -> list[tuple[int, dict]]:
        """Wait for every commit; a shard with missing rows is a bug (every input yields a row)."""
        self.pool.shutdown(wait=True)
        counts = self.committed()
        if self.pending:
            shard = min(self.pending)
            arrived = self.pending[shard]
            raise RuntimeError(
                f"shard {shard}: {arrived.inputs_seen()} of {arrived.inputs} inputs reached the commit"
            )
        return counts
