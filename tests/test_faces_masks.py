"""Synthetic masks on real, aligned faces: what they cover, what they never cover, determinism."""

from __future__ import annotations

import hashlib
import itertools
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from scripts.mask_sheets import contact_sheet, variety_sheet
from tests.support.faces import (
    EYE_MARGIN,
    SAMPLE_LANDMARKS,
    covers,
    distance_to_eyes,
    sample_photos,
)
from unmask_core.faces.align import align_face, transform_points
from unmask_core.faces.masks import (
    EYE_GUARD,
    MASK_KINDS,
    STYLES,
    MaskError,
    apply_mask,
    choose_mask,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def detections() -> dict[str, tuple[np.ndarray, list[np.ndarray]]]:
    photos = sample_photos()
    return {
        name: (photos[name], [np.array(points) for points in found])
        for name, found in SAMPLE_LANDMARKS.items()
    }


@pytest.fixture(scope="module")
def aligned_faces(detections) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Every sample face at 256 px in FFHQ framing, with its landmarks in that frame."""
    faces = []
    for name, (photo, found) in detections.items():
        for index, landmarks in enumerate(found):
            aligned, matrix = align_face(photo, landmarks)
            faces.append((f"{name}[{index}]", aligned, transform_points(landmarks, matrix)))
    assert len(faces) == 7
    return faces


def test_every_kind_covers_nose_and_mouth_and_never_the_eyes(aligned_faces) -> None:
    for (name, image, landmarks), kind in itertools.product(aligned_faces, MASK_KINDS):
        result = apply_mask(image, landmarks, kind, seed=7, image_id=name)
        label = f"{name} {kind}"
        assert result.masked.shape == image.shape and result.masked.dtype == np.uint8
        assert result.region.shape == image.shape[:2] and result.region.dtype == bool
        assert covers(result.region, landmarks[2]), f"{label}: nose tip uncovered"
        assert covers(result.region, landmarks[3]) and covers(result.region, landmarks[4]), f"{label}: mouth"
        assert covers(result.region, landmarks[3:].mean(axis=0)), f"{label}: mouth centre"
        near_eyes = distance_to_eyes(image.shape[:2], landmarks) < EYE_MARGIN
        assert not (result.region & near_eyes).any(), f"{label}: mask within the eye margin"
        # Not a single pixel around the eyes changed: no mask, strap or shadow.
        np.testing.assert_array_equal(result.masked[near_eyes], image[near_eyes], err_msg=label)
        # The mask is a mask-sized patch (not a sliver, not the whole face), and really drawn.
        assert 0.08 <= result.region.mean() <= 0.25, f"{label}: region {result.region.mean():.3f}"
        changed = np.abs(result.masked.astype(int) - image.astype(int)).sum(axis=2) > 0
        assert changed[result.region].mean() > 0.97, label
        # The whole region lies below the eyes.
        ys = np.nonzero(result.region)[0]
        assert ys.min() > landmarks[:2, 1].min()


def test_eye_guard_is_wider_than_the_tested_margin() -> None:
    assert EYE_GUARD >= EYE_MARGIN


def test_same_seed_and_image_id_give_identical_bytes(aligned_faces) -> None:
    name, image, landmarks = aligned_faces[0]
    for kind in MASK_KINDS:
        first = apply_mask(image, landmarks, kind, seed=3, image_id="img-001")
        second = apply_mask(image.copy(), landmarks.copy(), kind, seed=3, image_id="img-001")
        assert first.masked.tobytes() == second.masked.tobytes(), kind
        assert np.array_equal(first.region, second.region)


def test_masks_are_identical_across_processes(aligned_faces, tmp_path: Path) -> None:
    # The random stream hangs on a hash of (seed, image id) only: not on Python's per-process
    # string hashing, not on anything drawn earlier in the process.
    name, image, landmarks = aligned_faces[1]
    np.save(tmp_path / "image.npy", image)
    (tmp_path / "landmarks.json").write_text(json.dumps(landmarks.tolist()))
    script = (
        "import hashlib, json, sys, numpy as np\n"
        "from unmask_core.faces.masks import MASK_KINDS, apply_mask\n"
        "d = sys.argv[1]\n"
        "image = np.load(d + '/image.npy')\n"
        "landmarks = np.array(json.load(open(d + '/landmarks.json')))\n"
        "print(json.dumps({k: hashlib.sha256(apply_mask(image, landmarks, k, seed=11, image_id='x/y.jpg')"
        ".masked.tobytes()).hexdigest() for k in MASK_KINDS}))\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "random", "PATH": ""},
    )
    theirs = json.loads(child.stdout)
    ours = {
        kind: hashlib.sha256(
            apply_mask(image, landmarks, kind, seed=11, image_id="x/y.jpg").masked.tobytes()
        ).hexdigest()
        for kind in MASK_KINDS
    }
    assert theirs == ours


def test_different_kinds_give_different_masks(aligned_faces) -> None:
    name, image, landmarks = aligned_faces[0]
    results = {kind: apply_mask(image, landmarks, kind, seed=0, image_id=name) for kind in MASK_KINDS}
    for first, second in itertools.combinations(MASK_KINDS, 2):
        difference = np.abs(results[first].masked.astype(int) - results[second].masked.astype(int)).mean()
        assert difference > 2.0, f"{first} vs {second}: mean difference {difference:.2f}"
        assert not np.array_equal(results[first].region, results[second].region), (first, second)
    # Each kind looks like itself: colours read from the pixels inside its region.
    means = {
        kind: result.masked[result.region].reshape(-1, 3).mean(axis=0) for kind, result in results.items()
    }
    assert means["black"].max() < 60
    assert means["n95"].min() > 150 and means["kn95"].min() > 150
    red, green, blue = means["surgical"]
    assert blue > red + 40 and green > red + 30  # light blue by default


def test_a_requested_colour_is_used(aligned_faces) -> None:
    name, image, landmarks = aligned_faces[0]
    red_cloth = apply_mask(image, landmarks, "cloth", color=(168, 40, 46), seed=0, image_id="plain-red")
    assert red_cloth.color == (168, 40, 46)
    red, green, blue = red_cloth.masked[red_cloth.region].reshape(-1, 3).mean(axis=0)
    assert red > green + 40 and red > blue + 40
    pink_surgical = apply_mask(image, landmarks, "surgical", color=(236, 178, 196), seed=0, image_id="pink")
    red, green, blue = pink_surgical.masked[pink_surgical.region].reshape(-1, 3).mean(axis=0)
    assert red > green + 20 and blue > green


def test_seed_and_image_id_vary_the_mask(aligned_faces) -> None:
    name, image, landmarks = aligned_faces[0]
    base = apply_mask(image, landmarks, "surgical", seed=0, image_id="a").masked
    assert not np.array_equal(base, apply_mask(image, landmarks, "surgical", seed=0, image_id="b").masked)
    assert not np.array_equal(base, apply_mask(image, landmarks, "surgical", seed=1, image_id="a").masked)


def test_choose_mask_spreads_kinds_and_colours_over_image_ids() -> None:
    choices = [choose_mask(MASK_KINDS, seed=0, image_id=f"celeba/{i:06d}.jpg") for i in range(300)]
    kinds = {kind for kind, _ in choices}
    assert kinds == set(MASK_KINDS)
    cloth_colours = {color for kind, color in choices if kind == "cloth"}
    assert len(cloth_colours) >= 6
    for kind, color in choices:
        assert color in STYLES[kind].colors
    # Same inputs, same choice; the seed changes the draw.
    assert choose_mask(MASK_KINDS, 0, "celeba/000001.jpg") == choices[1]
    reseeded = [choose_mask(MASK_KINDS, seed=1, image_id=f"celeba/{i:06d}.jpg") for i in range(300)]
    assert reseeded != choices
    # Only the kinds asked for.
    assert {choose_mask(("black",), 0, f"{i}")[0] for i in range(20)} == {"black"}
    with pytest.raises(ValueError, match="unknown mask kind"):
        choose_mask(("balaclava",), 0, "x")


def test_grey_photos_get_grey_masks(aligned_faces) -> None:
    name, image, landmarks = next(face for face in aligned_faces if face[0].startswith("tom_hanks"))
    for kind in ("surgical", "cloth"):
        result = apply_mask(image, landmarks, kind, seed=0, image_id=name)
        inner = cv2.erode(result.region.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        pixels = result.masked[inner].astype(int)
        assert np.abs(pixels - pixels.mean(axis=1, keepdims=True)).max() <= 2, kind


def test_masks_fit_faces_in_the_unaligned_group_photo(detections) -> None:
    # Masks work in any frame, at any face size and roll, not only on aligned crops.
    photo, faces = detections["t1"]
    for index, landmarks in enumerate(faces):
        kind = MASK_KINDS[index % len(MASK_KINDS)]
        result = apply_mask(photo, landmarks, kind, seed=0, image_id=str(index))
        assert covers(result.region, landmarks[2]) and covers(result.region, landmarks[3:].mean(axis=0))
        near_eyes = distance_to_eyes(photo.shape[:2], landmarks) < EYE_MARGIN
        assert not (result.region & near_eyes).any(), index


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda p: p[[3, 4, 2, 0, 1]], "eyes_below_mouth"),  # eyes and mouth swapped
        (lambda p: p + [300.0, 0.0], "out_of_frame"),
        (lambda p: np.where(np.arange(5)[:, None] == 2, np.nan, p), "non_finite"),
        (lambda p: (p - p.mean(axis=0)) * 0.05 + p.mean(axis=0), "too_small"),
        (lambda p: np.vstack([p[:2], [p[1, 0] + 25.0, p[2, 1]], p[3:]]), "profile"),  # nose past an eye
        (lambda p: p[:4], "bad_shape"),
    ],
)
def test_implausible_landmarks_raise_mask_error(aligned_faces, change, reason: str) -> None:
    name, image, landmarks = aligned_faces[0]
    with pytest.raises(MaskError) as caught:
        apply_mask(image, change(landmarks.copy()), "surgical", seed=0, image_id=name)
    assert caught.value.reason == reason


def test_unknown_kind_and_bad_images_are_refused(aligned_faces) -> None:
    name, image, landmarks = aligned_faces[0]
    with pytest.raises(ValueError, match="unknown mask kind"):
        apply_mask(image, landmarks, "balaclava")
    with pytest.raises(ValueError, match="uint8 RGB"):
        apply_mask(image.astype(np.float32), landmarks, "surgical")


def test_contact_sheets_show_every_kind(aligned_faces) -> None:
    # scripts/mask_sheets.py draws the pictures in docs/masks.md.
    faces = [(image, landmarks) for _, image, landmarks in aligned_faces[:2]]
    sheet = contact_sheet(faces)
    assert sheet.shape == (2 * (256 + 22), 6 * 256, 3)
    variety = variety_sheet(faces, columns=3)
    assert variety.shape == (2 * (256 + 22), 3 * 256, 3)
