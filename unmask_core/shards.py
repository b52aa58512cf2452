"""Deterministic shards with atomic, write-once outputs: the unit of exactly-once and resume.

A job's inputs are sorted by id and cut into fixed-size shards. A shard is finished when its rows
file exists; that file is written in one atomic PUT/rename after everything else of the shard, so a
re-executed task rewrites the same objects and a rerun skips finished shards.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from unmask_core import storage
from unmask_core.config import save_config
from unmask_core.errors import TransientError, UserError

SHARD_FILE = re.compile(r"shard-(\d{6})\.parquet$")
PLAN_FILE = "_plan.json"


@dataclass(frozen=True)
class ShardPlan:
    """What an output was made from. A rerun resumes only into an output whose plan is equal: the same
    inputs (their ids, and `pins["inputs"]`, a fingerprint of their content) cut into the same shards,
    and the same models (`pins`: their sha256)."""

    n_inputs: int = 0  # 0, "" and "" in a streamed plan: its inputs are in OUTPUT/_inputs/
    shard_size: int = 0
    first_id: str = ""
    last_id: str = ""
    pins: dict[str, str] = field(default_factory=dict)

    def differences(self, other: ShardPlan) -> list[str]:
        """What differs between this (earlier) plan and `other`, for people: `name: old before, new
        now` where both values are short, else `name differs`."""
        mine, theirs = asdict(self), asdict(other)
        pins_mine, pins_theirs = mine.pop("pins"), theirs.pop("pins")
        changed = [(k, mine[k], theirs[k]) for k in mine if mine[k] != theirs[k]]
        changed += [
            (k, pins_mine.get(k), pins_theirs.get(k))
            for k in sorted({*pins_mine, *pins_theirs})
            if pins_mine.get(k) != pins_theirs.get(k)
        ]
        return [_difference(name, before, now) for name, before, now in changed]


def _difference(name: str, before: Any, now: Any) -> str:
    if max(len(str(before)), len(str(now))) > 24:
        return f"{name} differs"
    return f"{name}: {'not recorded' if before is None else before} before, {now} now"


def input_fingerprint(input_uri: str, records: Sequence[Any]) -> str:
    """A hash of the listed inputs: each record's id and uri, and the size and etag (or mtime) of the
    files under `input_uri` (for a manifest: of the manifest itself). Same names with other pixels
    give another fingerprint."""
    known = storage.versions(input_uri)
    digest = hashlib.sha256()
    listed = {record.uri for record in records}
    for uri, version in known.items():
        if uri not in listed and len(known) == 1:  # a manifest: its own content
            digest.update(version.encode())
    for record in records:
        digest.update(f"{record.id}\x1f{record.uri}\x1f{known.get(record.uri, '')}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheSettings:
    """Base of the settings of a cache (T-hat codes, training targets): the fields of a subclass are
    everything that decides its content, and `key`, their hash, names its folder, so other settings
    get another folder and the same ones find theirs."""

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def split_into_shards(items: Sequence[Any], shard_size: int) -> list[list[Any]]:
    return [list(items[i : i + shard_size]) for i in range(0, len(items), shard_size)]


def shard_file(rows_uri: str, index: int) -> str:
    return storage.join(rows_uri, f"shard-{index:06d}.parquet")


def finished_shards(rows_uri: str) -> set[int]:
    if not storage.exists(rows_uri):
        return set()
    done = set()
    for uri in storage.list_files(rows_uri, (".parquet",)):
        match = SHARD_FILE.search(uri)
        if match:
            done.add(int(match.group(1)))
    return done


def _recorded_plan(out_uri: str) -> ShardPlan | None:
    uri = storage.join(out_uri, PLAN_FILE)
    if not storage.exists(uri):
        return None
    try:
        return ShardPlan(**json.loads(storage.read_bytes(uri)))
    except (TypeError, ValueError) as exc:
        raise UserError(
            f"{uri}: not a plan this version wrote ({exc}); use --overwrite or a new output"
        ) from exc


def _refuse(out_uri: str, differences: list[str]) -> UserError:
    return UserError(
        f"{out_uri}: holds the output of other inputs, models or settings "
        f"({'; '.join(differences)}); use a new output location, or --overwrite to start over"
    )


def check_pins(out_uri: str, pins: dict[str, str]) -> None:
    """Refuse early, before the listing and the models are known, to resume into an output whose plan
    pinned other values for these `pins` (or none: an output of a version that did not record them)."""
    previous = _recorded_plan(out_uri)
    if previous is None:
        return
    differences = [
        _difference(name, previous.pins.get(name), value)
        for name, value in pins.items()
        if previous.pins.get(name) != value
    ]
    if differences:
        raise _refuse(out_uri, differences)


def check_plan(out_uri: str, plan: ShardPlan) -> bool:
    """Refuse to resume into an output made from other inputs, models or settings (its shard numbers
    would mean other images, or its rows come from other weights or name other kinds of files). True
    when the output already has this plan; nothing is written here (see `record_plan`)."""
    previous = _recorded_plan(out_uri)
    if previous is None:
        return False
    differences = previous.differences(plan)
    if differences:
        raise _refuse(out_uri, differences)
    return True


def record_plan(out_uri: str, plan: ShardPlan) -> None:
    storage.write_json(storage.join(out_uri, PLAN_FILE), asdict(plan))


def record_cache_settings(cache_uri: str, settings: Any) -> None:
    """`_settings.json` in a cache folder named by its settings' hash (training's targets and T-hat
    caches), written once: for people, since the folder's name is what the code matches."""
    path = storage.join(cache_uri, "_settings.json")
    if not storage.exists(path):
        storage.write_json(path, asdict(settings))


@dataclass
class ShardedRun:
    """The skeleton every resumable job shares: plan -> finished shards -> the shards still to do.

    `chunks[i]` holds shard i's items; `done` the shards whose rows file already exists."""

    rows_uri: str
    chunks: list[list[Any]]
    done: set[int]

    @property
    def todo(self) -> list[int]:
        return [i for i in range(len(self.chunks)) if i not in self.done]

    @property
    def n_items(self) -> int:
        return sum(len(chunk) for chunk in self.chunks)

    @property
    def items_done(self) -> int:
        return sum(len(self.chunks[i]) for i in self.done)

    def todo_payloads(self) -> list[dict[str, Any]]:
        """One item per shard still to do, as Ray Data rows: its index and its items as JSON."""
        return [{"shard": i, "records": json.dumps(self.chunks[i])} for i in self.todo]

    def shard_file(self, index: int) -> str:
        return shard_file(self.rows_uri, index)

    def progress_bar(self, desc: str):
        from unmask_core.progress import progress_bar

        bar = progress_bar(self.n_items, desc)
        bar.update(self.items_done)
        return bar


def start_run(
    out_uri: str,
    rows_uri: str,
    items: Sequence[Any],
    ids: Sequence[str],
    shard_size: int,
    pins: dict[str, str] | None = None,
    overwrite: bool = False,
    config: Any = None,
) -> ShardedRun:
    """Check the plan of `out_uri` against this run's, then find what a previous run already finished.

    `ids` are the items' ids in item order (sorted by the caller); `pins` what else made the output
    (input fingerprint, model hashes). A different plan is refused unless `overwrite`, which deletes
    the previous rows first. Nothing is written before the checks pass; then the plan is recorded,
    and the job's `config` saved beside it (a refused run leaves the folder as it was)."""
    plan = ShardPlan(len(items), shard_size, ids[0], ids[-1], dict(pins or {}))
    if overwrite:
        storage.delete(rows_uri)
        storage.delete(storage.join(out_uri, PLAN_FILE))
    if overwrite or not check_plan(out_uri, plan):
        record_plan(out_uri, plan)
    if config is not None:
        save_config(config, out_uri)
    return ShardedRun(rows_uri, split_into_shards(items, shard_size), finished_shards(rows_uri))


def start_job(
    cfg: Any,
    rows_folder: str,
    items: Sequence[Any],
    records: Sequence[Any],
    pins: dict[str, str] | None = None,
) -> ShardedRun:
    """`start_run` for a job whose config has `input`, `output`, `shard_size` and `overwrite`: rows in
    OUTPUT/`rows_folder`, the plan pinned to the input listing (and `pins`: the models' hashes, the
    output's encoding)."""
    return start_run(
        cfg.output,
        storage.join(cfg.output, rows_folder),
        items,
        [record.id for record in records],
        cfg.shard_size,
        pins={"inputs": input_fingerprint(cfg.input, records), **(pins or {})},
        overwrite=cfg.overwrite,
        config=cfg,
    )


# The last line of one of our errors inside the text of a Ray error: Ray Data passes a stage's
# exception to the driver as text (its traceback), not as the object.
_RAISED_IN_A_WORKER = re.compile(r"unmask_core\.errors\.(?:TransientError|UserError): ([^\n]+)")


def job_failure(exc: BaseException) -> BaseException:
    """What stopped a job during its work, as one line: a TransientError (exit 1) when the cause is
    one of our storage or input errors, in the driver or inside a Ray error's text; else `exc`
    itself (a bug keeps its traceback)."""
    if isinstance(exc, TransientError):
        return exc
    if isinstance(exc, UserError):
        return TransientError(str(exc))
    found = _RAISED_IN_A_WORKER.findall(str(exc))
    return TransientError(found[-1].strip()) if found else exc


INTERNAL_ERROR = "internal_error"  # the status of a row whose input met a bug, not a bad input


def internal_errors(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Summary fields for rows (with id, status, error) that hold a bug: their count and the first one.

    Such rows keep every input accounted for, but the job that wrote them exits non-zero."""
    bugs = sorted((r for r in rows if r["status"] == INTERNAL_ERROR), key=lambda r: r["id"])
    first = f"{bugs[0]['id']}: {bugs[0]['error']}" if bugs else ""
    return {"internal_errors": len(bugs), "first_internal_error": first}


def internal_error_lines(summary: dict[str, Any]) -> list[str]:
    if not summary["internal_errors"]:
        return []
    return [
        f"INTERNAL ERRORS: {summary['internal_errors']} rows met a bug (please report it); "
        f"first: {summary['first_internal_error']}"
    ]


def succeeded(summary: dict[str, Any]) -> bool:
    """Every input has its row, and none of them records a bug."""
    return bool(summary["reconciled"]) and not summary["internal_errors"]


def write_table_atomic(uri: str, table: pa.Table) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    storage.write_bytes_atomic(uri, buffer.getvalue())


def read_rows(rows_uri: str, columns: list[str] | None = None, filters: Any = None) -> pa.Table:
    """All finished shards of an output as one table (for summaries and small outputs)."""
    fs, path = storage.pyarrow_filesystem(rows_uri)
    return pq.read_table(path, filesystem=fs, columns=columns, filters=filters)
