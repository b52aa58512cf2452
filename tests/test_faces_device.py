"""The accelerator's face path (batched letterboxed detection, the warp on torch) against the CPU path,
run on CPU tensors: the same faces, the same crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unmask_core.faces.align import align_face, align_faces_torch
from unmask_core.faces.detect import build_detector, find_faces
from unmask_core.faces.samples import load_rgb, sample_photo


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    import skimage.data

    hanks = load_rgb(sample_photo("Tom_Hanks_54745.png"))
    return {
        "t1": load_rgb(sample_photo("t1.jpg")),  # 6 faces, 1280 x 886: letterboxed to 1280
        "astronaut": skimage.data.astronaut(),  # 512 x 512: letterboxed to 640
        "hanks_aligned": hanks,  # a face filling a 112 px frame: found by the padded second look
        "hanks_large": np.kron(hanks, np.ones((24, 24, 1), np.uint8)),  # 2688 px: shrunk into 1920
        "blank": np.full((120, 160, 3), 90, np.uint8),
    }


@pytest.fixture(scope="module")
def detector():
    return build_detector("mtcnn", "cpu")


def _centre(box: np.ndarray) -> np.ndarray:
    return (box[:2] + box[2:]) / 2


def test_batched_letterboxed_detection_finds_the_faces_the_cpu_path_finds(photos, detector) -> None:
    batch = detector.detect_batch([torch.from_numpy(image) for image in photos.values()])
    for (name, image), device_faces in zip(photos.items(), batch):
        cpu_faces = find_faces(detector, image)
        assert len(device_faces) == len(cpu_faces), name
        for face in cpu_faces:
            twin = min(device_faces, key=lambda f: np.hypot(*(_centre(f.box) - _centre(face.box))))
            width = face.box[2] - face.box[0]
            # The canvas changes MTCNN's resampling a little: boxes move up to ~5 px on a face 110 px wide.
            assert np.abs(twin.box - face.box).max() < 0.08 * width, name
            assert np.abs(twin.landmarks - face.landmarks).max() < 0.05 * width, name
            assert twin.score >= detector.min_score


@pytest.mark.parametrize("name", ["t1", "astronaut", "hanks_large"])
def test_the_warp_on_torch_matches_align_face_within_one_grey_level(photos, detector, name) -> None:
    image = photos[name]
    faces = find_faces(detector, image)
    crops, matrices = align_faces_torch(
        torch.from_numpy(image).permute(2, 0, 1).float(), [f.landmarks for f in faces], size=256
    )
    assert crops.shape == (len(faces), 3, 256, 256)
    for face, crop, matrix in zip(faces, crops, matrices):
        reference, reference_matrix = align_face(image, face.landmarks, size=256)
        assert np.allclose(matrix, reference_matrix)
        ours = crop.round().byte().permute(1, 2, 0).numpy()
        assert np.abs(ours.astype(int) - reference.astype(int)).mean() < 1.0, name
