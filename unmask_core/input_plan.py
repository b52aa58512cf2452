"""The inputs a streamed run planned: its listing, written into the output as it is made, and read back
instead of listing again.

OUTPUT/_inputs/ holds the listing (listing.LISTING_SCHEMA) in parts named by their first row, their
row count and a hash of their rows (`part-000000001000-001024-<sha>.parquet`), so that the folder's
listing alone says which rows are planned. `_complete.json` appears once the whole input is listed:
the number of inputs and the listing's fingerprint. A run that stops while listing resumes the listing
after the last planned row; the rows planned before are never listed again, even if the input changed.

Shard i is rows [i * shard_size, (i + 1) * shard_size). The shards are grouped in segments that grow
fourfold (`segment_rows`): segment 0 is about one listing page, so that a job starts work after a
list request or two, and 16 segments cover any gallery (over 10^12 inputs). `segment_shards` gives one
segment's shards, listing what it needs first; each shard is given only once its rows are written
here, so that a committed shard always means the same inputs.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyarrow as pa

from unmask_core import listing, shards, storage

INPUTS_FOLDER = "_inputs"
COMPLETE_FILE = "_complete.json"
PART_ROWS = 65_536  # rows per part at most: what a listing task holds at once
GROWTH = 4
MAX_SEGMENTS = 16
_PART = re.compile(r"part-(\d{12})-(\d{6})-([0-9a-f]{16})\.parquet$")


@dataclass(frozen=True)
class Part:
    uri: str
    first_row: int
    rows: int
    digest: str

    @property
    def end(self) -> int:
        return self.first_row + self.rows


@dataclass(frozen=True)
class Listed:
    """What `_inputs/` holds: its parts in row order, and `inputs` once the listing is complete."""

    parts: list[Part]
    inputs: int | None
    fingerprint: str = ""

    @property
    def rows(self) -> int:
        return self.parts[-1].end if self.parts else 0

    @property
    def complete(self) -> bool:
        return self.inputs is not None


class PlannedInputs:
    """OUTPUT/_inputs/ of one output."""

    def __init__(self, out_uri: str) -> None:
        self.folder = storage.join(out_uri, INPUTS_FOLDER)

    def listed(self) -> Listed:
        """The parts written so far (one LIST of the folder per 1,000 parts) and the completion."""
        if not storage.exists(self.folder):
            return Listed([], None)
        parts = []
        for uri in storage.list_files(self.folder, (".parquet",)):
            match = _PART.search(uri)
            if match:
                parts.append(Part(uri, int(match.group(1)), int(match.group(2)), match.group(3)))
        parts.sort(key=lambda part: part.first_row)
        complete_uri = storage.join(self.folder, COMPLETE_FILE)
        if not storage.exists(complete_uri):
            return Listed(parts, None)
        done = json.loads(storage.read_bytes(complete_uri))
        return Listed(parts, int(done["inputs"]), done["fingerprint"])

    def write_part(self, first_row: int, table: pa.Table) -> Part:
        digest = _digest(table)
        name = f"part-{first_row:012d}-{table.num_rows:06d}-{digest}.parquet"
        uri = storage.join(self.folder, name)
        shards.write_table_atomic(uri, table.cast(listing.LISTING_SCHEMA))
        return Part(uri, first_row, table.num_rows, digest)

    def complete(self, parts: list[Part]) -> Listed:
        """Mark the listing complete: its size and fingerprint (a hash of the parts' hashes)."""
        fingerprint = hashlib.sha256("".join(part.digest for part in parts).encode()).hexdigest()
        inputs = parts[-1].end if parts else 0
        storage.write_json(
            storage.join(self.folder, COMPLETE_FILE), {"inputs": inputs, "fingerprint": fingerprint}
        )
        return Listed(parts, inputs, fingerprint)

    def read(self, part: Part) -> pa.Table:
        fs, path = storage.pyarrow_filesystem(part.uri)
        import pyarrow.parquet as pq

        return storage.retrying(part.uri, lambda: pq.read_table(path, filesystem=fs))


def _digest(table: pa.Table) -> str:
    text = "\n".join(
        "\x1f".join("" if value is None else str(value) for value in row)
        for row in zip(*(table.column(name).to_pylist() for name in listing.LISTING_SCHEMA.names))
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def segment_rows(index: int, shard_size: int) -> tuple[int, int]:
    """Rows [start, end) of segment `index`: whole shards, about one page for segment 0, each next one
    GROWTH times larger."""
    base = shard_size * math.ceil(listing.PAGE_ROWS / shard_size)
    start = base * (GROWTH**index - 1) // (GROWTH - 1)
    return start, start + base * GROWTH**index


def segments_for(inputs: int | None, shard_size: int) -> int:
    """How many segments hold `inputs` rows (all of them when the count is not known yet)."""
    if inputs is None:
        return MAX_SEGMENTS
    count = 1
    while segment_rows(count - 1, shard_size)[1] < inputs:
        count += 1
    return count


def segment_shards(
    input_uri: str,
    out_uri: str,
    shard_size: int,
    segment: int,
    exclude: str | None = None,
    skip: Callable[[int], bool] = lambda shard: False,
) -> Iterator[tuple[int, pa.Table]]:
    """(shard index, its rows) for the shards of `segment` that `skip` does not exclude: read from
    `_inputs/`, after listing the input further (and writing what was listed) if the planned rows do
    not reach the segment's end yet. Listing and shards stay within PART_ROWS rows of memory."""
    store = PlannedInputs(out_uri)
    start, end = segment_rows(segment, shard_size)
    planned = store.listed()
    cut = _ShardCutter(start, shard_size, skip)
    for part in planned.parts:
        if part.end > start and part.first_row < end:
            yield from cut.add(_within(store.read(part), part.first_row, start, end))
    if planned.rows < end and not planned.complete:
        planned = yield from _list_further(store, planned, input_uri, exclude, cut, (start, end))
    if planned.complete and planned.inputs is not None and planned.inputs < end:
        yield from cut.rest()


def _within(table: pa.Table, first_row: int, start: int, end: int) -> pa.Table:
    """The rows of `table` (rows `first_row`...) that lie in [start, end)."""
    low, high = max(start, first_row), min(end, first_row + table.num_rows)
    return table.slice(low - first_row, max(0, high - low))


def _list_further(store, planned: Listed, input_uri: str, exclude, cut, segment: tuple[int, int]):
    """List the input after the planned rows until they reach the segment's end (or the input's end),
    writing each part before its shards are given; returns what `_inputs/` then holds."""
    start, end = segment
    parts, rows = list(planned.parts), planned.rows
    after = listing.After()
    if parts:
        last = store.read(parts[-1])
        after = listing.After(rows, last.column("id")[-1].as_py())
    pending: list[pa.Table] = []
    exhausted = True
    for page in listing.pages(input_uri, exclude, after):
        pending.append(page.table)
        size = sum(table.num_rows for table in pending)
        if size >= PART_ROWS or rows + size >= end or page.last:
            table = pa.concat_tables(pending)
            parts.append(store.write_part(rows, table))
            yield from cut.add(_within(table, rows, start, end))
            rows, pending = rows + table.num_rows, []
            if page.last:
                break
            if rows >= end:
                exhausted = False
                break
    if pending:  # the listing ended on pages whose rows were all left out
        table = pa.concat_tables(pending)
        parts.append(store.write_part(rows, table))
        yield from cut.add(_within(table, rows, start, end))
    return store.complete(parts) if exhausted else Listed(parts, None)


class _ShardCutter:
    """Cuts consecutive rows, from row `start` on, into shards of `shard_size`."""

    def __init__(self, start: int, shard_size: int, skip: Callable[[int], bool]) -> None:
        self.shard_size, self.skip = shard_size, skip
        self.next_shard = start // shard_size
        self.pending: list[pa.Table] = []
        self.rows = 0

    def add(self, table: pa.Table) -> Iterator[tuple[int, pa.Table]]:
        if table.num_rows:
            self.pending.append(table)
            self.rows += table.num_rows
        while self.rows >= self.shard_size:
            rows = pa.concat_tables(self.pending)
            yield from self._give(rows.slice(0, self.shard_size))
            rest = rows.slice(self.shard_size)
            self.pending, self.rows = ([rest] if rest.num_rows else []), rest.num_rows

    def rest(self) -> Iterator[tuple[int, pa.Table]]:
        """The last shard, shorter than the others."""
        if self.rows:
            yield from self._give(pa.concat_tables(self.pending))
            self.pending, self.rows = [], 0

    def _give(self, rows: pa.Table) -> Iterator[tuple[int, pa.Table]]:
        shard, self.next_shard = self.next_shard, self.next_shard + 1
        if not self.skip(shard):
            yield shard, rows
