"""U = g(f(M)) and matcher embeddings for batches of aligned faces: the compute shared by bulk
unmasking and evaluation. Plain PyTorch; the caller decides where it runs (a Ray actor, a process)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from unmask_core.accelerator import configure_backends, cuda_state
from unmask_core.models.psp import PSP
from unmask_core.models.runtime import compile_in_place, prepare_for_inference

OUTPUT_SIZE = 256  # unmasked faces are delivered at the reference size, whatever the generator's


@dataclass
class ModelInfo:
    provenance: dict[str, str]  # columns every output row carries
    embedding_dims: dict[str, int]
    normalized: dict[str, bool]


@dataclass
class UnmaskResult:
    unmasked: np.ndarray  # uint8 [N, 256, 256, 3]
    embeddings: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # kind -> matcher -> [N, dim]


def to_tensor(faces: np.ndarray | torch.Tensor, size: int, device: torch.device | str) -> torch.Tensor:
    """uint8 [N, H, W, 3] (host array, or a tensor on any device) -> float [N, 3, size, size] in [-1, 1]."""
    if not isinstance(faces, torch.Tensor):
        # A writable array: faces often come from np.frombuffer (read-only), which torch warns about.
        faces = torch.from_numpy(np.require(faces, requirements=["C", "W"]))
    x = faces.to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if x.shape[-1] != size:
        x = F.interpolate(
            x, size=(size, size), mode="area" if x.shape[-1] > size else "bilinear", antialias=False
        )
    return x


def to_uint8(images: torch.Tensor, size: int = OUTPUT_SIZE) -> np.ndarray:
    """float [N, 3, H, W] in about [-1, 1] -> uint8 [N, size, size, 3]."""
    images = images.float()
    if images.shape[-1] != size:
        mode = "area" if images.shape[-1] > size else "bilinear"
        images = F.interpolate(images, size=(size, size), mode=mode)
    return ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


class Unmasker:
    """Loads a model set once (g∘f as one PSP module, and the matchers) and unmasks batches of aligned
    faces. In the CUDA state (accelerator.py): backend flags set, NHWC weights, and with `bf16` the
    weights of g∘f and the torch matchers cast once; `bf16=False` serves true fp32 anywhere."""

    def __init__(
        self,
        models_uri: str,
        matchers: list[str],
        device: str = "cpu",
        bf16: bool = False,
        compile_networks: bool = False,
    ) -> None:
        from unmask_core.matchers import build_matcher
        from unmask_core.models.model_set import ModelSet

        self.device = torch.device(device)
        configure_backends(self.device)
        model_set = ModelSet(models_uri, device=self.device)
        model_set.validate(encoders=("unmask",))
        self.image_size = model_set.image_size
        on_cuda = cuda_state(self.device)
        self.bf16 = bf16 and on_cuda
        generator = model_set.generator()
        # U at the generator's size: to_uint8 delivers OUTPUT_SIZE, and matchers resize for themselves.
        self.model = PSP.compose(
            model_set.encoder("unmask"), generator, generator.size, self.bf16, channels_last=on_cuda
        )
        prepare_for_inference(self.model, self.device, bf16=self.bf16)
        self.matchers = {name: build_matcher(name, model_set, self.device) for name in matchers}
        if self.bf16:
            for matcher in self.matchers.values():
                if hasattr(matcher, "serve_bf16"):  # torch networks; ONNX and dlib keep their precision
                    matcher.serve_bf16()
        # torch.compile at one input shape: `run` pads every micro-batch to its batch size.
        self.compiled = compile_networks
        compile_in_place(self.model, compile_networks)
        for matcher in self.matchers.values():
            if isinstance(getattr(matcher, "model", None), torch.nn.Module):
                compile_in_place(matcher.model, compile_networks)
        self.embedding_dims = {name: m.dim for name, m in self.matchers.items()}
        self.checkpoints = model_hashes(model_set, self.matchers)

    @torch.inference_mode()
    def unmask(self, faces: torch.Tensor) -> torch.Tensor:
        """faces [N, 3, S, S] in [-1, 1] at the encoder's size -> U (fp32) at the generator's size."""
        return self.model(faces)

    def _padded(self, faces, batch_size: int):
        """Compiled networks see one batch shape: repeat the last face to fill a short micro-batch."""
        if not self.compiled or len(faces) == batch_size:
            return faces
        if isinstance(faces, torch.Tensor):
            return torch.cat([faces, faces[-1:].expand(batch_size - len(faces), *faces.shape[1:])])
        return np.concatenate([faces, np.repeat(faces[-1:], batch_size - len(faces), axis=0)])

    @torch.inference_mode()
    def run(
        self, faces: np.ndarray, batch_size: int, also_embed: dict[str, np.ndarray] | None = None
    ) -> UnmaskResult:
        """Unmask aligned uint8 faces [N, 256, 256, 3] (a host array, or a tensor already on the device)
        in micro-batches; embed M and U (and any `also_embed` images, e.g. the true T in evaluation)
        with every matcher."""
        kinds = {"masked": faces, **(also_embed or {})}
        outputs: list[np.ndarray] = []
        embeddings: dict[str, dict[str, list]] = {
            k: {m: [] for m in self.matchers} for k in [*kinds, "unmasked"]
        }
        for start in range(0, len(faces), batch_size):
            chunk = slice(start, start + batch_size)
            n = len(faces[chunk])
            padded = {k: self._padded(images[chunk], batch_size) for k, images in kinds.items()}
            masked = to_tensor(padded["masked"], self.image_size, self.device)
            unmasked = self.unmask(masked)
            outputs.append(to_uint8(unmasked)[:n])
            for name, matcher in self.matchers.items():
                embeddings["unmasked"][name].append(matcher.embed(unmasked.clamp(-1, 1))[:n])
                for kind, images in padded.items():
                    embeddings[kind][name].append(
                        matcher.embed(to_tensor(images, OUTPUT_SIZE, self.device))[:n]
                    )
        return UnmaskResult(
            unmasked=np.concatenate(outputs),
            embeddings={k: {m: np.concatenate(v) for m, v in per.items()} for k, per in embeddings.items()},
        )


def model_hashes(model_set, matchers: dict) -> dict[str, str]:
    """The sha256 of the weights of every model an output depends on: f ('encoder'), g ('generator')
    and each matcher by its name. The report lists them; `provenance_columns` puts them in rows."""
    hashes = {"encoder": model_set.sha256("unmask"), "generator": model_set.sha256("generator")}
    return {**hashes, **{name: matcher.model_sha256 for name, matcher in matchers.items()}}


def provenance_columns(hashes: dict[str, str], matchers: list[str]) -> dict[str, str]:
    """The provenance columns of every output row (output_schema.py), from `model_hashes`."""
    return {
        "matchers": ",".join(f"{name}:{hashes[name]}" for name in matchers),
        "encoder_sha256": hashes["encoder"],
        "generator_sha256": hashes["generator"],
    }


def describe_model_set(models_uri: str, matchers: list[str]) -> ModelInfo:
    """What every output row records about the models, and the embedding sizes: the driver's check of a
    model set. It reads the manifest, one listing and each model's headers, never the weights (a set on
    the meta device; see ModelSet), so a broken set fails here in one line, before any work."""
    from unmask_core.matchers import build_matcher
    from unmask_core.models.model_set import ModelSet

    model_set = ModelSet(models_uri, device="meta")
    model_set.validate(encoders=("unmask",))
    built = {name: build_matcher(name, model_set, "meta") for name in matchers}
    return ModelInfo(
        provenance=provenance_columns(model_hashes(model_set, built), matchers),
        embedding_dims={n: m.dim for n, m in built.items()},
        normalized={n: m.normalized for n, m in built.items()},
    )
