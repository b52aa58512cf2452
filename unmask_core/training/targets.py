"""`train --cache-targets`: the frozen networks' view of T, computed once per training pair instead of at
every step.

In stage `unmask` the step runs f0(T) (the target of L_LR, eq. 8) and ArcFace(T) (the identity target,
eq. 7) on every sample of every epoch, though neither changes while f trains: a share of the step's
FLOPs and time that BENCHMARKS.md's training section measures. Stage `baseline` has ArcFace(T).
With the flag they are computed in one pass before training and cached next to the pairs:

    PAIRS/targets/<key>/<pairs file>.parquet    columns id, codes, embedding (float32)

one cache file per pairs file, holding that file's training rows. `key` hashes what decides the values
(f0's and ArcFace's sha256, the image size), so a new f0 gets a new cache and a rerun reuses the old
one; a missing cache file is computed again, an existing one is never rewritten (written atomically).

Training reads the pairs with their file paths, and each decode task looks its rows up in the cache
file of their pairs file: a join by file, with no shuffle of the PNG bytes, done again every epoch.
This module imports no torch at the top: the lookup runs in Ray Data's decode workers.
"""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from unmask_core import shards, storage
from unmask_core.errors import UserError

TARGETS_FOLDER = "targets"
TARGETS_BATCH = 32  # images through f0 and ArcFace at once
_TARGETS_VERSION = 1  # part of the cache key: bump when what is computed changes


@dataclass(frozen=True)
class TargetSettings(shards.CacheSettings):
    """What decides the cached values; its hash names the cache folder. An empty sha256 means that
    part is not cached (baseline: no f0(T); --id-weight 0: no ArcFace(T))."""

    baseline_sha256: str
    arcface_sha256: str
    image_size: int
    version: int = _TARGETS_VERSION


def target_settings(cfg) -> TargetSettings:
    """The cache settings of a training run: f0 from --init-from when given (as the teacher is), else
    from --models; ArcFace from --models."""
    from unmask_core.models.model_set import ModelSet

    models = ModelSet(cfg.models)
    encoders = ModelSet(cfg.init_from) if cfg.init_from else models
    return TargetSettings(
        baseline_sha256=encoders.sha256("baseline") if cfg.spec.needs_teacher_codes(cfg) else "",
        arcface_sha256=models.sha256("arcface") if cfg.spec.needs_target_embedding(cfg) else "",
        image_size=models.image_size,
    )


@dataclass(frozen=True)
class TargetsLookup:
    """Finds the cached targets of pairs rows (given their ids and the paths Ray Data read them from);
    picklable, so it travels to the decode tasks."""

    cache_uri: str
    pairs_path: str  # the pairs folder as the pyarrow filesystem names it (no scheme)

    def columns(self, ids, paths) -> dict[str, np.ndarray]:
        """`target_codes` [B, n_latent, style_dim] and/or `target_embedding` [B, dim], float32."""
        found: dict[str, list[np.ndarray]] = {}
        for row_id, path in zip(ids, paths):
            cache_file = storage.join(self.cache_uri, cache_name(self.pairs_path, path))
            index, arrays = _read_cache_file(cache_file)
            if row_id not in index:
                raise UserError(
                    f"{cache_file}: no cached targets for pair {row_id!r} (the pairs changed after the "
                    f"cache was made?); delete {self.cache_uri} and train again"
                )
            for name, values in arrays.items():
                found.setdefault(name, []).append(values[index[row_id]])
        return {name: np.stack(values) for name, values in found.items()}


@functools.lru_cache(maxsize=8)
def _read_cache_file(uri: str) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """A cache file as (id -> row, {column: array}); kept per decode worker, which sees the rows of a
    pairs file in several batches."""
    fs, path = storage.pyarrow_filesystem(uri)
    table = pq.read_table(path, filesystem=fs)
    meta = json.loads(table.schema.metadata[b"unmask_targets"])
    arrays = {}
    for column, name in (("codes", "target_codes"), ("embedding", "target_embedding")):
        if column in table.column_names:
            flat = table[column].combine_chunks().values.to_numpy(zero_copy_only=False)
            arrays[name] = flat.reshape(len(table), *meta[f"{column}_shape"])
    return {row_id: i for i, row_id in enumerate(table["id"].to_pylist())}, arrays


def cache_name(pairs_path: str, file_path: str) -> str:
    """A pairs file's cache file name: its path below the pairs folder, made safe."""
    prefix = pairs_path.rstrip("/") + "/"
    relative = file_path[len(prefix) :] if file_path.startswith(prefix) else file_path.rsplit("/", 1)[-1]
    return storage.safe_relative_path(relative)


def targets_uri(pairs_uri: str, settings: TargetSettings) -> str:
    return storage.join(pairs_uri, TARGETS_FOLDER, settings.key)


def ensure_targets(cfg) -> TargetsLookup:
    """Compute the cache files that are missing for the training rows of `cfg.pairs` (one Ray task per
    pairs file, a GPU task with --gpu), then return the lookup for the training pipeline."""
    import pyarrow.dataset as pads
    import ray

    settings = target_settings(cfg)
    out = targets_uri(storage.absolute(cfg.pairs), settings)
    pairs_uri = storage.join(cfg.pairs, "pairs")
    fs, pairs_path = storage.pyarrow_filesystem(pairs_uri)
    files = sorted(pads.dataset(pairs_path, filesystem=fs, format="parquet").files)
    found = storage.list_files(out, (".parquet",)) if storage.exists(out) else []
    have = {storage.relative_key(out, uri) for uri in found}
    todo = [f for f in files if cache_name(pairs_path, f) not in have]
    shards.record_cache_settings(out, settings)
    print(
        f"targets: cached in {out}: {len(files) - len(todo)} of {len(files)} pairs files, computing "
        f"{len(todo)}",
        file=sys.stderr,
    )
    if todo:
        task = ray.remote(num_cpus=1, num_gpus=1 if cfg.gpu else 0)(_cache_pairs_file)
        models, encoders = storage.absolute(cfg.models), storage.absolute(cfg.init_from or cfg.models)
        scheme = "s3://" if storage.is_s3(pairs_uri) else ""
        cache_files = [storage.join(out, cache_name(pairs_path, f)) for f in todo]
        ray.get(
            [
                task.remote(scheme + f, cache_file, models, encoders, settings, cfg.gpu)
                for f, cache_file in zip(todo, cache_files)
            ]
        )
    return TargetsLookup(out, pairs_path)


def _cache_pairs_file(
    pairs_file: str, cache_file: str, models_uri: str, encoders_uri: str, settings: TargetSettings, gpu: bool
) -> None:
    import torch

    fs, path = storage.pyarrow_filesystem(pairs_file)
    rows = pq.read_table(path, filesystem=fs, columns=["id", "T", "status", "split"])
    rows = rows.filter(pc.and_(pc.equal(rows["status"], "ok"), pc.equal(rows["split"], "train")))
    device = "cuda" if gpu and torch.cuda.is_available() else "cpu"
    values = compute_targets(rows["T"].to_pylist(), models_uri, encoders_uri, settings, device)
    columns: dict[str, pa.Array] = {"id": rows["id"]}
    meta = {}
    for column, array in values.items():
        meta[f"{column}_shape"] = list(array.shape[1:])
        flat = pa.array(array.reshape(-1), type=pa.float32())
        columns[column] = pa.FixedSizeListArray.from_arrays(flat, int(np.prod(array.shape[1:])))
    table = pa.table(columns).replace_schema_metadata({"unmask_targets": json.dumps(meta)})
    shards.write_table_atomic(cache_file, table)


def compute_targets(
    t_pngs: list[bytes], models_uri: str, encoders_uri: str, settings: TargetSettings, device: str = "cpu"
) -> dict[str, np.ndarray]:
    """T images (PNG) -> {"codes": f0(T) [N, n_latent, style_dim], "embedding": ArcFace(T) [N, dim]},
    each present when its sha256 is set, from the same input the training step gives its networks."""
    import torch

    from unmask_core.models.irse import id_preprocess
    from unmask_core.models.model_set import ModelSet
    from unmask_core.training.batches import png_to_uint8
    from unmask_core.training.loop import normalise_images

    models = ModelSet(models_uri, device=device)
    networks = {}
    if settings.baseline_sha256:
        encoders = ModelSet(encoders_uri, device=device)
        _check_sha(encoders, "baseline", settings.baseline_sha256)
        networks["codes"] = encoders.encoder("baseline").eval().requires_grad_(False)
    if settings.arcface_sha256:
        _check_sha(models, "arcface", settings.arcface_sha256)
        arcface = models.arcface()
        networks["embedding"] = lambda x: arcface(id_preprocess(x, arcface.input_size))
    out: dict[str, list[np.ndarray]] = {name: [] for name in networks}
    for start in range(0, len(t_pngs), TARGETS_BATCH):
        pngs = t_pngs[start : start + TARGETS_BATCH]
        chunk = np.stack([png_to_uint8(png, settings.image_size) for png in pngs])
        images = normalise_images({"T": torch.from_numpy(chunk).to(device)})["T"]
        with torch.no_grad():
            for name, network in networks.items():
                out[name].append(network(images).float().cpu().numpy())
    return {name: np.concatenate(parts) for name, parts in out.items() if parts}  # none for no rows


def _check_sha(models, name: str, expected: str) -> None:
    if models.sha256(name) != expected:
        raise UserError(f"{models.uri}: its {name} is not the one the target cache settings name")
