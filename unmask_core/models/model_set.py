"""Model sets: a folder (local or s3://) holding one file in our format for each model of kinds.py's
table (g, f0, f, ArcFace, FaceNet) plus `model_set.json`; see `ModelSet`. `init_model_set` writes a
randomly initialised one (`unmask models init`), `write_model_set` one from modules (`unmask models
import`, in importer.py)."""

from __future__ import annotations

import copy
import json
import posixpath
from typing import Any

import torch
from torch import nn

from unmask_core import storage
from unmask_core.errors import UserError
from unmask_core.models.cache import FileChecksum, cached_copy
from unmask_core.models.encoder import EncoderConfig, GradualStyleEncoder
from unmask_core.models.format import CheckpointError, read_checkpoint
from unmask_core.models.irse import Backbone, BackboneConfig
from unmask_core.models.kinds import (
    MODEL_KINDS,
    kind_of_model,
    model_files,
    module_bytes,
    module_from_checkpoint,
)
from unmask_core.models.psp import PSP, LatentEncoder
from unmask_core.models.stylegan2 import Generator, GeneratorConfig

MODEL_SET_FORMAT = "unmask-model-set/1"
MEAN_LATENT_SAMPLES = 10_000

OPTIONAL_FILES = {"arcface_onnx": "arcface.onnx", "lpips_alexnet": "lpips_alexnet.pth"}
MANIFEST = "model_set.json"
# Manifest key: file name -> {"size": bytes, "sha256": of the file's bytes}, for every file of the set.
# (The "sha256" key names each model's weights hash, the provenance that output rows carry.)
CHECKSUMS = "file_checksums"
ENCODER_NAMES = tuple(MODEL_KINDS["encoder"].files)  # f0 ('baseline') and f ('unmask')


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
    elif size in (256, 1024):
        generator = GeneratorConfig(size=size)
        # pSp encodes 256 px inputs for every generator size and pools outputs to 256.
        encoder = EncoderConfig(input_size=256, n_styles=generator.n_latent)
    else:
        raise UserError(f"model set size must be 64, 256 or 1024, got {size}")
    return generator, encoder, MODEL_KINDS["arcface"].init_config(size)


def manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def _write_file(uri: str, data: bytes) -> dict[str, Any]:
    """Write one file of a set; returns its manifest checksum entry."""
    storage.write_bytes_atomic(uri, data)
    checksum = FileChecksum.of_bytes(data)
    return {"size": checksum.size, "sha256": checksum.sha256}


def _save(module: nn.Module, out_uri: str, filename: str, checksums: dict[str, Any]) -> str:
    """Save one model of the set; records its file's checksum and returns its weights' sha256."""
    sha, data = module_bytes(module)
    checksums[filename] = _write_file(storage.join(out_uri, filename), data)
    return sha


def write_model_set(
    out_uri: str,
    models: dict[str, nn.Module],
    notes: dict[str, Any] | None = None,
    optional_files: dict[str, bytes] | None = None,
) -> dict[str, Any]:
    """Write a model set folder from modules, one for each model of kinds.py's table by its name
    ('generator', 'baseline', 'unmask', 'arcface', 'facenet', ...), and `optional_files`
    ('arcface_onnx', 'lpips_alexnet': their bytes).

    Returns the manifest, which is written last so that a half-written folder has no model_set.json.
    """
    files = model_files()
    if set(models) != set(files):
        raise ValueError(f"a model set holds {', '.join(files)}; got {', '.join(models)}")
    generator = models["generator"]
    for name in ENCODER_NAMES:
        config = models[name].config
        if (config.n_styles, config.style_dim) != (generator.n_latent, generator.style_dim):
            raise UserError(
                f"the {name} encoder makes [{config.n_styles}, {config.style_dim}] codes; "
                f"the generator takes [{generator.n_latent}, {generator.style_dim}]"
            )
    checksums: dict[str, Any] = {}
    shas = {name: _save(models[name], out_uri, filename, checksums) for name, filename in files.items()}
    for name, data in (optional_files or {}).items():
        filename = OPTIONAL_FILES[name]
        checksums[filename] = _write_file(storage.join(out_uri, filename), data)
    manifest = {
        "format": MODEL_SET_FORMAT,
        "size": generator.size,
        "image_size": models["unmask"].config.input_size,
        "n_latent": generator.n_latent,
        "style_dim": generator.style_dim,
        "files": files,
        "sha256": shas,
        CHECKSUMS: checksums,
        **(notes or {}),
    }
    storage.write_bytes_atomic(storage.join(out_uri, MANIFEST), manifest_bytes(manifest))
    return manifest


def init_model_set(size: int, out_uri: str, seed: int = 0, overwrite: bool = False) -> dict[str, Any]:
    """Write a randomly initialised model set (`unmask models init`); returns its manifest.

    64 px: tiny widths for CPU tests and the demo; 256 / 1024: the reference architectures. f starts
    equal to f0, as training initialises f from f0. The other models come from their kinds'
    `init_config`. The same seed gives the same sha256s.
    """
    gen_config, enc_config, _ = model_set_configs(size)
    if not overwrite and storage.exists(storage.join(out_uri, MANIFEST)):
        raise UserError(f"{out_uri}: already holds a model set ({MANIFEST}); choose another folder")
    others = [(name, kind) for kind in MODEL_KINDS.values() if kind.init_config for name in kind.files]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = Generator(gen_config).eval()
        latent_avg = generator.mean_latent(MEAN_LATENT_SAMPLES, torch.Generator().manual_seed(seed + 1))
        torch.manual_seed(seed + 2)
        baseline = LatentEncoder(GradualStyleEncoder(enc_config), latent_avg).eval()
        models = {"generator": generator, "baseline": baseline, "unmask": copy.deepcopy(baseline)}
        for offset, (name, kind) in enumerate(others):  # ArcFace seed + 3, FaceNet seed + 4, ...
            torch.manual_seed(seed + 3 + offset)
            models[name] = kind.build(kind.init_config(size)).eval()
    notes = {"random_init": list(model_files()), "seed": seed}
    return write_model_set(out_uri, models, notes)


class ModelSet:
    """A model set folder (local or s3://): g, f0, f, ArcFace (IR-SE) and FaceNet in our format.

    Layout: one file per model of kinds.py's table (generator.pt, baseline_encoder.pt (f0),
    unmask_encoder.pt (f), arcface_irse.pt, facenet.pt), model_set.json (format, size, image_size,
    n_latent, style_dim, files: model name -> file name, sha256 per model's weights, file_checksums:
    size and sha256 of each file's bytes), and optionally arcface.onnx (insightface ArcFace) and
    lpips_alexnet.pth (torchvision AlexNet). The manifest's `files` is what the set holds, under the
    names it was written with (sets written before f had its own name keep it in encoder.pt).

    Models are named as in the table: 'generator', 'baseline' (f0), 'unmask' (f), 'arcface',
    'facenet'. A set written before a model kind existed opens, and asking it for that model is a
    one-line error. Frozen models (`frozen`: generator, arcface, facenet, ...) are loaded once, in
    eval mode with requires_grad off, and shared; `encoder()` returns a fresh copy on every call
    because training changes it.

    Where the weights come from, and how they are checked:
    - local folder: memory-mapped (every process on the node shares the page cache's copy), the
      weights hashed against the manifest's sha256 as they load;
    - s3:// folder: through the node cache (cache.py), one download per node, the bytes checked
      against the manifest's file checksum; a set without checksums is read whole by each process;
    - device 'meta': nothing but the headers. Each model is built on the meta device from its file's
      pickle and zip directory (a few ranged reads), which checks its kind, config, keys, shapes and
      recorded sha256; `validate` adds the files' sizes from one listing. What a driver checks.
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
        missing = [n for n in self.files if n not in self.manifest.get("sha256", {})]
        if missing:
            raise CheckpointError(f"{manifest_uri}: no sha256 for {', '.join(missing)}")
        self._frozen: dict[str, nn.Module] = {}
        self._validated: dict[str, nn.Module] = {}  # encoders validate() loaded, for encoder() to take
        self._listing: dict[str, int] | None = None

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

    @property
    def files(self) -> dict[str, str]:
        """The models this set holds: name -> file name, as its manifest records them."""
        known = model_files()
        recorded = self.manifest.get("files") or known
        return {name: filename for name, filename in recorded.items() if name in known}

    def _file_name(self, name: str) -> str:
        if name not in model_files():
            raise KeyError(f"unknown model {name!r}; known: {', '.join([*model_files(), *OPTIONAL_FILES])}")
        if name not in self.files:
            raise CheckpointError(
                f"{storage.join(self.uri, MANIFEST)}: the set holds no {name!r} model (it was written "
                "before model sets had one); write it again with `unmask models import` or `models init`"
            )
        return self.files[name]

    def file_uri(self, name: str) -> str:
        if name in OPTIONAL_FILES:
            return storage.join(self.uri, OPTIONAL_FILES[name])
        return storage.join(self.uri, self._file_name(name))

    def checksum(self, uri: str) -> FileChecksum | None:
        """The manifest's size and sha256 of the set's file at `uri`; None if it records none."""
        entry = self.manifest.get(CHECKSUMS, {}).get(posixpath.basename(uri))
        return FileChecksum(int(entry["size"]), entry["sha256"]) if entry else None

    def optional_file(self, name: str) -> str | None:
        """Where to read 'arcface_onnx' or 'lpips_alexnet' when the set holds it, else None: on S3, the
        node cache's copy of a file the manifest has a checksum for (one added by hand and not yet
        recorded with `unmask models checksum` is read from the set by every process)."""
        uri = self.file_uri(name)
        checksum = self.checksum(uri)
        if checksum is None:
            return uri if posixpath.basename(uri) in self._file_sizes() else None
        return cached_copy(uri, checksum) if storage.is_s3(uri) else uri

    def has(self, name: str) -> bool:
        """Whether the set holds a model: the models its manifest lists, and optional files listed in
        the manifest or on disk."""
        if name in model_files():
            return name in self.files
        uri = self.file_uri(name)  # KeyError for an unknown name
        return self.checksum(uri) is not None or posixpath.basename(uri) in self._file_sizes()

    def _file_sizes(self) -> dict[str, int]:
        """The folder's files and their sizes, from one listing made once."""
        if self._listing is None:
            self._listing = storage.file_sizes(self.uri)
        return self._listing

    def sha256(self, name: str) -> str:
        """sha256 of a model's weights (as recorded in model_set.json; verified whenever it is loaded)."""
        self._file_name(name)  # KeyError for an unknown name, one line for one the set lacks
        return self.manifest["sha256"][name]

    def _load(self, name: str) -> nn.Module:
        uri = self.file_uri(name)
        kind = kind_of_model()[name]
        checksum = self.checksum(uri)
        if self.device.type == "meta":
            ckpt = read_checkpoint(uri, kind, structure_only=True, size=checksum.size if checksum else None)
        elif checksum is not None and storage.is_s3(uri):
            local = cached_copy(uri, checksum)
            ckpt = read_checkpoint(local, kind, hash_weights=False, label=uri)
        else:
            ckpt = read_checkpoint(uri, kind)
        if ckpt.sha256 != self.sha256(name):
            raise CheckpointError(
                f"{uri}: sha256 {ckpt.sha256[:16]}... differs from {MANIFEST}'s {self.sha256(name)[:16]}... "
                "(the file was replaced without updating the model set)"
            )
        return module_from_checkpoint(ckpt).to(self.device)

    def frozen(self, name: str) -> nn.Module:
        """The model `name`, frozen (eval mode, no gradients), loaded once and shared."""
        if name not in self._frozen:
            self._frozen[name] = self._load(name).eval().requires_grad_(False)
        return self._frozen[name]

    def generator(self) -> Generator:
        """g, frozen."""
        return self.frozen("generator")

    def encoder(self, name: str = "unmask") -> LatentEncoder:
        """f ('unmask') or f0 ('baseline'): x -> W+ codes including latent_avg, in eval mode, trainable."""
        if name not in ENCODER_NAMES:
            raise KeyError(f"encoder name must be one of {ENCODER_NAMES}, got {name!r}")
        # The one validate() just loaded and checked, handed over once (f is the largest file: 838 MB
        # at 256 px), else a new one.
        validated = self._validated.pop(name, None)
        return validated if validated is not None else self._load(name)

    def psp(self, name: str = "unmask", bf16: bool = False, channels_last: bool = False) -> PSP:
        """U = g(f(M)) as one module, outputs pooled to image_size; shares the frozen generator."""
        f = self.encoder(name)
        return PSP(f.encoder, self.generator(), f.latent_avg, self.image_size, bf16, channels_last).eval()

    def validate(self, encoders: tuple[str, ...] = ENCODER_NAMES) -> None:
        """Check the files' sizes against the manifest (one listing), load g and the named encoders
        (each checked against its sha256) and check that they fit each other and the manifest: one
        line naming the file otherwise. On the meta device it reads no weights (see the class): jobs
        call it so in the driver, so that a broken set fails there, before any work is planned, not
        inside an actor. The driver's check needs the manifest's file checksums."""
        self._check_sizes()
        generator = self.generator()
        if (generator.size, generator.n_latent) != (self.size, self.n_latent):
            raise CheckpointError(
                f"{self.file_uri('generator')}: a {generator.size} px generator with {generator.n_latent} "
                f"styles; {MANIFEST} says {self.size} px and {self.n_latent} styles"
            )
        for name in encoders:
            encoder = self._validated[name] = self.encoder(name)
            config = encoder.config
            if (config.n_styles, config.style_dim) != (generator.n_latent, generator.style_dim):
                raise CheckpointError(
                    f"{self.file_uri(name)}: makes [{config.n_styles}, {config.style_dim}] codes; the "
                    f"generator takes [{generator.n_latent}, {generator.style_dim}]"
                )

    def _check_sizes(self) -> None:
        checksums = self.manifest.get(CHECKSUMS, {})
        files = list(self.files.values())
        unlisted = [filename for filename in files if filename not in checksums]
        if unlisted and self.device.type == "meta":
            raise CheckpointError(
                f"{storage.join(self.uri, MANIFEST)}: records no size and sha256 for {', '.join(unlisted)} "
                f"(a set written before manifests had them); add them once with "
                f"`unmask models checksum --models {self.uri}`"
            )
        sizes = self._file_sizes() if checksums else {}
        for filename, entry in sorted(checksums.items()):
            uri = storage.join(self.uri, filename)
            if filename not in sizes:
                raise CheckpointError(f"{uri}: missing; {MANIFEST} lists it")
            if sizes[filename] != int(entry["size"]):
                raise CheckpointError(
                    f"{uri}: {sizes[filename]:,} bytes, {MANIFEST} says {int(entry['size']):,} "
                    "(truncated, or replaced without updating the model set)"
                )

    def arcface(self) -> Backbone:
        """The IR-SE ArcFace used by the ID loss, frozen."""
        return self.frozen("arcface")

    def facenet(self) -> nn.Module:
        """facenet-pytorch InceptionResnetV1 (embeddings), frozen."""
        return self.frozen("facenet")

    def save_encoder(self, name: str, encoder: nn.Module, out_uri: str) -> ModelSet:
        """Write a trained f0 ('baseline') or f ('unmask') into the model set at `out_uri`.

        `encoder` is a LatentEncoder (or a bare GradualStyleEncoder, which keeps this set's
        latent_avg). When out_uri is another folder, the other models and optional files are copied
        there (unless already present with the same sha256). The files keep this set's names. The
        manifest is written last.
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
        checksums = manifest.setdefault(CHECKSUMS, {})
        if not _same_folder(self.uri, out_uri):
            self._copy_files(out_uri, skip=name, checksums=checksums)
        manifest["files"] = self.files
        manifest["sha256"][name] = _save(module, out_uri, self.files[name], checksums)
        manifest["random_init"] = [n for n in manifest.get("random_init", []) if n != name]
        storage.write_bytes_atomic(storage.join(out_uri, MANIFEST), manifest_bytes(manifest))
        return ModelSet(out_uri, device=self.device)

    def _copy_files(self, out_uri: str, skip: str, checksums: dict[str, Any]) -> None:
        """Copy this set's files into `out_uri`, but for `skip` and files already there with the same
        weights and a checksum; `checksums` gets each file's entry."""
        try:
            existing = json.loads(storage.read_bytes(storage.join(out_uri, MANIFEST)))
        except (UserError, ValueError):
            existing = {}
        for name, filename in self.files.items():
            target = storage.join(out_uri, filename)
            kept = existing.get(CHECKSUMS, {}).get(filename)
            if name == skip:
                continue
            if kept and existing.get("sha256", {}).get(name) == self.sha256(name) and storage.exists(target):
                checksums[filename] = kept
                continue
            checksums[filename] = _write_file(target, storage.read_bytes(self.file_uri(name)))
        for name, filename in OPTIONAL_FILES.items():
            source = self.optional_file(name)
            if source is not None:
                checksums[filename] = _write_file(storage.join(out_uri, filename), storage.read_bytes(source))


def _same_folder(a: str, b: str) -> bool:
    path_a, path_b = storage.fsspec_filesystem(a)[1], storage.fsspec_filesystem(b)[1]
    return storage.is_s3(a) == storage.is_s3(b) and path_a.rstrip("/") == path_b.rstrip("/")
