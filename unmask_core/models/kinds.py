"""The model kinds, one `ModelKind` entry each: what a checkpoint of that kind holds and how it becomes a
module again, the files a model set keeps of it, how `models init` makes a random one and which public
weights `models import` converts. format.py (the file), model_set.py (the folder), importer.py and the
`models` job read it; a new kind is one entry (docs/extending.md).

`save_module` / `load_module` turn a module into our checkpoint file and back, whatever its kind.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from unmask_core import storage
from unmask_core.models.encoder import EncoderConfig, GradualStyleEncoder
from unmask_core.models.format import (
    Checkpoint,
    CheckpointError,
    build_config,
    build_strict,
    checkpoint_bytes,
    read_checkpoint,
)
from unmask_core.models.irse import Backbone, BackboneConfig
from unmask_core.models.psp import LatentEncoder
from unmask_core.models.public import load_facenet, load_irse50, new_facenet
from unmask_core.models.stylegan2 import Generator, GeneratorConfig

Parts = tuple[dict[str, Any], Mapping[str, Tensor], dict[str, Any]]  # config, state_dict, extra


@dataclass(frozen=True)
class PublicWeights:
    """A public weights file that `unmask models import --<option>` converts into this kind's model."""

    option: str  # the import flag, and `import_public_model_set`'s keyword
    help: str
    load: Callable[[str], nn.Module]  # the file -> the module, in eval mode (models/public.py)


def _plain_parts(module: nn.Module) -> Parts:
    config = getattr(module, "config", None)
    return (asdict(config) if config is not None else {}), module.state_dict(), {}


def _as_built(network: nn.Module, extra: dict[str, Any], uri: str) -> nn.Module:
    return network


@dataclass(frozen=True)
class ModelKind:
    files: Mapping[str, str]  # its models in a model set: name -> file name
    python_type: str  # the module type `save_module` takes, as "package.module.Class" (nothing imported)
    config_class: type | None  # its architecture's options (a dataclass; None: it has none)
    build: Callable[[Any], nn.Module]  # config (None without a config class) -> network, random weights
    network: str  # the network's name in messages
    public_formats: tuple[str, ...]  # the public weights it is made from (for people)
    # `models init`'s config at a set's size (64: tiny, for CPU tests); None: made with g (the encoders)
    init_config: Callable[[int], Any] | None = None
    public: PublicWeights | None = None  # None: importer.py composes it (g and the encoders, from pSp)
    to_parts: Callable[[nn.Module], Parts] = _plain_parts  # module -> what its checkpoint holds
    # (network built from the checkpoint's config and state_dict, its extra, uri) -> the module
    from_parts: Callable[[nn.Module, dict[str, Any], str], nn.Module] = _as_built


def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _encoder_parts(module: nn.Module) -> Parts:
    return asdict(module.config), module.encoder.state_dict(), {"latent_avg": module.latent_avg}


def _encoder_with_latent_avg(network: nn.Module, extra: dict[str, Any], uri: str) -> nn.Module:
    # f(x) = encoder(x) + latent_avg: the average latent is part of the model (and of its sha256).
    if not isinstance(extra.get("latent_avg"), Tensor):
        raise CheckpointError(f"{uri}: encoder checkpoint lacks extra['latent_avg']")
    try:
        return LatentEncoder(network, extra["latent_avg"])
    except ValueError as exc:
        raise CheckpointError(f"{uri}: extra['latent_avg']: {exc}") from None


def _facenet_parts(module: nn.Module) -> Parts:
    if getattr(module, "logits", None) is not None:
        raise ValueError("save a FaceNet built with classify=False (embeddings only)")
    return {}, module.state_dict(), {}


def _backbone_init_config(size: int) -> BackboneConfig:
    return BackboneConfig(units=(1, 1, 1, 1), widths=(16, 32, 48, 64)) if size == 64 else BackboneConfig()


MODEL_KINDS: dict[str, ModelKind] = {
    # g, StyleGAN2 (rosinality's layout).
    "generator": ModelKind(
        files={"generator": "generator.pt"},
        python_type=_type_name(Generator),
        config_class=GeneratorConfig,
        build=Generator,
        network="Generator",
        public_formats=("rosinality StyleGAN2 {'g_ema', 'latent_avg'?}", "the decoder of a pSp checkpoint"),
    ),
    # f0 and f: pSp's GradualStyleEncoder with the generator's average latent.
    "encoder": ModelKind(
        files={"baseline": "baseline_encoder.pt", "unmask": "unmask_encoder.pt"},
        python_type=_type_name(LatentEncoder),
        config_class=EncoderConfig,
        build=GradualStyleEncoder,
        network="GradualStyleEncoder",
        public_formats=("a pSp checkpoint's encoder", "pSp's initialisation from model_ir_se50.pth"),
        to_parts=_encoder_parts,
        from_parts=_encoder_with_latent_avg,
    ),
    # ArcFace IR-SE: the identity loss, and the 'arcface' matcher without an ONNX model.
    "arcface": ModelKind(
        files={"arcface": "arcface_irse.pt"},
        python_type=_type_name(Backbone),
        config_class=BackboneConfig,
        build=Backbone,
        network="IR-SE Backbone",
        public_formats=("TreB1eN / pSp model_ir_se50.pth (a bare IR-SE50 state dict)",),
        init_config=_backbone_init_config,
        public=PublicWeights("irse50", "model_ir_se50.pth (ArcFace IR-SE50 for the ID loss)", load_irse50),
    ),
    # The 'facenet' matcher: never used in training.
    "facenet": ModelKind(
        files={"facenet": "facenet.pt"},
        python_type="facenet_pytorch.models.inception_resnet_v1.InceptionResnetV1",
        config_class=None,
        build=lambda config: new_facenet(),
        network="facenet-pytorch InceptionResnetV1",
        public_formats=("facenet-pytorch InceptionResnetV1 state dict (e.g. VGGFace2)",),
        init_config=lambda size: None,
        public=PublicWeights("facenet", "facenet-pytorch InceptionResnetV1 state dict", load_facenet),
        to_parts=_facenet_parts,
    ),
}


def kind_of_module(module: nn.Module) -> str:
    """The kind whose python_type `module` is (or derives from)."""
    names = {_type_name(cls) for cls in type(module).__mro__}
    for name, kind in MODEL_KINDS.items():
        if kind.python_type in names:
            return name
    if isinstance(module, GradualStyleEncoder):
        raise TypeError("wrap the encoder as LatentEncoder(encoder, latent_avg): f(x) needs its latent_avg")
    raise TypeError(f"cannot save a {type(module).__name__} as an unmask checkpoint")


def module_bytes(module: nn.Module) -> tuple[str, bytes]:
    """(sha256 of the weights, the file's bytes) of a module of any kind in our format."""
    module = getattr(module, "module", module)  # DistributedDataParallel wraps the model
    kind = kind_of_module(module)
    config, state_dict, extra = MODEL_KINDS[kind].to_parts(module)
    return checkpoint_bytes(kind, config, state_dict, extra)


def save_module(module: nn.Module, uri: str) -> str:
    """Save a module of any kind in our format; returns its sha256."""
    sha, data = module_bytes(module)
    storage.write_bytes_atomic(uri, data)
    return sha


def module_from_checkpoint(ckpt: Checkpoint) -> nn.Module:
    """Build the module a checkpoint describes, holding its weights (checked to fit exactly, on CPU)."""
    kind = MODEL_KINDS.get(ckpt.kind)
    if kind is None:
        known = ", ".join(MODEL_KINDS)
        raise CheckpointError(f"{ckpt.uri}: unknown model kind {ckpt.kind!r} (known: {known})")
    config = build_config(kind.config_class, ckpt.config, ckpt.uri) if kind.config_class else None
    network = build_strict(lambda: kind.build(config), ckpt.state_dict, ckpt.uri, kind.network)
    return kind.from_parts(network, ckpt.extra, ckpt.uri).eval()


def load_module(uri: str, kind: str | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """Read one model file in our format and return the module, in eval mode, on `device`."""
    return module_from_checkpoint(read_checkpoint(uri, kind)).to(device)


def model_files() -> dict[str, str]:
    """Every model a set holds, name -> file name, in table order."""
    return {name: file for kind in MODEL_KINDS.values() for name, file in kind.files.items()}


def kind_of_model() -> dict[str, str]:
    """Every model a set holds, name -> its kind."""
    return {name: kind_name for kind_name, kind in MODEL_KINDS.items() for name in kind.files}


def public_weights() -> dict[str, PublicWeights]:
    """The models imported from one public file each, name -> its import option."""
    return {name: kind.public for kind in MODEL_KINDS.values() if kind.public for name in kind.files}
