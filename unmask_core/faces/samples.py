"""Real photos that ship inside the insightface package: faces for tests and the demo, and photos of
surgical masks that serve as real fabric textures. Nothing here downloads anything."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

# The package keeps these under insightface/data/images/ (insightface 0.7 through 2.x).
_PACKAGE = "insightface"
_IMAGES = ("data", "images")

MASK_TEXTURE_NAMES = ("mask_blue.jpg", "mask_white.jpg", "mask_green.jpg", "mask_black.jpg")


def _images_dir() -> Path:
    folder = resources.files(_PACKAGE).joinpath(*_IMAGES)
    # insightface is installed as a plain folder (not a zip), so the traversable is a real path.
    path = Path(str(folder))
    if not path.is_dir():
        raise FileNotFoundError(f"insightface ships no sample images at {path}")
    return path


def sample_photo(name: str) -> Path:
    """Path of one shipped photo: `t1.jpg` (a group photo, 6 faces, 1280x886), `Tom_Hanks_54745.png` (one
    face, already ArcFace-aligned at 112x112), or one of the mask textures."""
    path = _images_dir() / name
    if not path.is_file():
        raise FileNotFoundError(f"no sample photo {name!r} in {path.parent}")
    return path


def mask_texture_paths() -> list[Path]:
    """Photos of real surgical masks (blue, white, green, black), each filling its frame."""
    return [sample_photo(name) for name in MASK_TEXTURE_NAMES]


def load_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file to uint8 RGB [H, W, 3] (grey and palette images are expanded)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
