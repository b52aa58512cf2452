"""Deterministic shards with atomic, write-once outputs: the unit of exactly-once and resume.

A job's inputs are sorted by id and cut into fixed-size shards. A shard is finished when its rows
file exists; that file is written in one atomic PUT/rename after everything else of the shard, so a
re-executed task rewrites the same objects and a rerun skips finished shards.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from unmask_core import storage
from unmask_core.errors import UserError

_SHARD_FILE = re.compile(r"shard-(\d{6})\.parquet$")
PLAN_FILE = "_plan.json"


@dataclass(frozen=True)
class ShardPlan:
    n_inputs: int
    shard_size: int
    first_id: str
    last_id: str


def split_into_shards(items: Sequence[Any], shard_size: int) -> list[list[Any]]:
    return [list(items[i : i + shard_size]) for i in range(0, len(items), shard_size)]


def shard_file(rows_uri: str, index: int) -> str:
    return storage.join(rows_uri, f"shard-{index:06d}.parquet")


def finished_shards(rows_uri: str) -> set[int]:
    if not storage.exists(rows_uri):
        return set()
    done = set()
    for uri in storage.list_files(rows_uri, (".parquet",)):
        match = _SHARD_FILE.search(uri)
        if match:
            done.add(int(match.group(1)))
    return done


def check_plan(out_uri: str, plan: ShardPlan) -> None:
    """Record the shard plan on the first run; refuse to resume into an output made from other inputs
    (its shard numbers would mean different images)."""
    uri = storage.join(out_uri, PLAN_FILE)
    if storage.exists(uri):
        previous = ShardPlan(**json.loads(storage.read_bytes(uri)))
        if previous != plan:
            raise UserError(
                f"{out_uri}: holds the output of different inputs or shard size ({previous}); "
                "use a new output location"
            )
        return
    storage.write_bytes_atomic(uri, json.dumps(plan.__dict__).encode())


def write_table_atomic(uri: str, table: pa.Table) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    storage.write_bytes_atomic(uri, buffer.getvalue())


def read_rows(rows_uri: str, columns: list[str] | None = None, filters: Any = None) -> pa.Table:
    """All finished shards of an output as one table (for summaries and small outputs)."""
    fs, path = storage.pyarrow_filesystem(rows_uri)
    return pq.read_table(path, filesystem=fs, columns=columns, filters=filters)
