"""GPU benchmark, ready to run in one call on a lent GPU machine (`python -m bench.gpu_unmask`).

Measures on the card it runs on, with the reference 256 px architectures from `models init`:
1. the bf16 dense matmul peak (8192^3 GEMMs), the yardstick for MFU;
2. f+g at 256 px, fp32 and bf16, batch 64: images/s and peak memory;
3. the unmask stage (f+g, bf16, channels_last) over batch sizes: images/s, MFU against (1), peak memory;
4. a few full-size training steps (stage unmask: L2 + LPIPS + ID + L_LR, bf16 autocast): samples/s, memory.
FLOPs per image come from torch.utils.flop_counter on the same modules. Results go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.benchmarks_md import machine_description, update_section


def timed(fn, repeat: int) -> float:
    fn()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeat


def matmul_peak() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    seconds = timed(lambda: a @ b, 20)
    return 2 * 8192**3 / seconds


def flops_per_image(encoder, generator) -> float:
    x = torch.randn(1, 3, 256, 256, device="cuda")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        generator(encoder(x))
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", default="16,32,64,128,256")
    parser.add_argument("--train-batch", type=int, default=8)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    from unmask_core.models.model_set import ModelSet, init_model_set

    lines = [f"## GPU (`bench/gpu_unmask.py`)\n\nMachine: {machine_description()}.\n"]
    peak = matmul_peak()
    lines.append(f"bf16 matmul peak measured: {peak / 1e12:.0f} TFLOP/s.\n")
    with tempfile.TemporaryDirectory() as folder:
        init_model_set(256, folder)
        models = ModelSet(folder, device="cuda")
        encoder = models.encoder("unmask").eval().requires_grad_(False)
        generator = models.generator().eval().requires_grad_(False)
        per_image = flops_per_image(encoder, generator)
        lines.append(f"f+g at 256 px: {per_image / 1e9:.0f} GFLOP/image (flop counter).\n")

        lines += ["| precision | batch | images/s | peak memory |", "|---|---|---|---|"]
        for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            x = torch.randn(64, 3, 256, 256, device="cuda")
            torch.cuda.reset_peak_memory_stats()

            def step(x=x, dtype=dtype):
                with (
                    torch.no_grad(),
                    torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None),
                ):
                    return generator(encoder(x))

            seconds = timed(step, 5)
            lines.append(
                f"| {name} | 64 | {64 / seconds:.0f} | {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB |"
            )

        encoder = encoder.to(memory_format=torch.channels_last)
        generator = generator.to(memory_format=torch.channels_last)
        lines += [
            "",
            "Unmask stage, bf16 + channels_last:",
            "",
            "| batch | images/s | MFU | peak memory |",
            "|---|---|---|---|",
        ]
        best = 0.0
        for batch in [int(b) for b in args.batches.split(",")]:
            x = torch.randn(batch, 3, 256, 256, device="cuda").to(memory_format=torch.channels_last)
            torch.cuda.reset_peak_memory_stats()

            def unmask(x=x):
                with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                    return generator(encoder(x))

            try:
                rate = batch / timed(unmask, 5)
            except torch.OutOfMemoryError:
                lines.append(f"| {batch} | out of memory | | |")
                break
            best = max(best, rate)
            mfu = rate * per_image / peak
            lines.append(
                f"| {batch} | {rate:.0f} | {mfu:.1%} | {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB |"
            )
        lines.append(f"\nBest: {best:.0f} images/s (goal ≥ 1,300 per H100).\n")

        lines.append(train_steps(folder, args.train_batch))
    text = "\n".join(lines)
    print(text)
    update_section("gpu", text)


def train_steps(models_uri: str, batch: int) -> str:
    """A few full-size training steps of stage `unmask` with the full loss, bf16 autocast."""
    from unmask_core.training.config import TrainConfig
    from unmask_core.training.loop import build_training_models, training_step

    cfg = TrainConfig(
        stage="unmask",
        pairs="unused",
        models=models_uri,
        out="unused",
        lpips_backbone="random",
        batch_size=batch,
        gpu=True,
    )
    parts = build_training_models(cfg, "cuda")
    optimizer = torch.optim.Adam(parts.encoder.parameters(), lr=1e-4)
    data = {"T": torch.randn(batch, 3, 256, 256, device="cuda").clamp(-1, 1)}
    data["M"] = data["T"].clone()
    data["M"][..., 140:, 50:200] = 0.5
    torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _ = training_step(
                "unmask", data, parts.encoder, parts.generator, parts.teacher, parts.criterion
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    seconds = timed(step, 5)
    return (
        f"Training, stage unmask, full loss (L2 + LPIPS + ID + L_LR), bf16 autocast, batch {batch} per GPU: "
        f"{batch / seconds:.1f} samples/s, peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB.\n"
    )


if __name__ == "__main__":
    main()
