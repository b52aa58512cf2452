"""Detection, alignment and the RMFRD eye alignment on the real photos shipped with insightface."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from skimage.transform import SimilarityTransform

from tests.support.faces import SAMPLE_LANDMARKS, padded_portrait
from unmask_core.errors import UserError
from unmask_core.faces.align import (
    ARCFACE_TEMPLATE_112,
    FFHQ_TEMPLATE_256,
    AlignmentError,
    align_face,
    ffhq_quad,
    lfw_crop,
    rmfrd_align,
    similarity_fit,
    template,
    transform_points,
)
from unmask_core.faces.detect import Face, InsightFaceDetector, MTCNNDetector, build_detector
from unmask_core.faces.samples import load_rgb, mask_texture_paths, sample_photo

EYES_AND_MOUTH = [0, 1, 3, 4]
TEMPLATE_EYE_DISTANCE = float(FFHQ_TEMPLATE_256[1, 0] - FFHQ_TEMPLATE_256[0, 0])


@pytest.fixture(scope="module", autouse=True)
def single_torch_thread() -> Iterator[None]:
    """MTCNN's small convolutions gain nothing from intra-op threads, and on a busy 2-core box
    torch's spinning thread pool makes detection 5x slower; restored afterwards."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def detector() -> MTCNNDetector:
    return MTCNNDetector()


@pytest.fixture(scope="module")
def photos(detector: MTCNNDetector) -> dict[str, tuple[np.ndarray, list[Face]]]:
    group = load_rgb(sample_photo("t1.jpg"))
    portrait = padded_portrait()
    return {"t1": (group, detector.detect(group)), "tom_hanks": (portrait, detector.detect(portrait))}


def all_faces(photos) -> list[tuple[str, np.ndarray, Face]]:
    return [
        (f"{name}[{i}]", image, face)
        for name, (image, faces) in photos.items()
        for i, face in enumerate(faces)
    ]


def test_sample_photos_ship_with_insightface() -> None:
    assert load_rgb(sample_photo("t1.jpg")).shape == (886, 1280, 3)
    assert load_rgb(sample_photo("Tom_Hanks_54745.png")).shape == (112, 112, 3)
    textures = mask_texture_paths()
    assert [p.name for p in textures] == [
        "mask_blue.jpg",
        "mask_white.jpg",
        "mask_green.jpg",
        "mask_black.jpg",
    ]
    assert all(p.is_file() for p in textures)
    with pytest.raises(FileNotFoundError):
        sample_photo("no_such_photo.png")


def test_mtcnn_finds_every_face_largest_first(photos) -> None:
    group, group_faces = photos["t1"]
    _, portrait_faces = photos["tom_hanks"]
    assert len(group_faces) == 6
    assert len(portrait_faces) == 1
    for faces in (group_faces, portrait_faces):
        areas = [face.area for face in faces]
        assert areas == sorted(areas, reverse=True)
        for face in faces:
            x1, y1, x2, y2 = face.box
            assert face.landmarks.shape == (5, 2) and face.score >= 0.9
            # Landmarks lie in their box, in ArcFace order: the viewer's left eye and mouth corner
            # first, eyes above the mouth.
            assert (face.landmarks[:, 0] >= x1 - 2).all() and (face.landmarks[:, 0] <= x2 + 2).all()
            assert (face.landmarks[:, 1] >= y1 - 2).all() and (face.landmarks[:, 1] <= y2 + 2).all()
            eye_axis = face.landmarks[1] - face.landmarks[0]
            mouth_axis = face.landmarks[4] - face.landmarks[3]
            assert eye_axis @ mouth_axis > 0
            down = np.array([-eye_axis[1], eye_axis[0]])
            assert (face.landmarks[3:].mean(axis=0) - face.landmarks[:2].mean(axis=0)) @ down > 0
    # The mask tests work from these detections, recorded.
    for name, (_, faces) in photos.items():
        found = np.array([face.landmarks for face in faces])
        np.testing.assert_allclose(found, SAMPLE_LANDMARKS[name], atol=0.1)


def test_ffhq_template_is_ffhq_recipe_applied_to_arcface_template() -> None:
    # FFHQ's crop square of the average (ArcFace) face, mapped onto 256 px, carries the
    # template points exactly onto FFHQ_TEMPLATE_256.
    quad = ffhq_quad(ARCFACE_TEMPLATE_112)
    corners = transform_points(quad, similarity_fit(ARCFACE_TEMPLATE_112, FFHQ_TEMPLATE_256))
    np.testing.assert_allclose(corners, [[0, 0], [0, 256], [256, 256], [256, 0]], atol=1e-6)
    expected = [[97.206, 120.888], [158.794, 120.889], [128.0, 156.086], [102.5, 192.0], [153.502, 192.0]]
    np.testing.assert_allclose(FFHQ_TEMPLATE_256, expected, atol=1e-3)
    np.testing.assert_allclose(template(1024), FFHQ_TEMPLATE_256 * 4)


def test_align_face_puts_a_template_shaped_face_exactly_on_the_template() -> None:
    # A synthetic photo: the template turned by 25 degrees, scaled 1.7x and moved, with a bright
    # dot on every landmark. Aligning must bring the dots (pixels, not just numbers) back.
    angle = np.deg2rad(25)
    turn = 1.7 * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = FFHQ_TEMPLATE_256 @ turn.T + [180.0, 40.0]
    photo = np.zeros((600, 600, 3), dtype=np.uint8)
    for x, y in landmarks:
        cv2.circle(photo, (int(round(x)), int(round(y))), 4, (255, 255, 255), -1)
    aligned, matrix = align_face(photo, landmarks)
    assert aligned.shape == (256, 256, 3) and aligned.dtype == np.uint8
    np.testing.assert_allclose(transform_points(landmarks, matrix), FFHQ_TEMPLATE_256, atol=1e-6)
    _, labels, _, centroids = cv2.connectedComponentsWithStats((aligned[:, :, 0] > 127).astype(np.uint8))
    found = centroids[1:]
    gaps = [np.min(np.hypot(*(found - point).T)) for point in FFHQ_TEMPLATE_256]
    assert len(found) == 5 and max(gaps) < 1.0


def test_aligned_real_faces_land_on_the_template(photos, detector: MTCNNDetector) -> None:
    """Eyes and mouth corners of every real face, after alignment, against the 256 px template.

    A similarity transform has 4 degrees of freedom for 8 coordinates: a laughing mouth or a
    turned head leaves residuals no similarity can remove. So: the fit must be the optimal one
    (checked against scikit-image's independent estimate), its residuals must stay within the
    spread of real face shapes, and a fresh detection on the aligned crop must agree."""
    errors, redetected_errors = {}, {}
    for name, image, face in all_faces(photos):
        aligned, matrix = align_face(image, face.landmarks)
        reference = SimilarityTransform.from_estimate(
            face.landmarks[EYES_AND_MOUTH], FFHQ_TEMPLATE_256[EYES_AND_MOUTH]
        )
        np.testing.assert_allclose(matrix, reference.params[:2], atol=1e-6)
        moved = transform_points(face.landmarks, matrix)
        errors[name] = np.hypot(*(moved - FFHQ_TEMPLATE_256).T)[EYES_AND_MOUTH]
        again = detector.detect(aligned)
        assert again, f"{name}: no face found again after alignment"
        redetected = again[0].landmarks
        redetected_errors[name] = np.hypot(*(redetected - FFHQ_TEMPLATE_256).T)[EYES_AND_MOUTH]
    print("\neye/mouth error to the 256 px template (px): transformed | re-detected")
    for name in errors:
        print(f"  {name:13s} {np.round(errors[name], 2)} | {np.round(redetected_errors[name], 2)}")
    every = np.concatenate(list(errors.values()))
    again = np.concatenate(list(redetected_errors.values()))
    print(
        f"  transformed: max {every.max():.2f} mean {every.mean():.2f}; re-detected: max {again.max():.2f} "
        f"mean {again.mean():.2f}; template eye distance {TEMPLATE_EYE_DISTANCE:.1f}"
    )
    # Face-shape spread: a fifth of the eye distance (12 px) at most, under a tenth on average.
    assert every.max() <= 0.2 * TEMPLATE_EYE_DISTANCE
    assert every.mean() <= 0.1 * TEMPLATE_EYE_DISTANCE
    assert again.max() <= 0.25 * TEMPLATE_EYE_DISTANCE
    assert again.mean() <= 0.12 * TEMPLATE_EYE_DISTANCE


@pytest.mark.parametrize(
    ("landmarks", "reason"),
    [
        (np.zeros((4, 2)), "bad_shape"),
        (np.where(np.eye(5, 2) > 0, np.nan, FFHQ_TEMPLATE_256), "non_finite"),
        (np.full((5, 2), 100.0), "degenerate"),
        (FFHQ_TEMPLATE_256[[1, 0, 2, 4, 3]], "mirrored"),  # left and right swapped
        (FFHQ_TEMPLATE_256 * [1, -1] + [0, 300], "mirrored"),  # mouth above the eyes
    ],
)
def test_align_face_rejects_degenerate_landmarks(landmarks: np.ndarray, reason: str) -> None:
    photo = np.zeros((300, 300, 3), dtype=np.uint8)
    with pytest.raises(AlignmentError) as caught:
        align_face(photo, landmarks)
    assert caught.value.reason == reason


def test_lfw_crop_keeps_the_central_150_of_250() -> None:
    # Red frame outside the central 150x150, a horizontal ramp inside.
    photo = np.zeros((250, 250, 3), dtype=np.uint8)
    photo[:, :, 0] = 255
    ramp = np.tile(np.linspace(0, 255, 150).astype(np.uint8), (150, 1))
    photo[50:200, 50:200] = np.stack([np.zeros_like(ramp), ramp, 255 - ramp], axis=-1)
    crop = lfw_crop(photo)
    assert crop.shape == (256, 256, 3)
    assert crop[:, :, 0].max() <= 2  # nothing of the frame
    expected = cv2.resize(photo[50:200, 50:200], (256, 256), interpolation=cv2.INTER_CUBIC)
    np.testing.assert_array_equal(crop, expected)


def rmfrd_inputs(photos) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Face crops the way RMFRD ships them (the face with some margin), with MTCNN's eyes in
    crop coordinates as the reference: every face of the group photo, and Tom Hanks upscaled."""
    crops = []
    group, faces = photos["t1"]
    for index, face in enumerate(faces):
        x1, y1, x2, y2 = face.box
        half = 0.9 * max(x2 - x1, y2 - y1)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        left, top = int(max(cx - half, 0)), int(max(cy - half, 0))
        crop = group[top : int(cy + half), left : int(cx + half)]
        crops.append((f"t1[{index}]", crop, face.landmarks[:2] - [left, top]))
    portrait, tom = photos["tom_hanks"][0], photos["tom_hanks"][1][0]
    crop = portrait[112:336, 112:336]
    crops.append(("tom_hanks", crop, tom.landmarks[:2] - 112))
    return crops


def test_rmfrd_align_finds_and_levels_both_eyes_on_real_faces(photos, detector: MTCNNDetector) -> None:
    aligned_names, failures = [], {}
    for name, crop, mtcnn_eyes in rmfrd_inputs(photos):
        try:
            result = rmfrd_align(crop)
        except AlignmentError as error:
            failures[name] = error.reason
            continue
        aligned_names.append(name)
        assert result.aligned.shape == (256, 256, 3) and result.aligned.dtype == np.uint8
        left, right = result.eyes
        assert abs(left[1] - right[1]) <= 2.0, f"{name}: eyes not level"
        assert left[0] < right[0]
        np.testing.assert_allclose(result.eyes, transform_points(result.eyes_in_image, result.matrix))
        # The cascades' eyes are the real eyes, in the right order: next to MTCNN's.
        eye_distance = np.hypot(*(mtcnn_eyes[1] - mtcnn_eyes[0]))
        gaps = np.hypot(*(result.eyes_in_image - mtcnn_eyes).T) / eye_distance
        assert gaps.max() <= 0.25, name
        # And they are eye height in the output: where FFHQ framing has its eyes.
        np.testing.assert_allclose(result.eyes[:, 1], FFHQ_TEMPLATE_256[:2, 1].mean(), atol=1e-6)
        # Independently, MTCNN on the output sees a level face; what roll is left is the Haar
        # boxes' coarseness (t1[1] and t1[3] come in rolled by about 30 degrees).
        seen = detector.detect(result.aligned)[0].landmarks
        roll = np.degrees(np.arctan2(seen[1, 1] - seen[0, 1], seen[1, 0] - seen[0, 0]))
        print(f"{name}: Haar eyes off MTCNN's by {np.round(gaps, 2)} eye distances; roll left {roll:.1f} deg")
        assert abs(roll) <= 8.0, name
    print(f"aligned {aligned_names}; dropped {failures}")
    # Haar cascades miss an eye on the sharply turned face (t1[2]); everything else aligns.
    assert "tom_hanks" in aligned_names
    assert len(aligned_names) >= 6
    assert set(failures.values()) <= {"no_face", "no_eyes", "one_eye"}


@pytest.mark.parametrize(
    "image",
    [
        np.full((240, 320, 3), 128, dtype=np.uint8),
        np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8),
    ],
    ids=["flat_grey", "noise"],
)
def test_rmfrd_align_rejects_an_image_without_a_face(image: np.ndarray) -> None:
    with pytest.raises(AlignmentError) as caught:
        rmfrd_align(image)
    assert caught.value.reason == "no_face"


def tiny_recognition_onnx(path: Path) -> None:
    """A genuine, tiny ONNX model shaped like a recognition net (1x3x112x112 in, one output),
    which is what a folder holding only w600k_r50.onnx would offer."""
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input.1"], ["embedding"])],
        "recognition_like",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 112, 112])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, 3, 1, 1])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def test_insightface_detector_explains_a_folder_without_a_detector(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        InsightFaceDetector(tmp_path / "missing")
    with pytest.raises(UserError, match="no face detector model.*no .onnx files"):
        InsightFaceDetector(tmp_path)
    tiny_recognition_onnx(tmp_path / "w600k_r50.onnx")
    (tmp_path / "README.txt").write_text("not a model")
    with pytest.raises(UserError, match=r"no face detector model.*w600k_r50\.onnx.*det_10g\.onnx"):
        InsightFaceDetector(tmp_path)
    # build_detector routes a folder to insightface, and so reports the same problem.
    with pytest.raises(UserError, match="no face detector model"):
        build_detector(str(tmp_path))
    with pytest.raises(UserError, match="expected 'mtcnn' or a folder"):
        build_detector(str(tmp_path / "nowhere"))


def test_build_detector_defaults_to_mtcnn() -> None:
    assert isinstance(build_detector(None), MTCNNDetector)
    assert isinstance(build_detector("MTCNN"), MTCNNDetector)


def test_detectors_reject_images_that_are_not_uint8_rgb(detector: MTCNNDetector) -> None:
    with pytest.raises(ValueError, match="uint8 RGB"):
        detector.detect(np.zeros((64, 64), dtype=np.uint8))
    assert detector.detect(np.full((200, 200, 3), 128, dtype=np.uint8)) == []
