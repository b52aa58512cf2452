"""The matcher implementations: faces in, embeddings out.

Every matcher takes aligned faces as a float tensor [N, 3, H, W] in [-1, 1], RGB, and resizes them
to 112 px inside (the paper's matcher resolution). Each public model gets its own preprocessing:
- insightface ONNX: RGB (insightface swaps its BGR input to RGB), (x - mean) / std on 0..255 with
  mean = std = 127.5, or mean 0, std 1 for converted MXNet models (whose graphs start with their own
  Sub/Mul nodes; detected as insightface detects them), NCHW float32; sizes from the session.
- facenet-pytorch: RGB, `fixed_image_standardization` = (x - 127.5) / 128 on 0..255.
- IR-SE (pSp / TreB1eN layout): RGB in [-1, 1] as it is.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unmask_core import storage
from unmask_core.errors import UserError

MATCHER_SIZE = 112


def resize_faces(faces: Tensor, size: int) -> Tensor:
    """Bilinear resize with antialiasing (so downscaling 256 -> 112 does not alias)."""
    if faces.shape[-2:] == (size, size):
        return faces
    return F.interpolate(faces, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


class Matcher(ABC):
    """`embed(faces [N, 3, H, W] in [-1, 1] RGB) -> float32 [N, dim]`.

    `normalized` says whether the rows come L2-normalised; compare with cosine similarity either way.
    `model_sha256` names the weights, for provenance in output rows; `pretrained` says whether they
    were learnt (False: a randomly initialised network, whose scores say nothing about faces).
    """

    name: str
    backend: str
    dim: int
    normalized: bool
    model_sha256: str
    pretrained: bool

    @abstractmethod
    def embed(self, faces: Tensor) -> np.ndarray: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, backend={self.backend!r}, dim={self.dim})"


class TorchMatcher(Matcher):
    """A PyTorch embedding network; `scale` maps [-1, 1] to the network's expected input range."""

    def __init__(
        self,
        name: str,
        backend: str,
        model: nn.Module,
        scale: float,
        dim: int,
        normalized: bool,
        model_sha256: str,
        pretrained: bool,
        device: str | torch.device = "cpu",
        input_size: int = MATCHER_SIZE,
    ) -> None:
        self.name, self.backend, self.dim, self.normalized = name, backend, dim, normalized
        self.model_sha256, self.pretrained = model_sha256, pretrained
        self.device = torch.device(device)
        self.bf16 = False
        self.model = model.to(self.device).eval()
        self.scale = scale
        self.input_size = input_size

    def serve_bf16(self) -> None:
        """Embed in bf16, as g∘f runs on a GPU: weights cast once (normalisation layers stay fp32)
        and the forward under bf16 autocast. Embeddings still leave as float32."""
        from unmask_core.models.runtime import cast_weights

        cast_weights(self.model, torch.bfloat16)
        self.bf16 = True

    @torch.no_grad()
    def embed(self, faces: Tensor) -> np.ndarray:
        faces = resize_faces(faces.to(self.device, torch.float32), self.input_size)
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.bf16):
            embeddings = self.model(faces * self.scale)
        return embeddings.float().cpu().numpy()


def _insightface_mean_std(model_bytes: bytes) -> tuple[float, float]:
    """insightface's rule: MXNet-converted models normalise inside (Sub and Mul among the first 8 nodes)."""
    import onnx

    graph = onnx.load_from_string(model_bytes).graph
    names = [node.name for node in graph.node[:8]]
    has_sub = any(n.startswith(("Sub", "_minus")) for n in names)
    has_mul = any(n.startswith(("Mul", "_mul")) for n in names)
    return (0.0, 1.0) if has_sub and has_mul else (127.5, 127.5)


class OnnxArcFaceMatcher(Matcher):
    """insightface ArcFace ONNX model (e.g. buffalo_l's w600k_r50.onnx) run with onnxruntime. Only
    ever imported from a user's file, never made by `models init`: taken as pretrained."""

    name, backend, normalized, pretrained = "arcface", "insightface-onnx", False, True

    def __init__(self, onnx_uri: str, device: str | torch.device = "cpu") -> None:
        import onnxruntime as ort

        data = storage.read_bytes(onnx_uri)
        self.model_sha256 = hashlib.sha256(data).hexdigest()
        self.mean, self.std = _insightface_mean_std(data)
        providers = ["CPUExecutionProvider"]
        if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(data, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise UserError(f"{onnx_uri}: not a loadable ONNX model: {exc}") from None
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        batch, _, height, width = model_input.shape
        self.height = height if isinstance(height, int) else MATCHER_SIZE
        self.width = width if isinstance(width, int) else MATCHER_SIZE
        self.fixed_batch = batch if isinstance(batch, int) else None
        self.input_dtype = np.float16 if model_input.type == "tensor(float16)" else np.float32
        self.output_name = self.session.get_outputs()[0].name
        self.dim = int(self._run(np.zeros((1, 3, self.height, self.width), self.input_dtype)).shape[1])

    def _run(self, blob: np.ndarray) -> np.ndarray:
        if self.fixed_batch is None:
            return self.session.run([self.output_name], {self.input_name: blob})[0]
        step = self.fixed_batch
        outputs = []
        for start in range(0, len(blob), step):
            chunk = blob[start : start + step]
            pad = step - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
            outputs.append(self.session.run([self.output_name], {self.input_name: chunk})[0][: step - pad])
        return np.concatenate(outputs)

    @torch.no_grad()
    def embed(self, faces: Tensor) -> np.ndarray:
        faces = faces.float().cpu()
        if faces.shape[-2:] != (self.height, self.width):
            faces = F.interpolate(
                faces, size=(self.height, self.width), mode="bilinear", align_corners=False, antialias=True
            )
        pixels = (faces + 1) * 127.5  # 0..255, RGB: what insightface feeds after its BGR->RGB swap
        blob = ((pixels - self.mean) / self.std).numpy().astype(self.input_dtype)
        return self._run(np.ascontiguousarray(blob)).astype(np.float32)
