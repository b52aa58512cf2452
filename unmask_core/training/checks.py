"""What `train` checks in the driver before Ray starts, so that a problem is one line (a UserError) in
seconds rather than a traceback from every worker a minute later: the model files the run loads, the
pairs' columns and their types, enough training pairs for one batch per worker, the LPIPS weights,
and the output's bucket. Nothing here writes.

Also the outline of a PyTorch file: its zip archive and the containers of its pickle, read without
building any object or reading any tensor, which tells a truncated file, or a whole one of something
else, from what a loader expects (resume.py checks checkpoints with it).
"""

from __future__ import annotations

import pickle
import zipfile
from typing import Any

from unmask_core import storage
from unmask_core.errors import UserError
from unmask_core.training.config import TrainConfig

# What the training loop and finish_run read from a checkpoint's state.pt, and what every model file
# in our format holds (models/format.py).
TRAINING_STATE_KEYS = ("encoder", "optimizer", "step")
MODEL_FILE_KEYS = ("format", "kind", "config", "state_dict", "extra", "sha256")


class _Placeholder:
    """Stands for any object a pickle would build: nothing is imported or called."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


class _Mapping(dict):
    """An OrderedDict (a state dict) as a plain dict that takes the attributes torch pickles with it."""


class _OutlineUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return _Mapping if (module, name) == ("collections", "OrderedDict") else _Placeholder

    def persistent_load(self, pid: Any) -> None:  # a tensor's storage: not read
        return None


def torch_file_problem(uri: str, keys: tuple[str, ...], check_crc: bool = False) -> str | None:
    """Why the PyTorch file at `uri` is not a whole one holding a dict with `keys`, or None. Reads the
    zip's directory and its small pickle; `check_crc` also reads every member against its CRC (finds
    corruption inside, at the cost of reading the whole file)."""
    fs, path = storage.fsspec_filesystem(uri)
    try:
        with fs.open(path, "rb") as f, zipfile.ZipFile(f) as archive:
            bad_member = archive.testzip() if check_crc else None
            if bad_member:
                return f"member {bad_member} fails its CRC check"
            pickles = [name for name in archive.namelist() if name.endswith("data.pkl")]
            if not pickles:
                return "a zip archive, but not a PyTorch file (no data.pkl)"
            outline = _OutlineUnpickler(archive.open(pickles[0])).load()
    except FileNotFoundError:
        return "no such file"
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        return f"truncated or not a PyTorch file ({type(exc).__name__}: {exc})"
    except Exception as exc:  # a damaged pickle fails in many ways
        return f"its pickle cannot be read ({type(exc).__name__}: {exc})"
    if not isinstance(outline, dict):
        return f"holds a single object, not a dict of {', '.join(keys)}"
    found = sorted(map(str, outline))
    if any(key not in found for key in keys):
        return f"holds keys {', '.join(found[:8]) or '(none)'}, not {', '.join(keys)}"
    return None


def check_training_inputs(cfg: TrainConfig) -> None:
    """Every check `train` makes before Ray starts; the first problem raises a one-line UserError."""
    for uri in filter(None, (cfg.pairs, cfg.models, cfg.init_from)):
        storage.check_readable(uri)
    check_model_files(cfg)
    check_pairs(cfg)
    if cfg.lpips_weight and cfg.lpips_backbone != "random":
        from unmask_core.training.loop import build_lpips

        build_lpips(cfg, cfg.models, spatial=False)  # loads it once here, not in every worker
    if storage.is_s3(cfg.output):  # a local folder is made by the first write, once the checks have passed
        storage.check_writable(cfg.output)


def check_model_files(cfg: TrainConfig) -> None:
    """The model sets' manifests, and each file the run loads (g, both encoders: one is trained or
    teaches, the other is written back at the end; ArcFace for the identity loss) whole and in our
    format. Their sha256 is checked where they are loaded."""
    from unmask_core.models.model_set import ModelSet

    sets = [
        (ModelSet(cfg.models), ["generator", "baseline", "unmask", *(["arcface"] if cfg.id_weight else [])])
    ]
    if cfg.init_from:
        sets.append((ModelSet(cfg.init_from), ["baseline", "unmask"]))
    for model_set, names in sets:
        for name in names:
            uri = model_set.file_uri(name)
            problem = torch_file_problem(uri, MODEL_FILE_KEYS)
            if problem:
                raise UserError(f"{uri}: cannot be loaded: {problem}; rewrite the model set")


def check_pairs(cfg: TrainConfig) -> None:
    """The pairs folder holds what `unmask prepare` writes (every column, of its type), with enough
    training rows for one batch per worker. In the driver, before Ray Train starts: Ray Data would
    retry its read tasks, and say why only in its logs."""
    import pyarrow.dataset as pads

    from unmask_core.data import PAIRS_SCHEMA

    uri = storage.join(cfg.pairs, "pairs")
    storage.check_readable(uri)
    fs, path = storage.pyarrow_filesystem(uri)
    try:
        dataset = pads.dataset(path, filesystem=fs, format="parquet")
        schema = dataset.schema
    except Exception as exc:  # pyarrow raises several types for files that are not Parquet
        raise UserError(f"{uri}: not a pairs folder of Parquet files ({type(exc).__name__}: {exc})") from None
    missing = [name for name in PAIRS_SCHEMA.names if name not in schema.names]
    if missing:
        raise UserError(
            f"{uri}: not pairs written by `unmask prepare` (no column {', '.join(missing)}); prepare the "
            "corpus with `unmask prepare` and pass its output as --pairs"
        )
    wrong = [
        f"{field.name} is {schema.field(field.name).type}, not {field.type}"
        for field in PAIRS_SCHEMA
        if not schema.field(field.name).type.equals(field.type)
    ]
    if wrong:
        raise UserError(f"{uri}: not pairs written by `unmask prepare` ({'; '.join(wrong)})")
    usable = (pads.field("status") == "ok") & (pads.field("split") == "train")
    if cfg.spec.mask_kind:
        usable = usable & (pads.field("mask_kind") == cfg.spec.mask_kind)
    rows = dataset.count_rows(filter=usable)
    # Ray Train splits the rows evenly between the workers, and each drops its last short batch.
    if rows // cfg.workers < cfg.batch_size:
        kind = f"{cfg.spec.mask_kind}-mask training" if cfg.spec.mask_kind else "training"
        raise UserError(
            f"{uri}: {rows} {kind} pairs (status ok, split train) are fewer than one batch of "
            f"{cfg.batch_size} for each of {cfg.workers} workers: that needs {cfg.batch_size * cfg.workers}"
            "; lower --batch-size or --workers, or prepare more pairs"
        )
