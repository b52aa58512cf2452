"""The two forms of f's heads and of g's modulated convolutions, forced for a benchmark.

The code picks a form per device (encoder.StyleHeads.forward; g always uses the shared-weight form);
these context managers run the same networks, same weights, in a form of the benchmark's choosing, so
that both are timed in one run on the same machine (bench/model_forms.py on CPU, bench/gpu_unmask.py's
`forms` section on a GPU).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from unmask_core.models.encoder import GradualStyleEncoder
from unmask_core.models.stylegan2 import Generator, ModulatedConv2d, modulated_conv2d_per_sample

HEAD_FORMS = ("per_head", "batched")
MODULATED_FORMS = ("per_sample", "shared_weight")


@contextlib.contextmanager
def heads_form(encoder: GradualStyleEncoder, form: str) -> Iterator[None]:
    """f's map2style heads one after another (pSp's order) or batched per pyramid level."""
    heads = encoder.styles
    heads.forward = {"per_head": heads.per_head, "batched": heads.batched}[form]
    try:
        yield
    finally:
        del heads.forward


@contextlib.contextmanager
def modulated_form(g: Generator, form: str) -> Iterator[None]:
    """g's modulated convolutions with one weight copy per image (the paper's grouped form) or with
    the shared weight (the code's form)."""
    if form not in MODULATED_FORMS:
        raise ValueError(f"unknown form {form!r}")
    convs = [m for m in g.modules() if isinstance(m, ModulatedConv2d)] if form == "per_sample" else []
    for conv in convs:
        conv.forward = lambda x, style, conv=conv: modulated_conv2d_per_sample(conv, x, style)
    try:
        yield
    finally:
        for conv in convs:
            del conv.forward
