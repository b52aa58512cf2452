"""The periorbital region (eyes, brows, the bridge between them) from the two eye centres.

On a real masked face this is the part a mask never covers, so it is where M can be compared to an
unmasked output (METHOD: RMFRD phase 2). Geometry, in units of the inter-ocular distance d, in the frame
rotated so the eyes are level, centred on the eyes' midpoint:

- an ellipse with semi-axes 1.0 d (wide enough for both eyes and the outer eye corners, which sit about
  0.25 d beyond the eye centres, plus the temples) and 0.45 d (vertical), shifted up by 0.1 d so that
  the brows (about 0.35 d above the eye centres) are inside;
- its lower edge is therefore 0.35 d below the eye line, well above the nose tip (about 0.6 d) and
  the mouth (about 1.1 d);
- weights are 1 inside and fall off smoothly over 0.1 d at the border, so that the loss has no hard seam.
"""

from __future__ import annotations

import numpy as np

HALF_WIDTH = 1.0
HALF_HEIGHT = 0.45
RAISE = 0.1
SOFT_EDGE = 0.1


def periorbital_weight(eyes: np.ndarray, size: int) -> np.ndarray:
    """Weights in [0, 1], shape [size, size], for eyes = [[x_left, y_left], [x_right, y_right]] in pixels."""
    eyes = np.asarray(eyes, dtype=np.float64).reshape(2, 2)
    left, right = eyes
    d = float(np.hypot(*(right - left)))
    if d < 1e-3:
        raise ValueError("the two eye positions coincide")
    along = (right - left) / d  # unit vector along the eye line
    up = np.array([along[1], -along[0]])  # image y grows downwards: 'up' is towards the brows
    center = (left + right) / 2 + RAISE * d * up
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    offset_x, offset_y = xs - center[0], ys - center[1]
    u = (offset_x * along[0] + offset_y * along[1]) / (HALF_WIDTH * d)
    v = (offset_x * up[0] + offset_y * up[1]) / (HALF_HEIGHT * d)
    radius = np.sqrt(u * u + v * v)  # 1 on the ellipse border
    edge = SOFT_EDGE / min(HALF_WIDTH, HALF_HEIGHT)
    return np.clip((1 + edge - radius) / edge, 0.0, 1.0).astype(np.float32)
