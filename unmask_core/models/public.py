"""Public checkpoint formats in: each loader adapts foreign weights to our modules, strictly on keys,
with configs inferred from the weights' shapes.

- rosinality StyleGAN2: `{'g_ema': state_dict, 'latent_avg'?: Tensor, ...}`
- pSp: `{'state_dict': {'encoder.*', 'decoder.*'}, 'opts': dict, 'latent_avg': Tensor}`
- TreB1eN / pSp `model_ir_se50.pth`: a bare IR-SE50 state dict (ArcFace; or the encoder body's init)
- facenet-pytorch `InceptionResnetV1` state dict (its classification head `logits.*` is dropped)
- LPIPS: the `lpips` package's linear heads plus AlexNet `features` from a torchvision state dict

Failures raise `CheckpointError`, naming the file and the offending keys.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from unmask_core.models.encoder import EncoderConfig, GradualStyleEncoder
from unmask_core.models.format import (
    CheckpointError,
    build_config,
    check_fit,
    key_list,
    load_strict,
    torch_load,
)
from unmask_core.models.irse import UNITS_BY_DEPTH, Backbone, BackboneConfig
from unmask_core.models.psp import PSP
from unmask_core.models.stylegan2 import Generator, GeneratorConfig

# ---------------------------------------------------------------- inferring configs from public weights


def _count(state_dict: Mapping[str, Any], pattern: str) -> int:
    n = 0
    while pattern.format(n) in state_dict:
        n += 1
    return n


def infer_generator_config(state_dict: Mapping[str, Tensor], uri: str = "<weights>") -> GeneratorConfig:
    """GeneratorConfig from a rosinality-layout state dict (size, style_dim, n_mlp, channel widths)."""
    try:
        n_mlp = sum(1 for i in range(1, 64) if f"style.{i}.weight" in state_dict)
        style_dim = state_dict["style.1.weight"].shape[1]
        n_blocks = _count(state_dict, "to_rgbs.{}.conv.weight")
        observed = [state_dict["input.input"].shape[1]]
        observed += [state_dict[f"convs.{2 * k}.conv.weight"].shape[1] for k in range(n_blocks)]
    except (KeyError, IndexError) as exc:
        raise CheckpointError(f"{uri}: not a rosinality Generator state dict: no key {exc}") from None
    size = 2 ** (n_blocks + 2)
    resolutions = [2**i for i in range(2, n_blocks + 3)]
    multipliers = [2.0] + sorted({c * r / 16384 for c, r in zip(observed, resolutions)})
    for multiplier in multipliers:
        fields = dict(size=size, style_dim=style_dim, n_mlp=n_mlp, channel_multiplier=multiplier)
        config = build_config(GeneratorConfig, dict(fields, max_channels=max(observed)), uri)
        if [config.channels(r) for r in resolutions] == observed:
            if float(multiplier).is_integer():
                config.channel_multiplier = int(multiplier)
            return config
    raise CheckpointError(f"{uri}: generator widths {observed} per resolution fit no GeneratorConfig")


def _infer_body(state_dict: Mapping[str, Tensor], uri: str) -> dict[str, Any]:
    depths = [
        state_dict[f"body.{i}.res_layer.1.weight"].shape[0]
        for i in range(_count(state_dict, "body.{}.res_layer.1.weight"))
    ]
    if not depths or "input_layer.0.weight" not in state_dict:
        raise CheckpointError(
            f"{uri}: not an IR-SE state dict: no keys input_layer.0.weight / body.0.res_layer.*"
        )
    units: list[int] = []
    widths: list[int] = []
    for depth in depths:  # a stage is a run of units of one width
        if widths and widths[-1] == depth:
            units[-1] += 1
        else:
            widths.append(depth)
            units.append(1)
    body: dict[str, Any] = {
        "widths": tuple(widths),
        "mode": "ir_se" if "body.0.res_layer.5.fc1.weight" in state_dict else "ir",
    }
    depth = next((n for n, u in UNITS_BY_DEPTH.items() if u == tuple(units)), None)
    body.update({"num_layers": depth, "units": None} if depth else {"units": tuple(units)})
    return body


def infer_backbone_config(state_dict: Mapping[str, Tensor], uri: str = "<weights>") -> BackboneConfig:
    body = _infer_body(state_dict, uri)
    try:
        linear = state_dict["output_layer.3.weight"]
    except KeyError:
        raise CheckpointError(
            f"{uri}: not an IR-SE Backbone state dict: no key output_layer.3.weight"
        ) from None
    spatial = math.isqrt(linear.shape[1] // body["widths"][-1])
    return build_config(
        BackboneConfig,
        dict(
            body,
            input_size=16 * spatial,
            embedding_dim=linear.shape[0],
            affine="output_layer.4.weight" in state_dict,
        ),
        uri,
    )


def infer_encoder_config(state_dict: Mapping[str, Tensor], uri: str = "<weights>") -> EncoderConfig:
    """EncoderConfig from a pSp GradualStyleEncoder state dict (prefix removed)."""
    body = _infer_body(state_dict, uri)
    n_styles = _count(state_dict, "styles.{}.linear.weight")
    if not n_styles:
        raise CheckpointError(f"{uri}: not a GradualStyleEncoder state dict: no key styles.0.linear.weight")
    convs = [
        sum(1 for k in state_dict if k.startswith(f"styles.{i}.convs.") and k.endswith(".weight"))
        for i in range(n_styles)
    ]
    coarse = sum(1 for c in convs if c == convs[0])
    middle = coarse + sum(1 for c in convs if c == convs[0] + 1)
    config = dict(
        body,
        input_size=16 * 2 ** convs[0],
        n_styles=n_styles,
        style_dim=state_dict["styles.0.linear.weight"].shape[0],
        input_nc=state_dict["input_layer.0.weight"].shape[1],
        coarse_ind=coarse,
        middle_ind=middle,
    )
    return build_config(EncoderConfig, config, uri)


def _sub_dict(state_dict: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _dict_with(obj: Any, keys: tuple[str, ...], uri: str, what: str) -> dict:
    if not isinstance(obj, dict) or any(k not in obj for k in keys):
        found = key_list(sorted(map(str, obj))) if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{uri}: not a {what} checkpoint: needs keys {list(keys)}, found {found}")
    return obj


# ---------------------------------------------------------------- public formats


def load_rosinality_generator(
    uri: str, config: GeneratorConfig | None = None
) -> tuple[Generator, Tensor | None]:
    """rosinality `{'g_ema': ..., 'latent_avg'?}` -> (Generator in eval mode, latent_avg or None)."""
    obj = _dict_with(torch_load(uri), ("g_ema",), uri, "rosinality StyleGAN2")
    state_dict = obj["g_ema"]
    generator = Generator(config or infer_generator_config(state_dict, uri))
    load_strict(generator, state_dict, uri, f"Generator({generator.config})")
    latent_avg = obj.get("latent_avg")
    return generator.eval(), latent_avg if isinstance(latent_avg, Tensor) else None


def load_psp(
    uri: str,
    encoder_config: EncoderConfig | None = None,
    generator_config: GeneratorConfig | None = None,
    output_size: int | None = None,
) -> PSP:
    """pSp `{'state_dict': {encoder.*, decoder.*}, 'opts', 'latent_avg'}` -> PSP in eval mode.

    output_size defaults to min(256, generator size): pSp pools every output to 256 px.
    """
    obj = _dict_with(torch_load(uri), ("state_dict", "latent_avg"), uri, "pSp")
    state_dict = obj["state_dict"]
    encoder_sd, decoder_sd = _sub_dict(state_dict, "encoder."), _sub_dict(state_dict, "decoder.")
    encoder = GradualStyleEncoder(encoder_config or infer_encoder_config(encoder_sd, uri))
    decoder = Generator(generator_config or infer_generator_config(decoder_sd, uri))
    if not isinstance(obj["latent_avg"], Tensor):
        raise CheckpointError(f"{uri}: pSp latent_avg is {type(obj['latent_avg']).__name__}, not a tensor")
    try:
        psp = PSP(encoder, decoder, obj["latent_avg"], output_size or min(256, decoder.size))
    except ValueError as exc:
        raise CheckpointError(f"{uri}: {exc}") from None
    load_strict(psp, state_dict, uri, "pSp (encoder.* + decoder.*)")
    return psp.eval()


def _bare_state_dict(obj: Any, uri: str, what: str) -> dict[str, Tensor]:
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{uri}: not a {what} state dict (a {type(obj).__name__})")
    return obj


def load_irse50(uri: str, config: BackboneConfig | None = None) -> Backbone:
    """`model_ir_se50.pth` (a bare Backbone state dict) -> ArcFace IR-SE Backbone in eval mode."""
    state_dict = _bare_state_dict(torch_load(uri), uri, "IR-SE Backbone")
    backbone = Backbone(config or infer_backbone_config(state_dict, uri))
    load_strict(backbone, state_dict, uri, "IR-SE Backbone")
    return backbone.eval()


def init_encoder_from_irse50(encoder: GradualStyleEncoder, uri: str) -> None:
    """pSp's encoder init: copy `input_layer.*` and `body.*` from model_ir_se50.pth (its head is unused).

    Strict on those keys: every input_layer/body weight of the encoder must be in the file, same shape.
    """
    state_dict = _bare_state_dict(torch_load(uri), uri, "IR-SE Backbone")
    wanted = {k: v for k, v in encoder.state_dict().items() if k.startswith(("input_layer.", "body."))}
    found = {k: v for k, v in state_dict.items() if k.startswith(("input_layer.", "body."))}
    check_fit(uri, "the encoder's IR-SE body (input_layer.*, body.*)", wanted, found)
    encoder.load_state_dict(found, strict=False)


def new_facenet() -> nn.Module:
    """facenet-pytorch's InceptionResnetV1 (embeddings only), randomly initialised."""
    from facenet_pytorch import InceptionResnetV1

    # pretrained=None: facenet-pytorch would otherwise download weights.
    return InceptionResnetV1(pretrained=None, classify=False)


def load_facenet(uri: str) -> nn.Module:
    """facenet-pytorch InceptionResnetV1 state dict (e.g. vggface2) -> embedding model in eval mode.

    The classifier `logits.*` of the released weights is dropped: we use embeddings only.
    """
    state_dict = _bare_state_dict(torch_load(uri), uri, "InceptionResnetV1")
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith("logits.")}
    model = new_facenet()
    load_strict(model, state_dict, uri, "facenet-pytorch InceptionResnetV1")
    return model.eval()


# LPIPS' AlexNet slices hold torchvision `features` layers under their original indices.
_LPIPS_SLICES = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}


def load_lpips(alexnet_uri: str | None, spatial: bool = False) -> nn.Module:
    """LPIPS (AlexNet, v0.1) with the package's linear heads and AlexNet weights from a local file.

    `alexnet_uri`: a torchvision-format `alexnet` state dict (`features.*`, `classifier.*`, or a
    bare `features` dict). None builds a randomly initialised AlexNet, only for tests and smoke runs.
    `spatial=True` returns per-pixel distances [B, 1, H, W].
    """
    import lpips

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's deprecation notice for pretrained=False
        model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, spatial=spatial, verbose=False)
    if alexnet_uri is not None:
        state_dict = _bare_state_dict(torch_load(alexnet_uri), alexnet_uri, "torchvision AlexNet")
        features = {k: v for k, v in state_dict.items() if not k.startswith("classifier.")}
        features = {(k if k.startswith("features.") else f"features.{k}"): v for k, v in features.items()}
        expected = {}
        for index, slice_index in _LPIPS_SLICES.items():
            layer = getattr(getattr(model.net, f"slice{slice_index}"), str(index))
            expected.update({f"features.{index}.{n}": t for n, t in layer.state_dict().items()})
        check_fit(alexnet_uri, "torchvision AlexNet features", expected, features)
        for index, slice_index in _LPIPS_SLICES.items():
            layer = getattr(getattr(model.net, f"slice{slice_index}"), str(index))
            layer.load_state_dict({n: features[f"features.{index}.{n}"] for n in ("weight", "bias")})
    return model.eval().requires_grad_(False)
