"""The `prepare` job's configuration."""

from __future__ import annotations

from dataclasses import dataclass

from unmask_core import corpora, data, extras
from unmask_core.config import JobConfig, option
from unmask_core.errors import UserError
from unmask_core.faces.masks import FITS, MASK_KINDS

# The mask fits whose code comes from a package extra (unmask_core/extras.py).
MASK_FIT_EXTRAS = {"dlib68": "dlib"}


@dataclass
class PrepareConfig(JobConfig):
    corpus: str = option("folders", "corpus layout", choices=list(corpora.CORPUS_KINDS))
    input: str = option("", "corpus root or manifest (local path or s3://)", required=True)
    output: str = option("", "output folder for pairs Parquet (local path or s3://)", required=True)
    mask_kinds: list[str] = option(
        list(MASK_KINDS), "synthetic mask kinds to draw", item_choices=list(MASK_KINDS)
    )
    mask_fit: str = option(
        "five_point",
        "how masks are placed: from the 5 landmarks, or also from dlib's 68 (jaw line, nose bridge; "
        "MaskTheFace's way; needs the dlib extra)",
        choices=list(FITS),
    )
    test_fraction: float = option(0.2, "fraction of identities in the test split")
    seed: int = option(0, "seed for masks and the identity split")
    detector: str = option("mtcnn", "face detector: mtcnn, or a folder with an insightface detector ONNX")
    image_size: int = option(256, "aligned face size")
    shard_size: int = option(64, "images per output shard")
    max_pixels: int = option(data.DEFAULT_MAX_PIXELS, "larger images become `too_large` error rows")
    max_bytes: int = option(data.DEFAULT_MAX_BYTES, "larger files become `read_error` rows, unread")
    overwrite: bool = option(False, "delete what a previous run left in the output folder and start over")
    workers: int = option(0, "parallel prepare actors (0: one per two CPUs)")

    def check(self) -> None:
        if not 0 <= self.test_fraction < 1:
            raise UserError("--test-fraction must be in [0, 1)")
        if not self.mask_kinds:
            raise UserError("--mask-kinds needs at least one kind")
        if self.shard_size < 1 or self.image_size < 1 or self.workers < 0:
            raise UserError("--shard-size and --image-size must be positive, --workers not negative")
        extras.require(MASK_FIT_EXTRAS.get(self.mask_fit), f"--mask-fit {self.mask_fit}")
