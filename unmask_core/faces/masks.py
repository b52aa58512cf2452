"""Synthetic face masks fitted to 5 landmarks, for training pairs (T, M = T + mask).

MaskTheFace-style (METHOD.md, "Data"), without its 68-point detector: each mask is an outline
drawn in the ArcFace 112 px frame, where the average face's landmarks are known
(`ARCFACE_TEMPLATE_112`), and carried onto the photo by the affine map that best takes that
template onto the face's own 5 landmarks. The outline follows the nose (its centre line passes
through the nose tip) and runs from about mid-nose, below the eyes, over mouth and chin.

Kinds: surgical (a real mask photo from insightface, pleats and seams included, warped over the
outline and recoloured), n95 (white dome), kn95 (two folded panels and a centre seam), cloth
(woven fabric, solid or printed), black (plain black fabric). Every mask gets its shading
(curvature, the nose ridge, the fall-off under the chin), the photo's exposure, a thin contact
shadow, anti-aliased edges and its straps where they fit.

Everything is a pure function of (image, landmarks, kind, colour, seed, image id): the random
choices come from a generator seeded by a hash of seed and image id, so a rerun gives the same
bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cache

import cv2
import numpy as np

from unmask_core.faces.align import ARCFACE_TEMPLATE_112, transform_points
from unmask_core.faces.samples import MASK_TEXTURE_NAMES, load_rgb, sample_photo

MASK_KINDS = ("surgical", "n95", "kn95", "cloth", "black")

Color = tuple[int, int, int]

# First colour of each palette is the kind's default.
PALETTES: dict[str, tuple[Color, ...]] = {
    "surgical": (
        (122, 201, 233),
        (222, 222, 222),
        (85, 168, 148),
        (48, 46, 48),
        (236, 178, 196),
        (186, 170, 222),
    ),
    "n95": ((236, 236, 230), (222, 218, 204), (200, 204, 210)),
    "kn95": ((238, 238, 236), (34, 34, 37), (150, 152, 158), (236, 184, 200), (170, 206, 232)),
    "cloth": (
        (38, 50, 92),
        (62, 62, 68),
        (168, 40, 46),
        (108, 30, 46),
        (94, 106, 60),
        (204, 184, 150),
        (78, 104, 140),
        (38, 118, 124),
        (220, 150, 172),
        (204, 160, 58),
        (28, 28, 30),
    ),
    "black": ((24, 24, 26),),
}

# The ArcFace frame's face midline and eye distance (canonical units = 112 px frame pixels).
_MID_X = float(ARCFACE_TEMPLATE_112[[0, 1, 3, 4], 0].mean())
_EYE_DISTANCE = float(np.hypot(*(ARCFACE_TEMPLATE_112[1] - ARCFACE_TEMPLATE_112[0])))
# No mask pixel within this fraction of the eye distance from an eye landmark, whatever the
# geometry: a mask over the eyes would hide what the unmasking model must keep.
EYE_GUARD = 0.3


class MaskError(ValueError):
    """Landmarks on which no plausible mask can be drawn; `reason` is a short word for reports."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True, eq=False)
class MaskResult:
    masked: np.ndarray  # uint8 [H, W, 3]
    region: np.ndarray  # bool [H, W]: pixels the mask or its straps cover (coverage >= 0.5)
    kind: str
    color: Color


def mask_rng(seed: int, image_id: str, purpose: str = "") -> np.random.Generator:
    """A generator determined by (seed, image id, purpose) alone: sha256, so it does not depend on
    Python's per-process string hashing."""
    digest = hashlib.sha256(f"{seed}\x1f{image_id}\x1f{purpose}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def choose_mask(kinds: Sequence[str] = MASK_KINDS, seed: int = 0, image_id: str = "") -> tuple[str, Color]:
    """Pick a kind (uniformly among `kinds`) and one of its palette's colours for an image."""
    for kind in kinds:
        _check_kind(kind)
    if not kinds:
        raise ValueError("choose_mask needs at least one kind")
    rng = mask_rng(seed, image_id, "choose")
    kind = kinds[int(rng.integers(len(kinds)))]
    palette = PALETTES[kind]
    return kind, palette[int(rng.integers(len(palette)))]


def _check_kind(kind: str) -> None:
    if kind not in PALETTES:
        raise ValueError(f"unknown mask kind {kind!r}; expected one of {', '.join(MASK_KINDS)}")


# ---------------------------------------------------------------------------------------------
# Geometry: the face frame and the outlines


@dataclass(frozen=True)
class _FaceFrame:
    to_image: np.ndarray  # 2x3, canonical (ArcFace 112 frame) -> image pixels
    to_canonical: np.ndarray  # 2x3, the inverse
    px_per_unit: float
    nose_x: float  # the nose tip's x in the canonical frame: the mask's centre line
    yaw: float  # nose offset along the eye line / eye distance; > 0: nose towards viewer's right
    eyes: np.ndarray  # [2, 2] image pixels
    eye_distance: float  # image pixels


def _face_frame(landmarks5: np.ndarray, image_shape: tuple[int, ...]) -> _FaceFrame:
    points = np.asarray(landmarks5, dtype=np.float64)
    if points.shape != (5, 2):
        raise MaskError("bad_shape", f"landmarks must be [5, 2], got {points.shape}")
    if not np.isfinite(points).all():
        raise MaskError("non_finite", "landmarks contain NaN or inf")
    height, width = image_shape[:2]
    if (points < 0).any() or (points[:, 0] > width - 1).any() or (points[:, 1] > height - 1).any():
        raise MaskError("out_of_frame", "a landmark lies outside the image")
    eye_mid = (points[0] + points[1]) / 2
    eye_axis = points[1] - points[0]
    eye_distance = float(np.hypot(*eye_axis))
    if eye_distance < 8.0:
        raise MaskError("too_small", f"eyes {eye_distance:.1f} px apart")
    along = eye_axis / eye_distance
    down = np.array([-along[1], along[0]])  # eye line turned a quarter turn towards the chin
    mouth_drop = ((points[3] + points[4]) / 2 - eye_mid) @ down / eye_distance
    nose_drop = (points[2] - eye_mid) @ down / eye_distance
    # The average face has the mouth 1.15 and the nose 0.57 eye distances below the eye line.
    if mouth_drop <= 0:
        raise MaskError("eyes_below_mouth", "the mouth is not below the eyes")
    if not 0.5 <= mouth_drop <= 2.2 or not 0.1 < nose_drop < mouth_drop:
        raise MaskError("implausible", f"mouth {mouth_drop:.2f}, nose {nose_drop:.2f} eye distances down")
    yaw = float((points[2] - eye_mid) @ along / eye_distance)
    if abs(yaw) > 0.6:
        raise MaskError("profile", "the nose lies beyond an eye: too side-on for a frontal mask")

    # Full affine (not just similarity): its shear absorbs some yaw and pitch foreshortening.
    source = np.hstack([ARCFACE_TEMPLATE_112, np.ones((5, 1))])
    to_image = np.linalg.lstsq(source, points, rcond=None)[0].T
    singular = np.linalg.svd(to_image[:, :2], compute_uv=False)
    if singular[1] <= 0 or singular[0] / singular[1] > 3.0 or np.linalg.det(to_image[:, :2]) <= 0:
        raise MaskError("implausible", "landmarks are too skewed for a face")
    to_canonical = cv2.invertAffineTransform(to_image)
    nose_canonical = transform_points(points[2], to_canonical)
    return _FaceFrame(
        to_image=to_image,
        to_canonical=to_canonical,
        px_per_unit=float(np.sqrt(np.linalg.det(to_image[:, :2]))),
        nose_x=float(np.clip(nose_canonical[0], _MID_X - 8, _MID_X + 8)),
        yaw=yaw,
        eyes=points[:2],
        eye_distance=eye_distance,
    )


@dataclass(frozen=True)
class _Outline:
    """A mask's front in the canonical frame. Across the face, u runs from -1 (viewer's left edge)
    through 0 (the nose line) to 1; the half-widths may differ left/right (the nose follows yaw)
    and narrow towards the chin. Down the face, t runs from 0 (top edge) to 1 (bottom edge)."""

    centre_x: float
    half_width_left: float
    half_width_right: float
    narrowing: float  # half-width multiplier at the bottom edge
    top: Callable[[np.ndarray], np.ndarray]  # y of the top edge as a function of u
    bottom: Callable[[np.ndarray], np.ndarray]
    y_range: tuple[float, float]  # where the narrowing happens
    top_shift: float = 0.0  # lowers the top edge on faces whose eyes sit close to it

    def top_edge(self, u: np.ndarray) -> np.ndarray:
        return self.top(u) + self.top_shift

    def half_width(self, y: np.ndarray, left: np.ndarray) -> np.ndarray:
        base = np.where(left, self.half_width_left, self.half_width_right)
        y0, y1 = self.y_range
        fraction = np.clip((y - y0) / (y1 - y0), 0.0, 1.0)
        return base * (1.0 + (self.narrowing - 1.0) * fraction)

    def coordinates(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(u, t, signed distance to the outline in canonical units, > 0 inside)."""
        left = x < self.centre_x
        half = self.half_width(y, left)
        u = (x - self.centre_x) / half
        uc = np.clip(u, -1.0, 1.0)
        top, bottom = self.top_edge(uc), self.bottom(uc)
        t = (y - top) / np.maximum(bottom - top, 1e-6)
        # Vertical gaps to the edges, divided by the edge's slope factor, approximate the true
        # distances well enough to anti-alias on.
        eps = 1e-3
        slope_top = (self.top_edge(np.clip(uc + eps, -1, 1)) - self.top_edge(np.clip(uc - eps, -1, 1))) / (
            2 * eps * half
        )
        slope_bottom = (self.bottom(np.clip(uc + eps, -1, 1)) - self.bottom(np.clip(uc - eps, -1, 1))) / (
            2 * eps * half
        )
        to_top = (y - top) / np.sqrt(1 + slope_top**2)
        to_bottom = (bottom - y) / np.sqrt(1 + slope_bottom**2)
        to_side = (1.0 - np.abs(u)) * half
        return u, t, np.minimum(np.minimum(to_top, to_bottom), to_side)


def _bump(u: np.ndarray, width: float) -> np.ndarray:
    return np.exp(-((u / width) ** 2))


def _outline(kind: str, frame: _FaceFrame, rng: np.random.Generator) -> _Outline:
    """The kind's outline, jittered a little per image so that not every mask sits identically."""
    jitter = rng.uniform(-1.0, 1.0, size=3)
    grow = 1.0 + 0.03 * jitter[0]
    lift = 1.2 * jitter[1]  # moves the top edge, canonical units
    drop = 2.0 * jitter[2]  # moves the bottom edge
    centre = frame.nose_x
    # The face's cheek edges stay put while the centre line follows the nose.
    face_left, face_right = _MID_X - 39.0 * grow, _MID_X + 39.0 * grow
    half_left, half_right = centre - face_left, face_right - centre
    if kind == "surgical":
        return _Outline(
            centre,
            half_left,
            half_right,
            0.86,
            lambda u: 67.0 + lift - 6.5 * _bump(u, 0.33),
            lambda u: 100.0 + drop + 19.0 * (1 - u**2) ** 0.8,
            (64.0, 112.0),
        )
    if kind == "n95":
        # An ellipse-like dome: top and bottom edges meet at the cheeks.
        middle = 88.0 + 0.5 * (lift + drop)
        return _Outline(
            centre,
            half_left * 0.93,
            half_right * 0.93,
            0.97,
            lambda u: middle - (28.0 - lift) * (1 - u**2) ** 0.55,
            lambda u: middle + (31.0 + drop) * (1 - u**2) ** 0.5,
            (70.0, 110.0),
        )
    if kind == "kn95":
        # Folded flat: straight edges up to a peak on the nose bridge and down to a pointed chin.
        return _Outline(
            centre,
            half_left,
            half_right,
            0.78,
            lambda u: 59.5 + lift + 10.0 * np.abs(u) ** 1.1,
            lambda u: 121.0 + drop - 20.0 * np.abs(u) ** 1.3,
            (68.0, 112.0),
        )
    # cloth and black: a contoured fabric mask, rounder than a surgical one.
    return _Outline(
        centre,
        half_left * 0.97,
        half_right * 0.97,
        0.84,
        lambda u: 66.5 + lift - 7.0 * _bump(u, 0.42),
        lambda u: 101.0 + drop + 18.0 * (1 - u**2) ** 0.7,
        (64.0, 112.0),
    )


def _clear_of_eyes(outline: _Outline, frame: _FaceFrame) -> _Outline:
    """Lower the top edge, in half-unit steps, until it keeps EYE_GUARD + 0.05 eye distances from
    both eyes. Faces with eyes low over the nose (looking down, squinting, laughing) would
    otherwise get the hard eye guard's round notch instead of a mask that simply sits lower.
    At most 8 units (a quarter of the eye-to-mouth drop), which still covers the nose tip."""
    u = np.linspace(-1.0, 1.0, 81)
    half = np.where(u < 0, outline.half_width_left, outline.half_width_right)
    for shift in np.arange(0.0, 8.5, 0.5):
        lowered = replace(outline, top_shift=float(shift))
        edge = np.stack([outline.centre_x + u * half, lowered.top_edge(u)], axis=1)
        points = transform_points(edge, frame.to_image)
        gap = (
            np.min(np.hypot(*(points[:, None, :] - frame.eyes[None]).transpose(2, 0, 1))) / frame.eye_distance
        )
        if gap >= EYE_GUARD + 0.05:
            return lowered
    return lowered


# ---------------------------------------------------------------------------------------------
# Materials


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


def _grain(shape: tuple[int, int], rng: np.random.Generator, strength: float) -> np.ndarray:
    """Fabric grain, as a multiplicative map with mean 1: fine fibre noise plus a faint mottle.
    Drawn fresh (not cut from the mask photos: their JPEG blocks show as a grid once high-passed)."""
    fine = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), 0.8)
    mottle = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), 2.5)
    grain = fine / max(float(fine.std()), 1e-6) + 0.6 * mottle / max(float(mottle.std()), 1e-6)
    return 1.0 + strength * grain / float(np.hypot(1.0, 0.6))


def _smoothstep(edge0: float, edge1: float, value: np.ndarray) -> np.ndarray:
    fraction = np.clip((value - edge0) / (edge1 - edge0), 0.0, 1.0)
    return fraction * fraction * (3 - 2 * fraction)


def _surgical_front(
    u: np.ndarray, t: np.ndarray, frame: _FaceFrame, color: Color, photo_name: str
) -> np.ndarray:
    """The mask photo, warped over the outline (its pleats follow the mask) and recoloured."""
    photo, mean = _mask_photo(photo_name)
    width_px = max(8, int(2.0 * 39.0 * frame.px_per_unit))
    height_px = max(4, int(width_px * photo.shape[0] / photo.shape[1]))
    # Shrink the photo to about the mask's size first, so that remap does not alias the pleats.
    small = cv2.resize(photo, (width_px, height_px), interpolation=cv2.INTER_AREA)
    s = (np.clip(u, -1, 1) + 1) / 2
    front = cv2.remap(
        small,
        (s * (width_px - 1)).astype(np.float32),
        (np.clip(t, 0, 1) * (height_px - 1)).astype(np.float32),
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    target = np.asarray(color, dtype=np.float32) / 255.0
    return front * (target / np.maximum(mean, 1e-3))


def _surgical_photo_for(color: Color) -> str:
    """The mask photo closest in colour, so that recolouring stays gentle."""
    target = np.asarray(color, dtype=np.float32) / 255.0
    return min(MASK_TEXTURE_NAMES, key=lambda name: float(np.sum((_mask_photo(name)[1] - target) ** 2)))


def _cloth_pattern(x, y, color: Color, rng: np.random.Generator) -> np.ndarray:
    """A printed or woven pattern in the fabric's own colours."""
    base = np.asarray(color, dtype=np.float32) / 255.0
    accent = np.clip(
        np.where(base.mean() > 0.5, base * 0.55, base + (1 - base) * 0.65), 0, 1
    )  # darker on light cloth, lighter on dark cloth
    kind = rng.choice(["solid", "solid", "stripes", "dots", "plaid", "check"])
    period = rng.uniform(5.0, 9.0)
    angle = rng.uniform(-0.5, 0.5) if kind == "stripes" else 0.0
    xr = x * np.cos(angle) - y * np.sin(angle)
    yr = x * np.sin(angle) + y * np.cos(angle)
    if kind == "stripes":
        weight = _smoothstep(0.55, 0.7, 0.5 + 0.5 * np.sin(2 * np.pi * xr / period))
    elif kind == "dots":
        cell_x, cell_y = (
            np.mod(xr, period) - period / 2,
            np.mod(yr + (np.floor(xr / period) % 2) * period / 2, period),
        )
        weight = 1 - _smoothstep(period * 0.16, period * 0.24, np.hypot(cell_x, cell_y - period / 2))
    elif kind == "plaid":
        bands_x = _smoothstep(0.6, 0.75, 0.5 + 0.5 * np.cos(2 * np.pi * xr / period))
        bands_y = _smoothstep(0.6, 0.75, 0.5 + 0.5 * np.cos(2 * np.pi * yr / period))
        weight = 0.5 * bands_x + 0.5 * bands_y
    elif kind == "check":
        weight = ((np.floor(xr / period) + np.floor(yr / period)) % 2).astype(np.float32) * 0.8
    else:
        weight = np.zeros_like(x)
    return base * (1 - weight[..., None]) + accent * weight[..., None]


def _shading(kind: str, x, y, u, t, distance, frame: _FaceFrame, rng: np.random.Generator) -> np.ndarray:
    """How bright each point of the mask is: a surface curving away at the cheeks and under the
    chin, lit from a slightly random direction, with the nose ridge catching light."""
    light = rng.uniform(-0.35, 0.35)
    across = np.clip(u, -1, 1)
    if kind == "n95":
        # A moulded cup: brightest where it faces the camera, greying towards the rim.
        down = np.clip(2 * t - 1, -1, 1)
        facing = np.sqrt(np.clip(1 - 0.8 * across**2 - 0.6 * down**2, 0, 1))
        shade = 0.64 + 0.34 * facing + 0.1 * light * across - 0.06 * down
        shade = shade + 0.05 * np.exp(-((across + 0.3 * light) ** 2 + (down + 0.35) ** 2) / 0.12)
    else:
        cheek = np.sqrt(np.clip(1 - 0.75 * across**2, 0, 1))
        shade = 0.7 + 0.3 * cheek + 0.1 * light * across
        shade = shade - 0.22 * _smoothstep(0.72, 1.0, t)  # wraps under the chin
        ridge = np.exp(-(((x - frame.nose_x) / 4.5) ** 2)) * (1 - _smoothstep(0.15, 0.45, t))
        shade = shade + 0.07 * ridge
    if kind == "kn95":
        # Two flat panels meeting on the centre seam face the light differently.
        shade = shade * (1 + 0.07 * np.sign(u) * (1 if light >= 0 else -1))
    # A soft darkening right at the edge, where the mask lifts off the skin.
    shade = shade * (1 - 0.12 * np.exp(-np.maximum(distance, 0) / 1.2))
    return shade


def _seams(kind: str, x, y, distance, frame: _FaceFrame) -> np.ndarray:
    """Multiplicative detail for stitched or welded seams (1 = none)."""
    detail = np.ones_like(x)
    feather = 1.0 / frame.px_per_unit  # one output pixel in canonical units
    line = max(0.45, 0.9 * feather)
    if kind == "kn95":
        centre_seam = np.exp(-(((x - frame.nose_x) / line) ** 2))
        detail -= 0.28 * centre_seam
        # The welded rim: a band of dots just inside the edge.
        band = np.exp(-(((distance - 2.2) / line) ** 2))
        dots = 0.5 + 0.5 * np.cos(2 * np.pi * (x + y) / 1.6)
        detail -= 0.22 * band * dots
    elif kind in ("cloth", "black"):
        centre_seam = np.exp(-(((x - frame.nose_x) / line) ** 2))
        detail -= 0.22 * centre_seam
        # A hem stitched a little inside the edge, as dashes.
        hem = np.exp(-(((distance - 1.6) / line) ** 2))
        dashes = _smoothstep(0.2, 0.4, 0.5 + 0.5 * np.sin(2 * np.pi * (x + 0.3 * y) / 2.2))
        detail -= 0.18 * hem * dashes
    elif kind == "n95":
        rim = np.exp(-(((distance - 1.4) / (1.4 * line)) ** 2))
        detail -= 0.12 * rim
    return detail


def _nose_clip(t: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Where an n95's metal nose strip lies: a narrow band along the top edge over the nose."""
    return (
        (1 - _smoothstep(0.25, 0.32, np.abs(u)))
        * (1 - _smoothstep(0.07, 0.1, t))
        * _smoothstep(0.01, 0.03, t)
    )


# ---------------------------------------------------------------------------------------------
# Straps


def _strap_paths(kind: str, outline: _Outline, frame: _FaceFrame) -> list[np.ndarray]:
    """Canonical polylines of the visible straps. Ear loops run from the mask's top and bottom
    corners to the ear's root (in the ArcFace frame about 8 units beyond the cheek, between eye
    and nose height); an n95's head straps leave its sides towards the back of the head, one
    above and one below the ear. The strap on the far side of a turned face is hidden."""
    paths = []
    for side in (-1.0, 1.0):
        # The far side is where the nose points: its ear is behind the face.
        if side * frame.yaw > 0.12:
            continue
        u = np.array([side * 0.96])
        half = outline.half_width_left if side < 0 else outline.half_width_right
        corner_x = outline.centre_x + side * half * 0.97
        top_y = float(outline.top_edge(u)[0]) + 1.5
        bottom_y = float(outline.bottom(u)[0]) - 2.5
        ear_x = _MID_X + side * 46.0
        if kind == "n95":
            ends = [
                ((corner_x, top_y + 3.0), (ear_x, 62.0)),
                ((corner_x, bottom_y), (ear_x + side * 2.0, 94.0)),
            ]
        else:
            ends = [((corner_x, top_y), (ear_x, 63.0)), ((corner_x, bottom_y), (ear_x, 74.0))]
        for start, end in ends:
            start, end = np.array(start), np.array(end)
            if side * (end[0] - start[0]) < 2.0:  # no room between the mask and the ear
                continue
            bend = np.array([0.0, -1.5])  # elastic pulls a shallow arc over the cheek
            steps = np.linspace(0, 1, 16)[:, None]
            middle = (start + end) / 2 + bend
            paths.append((1 - steps) ** 2 * start + 2 * (1 - steps) * steps * middle + steps**2 * end)
    return paths


def _draw_straps(
    paths: list[np.ndarray], kind: str, frame: _FaceFrame, offset: np.ndarray, shape: tuple[int, int]
) -> np.ndarray:
    """Strap coverage in [0, 1] over the working box, anti-aliased; straps that would leave the
    image or pass near an eye are left out."""
    # Ear loops are thin cords (about 2 mm); head straps are flat bands twice as wide.
    width_units = 1.3 if kind == "n95" else 0.75
    supersample = 4
    height, width = shape
    canvas = np.zeros((height * supersample, width * supersample), dtype=np.uint8)
    thickness = max(1, int(round(width_units * frame.px_per_unit * supersample)))
    for path in paths:
        points = transform_points(path, frame.to_image)
        eye_gap = np.min(np.hypot(*(points[:, None, :] - frame.eyes[None]).transpose(2, 0, 1)))
        if eye_gap < (EYE_GUARD + 0.1) * frame.eye_distance:
            continue
        local = points - offset
        if (local < 0).any() or (local[:, 0] > width - 1).any() or (local[:, 1] > height - 1).any():
            continue
        fixed = np.round((local + 0.5) * supersample - 0.5).astype(np.int32)
        cv2.polylines(canvas, [fixed], False, 255, thickness, cv2.LINE_AA)
    # Drawing 4x larger and averaging down gives sub-pixel widths and positions.
    return cv2.resize(canvas, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def _valve(x, y, outline: _Outline, side: float) -> tuple[np.ndarray, np.ndarray]:
    """An n95 exhalation valve on one cheek: (coverage, brightness) of a round plastic cap with
    a raised rim and horizontal vents."""
    centre_x = outline.centre_x + side * 0.45 * (
        outline.half_width_right if side > 0 else outline.half_width_left
    )
    centre_y = 95.0
    radius = 8.0
    r = np.hypot(x - centre_x, y - centre_y)
    cover = 1 - _smoothstep(radius - 0.4, radius + 0.4, r)
    rim = np.exp(-(((r - radius + 1.0) / 0.6) ** 2))
    vents = (np.abs(y - centre_y) < radius * 0.55) * (0.5 + 0.5 * np.cos(2 * np.pi * (y - centre_y) / 1.8))
    brightness = 0.82 + 0.15 * rim - 0.2 * vents * (r < radius - 1.8) - 0.1 * (y - centre_y) / radius
    return cover, brightness


# ---------------------------------------------------------------------------------------------
# Compositing


def _face_exposure(image: np.ndarray, frame: _FaceFrame) -> float:
    """How brightly the face is lit, from the skin's luminance: a white mask in a dim photo must
    not glow. Skin reflects about half as much as white fabric, hence the factor 1.9."""
    corners = transform_points(
        np.array([[30.0, 20.0], [82.0, 20.0], [82.0, 112.0], [30.0, 112.0]]), frame.to_image
    )
    x0, y0 = np.maximum(np.floor(corners.min(axis=0)).astype(int), 0)
    x1, y1 = np.ceil(corners.max(axis=0)).astype(int)
    patch = image[y0 : y1 + 1, x0 : x1 + 1]
    if patch.size == 0:
        return 1.0
    luminance = cv2.cvtColor(np.ascontiguousarray(patch), cv2.COLOR_RGB2GRAY)
    skin = float(np.percentile(luminance, 60)) / 255.0
    return float(np.clip(1.9 * skin, 0.35, 1.0))


def _photo_softness(image: np.ndarray, frame: _FaceFrame) -> float:
    """Gaussian sigma (px) that makes a crisp drawing as soft as this photo. Blurring a sharp
    photo by 1 px removes most of its gradient energy; blurring an already soft one removes
    little. The kept fraction maps onto 0 px (sharp, <= 0.35 kept) .. 1.3 px (soft, >= 0.85)."""
    corners = transform_points(
        np.array([[30.0, 30.0], [82.0, 30.0], [82.0, 100.0], [30.0, 100.0]]), frame.to_image
    )
    x0, y0 = np.maximum(np.floor(corners.min(axis=0)).astype(int), 0)
    x1, y1 = np.ceil(corners.max(axis=0)).astype(int)
    patch = image[y0 : y1 + 1, x0 : x1 + 1]
    if min(patch.shape[:2]) < 16:
        return 0.0
    luminance = cv2.cvtColor(np.ascontiguousarray(patch), cv2.COLOR_RGB2GRAY).astype(np.float32)

    def energy(plane: np.ndarray) -> float:
        return float(np.mean(np.diff(plane, axis=0) ** 2) + np.mean(np.diff(plane, axis=1) ** 2))

    total = energy(luminance)
    if total <= 1e-6:
        return 0.0
    kept = energy(cv2.GaussianBlur(luminance, (0, 0), 1.0)) / total
    return float(1.3 * np.clip((kept - 0.35) / 0.5, 0.0, 1.0))


def _is_grey(image: np.ndarray) -> bool:
    """A black-and-white photo (stored as RGB): its masks must be grey too."""
    sample = image[:: max(1, image.shape[0] // 64), :: max(1, image.shape[1] // 64)].astype(np.int16)
    return int(np.abs(sample - sample.mean(axis=2, keepdims=True)).max()) <= 6


def apply_mask(
    image: np.ndarray,
    landmarks5: np.ndarray,
    kind: str,
    color: Color | None = None,
    seed: int = 0,
    image_id: str = "",
) -> MaskResult:
    """Draw a `kind` mask on a face. `color` None takes the kind's default; the same (image,
    landmarks, kind, colour, seed, image_id) always gives the same bytes. Raises MaskError when the
    landmarks cannot belong to a face that a mask fits on."""
    _check_kind(kind)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected uint8 RGB [H, W, 3], got {image.dtype} {image.shape}")
    color = tuple(int(c) for c in (PALETTES[kind][0] if color is None else color))
    frame = _face_frame(landmarks5, image.shape)
    rng = mask_rng(seed, image_id, f"apply:{kind}")
    outline = _clear_of_eyes(_outline(kind, frame, rng), frame)

    # Work only inside the box that the mask and its straps can reach.
    reach = np.array([[_MID_X - 58, 52.0], [_MID_X + 58, 52.0], [_MID_X + 58, 126.0], [_MID_X - 58, 126.0]])
    corners = transform_points(reach, frame.to_image)
    height, width = image.shape[:2]
    x0, y0 = np.clip(np.floor(corners.min(axis=0)).astype(int), 0, [width - 1, height - 1])
    x1, y1 = np.clip(np.ceil(corners.max(axis=0)).astype(int), 0, [width - 1, height - 1])
    box_shape = (y1 - y0 + 1, x1 - x0 + 1)
    grid_x, grid_y = np.meshgrid(
        np.arange(x0, x1 + 1, dtype=np.float64), np.arange(y0, y1 + 1, dtype=np.float64)
    )
    canonical = transform_points(np.stack([grid_x, grid_y], axis=-1), frame.to_canonical)
    x, y = canonical[..., 0], canonical[..., 1]

    u, t, distance = outline.coordinates(x, y)
    body = np.clip(distance * frame.px_per_unit + 0.5, 0.0, 1.0)  # one-pixel anti-aliased edge

    base = np.asarray(color, dtype=np.float32) / 255.0
    if kind == "surgical":
        front = _surgical_front(u, t, frame, color, _surgical_photo_for(color))  # the photo has its grain
    elif kind == "cloth":
        front = _cloth_pattern(x, y, color, rng) * _grain(box_shape, rng, 0.07)[..., None]
    else:
        strength = {"n95": 0.025, "kn95": 0.025, "black": 0.12}[kind]
        front = base[None, None, :] * _grain(box_shape, rng, strength)[..., None]
    shade = _shading(kind, x, y, u, t, distance, frame, rng) * _seams(kind, x, y, distance, frame)
    if kind == "n95":
        clip = _nose_clip(t, u)
        shade = shade * (1 - 0.12 * clip)
        if rng.random() < 0.4:
            # The valve sits on the side nearer the camera, as in most photos of one.
            cover, brightness = _valve(x, y, outline, 1.0 if frame.yaw < 0 else -1.0)
            shade = shade * (1 - cover) + brightness * shade * cover
    exposure = _face_exposure(image, frame)
    front = front * (shade * exposure)[..., None]
    if _is_grey(image):
        front = np.repeat(front.mean(axis=2, keepdims=True), 3, axis=2)
        base = np.full(3, base.mean(), dtype=np.float32)

    straps = _draw_straps(_strap_paths(kind, outline, frame), kind, frame, np.array([x0, y0]), box_shape)
    straps = straps * (1 - body)  # they run under the mask's edge
    strap_color = base * (0.85 if base.mean() > 0.5 else 1.2) * exposure

    # A thin contact shadow on the skin just outside the mask gives it depth.
    outside_px = np.maximum(-distance * frame.px_per_unit, 0.0)
    shadow = 0.22 * np.exp(-outside_px / (1.2 * frame.px_per_unit)) * (1 - body)

    # The mask must be exactly as sharp as the photo: an upsampled face (CelebA, LFW) under a
    # crisp mask would look pasted on. Blur the layers, not the face under them.
    sigma = _photo_softness(image, frame)
    # Luminance noise, the same in all channels, as in a JPEG photo (and grey stays grey).
    noise = rng.normal(0.0, 1.2 / 255.0, size=(*front.shape[:2], 1)).astype(np.float32)
    layers = [front * body[..., None], body, straps, shadow]
    if sigma > 0.3:
        layers = [cv2.GaussianBlur(layer, (0, 0), sigma) for layer in layers]
    front_premultiplied, body, straps, shadow = layers

    # Nothing may ever cover the eyes, whatever the landmarks did to the outline.
    eye_gap = (
        np.min([np.hypot(grid_x - ex, grid_y - ey) for ex, ey in frame.eyes], axis=0) / frame.eye_distance
    )
    guard = _smoothstep(EYE_GUARD, EYE_GUARD + 0.05, eye_gap).astype(np.float32)
    front_premultiplied = front_premultiplied * guard[..., None]
    body, straps, shadow = body * guard, straps * guard, shadow * guard

    patch = image[y0 : y1 + 1, x0 : x1 + 1].astype(np.float32) / 255.0
    patch = patch * (1 - shadow[..., None])
    patch = patch * (1 - straps[..., None]) + strap_color * straps[..., None]
    patch = patch * (1 - body[..., None]) + front_premultiplied + noise * body[..., None]

    masked = image.copy()
    masked[y0 : y1 + 1, x0 : x1 + 1] = np.clip(np.round(patch * 255.0), 0, 255).astype(np.uint8)
    region = np.zeros((height, width), dtype=bool)
    region[y0 : y1 + 1, x0 : x1 + 1] = (body + straps) >= 0.5
    return MaskResult(masked=masked, region=region, kind=kind, color=color)


# ---------------------------------------------------------------------------------------------
# Pictures for the docs: `python -m unmask_core.faces.masks docs/masks`


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    """A tile with a caption strip above it."""
    strip = np.full((22, tile.shape[1], 3), 255, dtype=np.uint8)
    cv2.putText(strip, text, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (30, 30, 30), 1, cv2.LINE_AA)
    return np.vstack([strip, tile])


def contact_sheet(faces: Sequence[tuple[np.ndarray, np.ndarray]], seed: int = 0) -> np.ndarray:
    """One row per aligned face (image, landmarks): the face, then every kind in its default
    colour."""
    rows = []
    for index, (image, landmarks) in enumerate(faces):
        tiles = [_label(image, "unmasked")]
        for kind in MASK_KINDS:
            result = apply_mask(image, landmarks, kind, seed=seed, image_id=f"sheet-{index}")
            tiles.append(_label(result.masked, kind))
        rows.append(np.hstack(tiles))
    return np.vstack(rows)


def variety_sheet(
    faces: Sequence[tuple[np.ndarray, np.ndarray]], columns: int = 6, seed: int = 0
) -> np.ndarray:
    """What training data looks like: per face, `columns` image ids, each masked with the kind
    and colour `choose_mask` gives it."""
    rows = []
    for index, (image, landmarks) in enumerate(faces):
        tiles = []
        for column in range(columns):
            image_id = f"variety-{index}-{column}"
            kind, color = choose_mask(MASK_KINDS, seed, image_id)
            result = apply_mask(image, landmarks, kind, color, seed=seed, image_id=image_id)
            tiles.append(_label(result.masked, f"{kind} {color}"))
        rows.append(np.hstack(tiles))
    return np.vstack(rows)


def _sample_faces() -> list[tuple[np.ndarray, np.ndarray]]:
    """Aligned faces from insightface's sample photos: three from the group photo (frontal,
    looking down, turned away) and Tom Hanks."""
    from unmask_core.faces.align import align_face
    from unmask_core.faces.detect import MTCNNDetector

    detector = MTCNNDetector()
    group = load_rgb(sample_photo("t1.jpg"))
    # Upscale the 112 px crop and give MTCNN a margin: it misses faces that fill the frame.
    portrait = load_rgb(sample_photo("Tom_Hanks_54745.png"))
    portrait = cv2.copyMakeBorder(
        cv2.resize(portrait, (224, 224), interpolation=cv2.INTER_CUBIC),
        112,
        112,
        112,
        112,
        cv2.BORDER_CONSTANT,
    )
    group_faces = detector.detect(group)
    chosen = [(group, group_faces[i]) for i in (0, 1, 2)] + [(portrait, detector.detect(portrait)[0])]
    faces = []
    for photo, face in chosen:
        aligned, matrix = align_face(photo, face.landmarks)
        faces.append((aligned, transform_points(face.landmarks, matrix)))
    return faces


def main(argv: Sequence[str] | None = None) -> None:
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(description="Draw the mask contact sheets for the docs.")
    parser.add_argument("out_dir", nargs="?", default="docs/masks")
    args = parser.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    faces = _sample_faces()
    for name, sheet in (("kinds.png", contact_sheet(faces)), ("variety.png", variety_sheet(faces))):
        cv2.imwrite(str(out / name), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
        print(out / name)


if __name__ == "__main__":
    main()
