"""A run's counts, kept as its shards commit, never by reading its rows back.

Each committed rows file carries its shard's summary in its Parquet metadata (`shard_summary`). The
driver adds the summaries up as its shards commit (`RunCounts`), with the committed shards as ranges
(`ShardRanges`: a few numbers however many shards), and writes the sum to OUTPUT/_counts.json every
half minute and at the end. A rerun starts from that file and reads the footers only of the shards
committed after it was last written (a run killed since): a handful, never one per shard.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from unmask_core import listing, shards, storage

COUNTS_FILE = "_counts.json"
SUMMARY_KEY = b"unmask.shard_summary"
SAVE_EVERY_S = 30.0


@dataclass
class ShardRanges:
    """A set of shard indices as sorted, disjoint [start, end) ranges."""

    ranges: list[list[int]] = field(default_factory=list)

    def __contains__(self, shard: int) -> bool:
        return any(start <= shard < end for start, end in self.ranges)

    def add(self, shard: int) -> None:
        if shard in self:
            return
        self.ranges.append([shard, shard + 1])
        self.ranges.sort()
        merged: list[list[int]] = []
        for start, end in self.ranges:
            if merged and merged[-1][1] >= start:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        self.ranges = merged

    def __len__(self) -> int:
        return sum(end - start for start, end in self.ranges)

    def __iter__(self):
        for start, end in self.ranges:
            yield from range(start, end)

    def covers(self, count: int) -> bool:
        """Exactly the shards 0 .. count - 1."""
        return self.ranges == ([[0, count]] if count else [])


def committed_shards(rows_uri: str) -> ShardRanges:
    """The shards whose rows file exists, from a listing of the rows folder page by page."""
    committed = ShardRanges()
    if not storage.exists(rows_uri):
        return committed
    for page in listing.pages(rows_uri):
        for name in page.table.column("id").to_pylist():
            match = shards.SHARD_FILE.search(name)
            if match:
                committed.add(int(match.group(1)))
    return committed


def shard_summary(rows: list[dict[str, Any]], inputs: int) -> dict[str, Any]:
    """What a shard's rows add to its run's counts (rows with id, status, error)."""
    return {
        "inputs": inputs,
        "rows": len(rows),
        "status_counts": dict(Counter(row["status"] for row in rows)),
        # Where the photos were decoded when faces were found on the device ("device", or "cpu" where
        # the device decoder refused one): a node whose nvJPEG fails shows here.
        "decoded_on": dict(
            Counter(r["decoded_on"] for r in rows if r.get("decoded_on") and not r["face_index"])
        ),
        **shards.internal_errors(rows),
    }


def with_summary(table: pa.Table, summary: dict[str, Any]) -> pa.Table:
    metadata = dict(table.schema.metadata or {})
    metadata[SUMMARY_KEY] = json.dumps(summary).encode()
    return table.replace_schema_metadata(metadata)


def read_summary(rows_file: str) -> dict[str, Any]:
    """A committed shard's summary, from its footer (a footer read, not the rows)."""
    import pyarrow.parquet as pq

    fs, path = storage.pyarrow_filesystem(rows_file)
    metadata = storage.retrying(rows_file, lambda: pq.read_schema(path, filesystem=fs)).metadata or {}
    if SUMMARY_KEY not in metadata:
        raise ValueError(f"{rows_file}: no shard summary")
    return json.loads(metadata[SUMMARY_KEY])


@dataclass
class RunCounts:
    """The sum of the committed shards' summaries, and which shards they are."""

    shards: ShardRanges = field(default_factory=ShardRanges)
    inputs: int = 0
    rows: int = 0
    status_counts: Counter = field(default_factory=Counter)
    decoded_on: Counter = field(default_factory=Counter)
    internal_errors: int = 0
    first_internal_error: str = ""

    def add(self, shard: int, summary: dict[str, Any]) -> None:
        if shard in self.shards:
            return
        self.shards.add(shard)
        self.inputs += summary["inputs"]
        self.rows += summary["rows"]
        self.status_counts.update(summary["status_counts"])
        self.decoded_on.update(summary.get("decoded_on", {}))
        self.internal_errors += summary["internal_errors"]
        first = summary["first_internal_error"]
        if first and (not self.first_internal_error or first < self.first_internal_error):
            self.first_internal_error = first

    def as_json(self) -> dict[str, Any]:
        return {
            "shards": self.shards.ranges,
            "inputs": self.inputs,
            "rows": self.rows,
            "status_counts": dict(sorted(self.status_counts.items())),
            "decoded_on": dict(sorted(self.decoded_on.items())),
            "internal_errors": self.internal_errors,
            "first_internal_error": self.first_internal_error,
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> RunCounts:
        return cls(
            ShardRanges([list(r) for r in value["shards"]]),
            value["inputs"],
            value["rows"],
            Counter(value["status_counts"]),
            Counter(value.get("decoded_on", {})),
            value["internal_errors"],
            value["first_internal_error"],
        )


class CountsKeeper:
    """The driver's counts of one output: loaded at the start (for the shards earlier runs committed),
    added to as shards commit, saved now and then."""

    def __init__(self, out_uri: str, rows_uri: str) -> None:
        self.uri = storage.join(out_uri, COUNTS_FILE)
        self.rows_uri = rows_uri
        self.counts = RunCounts()
        self.saved_at = time.monotonic()

    def load(self, committed: ShardRanges) -> None:
        """Counts for exactly the `committed` shards: the saved sum where it covers only committed
        shards (else none of it), plus the footers of those it does not cover."""
        saved = (
            RunCounts.from_json(json.loads(storage.read_bytes(self.uri)))
            if storage.exists(self.uri)
            else RunCounts()
        )
        if any(shard not in committed for shard in saved.shards):  # a rows file was removed since
            saved = RunCounts()
        self.counts = saved
        self._read_footers(shard for shard in committed if shard not in saved.shards)

    def _read_footers(self, missing: Iterable[int]) -> None:
        for shard in missing:
            self.counts.add(shard, read_summary(shards.shard_file(self.rows_uri, shard)))

    def add(self, shard: int, summary: dict[str, Any]) -> None:
        self.counts.add(shard, summary)
        if time.monotonic() - self.saved_at > SAVE_EVERY_S:
            self.save()

    def save(self) -> None:
        storage.write_json(self.uri, self.counts.as_json())
        self.saved_at = time.monotonic()
