"""The bulk `unmask` run on Ray Data: list inputs -> deterministic shards -> the stages (stages.py).

Shards enter the face-finding stage one per call; from there faces stream in fixed-size batches that span
shards, and the driver commits each shard's rows once all of them came out of the pipeline. A finished
shard's rows file is the commit marker: reruns skip it, and a re-executed task rewrites the same image
objects under the same names (no duplicates).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from unmask_core import corpora, data, shards, storage
from unmask_core.bulk.config import BulkConfig, micro_batch_size, pool_range, settings_pins
from unmask_core.bulk.stages import FaceFindingStage, ImageWriter, ShardCommitter, UnmaskingStage
from unmask_core.errors import UserError


def is_manifest(uri: str) -> bool:
    return uri.lower().endswith((".csv", ".parquet"))


def list_inputs(uri: str, output: str | None = None) -> list[data.ImageRecord]:
    """Every file under a prefix (whatever its name: a non-image becomes a `decode_error` row), or the
    rows of a manifest. Files under `output`, when it lies inside the prefix, are not inputs."""
    storage.check_readable(uri)
    if is_manifest(uri):
        return sorted(corpora.read_manifest(uri), key=lambda r: r.id)
    records = [
        data.ImageRecord(uri=u, identity="", id=storage.relative_key(uri, u))
        for u in storage.list_files(uri)
        if output is None or not storage.is_within(u, output)
    ]
    if not records:
        raise UserError(f"{uri}: no files found")
    return sorted(records, key=lambda r: r.id)


def check_before_start(cfg: BulkConfig) -> str:
    """The checks that need neither Ray nor the model set's weights, before anything is written: the
    input and the models can be read (every row of a manifest), the output can be written and does not
    hold the input, the detector loads. Returns the detector as the plan pins it.

    An output inside the input folder is allowed: the listing leaves it out (`list_inputs`)."""
    storage.check_readable(cfg.input)
    storage.check_readable(cfg.models)
    if is_manifest(cfg.input):
        corpora.check_manifest(cfg.input)
    elif storage.is_within(cfg.input, cfg.output):
        raise UserError(f"--input {cfg.input} lies inside --output {cfg.output}: use another output")
    storage.check_writable(cfg.output)
    return detector_pin(cfg.detector)


def detector_pin(spec: str) -> str:
    """'mtcnn', or the ONNX file of an insightface detector folder with its hash (another file under
    the same folder name gives other faces). A folder that holds no readable detector is refused."""
    if spec.lower() == "mtcnn":
        return "mtcnn"
    from unmask_core.faces.detect import find_detector_onnx

    if not Path(spec).is_dir():
        raise UserError(
            f"--detector {spec}: no such folder (expected mtcnn, or a folder with a detector ONNX)"
        )
    try:
        onnx_file = find_detector_onnx(spec)
        digest = hashlib.sha256(onnx_file.read_bytes()).hexdigest()
    except UserError:
        raise
    except Exception as exc:  # protobuf and OS errors of a damaged file
        raise UserError(f"--detector {spec}: its ONNX cannot be read ({type(exc).__name__})") from exc
    return f"{onnx_file.name} sha256:{digest[:16]}"


def run_bulk(cfg: BulkConfig) -> dict[str, Any]:
    import ray

    from unmask_core import ray_session
    from unmask_core.inference import describe_model_set

    detector = check_before_start(cfg)
    if not cfg.overwrite:  # a resume with other settings is refused before Ray starts
        shards.check_pins(cfg.output, settings_pins(cfg, detector, on_gpu=None))
    # The driver checks the model set (a broken one fails here in one line, not inside an actor) while
    # Ray starts: two waits of about 5 s each on 2 cores, now side by side.
    with ThreadPoolExecutor(1) as pool:
        described = pool.submit(describe_model_set, cfg.models, cfg.matchers)
        records = list_inputs(cfg.input, cfg.output)
        ray_session.connect()
        model_info = described.result()
    gpus = cfg.gpus_per_actor
    if gpus < 0:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    payload = [{"uri": r.uri, "id": r.id} for r in records]
    pins = {**model_info.provenance, **settings_pins(cfg, detector, on_gpu=gpus > 0)}
    run = shards.start_job(cfg, "rows", payload, records, pins=pins)
    if cfg.overwrite:
        storage.delete(storage.join(cfg.output, "images"))
    bar = run.progress_bar("unmask")
    if run.todo:
        todo = run.todo_payloads()
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
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                committer.add(batch)
                for inputs in committer.committed():
                    bar.update(inputs)
            for inputs in committer.finish():
                bar.update(inputs)
        except Exception as exc:
            # Every shard that completed is committed before the job stops; the rest wait for a rerun.
            committer.drain()
            bar.close()
            raise shards.job_failure(exc) from exc
    bar.close()
    summary = summarize(cfg.output, records, skipped_shards=len(run.done), processed_shards=len(run.todo))
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
