"""A run's counts come from its shards' summaries as they commit: a few ranges in the driver, one saved
sum, and footers read only for the shards that the sum does not cover."""

from __future__ import annotations

import json

import pyarrow as pa

from unmask_core import shards
from unmask_core.shard_counts import (
    COUNTS_FILE,
    CountsKeeper,
    ShardRanges,
    committed_shards,
    shard_summary,
    with_summary,
)


def test_shard_ranges_stay_a_few_numbers() -> None:
    ranges = ShardRanges()
    for shard in [3, 0, 1, 5, 2, 4, 9]:
        ranges.add(shard)
    assert ranges.ranges == [[0, 6], [9, 10]] and len(ranges) == 7
    assert 5 in ranges and 6 not in ranges and list(ranges) == [0, 1, 2, 3, 4, 5, 9]
    assert not ranges.covers(10)
    ranges.add(6), ranges.add(7), ranges.add(8)
    assert ranges.covers(10) and ranges.ranges == [[0, 10]]


def _commit(rows_uri: str, shard: int, statuses: list[str]) -> dict:
    rows = [
        {"id": f"{shard}-{k}", "status": s, "error": "" if s == "ok" else s} for k, s in enumerate(statuses)
    ]
    summary = shard_summary(rows, len(rows))
    shards.write_table_atomic(
        shards.shard_file(rows_uri, shard), with_summary(pa.Table.from_pylist(rows), summary)
    )
    return summary


def test_a_rerun_counts_from_the_saved_sum_and_the_footers_it_lacks(tmp_path) -> None:
    out, rows_uri = str(tmp_path), str(tmp_path / "rows")
    keeper = CountsKeeper(out, rows_uri)
    for shard in (0, 1):
        keeper.add(shard, _commit(rows_uri, shard, ["ok", "no_face"]))
    keeper.save()
    _commit(rows_uri, 2, ["ok", "internal_error"])  # committed after the last save, then the run was killed

    again = CountsKeeper(out, rows_uri)
    again.load(committed_shards(rows_uri))
    counts = again.counts
    assert counts.shards.ranges == [[0, 3]] and (counts.inputs, counts.rows) == (6, 6)
    assert counts.status_counts == {"ok": 3, "no_face": 2, "internal_error": 1}
    assert counts.internal_errors == 1 and counts.first_internal_error.startswith("2-1: ")

    # A rows file removed since the save (its shard is to be redone): the sum is not trusted.
    (tmp_path / "rows" / "shard-000000.parquet").unlink()
    last = CountsKeeper(out, rows_uri)
    last.load(committed_shards(rows_uri))
    assert last.counts.shards.ranges == [[1, 3]] and last.counts.inputs == 4
    assert json.loads((tmp_path / COUNTS_FILE).read_text())["shards"] == [[0, 2]]  # loading writes nothing
