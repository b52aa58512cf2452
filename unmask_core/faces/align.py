"""Face alignment: pure functions from an image (uint8 RGB [H, W, 3]) to an aligned crop.

Three alignments, one per corpus family (METHOD.md, "Data"):
- `align_face`: 5 landmarks -> FFHQ framing by a similarity transform (FFHQ, CelebA, our own uploads).
- `lfw_crop`: LFW deep-funneled 250 px images: central 150x150, resized to 256.
- `rmfrd_align`: RMFRD real-mask faces, which no landmark detector handles reliably: OpenCV Haar
  cascades find the face and both eyes, the eyes are levelled and put where FFHQ framing has them.

Landmark order everywhere: left eye, right eye, nose tip, mouth left, mouth right, "left" meaning
the viewer's left (insightface / ArcFace order).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

#: ArcFace's 112x112 five-point template (insightface `arcface_dst`), the de-facto standard.
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ]
)


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to points [..., 2]."""
    points = np.asarray(points, dtype=np.float64)
    matrix = np.asarray(matrix, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def similarity_fit(source: np.ndarray, target: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping
    `source` onto `target`, as a 2x3 matrix. Weighted Umeyama (1991): closed form, deterministic."""
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    w = np.ones(len(source)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    mean_s = w @ source
    mean_t = w @ target
    centred_s = source - mean_s
    centred_t = target - mean_t
    covariance = (centred_t * w[:, None]).T @ centred_s
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1] = -1.0  # the best orthogonal map would mirror the face; take the best rotation
    rotation = u @ np.diag(sign) @ vt
    variance_s = w @ (centred_s**2).sum(axis=1)
    scale = (singular * sign).sum() / variance_s
    translation = mean_t - scale * rotation @ mean_s
    return np.hstack([scale * rotation, translation[:, None]])


def ffhq_quad(landmarks5: np.ndarray) -> np.ndarray:
    """FFHQ's crop square for a face, as its 4 corners (top-left, bottom-left, bottom-right,
    top-right).

    This is the recipe FFHQ was made with (Karras et al., `align_images` in the FFHQ dataset tool),
    restated for 5 landmarks: it only ever used the two eye centres and the two mouth corners,
    which is exactly what 5-point landmarks give. With e = eye midpoint, m = mouth midpoint:
    - the crop's x axis is the eye-to-eye vector plus the eye-to-mouth vector turned a quarter
      turn to point left-to-right as well (so both roll cues count);
    - its half-size is max(2 x eye distance, 1.8 x eye-to-mouth distance);
    - its centre sits 0.1 of the way from e towards m.
    """
    points = np.asarray(landmarks5, dtype=np.float64)
    eye_avg = (points[0] + points[1]) / 2
    mouth_avg = (points[3] + points[4]) / 2
    eye_to_eye = points[1] - points[0]
    eye_to_mouth = mouth_avg - eye_avg
    x_axis = eye_to_eye + np.array([eye_to_mouth[1], -eye_to_mouth[0]])
    x_axis = x_axis / np.hypot(*x_axis)
    x_axis = x_axis * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y_axis = np.array([-x_axis[1], x_axis[0]])
    centre = eye_avg + eye_to_mouth * 0.1
    return np.stack(
        [
            centre - x_axis - y_axis,
            centre - x_axis + y_axis,
            centre + x_axis + y_axis,
            centre + x_axis - y_axis,
        ]
    )


def _ffhq_template(size: int) -> np.ndarray:
    """Where FFHQ framing puts the ArcFace template's landmarks in a size x size crop: run FFHQ's
    recipe on the (average-face) ArcFace template and map its crop square onto the output."""
    square = np.array([[0, 0], [0, size], [size, size], [size, 0]], dtype=np.float64)
    return transform_points(ARCFACE_TEMPLATE_112, similarity_fit(ffhq_quad(ARCFACE_TEMPLATE_112), square))


#: The five landmarks of an average face in a 256 px FFHQ-aligned crop (see `ffhq_quad`):
#: about [[97.21, 120.89], [158.79, 120.89], [128.00, 156.09], [102.50, 192.00], [153.50, 192.00]].
#: Eyes 61.6 px apart at y = 120.9, mouth corners at y = 192: the ArcFace frame scaled by 1.748
#: (and turned 0.3 degrees to level its slightly tilted eyes). pSp's ArcFace crop of such images
#: (rows 35:223, cols 32:220) is, as it should be, close to where the 112 px ArcFace frame lands
#: (rows and cols about 30:227).
FFHQ_TEMPLATE_256 = _ffhq_template(256)
FFHQ_TEMPLATE_256.setflags(write=False)

#: Landmarks that drive the fit. FFHQ's recipe ignores the nose, and so do we: it is the point
#: that moves most with yaw, and weighting it pulls eyes and mouth off their template positions.
FIT_WEIGHTS = np.array([1.0, 1.0, 0.0, 1.0, 1.0])


class AlignmentError(ValueError):
    """A face that cannot be aligned; `reason` is a short machine-readable word for reports
    (e.g. 'no_face', 'no_eyes', 'one_eye', 'degenerate')."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _check_landmarks(landmarks5: np.ndarray) -> np.ndarray:
    points = np.asarray(landmarks5, dtype=np.float64)
    if points.shape != (5, 2):
        raise AlignmentError("bad_shape", f"landmarks must be [5, 2], got {points.shape}")
    if not np.isfinite(points).all():
        raise AlignmentError("non_finite", "landmarks contain NaN or inf")
    eye_to_eye = points[1] - points[0]
    eye_to_mouth = (points[3] + points[4]) / 2 - (points[0] + points[1]) / 2
    # Below 2 px between the eyes there is no face to speak of, and the fit's scale blows up.
    if np.hypot(*eye_to_eye) < 2.0 or np.hypot(*eye_to_mouth) < 2.0:
        raise AlignmentError("degenerate", "eyes or eyes and mouth (nearly) coincide")
    # Image y points down: on a real face, turning eye->eye by +90 degrees points at the mouth.
    # The opposite sign means the points are mirrored (eyes swapped), which no rotation can fix.
    if eye_to_eye[0] * eye_to_mouth[1] - eye_to_eye[1] * eye_to_mouth[0] <= 0:
        raise AlignmentError("mirrored", "left/right landmarks are swapped or the mouth is above the eyes")
    return points


def template(size: int = 256) -> np.ndarray:
    """FFHQ-framed 5-point template for a size x size crop."""
    return FFHQ_TEMPLATE_256 * (size / 256.0)


def align_face(image: np.ndarray, landmarks5: np.ndarray, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Crop a face in FFHQ framing: the similarity transform that best puts its eyes and mouth
    corners on `template(size)`. Returns (aligned uint8 [size, size, 3], 2x3 matrix from image to
    aligned coordinates). Pixels from outside the photo are mirrored in, as FFHQ did, so the
    generator never sees black corners it was not trained on."""
    points = _check_landmarks(landmarks5)
    matrix = similarity_fit(points, template(size), FIT_WEIGHTS)
    return warp_similarity(image, matrix, size), matrix


def warp_similarity(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """`image` warped by a 2x3 similarity into a size x size crop, borders mirrored in.

    warpAffine samples without low-pass filtering, so a face shrunk by more than ~1.5x aliases
    (moire in hair and fabric). Shrinking the whole photo with INTER_AREA first, then warping
    at about 1:1, avoids that."""
    image = np.ascontiguousarray(image)
    scale = float(np.sqrt(abs(np.linalg.det(np.asarray(matrix)[:, :2]))))
    warp = np.asarray(matrix, dtype=np.float64)
    if scale < 1.0:
        height, width = image.shape[:2]
        small_w, small_h = max(1, round(width * scale)), max(1, round(height * scale))
        image = cv2.resize(image, (small_w, small_h), interpolation=cv2.INTER_AREA)
        sx, sy = width / small_w, height / small_h
        # Small-image pixel centres in original pixels (OpenCV's half-pixel convention).
        small_to_original = np.array([[sx, 0.0, 0.5 * (sx - 1)], [0.0, sy, 0.5 * (sy - 1)], [0.0, 0.0, 1.0]])
        warp = warp @ small_to_original
    return cv2.warpAffine(image, warp, (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT_101)


def lfw_crop(image: np.ndarray, size: int = 256) -> np.ndarray:
    """LFW deep-funneled preprocessing: the central 150x150 of the 250x250 image, resized to
    `size`. Other input sizes keep the same 0.6 fraction, so a rescaled LFW copy crops alike."""
    height, width = image.shape[:2]
    crop_h, crop_w = round(height * 150 / 250), round(width * 150 / 250)
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    crop = np.ascontiguousarray(image[top : top + crop_h, left : left + crop_w])
    interpolation = cv2.INTER_CUBIC if crop_w < size else cv2.INTER_AREA
    return cv2.resize(crop, (size, size), interpolation=interpolation)


@dataclass(frozen=True)
class RMFRDAlignment:
    """An RMFRD face with its eyes levelled. `eyes` [2, 2]: left then right eye in output pixels;
    `matrix`: 2x3 from input to output coordinates; `eyes_in_image`: the eyes the cascades found."""

    aligned: np.ndarray
    eyes: np.ndarray
    matrix: np.ndarray
    eyes_in_image: np.ndarray


# Haar cascades are frontal and upright; turning the photo lets them find rolled faces too.
_FACE_SEARCH_ANGLES = (0.0, -20.0, 20.0, -40.0, 40.0)
# Eyes are searched in a face box resized to this width, where OpenCV's eye cascades work best.
_FACE_WORK_WIDTH = 200


@lru_cache(maxsize=1)
def _cascades() -> dict[str, cv2.CascadeClassifier]:
    names = {
        "face": "haarcascade_frontalface_default.xml",
        "face_alt": "haarcascade_frontalface_alt2.xml",
        "eye": "haarcascade_eye.xml",
        "eye_glasses": "haarcascade_eye_tree_eyeglasses.xml",
        "eye_split_left": "haarcascade_lefteye_2splits.xml",
        "eye_split_right": "haarcascade_righteye_2splits.xml",
    }
    loaded = {}
    for key, name in names.items():
        cascade = cv2.CascadeClassifier(cv2.data.haarcascades + name)
        if cascade.empty():
            raise RuntimeError(f"OpenCV ships no {name} (opencv 5 dropped the Haar cascades; use 4.x)")
        loaded[key] = cascade
    return loaded


def _rotated(gray: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """The image turned by `angle` degrees on a canvas big enough to hold it, and the 2x3 map."""
    height, width = gray.shape
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
    cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
    new_w, new_h = int(round(height * sin + width * cos)), int(round(height * cos + width * sin))
    matrix[0, 2] += new_w / 2 - width / 2
    matrix[1, 2] += new_h / 2 - height / 2
    turned = cv2.warpAffine(gray, matrix, (new_w, new_h), borderMode=cv2.BORDER_REPLICATE)
    return turned, matrix


def _find_face(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The largest Haar face over a few roll angles: (turned image, its face box (x, y, w, h),
    2x3 map from the image to the turned one)."""
    cascades = _cascades()
    min_side = max(24, min(gray.shape) // 8)
    for angle in _FACE_SEARCH_ANGLES:
        turned, matrix = _rotated(gray, angle) if angle else (gray, np.eye(2, 3))
        for key in ("face", "face_alt"):
            faces = cascades[key].detectMultiScale(turned, 1.1, 5, minSize=(min_side, min_side))
            if len(faces):
                box = max(faces, key=lambda f: f[2] * f[3])
                return turned, np.asarray(box, dtype=np.float64), np.asarray(matrix, dtype=np.float64)
    raise AlignmentError("no_face", "no Haar face at any tried roll angle")


def _eye_candidates(face_gray: np.ndarray) -> np.ndarray:
    """Eye detections of all four eye cascades in the upper face, as rows (x, y, size)."""
    cascades = _cascades()
    upper = face_gray[: int(face_gray.shape[0] * 0.6)]
    w = face_gray.shape[1]
    found = []
    for key in ("eye", "eye_glasses", "eye_split_left", "eye_split_right"):
        boxes = cascades[key].detectMultiScale(
            upper, 1.05, 3, minSize=(w // 10, w // 10), maxSize=(w // 2, w // 2)
        )
        found.extend((x + bw / 2, y + bh / 2, bw) for x, y, bw, bh in boxes)
    return np.asarray(found, dtype=np.float64).reshape(-1, 3)


def _merge_candidates(candidates: np.ndarray) -> list[tuple[np.ndarray, int]]:
    """Group detections of the same eye (centres within a third of their size); each group's
    centre is the mean, its vote the number of cascades and scales that agreed."""
    groups: list[list[np.ndarray]] = []
    for candidate in candidates[np.argsort(-candidates[:, 2])]:
        for group in groups:
            centre = np.mean([g[:2] for g in group], axis=0)
            if np.hypot(*(candidate[:2] - centre)) < max(candidate[2], group[0][2]) / 3:
                group.append(candidate)
                break
        else:
            groups.append([candidate])
    return [(np.mean([g[:2] for g in group], axis=0), len(group)) for group in groups]


def _pick_eye_pair(face_gray: np.ndarray) -> np.ndarray:
    """The most plausible (left, right) eye pair in face-box pixels, or AlignmentError."""
    width = face_gray.shape[1]
    groups = _merge_candidates(_eye_candidates(face_gray))
    if not groups:
        raise AlignmentError("no_eyes", "no eye found in the face")
    best, best_score = None, -np.inf
    for left, left_votes in groups:
        for right, right_votes in groups:
            dx, dy = right - left
            # An upright face box holds its eyes 25-70% of its width apart, roughly level, one
            # each side of the middle; a detection outside that is an eyebrow, nostril or frame.
            if not (0.25 * width <= dx <= 0.7 * width and abs(dy) <= 0.2 * width):
                continue
            if not (left[0] < 0.55 * width and right[0] > 0.45 * width):
                continue
            score = left_votes + right_votes - 10 * abs(dy) / width
            if score > best_score:
                best, best_score = np.stack([left, right]), score
    if best is None:
        raise AlignmentError("one_eye", "eyes found, but no left/right pair")
    return best


def rmfrd_align(image: np.ndarray, size: int = 256) -> RMFRDAlignment:
    """RMFRD preprocessing (METHOD.md): keep a face only when OpenCV finds both eyes; rotate so the
    eyes are level and scale so they sit where FFHQ framing puts them, then crop `size` px.
    Raises AlignmentError with reason 'no_face', 'no_eyes' or 'one_eye'."""
    gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    turned, box, turn = _find_face(gray)
    x, y, w, h = box
    face = turned[int(y) : int(y + h), int(x) : int(x + w)]
    scale = _FACE_WORK_WIDTH / face.shape[1]
    face = cv2.resize(face, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    # Local contrast equalisation: RMFRD photos are small, dim and low in contrast.
    face = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(face)
    eyes_turned = _pick_eye_pair(face) / scale + np.array([x, y])
    back = cv2.invertAffineTransform(turn)
    eyes_in_image = transform_points(eyes_turned, back)
    level = template(size)[:2].copy()
    level[:, 1] = level[:, 1].mean()  # FFHQ framing's eyes, made exactly level
    matrix = similarity_fit(eyes_in_image, level)
    return RMFRDAlignment(
        aligned=warp_similarity(image, matrix, size),
        eyes=transform_points(eyes_in_image, matrix),
        matrix=matrix,
        eyes_in_image=eyes_in_image,
    )


# ---------------------------------------------------------------- the same warp on an accelerator


def _pixel_to_grid(width: int, height: int) -> np.ndarray:
    """3x3 map from pixel coordinates (centres at integers, as OpenCV) to grid_sample's [-1, 1]
    coordinates with align_corners=False."""
    return np.array(
        [[2.0 / width, 0.0, 1.0 / width - 1.0], [0.0, 2.0 / height, 1.0 / height - 1.0], [0, 0, 1]]
    )


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of OpenCV's INTER_AREA shrink along one axis: each output pixel averages the
    input span it covers, partly covered pixels by their covered fraction (torch's "area" mode rounds
    the spans to whole pixels, a visible difference on sharp edges)."""
    step = n_in / n_out
    starts = np.arange(n_out)[:, None] * step
    pixels = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(pixels + 1, starts + step) - np.maximum(pixels, starts), 0, None)
    return overlap / step


def _reflect_101(grid, width: int, height: int):
    """Sampling positions (grid_sample's [-1, 1], align_corners=False) mirrored into the image about its
    edge pixels' centres, as OpenCV's BORDER_REFLECT_101 (grid_sample's "reflection" mirrors about the
    outer edge, one pixel off, which shows where a face's crop reaches past its photo)."""
    import torch

    sizes = torch.tensor([width, height], dtype=grid.dtype, device=grid.device)
    pixels = ((grid + 1) * sizes - 1) / 2
    period = 2 * (sizes - 1).clamp(min=1)
    pixels = torch.remainder(pixels, period)
    pixels = torch.where(pixels > sizes - 1, period - pixels, pixels)
    return (2 * pixels + 1) / sizes - 1


def warp_similarity_torch(image, matrices: np.ndarray, size: int):
    """`warp_similarity` for K faces of one image on its device (torch): image float [3, H, W] (0..255),
    matrices [K, 2, 3] from image to aligned pixels -> float [K, 3, size, size].

    The same transform and filters as the CPU path: bicubic (a = -0.75, as OpenCV), an area shrink of the
    photo first where a face is shrunk, borders mirrored in about the edge pixels (REFLECT_101)."""
    import torch
    import torch.nn.functional as F

    matrices = np.asarray(matrices, dtype=np.float64).reshape(-1, 2, 3)
    height, width = image.shape[-2:]
    output_to_grid = np.linalg.inv(_pixel_to_grid(size, size))
    crops = []
    for matrix in matrices:
        source, warp = image, np.vstack([matrix, [0, 0, 1]])
        scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
        if scale < 1.0:
            small_w, small_h = max(1, round(width * scale)), max(1, round(height * scale))
            rows = torch.as_tensor(_area_weights(height, small_h), dtype=image.dtype, device=image.device)
            cols = torch.as_tensor(_area_weights(width, small_w), dtype=image.dtype, device=image.device)
            source = rows @ image @ cols.T
            sx, sy = width / small_w, height / small_h
            warp = warp @ np.array([[sx, 0.0, 0.5 * (sx - 1)], [0.0, sy, 0.5 * (sy - 1)], [0.0, 0.0, 1.0]])
        src_h, src_w = source.shape[-2:]
        theta = _pixel_to_grid(src_w, src_h) @ np.linalg.inv(warp) @ output_to_grid
        theta = torch.as_tensor(theta[:2], dtype=torch.float32, device=image.device)[None]
        grid = _reflect_101(F.affine_grid(theta, [1, 3, size, size], align_corners=False), src_w, src_h)
        crops.append(
            F.grid_sample(source[None], grid, mode="bicubic", padding_mode="border", align_corners=False)
        )
    return torch.cat(crops).clamp(0, 255) if crops else image.new_zeros((0, 3, size, size))


def align_faces_torch(image, landmarks: list[np.ndarray], size: int = 256):
    """`align_face` for K faces of one image (float [3, H, W] on any device): (float [K, 3, size, size],
    the K 2x3 matrices). The fit is a 5-point closed form on the host; only pixels touch the device."""
    matrices = (
        np.stack(
            [similarity_fit(_check_landmarks(points), template(size), FIT_WEIGHTS) for points in landmarks]
        )
        if landmarks
        else np.zeros((0, 2, 3))
    )
    return warp_similarity_torch(image, matrices, size), matrices
