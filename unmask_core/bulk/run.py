"""The bulk `unmask` run on Ray Data: list inputs -> deterministic shards -> the stages (stages.py).

Shards enter the face-finding stage one per call; from there faces stream in fixed-size batches that span
shards, and the driver commits each shard's rows once all of them came out of the pipeline. A finished
shard's rows file is the commit marker: reruns skip it, and a re-executed task rewrites the same image
objects under the same names (no duplicates).
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from unmask_core import corpora, data, shards, storage
from unmask_core.bulk.config import BulkConfig, image_pins, micro_batch_size, pool_range
from unmask_core.bulk.stages import FaceFindingStage, ImageWriter, ShardCommitter, UnmaskingStage
from unmask_core.errors import UserError


def list_inputs(uri: str) -> list[data.ImageRecord]:
    """Every file under a prefix (whatever its name: a non-image becomes a `decode_error` row), or the
    rows of a manifest."""
    storage.check_readable(uri)
    if uri.lower().endswith((".csv", ".parquet")):
        return sorted(corpora.read_manifest(uri), key=lambda r: r.id)
    records = [
        data.ImageRecord(uri=u, identity="", id=storage.relative_key(uri, u)) for u in storage.list_files(uri)
    ]
    if not records:
        raise UserError(f"{uri}: no files found")
    return sorted(records, key=lambda r: r.id)


def run_bulk(cfg: BulkConfig) -> dict[str, Any]:
    import ray

    from unmask_core import ray_session
    from unmask_core.inference import describe_model_set

    storage.check_writable(cfg.output)
    # The driver checks the model set (a broken one fails here in one line, not inside an actor) while
    # Ray starts: two waits of about 5 s each on 2 cores, now side by side.
    with ThreadPoolExecutor(1) as pool:
        described = pool.submit(describe_model_set, cfg.models, cfg.matchers)
        records = list_inputs(cfg.input)
        ray_session.connect()
        model_info = described.result()
    ray_session.require_resources([{"GPU": cfg.gpus_per_actor}], cfg.resource_timeout, "--gpus-per-actor")
    payload = [{"uri": r.uri, "id": r.id} for r in records]
    if cfg.overwrite:
        storage.delete(storage.join(cfg.output, "images"))
    pins = {**model_info.provenance, **image_pins(cfg)}
    run = shards.start_job(cfg, "rows", payload, records, pins=pins)
    bar = run.progress_bar("unmask")
    if run.todo:
        todo = run.todo_payloads()
        gpus = cfg.gpus_per_actor
        if gpus < 0:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        on_device = not cfg.aligned and (
            cfg.face_finding == "device" or (cfg.face_finding == "auto" and gpus > 0)
        )
        # On an autoscaling cluster the CPUs present at start say little: then pass --cpu-actors.
        cpu_low, cpu_high = (
            pool_range(cfg.cpu_actors, "--cpu-actors") if cfg.cpu_actors else (1, ray_session.half_the_cpus())
        )
        unmask_pool = ray_session.actor_pool(*pool_range(cfg.actors, "--actors"), len(todo))
        ds = (
            ray.data.from_items(todo, override_num_blocks=len(todo))
            .map_batches(
                FaceFindingStage,
                fn_constructor_args=(cfg, not on_device),
                batch_size=1,
                batch_format="numpy",
                compute=ray_session.actor_pool(cpu_low, cpu_high, len(todo)),
                num_cpus=1,
                **ray_session.retry_args(),
            )
            .map_batches(
                UnmaskingStage,
                fn_constructor_args=(cfg, on_device),
                # A fixed batch size (Ray requires one for GPU actors): rows of any shards fill it
                # (faces, or photos when faces are found on the device).
                batch_size=micro_batch_size(
                    cfg.batch_size, run.n_items - run.items_done, unmask_pool.max_size
                ),
                batch_format="pyarrow",
                compute=unmask_pool,
                num_gpus=gpus,
                # A GPU actor asks for no CPU slot: CPU-stage actors that reach a new GPU node first
                # would otherwise take all its CPUs, leave the GPU actor pending, and make the
                # autoscaler start another GPU node (an 8-GPU training node, if that is what fits).
                num_cpus=0 if gpus else 1,
                **ray_session.retry_args(),
            )
            .map_batches(
                ImageWriter,
                fn_constructor_args=(cfg.output, cfg.image_format, cfg.jpeg_quality),
                batch_size=None,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=2),
                num_cpus=0.25,
                **ray_session.retry_args(),
            )
        )
        committer = ShardCommitter(cfg.output, model_info.provenance, model_info.embedding_dims)
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            committer.add(batch)
            for inputs in committer.committed():
                bar.update(inputs)
        for inputs in committer.finish():
            bar.update(inputs)
    bar.close()
    summary = summarize(cfg.output, records, skipped_shards=len(run.done), processed_shards=len(run.todo))
    if run.todo:  # photos decoded on the unmask actors' device, and those their CPU decoded instead
        summary.update({f"decoded_on_{where}": n for where, n in sorted(committer.decoded.items())})
    storage.write_json(storage.join(cfg.output, "summary.json"), summary)
    return summary


def summarize(
    out_uri: str, records: list[data.ImageRecord], skipped_shards: int, processed_shards: int
) -> dict:
    table = shards.read_rows(storage.join(out_uri, "rows"), columns=["id", "status", "error"])
    ids = table.column("id").to_pylist()
    statuses = Counter(table.column("status").to_pylist())
    input_ids = {r.id for r in records}
    covered = set(ids)
    summary = {
        "inputs": len(records),
        "rows": len(ids),
        "inputs_with_rows": len(covered & input_ids),
        "faces_unmasked": statuses.get("ok", 0),
        "status_counts": dict(sorted(statuses.items())),
        "shards_processed": processed_shards,
        "shards_skipped": skipped_shards,
        **shards.internal_errors(table.to_pylist()),
    }
    summary["reconciled"] = covered == input_ids
    return summary


def format_summary(summary: dict) -> str:
    lines = [
        f"inputs {summary['inputs']}, rows {summary['rows']}, faces unmasked {summary['faces_unmasked']}",
        "status: " + ", ".join(f"{k} {v}" for k, v in summary["status_counts"].items()),
        f"shards: {summary['shards_processed']} processed, {summary['shards_skipped']} already done",
        "every input has a row" if summary["reconciled"] else "SOME INPUTS HAVE NO ROW",
        *shards.internal_error_lines(summary),
    ]
    return "\n".join(lines)
