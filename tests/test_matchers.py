"""Matchers embed [-1, 1] RGB faces the way each public model expects its input."""

from __future__ import annotations

import hashlib
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unmask_core.errors import UserError
from unmask_core.matchers import build_matcher
from unmask_core.models.model_set import ModelSet


def faces(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_arcface_falls_back_to_the_sets_irse_backbone(tiny_model_set: str) -> None:
    models = ModelSet(tiny_model_set)
    matcher = build_matcher("arcface", models)
    assert (matcher.name, matcher.backend, matcher.dim, matcher.normalized) == ("arcface", "irse", 512, True)
    assert matcher.model_sha256 == models.sha256("arcface")
    x112 = faces(3, 112)
    out = matcher.embed(x112)
    assert out.dtype == np.float32 and out.shape == (3, 512)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    with torch.no_grad():
        # IR-SE takes [-1, 1] RGB as it is (pSp's ID loss convention).
        np.testing.assert_allclose(out, models.arcface()(x112).numpy(), rtol=1e-5, atol=1e-6)
        # Other sizes are resized to 112 px inside (antialiased bilinear).
        x64 = faces(2, 64, seed=1)
        resized = F.interpolate(x64, size=(112, 112), mode="bilinear", align_corners=False, antialias=True)
        np.testing.assert_allclose(
            matcher.embed(x64), models.arcface()(resized).numpy(), rtol=1e-5, atol=1e-6
        )


def test_facenet_uses_facenet_pytorch_standardization(tiny_model_set: str) -> None:
    from facenet_pytorch import fixed_image_standardization

    models = ModelSet(tiny_model_set)
    matcher = build_matcher("facenet", models)
    assert (matcher.name, matcher.dim, matcher.normalized) == ("facenet", 512, True)
    x = faces(2, 112)
    pixels = (x + 1) * 127.5  # what facenet-pytorch's MTCNN hands over: RGB on 0..255
    with torch.no_grad():
        expected = models.facenet()(fixed_image_standardization(pixels)).numpy()
    np.testing.assert_allclose(matcher.embed(x), expected, rtol=1e-4, atol=1e-5)
    assert matcher.embed(faces(2, 256)).shape == (2, 512)


@pytest.mark.parametrize("name", ["arcface", "facenet"])
def test_bf16_matchers_embed_as_fp32_ones_do(tiny_model_set: str, name: str) -> None:
    """What a GPU unmask actor does with bf16 on: weights cast once, the forward under autocast (here
    CPU bf16 autocast), float32 embeddings that agree with the fp32 network's."""
    # Two model sets: one set hands its matchers the same network.
    fp32, bf16 = build_matcher(name, ModelSet(tiny_model_set)), build_matcher(name, ModelSet(tiny_model_set))
    bf16.serve_bf16()
    convs = [m for m in bf16.model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    norms = [m for m in bf16.model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    assert convs and all(m.weight.dtype == torch.bfloat16 for m in convs)
    assert norms and all(m.weight.dtype == torch.float32 for m in norms)
    x = faces(4, 112, seed=2)
    expected, got = fp32.embed(x), bf16.embed(x)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert not np.array_equal(got, expected)  # it did run in bf16
    cosine = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() > 0.99, cosine


class TinyRecognizer(nn.Module):
    """Channel-order and scale sensitive, like a real recogniser; optionally normalises inside as
    MXNet-converted insightface models do (their graphs start with Sub and Mul)."""

    def __init__(self, normalise_inside: bool) -> None:
        super().__init__()
        self.normalise_inside = normalise_inside
        self.conv = nn.Conv2d(3, 4, 5, stride=4)
        self.fc = nn.Linear(4 * 27 * 27, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalise_inside:
            x = (x - 127.5) * 0.0078125
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def export_onnx(path: Path, normalise_inside: bool, dynamic_batch: bool) -> None:
    torch.manual_seed(1)
    model = TinyRecognizer(normalise_inside).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(
            model, (torch.zeros(1, 3, 112, 112),), str(path), dynamo=False, input_names=["input.1"],
            output_names=["embedding"], dynamic_axes={"input.1": {0: "None"}} if dynamic_batch else None,
        )  # fmt: skip
    if normalise_inside:  # name the first nodes as MXNet's converter does
        graph = onnx.load(str(path))
        for node in graph.graph.node:
            if node.op_type in ("Sub", "Mul"):
                node.name = f"{node.op_type}_{node.name.strip('/').replace('/', '_')}"
        onnx.save(graph, str(path))


@pytest.mark.parametrize("normalise_inside,dynamic_batch", [(False, True), (True, False)])
def test_onnx_arcface_matches_insightface_preprocessing(
    tiny_model_set: str, tmp_path: Path, normalise_inside: bool, dynamic_batch: bool
) -> None:
    import cv2
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    folder = tmp_path / "set_with_onnx"
    folder.mkdir()
    shutil.copy(Path(tiny_model_set) / "model_set.json", folder)
    onnx_path = folder / "arcface.onnx"
    export_onnx(onnx_path, normalise_inside, dynamic_batch)

    matcher = build_matcher("arcface", ModelSet(str(folder)))
    assert (matcher.backend, matcher.dim, matcher.normalized) == ("insightface-onnx", 16, False)
    assert matcher.model_sha256 == hashlib.sha256(onnx_path.read_bytes()).hexdigest()

    # insightface's own path: BGR uint8 112x112 crops through ArcFaceONNX.get_feat.
    reference = ArcFaceONNX(model_file=str(onnx_path))
    assert (reference.input_mean, reference.input_std) == ((0.0, 1.0) if normalise_inside else (127.5, 127.5))
    rgb = np.random.default_rng(0).integers(0, 256, size=(3, 112, 112, 3), dtype=np.uint8)
    expected = np.concatenate([reference.get_feat(cv2.cvtColor(img, cv2.COLOR_RGB2BGR)) for img in rgb])

    ours = matcher.embed(torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert ours.dtype == np.float32 and ours.shape == (3, 16)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    swapped = matcher.embed(torch.from_numpy(rgb[..., ::-1].copy()).permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert np.abs(swapped - expected).max() > 1e-2  # the check above can tell RGB from BGR


def test_unknown_matcher_is_a_user_error(tiny_model_set: str) -> None:
    with pytest.raises(UserError, match="unknown matcher 'vggface'"):
        build_matcher("vggface", ModelSet(tiny_model_set))
