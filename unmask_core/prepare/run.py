"""The `prepare` run: corpus -> aligned (T, M) pairs as Parquet shards, split by identity.

Ray Data runs a pool of actors; each keeps its layout's pair maker (and its face detector) loaded and
turns whole shards into Parquet files (pairs and error rows together), written atomically, so reruns
skip finished shards.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa

from unmask_core import corpora, data, shards, storage
from unmask_core.prepare.config import PrepareConfig
from unmask_core.prepare.pairs import SyntheticPairMaker
from unmask_core.prepare.rmfrd import RMFRDPairMaker, add_reference_candidates

PAIR_MAKERS = {"synthetic": SyntheticPairMaker, "rmfrd": RMFRDPairMaker}


class ShardWorker:
    """Ray Data actor: one call = one shard, written atomically; returns the shard's counts."""

    def __init__(self, cfg: PrepareConfig, rows_uri: str) -> None:
        self.maker = PAIR_MAKERS[corpora.layout(cfg.corpus).pairs](cfg)
        self.rows_uri = rows_uri

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        summaries = []
        for index, payload in zip(batch["shard"], batch["records"]):
            items = json.loads(payload)
            rows = [self.maker.make(data.ImageRecord(**it["record"]), it["split"], it) for it in items]
            table = pa.Table.from_pylist(rows, schema=data.PAIRS_SCHEMA)
            shards.write_table_atomic(shards.shard_file(self.rows_uri, int(index)), table)
            summaries.append(json.dumps(_count(rows)))
        return {"summary": summaries}


def _count(rows: list[dict]) -> dict:
    return {
        "rows": len(rows),
        "status": dict(Counter(r["status"] for r in rows)),
        "by_split": dict(Counter(r["split"] for r in rows if r["status"] == "ok")),
    }


def run_prepare(cfg: PrepareConfig) -> dict[str, Any]:
    """Every check that needs no cluster first (the input's listing, an output made from other inputs
    or settings, the output's bucket), then Ray, then the writes: a refused run takes seconds and
    leaves no output folder."""
    records = corpora.list_corpus(cfg.corpus, cfg.input)
    split_of = data.identity_split([r.identity for r in records], cfg.test_fraction, cfg.seed)
    items = [{"record": r.__dict__, "split": split_of[r.identity]} for r in records]
    if corpora.layout(cfg.corpus).pairs == "rmfrd":
        add_reference_candidates(items, cfg.seed)  # masked photos need unmasked ones of the same person
    ids = [r.id for r in records]
    pins = {"inputs": shards.input_fingerprint(cfg.input, records)}
    if not cfg.overwrite:
        shards.check_plan(cfg.output, shards.ShardPlan(len(items), cfg.shard_size, ids[0], ids[-1], pins))
    if storage.is_s3(cfg.output):  # a local folder is made by the first write, once Ray is up too
        storage.check_writable(cfg.output)

    import ray

    from unmask_core import ray_session
    from unmask_core.progress import progress_bar

    ray_session.connect()
    rows_uri = storage.join(cfg.output, "pairs")
    run = shards.start_run(
        cfg.output, rows_uri, items, ids, cfg.shard_size, pins=pins, overwrite=cfg.overwrite, config=cfg
    )
    bar = progress_bar(run.n_items, "prepare", done=run.items_done)
    if run.todo:
        todo = run.todo_payloads()
        ds = ray.data.from_items(todo, override_num_blocks=len(todo)).map_batches(
            ShardWorker,
            fn_constructor_args=(cfg, run.rows_uri),
            batch_size=1,
            compute=ray_session.actor_pool(1, cfg.workers or ray_session.half_the_cpus(), len(todo)),
            num_cpus=1,
            **ray_session.retry_args(),
        )
        # No prefetch: each shard's summary as it ends, not once the next one has.
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0):
            for summary in batch.column("summary").to_pylist():
                bar.update(json.loads(summary)["rows"])
    bar.close()
    summary = summarize(
        cfg.output, records, split_of, skipped_shards=len(run.done), processed_shards=len(run.todo)
    )
    storage.write_json(storage.join(cfg.output, "summary.json"), summary)
    return summary


def summarize(
    out_uri: str,
    records: list[data.ImageRecord],
    split_of: dict[str, str],
    skipped_shards: int,
    processed_shards: int,
) -> dict[str, Any]:
    """Counts in the layout of the paper's Table 1, plus failures by reason; inputs = pairs + errors."""
    table = shards.read_rows(
        storage.join(out_uri, "pairs"), columns=["id", "identity", "split", "status", "error"]
    )
    rows = table.to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    failures = Counter(r["status"] for r in rows if r["status"] != "ok")
    split_ids = {s: {r["identity"] for r in ok if r["split"] == s} for s in ("train", "test")}
    summary = {
        "inputs": len(records),
        "rows": len(rows),
        "pairs": len(ok),
        "errors": sum(failures.values()),
        "failures_by_reason": dict(sorted(failures.items())),
        "identities": len(split_of),
        "train_identities": len(split_ids["train"]),
        "test_identities": len(split_ids["test"]),
        "train_images": sum(r["split"] == "train" for r in ok),
        "test_images": sum(r["split"] == "test" for r in ok),
        "shards_processed": processed_shards,
        "shards_skipped": skipped_shards,
        **shards.internal_errors(rows),
    }
    summary["reconciled"] = summary["inputs"] == summary["rows"] == summary["pairs"] + summary["errors"]
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"images {summary['inputs']}, pairs {summary['pairs']}, errors {summary['errors']}",
        f"train: {summary['train_identities']} identities, {summary['train_images']} images; "
        f"test: {summary['test_identities']} identities, {summary['test_images']} images",
    ]
    for reason, count in summary["failures_by_reason"].items():
        lines.append(f"  {reason}: {count}")
    lines.append("counts reconcile" if summary["reconciled"] else "COUNTS DO NOT RECONCILE")
    lines += shards.internal_error_lines(summary)
    return "\n".join(lines)
