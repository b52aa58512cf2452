"""The fast forms of g and f compute what the reference forms compute: the shared-weight modulated
convolution, the batched map2style heads, bf16 autocast end to end, inference preparation, meta-device
builds and torch.compile. Golden numbers from the public implementations: test_models_reference.py."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unmask_core.models.encoder import EncoderConfig, GradualStyleBlock, GradualStyleEncoder, upsample_add
from unmask_core.models.irse import Backbone, id_preprocess
from unmask_core.models.model_set import init_model_set, model_set_configs
from unmask_core.models.psp import PSP, LatentEncoder
from unmask_core.models.runtime import (
    build_on_meta,
    compile_in_place,
    prepare_for_inference,
)
from unmask_core.models.stylegan2 import (
    ConstantInput,
    Generator,
    ModulatedConv2d,
    ToRGB,
    Upsample,
    modulated_conv2d_per_sample,
)


def tiny_models(seed: int = 0) -> tuple[Generator, LatentEncoder]:
    """g and f of the 64 px model set's architecture, random weights (non-zero biases and noise weights)."""
    gen_config, enc_config, _ = model_set_configs(64)
    torch.manual_seed(seed)
    g = Generator(gen_config).eval()
    for name, param in g.named_parameters():
        if name.endswith("bias") or name.endswith("noise.weight"):
            param.data.normal_(0, 0.1)
    f = LatentEncoder(GradualStyleEncoder(enc_config), torch.randn(g.style_dim) * 0.1).eval()
    return g, f


# ---------------------------------------------------------------- the shared-weight modulated convolution


@pytest.mark.parametrize(
    "kernel_size, demodulate, upsample", [(3, True, False), (3, True, True), (1, False, False)]
)
def test_shared_weight_form_equals_per_sample_form_with_gradients(
    kernel_size: int, demodulate: bool, upsample: bool
) -> None:
    torch.manual_seed(0)
    conv = ModulatedConv2d(6, 5, kernel_size, 8, demodulate=demodulate, upsample=upsample).double()
    conv.modulation.bias.data.normal_(1, 0.3)
    x = torch.randn(3, 6, 7, 7, dtype=torch.float64)
    style = torch.randn(3, 8, dtype=torch.float64)
    results = []
    for form in (conv, lambda x, s: modulated_conv2d_per_sample(conv, x, s)):
        conv.zero_grad()
        x_in, s_in = x.clone().requires_grad_(), style.clone().requires_grad_()
        out = form(x_in, s_in)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        weight_grads = [p.grad.clone() for p in conv.parameters()]
        results.append((out.detach(), x_in.grad, s_in.grad, weight_grads))
    (out, x_grad, s_grad, w_grads), (ref, x_ref, s_ref, w_refs) = results
    assert out.shape == ref.shape == (3, 5, 14 if upsample else 7, 14 if upsample else 7)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(x_grad, x_ref)
    torch.testing.assert_close(s_grad, s_ref)
    for grad, grad_ref in zip(w_grads, w_refs, strict=True):
        torch.testing.assert_close(grad, grad_ref)


def test_generator_runs_one_ungrouped_convolution_per_layer() -> None:
    g, _ = tiny_models()
    seen_groups = []

    def record(module: nn.Module, args: tuple) -> None:
        seen_groups.append(args[0].shape[0])

    handles = [m.register_forward_pre_hook(record) for m in g.modules() if isinstance(m, ModulatedConv2d)]
    with torch.no_grad():
        g(torch.randn(3, g.n_latent, g.style_dim))
    for handle in handles:
        handle.remove()
    assert seen_groups and set(seen_groups) == {3}  # the batch stays the batch, no [1, B*C, H, W]


# ---------------------------------------------------------------- the batched map2style heads


def small_encoder(n_styles: int = 14) -> GradualStyleEncoder:
    torch.manual_seed(1)
    config = EncoderConfig(
        input_size=64, n_styles=n_styles, style_dim=8, units=(1, 1, 1, 1), widths=(4, 8, 12, 16)
    )
    return GradualStyleEncoder(config).eval()


@pytest.mark.parametrize("n_styles", [10, 14, 18])
def test_batched_heads_equal_psp_per_head_blocks(n_styles: int) -> None:
    encoder = small_encoder(n_styles)
    state = encoder.state_dict()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        c1, c2, c3 = encoder.features(x)
        p2 = upsample_add(c3, encoder.latlayer1(c2))
        p1 = upsample_add(p2, encoder.latlayer2(c1))
        expected = []
        for i in range(n_styles):
            source, spatial = (c3, 4) if i < 3 else (p2, 8) if i < 7 else (p1, 16)
            head = GradualStyleBlock(16, 8, spatial)
            prefix = f"styles.{i}."
            head.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
            expected.append(head(source))
        expected = torch.stack(expected, 1)
        maps = (c3, p2, p1)
        # Both forms, whichever the device picks: batched in the CUDA state, per head elsewhere.
        torch.testing.assert_close(encoder.styles.batched(maps), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(encoder.styles.per_head(maps), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(encoder(x), expected, rtol=1e-5, atol=1e-6)
    assert sum(isinstance(m, nn.Conv2d) for m in encoder.styles.modules()) == 0  # no per-head modules


def test_the_cuda_state_runs_the_heads_batched_and_a_cpu_per_head(monkeypatch) -> None:
    from unmask_core.accelerator import CUDA_STATE_ENV

    encoder = small_encoder()
    calls = []
    for form in ("batched", "per_head"):
        original = getattr(encoder.styles, form)
        monkeypatch.setattr(
            encoder.styles, form, lambda maps, form=form, f=original: calls.append(form) or f(maps)
        )
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        monkeypatch.setenv(CUDA_STATE_ENV, "0")
        encoder(x)
        monkeypatch.setenv(CUDA_STATE_ENV, "1")
        encoder(x)
    assert calls == ["per_head", "batched"]


def test_batched_heads_load_and_report_per_head_keys() -> None:
    source, target = small_encoder(), GradualStyleEncoder(small_encoder().config)
    state = source.state_dict()
    assert "styles.13.convs.6.weight" in state and "styles.0.linear.bias" in state
    target.load_state_dict(state)
    assert all(torch.equal(a, state[k]) for k, a in target.state_dict().items())
    assert list(target.state_dict()) == list(state)

    broken = dict(state)
    del broken["styles.5.convs.2.weight"]
    broken["styles.14.linear.weight"] = torch.zeros(8, 8)
    broken["styles.0.linear.bias"] = torch.zeros(9)
    with pytest.raises(RuntimeError) as info:
        target.load_state_dict(broken)
    message = str(info.value)
    assert "styles.5.convs.2.weight" in message and "styles.14.linear.weight" in message
    assert "size mismatch for styles.0.linear.bias" in message
    assert "middle_" not in message and "coarse_" not in message  # only checkpoint names are shown
    missing, unexpected = target.load_state_dict(
        {k: v for k, v in broken.items() if k != "styles.0.linear.bias"}, strict=False
    )
    assert "styles.5.convs.2.weight" in missing and "styles.0.linear.bias" in missing


# ---------------------------------------------------------------- bf16 end to end


ALLOWED_FP32 = (
    ConstantInput,  # g's learnt 4x4 input: a parameter (cast once by prepare_for_inference), not computed
    ToRGB,  # the RGB skip path accumulates the image over every resolution: fp32, 3 channels
    Upsample,  # that path's upsampling FIR
    Generator,  # its output is the last ToRGB's
    LatentEncoder,  # codes + latent_avg, promoted to fp32 to keep latent_avg's precision
)


def output_dtypes(model: nn.Module, *inputs: torch.Tensor) -> dict[str, tuple[type, torch.dtype]]:
    seen: dict[str, tuple[type, torch.dtype]] = {}
    handles = []
    for name, module in model.named_modules():

        def record(m: nn.Module, args: tuple, out: object, name: str = name) -> None:
            if isinstance(out, torch.Tensor) and out.is_floating_point():
                seen[name or "<top>"] = (type(m), out.dtype)

        handles.append(module.register_forward_hook(record))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(*inputs)
    for handle in handles:
        handle.remove()
    return seen


@pytest.mark.parametrize("weights_cast_once", [False, True])
def test_bf16_autocast_keeps_every_activation_in_bf16(weights_cast_once: bool) -> None:
    g, f = tiny_models()
    if weights_cast_once:
        g, f = prepare_for_inference(g, "cpu", bf16=True), prepare_for_inference(f, "cpu", bf16=True)
    for model, x in ((g, torch.randn(2, g.n_latent, g.style_dim)), (f, torch.rand(2, 3, 64, 64) * 2 - 1)):
        seen = output_dtypes(model, x)
        assert len(seen) > 10
        upcast = [name for name, (kind, dtype) in seen.items() if dtype != torch.bfloat16]
        unexpected = [name for name in upcast if not issubclass(seen[name][0], ALLOWED_FP32)]
        assert unexpected == [], f"fp32 activations between layers: {unexpected}"
        assert all(seen[name][1] == torch.float32 for name in upcast)
    assert any(isinstance(m, ToRGB) for m in g.modules())


def psnr(a: torch.Tensor, b: torch.Tensor, peak_to_peak: float = 2.0) -> float:
    return 10 * math.log10(peak_to_peak**2 / (a - b).pow(2).mean().item())


def test_bf16_matches_fp32_on_the_256_px_architecture() -> None:
    """Random weights (fixed seed) of the reference architectures: bf16 U against fp32 U, and the
    IR-SE matcher's embeddings of both."""
    gen_config, enc_config, arc_config = model_set_configs(256)
    torch.manual_seed(0)
    g = Generator(gen_config).eval()
    latent_avg = g.mean_latent(1000, torch.Generator().manual_seed(1))
    torch.manual_seed(2)
    encoder = GradualStyleEncoder(enc_config).eval()
    torch.manual_seed(3)
    matcher = Backbone(arc_config).eval()
    # Smooth face-sized inputs: bilinear upsampling of coarse noise.
    x = F.interpolate(torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4)), size=256)
    x = x * 2 - 1
    fp32 = PSP(encoder, g, latent_avg, output_size=256)
    bf16 = PSP(encoder, g, latent_avg, output_size=256, bf16=True)
    with torch.no_grad():
        u32, u16 = fp32(x), bf16(x)
        e32, e16 = matcher(id_preprocess(u32.clamp(-1, 1))), matcher(id_preprocess(u16.clamp(-1, 1)))
    assert u16.dtype == torch.float32
    assert psnr(u16, u32) >= 40.0, f"PSNR of U, bf16 vs fp32: {psnr(u16, u32):.1f} dB"
    cosine = F.cosine_similarity(e16, e32).min().item()
    assert cosine >= 0.99, f"embedding cosine {cosine:.4f}"


# ---------------------------------------------------------------- inference preparation


def test_prepare_for_inference_casts_once_and_keeps_fp32_where_autocast_does() -> None:
    g, f = tiny_models()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        reference = g(f(x))
    f = prepare_for_inference(f, "cpu", channels_last=True)
    g = prepare_for_inference(g, "cpu", channels_last=True)
    assert not f.training and not any(p.requires_grad for p in [*f.parameters(), *g.parameters()])
    conv = next(m for m in g.modules() if isinstance(m, ModulatedConv2d) and m.kernel_size == 3)
    assert conv.weight.shape[0] == 1 and conv.weight[0].is_contiguous(memory_format=torch.channels_last)
    assert f.encoder.input_layer[0].weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(g(f(x.contiguous(memory_format=torch.channels_last))), reference)

    prepare_for_inference(g, "cpu", bf16=True)
    prepare_for_inference(f, "cpu", bf16=True)
    assert conv.weight.dtype == torch.bfloat16
    assert conv.weight[0].is_contiguous(memory_format=torch.channels_last)
    batchnorms = [m for m in f.modules() if isinstance(m, nn.BatchNorm2d)]
    assert batchnorms and all(m.weight.dtype == m.running_var.dtype == torch.float32 for m in batchnorms)
    assert all(b.dtype == torch.float32 for b in [*g.buffers(), f.latent_avg])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        image = g(f(x))
    assert psnr(image.float(), reference) > 30


def test_build_on_meta_equals_a_normal_build_and_load() -> None:
    g, f = tiny_models()
    gen_config, enc_config, _ = model_set_configs(64)
    built_g = build_on_meta(lambda: Generator(gen_config), g.state_dict())
    built_f = build_on_meta(
        lambda: LatentEncoder(GradualStyleEncoder(enc_config), f.latent_avg), f.state_dict()
    )
    for built, normal in ((built_g, g), (built_f, f)):
        tensors = dict(built.named_parameters()) | dict(built.named_buffers())
        assert tensors and not any(t.is_meta for t in tensors.values())
        for name, tensor in [*normal.named_parameters(), *normal.named_buffers()]:
            assert torch.equal(tensors[name], tensor), name
    assert torch.equal(built_g.to_rgbs[0].upsample.kernel, g.to_rgbs[0].upsample.kernel)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(built_g.eval()(built_f.eval()(x)), g(f(x)), rtol=0, atol=0)

    class ComputedBuffer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(2))
            self.register_buffer("table", torch.arange(3.0), persistent=False)

    with pytest.raises(RuntimeError, match="table"):
        build_on_meta(ComputedBuffer, {"weight": torch.ones(2)})


# ---------------------------------------------------------------- g∘f as one module


def test_psp_compose_is_g_of_f_and_decodes_at_any_size() -> None:
    g, f = tiny_models()
    psp = PSP.compose(f, g, output_size=64)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(psp.encode(x), f(x))
        torch.testing.assert_close(psp(x), g(f(x)))
        torch.testing.assert_close(psp.decode(f(x), 32), F.adaptive_avg_pool2d(g(f(x)), 32))
    assert psp.encoder is f.encoder and psp.decoder is g


def test_unmasker_runs_g_of_f_as_one_psp_module(tmp_path: Path) -> None:
    from unmask_core.inference import Unmasker

    init_model_set(64, str(tmp_path))
    unmasker = Unmasker(str(tmp_path), matchers=[], device="cpu")
    assert isinstance(unmasker.model, PSP)
    faces = (np.random.default_rng(0).random((2, 64, 64, 3)) * 255).astype(np.uint8)
    result = unmasker.run(faces, batch_size=2)
    assert result.unmasked.shape == (2, 256, 256, 3)
    x = torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        expected = unmasker.model.decoder(unmasker.model.encoder(x) + unmasker.model.latent_avg)
    torch.testing.assert_close(unmasker.unmask(x), expected)


# ---------------------------------------------------------------- torch.compile

COMPILER = shutil.which("cc") or shutil.which("g++")


def test_compile_in_place_off_is_the_module_itself() -> None:
    g, _ = tiny_models()
    assert compile_in_place(g, enabled=False) is g


@pytest.mark.slow
@pytest.mark.timeout(1800)  # inductor builds C++ kernels: minutes on 2 busy cores
@pytest.mark.skipif(COMPILER is None, reason="no C++ compiler (cc or g++): inductor cannot build CPU kernels")
def test_compiled_64px_g_and_f_equal_eager() -> None:
    g, f = tiny_models()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        codes = f(x)
        image = g(codes)
        compiled_f, compiled_g = compile_in_place(f, True), compile_in_place(g, True)
        compiled_codes = compiled_f(x)
        torch.testing.assert_close(compiled_codes, codes, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(compiled_g(codes), image, rtol=1e-4, atol=1e-4)
