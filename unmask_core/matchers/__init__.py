"""Face matchers for bulk unmasking and evaluation: `build_matcher(name, model_set, device)`.

registry.py names them (light: no torch); networks.py holds their implementations.
"""

from __future__ import annotations

from unmask_core.errors import UserError
from unmask_core.matchers.registry import MATCHERS, MatcherSpec, require_installed


def build_matcher(name: str, model_set, device="cpu"):
    """The matcher `name` on `device`, with its weights from `model_set` (a models.ModelSet)."""
    if name not in MATCHERS:
        raise UserError(f"unknown matcher {name!r}; choose from {', '.join(MATCHERS)}")
    return MATCHERS[name].build(model_set, device)


__all__ = ["MATCHERS", "MatcherSpec", "build_matcher", "require_installed"]
