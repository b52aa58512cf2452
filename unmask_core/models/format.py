"""Our checkpoint format: one file per model, read with `torch.load(weights_only=True)`.

`{'format': 'unmask-checkpoint/1', 'kind': str, 'config': dict, 'state_dict': {...}, 'extra': {...},
'sha256': hex}`, `kind` one of kinds.py's table (which turns modules into these parts and back). The
sha256 covers every tensor of the state dict and of `extra` (an encoder's latent_avg changes its
output, so it belongs in its identity).

Also the file primitives every loader shares (`torch_load`, `torch_save`, `check_fit`, `load_strict`,
`build_strict`).
Every failure to read or fit weights raises `CheckpointError` (a `UserError`) whose one-line message
names the file and the offending keys.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from unmask_core import storage
from unmask_core.errors import UserError
from unmask_core.models.runtime import build_on_meta

FORMAT = "unmask-checkpoint/1"
ZIP_MAGIC = b"PK\x03\x04"  # how every file torch.save writes begins


class CheckpointError(UserError):
    """A weights file that cannot be read, is not weights, or does not fit the model."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def torch_load(uri: str, label: str | None = None) -> Any:
    """`torch.load(weights_only=True)` of a local or s3:// file, with one-line errors naming `label` (by
    default `uri`). A local file is memory-mapped: its tensors are the page cache's pages (copied on
    write), not two copies of the bytes, and every actor on a node that loads the same file shares them."""
    label = label or uri
    try:
        local = not storage.is_s3(uri)
        source = storage.local_file(uri) if local else io.BytesIO(storage.read_bytes(uri))
    except UserError as exc:
        raise CheckpointError(str(exc)) from None

    def load() -> Any:
        try:
            return torch.load(source, map_location="cpu", weights_only=True, mmap=local)
        except RuntimeError as exc:
            if not (local and "mmap" in str(exc)):
                raise
            # A file in torch's legacy (pre-zip) format cannot be mapped: read it whole.
            return torch.load(source, map_location="cpu", weights_only=True)

    return _one_line_errors(label, load)


def torch_load_structure(uri: str, size: int | None = None) -> Any:
    """What `torch_load` returns, with every tensor on the meta device (dtype and shape, no data), from
    the file's pickle and zip directory alone: a few ranged reads at its two ends, whatever its size.
    `size`, when known, spares S3 a HEAD request."""
    try:
        file = storage.open_ranged(uri, size)
    except UserError as exc:
        raise CheckpointError(str(exc)) from None
    with file:
        # torch's legacy format is one stream, read to its end: refuse it rather than read it in pieces.
        if file.read(4) != ZIP_MAGIC:
            raise CheckpointError(
                f"{uri}: not a readable PyTorch file (truncated or corrupt): not a zip archive"
            )
        file.seek(0)
        return _one_line_errors(uri, lambda: torch.load(file, map_location="meta", weights_only=True))


def _one_line_errors(label: str, load: Callable[[], Any]) -> Any:
    try:
        return load()
    except pickle.UnpicklingError as exc:
        text = str(exc)
        refused = [line.strip() for line in text.splitlines() if "Unsupported global" in line]
        if refused:  # a well-formed pickle that would import and call code: weights_only refuses it
            raise CheckpointError(
                f"{label}: refused to load: the file holds objects that are not weights "
                f"(torch.load weights_only=True): {refused[0]}"
            ) from None
        detail = next((line.strip() for line in text.splitlines() if "Unsupported" in line), _first_line(exc))
        raise CheckpointError(
            f"{label}: not a readable PyTorch file (truncated or corrupt): {detail}"
        ) from None
    except Exception as exc:  # zip reader, EOF and unpickling errors come in many types
        raise CheckpointError(
            f"{label}: not a readable PyTorch file (truncated or corrupt): {_first_line(exc)}"
        ) from None


def torch_bytes(obj: Any) -> bytes:
    """What torch.save writes for `obj`."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def torch_save(obj: Any, uri: str) -> None:
    """torch.save to a local or s3:// file, atomically (readers see the old file or the new one)."""
    storage.write_bytes_atomic(uri, torch_bytes(obj))


def key_list(keys: list[str], limit: int = 8) -> str:
    """The first `limit` keys for an error message, and how many more there are."""
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def check_fit(uri: str, what: str, expected: Mapping[str, Tensor], found: Mapping[str, Any]) -> None:
    """Raise CheckpointError unless `found` has exactly the keys and shapes of `expected`."""
    not_tensors = sorted(k for k, v in found.items() if not isinstance(v, Tensor))
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [
        f"{k} {list(found[k].shape)} (model {list(expected[k].shape)})"
        for k in expected
        if k in found and isinstance(found[k], Tensor) and found[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {key_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {key_list(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes: {key_list(wrong, 4)}")
    if not_tensors:
        problems.append(f"not tensors: {key_list(not_tensors)}")
    if problems:
        raise CheckpointError(f"{uri}: weights do not fit {what}: " + "; ".join(problems))


def load_strict(module: nn.Module, state_dict: Mapping[str, Any], uri: str, what: str) -> None:
    check_fit(uri, what, module.state_dict(), state_dict)
    module.load_state_dict(dict(state_dict), strict=True)


def build_strict(
    factory: Callable[[], nn.Module], state_dict: Mapping[str, Any], uri: str, what: str
) -> nn.Module:
    """`factory()` holding exactly `state_dict`'s weights (else a CheckpointError naming the file), in
    the module's own dtypes. Built on the meta device and the loaded tensors assigned: no random
    initialisation to throw away (a third of a 256 px model set's load time) and no second copy.
    Given meta tensors (`torch_load_structure`), the module stays on the meta device: the fit is checked
    and nothing is read."""
    if any(isinstance(v, Tensor) and v.is_meta for v in state_dict.values()):
        with torch.device("meta"):
            module = factory()
        check_fit(uri, what, module.state_dict(), state_dict)
        return module
    return build_on_meta(factory, state_dict, fit=lambda expected: check_fit(uri, what, expected, state_dict))


def state_dict_sha256(state_dict: Mapping[str, Tensor]) -> str:
    """Deterministic hash of tensors: sorted keys, each with its dtype, shape and raw bytes."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|{tensor.nbytes}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _hashed_tensors(state_dict: Mapping[str, Tensor], extra: Mapping[str, Any]) -> dict[str, Tensor]:
    tensors = dict(state_dict)
    tensors.update({f"extra.{k}": v for k, v in extra.items() if isinstance(v, Tensor)})
    return tensors


@dataclass
class Checkpoint:
    """One model file in our format, verified against its sha256."""

    uri: str
    kind: str
    config: dict[str, Any]
    state_dict: dict[str, Tensor]
    extra: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""


def save_checkpoint(
    uri: str, kind: str, config: dict[str, Any], state_dict: Mapping[str, Tensor], extra: dict | None = None
) -> str:
    """Write one model in our format; returns its sha256."""
    sha, data = checkpoint_bytes(kind, config, state_dict, extra)
    storage.write_bytes_atomic(uri, data)
    return sha


def checkpoint_bytes(
    kind: str, config: dict[str, Any], state_dict: Mapping[str, Tensor], extra: dict | None = None
) -> tuple[str, bytes]:
    """(sha256 of the weights, the file's bytes) of one model in our format."""
    cpu = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    extra = {
        k: v.detach().cpu().contiguous() if isinstance(v, Tensor) else v for k, v in (extra or {}).items()
    }
    sha = state_dict_sha256(_hashed_tensors(cpu, extra))
    payload = {
        "format": FORMAT,
        "kind": kind,
        "config": config,
        "state_dict": cpu,
        "extra": extra,
        "sha256": sha,
    }
    return sha, torch_bytes(payload)


def read_checkpoint(
    uri: str,
    kind: str | None = None,
    *,
    structure_only: bool = False,
    size: int | None = None,
    hash_weights: bool = True,
    label: str | None = None,
) -> Checkpoint:
    """Read and verify one file in our format (format tag, kind, sha256 of the weights).

    `structure_only`: tensors on the meta device, read from the file's headers alone (see
    `torch_load_structure`, which takes `size`); the weights are neither read nor hashed.
    `hash_weights=False`: the caller has checked the file's bytes against a checksum (the node cache),
    so the recorded sha256 is taken as it is. `label`: the URI to name in messages (`uri` being a local
    copy of it).
    """
    obj = torch_load_structure(uri, size) if structure_only else torch_load(uri, label)
    uri = label or uri
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        keys = key_list(sorted(map(str, obj))) if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"{uri}: not an unmask checkpoint (no format {FORMAT!r}; top-level keys: {keys}); "
            "public weights are converted by `unmask models import` (models/public.py)"
        )
    missing = [k for k in ("kind", "config", "state_dict", "extra", "sha256") if k not in obj]
    if missing:
        raise CheckpointError(f"{uri}: unmask checkpoint lacks {', '.join(missing)}")
    if kind is not None and obj["kind"] != kind:
        raise CheckpointError(f"{uri}: holds a {obj['kind']!r} model, expected {kind!r}")
    state_dict, extra = obj["state_dict"], obj["extra"]
    bad = sorted(k for k, v in state_dict.items() if not isinstance(v, Tensor))
    if bad:
        raise CheckpointError(f"{uri}: state_dict entries that are not tensors: {key_list(bad)}")
    if structure_only or not hash_weights:
        return Checkpoint(uri, obj["kind"], dict(obj["config"]), state_dict, dict(extra), obj["sha256"])
    actual = state_dict_sha256(_hashed_tensors(state_dict, extra))
    if actual != obj["sha256"]:
        raise CheckpointError(
            f"{uri}: sha256 mismatch: the file records {obj['sha256'][:16]}..., its weights hash to "
            f"{actual[:16]}... (altered or corrupted)"
        )
    return Checkpoint(uri, obj["kind"], dict(obj["config"]), state_dict, dict(extra), actual)


def build_config(cls: type, config: dict[str, Any], uri: str) -> Any:
    """`cls(**config)`, or a CheckpointError naming the file when the config does not fit `cls`."""
    try:
        return cls(**config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{uri}: config {config} is not a valid {cls.__name__}: {exc}") from None
