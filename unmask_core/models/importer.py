"""Build a model set from the public checkpoints (`unmask models import`).

generator  rosinality StyleGAN2 `{'g_ema', 'latent_avg'?}` (FFHQ 256 or 1024), or the pSp file's decoder
encoder    a pSp checkpoint `{'state_dict' (encoder./decoder.), 'opts', 'latent_avg'}`, or, without
           one, pSp's own initialisation: a fresh encoder whose IR-SE body comes from model_ir_se50.pth
arcface    `model_ir_se50.pth` (the ID loss; also the 'arcface' matcher unless an ONNX is given)
facenet    facenet-pytorch InceptionResnetV1 state dict (e.g. VGGFace2)
optional   insightface ArcFace ONNX (the 'arcface' matcher) and torchvision AlexNet (LPIPS)
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from unmask_core import storage
from unmask_core.errors import UserError
from unmask_core.models.encoder import EncoderConfig, GradualStyleEncoder
from unmask_core.models.model_set import MANIFEST, MEAN_LATENT_SAMPLES, OPTIONAL_FILES, write_model_set
from unmask_core.models.psp import LatentEncoder
from unmask_core.models.public import (
    init_encoder_from_irse50,
    load_facenet,
    load_irse50,
    load_lpips,
    load_psp,
    load_rosinality_generator,
)


def import_public_model_set(
    out_uri: str,
    irse50: str,
    facenet: str,
    generator: str = "",
    psp: str = "",
    unmask_psp: str = "",
    arcface_onnx: str = "",
    lpips_alexnet: str = "",
) -> dict[str, Any]:
    """Convert public checkpoints into a model set at `out_uri`; returns its manifest.

    f0 comes from `psp` (or pSp's IR-SE50 initialisation); f from `unmask_psp` when given (an encoder
    already trained to unmask), otherwise it starts as a copy of f0, as training does.
    """
    if not (generator or psp):
        raise UserError("give --generator (rosinality StyleGAN2) and/or --psp (a pSp checkpoint)")
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
    arcface = load_irse50(irse50)
    face_net = load_facenet(facenet)
    sources = {
        k: v
        for k, v in dict(
            generator=generator, psp=psp, unmask_psp=unmask_psp, irse50=irse50, facenet=facenet
        ).items()
        if v
    }
    with torch.no_grad():
        manifest = write_model_set(
            out_uri, g.eval(), baseline.eval(), unmask.eval(), arcface, face_net, {"imported_from": sources}
        )
    if arcface_onnx:
        _check_onnx(arcface_onnx)
        storage.write_bytes_atomic(
            storage.join(out_uri, OPTIONAL_FILES["arcface_onnx"]), storage.read_bytes(arcface_onnx)
        )
    if lpips_alexnet:
        load_lpips(lpips_alexnet)  # refuses a file that is not AlexNet, naming the keys
        storage.write_bytes_atomic(
            storage.join(out_uri, OPTIONAL_FILES["lpips_alexnet"]), storage.read_bytes(lpips_alexnet)
        )
    return manifest


def _check_onnx(uri: str) -> None:
    import onnx

    try:
        onnx.checker.check_model(onnx.load_from_string(storage.read_bytes(uri)))
    except Exception as exc:
        raise UserError(f"{uri}: not a valid ONNX model ({type(exc).__name__}: {exc})") from None
