"""`unmask demo`: the whole flow on real sample photos that ship with our dependencies, CPU only.

The sample corpus: the six faces of insightface's `t1.jpg`, its aligned Tom Hanks, and scikit-image's
astronaut photo, each cropped from its photo and varied (flip, small rotation and scale, light) into a
few images per identity, so that verification has genuine and impostor pairs. The models are randomly
initialised and trained for a few steps only: the point is to see every stage work, not good faces.
The matchers are the set's (random) ArcFace and FaceNet, and dlib's pretrained ResNet (the `dlib`
extra), whose TT / MM / MT numbers are real: how much a mask costs a real matcher.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from unmask_core import storage
from unmask_core.config import JobConfig, option
from unmask_core.errors import UserError
from unmask_core.matchers.registry import require_installed

UNTRAINED_NOTE = (
    "Demo models are randomly initialised and trained for a few CPU steps only: the unmasked faces are not "
    "meaningful, nor are the ArcFace and FaceNet AUCs (random weights). dlib's matcher is pretrained: its "
    "TT, MM and MT AUCs are real. Use real weights (README: Real weights) and corpora for real results."
)
#: The demo's matchers: the model set's two (random here) and dlib's pretrained fair check.
DEMO_MATCHERS = ["arcface", "facenet", "dlib"]


@dataclass
class DemoConfig(JobConfig):
    output: str = option("demo_out", "folder for everything the demo writes")
    steps: int = option(6, "training steps for each of f0 and f")
    workers: int = option(2, "training workers (gloo on CPU)")
    variants: int = option(4, "images made from each sample face")
    seed: int = option(0, "seed")

    def check(self) -> None:
        if storage.is_s3(self.output):
            raise UserError("--output: the demo writes to a local folder")
        if min(self.steps, self.workers) < 1:
            raise UserError("--steps and --workers must be positive")
        if self.variants < 2:
            raise UserError("--variants must be at least 2: verification needs two images of a person")
        require_installed(DEMO_MATCHERS, "the demo's matcher")


def _sample_faces() -> dict[str, np.ndarray]:
    """Identity -> a loose crop around one real face, from photos shipped in our dependencies."""
    import skimage.data

    from unmask_core.faces.detect import build_detector
    from unmask_core.faces.samples import load_rgb, sample_photo

    detector = build_detector("mtcnn", "cpu")
    faces: dict[str, np.ndarray] = {}
    group = load_rgb(sample_photo("t1.jpg"))
    for index, face in enumerate(sorted(detector.detect(group), key=lambda f: f.box[0])):
        faces[f"t1_person{index}"] = _loose_crop(group, face.box)
    hanks = load_rgb(sample_photo("Tom_Hanks_54745.png"))
    faces["tom_hanks"] = cv2.copyMakeBorder(hanks, 56, 56, 56, 56, cv2.BORDER_REPLICATE)
    astronaut = skimage.data.astronaut()
    found = detector.detect(astronaut)
    if found:
        faces["astronaut"] = _loose_crop(astronaut, found[0].box)
    return faces


def _loose_crop(image: np.ndarray, box: np.ndarray, margin: float = 0.8) -> np.ndarray:
    x1, y1, x2, y2 = box
    cx, cy, side = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1) * (1 + margin)
    matrix = np.float32([[1, 0, side / 2 - cx], [0, 1, side / 2 - cy]])
    size = int(round(side))
    return cv2.warpAffine(image, matrix, (size, size), borderMode=cv2.BORDER_REFLECT)


def _variant(face: np.ndarray, rng: np.random.Generator, k: int) -> np.ndarray:
    if k == 0:
        return face
    h, w = face.shape[:2]
    angle, scale = rng.uniform(-8, 8), rng.uniform(0.92, 1.08)
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    out = cv2.warpAffine(face, matrix, (w, h), borderMode=cv2.BORDER_REFLECT)
    if k % 2:
        out = out[:, ::-1]
    gain = rng.uniform(0.85, 1.15)
    return np.clip(out.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def build_sample_corpus(folder: Path, variants: int, seed: int) -> int:
    """Write a one-folder-per-identity corpus; returns the number of images."""
    rng = np.random.default_rng(seed)
    count = 0
    for identity, face in _sample_faces().items():
        (folder / identity).mkdir(parents=True, exist_ok=True)
        for k in range(variants):
            image = np.ascontiguousarray(_variant(face, rng, k))
            cv2.imwrite(
                str(folder / identity / f"{identity}_{k:02d}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
            )
            count += 1
    return count


def build_gallery(pairs_uri: str, folder: Path, source_photo: Path) -> int:
    """A small gallery of masked photos to bulk-unmask: the test split's masked faces plus a group photo."""
    from unmask_core import shards, storage

    folder.mkdir(parents=True, exist_ok=True)
    table = shards.read_rows(storage.join(pairs_uri, "pairs"), columns=["id", "M", "status", "split"])
    count = 0
    for row in table.to_pylist():
        if row["status"] == "ok" and row["split"] == "test":
            name = storage.safe_relative_path(row["id"]).replace("/", "__")
            (folder / f"masked__{name}.png").write_bytes(row["M"])
            count += 1
    (folder / source_photo.name).write_bytes(source_photo.read_bytes())
    return count + 1


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.step = 0

    def say(self, total: int, text: str) -> None:
        self.step += 1
        print(f"\n[demo {self.step}/{total} · {time.perf_counter() - self.start:5.0f}s] {text}", flush=True)


def run_demo(cfg: DemoConfig) -> dict:
    from unmask_core.bulk.config import BulkConfig
    from unmask_core.bulk.run import format_summary, run_bulk
    from unmask_core.evaluation import EvaluateConfig, run_evaluation
    from unmask_core.faces.samples import sample_photo
    from unmask_core.models.model_set import init_model_set
    from unmask_core.prepare.config import PrepareConfig
    from unmask_core.prepare.run import format_summary as prepare_summary
    from unmask_core.prepare.run import run_prepare
    from unmask_core.report import table_markdown
    from unmask_core.training.config import TrainConfig
    from unmask_core.training.history import format_losses
    from unmask_core.training.run import run_training

    out = Path(cfg.output).absolute()
    clock = Stopwatch()
    steps = 7
    clock.say(steps, "building a sample corpus from real photos shipped with insightface and scikit-image")
    corpus = out / "corpus"
    if not corpus.exists():
        print(f"{build_sample_corpus(corpus, cfg.variants, cfg.seed)} images in {corpus}")

    clock.say(steps, "prepare: detect, align, add synthetic masks, split by identity -> pairs Parquet")
    prepare_cfg = PrepareConfig(
        corpus="folders",
        input=str(corpus),
        output=str(out / "pairs"),
        test_fraction=0.4,
        seed=cfg.seed,
        shard_size=8,
    )
    prepared = run_prepare(prepare_cfg)
    print(prepare_summary(prepared))
    _require_success(prepared, "prepare")

    clock.say(steps, "models init: a tiny randomly initialised model set (64 px) in our checkpoint format")
    models = str(out / "models")
    if not storage.exists(storage.join(models, "model_set.json")):
        init_model_set(64, models, seed=cfg.seed)

    clock.say(
        steps, f"train f0 (baseline, eq. 4) for {cfg.steps} steps on {cfg.workers} CPU workers (Ray Train)"
    )
    common = dict(
        pairs=str(out / "pairs"),
        workers=cfg.workers,
        steps=cfg.steps,
        batch_size=2,
        lpips_backbone="random",
        checkpoint_every=max(1, cfg.steps // 2),
        seed=cfg.seed,
    )
    baseline = run_training(
        TrainConfig(stage="baseline", models=models, output=str(out / "train_f0"), **common)
    )
    print(f"f0 at step {baseline['step']}: {format_losses(baseline['final'])}")

    clock.say(
        steps,
        f"train f (unmask, eq. 9, initialised from f0) for {cfg.steps} steps, f0(T) and ArcFace(T) cached",
    )
    unmask_run = run_training(
        TrainConfig(
            stage="unmask",
            models=baseline["models"],
            output=str(out / "train_f"),
            cache_targets=True,
            **common,
        )
    )
    print(f"f at step {unmask_run['step']}: {format_losses(unmask_run['final'])}")

    clock.say(
        steps, "bulk unmask: a gallery of masked photos -> unmasked images + embeddings Parquet (Ray Data)"
    )
    gallery = out / "gallery"
    if not gallery.exists():
        build_gallery(str(out / "pairs"), gallery, sample_photo("t1.jpg"))
    bulk = run_bulk(
        BulkConfig(
            input=str(gallery),
            output=str(out / "unmasked"),
            models=unmask_run["models"],
            matchers=DEMO_MATCHERS,
            shard_size=8,
            batch_size=8,
        )
    )
    print(format_summary(bulk))
    _require_success(bulk, "bulk unmask")

    clock.say(steps, "evaluate: verification AUC (MM/MT/UU/UT/TT) x matchers, PSNR/SSIM, HTML report")
    evaluation = run_evaluation(
        EvaluateConfig(
            pairs=str(out / "pairs"),
            models=unmask_run["models"],
            output=str(out / "report"),
            matchers=DEMO_MATCHERS,
            note=UNTRAINED_NOTE,
        )
    )
    print(table_markdown(evaluation))
    return {
        "output": str(out),
        "report": evaluation["files"]["report.html"],
        "prepare": str(out / "pairs"),
        "rows": str(out / "unmasked" / "rows"),
        "seconds": time.perf_counter() - clock.start,
    }


def _require_success(summary: dict, step: str) -> None:
    from unmask_core import shards

    if not shards.succeeded(summary):
        raise RuntimeError(f"demo: {step} did not account for every input cleanly: {summary}")


NEXT_STEPS = """
What you just ran, and what to do next:
  * {UNTRAINED_NOTE}
  * Report: {report}
  * Pairs Parquet: {prepare}/pairs/   Bulk rows Parquet: {rows}/
  * Real weights: convert/point at StyleGAN2 FFHQ (rosinality g_ema), a pSp FFHQ encoder, model_ir_se50.pth,
    an insightface ArcFace ONNX and facenet-pytorch VGGFace2 weights (README: Real weights).
  * Real corpora: `unmask prepare --corpus ffhq|celeba|lfw|rmfrd --input s3://... --output s3://...`
  * A cluster: `ray up cluster.yaml`, then `ray job submit ... -- python -m jobs.train ...` (docs/cluster.md).
"""
