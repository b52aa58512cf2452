"""One tiny model set for the whole test session: made once, read by every test that only loads it."""

from __future__ import annotations

from pathlib import Path

from unmask_core.models.model_set import init_model_set

TINY_MODEL_SET_SEED = 0


def make_tiny_model_set(folder: Path) -> str:
    """A randomly initialised 64 px model set (seed TINY_MODEL_SET_SEED) in `folder`; returns its path."""
    uri = str(folder / "set64")
    init_model_set(64, uri, seed=TINY_MODEL_SET_SEED)
    return uri
