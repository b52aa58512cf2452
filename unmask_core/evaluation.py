"""`unmask evaluate`: the paper's evidence for a model set on a test split.

Runs f on the test split's masked faces M, embeds T, M and U = g(f(M)) with each matcher, builds
genuine/impostor pairs by identity (or reads an LFW-style pairs file), and reports ROC AUC for
MM/MT/UU/UT/TT per matcher, PSNR/SSIM of U against T at 256 px, and an HTML report.

Streams the test split in chunks: only embeddings and per-image scores stay in memory.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow.dataset as pads

from unmask_core import data, storage
from unmask_core.config import JobConfig, option, save_config
from unmask_core.errors import UserError
from unmask_core.matchers.registry import MATCHERS, require_installed

EVAL_SIZE = 256  # PSNR/SSIM at 256 px, as in the paper
# RMFRD's real masks have no pixel-aligned T: T is another photo of the person (T_ref), so only the
# masked and unmasked probes against it mean something (the paper reports UT vs MT), and no PSNR/SSIM.
REAL_MASK_SETTINGS = ("MT", "UT")


@dataclass
class EvaluateConfig(JobConfig):
    pairs: str = option(
        "", "pairs folder written by `unmask prepare` (its test split is used)", required=True
    )
    models: str = option("", "model set to evaluate (its unmasking encoder f)", required=True)
    output: str = option("", "output folder: metrics.json, table.md, roc.png, report.html", required=True)
    matchers: list[str] = option(
        ["arcface", "facenet"], "matchers to verify with", item_choices=list(MATCHERS)
    )
    max_pairs: int = option(0, "cap on verification pairs, half genuine (0: all genuine pairs)")
    pairs_file: str = option("", "LFW-style pairs.txt to use instead of building pairs by identity")
    split: str = option("test", "which split of the pairs to evaluate", choices=["test", "train"])
    batch_size: int = option(32, "faces per forward pass")
    seed: int = option(0, "seed for impostor pair sampling")
    note: str = option("", "a note shown at the top of the report")

    def check(self) -> None:
        if self.batch_size < 1 or self.max_pairs < 0:
            raise UserError("--batch-size must be positive, --max-pairs not negative")
        if not self.matchers:
            raise UserError("--matchers needs at least one matcher")
        require_installed(self.matchers)


@dataclass
class TestFaces:
    ids: list[str]
    identities: list[str]
    embeddings: dict[str, dict[str, np.ndarray]]  # matcher -> kind ('T','M','U') -> [N, dim]
    psnr: np.ndarray
    ssim: np.ndarray
    region_psnr: np.ndarray  # PSNR inside the mask region
    real_masks: bool = False  # RMFRD real-mask rows: T is T_ref, psnr/ssim are NaN


IMAGE_COLUMNS = ["id", "identity", "T", "M", "mask_region", "T_ref"]


def _iter_test_batches(cfg: EvaluateConfig, chunk: int, columns: list[str] = IMAGE_COLUMNS):
    pairs_uri = storage.join(cfg.pairs, "pairs")
    storage.check_readable(pairs_uri)
    fs, path = storage.pyarrow_filesystem(pairs_uri)
    dataset = pads.dataset(path, filesystem=fs, format="parquet")
    expr = (pads.field("status") == "ok") & (pads.field("split") == cfg.split)
    if _has_real_masks(dataset, expr):  # RMFRD: its synthetic phase-1 pairs are not the test
        expr = expr & (pads.field("mask_kind") == data.REAL_MASK_KIND)
    yield from dataset.to_batches(columns=columns, filter=expr, batch_size=chunk)


def split_identities(cfg: EvaluateConfig) -> tuple[list[str], list[str]]:
    """The ids and identities of the rows evaluated, in the order embed_test_split sees them, read
    without their images: what the verification pairs are built from, before anything is run."""
    ids: list[str] = []
    identities: list[str] = []
    for batch in _iter_test_batches(cfg, chunk=65536, columns=["id", "identity"]):
        ids += batch.column("id").to_pylist()
        identities += batch.column("identity").to_pylist()
    if not ids:
        raise UserError(f"{cfg.pairs}: no usable pairs in the {cfg.split} split")
    return ids, identities


def _has_real_masks(dataset: pads.Dataset, expr: pads.Expression) -> bool:
    return dataset.count_rows(filter=expr & (pads.field("mask_kind") == data.REAL_MASK_KIND)) > 0


def _to_256(image: np.ndarray) -> np.ndarray:
    import cv2

    if image.shape[0] == EVAL_SIZE:
        return image
    return cv2.resize(image, (EVAL_SIZE, EVAL_SIZE), interpolation=cv2.INTER_LINEAR)


def embed_test_split(cfg: EvaluateConfig, unmasker, bar) -> TestFaces:
    """Unmask the split's masked faces and embed T, M and U with every matcher (`bar`, a progress bar,
    counts the faces)."""
    from unmask_core import metrics

    ids, identities, psnrs, ssims, region_psnrs = [], [], [], [], []
    parts: dict[str, dict[str, list]] = {m: {"T": [], "M": [], "U": []} for m in cfg.matchers}
    for batch in _iter_test_batches(cfg, chunk=max(cfg.batch_size, 64)):
        rows = batch.to_pylist()
        if not rows:  # a filtered scan yields empty batches for files without matching rows
            continue
        T = np.stack([_to_256(data.decode_png(r["T"] if r["T"] is not None else r["T_ref"])) for r in rows])
        M = np.stack([_to_256(data.decode_png(r["M"])) for r in rows])
        result = unmasker.run(M, cfg.batch_size, also_embed={"T": T})
        U = result.unmasked
        for name in cfg.matchers:
            parts[name]["M"].append(result.embeddings["masked"][name])
            parts[name]["U"].append(result.embeddings["unmasked"][name])
            parts[name]["T"].append(result.embeddings["T"][name])
        for r, t, u in zip(rows, T, U):
            psnrs.append(metrics.psnr(u, t) if r["T"] is not None else np.nan)
            ssims.append(metrics.ssim(u, t) if r["T"] is not None else np.nan)
            region = data.decode_png(r["mask_region"])[..., 0] > 127 if r["mask_region"] else None
            region_psnrs.append(
                metrics.region_psnr(u, t, _to_256_mask(region)) if region is not None else np.nan
            )
        ids += [r["id"] for r in rows]
        identities += [r["identity"] for r in rows]
        bar.update(len(rows))
    embeddings = {m: {k: np.concatenate(v) for k, v in kinds.items()} for m, kinds in parts.items()}
    real_masks = bool(np.isnan(ssims).all())  # every row a real mask (see _iter_test_batches)
    return TestFaces(
        ids, identities, embeddings, np.array(psnrs), np.array(ssims), np.array(region_psnrs), real_masks
    )


def _to_256_mask(region: np.ndarray) -> np.ndarray:
    import cv2

    if region.shape[0] == EVAL_SIZE:
        return region
    return cv2.resize(region.astype(np.uint8), (EVAL_SIZE, EVAL_SIZE), interpolation=cv2.INTER_NEAREST) > 0


def build_pairs(cfg: EvaluateConfig, ids: list[str], identities: list[str]):
    """Genuine and impostor pairs of the split's rows (or those of --pairs-file): one line when they
    cannot have both kinds."""
    from unmask_core import metrics

    if cfg.pairs_file:
        pairs = metrics.read_lfw_pairs(storage.read_bytes(cfg.pairs_file).decode(), ids)
    else:
        pairs = metrics.verification_pairs(
            identities, max_pairs=cfg.max_pairs or None, seed=cfg.seed, ids=ids
        )
    if pairs.genuine.all() or not pairs.genuine.any():
        raise UserError(
            f"{cfg.pairs}: the {cfg.split} split needs two identities, one of them with two images"
        )
    return pairs


@dataclass
class EvaluationPlan:
    """What the checks found: the rows to evaluate, in the order they are read, and their pairs."""

    ids: list[str]
    pairs: Any  # metrics.VerificationPairs


def check_evaluation(cfg: EvaluateConfig) -> EvaluationPlan:
    """Every check that needs neither torch nor the weights, in seconds: the model set's manifest, the
    split's rows and their pairs, the output's bucket. Nothing here writes."""
    storage.check_readable(cfg.models)
    if not storage.exists(storage.join(cfg.models, "model_set.json")):
        raise UserError(
            f"{cfg.models}: not a model set (no model_set.json); make one with `unmask models init`"
        )
    ids, identities = split_identities(cfg)
    pairs = build_pairs(cfg, ids, identities)
    if storage.is_s3(cfg.output):  # a local folder is made by the first write, once the models load
        storage.check_writable(cfg.output)
    return EvaluationPlan(ids, pairs)


def run_evaluation(cfg: EvaluateConfig, plan: EvaluationPlan | None = None) -> dict[str, Any]:
    """Checks first (`check_evaluation`, unless its `plan` is given; then the models as they load),
    then the output: a refused run leaves none. A progress bar per phase."""
    plan = plan or check_evaluation(cfg)
    import torch

    from unmask_core import metrics, report
    from unmask_core.inference import Unmasker
    from unmask_core.progress import progress_bar

    ids, pairs = plan.ids, plan.pairs
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"evaluate: loading the model set and the matchers ({', '.join(cfg.matchers)})", flush=True)
    unmasker = Unmasker(cfg.models, cfg.matchers, device=device, bf16=False)
    save_config(cfg, cfg.output)
    bar = progress_bar(len(ids), "evaluate: unmask and embed")
    faces = embed_test_split(cfg, unmasker, bar)
    bar.close()
    if faces.ids != ids:  # the pairs index the rows as first read
        raise RuntimeError(f"{cfg.pairs}: its rows changed while they were evaluated")
    results: dict[str, Any] = {"matchers": {}, "curves": {}}
    for name in cfg.matchers:
        aucs, curves = metrics.protocol_aucs(faces.embeddings[name], pairs)
        if faces.real_masks:
            aucs = {k: v for k, v in aucs.items() if k in REAL_MASK_SETTINGS}
            curves = {k: v for k, v in curves.items() if k in REAL_MASK_SETTINGS}
        results["matchers"][name] = aucs
        results["curves"][name] = curves
    summary = {
        "matchers": results["matchers"],
        "psnr": None if faces.real_masks else float(np.mean(faces.psnr)),
        "ssim": None if faces.real_masks else float(np.mean(faces.ssim)),
        "masked_region_psnr": float(np.nanmean(faces.region_psnr))
        if np.isfinite(faces.region_psnr).any()
        else None,
        "n_images": len(faces.ids),
        "n_identities": len(set(faces.identities)),
        "n_pairs": int(len(pairs.genuine)),
        "n_genuine": int(pairs.genuine.sum()),
        "checkpoints": unmasker.checkpoints,
        "weights": matcher_weights(unmasker.matchers),
    }
    bar = progress_bar(len(ids), "evaluate: example faces for the report")
    triplets = _triplets(cfg, faces, unmasker, bar)
    bar.close()
    print("evaluate: writing the report", flush=True)
    written = report.write_report(
        out_dir=cfg.output,
        metrics=summary,
        curves=results["curves"],
        triplets=triplets,
        config=asdict(cfg),
        checkpoints=unmasker.checkpoints,
        note=cfg.note,
    )
    summary["files"] = written
    return summary


def matcher_weights(matchers: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per matcher: whether its weights are pretrained or random, and their sha256 (for the report)."""
    return {name: {"pretrained": m.pretrained, "sha256": m.model_sha256} for name, m in matchers.items()}


def _triplets(cfg: EvaluateConfig, faces: TestFaces, unmasker, bar) -> list:
    """Best, median and worst faces by PSNR, re-read from the pairs (only these few images are decoded;
    `bar` counts the rows scanned)."""
    from unmask_core import metrics, report

    chosen = report.select_triplets(faces.psnr)
    wanted = {faces.ids[i]: label for label, indices in chosen.items() for i in indices}
    found = []
    for batch in _iter_test_batches(cfg, chunk=256):
        bar.update(batch.num_rows)
        for row in batch.to_pylist():
            if row["id"] in wanted:
                T, M = _to_256(data.decode_png(row["T"])), _to_256(data.decode_png(row["M"]))
                U = unmasker.run(M[None], 1).unmasked[0]
                found.append(
                    report.Triplet(
                        id=row["id"],
                        T=T,
                        M=M,
                        U=U,
                        psnr=metrics.psnr(U, T),
                        ssim=metrics.ssim(U, T),
                        label=wanted[row["id"]],
                    )
                )
    order = {label: i for i, label in enumerate(report.LABEL_ORDER)}
    return sorted(found, key=lambda t: (order.get(t.label, len(order)), -t.psnr))


def format_table(summary: dict[str, Any]) -> str:
    from unmask_core.report import table_markdown

    counts = (
        f"{summary['n_images']} faces of {summary['n_identities']} people, {summary['n_pairs']} pairs "
        f"({summary['n_genuine']} genuine)"
    )
    return f"{table_markdown(summary)}\n{counts}"
