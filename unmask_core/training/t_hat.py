"""Stage `real` (METHOD.md, "Training" 4): T-hat, the latent targets of RMFRD's real-mask rows, and the
stage's dataset.

T-hat: for the real-mask training rows, codes whose image g(w) matches M on the periorbital region
(found by latent optimisation, g frozen), the target of L_LR. Computed once per image and cached next to
the pairs, keyed by everything that determines them, in resumable shards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from unmask_core import shards, storage
from unmask_core.data import REAL_MASK_KIND, png_to_tensor
from unmask_core.errors import UserError
from unmask_core.inversion import InversionResult, optimise_latents
from unmask_core.training.batches import decode_batch, periorbital_regions
from unmask_core.training.config import TrainConfig
from unmask_core.training.loop import decode

T_HAT_FOLDER = "t_hat"
T_HAT_SHARD_SIZE = 32  # rows per cache shard: the unit of resume (and of one optimisation task)
T_HAT_BATCH = 8  # images optimised together, each with its own codes and its own term of the loss
_T_HAT_VERSION = 1  # part of the cache key: bump when the optimisation itself changes


@dataclass(frozen=True)
class THatSettings(shards.CacheSettings):
    """Everything that decides the T-hat codes of an image; its hash names the cache folder."""

    generator_sha256: str
    baseline_sha256: str
    start: str  # 'f0': codes start at f0(M); 'latent_avg': f0 is untrained, start at the average latent
    image_size: int
    steps: int
    lr: float
    lpips_weight: float
    lpips_backbone: str
    version: int = _T_HAT_VERSION


def t_hat_settings(cfg: TrainConfig) -> THatSettings:
    """The T-hat settings of a `real` stage run: g from --models, f0 from the encoders' model set
    (--init-from when given, as for the encoder being trained)."""
    from unmask_core.models.model_set import ModelSet

    models = ModelSet(cfg.models)
    encoders = ModelSet(cfg.init_from) if cfg.init_from else models
    untrained = "baseline" in encoders.manifest.get("random_init", [])
    return THatSettings(
        generator_sha256=models.sha256("generator"),
        baseline_sha256=encoders.sha256("baseline"),
        start="latent_avg" if untrained else "f0",
        image_size=models.image_size,
        steps=cfg.t_hat_steps,
        lr=cfg.t_hat_lr,
        lpips_weight=cfg.t_hat_lpips_weight,
        lpips_backbone=cfg.lpips_backbone if cfg.t_hat_lpips_weight else "",
    )


def real_mask_rows(pairs_uri: str, columns: list[str], split: str = "train") -> pa.Table:
    """The usable real-mask rows of a split, sorted by id."""
    import pyarrow.compute as pc

    table = shards.read_rows(
        storage.join(pairs_uri, "pairs"), columns=sorted({"id", "status", "split", "mask_kind", *columns})
    )
    keep = pc.and_(
        pc.and_(pc.equal(table["status"], "ok"), pc.equal(table["split"], split)),
        pc.equal(table["mask_kind"], REAL_MASK_KIND),
    )
    return table.filter(keep).sort_by("id").select(columns)


def t_hat_uri(pairs_uri: str, settings: THatSettings) -> str:
    return storage.join(pairs_uri, T_HAT_FOLDER, settings.key)


def ensure_t_hat_codes(cfg: TrainConfig) -> str:
    """Compute the T-hat codes that the cache lacks for the real-mask training rows; returns the cache
    folder (`PAIRS/t_hat/<key>/shard-*.parquet`, columns id, codes, l2_start, l2_final).

    Rows are cut into fixed shards by id; each shard is one Ray task (a GPU one with --gpu) and one
    file written atomically, so a later run, or a rerun after a failure, only does missing shards."""
    import ray

    settings = t_hat_settings(cfg)
    out = t_hat_uri(cfg.pairs, settings)
    rows = real_mask_rows(cfg.pairs, ["id", "M", "eyes"])
    if not len(rows):
        raise UserError(f"{cfg.pairs}: no real-mask training rows (prepare it with --corpus rmfrd)")
    ids = rows["id"].to_pylist()
    run = shards.start_run(out, out, list(range(len(ids))), ids, T_HAT_SHARD_SIZE)
    shards.record_cache_settings(out, settings)
    if run.todo:
        task = ray.remote(num_cpus=1, num_gpus=1 if cfg.gpu else 0)(_t_hat_shard)
        encoders = cfg.init_from or cfg.models
        pending = [
            task.remote(
                rows.slice(run.chunks[i][0], len(run.chunks[i])),
                cfg.models,
                encoders,
                settings,
                cfg.lpips_backbone,
                run.shard_file(i),
                cfg.gpu,
            )
            for i in run.todo
        ]
        ray.get(pending)
    return out


def _t_hat_shard(
    rows: pa.Table,
    models_uri: str,
    encoders_uri: str,
    settings: THatSettings,
    lpips_backbone: str,
    out_file: str,
    gpu: bool,
) -> None:
    device = "cuda" if gpu and torch.cuda.is_available() else "cpu"
    codes, l2_start, l2_final = compute_t_hat(
        rows, models_uri, encoders_uri, settings, lpips_backbone, device
    )
    table = pa.table(
        {
            "id": rows["id"],
            "codes": pa.array(list(codes.reshape(len(codes), -1)), type=pa.list_(pa.float32())),
            "l2_start": pa.array(l2_start, type=pa.float32()),
            "l2_final": pa.array(l2_final, type=pa.float32()),
        }
    )
    shards.write_table_atomic(out_file, table)


def compute_t_hat(
    rows: pa.Table,
    models_uri: str,
    encoders_uri: str,
    settings: THatSettings,
    lpips_backbone: str = "random",
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows with M (PNG) and eyes -> (codes [N, n_latent, style_dim], periorbital L2 before and after).

    Starts from f0(M) (or the average latent when f0 is untrained) and minimises the periorbital L2
    between g(w) and M (plus LPIPS when its weight is set) with `optimise_t_hat`, g frozen, images
    compared at the size the encoder sees."""
    from unmask_core.losses import reconstruction_loss
    from unmask_core.models.model_set import ModelSet
    from unmask_core.models.public import load_lpips

    size = settings.image_size
    models = ModelSet(models_uri, device=device)
    if models.sha256("generator") != settings.generator_sha256:
        raise UserError(f"{models_uri}: its generator is not the one these T-hat settings name")
    generator = models.generator().eval()
    f0 = ModelSet(encoders_uri, device=device).encoder("baseline").eval().requires_grad_(False)
    lpips_net = None
    if settings.lpips_weight:
        backbone = None if lpips_backbone == "random" else lpips_backbone
        lpips_net = load_lpips(backbone, spatial=True).to(device)
    masked_png, eyes = rows["M"].to_pylist(), rows["eyes"].to_pylist()
    codes, before, after = [], [], []
    for start in range(0, len(masked_png), T_HAT_BATCH):
        chunk = slice(start, start + T_HAT_BATCH)
        masked = torch.from_numpy(np.stack([png_to_tensor(png, size) for png in masked_png[chunk]])).to(
            device
        )
        region = torch.from_numpy(periorbital_regions(eyes[chunk], size)).to(device)
        with torch.no_grad():
            if settings.start == "f0":
                initial = f0(masked)
            else:
                initial = f0.latent_avg[None].expand(len(masked), -1, -1).clone()
        result = optimise_t_hat(
            generator, masked, region, initial, settings.steps, settings.lr, lpips_net, settings.lpips_weight
        )
        with torch.no_grad():
            for w, sink in ((initial, before), (result.codes, after)):
                image = decode(generator, w, size)
                sink += [
                    float(reconstruction_loss(masked[i : i + 1], image[i : i + 1], region[i : i + 1]))
                    for i in range(len(w))
                ]
        codes.append(result.codes.cpu().numpy().astype(np.float32))
    return np.concatenate(codes), np.array(before, np.float32), np.array(after, np.float32)


class _OffsetGenerator(nn.Module):
    """delta [B, 1, style_dim] -> g(start + delta): one offset in W moves every W+ layer alike."""

    def __init__(self, generator: nn.Module, start: torch.Tensor, size: int) -> None:
        super().__init__()
        self.generator, self.size = generator, size
        self.register_buffer("start", start.detach())

    def forward(self, delta: torch.Tensor) -> torch.Tensor:
        return decode(self.generator, self.start + delta, self.size)


def optimise_t_hat(
    generator: nn.Module,
    masked: torch.Tensor,
    region: torch.Tensor,
    start: torch.Tensor,
    steps: int,
    lr: float,
    lpips_net: nn.Module | None = None,
    lpips_weight: float = 0.0,
) -> InversionResult:
    """T-hat's codes: `start` (f0(M) or the average latent, [B, n_latent, style_dim]) plus one offset in
    W shared by all layers, found by `optimise_latents` on the periorbital loss against M.

    Why one shared offset rather than free W+ codes: the region is a small part of the face, and free
    W+ codes match it through directions that leave the true latent behind. On a known latent
    (bench/latent_optimisation.py) free W+ codes drift away from it while a shared offset moves
    towards it, at a similar fit; a shared offset also keeps f0's layer structure, so T-hat stays a
    face g was trained to make."""
    model = _OffsetGenerator(generator, start, masked.shape[-1])
    initial = torch.zeros_like(start[:, :1])
    result = optimise_latents(model, masked, region, initial, steps, lr, lpips_net, lpips_weight)
    return InversionResult(codes=(start + result.codes).detach(), history=result.history)


def read_t_hat_codes(cache_uri: str, n_latent: int, style_dim: int) -> dict[str, np.ndarray]:
    """id -> codes [n_latent, style_dim] from a T-hat cache folder."""
    table = shards.read_rows(cache_uri, columns=["id", "codes"])
    flat = table["codes"].to_pylist()
    return {
        row_id: np.asarray(values, dtype=np.float32).reshape(n_latent, style_dim)
        for row_id, values in zip(table["id"].to_pylist(), flat)
    }


def real_stage_dataset(cfg: TrainConfig, size: int):
    """Ray Data dataset of stage `real`: the real-mask training rows (M, T_ref, eyes) with their T-hat
    codes, decoded by `decode_batch(..., 'real')`; computes missing T-hat codes first.

    RMFRD is small (hundreds of training images, a few hundred MB with both PNGs), so the rows are
    joined with the cache on the driver and handed to Ray Data with `from_arrow`; a corpus of millions
    would need a distributed join instead."""
    import ray
    from ray.data.extensions import ArrowTensorArray

    from unmask_core.models.model_set import ModelSet

    cache = ensure_t_hat_codes(cfg)
    models = ModelSet(cfg.models)
    codes_by_id = read_t_hat_codes(cache, models.n_latent, int(models.manifest["style_dim"]))
    rows = real_mask_rows(cfg.pairs, ["id", "M", "T_ref", "eyes"])
    missing = [i for i in rows["id"].to_pylist() if i not in codes_by_id]
    if missing:
        raise UserError(f"{cache}: no T-hat codes for {len(missing)} rows, e.g. {missing[0]!r}")
    codes = np.stack([codes_by_id[i] for i in rows["id"].to_pylist()])
    table = pa.table(
        {
            "M": rows["M"],
            "T_ref": rows["T_ref"],
            "eyes": rows["eyes"],
            "T_hat_codes": ArrowTensorArray.from_numpy(codes),
        }
    )
    ds = ray.data.from_arrow(table)
    return ds.map_batches(decode_batch, fn_kwargs={"size": size, "stage": cfg.stage}, batch_format="numpy")
