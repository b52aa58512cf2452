"""The stages of bulk unmasking, each a Ray Data callable class that knows nothing of Ray, and the
driver's shard commits:

[FaceFindingStage: read, decode, detect, align]                   (CPU actors, a shard per call)
[UnmaskingStage: U = g(f(M)), embed M and U per matcher]           (GPU actors, `batch_size` rows)
    When the unmask actors have GPUs, the first stage only reads (and decodes what is not a plain
    JPEG), and the unmask stage decodes, detects and aligns on its device (DeviceFaceFinder): MTCNN
    and decoding are the costliest host steps by far.
[ImageWriter: encode (PNG or JPEG) and upload unmasked faces, concurrently]  (CPU actors, any batch)
[ShardCommitter: a shard's rows Parquet once all its rows arrived] (the driver, a few threads)

Faces stream through the unmask stage in fixed-size batches that span shards, so no stage but the last
sees a whole shard: every row carries its shard, the shard's input count and its input's row count, and
the committer writes a shard's rows (the exactly-once marker) when they are all there, after their images.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections import Counter, defaultdict
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from unmask_core import data, output_schema, shards, storage
from unmask_core.bulk.config import BulkConfig
from unmask_core.errors import TransientError, UserError
from unmask_core.shard_counts import ShardRanges, shard_summary, with_summary

FACE_SIZE = 256  # aligned faces travel between stages at the reference size


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
            return [dict(base, status="read_error", error=str(exc))]
        except data.ImageDecodeError as exc:
            return [dict(base, status=exc.status, error=exc.reason)]
        if self.cfg.aligned:
            return [dict(base, **aligned_input_face(image))]
        return self.detected_faces(base, image)

    def detected_faces(self, base: dict, image: np.ndarray) -> list[dict]:
        from unmask_core.faces.align import align_face
        from unmask_core.faces.detect import find_faces

        try:
            detected = find_faces(self.detector, image)
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
            rows.append(dict(face_row(base, index, face, matrix), face=aligned.tobytes()))
        return rows

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        rows = []
        for shard_index, payload in zip(batch["shard"], batch["records"]):
            records = json.loads(payload)
            for record in records:
                faces = self.faces_of(record)
                for row in faces:
                    row.update(shard=int(shard_index), shard_inputs=len(records), input_rows=len(faces))
                    rows.append(row)
        return pa.Table.from_pylist([_complete(r) for r in rows], schema=STAGE_SCHEMA)


def photo_for_device(raw: bytes, max_pixels: int) -> dict:
    """A photo as the device face finder takes it: a JPEG its decoder can take as it is (the bytes are
    also 5-20 times smaller than the pixels), anything else decoded here."""
    size = data.jpeg_for_device(raw, max_pixels)
    if size is not None:
        return {"jpeg": raw, "image_size": list(size)}
    image = data.decode_image(raw, max_pixels)
    return {"image": image.tobytes(), "image_size": list(image.shape[:2])}


def face_row(base: dict, index: int, face, matrix: np.ndarray) -> dict:
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


def _complete(row: dict) -> dict:
    return {name: row.get(name) for name in STAGE_SCHEMA.names}


# ---------------------------------------------------------------- stage 2: unmask and embed (GPU)


class UnmaskingStage:
    """Holds g, f and the matchers on one device; U = g(f(M)) and the embeddings for a batch of rows
    (faces and error rows of any shards). With `find_faces`, the rows are whole photos (JPEG bytes or
    decoded pixels), and their faces are found here first, on the same device. The unmasked faces leave as
    raw pixels: PNG encoding is host work for the writers, off the accelerator's critical path."""

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
        else:
            faces = table.column("face").to_pylist()
            ok = [i for i, s in enumerate(table.column("status").to_pylist()) if s == "ok"]
            masked = (
                np.stack([np.frombuffer(faces[i], np.uint8).reshape(FACE_SIZE, FACE_SIZE, 3) for i in ok])
                if ok
                else None
            )
        ok = [i for i, s in enumerate(table.column("status").to_pylist()) if s == "ok"]
        result = self.unmasker.run(masked, self.cfg.batch_size) if ok else None
        table = table.drop_columns(["face", *IMAGE_COLUMNS])
        unmasked: list[bytes | None] = [None] * table.num_rows
        if result is not None:
            for j, i in enumerate(ok):
                unmasked[i] = result.unmasked[j].tobytes()
        table = table.append_column("unmasked", pa.array(unmasked, pa.binary()))
        for name, dim in self.unmasker.embedding_dims.items():
            for kind in ("masked", "unmasked"):
                values: list = [None] * table.num_rows
                if result is not None:
                    for j, i in enumerate(ok):
                        values[i] = np.asarray(result.embeddings[kind][name][j], np.float32)
                table = table.append_column(
                    f"embedding_{kind}_{name}", pa.array(values, pa.list_(pa.float32(), dim))
                )
        return table


class DeviceFaceFinder:
    """Faces of whole photos, found on the unmask actor's device: JPEGs are decoded there (nvJPEG on
    CUDA, in batches), the host-decoded pixels go up in one (pinned) copy, MTCNN runs on letterboxed
    batches (`detect_batch`), and the similarity warp runs there too, with the CPU path's transform and
    filters. The crops never leave the device before f.

    A JPEG the device decoder refuses is decoded on the CPU, with the host's limits, and uploaded: a
    node whose nvJPEG fails still unmasks every photo. After DEVICE_DECODE_STRIKES such photos in a row,
    this actor stops asking the device decoder. `decoded` counts where photos were decoded, and every
    row carries it (`decoded_on`)."""

    DEVICE_DECODE_STRIKES = 8

    def __init__(self, cfg: BulkConfig, device) -> None:
        import torch

        from unmask_core.faces.detect import build_detector

        self.cfg = cfg
        self.device = torch.device(device)
        self.detector = build_detector(cfg.detector, str(self.device))
        self.decoded: Counter[str] = Counter()
        self.device_decode_strikes = 0

    def upload(self, images: list[np.ndarray]) -> list:
        """The images as uint8 [H, W, 3] tensors on the device, from one host-to-device copy."""
        import torch

        from unmask_core.accelerator import upload

        flat = upload(torch.from_numpy(np.concatenate([image.reshape(-1) for image in images])), self.device)
        views, start = [], 0
        for image in images:
            views.append(flat[start : start + image.size].view(image.shape))
            start += image.size
        return views

    def decode_on_device(self, encoded: list) -> list:
        """JPEG byte tensors -> uint8 [H, W, 3] tensors on the device, in one batched call."""
        from torchvision.io import ImageReadMode, decode_jpeg

        return [x.permute(1, 2, 0) for x in decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.device)]

    def decode_jpegs(self, blobs: list[bytes], sizes: list[list[int]]) -> list[tuple]:
        """(uint8 [H, W, 3] tensor on the device, "device" or "cpu") per JPEG, or (the exception that
        neither decoder got past, None)."""
        import torch

        on_device: list = [None] * len(blobs)
        if self.device_decode_strikes < self.DEVICE_DECODE_STRIKES:
            encoded = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in blobs]
            try:
                on_device = self.decode_on_device(encoded)
            except Exception:  # one file the decoder refuses fails the whole batch: then each on its own
                on_device = [_or_exception(lambda x: self.decode_on_device([x])[0], x) for x in encoded]
        results: list = [None] * len(blobs)
        fallback, pixels = [], []
        for i, (photo, size) in enumerate(zip(on_device, sizes)):
            if isinstance(photo, torch.Tensor) and list(photo.shape[:2]) == size:
                results[i], self.device_decode_strikes = (photo, "device"), 0
                continue
            try:
                pixels.append(data.decode_image(blobs[i], self.cfg.max_pixels))
            except Exception as exc:  # a file no decoder reads: the input's own fault
                results[i] = (exc, None)
                continue
            fallback.append(i)
            self.device_decode_strikes += 1  # the device refused a photo the CPU could decode
        for i, photo in zip(fallback, self.upload(pixels) if pixels else []):
            results[i] = (photo, "cpu")
        return results

    def photos(self, rows: list[dict]) -> list[tuple]:
        """(pixels as a uint8 [H, W, 3] tensor on the device, where they were decoded) per photo row,
        or (why it has none, None)."""
        photos: list = [None] * len(rows)
        jpegs = [i for i, row in enumerate(rows) if row["jpeg"] is not None]
        decoded = [i for i, row in enumerate(rows) if row["jpeg"] is None]
        if jpegs:
            blobs, sizes = [rows[i]["jpeg"] for i in jpegs], [rows[i]["image_size"] for i in jpegs]
            for i, photo in zip(jpegs, self.decode_jpegs(blobs, sizes)):
                photos[i] = photo
        if decoded:
            images = [
                np.frombuffer(rows[i]["image"], np.uint8).reshape(*rows[i]["image_size"], 3) for i in decoded
            ]
            for i, photo in zip(decoded, self.upload(images)):
                photos[i] = (photo, "cpu")  # decoded by the first stage, on its host
        self.decoded.update(where for _, where in photos if where)
        return photos

    def detect(self, photos: list) -> list:
        """Faces per photo, or the exception its detection raised (one odd photo loses only itself)."""
        from unmask_core.faces.detect import find_faces

        if not hasattr(self.detector, "detect_batch"):  # a detector without a batched device path
            return [_or_exception(find_faces, self.detector, x.cpu().numpy()) for x in photos]
        try:
            return self.detector.detect_batch(photos)
        except Exception:
            return [_or_exception(lambda x: self.detector.detect_batch([x])[0], x) for x in photos]

    def __call__(self, table: pa.Table):
        """(rows of faces and errors, the ok rows' aligned crops: uint8 [K, 256, 256, 3] on the device)."""
        import torch

        rows = table.to_pylist()
        todo = [i for i, row in enumerate(rows) if row["status"] == "ok"]
        photos = dict(zip(todo, self.photos([rows[i] for i in todo])))
        decoded = [i for i in todo if photos[i][1] is not None]
        found = dict(zip(decoded, self.detect([photos[i][0] for i in decoded])))
        out, crops = [], []
        for i, row in enumerate(rows):
            base = {k: row[k] for k in ("shard", "shard_inputs", "id", "source_uri")}
            if i not in photos:
                faces_of_input = [row]
            elif i not in found:
                faces_of_input = [dict(base, **_decode_error_row(photos[i][0]))]
            else:
                base["decoded_on"] = photos[i][1]
                faces_of_input = self.faces_of(base, found[i], photos[i][0], crops)
            for face in faces_of_input:
                photo_columns = dict.fromkeys(IMAGE_COLUMNS)  # the pixels stop here
                out.append(_complete(dict(face, input_rows=len(faces_of_input), **photo_columns)))
        masked = torch.cat(crops) if crops else None
        return pa.Table.from_pylist(out, schema=STAGE_SCHEMA), masked

    def faces_of(self, base: dict, detected, image, crops: list) -> list[dict]:
        from unmask_core.faces.align import align_faces_torch

        if isinstance(detected, Exception):
            return [dict(base, status="detect_error", error=f"{type(detected).__name__}: {detected}")]
        if not detected:
            return [dict(base, status="no_face", error="no face detected")]
        chosen = detected if self.cfg.faces == "all" else detected[:1]
        rows = []
        photo = image.permute(2, 0, 1).float()
        for index, face in enumerate(chosen):
            try:
                aligned, matrices = align_faces_torch(photo, [face.landmarks], size=FACE_SIZE)
            except Exception as exc:
                rows.append(dict(base, status="align_error", error=str(exc), face_index=index))
                continue
            crops.append(aligned.round().to(image.dtype).permute(0, 2, 3, 1))
            rows.append(face_row(base, index, face, matrices[0]))
        return rows


def _decode_error_row(error: Exception) -> dict:
    """The status and reason of a photo that no decoder could read."""
    if isinstance(error, data.ImageDecodeError):
        return {"status": error.status, "error": error.reason}
    return {"status": "decode_error", "error": f"{type(error).__name__}: {error}"}


def _or_exception(function, *args):
    try:
        return function(*args)
    except Exception as exc:
        return exc


# ---------------------------------------------------------------- stage 3: images (CPU)


class ImageWriter:
    """Encodes (PNG, or JPEG) and uploads a batch's unmasked faces in a thread pool (concurrent PUTs; the
    encoders and the uploads release the GIL), and passes the rows on without pixels, each with its
    image's URI. A write that fails after storage's retries (a full disk, an unreachable endpoint) is
    never a row: it raises a TransientError, which stops the job with the shard uncommitted."""

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


def row_schema(embedding_dims: dict[str, int]) -> pa.Schema:
    fields = [*FACE_FIELDS, ("unmasked_uri", pa.string())]
    for name, dim in embedding_dims.items():
        fields += [
            (f"embedding_masked_{name}", pa.list_(pa.float32(), dim)),
            (f"embedding_unmasked_{name}", pa.list_(pa.float32(), dim)),
        ]
    fields += [("matchers", pa.string()), ("encoder_sha256", pa.string()), ("generator_sha256", pa.string())]
    return output_schema.with_meanings(pa.schema(fields), "rows")


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
        self.pending: dict[int, dict[tuple[str, int], dict]] = defaultdict(dict)
        self.expected: dict[int, int] = {}
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
            key = (row["id"], row["face_index"] or 0)
            finished += key[1] == 0 and key not in self.pending[shard]
            self.pending[shard][key] = row
            self.expected[shard] = row["shard_inputs"]
            touched.add(shard)
        for shard in touched:
            if self._complete(shard):
                self.submitted.add(shard)
                rows, inputs = list(self.pending.pop(shard).values()), self.expected.pop(shard)
                self.commits.append(self.pool.submit(self._commit, shard, rows, inputs))
        return finished

    def _complete(self, shard: int) -> bool:
        rows_of: dict[str, list[dict]] = defaultdict(list)
        for row in self.pending[shard].values():
            rows_of[row["id"]].append(row)
        return len(rows_of) == self.expected[shard] and all(
            len(rows) == rows[0]["input_rows"] for rows in rows_of.values()
        )

    def _commit(self, shard: int, rows: list[dict], inputs: int) -> tuple[int, dict]:
        rows.sort(key=lambda r: (r["id"], r["face_index"] or 0))
        out = pa.Table.from_pylist(
            [{**{n: r.get(n) for n in self.schema.names}, **self.provenance} for r in rows],
            schema=self.schema,
        )
        summary = shard_summary(rows, inputs)
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
            got = len({key[0] for key in self.pending[shard]})
            raise RuntimeError(f"shard {shard}: {got} of {self.expected[shard]} inputs reached the commit")
        return counts
