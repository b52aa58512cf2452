"""The bulk `unmask` run on Ray Data: a streamed plan -> the stages (stages.py) -> shard commits.

The input is listed once, page by page, into OUTPUT/_inputs/ (input_plan.py), and a resume reads that
plan instead. `PlannedShards` feeds Ray Data: one read task per segment of the plan, run one at a time,
each listing as far as its segment needs and giving its shards. This pattern keeps the driver flat and
the start quick: Ray Data fixes its read tasks when it plans, and holds a task's output until the task
ends, so one generator over the whole listing would give no shard before the listing ended; segments
that grow fourfold give the first shards after a list request or two, and 16 tasks cover any gallery. The
driver holds no input: it lists only the first page (before it writes anything, so that an empty input
is refused) and counts what the shards' commits report (shard_counts.py).

Shards enter the face-finding stage one per call; from there faces stream in fixed-size batches that span
shards, and the driver commits each shard's rows once all of them came out of the pipeline. A finished
shard's rows file is the commit marker: reruns skip it, and a re-executed task rewrites the same image
objects under the same names (no duplicates).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from unmask_core import corpora, input_plan, listing, shards, storage
from unmask_core.bulk.config import BulkConfig, micro_batch_size, pool_range, settings_pins
from unmask_core.bulk.stages import FaceFindingStage, ImageWriter, ShardCommitter, UnmaskingStage
from unmask_core.config import save_config
from unmask_core.errors import TransientError, UserError
from unmask_core.shard_counts import COUNTS_FILE, CountsKeeper, ShardRanges, committed_shards

ROWS_FOLDER = "rows"
# What a run writes into its output besides config.yaml and summary.json; --overwrite removes them all.
OUTPUT_PARTS = (ROWS_FOLDER, "images", input_plan.INPUTS_FOLDER, COUNTS_FILE, shards.PLAN_FILE)


def check_before_start(cfg: BulkConfig) -> str:
    """The checks that need neither Ray nor the model set's weights, before anything is written: the
    input and the models can be read (every row of a manifest), the output can be written and does not
    hold the input, the detector loads. Returns the detector as the plan pins it.

    An output inside the input folder is allowed: the listing leaves it out."""
    if storage.is_s3(cfg.input) and not listing.is_manifest(cfg.input):
        storage.check_bucket(cfg.input)  # a missing prefix is an empty listing: no list request here
    else:
        storage.check_readable(cfg.input)
    storage.check_readable(cfg.models)
    if listing.is_manifest(cfg.input):
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


class PlannedShards(Datasource):
    """The shards still to do as Ray Data rows (`shard`, and its `records` as JSON: uri, id, size,
    version): one read task per segment of the plan (input_plan.segment_shards). A task that dies is
    retried by Ray; it reads what its first try planned and lists on after it."""

    def __init__(self, cfg: BulkConfig, segments: int, done: ShardRanges) -> None:
        self.input, self.output, self.shard_size = cfg.input, cfg.output, cfg.shard_size
        self.segments, self.done = segments, done

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> list:
        unknown = BlockMetadata(num_rows=None, size_bytes=None, input_files=None, exec_stats=None)
        return [ReadTask(partial(self.read, segment), unknown) for segment in range(self.segments)]

    def estimate_inmemory_data_size(self) -> None:
        return None

    def read(self, segment: int):
        for shard, rows in input_plan.segment_shards(
            self.input, self.output, self.shard_size, segment, self.output, self.done.__contains__
        ):
            yield pa.table({"shard": [shard], "records": [json.dumps(rows.to_pylist())]})


@dataclass
class Start:
    """Where a run starts: what the plan holds, what earlier runs committed."""

    planned: input_plan.Listed
    committed: ShardRanges
    counts: CountsKeeper


def start(cfg: BulkConfig, plan: shards.ShardPlan) -> Start:
    """Check the output's plan against this run's (nothing written before the checks pass), then
    record the plan and the listing's first page (a fresh run), and find what earlier runs did."""
    store = input_plan.PlannedInputs(cfg.output)
    resuming = not cfg.overwrite and shards.check_plan(cfg.output, plan)
    planned = store.listed() if resuming else input_plan.Listed([], None)
    first = None
    if not planned.parts:
        first = next(listing.pages(cfg.input, exclude=cfg.output), None)
        if first is None:
            raise UserError(f"{cfg.input}: no files found")
    if not resuming:
        # --overwrite starts over; a fresh plan drops only bookkeeping that no plan owns any more.
        for part in OUTPUT_PARTS if cfg.overwrite else (input_plan.INPUTS_FOLDER, COUNTS_FILE):
            storage.delete(storage.join(cfg.output, part))
        shards.record_plan(cfg.output, plan)
    save_config(cfg, cfg.output)
    if first is not None:
        part = store.write_part(0, first.table)
        planned = store.complete([part]) if first.last else input_plan.Listed([part], None)
    rows_uri = storage.join(cfg.output, ROWS_FOLDER)
    committed = committed_shards(rows_uri)
    counts = CountsKeeper(cfg.output, rows_uri)
    counts.load(committed)
    return Start(planned, committed, counts)


def run_bulk(cfg: BulkConfig) -> dict[str, Any]:
    import ray

    from unmask_core import ray_session
    from unmask_core.inference import describe_model_set

    detector = check_before_start(cfg)
    input_pin = {"input": storage.path_of(cfg.input)}
    if not cfg.overwrite:  # a resume with other settings is refused before Ray starts
        shards.check_pins(cfg.output, {**input_pin, **settings_pins(cfg, detector, on_gpu=None)})
    # The driver checks the model set (a broken one fails here in one line, not inside an actor) while
    # Ray starts: two waits of seconds each, side by side.
    with ThreadPoolExecutor(1) as pool:
        described = pool.submit(describe_model_set, cfg.models, cfg.matchers)
        ray_session.connect()
        model_info = described.result()
    ray_session.require_resources([{"GPU": cfg.gpus_per_actor}], cfg.resource_timeout, "--gpus-per-actor")
    gpus = cfg.gpus_per_actor
    if gpus < 0:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    pins = {**input_pin, **model_info.provenance, **settings_pins(cfg, detector, on_gpu=gpus > 0)}
    began = start(cfg, shards.ShardPlan(shard_size=cfg.shard_size, pins=pins))
    planned, counts = began.planned, began.counts
    skipped = len(began.committed)
    bar = _progress_bar(planned.inputs, counts.counts.inputs)
    shard_count = _shard_count(planned.inputs, cfg.shard_size)
    if shard_count is None or skipped < shard_count:
        inputs_left = None if planned.inputs is None else planned.inputs - counts.counts.inputs
        shards_left = None if shard_count is None else shard_count - skipped
        ds = _pipeline(cfg, began, gpus, inputs_left, shards_left)
        committer = ShardCommitter(cfg.output, model_info.provenance, model_info.embedding_dims)
        try:
            # No prefetch: with Ray's default of one, a block reaches this loop only once the next one
            # exists, so a finished shard would wait uncommitted behind a stalled one.
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0):
                bar.update(committer.add(batch))
                _count(committer.committed(), counts)
            _count(committer.finish(), counts)
        except Exception as exc:
            # Every shard that completed is committed before the job stops; the rest wait for a rerun.
            committer.drain()
            _count(committer.committed(ignore_failures=True), counts)
            with contextlib.suppress(UserError, TransientError):  # else the rerun reads their footers
                counts.save()
            bar.close()
            raise shards.job_failure(exc) from exc
    bar.close()
    counts.save()
    planned = input_plan.PlannedInputs(cfg.output).listed()
    summary = summarize(planned, counts.counts, skipped, len(counts.counts.shards) - skipped, cfg.shard_size)
    storage.write_json(storage.join(cfg.output, "summary.json"), summary)
    return summary


def _shard_count(inputs: int | None, shard_size: int) -> int | None:
    return None if inputs is None else -(-inputs // shard_size)


def _progress_bar(total: int | None, done: int):
    """Images of the whole job, `done` of them by earlier runs (their rate is not this run's)."""
    from unmask_core.progress import progress_bar

    return progress_bar(total, "unmask", done=done)


def _count(committed: list[tuple[int, dict]], counts: CountsKeeper) -> None:
    for shard, summary in committed:
        counts.add(shard, summary)


def _pipeline(cfg: BulkConfig, began: Start, gpus: float, inputs_left: int | None, shards_left: int | None):
    import ray

    from unmask_core import ray_session

    on_device = not cfg.aligned and (
        cfg.face_finding == "device" or (cfg.face_finding == "auto" and gpus > 0)
    )
    # On an autoscaling cluster the CPUs present at start say little: then pass --cpu-actors.
    cpu_low, cpu_high = (
        pool_range(cfg.cpu_actors, "--cpu-actors") if cfg.cpu_actors else (1, ray_session.half_the_cpus())
    )
    most_shards = shards_left or 1 << 30
    unmask_pool = ray_session.actor_pool(*pool_range(cfg.actors, "--actors"), most_shards)
    # No more GPUs than the unmask pool can use: Ray Data's own cluster autoscaler otherwise asks for
    # twice the GPUs in use, which an autoscaler may meet with a larger GPU node type (an 8-GPU
    # training node) that no actor of this job will ever use.
    options = ray.data.DataContext.get_current().execution_options
    options.resource_limits = options.resource_limits.copy(gpu=unmask_pool.max_size * gpus)
    source = PlannedShards(
        cfg, input_plan.segments_for(began.planned.inputs, cfg.shard_size), began.committed
    )
    batch_size = (
        cfg.batch_size
        if inputs_left is None
        else micro_batch_size(cfg.batch_size, inputs_left, unmask_pool.max_size)
    )
    return (
        # One segment at a time: each lists on after the one before.
        ray.data.read_datasource(source, compute=ray.data.TaskPoolStrategy(size=1))
        # A segment's shards leave its task as one block: split, so that every CPU actor gets some.
        .repartition(target_num_rows_per_block=1)
        .map_batches(
            FaceFindingStage,
            fn_constructor_args=(cfg, not on_device),
            batch_size=FaceFindingStage.BATCH_SIZE,
            batch_format="numpy",
            compute=ray_session.actor_pool(cpu_low, cpu_high, most_shards),
            **FaceFindingStage.RESOURCES,
            **ray_session.retry_args(),
        )
        .map_batches(
            UnmaskingStage,
            fn_constructor_args=(cfg, on_device),
            # A fixed batch size (Ray requires one for GPU actors): rows of any shards fill it
            # (faces, or photos when faces are found on the device).
            batch_size=batch_size,
            batch_format="pyarrow",
            compute=unmask_pool,
            **UnmaskingStage.resources(gpus),
            **ray_session.retry_args(),
        )
        .map_batches(
            ImageWriter,
            fn_constructor_args=(cfg.output, cfg.image_format, cfg.jpeg_quality),
            batch_size=ImageWriter.BATCH_SIZE,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=2),
            **ImageWriter.RESOURCES,
            **ray_session.retry_args(),
        )
    )


def summarize(planned: input_plan.Listed, counts, skipped: int, processed: int, shard_size: int) -> dict:
    """The run's summary from the counts its commits reported (no rows read back)."""
    inputs = planned.inputs if planned.inputs is not None else counts.inputs
    summary = {
        "inputs": inputs,
        "rows": counts.rows,
        "inputs_with_rows": counts.inputs,
        "faces_unmasked": counts.status_counts.get("ok", 0),
        "status_counts": dict(sorted(counts.status_counts.items())),
        "shards_processed": processed,
        "shards_skipped": skipped,
        "internal_errors": counts.internal_errors,
        "first_internal_error": counts.first_internal_error,
        "input_fingerprint": planned.fingerprint,
        # Photos decoded on the unmask actors' device, and those their CPU decoded instead.
        **{f"decoded_on_{where}": n for where, n in sorted(counts.decoded_on.items())},
    }
    summary["reconciled"] = (
        planned.complete
        and counts.inputs == inputs
        and counts.shards.covers(_shard_count(inputs, shard_size) or 0)
    )
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
