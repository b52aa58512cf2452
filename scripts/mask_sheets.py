"""The mask pictures in docs/masks.md, drawn on insightface's sample photos:
`python -m scripts.mask_sheets [docs/masks]` (or `python scripts/mask_sheets.py`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from unmask_core.faces.align import align_face, transform_points
from unmask_core.faces.detect import MTCNNDetector
from unmask_core.faces.masks import MASK_KINDS, apply_mask, choose_mask
from unmask_core.faces.samples import load_rgb, sample_photo


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


def fits_sheet(faces: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], seed: int = 0) -> np.ndarray:
    """One row per aligned face (image, 5 landmarks, dlib's 68 landmarks): the face with its 68
    points (jaw line in green), then every kind placed by the 5-point fit and by the dlib68 fit."""
    rows = []
    for index, (image, landmarks, points68) in enumerate(faces):
        marked = image.copy()
        for number, (x, y) in enumerate(np.round(points68).astype(int)):
            colour = (40, 200, 60) if number < 17 else (230, 60, 40)
            cv2.circle(marked, (int(x), int(y)), 2, colour, -1, cv2.LINE_AA)
        tiles = [_label(marked, "dlib 68 points")]
        for kind in MASK_KINDS:
            for fit, points in (("five_point", None), ("dlib68", points68)):
                result = apply_mask(
                    image, landmarks, kind, seed=seed, image_id=f"fits-{index}", fit=fit, landmarks68=points
                )
                tiles.append(_label(result.masked, f"{kind} {fit}"))
        rows.append(np.hstack(tiles))
    return np.vstack(rows)


def with_landmarks68(
    faces: Sequence[tuple[np.ndarray, np.ndarray]],
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Each aligned face with dlib's 68 landmarks, found in the box MTCNN gives on the aligned face."""
    from unmask_core.faces.dlib_models import landmarks68

    detector = MTCNNDetector()
    return [(image, points, landmarks68(image, detector.detect(image)[0].box)) for image, points in faces]


def sample_faces() -> list[tuple[np.ndarray, np.ndarray]]:
    """Aligned faces from insightface's sample photos: three from the group photo (frontal,
    looking down, turned away) and Tom Hanks."""
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
    parser = argparse.ArgumentParser(description="Draw the mask contact sheets for the docs.")
    parser.add_argument("out_dir", nargs="?", default="docs/masks")
    args = parser.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    faces = sample_faces()
    sheets = (
        ("kinds.png", contact_sheet(faces)),
        ("variety.png", variety_sheet(faces)),
        ("fits.png", fits_sheet(with_landmarks68(faces))),
    )
    for name, sheet in sheets:
        cv2.imwrite(str(out / name), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
        print(out / name)


if __name__ == "__main__":
    main()
