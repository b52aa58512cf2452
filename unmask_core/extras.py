"""The package's extras (pyproject's optional dependencies): the modules each one installs, and the
one-line refusal, naming the install command, when a run asks for what an absent extra provides.

Which option needs which extra is said beside the option's values: a matcher's registry entry
(`MatcherSpec.extra`), the mask fits (`prepare.config.MASK_FIT_EXTRAS`). Jobs check them with their
config, before any work and before Ray starts; the code that imports an extra's modules checks again,
so that a missing extra is never a `ModuleNotFoundError` inside a worker, nor an `internal_error` row.
"""

from __future__ import annotations

import importlib.util

from unmask_core.errors import UserError

# extra -> the top-level modules it installs (dlib-bin installs `dlib`)
EXTRAS: dict[str, tuple[str, ...]] = {"dlib": ("dlib", "face_recognition_models")}


def install_command(extra: str) -> str:
    return f"pip install 'unmask[{extra}]'"


def missing_modules(extra: str) -> list[str]:
    """The modules of `extra` that this interpreter cannot import (found without importing them)."""
    return [module for module in EXTRAS[extra] if not _findable(module)]


def _findable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a finder that refuses the name, a module without a spec
        return False


def require(extra: str | None, wanted_by: str) -> None:
    """Nothing when `extra` (None: no extra needed) is installed; otherwise a UserError such as
    "--matchers dlib needs the dlib extra, which is not installed: pip install 'unmask[dlib]'"."""
    if extra is None:
        return
    if missing_modules(extra):
        raise UserError(
            f"{wanted_by} needs the {extra} extra, which is not installed: {install_command(extra)}"
        )
