"""The mask kinds: one `MaskStyle` per kind, and the seeded choice of kind and colour per image.

A new kind is one entry in `STYLES`; it needs new code only for a new material, shading or edge
seam (`materials.py`) or a new outline form (an `Edge` function here).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from unmask_core.faces.masks.geometry import OutlineShape

Color = tuple[int, int, int]


@dataclass(frozen=True)
class Strap:
    """One strap, from a corner of the mask to a point level with the ear's root (which lies 46
    canonical units beside the face midline): `start_drop` units below the mask's top or bottom
    corner, ending `end_out` units further out than the ear's root, at height `end_y`."""

    from_top: bool
    end_y: float
    start_drop: float = 0.0
    end_out: float = 0.0


@dataclass(frozen=True)
class Straps:
    width: float  # canonical units
    straps: tuple[Strap, ...]


@dataclass(frozen=True)
class MaskStyle:
    """Everything that tells one kind of mask from another. `materials.py` holds the named
    materials, shadings and edge seams."""

    outline: OutlineShape
    colors: tuple[Color, ...]  # the first is the kind's default
    material: str  # "photo" (a real mask photo, recoloured), "printed" (cloth patterns), "plain"
    grain: float  # strength of the fabric grain drawn over the material (0: none)
    shading: str  # "draped" (fabric over nose and chin), "cup" (a moulded dome)
    straps: Straps
    panels: bool = False  # two flat panels meeting on the centre line catch the light differently
    centre_seam: float = 0.0  # darkening along the centre seam (0: no seam)
    edge_seam: str | None = None  # "welded" (a band of dots), "hem" (stitched dashes), "rim"
    nose_clip: bool = False  # a metal strip along the top edge over the nose
    valve_chance: float = 0.0  # how often an exhalation valve sits on the near cheek


def _bump(u: np.ndarray, width: float) -> np.ndarray:
    return np.exp(-((u / width) ** 2))


# Outline forms: the y of each edge in the ArcFace 112 px frame, for u from -1 to 1 across.


def _pleated_top(u: np.ndarray, lift: float, drop: float) -> np.ndarray:
    return 67.0 + lift - 6.5 * _bump(u, 0.33)


def _pleated_bottom(u: np.ndarray, lift: float, drop: float) -> np.ndarray:
    return 100.0 + drop + 19.0 * (1 - u**2) ** 0.8


def _dome_top(u: np.ndarray, lift: float, drop: float) -> np.ndarray:
    # An ellipse-like dome: top and bottom edges meet at the cheeks.
    return 88.0 + 0.5 * (lift + drop) - (28.0 - lift) * (1 - u**2) ** 0.55


def _dome_bottom(u: np.ndarray, lift: float, drop: float) -> np.ndarray:
    return 88.0 + 0.5 * (lift + drop) + (31.0 + drop) * (1 - u**2) ** 0.5


def _folded_top(u: np.ndarray, lift: float, drop: float) -> np.ndarray:
    # Folded flat: straight edges up to a peak on the nose bridge and down to a pointed chin.
    return 59.5 + lift + 10.0 * np.abs(u) ** 1.1


def _folded_bottom(u: np.ndarray, lift: float, drop: float) -> np.ndarray:
    return 121.0 + drop - 20.0 * np.abs(u) ** 1.3


def _contoured_top(u: np.ndarray, lift: float, drop: float) -> np.ndarray:
    # A contoured fabric mask, rounder than a surgical one.
    return 66.5 + lift - 7.0 * _bump(u, 0.42)


def _contoured_bottom(u: np.ndarray, lift: float, drop: float) -> np.ndarray:
    return 101.0 + drop + 18.0 * (1 - u**2) ** 0.7


CONTOURED = OutlineShape(_contoured_top, _contoured_bottom, 0.84, (64.0, 112.0), width=0.97)

# Ear loops are thin cords (about 2 mm) to the ear's root, between eye and nose height.
EAR_LOOPS = Straps(0.75, (Strap(from_top=True, end_y=63.0), Strap(from_top=False, end_y=74.0)))
# Head straps are flat bands twice as wide, towards the back of the head above and below the ear.
HEAD_STRAPS = Straps(
    1.3,
    (Strap(from_top=True, end_y=62.0, start_drop=3.0), Strap(from_top=False, end_y=94.0, end_out=2.0)),
)

STYLES: dict[str, MaskStyle] = {
    # insightface's photo of a real surgical mask, pleats and seams included.
    "surgical": MaskStyle(
        outline=OutlineShape(_pleated_top, _pleated_bottom, 0.86, (64.0, 112.0)),
        colors=(
            (122, 201, 233),
            (222, 222, 222),
            (85, 168, 148),
            (48, 46, 48),
            (236, 178, 196),
            (186, 170, 222),
        ),
        material="photo",
        grain=0.0,  # the photo has its own
        shading="draped",
        straps=EAR_LOOPS,
    ),
    "n95": MaskStyle(
        outline=OutlineShape(_dome_top, _dome_bottom, 0.97, (70.0, 110.0), width=0.93),
        colors=((236, 236, 230), (222, 218, 204), (200, 204, 210)),
        material="plain",
        grain=0.025,
        shading="cup",
        straps=HEAD_STRAPS,
        edge_seam="rim",
        nose_clip=True,
        valve_chance=0.4,
    ),
    "kn95": MaskStyle(
        outline=OutlineShape(_folded_top, _folded_bottom, 0.78, (68.0, 112.0)),
        colors=((238, 238, 236), (34, 34, 37), (150, 152, 158), (236, 184, 200), (170, 206, 232)),
        material="plain",
        grain=0.025,
        shading="draped",
        straps=EAR_LOOPS,
        panels=True,
        centre_seam=0.28,
        edge_seam="welded",
    ),
    "cloth": MaskStyle(
        outline=CONTOURED,
        colors=(
            (38, 50, 92),
            (62, 62, 68),
            (168, 40, 46),
            (108, 30, 46),
            (94, 106, 60),
            (204, 184, 150),
            (78, 104, 140),
            (38, 118, 124),
            (220, 150, 172),
            (204, 160, 58),
            (28, 28, 30),
        ),
        material="printed",
        grain=0.07,
        shading="draped",
        straps=EAR_LOOPS,
        centre_seam=0.22,
        edge_seam="hem",
    ),
    "black": MaskStyle(
        outline=CONTOURED,
        colors=((24, 24, 26),),
        material="plain",
        grain=0.12,
        shading="draped",
        straps=EAR_LOOPS,
        centre_seam=0.22,
        edge_seam="hem",
    ),
}

MASK_KINDS = tuple(STYLES)


def style_of(kind: str) -> MaskStyle:
    if kind not in STYLES:
        raise ValueError(f"unknown mask kind {kind!r}; expected one of {', '.join(MASK_KINDS)}")
    return STYLES[kind]


def mask_rng(seed: int, image_id: str, purpose: str = "") -> np.random.Generator:
    """A generator determined by (seed, image id, purpose) alone: sha256, so it does not depend on
    Python's per-process string hashing."""
    digest = hashlib.sha256(f"{seed}\x1f{image_id}\x1f{purpose}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def choose_mask(kinds: Sequence[str] = MASK_KINDS, seed: int = 0, image_id: str = "") -> tuple[str, Color]:
    """Pick a kind (uniformly among `kinds`) and one of its colours for an image."""
    for kind in kinds:
        style_of(kind)
    if not kinds:
        raise ValueError("choose_mask needs at least one kind")
    rng = mask_rng(seed, image_id, "choose")
    kind = kinds[int(rng.integers(len(kinds)))]
    colors = STYLES[kind].colors
    return kind, colors[int(rng.integers(len(colors)))]
