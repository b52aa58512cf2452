"""The bulk `unmask` job's configuration."""

from __future__ import annotations

import math
from dataclasses import dataclass

from unmask_core import data
from unmask_core.config import JobConfig, option
from unmask_core.errors import UserError
from unmask_core.matchers.registry import MATCHERS


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

    def check(self) -> None:
        if self.batch_size < 1 or self.shard_size < 1:
            raise UserError("--batch-size and --shard-size must be positive")
        if not 1 <= self.jpeg_quality <= 100:
            raise UserError(f"--jpeg-quality must be 1 to 100 (got {self.jpeg_quality})")
        if not self.matchers:
            raise UserError("--matchers needs at least one matcher")
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


def image_pins(cfg: BulkConfig) -> dict[str, str]:
    """What the plan pins about the image files, so that a rerun into the same output writes the same
    kind. PNG, the default and the only kind before JPEG, pins nothing: earlier outputs still resume."""
    return {} if cfg.image_format == "png" else {"images": f"jpeg q{cfg.jpeg_quality}"}
