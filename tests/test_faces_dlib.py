"""dlib's 68-point landmarks (the `dlib` extra, which setup and CI install) and the mask fit that
follows the jaw line."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tests.support.faces import EYE_MARGIN, SAMPLE_LANDMARKS, covers, distance_to_eyes, sample_photos
from unmask_core.faces.align import align_face, transform_points
from unmask_core.faces.dlib_models import SHAPE_PREDICTOR_68, landmarks68, model_path
from unmask_core.faces.masks import MASK_KINDS, MaskError, apply_mask


def test_model_files_are_found_without_pkg_resources() -> None:
    assert model_path(SHAPE_PREDICTOR_68).stat().st_size > 50_000_000
    with pytest.raises(FileNotFoundError):
        model_path("no_such_model.dat")


@pytest.fixture(scope="module")
def faces68() -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """Every sample face aligned at 256 px, with its 5 and its 68 landmarks (dlib's, in the box that
    MTCNN finds on the aligned face)."""
    from unmask_core.faces.detect import MTCNNDetector

    detector = MTCNNDetector()
    photos = sample_photos()
    faces = []
    for photo_name, found in SAMPLE_LANDMARKS.items():
        for index, points in enumerate(found):
            image, matrix = align_face(photos[photo_name], np.array(points))
            box = detector.detect(image)[0].box
            landmarks = transform_points(np.array(points), matrix)
            faces.append((f"{photo_name}[{index}]", image, landmarks, landmarks68(image, box)))
    return faces


def outside_the_face(region: np.ndarray, points68: np.ndarray) -> float:
    """Fraction of the masked pixels outside the jaw line (points 0-16, closed at eye height)."""
    face = np.zeros(region.shape, np.uint8)
    cv2.fillPoly(face, [np.round(points68[:17]).astype(np.int32)], 1)
    return float((region & (face == 0)).sum() / region.sum())


def test_dlib68_fit_keeps_the_mask_on_the_face(faces68) -> None:
    outside = {"five_point": [], "dlib68": []}
    for name, image, landmarks, points68 in faces68:
        for kind in MASK_KINDS:
            five = apply_mask(image, landmarks, kind, seed=0, image_id=name)
            fitted = apply_mask(
                image, landmarks, kind, seed=0, image_id=name, fit="dlib68", landmarks68=points68
            )
            label = f"{name} {kind}"
            assert not np.array_equal(five.masked, fitted.masked), label
            assert covers(fitted.region, landmarks[2]) and covers(
                fitted.region, landmarks[3:].mean(axis=0)
            ), label
            near_eyes = distance_to_eyes(image.shape[:2], landmarks) < EYE_MARGIN
            np.testing.assert_array_equal(fitted.masked[near_eyes], image[near_eyes], err_msg=label)
            outside["five_point"].append(outside_the_face(five.region, points68))
            outside["dlib68"].append(outside_the_face(fitted.region, points68))
    # Measured: 0.21 of a 5-point mask lies beyond the jaw line on average, 0.10 of a dlib68 one;
    # on the face turned furthest (t1[2]) 0.43 and 0.10.
    assert np.mean(outside["dlib68"]) < 0.6 * np.mean(outside["five_point"])
    turned = [index for index, face in enumerate(faces68) if face[0] == "t1[2]"][0]
    per_kind = slice(turned * len(MASK_KINDS), (turned + 1) * len(MASK_KINDS))
    assert max(outside["dlib68"][per_kind]) < 0.15 < min(outside["five_point"][per_kind])


def test_dlib68_fit_needs_its_landmarks(faces68) -> None:
    name, image, landmarks, points68 = faces68[0]
    with pytest.raises(ValueError, match="landmarks68"):
        apply_mask(image, landmarks, "surgical", fit="dlib68")
    with pytest.raises(ValueError, match="landmarks68"):
        apply_mask(image, landmarks, "surgical", landmarks68=points68)
    with pytest.raises(ValueError, match="unknown mask fit"):
        apply_mask(image, landmarks, "surgical", fit="dlib81", landmarks68=points68)
    with pytest.raises(MaskError) as caught:
        apply_mask(image, landmarks, "surgical", fit="dlib68", landmarks68=points68[:60])
    assert caught.value.reason == "bad_shape"
    # Another face's jaw line, far from this face's 5 landmarks.
    with pytest.raises(MaskError) as caught:
        apply_mask(image, landmarks, "surgical", fit="dlib68", landmarks68=points68 + [90.0, 0.0])
    assert caught.value.reason == "implausible"
