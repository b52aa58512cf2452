"""Our g, f, IR-SE and pSp compute what the public reference implementations compute.

Every `*.json` fixture in UNMASK_REFERENCE_DIR (default tests/fixtures/reference, shipped with the
repo) is checked: the weights are rebuilt from the spec (the README's contract), our module must have
exactly the reference's keys and shapes, load them strictly, and reproduce each reference call's output.
Further tests cover what the fixtures cannot see (kernel flips, other sizes, inference options).
"""

from __future__ import annotations

import ast
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from unmask_core.accelerator import CUDA_STATE_ENV
from unmask_core.models.encoder import EncoderConfig, GradualStyleEncoder, StyleHeads
from unmask_core.models.irse import Backbone, BackboneConfig, id_preprocess
from unmask_core.models.psp import PSP, LatentEncoder
from unmask_core.models.stylegan2 import Generator, GeneratorConfig, fir_filter, upsample_fir

REPO_ROOT = Path(__file__).resolve().parent.parent
REFERENCE_DIR = Path(
    os.environ.get("UNMASK_REFERENCE_DIR", Path(__file__).resolve().parent / "fixtures" / "reference")
)
FIXTURES = sorted(REFERENCE_DIR.glob("*.json"))


# ---------------------------------------------------------------- the README's weight contract


def rule_value(rule: str, shape: list[int], base: torch.Tensor, exact: torch.Tensor | None) -> torch.Tensor:
    if rule == "normal":
        return base
    if rule.startswith("normal_div:"):
        return base / float(rule.split(":", 1)[1])
    if rule == "fan_in":
        return base / math.sqrt(math.prod(shape[1:]))
    if rule == "small":
        return 0.1 * base
    if rule == "one_plus_small":
        return 1 + 0.1 * base
    if rule == "prelu":
        return 0.25 + 0.05 * base
    if rule == "pos_var":
        return base.abs() + 0.5
    if rule == "zero_count":
        return torch.zeros(shape, dtype=torch.int64)
    if rule == "exact":
        assert exact is not None, "an 'exact' entry has no tensor in the fixture's .pt"
        return exact
    raise AssertionError(f"unknown weight rule {rule!r}")


def build_weights(seed: int, entries: list[list], exact: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    weights = {}
    for i, row in enumerate(entries):
        key, shape, _dtype, rule = row[:4]
        index = row[4] if len(row) > 4 else i
        generator = torch.Generator().manual_seed(seed * 100000 + index)
        base = torch.randn(shape, generator=generator, dtype=torch.float32)
        weights[key] = rule_value(rule, shape, base, exact.get(key))
    return weights


# ---------------------------------------------------------------- reference constructors -> our modules

POSITIONAL = {
    "Generator": ["size", "style_dim", "n_mlp", "channel_multiplier"],
    "GradualStyleEncoder": ["num_layers", "mode", "opts"],
    "Backbone": ["input_size", "num_layers", "mode", "drop_ratio", "affine"],
    "pSp": ["opts"],
}


def _literal(node: ast.AST) -> Any:
    if isinstance(node, ast.Call):  # opts=SimpleNamespace(...)
        return {kw.arg: _literal(kw.value) for kw in node.keywords}
    return ast.literal_eval(node)


def parse_reference(reference: str) -> tuple[str, dict[str, Any]]:
    """'repo@commit path:Ctor(args)' -> ('Ctor', {arg: value}) with positional args named."""
    call = ast.parse(reference.split(":", 1)[1], mode="eval").body
    assert isinstance(call, ast.Call) and isinstance(call.func, ast.Name), reference
    name = call.func.id
    assert name in POSITIONAL, f"no equivalent of reference constructor {name!r} in our models"
    args = dict(zip(POSITIONAL[name], (_literal(a) for a in call.args)))
    args.update({kw.arg: _literal(kw.value) for kw in call.keywords})
    return name, args


def build_ours(spec: dict) -> tuple[str, torch.nn.Module]:
    name, args = parse_reference(spec["reference"])
    inputs = spec["inputs"]
    if name == "Generator":
        config = GeneratorConfig(
            size=args["size"], style_dim=args.get("style_dim", 512), n_mlp=args.get("n_mlp", 8),
            channel_multiplier=args.get("channel_multiplier", 2),
        )  # fmt: skip
        return name, Generator(config)
    if name == "GradualStyleEncoder":
        opts = args["opts"]
        return name, GradualStyleEncoder(
            EncoderConfig(
                input_size=inputs["x"]["shape"][-1], n_styles=opts["n_styles"], num_layers=args["num_layers"],
                mode=args["mode"], input_nc=opts.get("input_nc", 3),
            )
        )  # fmt: skip
    if name == "Backbone":
        config = BackboneConfig(
            input_size=args["input_size"], num_layers=args["num_layers"], mode=args.get("mode", "ir"),
            drop_ratio=args.get("drop_ratio", 0.4), affine=args.get("affine", True),
        )  # fmt: skip
        return name, Backbone(config)
    opts = args["opts"]
    assert opts.get("encoder_type") == "GradualStyleEncoder" and opts.get("start_from_latent_avg")
    assert not opts.get("learn_in_w")
    generator = Generator(GeneratorConfig(size=opts["output_size"]))
    encoder_config = EncoderConfig(input_size=inputs["x"]["shape"][-1], n_styles=generator.n_latent)
    # latent_avg is set from the spec's extra_entries after loading, as pSp sets it after its load.
    placeholder = torch.zeros(generator.n_latent, generator.style_dim)
    return name, PSP(GradualStyleEncoder(encoder_config), generator, placeholder, output_size=256)


class RosinalityGeneratorAPI:
    """rosinality's Generator call conventions, expressed with our generator."""

    def __init__(self, g: Generator) -> None:
        self.g = g
        self.style = g.mapping

    def __call__(
        self, styles, input_is_latent=False, randomize_noise=True, truncation=1, return_latents=False
    ):
        assert not randomize_noise, "our generator always uses its fixed noise buffers"
        assert truncation == 1 and len(styles) == 1
        w = styles[0] if input_is_latent else self.g.mapping(styles[0])
        if w.ndim == 2:  # one w for every layer
            w = w.unsqueeze(1).repeat(1, self.g.n_latent, 1)
        return self.g(w), (w if return_latents else None)


class PSPAPI:
    """pSp's forward conventions, expressed with our PSP."""

    def __init__(self, psp: PSP) -> None:
        self.psp = psp

    def __call__(self, x, resize=True, input_code=False, randomize_noise=True, return_latents=False):
        assert not input_code and not randomize_noise
        codes = self.psp.encode(x)
        images = self.psp.decode(codes) if resize else self.psp.decoder(codes)
        return (images, codes) if return_latents else images


def reference_api(name: str, module: torch.nn.Module) -> Any:
    if name == "Generator":
        return RosinalityGeneratorAPI(module)
    if name == "pSp":
        return PSPAPI(module)
    return module  # encoder and backbone are called as m(x) in both implementations


@pytest.mark.parametrize("spec_path", FIXTURES or [None], ids=[p.stem for p in FIXTURES] or ["none"])
def test_module_reproduces_reference_fixture(spec_path: Path | None, monkeypatch) -> None:
    if spec_path is None:
        pytest.fail(f"no reference fixtures (*.json) in {REFERENCE_DIR}")
    spec = json.loads(spec_path.read_text())
    blob = torch.load(spec_path.with_suffix(".pt"), map_location="cpu", weights_only=True)
    name, module = build_ours(spec)

    expected_shapes = {row[0]: list(row[1]) for row in spec["entries"]}
    ours = {k: list(v.shape) for k, v in module.state_dict().items()}
    assert sorted(set(ours) - set(expected_shapes)) == [], "keys the reference does not have"
    assert sorted(set(expected_shapes) - set(ours)) == [], "reference keys we do not have"
    assert ours == expected_shapes

    module.load_state_dict(build_weights(spec["seed"], spec["entries"], blob["exact"]), strict=True)
    if spec.get("extra_entries"):
        extra = build_weights(spec["seed"], spec["extra_entries"], {})
        assert torch.equal(extra["latent_avg"], blob["extra"]["latent_avg"])
        assert isinstance(module, PSP)
        module.latent_avg.copy_(extra["latent_avg"])
    module.eval()

    # The encoder's map2style heads run in one form per device (StyleHeads.forward): both must match.
    heads = any(isinstance(m, StyleHeads) for m in module.modules())
    for state in ("plain", CUDA_STATE_ENV) if heads else ("plain",):
        monkeypatch.setenv(CUDA_STATE_ENV, "1" if state == CUDA_STATE_ENV else "0")
        namespace: dict[str, Any] = {
            "torch": torch,
            "inputs": blob["inputs"],
            "m": reference_api(name, module),
        }
        with torch.no_grad():
            for output, expression in spec["calls"].items():
                namespace[output] = eval(expression, {"__builtins__": {}}, namespace)  # noqa: S307 - fixture data
        for output, reference in blob["outputs"].items():
            ours_out = namespace[output]
            assert ours_out.shape == reference.shape, output
            tolerance = 1e-4 * max(1.0, reference.abs().max().item())
            error = (ours_out.float() - reference).abs().max().item()
            where = f"{spec_path.stem}.{output} ({state})"
            assert error <= tolerance, f"{where}: max abs diff {error:.3g} > {tolerance:.3g}"


def test_reference_fixture_folder_is_not_empty() -> None:
    assert FIXTURES, f"no reference fixtures (*.json) in {REFERENCE_DIR}"


# ---------------------------------------------------------------- what the fixtures cannot see


def upfirdn2d_by_definition(
    x: torch.Tensor, kernel: torch.Tensor, up: int, pad: tuple[int, int]
) -> torch.Tensor:
    """Zero-insert, pad, then a true convolution (flipped kernel), one tap at a time."""
    n, c, h, w = x.shape
    upsampled = torch.zeros(n, c, h * up, w * up, dtype=x.dtype)
    upsampled[:, :, ::up, ::up] = x
    padded = F.pad(upsampled, (pad[0], pad[1], pad[0], pad[1]))
    taps = kernel.shape[0]
    out_h, out_w = padded.shape[2] - taps + 1, padded.shape[3] - taps + 1
    out = torch.zeros(n, c, out_h, out_w, dtype=x.dtype)
    for i in range(taps):
        for j in range(taps):
            out += padded[:, :, i : i + out_h, j : j + out_w] * kernel[taps - 1 - i, taps - 1 - j]
    return out


def test_fir_ops_equal_upfirdn2d_for_asymmetric_kernels() -> None:
    # The reference blur kernel is symmetric, so a missing kernel flip would pass the fixtures.
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    kernel = torch.rand(4, 4, dtype=torch.float64)
    torch.testing.assert_close(upsample_fir(x, kernel, 2), upfirdn2d_by_definition(x, kernel, 2, (2, 1)))
    torch.testing.assert_close(fir_filter(x, kernel, (1, 1)), upfirdn2d_by_definition(x, kernel, 1, (1, 1)))
    torch.testing.assert_close(fir_filter(x, kernel, (2, 1)), upfirdn2d_by_definition(x, kernel, 1, (2, 1)))


def test_generator_layout_follows_size() -> None:
    for size, n_latent in ((64, 10), (256, 14), (1024, 18)):
        g = Generator(GeneratorConfig(size=size, style_dim=8, n_mlp=2, max_channels=4))
        keys = g.state_dict().keys()
        assert g.n_latent == n_latent
        assert sum(k.startswith("noises.") for k in keys) == n_latent - 1
        assert sum(k.endswith(".conv.weight") and k.startswith("convs.") for k in keys) == n_latent - 2
    g = Generator(GeneratorConfig(size=32, style_dim=16, n_mlp=2, max_channels=8)).eval()
    image = g(torch.randn(3, g.n_latent, 16))
    assert image.shape == (3, 3, 32, 32) and torch.isfinite(image).all()
    with pytest.raises(ValueError, match="W\\+"):
        g(torch.randn(3, 16))


def test_flop_counter_traces_the_generator_per_image() -> None:
    # bench/flops.py counts FLOPs under no_grad; a no-grad view of a parameter would break its tracker.
    g = Generator(GeneratorConfig(size=16, style_dim=8, n_mlp=1, max_channels=4)).eval()
    counts = []
    for batch in (1, 2):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            g(torch.randn(batch, g.n_latent, 8))
        counts.append(counter.get_total_flops())
    assert counts[0] > 0 and counts[1] == 2 * counts[0]


def test_mean_latent_is_the_mean_of_the_mapping() -> None:
    g = Generator(GeneratorConfig(size=16, style_dim=16, n_mlp=3, max_channels=8))
    mean = g.mean_latent(250, torch.Generator().manual_seed(3), chunk=100)
    z = torch.randn(250, 16, generator=torch.Generator().manual_seed(3))
    assert mean.shape == (1, 16)
    torch.testing.assert_close(mean, g.mapping(z).mean(0, keepdim=True), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n_styles", [10, 14, 18])
def test_encoder_heads_follow_psp_coarse_middle_fine_split(n_styles: int) -> None:
    config = EncoderConfig(
        input_size=64, n_styles=n_styles, style_dim=8, units=(1, 1, 2, 1), widths=(4, 8, 12, 16)
    )
    encoder = GradualStyleEncoder(config).eval()
    keys = encoder.state_dict()
    convs = [sum(k.startswith(f"styles.{i}.convs.") for k in keys) // 2 for i in range(n_styles)]
    # c3 is 4x4 -> 2 stride-2 convs; p2 8x8 -> 3; p1 16x16 -> 4.
    assert convs == [2] * 3 + [3] * 4 + [4] * (n_styles - 7)
    assert encoder(torch.rand(2, 3, 64, 64) * 2 - 1).shape == (2, n_styles, 8)
    assert encoder.taps == (1, 3, 4)  # last units of stages 2, 3, 4
    with pytest.raises(ValueError, match="64 px"):
        encoder(torch.rand(1, 3, 32, 32))


def test_ir_se50_encoder_taps_body_6_20_23() -> None:
    narrow = EncoderConfig(style_dim=8, widths=(4, 8, 12, 16))  # IR-SE50's units, narrow widths
    assert GradualStyleEncoder(narrow).taps == (6, 20, 23)


def test_id_preprocess_is_psp_crop_and_adaptive_pool() -> None:
    x = torch.rand(2, 3, 256, 256) * 2 - 1
    expected = F.adaptive_avg_pool2d(x[:, :, 35:223, 32:220], (112, 112))
    torch.testing.assert_close(id_preprocess(x), expected, rtol=0, atol=0)
    # Other sizes: the same box, scaled; pooled to the backbone's input size.
    small = F.interpolate(x, size=(64, 64), mode="area")
    out = id_preprocess(small, 56)
    assert out.shape == (2, 3, 56, 56)
    torch.testing.assert_close(out, F.adaptive_avg_pool2d(small[:, :, 9:56, 8:55], (56, 56)), rtol=0, atol=0)


def test_backbone_embeddings_are_unit_length() -> None:
    backbone = Backbone(BackboneConfig(units=(1, 1, 1, 1), widths=(4, 8, 12, 16), embedding_dim=32)).eval()
    features = backbone(torch.rand(3, 3, 112, 112) * 2 - 1)
    assert features.shape == (3, 32)
    torch.testing.assert_close(features.norm(dim=1), torch.ones(3))


def _tiny_psp(**options: bool) -> PSP:
    torch.manual_seed(0)
    g = Generator(GeneratorConfig(size=32, style_dim=16, n_mlp=2, max_channels=16))
    encoder = GradualStyleEncoder(
        EncoderConfig(
            input_size=32, n_styles=g.n_latent, style_dim=16, units=(1, 1, 1, 1), widths=(8, 12, 16, 24)
        )
    )
    return PSP(encoder, g, torch.randn(16) * 0.1, output_size=32, **options).eval()


def test_psp_codes_are_encoder_plus_latent_avg_and_decode_pools() -> None:
    psp = _tiny_psp()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        codes = psp.encode(x)
        torch.testing.assert_close(codes, psp.encoder(x) + psp.latent_avg)
        assert psp.latent_avg.shape == (8, 16)  # a single w broadcast to every style
        torch.testing.assert_close(psp(x), psp.decoder(codes))
        psp.output_size = 16
        torch.testing.assert_close(psp.decode(codes), F.adaptive_avg_pool2d(psp.decoder(codes), 16))
    f = LatentEncoder(psp.encoder, psp.latent_avg)
    # latent_avg travels beside the weights: f's keys are exactly a pSp checkpoint's encoder.* keys.
    assert list(f.state_dict()) == [f"encoder.{k}" for k in psp.encoder.state_dict()]
    assert "latent_avg" not in psp.state_dict()


def test_psp_inference_options_stay_close_to_fp32() -> None:
    reference = _tiny_psp()
    fast = _tiny_psp(bf16=True, channels_last=True)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        codes, fast_codes = reference.encode(x), fast.encode(x)
        image, fast_image = reference(x), fast(x)
    assert fast_codes.dtype == torch.float32 and fast_image.dtype == torch.float32
    assert (fast_codes - codes).abs().max() <= 0.05 * codes.abs().max()
    assert (fast_image - image).abs().max() <= 0.1 * image.abs().max()
    channels_last = _tiny_psp(channels_last=True)
    with torch.no_grad():
        torch.testing.assert_close(channels_last(x), image, rtol=1e-4, atol=1e-4)
