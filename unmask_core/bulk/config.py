"""The bulk `unmask` job's configuration."""

from __future__ import annotations

import math
from dataclasses import dataclass

from unmask_core import data, output_schema
from unmask_core.config import JobConfig, option
from unmask_core.errors import UserError
from unmask_core.matchers.registry import MATCHERS, require_installed


@dataclass
class BulkConfig(JobConfig):
    input: str = option(
        "", "gallery prefix of image files, or a manifest (.csv/.parquet with uri[, id])", required=True
    )
    output: str = option("", "output folder: images/ and rows/ (local path or s3://)", required=True)
    models: str = option("", "model set folder (see `unmask models init`)", required=True)
    matchers: list[str] = option(
        ["arcface", "facenet"],
        "matchers to embed masked and unmasked faces with",
        item_choices=list(MATCHERS),
    )
    faces: str = option("largest", "which faces of each image to unmask", choices=["largest", "all"])
    batch_size: int = option(
        32,
        "rows per unmask call, streamed across shards (faces per forward pass; independent of shards); "
        "a small job's batches shrink to an even share per unmask actor",
    )
    gpus_per_actor: float = option(-1.0, "GPUs per unmask actor (-1: 1 if the cluster has GPUs, else 0)")
    resource_timeout: float = option(
        900.0,
        "seconds to wait for an autoscaler to add a GPU node for --gpus-per-actor before giving up; a "
        "cluster that can never have one is refused at once",
    )
    actors: str = option("1,4", "MIN,MAX size of the unmask actor pool (autoscaling between them)")
    cpu_actors: str = option(
        "", "MIN,MAX size of the decode/detect/align actor pool (default: 1 to half the CPUs)"
    )
    overwrite: bool = option(False, "delete what a previous run left in the output folder and start over")
    shard_size: int = option(64, "images per shard (the unit of exactly-once and resume)")
    max_pixels: int = option(data.DEFAULT_MAX_PIXELS, "larger images become `too_large` rows")
    max_bytes: int = option(data.DEFAULT_MAX_BYTES, "larger files become `read_error` rows, unread")
    aligned: bool = option(
        False, "inputs are faces already aligned at the generator's framing (FFHQ recipe): no detection"
    )
    detector: str = option("mtcnn", "face detector: mtcnn, or a folder with an insightface detector ONNX")
    face_finding: str = option(
        "auto",
        "where faces are detected and aligned: on the unmask actors' device, or in CPU actors "
        "(auto: the device when the unmask actors have GPUs)",
        choices=["auto", "device", "cpu"],
    )
    compile: bool = option(
        False,
        "torch.compile f, g and the matchers at one padded batch shape (off by default until a GPU "
        "measurement says it pays; compiling takes minutes)",
    )
    bf16: bool = option(True, "bf16 autocast for the unmask stage on GPU (CPU stays fp32)")
    image_format: str = option(
        "png",
        "unmasked faces as lossless PNG, or as JPEG (4:4:4, --jpeg-quality): a sixth of PNG's encoding "
        "CPU and under a third of its bytes",
        choices=["png", "jpeg"],
    )
    jpeg_quality: int = option(95, "JPEG quality (1-100) with --image-format jpeg")

    # Every setting is in one of these groups (a test keeps it so). `input`, `models` and `output` say
    # what the run is about: the input is pinned by its listing, the models by their hashes.
    # PINNED settings change what a row says: the output's plan records them (`settings_pins`), and a
    # resume with another value is refused. OPERATIONAL ones change only where and how fast the work
    # runs: the same inputs give the same rows whatever they are. `face_finding` is operational: the
    # device and CPU face finders run the same detector, transform and filters (the same faces, up to
    # the rounding of another decoder and device); `bf16` is pinned through the precision it gives
    # (`precision`: bf16 only on GPU actors), which changes every embedding's last digits.
    SUBJECT = ("input", "output", "models")
    PINNED = (
        "matchers",
        "faces",
        "shard_size",
        "max_pixels",
        "max_bytes",
        "aligned",
        "detector",
        "bf16",
        "image_format",
        "jpeg_quality",
    )
    OPERATIONAL = (
        "batch_size",
        "gpus_per_actor",
        "actors",
        "cpu_actors",
        "overwrite",
        "face_finding",
        "compile",
        "resource_timeout",
    )

    def check(self) -> None:
        for flag, value in (
            ("batch-size", self.batch_size),
            ("shard-size", self.shard_size),
            ("max-pixels", self.max_pixels),
            ("max-bytes", self.max_bytes),
        ):
            if value < 1:
                raise UserError(f"--{flag} must be positive (got {value})")
        if self.gpus_per_actor < 0 and self.gpus_per_actor != -1:
            raise UserError(
                f"--gpus-per-actor must be -1 (automatic) or at least 0 (got {self.gpus_per_actor})"
            )
        if not 1 <= self.jpeg_quality <= 100:
            raise UserError(f"--jpeg-quality must be 1 to 100 (got {self.jpeg_quality})")
        if not self.matchers:
            raise UserError("--matchers needs at least one matcher")
        require_installed(self.matchers)  # a missing extra: one line naming its install command
        pool_range(self.actors, "--actors")
        if self.cpu_actors:
            pool_range(self.cpu_actors, "--cpu-actors")


def pool_range(text: str, flag: str) -> tuple[int, int]:
    try:
        low, high = (int(x) for x in text.split(","))
    except ValueError as exc:
        raise UserError(f"{flag} must be MIN,MAX (got {text!r})") from exc
    if not 1 <= low <= high:
        raise UserError(f"{flag} must satisfy 1 <= MIN <= MAX (got {text!r})")
    return low, high


def micro_batch_size(requested: int, inputs: int, actors: int) -> int:
    """The unmask stage's batch: `--batch-size`, but never more than an even share of the inputs left
    across the pool's largest size, so that a small job keeps every unmask actor busy instead of
    giving all its faces to one."""
    return max(1, min(requested, math.ceil(inputs / max(1, actors))))


def settings_pins(cfg: BulkConfig, detector: str, on_gpu: bool | None) -> dict[str, str]:
    """The PINNED settings as the plan records them (`shard_size` is a field of the plan itself, the
    matchers are pinned with their hashes). `detector`: what the detector is (see bulk.run); `on_gpu`:
    whether the unmask actors have GPUs (None: not known yet, and the precision is left out)."""
    pins = {
        "faces": cfg.faces,
        "max_pixels": str(cfg.max_pixels),
        "max_bytes": str(cfg.max_bytes),
        "aligned": str(cfg.aligned).lower(),
        "detector": "none (aligned inputs)" if cfg.aligned else detector,
        "images": "png" if cfg.image_format == "png" else f"jpeg q{cfg.jpeg_quality}",
        # Rows of another schema version mean other things (docs/output.md): never in one output.
        "rows_schema": output_schema.SCHEMA_VERSIONS["rows"],
    }
    if on_gpu is not None:
        pins["precision"] = "bf16" if cfg.bf16 and on_gpu else "fp32"
    return pins
