"""Faces of the shipped sample photos as the face tests share them: their MTCNN landmarks, the padded
portrait MTCNN can find, and geometry on landmarks (what a region covers, distance to the eyes)."""

from __future__ import annotations

import cv2
import numpy as np

from unmask_core.faces.samples import load_rgb, sample_photo

# The margin around each eye that no mask pixel may enter, in eye distances (18 px at 256).
EYE_MARGIN = 0.3


# MTCNN's landmarks (0.1 px) for every face in insightface's sample photos, Tom Hanks on his
# padded canvas (`padded_portrait`). test_faces_detect_align checks that the detector still
# finds exactly these, so the mask tests need neither torch nor a detector.
SAMPLE_LANDMARKS = {
    "t1": [
        [[492.8, 319.0], [543.4, 331.6], [510.6, 362.9], [482.5, 369.6], [529.9, 380.5]],
        [[84.1, 330.3], [128.1, 303.5], [118.4, 337.7], [114.5, 373.2], [149.7, 349.0]],
        [[919.2, 119.1], [954.6, 112.0], [926.2, 151.1], [933.2, 176.5], [961.5, 170.0]],
        [[292.5, 209.1], [323.1, 187.4], [311.4, 224.2], [315.1, 244.3], [344.2, 228.2]],
        [[761.2, 397.2], [803.4, 401.4], [773.6, 431.8], [761.6, 439.0], [808.7, 442.4]],
        [[1150.1, 326.3], [1193.7, 324.6], [1164.1, 349.5], [1155.3, 367.6], [1196.5, 365.4]],
    ],
    "tom_hanks": [[[184.3, 213.3], [258.9, 211.1], [236.8, 266.4], [183.4, 296.2], [245.4, 293.0]]],
}


def padded_portrait() -> np.ndarray:
    """Tom Hanks' 112 px ArcFace crop, doubled and given a margin: MTCNN misses a face that fills
    a tiny frame."""
    portrait = load_rgb(sample_photo("Tom_Hanks_54745.png"))
    portrait = cv2.resize(portrait, (224, 224), interpolation=cv2.INTER_CUBIC)
    return cv2.copyMakeBorder(portrait, 112, 112, 112, 112, cv2.BORDER_CONSTANT)


def sample_photos() -> dict[str, np.ndarray]:
    return {"t1": load_rgb(sample_photo("t1.jpg")), "tom_hanks": padded_portrait()}


def covers(region: np.ndarray, point: np.ndarray) -> bool:
    return bool(region[int(round(point[1])), int(round(point[0]))])


def distance_to_eyes(shape: tuple[int, int], landmarks: np.ndarray) -> np.ndarray:
    """Per pixel: distance to the nearer eye landmark, in eye distances."""
    ys, xs = np.mgrid[: shape[0], : shape[1]]
    eye_distance = np.hypot(*(landmarks[1] - landmarks[0]))
    return np.min([np.hypot(xs - x, ys - y) for x, y in landmarks[:2]], axis=0) / eye_distance
