"""Checkpoints: public formats in, our own format out, and model sets.

Public formats (loaded strictly on keys; configs inferred from the weights' shapes):
- rosinality StyleGAN2: `{'g_ema': state_dict, 'latent_avg'?: Tensor, ...}`
- pSp: `{'state_dict': {'encoder.*', 'decoder.*'}, 'opts': dict, 'latent_avg': Tensor}`
- TreB1eN / pSp `model_ir_se50.pth`: a bare IR-SE50 state dict (ArcFace; or the encoder body's init)
- facenet-pytorch `InceptionResnetV1` state dict (its classification head `logits.*` is dropped)
- LPIPS: the `lpips` package's linear heads plus AlexNet `features` from a torchvision state dict

Our format, one file per model, read with `torch.load(weights_only=True)`:
`{'format': 'unmask-checkpoint/1', 'kind': 'generator'|'encoder'|'arcface'|'facenet', 'config': dict,
'state_dict': {...}, 'extra': {...}, 'sha256': hex}`. The sha256 covers every tensor of the state dict
and of `extra` (an encoder's latent_avg changes its output, so it belongs in its identity).

A model set is a folder (local or s3://) holding g, f0, f, ArcFace and FaceNet in our format plus
`model_set.json`; see `ModelSet`.

Every failure to read or fit weights raises `CheckpointError` (a `UserError`) whose one-line message
names the file and the offending keys.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import pickle
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from unmask_core import storage
from unmask_core.errors import UserError
from unmask_core.models.encoder import EncoderConfig, GradualStyleEncoder
from unmask_core.models.irse import UNITS_BY_DEPTH, Backbone, BackboneConfig
from unmask_core.models.psp import PSP, LatentEncoder
from unmask_core.models.stylegan2 import Generator, GeneratorConfig

FORMAT = "unmask-checkpoint/1"
MODEL_SET_FORMAT = "unmask-model-set/1"
KINDS = ("generator", "encoder", "arcface", "facenet")
MEAN_LATENT_SAMPLES = 10_000


class CheckpointError(UserError):
    """A weights file that cannot be read, is not weights, or does not fit the model."""


# ---------------------------------------------------------------- reading and writing files


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def torch_load(uri: str) -> Any:
    """`torch.load(weights_only=True)` of a local or s3:// file, with one-line errors."""
    try:
        data = storage.read_bytes(uri)
    except UserError as exc:
        raise CheckpointError(str(exc)) from None
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        refused = [line.strip() for line in text.splitlines() if "Unsupported global" in line]
        if refused:  # a well-formed pickle that would import and call code: weights_only refuses it
            raise CheckpointError(
                f"{uri}: refused to load: the file holds objects that are not weights "
                f"(torch.load weights_only=True): {refused[0]}"
            ) from None
        detail = next((line.strip() for line in text.splitlines() if "Unsupported" in line), _first_line(exc))
        raise CheckpointError(
            f"{uri}: not a readable PyTorch file (truncated or corrupt): {detail}"
        ) from None
    except Exception as exc:  # zip reader, EOF and unpickling errors come in many types
        raise CheckpointError(
            f"{uri}: not a readable PyTorch file (truncated or corrupt): {_first_line(exc)}"
        ) from None


def torch_save(obj: Any, uri: str) -> None:
    """torch.save to a local or s3:// file, atomically (readers see the old file or the new one)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    storage.write_bytes_atomic(uri, buffer.getvalue())


def _key_list(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def check_fit(uri: str, what: str, expected: Mapping[str, Tensor], found: Mapping[str, Any]) -> None:
    """Raise CheckpointError unless `found` has exactly the keys and shapes of `expected`."""
    not_tensors = sorted(k for k, v in found.items() if not isinstance(v, Tensor))
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [
        f"{k} {list(found[k].shape)} (model {list(expected[k].shape)})"
        for k in expected
        if k in found and isinstance(found[k], Tensor) and found[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_key_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_key_list(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes: {_key_list(wrong, 4)}")
    if not_tensors:
        problems.append(f"not tensors: {_key_list(not_tensors)}")
    if problems:
        raise CheckpointError(f"{uri}: weights do not fit {what}: " + "; ".join(problems))


def load_strict(module: nn.Module, state_dict: Mapping[str, Any], uri: str, what: str) -> None:
    check_fit(uri, what, module.state_dict(), state_dict)
    module.load_state_dict(dict(state_dict), strict=True)


def state_dict_sha256(state_dict: Mapping[str, Tensor]) -> str:
    """Deterministic hash of tensors: sorted keys, each with its dtype, shape and raw bytes."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|{tensor.nbytes}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _hashed_tensors(state_dict: Mapping[str, Tensor], extra: Mapping[str, Any]) -> dict[str, Tensor]:
    tensors = dict(state_dict)
    tensors.update({f"extra.{k}": v for k, v in extra.items() if isinstance(v, Tensor)})
    return tensors


# ---------------------------------------------------------------- our format


@dataclass
class Checkpoint:
    """One model file in our format, verified against its sha256."""

    uri: str
    kind: str
    config: dict[str, Any]
    state_dict: dict[str, Tensor]
    extra: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""


def save_checkpoint(
    uri: str, kind: str, config: dict[str, Any], state_dict: Mapping[str, Tensor], extra: dict | None = None
) -> str:
    """Write one model in our format; returns its sha256."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    cpu = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    extra = {
        k: v.detach().cpu().contiguous() if isinstance(v, Tensor) else v for k, v in (extra or {}).items()
    }
    sha = state_dict_sha256(_hashed_tensors(cpu, extra))
    payload = {
        "format": FORMAT,
        "kind": kind,
        "config": config,
        "state_dict": cpu,
        "extra": extra,
        "sha256": sha,
    }
    torch_save(payload, uri)
    return sha


def read_checkpoint(uri: str, kind: str | None = None) -> Checkpoint:
    """Read and verify one file in our format (format tag, kind, sha256)."""
    obj = torch_load(uri)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        keys = _key_list(sorted(map(str, obj))) if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"{uri}: not an unmask checkpoint (no format {FORMAT!r}; top-level keys: {keys}); "
            "public formats load with load_rosinality_generator, load_psp, load_irse50 or load_facenet"
        )
    missing = [k for k in ("kind", "config", "state_dict", "extra", "sha256") if k not in obj]
    if missing:
        raise CheckpointError(f"{uri}: unmask checkpoint lacks {', '.join(missing)}")
    if kind is not None and obj["kind"] != kind:
        raise CheckpointError(f"{uri}: holds a {obj['kind']!r} model, expected {kind!r}")
    state_dict, extra = obj["state_dict"], obj["extra"]
    bad = sorted(k for k, v in state_dict.items() if not isinstance(v, Tensor))
    if bad:
        raise CheckpointError(f"{uri}: state_dict entries that are not tensors: {_key_list(bad)}")
    actual = state_dict_sha256(_hashed_tensors(state_dict, extra))
    if actual != obj["sha256"]:
        raise CheckpointError(
            f"{uri}: sha256 mismatch: the file records {obj['sha256'][:16]}..., its weights hash to "
            f"{actual[:16]}... (altered or corrupted)"
        )
    return Checkpoint(uri, obj["kind"], dict(obj["config"]), state_dict, dict(extra), actual)


def _new_facenet() -> nn.Module:
    from facenet_pytorch import InceptionResnetV1

    # pretrained=None: facenet-pytorch would otherwise download weights.
    return InceptionResnetV1(pretrained=None, classify=False)


def _config(cls: type, config: dict[str, Any], uri: str) -> Any:
    try:
        return cls(**config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{uri}: config {config} is not a valid {cls.__name__}: {exc}") from None


def module_from_checkpoint(ckpt: Checkpoint) -> nn.Module:
    """Build the module a checkpoint describes and load its weights strictly (on CPU)."""
    if ckpt.kind == "generator":
        module: nn.Module = Generator(_config(GeneratorConfig, ckpt.config, ckpt.uri))
        load_strict(module, ckpt.state_dict, ckpt.uri, "Generator")
    elif ckpt.kind == "encoder":
        encoder = GradualStyleEncoder(_config(EncoderConfig, ckpt.config, ckpt.uri))
        load_strict(encoder, ckpt.state_dict, ckpt.uri, "GradualStyleEncoder")
        if not isinstance(ckpt.extra.get("latent_avg"), Tensor):
            raise CheckpointError(f"{ckpt.uri}: encoder checkpoint lacks extra['latent_avg']")
        try:
            module = LatentEncoder(encoder, ckpt.extra["latent_avg"])
        except ValueError as exc:
            raise CheckpointError(f"{ckpt.uri}: extra['latent_avg']: {exc}") from None
    elif ckpt.kind == "arcface":
        module = Backbone(_config(BackboneConfig, ckpt.config, ckpt.uri))
        load_strict(module, ckpt.state_dict, ckpt.uri, "IR-SE Backbone")
    elif ckpt.kind == "facenet":
        module = _new_facenet()
        load_strict(module, ckpt.state_dict, ckpt.uri, "facenet-pytorch InceptionResnetV1")
    else:
        raise CheckpointError(f"{ckpt.uri}: unknown model kind {ckpt.kind!r} (known: {', '.join(KINDS)})")
    return module.eval()


def load_module(uri: str, kind: str | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """Read one model file in our format and return the module, in eval mode, on `device`."""
    return module_from_checkpoint(read_checkpoint(uri, kind)).to(device)


def save_module(module: nn.Module, uri: str) -> str:
    """Save a Generator, LatentEncoder, IR-SE Backbone or InceptionResnetV1 in our format; returns sha256."""
    module = getattr(module, "module", module)  # DistributedDataParallel wraps the model
    if isinstance(module, Generator):
        return save_checkpoint(uri, "generator", asdict(module.config), module.state_dict())
    if isinstance(module, LatentEncoder):
        extra = {"latent_avg": module.latent_avg}
        return save_checkpoint(uri, "encoder", asdict(module.config), module.encoder.state_dict(), extra)
    if isinstance(module, Backbone):
        return save_checkpoint(uri, "arcface", asdict(module.config), module.state_dict())
    if type(module).__name__ == "InceptionResnetV1":
        if getattr(module, "logits", None) is not None:
            raise ValueError("save a FaceNet built with classify=False (embeddings only)")
        return save_checkpoint(uri, "facenet", {}, module.state_dict())
    if isinstance(module, GradualStyleEncoder):
        raise TypeError("wrap the encoder as LatentEncoder(encoder, latent_avg): f(x) needs its latent_avg")
    raise TypeError(f"cannot save a {type(module).__name__} as an unmask checkpoint")


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
        config = _config(GeneratorConfig, dict(fields, max_channels=max(observed)), uri)
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
    return _config(
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
    return _config(EncoderConfig, config, uri)


def _sub_dict(state_dict: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _dict_with(obj: Any, keys: tuple[str, ...], uri: str, what: str) -> dict:
    if not isinstance(obj, dict) or any(k not in obj for k in keys):
        found = _key_list(sorted(map(str, obj))) if isinstance(obj, dict) else type(obj).__name__
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


def save_rosinality_generator(generator: Generator, uri: str, latent_avg: Tensor | None = None) -> None:
    obj: dict[str, Any] = {"g_ema": generator.state_dict()}
    if latent_avg is not None:
        obj["latent_avg"] = latent_avg.detach().cpu()
    torch_save(obj, uri)


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


def save_psp(psp: PSP, uri: str, opts: dict[str, Any] | None = None) -> None:
    opts = dict(opts or {})
    opts.setdefault("output_size", psp.decoder.size)
    opts.setdefault("encoder_type", "GradualStyleEncoder")
    opts.setdefault("start_from_latent_avg", True)
    opts.setdefault("learn_in_w", False)
    torch_save(
        {"state_dict": psp.state_dict(), "opts": opts, "latent_avg": psp.latent_avg.detach().cpu()}, uri
    )


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


def save_irse50(backbone: Backbone, uri: str) -> None:
    torch_save(backbone.state_dict(), uri)


def init_encoder_from_irse50(encoder: GradualStyleEncoder, uri: str) -> None:
    """pSp's encoder init: copy `input_layer.*` and `body.*` from model_ir_se50.pth (its head is unused).

    Strict on those keys: every input_layer/body weight of the encoder must be in the file, same shape.
    """
    state_dict = _bare_state_dict(torch_load(uri), uri, "IR-SE Backbone")
    wanted = {k: v for k, v in encoder.state_dict().items() if k.startswith(("input_layer.", "body."))}
    found = {k: v for k, v in state_dict.items() if k.startswith(("input_layer.", "body."))}
    check_fit(uri, "the encoder's IR-SE body (input_layer.*, body.*)", wanted, found)
    encoder.load_state_dict(found, strict=False)


def load_facenet(uri: str) -> nn.Module:
    """facenet-pytorch InceptionResnetV1 state dict (e.g. vggface2) -> embedding model in eval mode.

    The classifier `logits.*` of the released weights is dropped: we use embeddings only.
    """
    state_dict = _bare_state_dict(torch_load(uri), uri, "InceptionResnetV1")
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith("logits.")}
    model = _new_facenet()
    load_strict(model, state_dict, uri, "facenet-pytorch InceptionResnetV1")
    return model.eval()


def save_facenet(model: nn.Module, uri: str) -> None:
    torch_save(model.state_dict(), uri)


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


# ---------------------------------------------------------------- model sets

REQUIRED_FILES = {
    "generator": "generator.pt",
    "baseline": "baseline_encoder.pt",  # f0
    "unmask": "encoder.pt",  # f
    "arcface": "arcface_irse.pt",
    "facenet": "facenet.pt",
}
KIND_OF = {
    "generator": "generator",
    "baseline": "encoder",
    "unmask": "encoder",
    "arcface": "arcface",
    "facenet": "facenet",
}
OPTIONAL_FILES = {"arcface_onnx": "arcface.onnx", "lpips_alexnet": "lpips_alexnet.pth"}
# File-stem names, as output columns such as encoder_sha256 use them.
ALIASES = {"encoder": "unmask", "baseline_encoder": "baseline"}
MANIFEST = "model_set.json"
ENCODER_NAMES = ("baseline", "unmask")


def model_set_configs(size: int) -> tuple[GeneratorConfig, EncoderConfig, BackboneConfig]:
    """Architectures of `init_model_set`: tiny at 64 px (fast on CPU), the references at 256 and 1024."""
    if size == 64:
        generator = GeneratorConfig(size=64, style_dim=128, max_channels=64)
        encoder = EncoderConfig(
            input_size=64,
            n_styles=generator.n_latent,
            style_dim=128,
            units=(1, 2, 2, 1),
            widths=(16, 32, 48, 64),
        )
        return generator, encoder, BackboneConfig(units=(1, 1, 1, 1), widths=(16, 32, 48, 64))
    if size in (256, 1024):
        generator = GeneratorConfig(size=size)
        # pSp encodes 256 px inputs for every generator size and pools outputs to 256.
        return generator, EncoderConfig(input_size=256, n_styles=generator.n_latent), BackboneConfig()
    raise UserError(f"model set size must be 64, 256 or 1024, got {size}")


def _manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def write_model_set(
    out_uri: str,
    generator: Generator,
    baseline_encoder: LatentEncoder,
    encoder: LatentEncoder,
    arcface: Backbone,
    facenet: nn.Module,
    notes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a model set folder from modules (e.g. public weights loaded with the functions above).

    Returns the manifest, which is written last so that a half-written folder has no model_set.json.
    """
    for name, f in (("baseline_encoder", baseline_encoder), ("encoder", encoder)):
        if (f.config.n_styles, f.config.style_dim) != (generator.n_latent, generator.style_dim):
            raise UserError(
                f"{name} makes [{f.config.n_styles}, {f.config.style_dim}] codes; "
                f"the generator takes [{generator.n_latent}, {generator.style_dim}]"
            )
    modules = {
        "generator": generator,
        "baseline": baseline_encoder,
        "unmask": encoder,
        "arcface": arcface,
        "facenet": facenet,
    }
    shas = {
        name: save_module(module, storage.join(out_uri, REQUIRED_FILES[name]))
        for name, module in modules.items()
    }
    manifest = {
        "format": MODEL_SET_FORMAT,
        "size": generator.size,
        "image_size": encoder.config.input_size,
        "n_latent": generator.n_latent,
        "style_dim": generator.style_dim,
        "files": dict(REQUIRED_FILES),
        "sha256": shas,
        **(notes or {}),
    }
    storage.write_bytes_atomic(storage.join(out_uri, MANIFEST), _manifest_bytes(manifest))
    return manifest


def init_model_set(size: int, out_uri: str, seed: int = 0, overwrite: bool = False) -> dict[str, Any]:
    """Write a randomly initialised model set (`unmask models init`); returns its manifest.

    64 px: tiny widths for CPU tests and the demo; 256 / 1024: the reference architectures. f starts
    equal to f0, as training initialises f from f0. The same seed gives the same sha256s.
    """
    gen_config, enc_config, arc_config = model_set_configs(size)
    if not overwrite and storage.exists(storage.join(out_uri, MANIFEST)):
        raise UserError(f"{out_uri}: already holds a model set ({MANIFEST}); choose another folder")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = Generator(gen_config).eval()
        latent_avg = generator.mean_latent(MEAN_LATENT_SAMPLES, torch.Generator().manual_seed(seed + 1))
        torch.manual_seed(seed + 2)
        baseline = LatentEncoder(GradualStyleEncoder(enc_config), latent_avg).eval()
        torch.manual_seed(seed + 3)
        arcface = Backbone(arc_config).eval()
        torch.manual_seed(seed + 4)
        facenet = _new_facenet().eval()
    notes = {"random_init": list(REQUIRED_FILES), "seed": seed}
    return write_model_set(out_uri, generator, baseline, copy.deepcopy(baseline), arcface, facenet, notes)


class ModelSet:
    """A model set folder (local or s3://): g, f0, f, ArcFace (IR-SE) and FaceNet in our format.

    Layout: generator.pt, baseline_encoder.pt (f0), encoder.pt (f), arcface_irse.pt, facenet.pt,
    model_set.json (format, size, image_size, n_latent, style_dim, files, sha256 per model), and
    optionally arcface.onnx (insightface ArcFace) and lpips_alexnet.pth (torchvision AlexNet).

    Names: 'generator', 'baseline' (f0), 'unmask' (f), 'arcface', 'facenet'; `sha256`, `file_uri`
    and `has` also take the file stems 'encoder' (f) and 'baseline_encoder' (f0). Every file is checked
    against its sha256 in model_set.json when loaded. Frozen models (generator, arcface, facenet) are
    loaded once, in eval mode with requires_grad off, and shared; `encoder()` returns a fresh copy
    on every call because training changes it.
    """

    def __init__(self, uri: str, device: str | torch.device = "cpu") -> None:
        self.uri = uri
        self.device = torch.device(device)
        manifest_uri = storage.join(uri, MANIFEST)
        try:
            self.manifest: dict[str, Any] = json.loads(storage.read_bytes(manifest_uri))
        except UserError as exc:
            raise CheckpointError(
                f"{uri}: not a model set ({exc}); make one with `unmask models init`"
            ) from None
        except ValueError as exc:
            raise CheckpointError(f"{manifest_uri}: not valid JSON: {exc}") from None
        if self.manifest.get("format") != MODEL_SET_FORMAT:
            raise CheckpointError(
                f"{manifest_uri}: format is {self.manifest.get('format')!r}, expected {MODEL_SET_FORMAT!r}"
            )
        missing = [n for n in REQUIRED_FILES if n not in self.manifest.get("sha256", {})]
        if missing:
            raise CheckpointError(f"{manifest_uri}: no sha256 for {', '.join(missing)}")
        self._frozen: dict[str, nn.Module] = {}

    @property
    def size(self) -> int:
        """The generator's output resolution (64, 256, 1024)."""
        return int(self.manifest["size"])

    @property
    def image_size(self) -> int:
        """The face size the set works on: encoder input and pSp output (pooled) resolution."""
        return int(self.manifest["image_size"])

    @property
    def n_latent(self) -> int:
        return int(self.manifest["n_latent"])

    def file_uri(self, name: str) -> str:
        name = ALIASES.get(name, name)
        if name in OPTIONAL_FILES:
            return storage.join(self.uri, OPTIONAL_FILES[name])
        if name not in REQUIRED_FILES:
            raise KeyError(f"unknown model {name!r}; known: {', '.join([*REQUIRED_FILES, *OPTIONAL_FILES])}")
        return storage.join(self.uri, self.manifest.get("files", {}).get(name, REQUIRED_FILES[name]))

    def optional_file(self, name: str) -> str | None:
        """URI of 'arcface_onnx' or 'lpips_alexnet' when the folder holds it, else None."""
        uri = self.file_uri(name)
        return uri if storage.exists(uri) else None

    def has(self, name: str) -> bool:
        """Whether the set holds a model: always for the required five, on disk for optional files."""
        name = ALIASES.get(name, name)
        return name in REQUIRED_FILES or (name in OPTIONAL_FILES and self.optional_file(name) is not None)

    def sha256(self, name: str) -> str:
        """sha256 of a model's weights (as recorded in model_set.json; verified whenever it is loaded)."""
        name = ALIASES.get(name, name)
        if name not in REQUIRED_FILES:
            raise KeyError(f"unknown model {name!r}; known: {', '.join(REQUIRED_FILES)}")
        return self.manifest["sha256"][name]

    def _load(self, name: str) -> nn.Module:
        uri = self.file_uri(name)
        ckpt = read_checkpoint(uri, KIND_OF[name])
        if ckpt.sha256 != self.sha256(name):
            raise CheckpointError(
                f"{uri}: sha256 {ckpt.sha256[:16]}... differs from {MANIFEST}'s {self.sha256(name)[:16]}... "
                "(the file was replaced without updating the model set)"
            )
        return module_from_checkpoint(ckpt).to(self.device)

    def _frozen_model(self, name: str) -> nn.Module:
        if name not in self._frozen:
            self._frozen[name] = self._load(name).eval().requires_grad_(False)
        return self._frozen[name]

    def generator(self) -> Generator:
        """g, frozen."""
        return self._frozen_model("generator")

    def encoder(self, name: str = "unmask") -> LatentEncoder:
        """f ('unmask') or f0 ('baseline'): x -> W+ codes including latent_avg, in eval mode, trainable."""
        if name not in ENCODER_NAMES:
            raise KeyError(f"encoder name must be one of {ENCODER_NAMES}, got {name!r}")
        return self._load(name)

    def psp(self, name: str = "unmask", bf16: bool = False, channels_last: bool = False) -> PSP:
        """U = g(f(M)) as one module, outputs pooled to image_size; shares the frozen generator."""
        f = self.encoder(name)
        return PSP(f.encoder, self.generator(), f.latent_avg, self.image_size, bf16, channels_last).eval()

    def arcface(self) -> Backbone:
        """The IR-SE ArcFace used by the ID loss, frozen."""
        return self._frozen_model("arcface")

    def facenet(self) -> nn.Module:
        """facenet-pytorch InceptionResnetV1 (embeddings), frozen."""
        return self._frozen_model("facenet")

    def save_encoder(self, name: str, encoder: nn.Module, out_uri: str) -> ModelSet:
        """Write a trained f0 ('baseline') or f ('unmask') into the model set at `out_uri`.

        `encoder` is a LatentEncoder (or a bare GradualStyleEncoder, which keeps this set's
        latent_avg). When out_uri is another folder, the other models and optional files are copied
        there (unless already present with the same sha256). The manifest is written last.
        """
        if name not in ENCODER_NAMES:
            raise KeyError(f"encoder name must be one of {ENCODER_NAMES}, got {name!r}")
        module = getattr(encoder, "module", encoder)
        if isinstance(module, GradualStyleEncoder):
            module = LatentEncoder(module, self.encoder(name).latent_avg)
        if not isinstance(module, LatentEncoder):
            raise TypeError(f"expected a LatentEncoder or GradualStyleEncoder, got {type(module).__name__}")
        if (module.config.n_styles, module.config.style_dim) != (self.n_latent, self.manifest["style_dim"]):
            raise UserError(
                f"{name} encoder makes [{module.config.n_styles}, {module.config.style_dim}] codes; "
                f"{self.uri} has a generator for [{self.n_latent}, {self.manifest['style_dim']}]"
            )
        manifest = copy.deepcopy(self.manifest)
        if not _same_folder(self.uri, out_uri):
            self._copy_files(out_uri, skip=name)
        manifest["files"] = dict(REQUIRED_FILES)
        manifest["sha256"][name] = save_module(module, storage.join(out_uri, REQUIRED_FILES[name]))
        manifest["random_init"] = [n for n in manifest.get("random_init", []) if n != name]
        storage.write_bytes_atomic(storage.join(out_uri, MANIFEST), _manifest_bytes(manifest))
        return ModelSet(out_uri, device=self.device)

    def _copy_files(self, out_uri: str, skip: str) -> None:
        try:
            existing = json.loads(storage.read_bytes(storage.join(out_uri, MANIFEST))).get("sha256", {})
        except (UserError, ValueError):
            existing = {}
        for name in REQUIRED_FILES:
            target = storage.join(out_uri, REQUIRED_FILES[name])
            if name == skip or (existing.get(name) == self.sha256(name) and storage.exists(target)):
                continue
            storage.write_bytes_atomic(target, storage.read_bytes(self.file_uri(name)))
        for name, filename in OPTIONAL_FILES.items():
            source = self.optional_file(name)
            if source is not None:
                storage.write_bytes_atomic(storage.join(out_uri, filename), storage.read_bytes(source))


def _same_folder(a: str, b: str) -> bool:
    path_a, path_b = storage.fsspec_filesystem(a)[1], storage.fsspec_filesystem(b)[1]
    return storage.is_s3(a) == storage.is_s3(b) and path_a.rstrip("/") == path_b.rstrip("/")
