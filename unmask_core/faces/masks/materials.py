"""What a mask's front looks like: its material, its shading, its seams and its fittings (nose
clip, valve). Each is named in a kind's `MaskStyle` and found here by that name.

All work on a `Surface`: the working box's pixels in the mask's own coordinates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np

from unmask_core.faces.masks.geometry import FaceFrame, Outline
from unmask_core.faces.masks.styles import Color, MaskStyle
from unmask_core.faces.samples import MASK_TEXTURE_NAMES, load_rgb, sample_photo


@dataclass(frozen=True)
class Surface:
    x: np.ndarray  # canonical (ArcFace 112 frame) coordinates of each pixel
    y: np.ndarray
    u: np.ndarray  # across the mask, -1 .. 1 (`Outline.coordinates`)
    t: np.ndarray  # down the mask, 0 .. 1
    distance: np.ndarray  # to the outline, canonical units, > 0 inside
    frame: FaceFrame
    outline: Outline


def smoothstep(edge0: float, edge1: float, value: np.ndarray) -> np.ndarray:
    fraction = np.clip((value - edge0) / (edge1 - edge0), 0.0, 1.0)
    return fraction * fraction * (3 - 2 * fraction)


# ---------------------------------------------------------------------------------------------
# Materials: (surface, colour, rng) -> RGB in [0, 1], before shading


@cache
def _mask_photo(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A mask photo as float RGB in [0, 1] with its mean colour. The outer 3% holds the white
    backdrop and the ear-loop knots in some photos, so it is cut off."""
    photo = load_rgb(sample_photo(name)).astype(np.float32) / 255.0
    height, width = photo.shape[:2]
    photo = np.ascontiguousarray(
        photo[int(0.03 * height) : int(0.97 * height), int(0.03 * width) : int(0.97 * width)]
    )
    height, width = photo.shape[:2]
    centre = photo[int(0.1 * height) : int(0.9 * height), int(0.1 * width) : int(0.9 * width)]
    photo.setflags(write=False)
    return photo, centre.reshape(-1, 3).mean(axis=0)


def _photo_closest_to(color: Color) -> str:
    """The mask photo closest in colour, so that recolouring stays gentle."""
    target = np.asarray(color, dtype=np.float32) / 255.0
    return min(MASK_TEXTURE_NAMES, key=lambda name: float(np.sum((_mask_photo(name)[1] - target) ** 2)))


def _photo_front(surface: Surface, color: Color, rng: np.random.Generator) -> np.ndarray:
    """A real mask photo, warped over the outline (its pleats follow the mask) and recoloured."""
    photo, mean = _mask_photo(_photo_closest_to(color))
    width_px = max(8, int(2.0 * 39.0 * surface.frame.px_per_unit))
    height_px = max(4, int(width_px * photo.shape[0] / photo.shape[1]))
    # Shrink the photo to about the mask's size first, so that remap does not alias the pleats.
    small = cv2.resize(photo, (width_px, height_px), interpolation=cv2.INTER_AREA)
    s = (np.clip(surface.u, -1, 1) + 1) / 2
    front = cv2.remap(
        small,
        (s * (width_px - 1)).astype(np.float32),
        (np.clip(surface.t, 0, 1) * (height_px - 1)).astype(np.float32),
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    target = np.asarray(color, dtype=np.float32) / 255.0
    return front * (target / np.maximum(mean, 1e-3))


def _printed_front(surface: Surface, color: Color, rng: np.random.Generator) -> np.ndarray:
    """A printed or woven pattern in the fabric's own colours."""
    base = np.asarray(color, dtype=np.float32) / 255.0
    accent = np.clip(
        np.where(base.mean() > 0.5, base * 0.55, base + (1 - base) * 0.65), 0, 1
    )  # darker on light cloth, lighter on dark cloth
    pattern = rng.choice(["solid", "solid", "stripes", "dots", "plaid", "check"])
    period = rng.uniform(5.0, 9.0)
    angle = rng.uniform(-0.5, 0.5) if pattern == "stripes" else 0.0
    x, y = surface.x, surface.y
    xr = x * np.cos(angle) - y * np.sin(angle)
    yr = x * np.sin(angle) + y * np.cos(angle)
    if pattern == "stripes":
        weight = smoothstep(0.55, 0.7, 0.5 + 0.5 * np.sin(2 * np.pi * xr / period))
    elif pattern == "dots":
        cell_x, cell_y = (
            np.mod(xr, period) - period / 2,
            np.mod(yr + (np.floor(xr / period) % 2) * period / 2, period),
        )
        weight = 1 - smoothstep(period * 0.16, period * 0.24, np.hypot(cell_x, cell_y - period / 2))
    elif pattern == "plaid":
        bands_x = smoothstep(0.6, 0.75, 0.5 + 0.5 * np.cos(2 * np.pi * xr / period))
        bands_y = smoothstep(0.6, 0.75, 0.5 + 0.5 * np.cos(2 * np.pi * yr / period))
        weight = 0.5 * bands_x + 0.5 * bands_y
    elif pattern == "check":
        weight = ((np.floor(xr / period) + np.floor(yr / period)) % 2).astype(np.float32) * 0.8
    else:
        weight = np.zeros_like(x)
    return base * (1 - weight[..., None]) + accent * weight[..., None]


def _plain_front(surface: Surface, color: Color, rng: np.random.Generator) -> np.ndarray:
    """One colour; the grain gives it its texture."""
    return (np.asarray(color, dtype=np.float32) / 255.0)[None, None, :]


MATERIALS: dict[str, Callable[[Surface, Color, np.random.Generator], np.ndarray]] = {
    "photo": _photo_front,
    "printed": _printed_front,
    "plain": _plain_front,
}


def grain(shape: tuple[int, int], rng: np.random.Generator, strength: float) -> np.ndarray:
    """Fabric grain, as a multiplicative map with mean 1: fine fibre noise plus a faint mottle.
    Drawn fresh (not cut from the mask photos: their JPEG blocks show as a grid once high-passed)."""
    fine = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), 0.8)
    mottle = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), 2.5)
    texture = fine / max(float(fine.std()), 1e-6) + 0.6 * mottle / max(float(mottle.std()), 1e-6)
    return 1.0 + strength * texture / float(np.hypot(1.0, 0.6))


# ---------------------------------------------------------------------------------------------
# Shading: how bright each point of the front is


def _draped_shading(surface: Surface, light: float) -> np.ndarray:
    """Fabric over the face: curving away at the cheeks and under the chin, the nose ridge
    catching light."""
    across = np.clip(surface.u, -1, 1)
    cheek = np.sqrt(np.clip(1 - 0.75 * across**2, 0, 1))
    shade = 0.7 + 0.3 * cheek + 0.1 * light * across
    shade = shade - 0.22 * smoothstep(0.72, 1.0, surface.t)  # wraps under the chin
    ridge = np.exp(-(((surface.x - surface.frame.nose_x) / 4.5) ** 2)) * (
        1 - smoothstep(0.15, 0.45, surface.t)
    )
    return shade + 0.07 * ridge


def _cup_shading(surface: Surface, light: float) -> np.ndarray:
    """A moulded cup: brightest where it faces the camera, greying towards the rim."""
    across = np.clip(surface.u, -1, 1)
    down = np.clip(2 * surface.t - 1, -1, 1)
    facing = np.sqrt(np.clip(1 - 0.8 * across**2 - 0.6 * down**2, 0, 1))
    shade = 0.64 + 0.34 * facing + 0.1 * light * across - 0.06 * down
    return shade + 0.05 * np.exp(-((across + 0.3 * light) ** 2 + (down + 0.35) ** 2) / 0.12)


SHADINGS: dict[str, Callable[[Surface, float], np.ndarray]] = {"draped": _draped_shading, "cup": _cup_shading}


def _shading(style: MaskStyle, surface: Surface, rng: np.random.Generator) -> np.ndarray:
    """The style's shading, lit from a slightly random direction."""
    light = rng.uniform(-0.35, 0.35)
    shade = SHADINGS[style.shading](surface, light)
    if style.panels:
        # Two flat panels meeting on the centre seam face the light differently.
        shade = shade * (1 + 0.07 * np.sign(surface.u) * (1 if light >= 0 else -1))
    # A soft darkening right at the edge, where the mask lifts off the skin.
    return shade * (1 - 0.12 * np.exp(-np.maximum(surface.distance, 0) / 1.2))


# ---------------------------------------------------------------------------------------------
# Seams: multiplicative detail (1 = none); `line` is a seam's width in canonical units


def _welded_seam(surface: Surface, line: float) -> np.ndarray:
    """A band of weld dots just inside the edge."""
    band = np.exp(-(((surface.distance - 2.2) / line) ** 2))
    dots = 0.5 + 0.5 * np.cos(2 * np.pi * (surface.x + surface.y) / 1.6)
    return 0.22 * band * dots


def _hem_seam(surface: Surface, line: float) -> np.ndarray:
    """A hem stitched a little inside the edge, as dashes."""
    hem = np.exp(-(((surface.distance - 1.6) / line) ** 2))
    dashes = smoothstep(0.2, 0.4, 0.5 + 0.5 * np.sin(2 * np.pi * (surface.x + 0.3 * surface.y) / 2.2))
    return 0.18 * hem * dashes


def _moulded_rim(surface: Surface, line: float) -> np.ndarray:
    return 0.12 * np.exp(-(((surface.distance - 1.4) / (1.4 * line)) ** 2))


EDGE_SEAMS: dict[str, Callable[[Surface, float], np.ndarray]] = {
    "welded": _welded_seam,
    "hem": _hem_seam,
    "rim": _moulded_rim,
}


def _seams(style: MaskStyle, surface: Surface) -> np.ndarray:
    detail = np.ones_like(surface.x)
    feather = 1.0 / surface.frame.px_per_unit  # one output pixel in canonical units
    line = max(0.45, 0.9 * feather)
    if style.centre_seam:
        detail -= style.centre_seam * np.exp(-(((surface.x - surface.frame.nose_x) / line) ** 2))
    if style.edge_seam is not None:
        detail -= EDGE_SEAMS[style.edge_seam](surface, line)
    return detail


# ---------------------------------------------------------------------------------------------
# Fittings


def _nose_clip(surface: Surface) -> np.ndarray:
    """Where a metal nose strip lies: a narrow band along the top edge over the nose."""
    return (
        (1 - smoothstep(0.25, 0.32, np.abs(surface.u)))
        * (1 - smoothstep(0.07, 0.1, surface.t))
        * smoothstep(0.01, 0.03, surface.t)
    )


def _valve(surface: Surface, side: float) -> tuple[np.ndarray, np.ndarray]:
    """An exhalation valve on one cheek: (coverage, brightness) of a round plastic cap with a
    raised rim and horizontal vents."""
    outline = surface.outline
    centre_x = outline.centre_x + side * 0.45 * (
        outline.half_width_right if side > 0 else outline.half_width_left
    )
    centre_y = 95.0
    radius = 8.0
    r = np.hypot(surface.x - centre_x, surface.y - centre_y)
    cover = 1 - smoothstep(radius - 0.4, radius + 0.4, r)
    rim = np.exp(-(((r - radius + 1.0) / 0.6) ** 2))
    vents = (np.abs(surface.y - centre_y) < radius * 0.55) * (
        0.5 + 0.5 * np.cos(2 * np.pi * (surface.y - centre_y) / 1.8)
    )
    brightness = 0.82 + 0.15 * rim - 0.2 * vents * (r < radius - 1.8) - 0.1 * (surface.y - centre_y) / radius
    return cover, brightness


# ---------------------------------------------------------------------------------------------


def mask_front(
    style: MaskStyle, surface: Surface, color: Color, exposure: float, rng: np.random.Generator
) -> np.ndarray:
    """The mask's front, RGB in [0, 1] over the working box, shaded and exposed like the photo."""
    front = MATERIALS[style.material](surface, color, rng)
    if style.grain:
        front = front * grain(surface.x.shape, rng, style.grain)[..., None]
    shade = _shading(style, surface, rng) * _seams(style, surface)
    if style.nose_clip:
        shade = shade * (1 - 0.12 * _nose_clip(surface))
    if style.valve_chance and rng.random() < style.valve_chance:
        # The valve sits on the side nearer the camera, as in most photos of one.
        cover, brightness = _valve(surface, 1.0 if surface.frame.yaw < 0 else -1.0)
        shade = shade * (1 - cover) + brightness * shade * cover
    return front * (shade * exposure)[..., None]
