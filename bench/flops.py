"""FLOPs per image of f, g and ArcFace, and CPU throughput of f+g (`python -m bench.flops`).

FLOPs come from torch.utils.flop_counter.FlopCounterMode (one multiply-add = 2 FLOPs; convolutions
and matmuls only), counted per image at batch 1 on the meta device, so no arithmetic runs. The
reference figures below were counted with the same counter on the public reference code
(pSp encoder, rosinality generator, pSp's IR-SE50). Throughput is measured on this machine's CPU
with randomly initialised weights (speed does not depend on the values). Results go to the
"models" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.benchmarks_md import LoadWatch, machine_description, update_section
from unmask_core.models.encoder import GradualStyleEncoder
from unmask_core.models.irse import Backbone
from unmask_core.models.model_set import model_set_configs
from unmask_core.models.stylegan2 import Generator, Upsample

REFERENCE_GFLOPS = {"f256": 119.0, "g256": 91.0, "g1024": 151.0, "arcface": 12.6}


def gflops(build, input_shape: tuple[int, ...]) -> float:
    """GFLOPs of one forward pass of `build()` on a zero input of `input_shape` (batch 1)."""
    with torch.device("meta"):
        module = build().eval()
        x = torch.zeros(input_shape)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(x)
    return counter.get_total_flops() / 1e9


def throughput(
    encoder: torch.nn.Module, generator: torch.nn.Module, batch: int, size: int, repeat: int
) -> dict:
    """Wall-clock images/s and process CPU-seconds per image of g(f(x)).

    CPU time counts only this process's cycles, so it moves less than wall time when other jobs
    share the cores.
    """
    x = torch.rand(batch, 3, size, size) * 2 - 1
    with torch.no_grad():
        generator(encoder(x))  # warm-up: first-call allocations and kernel selection
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(repeat):
            generator(encoder(x))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "images_per_s": batch * repeat / wall,
        "s_per_batch": wall / repeat,
        "cpu_s_per_image": cpu / (batch * repeat),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="timed f+g batches at 256 px (default: 2)")
    args = parser.parse_args()

    g256, f256, arcface = model_set_configs(256)
    g1024, f1024, _ = model_set_configs(1024)
    tiny_g, tiny_f, tiny_arcface = model_set_configs(64)
    rows = [
        (
            "f: pSp encoder, 256 px in, 14 styles",
            gflops(lambda: GradualStyleEncoder(f256), (1, 3, 256, 256)),
            "f256",
        ),
        (
            "f: pSp encoder, 256 px in, 18 styles (1024 set)",
            gflops(lambda: GradualStyleEncoder(f1024), (1, 3, 256, 256)),
            None,
        ),
        ("g: StyleGAN2 256 px, W+ in", gflops(lambda: Generator(g256), (1, g256.n_latent, 512)), "g256"),
        ("g: StyleGAN2 1024 px, W+ in", gflops(lambda: Generator(g1024), (1, g1024.n_latent, 512)), "g1024"),
        ("ArcFace: IR-SE50, 112 px", gflops(lambda: Backbone(arcface), (1, 3, 112, 112)), "arcface"),
        ("tiny f (64 px set)", gflops(lambda: GradualStyleEncoder(tiny_f), (1, 3, 64, 64)), None),
        (
            "tiny g (64 px set)",
            gflops(lambda: Generator(tiny_g), (1, tiny_g.n_latent, tiny_g.style_dim)),
            None,
        ),
        ("tiny ArcFace (64 px set), 112 px", gflops(lambda: Backbone(tiny_arcface), (1, 3, 112, 112)), None),
    ]
    # The skip path's upsample+blur, counted alone: the one op whose count differs from the reference.
    skip_upsample = sum(gflops(Upsample, (1, 3, s // 2, s // 2)) for s in (8, 16, 32, 64, 128, 256))

    threads = torch.get_num_threads()
    torch.manual_seed(0)
    with LoadWatch() as load:
        reference_size = throughput(
            GradualStyleEncoder(f256).eval(), Generator(g256).eval(), 4, 256, args.repeat
        )
        tiny = throughput(GradualStyleEncoder(tiny_f).eval(), Generator(tiny_g).eval(), 8, 64, 10)

    lines = [
        "## Models: FLOPs per image and CPU throughput (`bench/flops.py`)",
        "",
        f"Machine: {machine_description()}; torch threads: {threads}.",
        "",
        "FLOPs: `torch.utils.flop_counter.FlopCounterMode` (multiply-add = 2 FLOPs), batch 1, per image.",
        "",
        "| model | ours, GFLOP/image | reference, GFLOP/image | ours / reference |",
        "|---|---:|---:|---:|",
    ]
    for label, ours, key in rows:
        published = REFERENCE_GFLOPS.get(key) if key else None
        ratio = f"{ours / published:.3f}" if published else "–"
        lines.append(f"| {label} | {ours:.2f} | {published if published else '–'} | {ratio} |")
    lines += [
        "",
        "Where the counts differ and why: our layers run the same convolutions as the references, with "
        "one exception. The skip path's upsample + blur (rosinality `Upsample`: zero-insertion, then a "
        "4x4 FIR at the doubled resolution) is one depthwise transposed convolution here, which the "
        f"counter charges at the input resolution: {skip_upsample * 1e3:.1f} MFLOP in all at 256 px "
        "instead of about 4x that, so g is lower by a few MFLOP (under 0.02%). "
        "The blur after each upsampling modulated convolution stays a separate 4x4 depthwise "
        "convolution, as in the reference: folding it into the transposed 3x3 convolution (a 6x6 "
        "kernel at stride 2) would quadruple that layer's FLOPs. Everything else (grouped modulated "
        "convolutions, IR-SE units, FPN, map2style heads) is the reference's op sequence, so the "
        "remaining differences are the rounding of the reference figures.",
        "",
        "CPU throughput, fp32, randomly initialised weights:",
        "",
        "| f+g | batch | images/s (wall) | s/batch (wall) | CPU-s/image (this process) |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {label} | {batch} | {r['images_per_s']:.3g} | {r['s_per_batch']:.3g} "
            f"| {r['cpu_s_per_image']:.3g} |"
            for label, batch, r in (("reference 256 px", 4, reference_size), ("tiny 64 px", 8, tiny))
        ),
        "",
        "CPU-seconds per image count only this process, but still grow under contention (OpenMP threads "
        "spin while a peer is descheduled); "
        f"at full use of {threads} threads, wall time per image is about CPU time / {threads}.",
    ]
    markdown = "\n".join(lines)
    update_section("models", markdown, load)
    print(markdown)


if __name__ == "__main__":
    main()
