"""The matchers, one registry entry each: name -> how to build it from a model set, and how to present it.

- 'arcface': insightface's ArcFace ONNX model (via onnxruntime) when the model set holds
  `arcface.onnx`; otherwise the set's IR-SE ArcFace (the one the ID loss uses, so it is biased
  towards our outputs, as the paper notes).
- 'facenet': facenet-pytorch's InceptionResnetV1, never used in training: a fair check.
- 'dlib': dlib's ResNet face descriptor from the `face_recognition_models` package (the `dlib`
  extra): pretrained whatever the model set holds, never used in training, so the fair check that
  also works on a set made by `models init` (whose ArcFace and FaceNet are random).

A matcher built from a model set is pretrained unless the set's manifest lists it under
`random_init` (what `models init` writes).

This module imports no torch (the report and the configs read it); builders import their networks.
Adding a matcher: an entry here (with the package extra its code needs, if any), a builder beside it,
and its network in networks.py or a module of its own; one with weights of its own in the model set is
also a model kind (models/kinds.py; docs/extending.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from unmask_core import extras


@dataclass(frozen=True)
class MatcherSpec:
    display_name: str  # in tables and plots
    note: str  # what a reader must know about its numbers (METHOD.md: ArcFace drives the ID loss)
    build: Callable[[Any, Any], Any]  # (ModelSet, device) -> Matcher
    extra: str | None = None  # the package extra its code needs (unmask_core/extras.py), if any


def require_installed(names: list[str], asked_by: str = "--matchers") -> None:
    """One line naming the install command when a matcher in `names` needs an extra that is not
    installed: what every job that takes matchers checks before any work."""
    for name in names:
        if name in MATCHERS:
            extras.require(MATCHERS[name].extra, f"{asked_by} {name}")


def _pretrained(model_set, name: str) -> bool:
    return name not in model_set.manifest.get("random_init", [])


def _build_arcface(model_set, device):
    from unmask_core.matchers.networks import OnnxArcFaceMatcher, TorchMatcher

    onnx_uri = model_set.optional_file("arcface_onnx")
    if onnx_uri is not None:
        return OnnxArcFaceMatcher(onnx_uri, device)
    arcface = model_set.arcface()
    return TorchMatcher(
        "arcface", "irse", arcface, 1.0, arcface.config.embedding_dim, True,
        model_set.sha256("arcface"), _pretrained(model_set, "arcface"), device, arcface.input_size,
    )  # fmt: skip


def _build_facenet(model_set, device):
    from unmask_core.matchers.networks import TorchMatcher

    return TorchMatcher(
        "facenet", "facenet-pytorch", model_set.facenet(), 127.5 / 128.0, 512, True,
        model_set.sha256("facenet"), _pretrained(model_set, "facenet"), device,
    )  # fmt: skip


def _build_dlib(model_set, device):
    require_installed(["dlib"], "the matcher")
    from unmask_core.matchers.dlib_resnet import DlibResNetMatcher

    return DlibResNetMatcher()  # dlib runs on the CPU, and needs nothing from the model set


MATCHERS: dict[str, MatcherSpec] = {
    "arcface": MatcherSpec("ArcFace", "used in training (biased)", _build_arcface),
    "facenet": MatcherSpec("FaceNet", "not used in training (fair check)", _build_facenet),
    "dlib": MatcherSpec(
        "dlib ResNet", "pretrained, not used in training (fair check)", _build_dlib, extra="dlib"
    ),
}
