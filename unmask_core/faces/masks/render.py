"""Putting a mask on a photo: its straps, the photo's exposure and sharpness, and the compositing
of front, straps and contact shadow, never over the eyes."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from unmask_core.faces.align import transform_points
from unmask_core.faces.masks.geometry import (
    EYE_GUARD,
    MID_X,
    FaceFrame,
    Outline,
    eye_gap,
    face_frame,
    jaw_fit,
    place_outline,
)
from unmask_core.faces.masks.materials import Surface, mask_front, smoothstep
from unmask_core.faces.masks.styles import Color, Straps, mask_rng, style_of

FITS = ("five_point", "dlib68")


@dataclass(frozen=True, eq=False)
class MaskResult:
    masked: np.ndarray  # uint8 [H, W, 3]
    region: np.ndarray  # bool [H, W]: pixels the mask or its straps cover (coverage >= 0.5)
    kind: str
    color: Color


def apply_mask(
    image: np.ndarray,
    landmarks5: np.ndarray,
    kind: str,
    color: Color | None = None,
    seed: int = 0,
    image_id: str = "",
    fit: str = "five_point",
    landmarks68: np.ndarray | None = None,
) -> MaskResult:
    """Draw a `kind` mask on a face. `color` None takes the kind's default; the same (image,
    landmarks, kind, colour, seed, image_id, fit) always gives the same bytes. Raises MaskError when
    the landmarks cannot belong to a face that a mask fits on.

    `fit` "five_point" places the mask from the 5 landmarks alone; "dlib68" also moves its sides,
    top and bottom to the face's jaw line, nose bridge and chin in `landmarks68` (dlib's 68 points,
    `unmask_core.faces.dlib_models.landmarks68`)."""
    style = style_of(kind)
    if fit not in FITS:
        raise ValueError(f"unknown mask fit {fit!r}; expected one of {', '.join(FITS)}")
    if (fit == "dlib68") != (landmarks68 is not None):
        raise ValueError("landmarks68 are given with fit='dlib68', and only then")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected uint8 RGB [H, W, 3], got {image.dtype} {image.shape}")
    color = tuple(int(c) for c in (style.colors[0] if color is None else color))
    frame = face_frame(landmarks5, image.shape)
    jaw = jaw_fit(landmarks68, frame) if landmarks68 is not None else None
    rng = mask_rng(seed, image_id, f"apply:{kind}")
    outline = place_outline(style.outline, frame, rng, jaw)

    # Work only inside the box that the mask and its straps can reach.
    reach = np.array([[MID_X - 58, 52.0], [MID_X + 58, 52.0], [MID_X + 58, 126.0], [MID_X - 58, 126.0]])
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

    surface = Surface(x=x, y=y, u=u, t=t, distance=distance, frame=frame, outline=outline)
    exposure = _face_exposure(image, frame)
    front = mask_front(style, surface, color, exposure, rng)
    base = np.asarray(color, dtype=np.float32) / 255.0
    if _is_grey(image):
        front = np.repeat(front.mean(axis=2, keepdims=True), 3, axis=2)
        base = np.full(3, base.mean(), dtype=np.float32)

    paths = _strap_paths(style.straps, outline, frame)
    straps = _draw_straps(paths, style.straps.width, frame, np.array([x0, y0]), box_shape)
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
    eye_distances = (
        np.min([np.hypot(grid_x - ex, grid_y - ey) for ex, ey in frame.eyes], axis=0) / frame.eye_distance
    )
    guard = smoothstep(EYE_GUARD, EYE_GUARD + 0.05, eye_distances).astype(np.float32)
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


def _strap_paths(straps: Straps, outline: Outline, frame: FaceFrame) -> list[np.ndarray]:
    """Canonical polylines of the visible straps, each from a corner of the mask to the side of
    the head. The strap on the far side of a turned face is hidden."""
    paths = []
    for side in (-1.0, 1.0):
        # The far side is where the nose points: its ear is behind the face.
        if side * frame.yaw > 0.12:
            continue
        u = np.array([side * 0.96])
        half = outline.half_width_left if side < 0 else outline.half_width_right
        corner_x = outline.centre_x + side * half * 0.97
        top_y = float(outline.top_edge(u)[0]) + 1.5
        bottom_y = float(outline.bottom_edge(u)[0]) - 2.5
        ear_x = MID_X + side * 46.0
        for strap in straps.straps:
            start = np.array([corner_x, (top_y if strap.from_top else bottom_y) + strap.start_drop])
            end = np.array([ear_x + side * strap.end_out, strap.end_y])
            if side * (end[0] - start[0]) < 2.0:  # no room between the mask and the ear
                continue
            bend = np.array([0.0, -1.5])  # elastic pulls a shallow arc over the cheek
            steps = np.linspace(0, 1, 16)[:, None]
            middle = (start + end) / 2 + bend
            paths.append((1 - steps) ** 2 * start + 2 * (1 - steps) * steps * middle + steps**2 * end)
    return paths


def _draw_straps(
    paths: list[np.ndarray], width_units: float, frame: FaceFrame, offset: np.ndarray, shape: tuple[int, int]
) -> np.ndarray:
    """Strap coverage in [0, 1] over the working box, anti-aliased; straps that would leave the
    image or pass near an eye are left out."""
    supersample = 4
    height, width = shape
    canvas = np.zeros((height * supersample, width * supersample), dtype=np.uint8)
    thickness = max(1, int(round(width_units * frame.px_per_unit * supersample)))
    for path in paths:
        points = transform_points(path, frame.to_image)
        if eye_gap(points, frame) < EYE_GUARD + 0.1:
            continue
        local = points - offset
        if (local < 0).any() or (local[:, 0] > width - 1).any() or (local[:, 1] > height - 1).any():
            continue
        fixed = np.round((local + 0.5) * supersample - 0.5).astype(np.int32)
        cv2.polylines(canvas, [fixed], False, 255, thickness, cv2.LINE_AA)
    # Drawing 4x larger and averaging down gives sub-pixel widths and positions.
    return cv2.resize(canvas, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def _face_exposure(image: np.ndarray, frame: FaceFrame) -> float:
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


def _photo_softness(image: np.ndarray, frame: FaceFrame) -> float:
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
