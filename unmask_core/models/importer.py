"""Build a model set from the public checkpoints (`unmask models import`).

generator  rosinality StyleGAN2 `{'g_ema', 'latent_avg'?}` (FFHQ 256 or 1024), or the pSp file's decoder
encoders   a pSp checkpoint `{'state_dict' (encoder./decoder.), 'opts', 'latent_avg'}`, or, without
           one, pSp's own initialisation: a fresh encoder whose IR-SE body comes from model_ir_se50.pth
others     one public file each, by the `public` of their kind (kinds.py): arcface from
           `model_ir_se50.pth` (--irse50: the ID loss, and the 'arcface' matcher unless an ONNX is
           given), facenet from a facenet-pytorch InceptionResnetV1 state dict (--facenet), ...
optional   insightface ArcFace ONNX (the 'arcface' matcher) and torchvision AlexNet (LPIPS)

`add_checksums` brings a set written before manifests carried file checksums up to date
(`unmask models checksum`).
"""

from __future__ import annotations

import copy
import posixpath
import tempfile
from pathlib import Path
from typing import Any

import torch

from unmask_core import storage
from unmask_core.errors import UserError
from unmask_core.models.cache import FileChecksum
from unmask_core.models.encoder import EncoderConfig, GradualStyleEncoder
from unmask_core.models.format import CheckpointError, read_checkpoint
from unmask_core.models.kinds import kind_of_model, public_weights
from unmask_core.models.model_set import (
    CHECKSUMS,
    MANIFEST,
    MEAN_LATENT_SAMPLES,
    OPTIONAL_FILES,
    ModelSet,
    manifest_bytes,
    write_model_set,
)
from unmask_core.models.psp import LatentEncoder
from unmask_core.models.public import (
    init_encoder_from_irse50,
    load_lpips,
    load_psp,
    load_rosinality_generator,
)


def import_public_model_set(
    out_uri: str,
    generator: str = "",
    psp: str = "",
    unmask_psp: str = "",
    arcface_onnx: str = "",
    lpips_alexnet: str = "",
    **weights: str,
) -> dict[str, Any]:
    """Convert public checkpoints into a model set at `out_uri`; returns its manifest.

    f0 comes from `psp` (or pSp's IR-SE50 initialisation); f from `unmask_psp` when given (an encoder
    already trained to unmask), otherwise it starts as a copy of f0, as training does. `weights`: the
    public file of every other model, by its kind's import option (`irse50`, `facenet`, ...).
    """
    options = {public.option: (name, public) for name, public in public_weights().items()}
    unknown = sorted(set(weights) - set(options))
    if unknown:
        raise TypeError(f"unknown public weights {', '.join(unknown)}; known: {', '.join(options)}")
    missing = [option for option in options if not weights.get(option)]
    if missing:
        raise UserError(f"give --{', --'.join(missing)}")
    if not (generator or psp):
        raise UserError("give --generator (rosinality StyleGAN2) and/or --psp (a pSp checkpoint)")
    irse50 = weights["irse50"]  # pSp initialises the encoder's body from ArcFace's IR-SE50
    if storage.exists(storage.join(out_uri, MANIFEST)):
        raise UserError(f"{out_uri}: already holds a model set; choose another folder")
    latent_avg = None
    if psp:
        model = load_psp(psp)
        g, latent_avg = model.decoder, model.latent_avg
        baseline = LatentEncoder(model.encoder, model.latent_avg)
    if generator:
        g, rosinality_avg = load_rosinality_generator(generator)
        if not psp:
            latent_avg = rosinality_avg if rosinality_avg is not None else g.mean_latent(MEAN_LATENT_SAMPLES)
            encoder = GradualStyleEncoder(
                EncoderConfig(input_size=256, n_styles=g.n_latent, style_dim=g.style_dim)
            )
            init_encoder_from_irse50(encoder, irse50)
            baseline = LatentEncoder(encoder, latent_avg)
    unmask = (
        LatentEncoder(load_psp(unmask_psp).encoder, latent_avg) if unmask_psp else copy.deepcopy(baseline)
    )
    models = {"generator": g.eval(), "baseline": baseline.eval(), "unmask": unmask.eval()}
    for option, (name, public) in options.items():
        models[name] = public.load(weights[option])
    sources = dict(generator=generator, psp=psp, unmask_psp=unmask_psp, **weights)
    sources = {k: v for k, v in sources.items() if v}
    optional_files = {}
    if arcface_onnx:
        _check_onnx(arcface_onnx)
        optional_files["arcface_onnx"] = storage.read_bytes(arcface_onnx)
    if lpips_alexnet:
        load_lpips(lpips_alexnet)  # refuses a file that is not AlexNet, naming the keys
        optional_files["lpips_alexnet"] = storage.read_bytes(lpips_alexnet)
    notes = {"imported_from": sources}
    with torch.no_grad():
        return write_model_set(out_uri, models, notes, optional_files)


def _check_onnx(uri: str) -> None:
    import onnx

    try:
        onnx.checker.check_model(onnx.load_from_string(storage.read_bytes(uri)))
    except Exception as exc:
        raise UserError(f"{uri}: not a valid ONNX model ({type(exc).__name__}: {exc})") from None


def add_checksums(uri: str) -> dict[str, Any]:
    """Record in the manifest of the set at `uri` the size and sha256 of each of its files that it has
    none for, as `models init|import` write them; returns the new manifest. Reads each such file once
    (an S3 one through a temporary local copy) and checks a model's weights against the manifest's
    sha256 before vouching for its bytes."""
    models = ModelSet(uri)
    manifest = models.manifest
    checksums = manifest.setdefault(CHECKSUMS, {})
    optional = [name for name in OPTIONAL_FILES if storage.exists(models.file_uri(name))]
    with tempfile.TemporaryDirectory(prefix="unmask-checksum-") as scratch:
        for name in [*models.files, *optional]:
            file_uri = models.file_uri(name)
            filename = posixpath.basename(file_uri)
            if filename in checksums:
                continue
            local = file_uri
            if storage.is_s3(file_uri):
                local = str(Path(scratch, filename))
                storage.download(file_uri, local)
            if name in models.files:
                weights = read_checkpoint(local, kind_of_model()[name], label=file_uri).sha256
                if weights != models.sha256(name):
                    raise CheckpointError(
                        f"{file_uri}: its weights hash to {weights[:16]}..., {MANIFEST} says "
                        f"{models.sha256(name)[:16]}... (replaced without updating the model set)"
                    )
            checksum = FileChecksum.of_file(local)
            checksums[filename] = {"size": checksum.size, "sha256": checksum.sha256}
            if local != file_uri:
                Path(local).unlink()  # one file at a time in the scratch folder
    storage.write_bytes_atomic(storage.join(uri, MANIFEST), manifest_bytes(manifest))
    return manifest
