"""Synthetic face masks fitted to 5 landmarks, for training pairs (T, M = T + mask).

MaskTheFace-style (METHOD.md, "Data"), without its 68-point detector: each mask is an outline
drawn in the ArcFace 112 px frame and carried onto the photo by the affine map that best takes
that frame's template onto the face's own 5 landmarks. The outline follows the nose (its centre
line passes through the nose tip) and runs from about mid-nose, below the eyes, over mouth and
chin. Every mask gets its shading (curvature, the nose ridge, the fall-off under the chin), the
photo's exposure, a thin contact shadow, anti-aliased edges and its straps where they fit.

- `styles`: one `MaskStyle` per kind (outline, colours, material, shading, seams, straps, valve);
- `geometry`: the face frame, the outlines, the clearance from the eyes;
- `materials`: fronts, shading, seams, nose clip and valve, by the names the styles use;
- `render`: straps and compositing (`apply_mask`).

Everything is a pure function of (image, landmarks, kind, colour, seed, image id): the random
choices come from a generator seeded by a hash of seed and image id, so a rerun gives the same
bytes.
"""

from unmask_core.faces.masks.geometry import EYE_GUARD, MaskError
from unmask_core.faces.masks.render import FITS, MaskResult, apply_mask
from unmask_core.faces.masks.styles import MASK_KINDS, STYLES, Color, MaskStyle, choose_mask, mask_rng

__all__ = [
    "EYE_GUARD",
    "FITS",
    "MASK_KINDS",
    "STYLES",
    "Color",
    "MaskError",
    "MaskResult",
    "MaskStyle",
    "apply_mask",
    "choose_mask",
    "mask_rng",
]
