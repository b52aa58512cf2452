"""Old and new forms of f and g at 256 px, in one run (`python -m bench.model_forms`).

1. CPU fp32 seconds per image at batch 4: g with the per-sample modulated convolution (one grouped
   convolution, B weight copies) vs the shared-weight form; f with pSp's 14 map2style heads one after
   another vs the heads batched per pyramid level (bench/forms.py). The two alternate, so machine load
   hits both alike. The faster form is the one the CPU path uses.
2. Bytes moved per image by g's modulated convolutions, before and after, counted analytically from
   the layer shapes (weights per sample, activations read and written), in fp32 and under bf16 autocast.
Results go to BENCHMARKS.md (section `model_forms`).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from bench.benchmarks_md import LoadWatch, machine_description, update_section
from bench.forms import heads_form, modulated_form
from unmask_core.models.encoder import GradualStyleEncoder
from unmask_core.models.model_set import model_set_configs
from unmask_core.models.stylegan2 import Generator, ModulatedConv2d


def seconds(fn: Callable[[], Tensor]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def compare(a: Callable[[], Tensor], b: Callable[[], Tensor], repeats: int) -> tuple[float, float, float]:
    """(A s/batch, B s/batch, max |A - B|): medians over alternating repeats after a warm-up."""
    difference = (a() - b()).abs().max().item()
    a_times, b_times = [], []
    for _ in range(repeats):
        a_times.append(seconds(a))
        b_times.append(seconds(b))
    return statistics.median(a_times), statistics.median(b_times), difference


def modulated_layers(g: Generator) -> list[dict[str, int]]:
    """Shapes of every modulated convolution in one forward pass at batch 1."""
    layers: list[dict[str, int]] = []

    def record(conv: ModulatedConv2d, args: tuple, out: Tensor) -> None:
        x = args[0]
        layers.append(
            {
                "weight": conv.weight.numel(),
                "input": x[0].numel(),
                # the demodulation multiplies the convolution's output (before the blur when upsampling)
                "output": conv.out_channels * (2 * x.shape[-2] + 1) * (2 * x.shape[-1] + 1)
                if conv.upsample
                else out[0].numel(),
                "demodulate": int(conv.demodulate),
            }
        )

    handles = [m.register_forward_hook(record) for m in g.modules() if isinstance(m, ModulatedConv2d)]
    with torch.no_grad():
        g(torch.randn(1, g.n_latent, g.style_dim))
    for handle in handles:
        handle.remove()
    return layers


def bytes_per_image(layers: list[dict[str, int]], batch: int) -> dict[str, float]:
    """Memory traffic of the modulated convolutions per image, in bytes.

    Per-sample form, per weight element and image: write W*s, pow (read, write), sum (read), demodulate
    (read, write), the convolution's read: 7 passes (2 without demodulation: write, read), 4 bytes each
    in fp32. Under bf16 autocast the same fp32 passes, then a cast (read 4, write 2) and a bf16 read.
    Shared-weight form: per image only activations: x*s (read, write the input), the convolution
    (read input, write output), demodulation (read, write the output); the shared weight is read twice
    per batch (convolution, sum of squares), so 2/batch passes per image.
    The convolutions' own input read and output write are in both forms.
    """
    totals = dict.fromkeys(("old fp32", "new fp32", "old bf16", "new bf16"), 0.0)
    for layer in layers:
        weight, act_in, act_out, demod = layer["weight"], layer["input"], layer["output"], layer["demodulate"]
        conv_io = act_in + act_out
        fp32_passes = 7 if demod else 2
        totals["old fp32"] += 4 * (fp32_passes * weight + conv_io)
        totals["old bf16"] += (4 * (fp32_passes - 1) + 4 + 2 + 2) * weight + 2 * conv_io
        new_elements = conv_io + 2 * act_in + 2 * demod * act_out
        totals["new fp32"] += 4 * (new_elements + 2 * weight / batch)
        totals["new bf16"] += 2 * (new_elements + 2 * weight / batch)
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    torch.manual_seed(0)
    gen_config, enc_config, _ = model_set_configs(256)
    g = Generator(gen_config).eval()
    encoder = GradualStyleEncoder(enc_config).eval()
    x = torch.rand(args.batch, 3, 256, 256) * 2 - 1
    codes = torch.randn(args.batch, g.n_latent, g.style_dim)

    def f_in(form: str) -> Callable[[], Tensor]:
        def run() -> Tensor:
            with heads_form(encoder, form):
                return encoder(x)

        return run

    def g_in(form: str) -> Callable[[], Tensor]:
        def run() -> Tensor:
            with modulated_form(g, form):
                return g(codes)

        return run

    with torch.no_grad(), LoadWatch() as load:
        f_old, f_new, f_diff = compare(f_in("per_head"), f_in("batched"), args.repeats)
        g_old, g_new, g_diff = compare(g_in("per_sample"), g_in("shared_weight"), args.repeats)
    per_image = args.batch
    traffic = bytes_per_image(modulated_layers(g), args.batch)
    n_weights = sum(layer["weight"] for layer in modulated_layers(g))

    gb = 1e9
    lines = [
        "## Model forms: two forms each of f and g at 256 px (`bench/model_forms.py`)",
        "",
        f"Machine: {machine_description()}; torch threads: {torch.get_num_threads()}.",
        "",
        f"CPU fp32, batch {args.batch}, random weights, median of {args.repeats} alternating repeats "
        "after one warm-up; seconds per image (wall).",
        "",
        "| model | form A, s/image | form B, s/image | B / A | max abs difference |",
        "|---|---:|---:|---:|---:|",
        f"| f: 14 map2style heads one by one (A) → batched per level (B) | {f_old / per_image:.3f} | "
        f"{f_new / per_image:.3f} | {f_new / f_old:.2f} | {f_diff:.1e} |",
        f"| g: per-sample grouped (A) → shared-weight (B) modulated conv | {g_old / per_image:.3f} | "
        f"{g_new / per_image:.3f} | {g_new / g_old:.2f} | {g_diff:.1e} |",
        "",
        "The CPU path runs f's heads one by one (A) and g's shared weight (B); the CUDA state runs the "
        "heads batched (docs/gpu.md). This run "
        + (
            "agrees with the CPU's choice."
            if f_old <= f_new and g_new <= g_old
            else "**contradicts the CPU's choice.**"
        ),
        "",
        f"Bytes moved per image by g's modulated convolutions (analytic, `bytes_per_image`; "
        f"{n_weights / 1e6:.1f} M modulated weight elements; batch {args.batch} for the shared weight's "
        "reads). Noise, bias, activation and blur are left out: in fp32 they move the same bytes in both "
        "forms (the old code's fp32 noise and biases also upcast every bf16 activation; not counted here).",
        "",
        "| precision | per-sample form, GB/image | shared-weight form, GB/image | ratio |",
        "|---|---:|---:|---:|",
        f"| fp32 | {traffic['old fp32'] / gb:.3f} | {traffic['new fp32'] / gb:.3f} | "
        f"{traffic['old fp32'] / traffic['new fp32']:.1f}x |",
        f"| bf16 autocast | {traffic['old bf16'] / gb:.3f} | {traffic['new bf16'] / gb:.3f} | "
        f"{traffic['old bf16'] / traffic['new bf16']:.1f}x |",
    ]
    text = "\n".join(lines)
    print(text)
    update_section("model_forms", text, load)


if __name__ == "__main__":
    main()
