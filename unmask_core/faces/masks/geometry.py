"""Where a mask sits: the face frame fitted to 5 landmarks, the mask's outline in that frame, and
the clearance it keeps from the eyes.

Outlines are drawn in the ArcFace 112 px frame ("canonical units"), where the average face's
landmarks are known (`ARCFACE_TEMPLATE_112`), and carried onto the photo by the affine map that
best takes that template onto the face's own 5 landmarks. With dlib's 68 landmarks as well
(`jaw_fit`), the outline's sides, top and bottom also follow the face's own jaw line, nose bridge
and chin, as MaskTheFace places its masks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import cv2
import numpy as np

from unmask_core.faces.align import ARCFACE_TEMPLATE_112, transform_points

# The ArcFace frame's face midline (canonical units = 112 px frame pixels).
MID_X = float(ARCFACE_TEMPLATE_112[[0, 1, 3, 4], 0].mean())
# No mask pixel within this fraction of the eye distance from an eye landmark, whatever the
# geometry: a mask over the eyes would hide what the unmasking model must keep.
EYE_GUARD = 0.3

# y of an outline edge (canonical units) as a function of u (-1 .. 1 across the mask) and the
# image's jitter: lift moves the top edge, drop the bottom edge.
Edge = Callable[[np.ndarray, float, float], np.ndarray]


class MaskError(ValueError):
    """Landmarks on which no plausible mask can be drawn; `reason` is a short word for reports."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class FaceFrame:
    to_image: np.ndarray  # 2x3, canonical (ArcFace 112 frame) -> image pixels
    to_canonical: np.ndarray  # 2x3, the inverse
    px_per_unit: float
    nose_x: float  # the nose tip's x in the canonical frame: the mask's centre line
    yaw: float  # nose offset along the eye line / eye distance; > 0: nose towards viewer's right
    eyes: np.ndarray  # [2, 2] image pixels
    eye_distance: float  # image pixels


def face_frame(landmarks5: np.ndarray, image_shape: tuple[int, ...]) -> FaceFrame:
    """The face frame of 5 landmarks (eyes, nose tip, mouth corners) in an image of this shape;
    MaskError when they cannot belong to a face that a frontal mask fits on."""
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
    return FaceFrame(
        to_image=to_image,
        to_canonical=to_canonical,
        px_per_unit=float(np.sqrt(np.linalg.det(to_image[:, :2]))),
        nose_x=float(np.clip(nose_canonical[0], MID_X - 8, MID_X + 8)),
        yaw=yaw,
        eyes=points[:2],
        eye_distance=eye_distance,
    )


@dataclass(frozen=True)
class OutlineShape:
    """A kind's outline before the per-image jitter. Its half-widths are `width` times the
    distance from the nose line to the cheek edges, and shrink by the factor `narrowing` between
    the heights `narrowing_range` (towards the chin)."""

    top: Edge
    bottom: Edge
    narrowing: float
    narrowing_range: tuple[float, float]
    width: float = 1.0


@dataclass(frozen=True)
class Outline:
    """A mask's front in the canonical frame. Across the face, u runs from -1 (viewer's left edge)
    through 0 (the nose line) to 1; the half-widths may differ left/right (the nose follows yaw)
    and narrow towards the chin. Down the face, t runs from 0 (top edge) to 1 (bottom edge)."""

    shape: OutlineShape
    centre_x: float
    half_width_left: float
    half_width_right: float
    lift: float
    drop: float
    top_shift: float = 0.0  # lowers the top edge on faces whose eyes sit close to it

    def top_edge(self, u: np.ndarray) -> np.ndarray:
        return self.shape.top(u, self.lift, self.drop) + self.top_shift

    def bottom_edge(self, u: np.ndarray) -> np.ndarray:
        return self.shape.bottom(u, self.lift, self.drop)

    def half_width(self, y: np.ndarray, left: np.ndarray) -> np.ndarray:
        base = np.where(left, self.half_width_left, self.half_width_right)
        y0, y1 = self.shape.narrowing_range
        fraction = np.clip((y - y0) / (y1 - y0), 0.0, 1.0)
        return base * (1.0 + (self.shape.narrowing - 1.0) * fraction)

    def coordinates(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(u, t, signed distance to the outline in canonical units, > 0 inside)."""
        left = x < self.centre_x
        half = self.half_width(y, left)
        u = (x - self.centre_x) / half
        uc = np.clip(u, -1.0, 1.0)
        top, bottom = self.top_edge(uc), self.bottom_edge(uc)
        t = (y - top) / np.maximum(bottom - top, 1e-6)
        # Vertical gaps to the edges, divided by the edge's slope factor, approximate the true
        # distances well enough to anti-alias on.
        eps = 1e-3
        slope_top = (self.top_edge(np.clip(uc + eps, -1, 1)) - self.top_edge(np.clip(uc - eps, -1, 1))) / (
            2 * eps * half
        )
        slope_bottom = (
            self.bottom_edge(np.clip(uc + eps, -1, 1)) - self.bottom_edge(np.clip(uc - eps, -1, 1))
        ) / (2 * eps * half)
        to_top = (y - top) / np.sqrt(1 + slope_top**2)
        to_bottom = (bottom - y) / np.sqrt(1 + slope_bottom**2)
        to_side = (1.0 - np.abs(u)) * half
        return u, t, np.minimum(np.minimum(to_top, to_bottom), to_side)


# The average face's jaw line (its x at the height _JAW_Y on each side), chin (dlib point 8) and
# nose bridge (point 28) in the ArcFace 112 px frame: dlib's 68-point model on insightface's five
# near-frontal sample faces, each in its 5-point frame. The outlines were drawn for this face.
_JAW_Y = 80.0
_AVERAGE_JAW = (23.0, 91.0)
_AVERAGE_CHIN = 122.5
_AVERAGE_BRIDGE = 59.5
# Further than this (canonical units) from the average, the 68 landmarks disagree with the 5. A
# face turned by the most `face_frame` allows moves its visible jaw line by up to about 40.
_JAW_FIT_LIMIT = 45.0
# The narrowest half of a mask, canonical units (the average face's is 39).
_MIN_HALF_WIDTH = 12.0


@dataclass(frozen=True)
class JawFit:
    """How far this face's jaw line, nose bridge and chin lie from the average face's, in canonical
    units (> 0: to the viewer's right, or lower); the outline moves with them."""

    left: float
    right: float
    bridge: float
    chin: float


def jaw_fit(landmarks68: np.ndarray, frame: FaceFrame) -> JawFit:
    """The jaw fit of dlib's 68 landmarks (iBUG 300-W order) on the face of `frame`."""
    points = np.asarray(landmarks68, dtype=np.float64)
    if points.shape != (68, 2):
        raise MaskError("bad_shape", f"68 landmarks must be [68, 2], got {points.shape}")
    if not np.isfinite(points).all():
        raise MaskError("non_finite", "68 landmarks contain NaN or inf")
    canonical = transform_points(points, frame.to_canonical)
    # Jaw points 0-8 run down the viewer's left side to the chin, 8-16 back up the right side.
    left, right = canonical[0:9], canonical[8:17][::-1]
    if not (np.diff(left[:, 1]) > 0).any() or not (np.diff(right[:, 1]) > 0).any():
        raise MaskError("implausible", "the jaw line does not run down the face")
    left, right = left[np.argsort(left[:, 1])], right[np.argsort(right[:, 1])]
    fit = JawFit(
        left=float(np.interp(_JAW_Y, left[:, 1], left[:, 0])) - _AVERAGE_JAW[0],
        right=float(np.interp(_JAW_Y, right[:, 1], right[:, 0])) - _AVERAGE_JAW[1],
        bridge=float(canonical[28, 1]) - _AVERAGE_BRIDGE,
        chin=float(canonical[8, 1]) - _AVERAGE_CHIN,
    )
    if max(abs(fit.left), abs(fit.right), abs(fit.bridge), abs(fit.chin)) > _JAW_FIT_LIMIT:
        raise MaskError("implausible", f"68 landmarks far from the 5-point face: {fit}")
    left_half = frame.nose_x - (MID_X - 39.0 + fit.left)
    right_half = MID_X + 39.0 + fit.right - frame.nose_x
    if min(left_half, right_half) < _MIN_HALF_WIDTH:
        raise MaskError("implausible", f"the jaw line runs within {_MIN_HALF_WIDTH} units of the nose")
    return fit


def place_outline(
    shape: OutlineShape, frame: FaceFrame, rng: np.random.Generator, jaw: JawFit | None = None
) -> Outline:
    """The outline on this face, jittered a little per image so that not every mask sits
    identically, moved with the face's jaw line, nose bridge and chin when `jaw` is given, and
    lowered where it would come too close to the eyes."""
    jitter = rng.uniform(-1.0, 1.0, size=3)
    grow = 1.0 + 0.03 * jitter[0]
    lift = 1.2 * jitter[1]
    drop = 2.0 * jitter[2]
    # The face's cheek edges stay put while the centre line follows the nose.
    face_left, face_right = MID_X - 39.0 * grow, MID_X + 39.0 * grow
    if jaw is not None:
        face_left, face_right = face_left + jaw.left, face_right + jaw.right
        lift, drop = lift + jaw.bridge, drop + jaw.chin
    outline = Outline(
        shape,
        centre_x=frame.nose_x,
        half_width_left=(frame.nose_x - face_left) * shape.width,
        half_width_right=(face_right - frame.nose_x) * shape.width,
        lift=lift,
        drop=drop,
    )
    return _clear_of_eyes(outline, frame)


def _clear_of_eyes(outline: Outline, frame: FaceFrame) -> Outline:
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
        if eye_gap(points, frame) >= EYE_GUARD + 0.05:
            return lowered
    return lowered


def eye_gap(points: np.ndarray, frame: FaceFrame) -> float:
    """The smallest distance from any of these image points [N, 2] to an eye, in eye distances."""
    return float(
        np.min(np.hypot(*(points[:, None, :] - frame.eyes[None]).transpose(2, 0, 1))) / frame.eye_distance
    )
