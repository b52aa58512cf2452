"""The periorbital region (RMFRD phase 2's L_R / LPIPS weights) on real aligned faces: it must hold both
eyes and leave out what a mask covers."""

from __future__ import annotations

import numpy as np
import pytest

from unmask_core.faces.align import align_face, transform_points
from unmask_core.faces.detect import build_detector
from unmask_core.faces.samples import load_rgb, sample_photo
from unmask_core.periorbital import periorbital_weight

SIZE = 256


@pytest.fixture(scope="module")
def aligned_landmarks() -> list[np.ndarray]:
    """5 landmarks of each face of insightface's t1.jpg, in its 256 px FFHQ-aligned crop."""
    group = load_rgb(sample_photo("t1.jpg"))
    points = []
    for face in build_detector("mtcnn").detect(group):
        _, matrix = align_face(group, face.landmarks, size=SIZE)
        points.append(transform_points(face.landmarks, matrix))
    return points


def _at(weight: np.ndarray, point: np.ndarray) -> float:
    x, y = np.round(point).astype(int)
    return float(weight[y, x])


def test_region_covers_both_eyes_and_leaves_out_nose_and_mouth(aligned_landmarks) -> None:
    assert len(aligned_landmarks) == 6
    for landmarks in aligned_landmarks:
        weight = periorbital_weight(landmarks[:2], SIZE)
        assert weight.shape == (SIZE, SIZE) and weight.min() >= 0 and weight.max() <= 1
        left_eye, right_eye, nose, mouth_left, mouth_right = landmarks
        assert _at(weight, left_eye) == 1.0 and _at(weight, right_eye) == 1.0
        assert _at(weight, (left_eye + right_eye) / 2) == 1.0  # the bridge between the eyes
        for point in (nose, mouth_left, mouth_right):
            assert _at(weight, point) == 0.0
        # Everything below the mouth corners is outside: a mask's area never counts.
        mouth_row = int(np.floor(min(mouth_left[1], mouth_right[1])))
        assert weight[mouth_row:].max() == 0.0


def test_region_turns_with_the_eye_line(aligned_landmarks) -> None:
    """On a rolled face the region follows the eyes, so it still holds them and not the mouth."""
    landmarks = aligned_landmarks[0]
    centre = landmarks[:2].mean(axis=0)
    angle = np.deg2rad(25)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    rolled = (landmarks - centre) @ rotation.T + centre
    weight = periorbital_weight(rolled[:2], SIZE)
    assert _at(weight, rolled[0]) == 1.0 and _at(weight, rolled[1]) == 1.0
    for point in rolled[2:]:
        assert _at(weight, point) == 0.0
    # The level region would miss the rolled eyes' far ends: the weights really turned.
    assert not np.array_equal(weight, periorbital_weight(landmarks[:2], SIZE))
