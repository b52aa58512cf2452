"""dlib's ResNet face descriptor as a matcher: pretrained, shipped by the `face_recognition_models`
package (the `dlib` extra), and never used in training, so a fair check that works offline.

The network takes 150 px chips cut by `dlib.get_face_chip` from a 5-point `full_object_detection`.
dlib's 5-point layout is not ours: it has both corners of each eye (viewer's right eye first) and the
base of the nose, where we have eye centres, the nose tip and the mouth corners. Our faces arrive
aligned, so our landmarks sit on the alignment template, and dlib's points follow from dlib's own
mean face (the one `get_face_chip_details` fits to): the similarity that takes our 5 points on that
mean face onto the template carries its 5-point layout into our frame.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
from torch import Tensor

from unmask_core.faces import dlib_models
from unmask_core.faces.align import FIT_WEIGHTS, similarity_fit, template, transform_points
from unmask_core.matchers.networks import Matcher, resize_faces

# dlib's mean face in face units (dlib/image_transforms/interpolation.h, get_face_chip_details).
# Its 5-point layout: viewer's right eye outer and inner corner (68-point indices 45, 42), viewer's
# left eye outer and inner corner (36, 39), base of the nose (33).
DLIB_FIVE_POINTS = np.array(
    [
        [0.8595674595992, 0.2134981538014],
        [0.6460604764104, 0.2289674387677],
        [0.1205750620789, 0.2137274526848],
        [0.3340850613712, 0.2290642403242],
        [0.4901123135679, 0.6277975316475],
    ]
)
# The same mean face's points 36-41 and 42-47 (the eyes), 30 (nose tip), 48 and 54 (mouth corners).
_LEFT_EYE = np.array(
    [
        [0.121737, 0.216423],
        [0.187122, 0.178758],
        [0.265825, 0.179852],
        [0.334606, 0.231733],
        [0.260918, 0.245099],
        [0.182743, 0.244077],
    ]
)
_RIGHT_EYE = np.array(
    [
        [0.645647, 0.231733],
        [0.714428, 0.179852],
        [0.793132, 0.178758],
        [0.858516, 0.216423],
        [0.79751, 0.244077],
        [0.719335, 0.245099],
    ]
)
#: Our 5 landmarks (align.py's order) on dlib's mean face.
OUR_FIVE_ON_DLIB_MEAN_FACE = np.array(
    [
        _LEFT_EYE.mean(axis=0),
        _RIGHT_EYE.mean(axis=0),
        [0.490127, 0.515625],
        [0.254149, 0.780233],
        [0.726104, 0.780233],
    ]
)

CHIP_SIZE, CHIP_PADDING = 150, 0.25  # what the descriptor was trained on (dlib's defaults)
# Faces are cut at this size whatever size they arrive in: dlib's points are whole pixels, and at
# 256 px rounding moves an eye corner by under 1% of the eye distance.
WORK_SIZE = 256


def dlib_points_on_template(size: int) -> np.ndarray:
    """dlib's 5-point layout [5, 2] on an aligned face of `size` px, from our template (align.py)."""
    to_template = similarity_fit(OUR_FIVE_ON_DLIB_MEAN_FACE, template(size), FIT_WEIGHTS)
    return transform_points(DLIB_FIVE_POINTS, to_template)


@cache
def _template_detection():
    import dlib

    points = [dlib.point(int(round(x)), int(round(y))) for x, y in dlib_points_on_template(WORK_SIZE)]
    return dlib.full_object_detection(dlib.rectangle(0, 0, WORK_SIZE - 1, WORK_SIZE - 1), points)


def face_chips(faces: Tensor) -> list[np.ndarray]:
    """dlib's 150 px chips (uint8 RGB) of aligned faces [N, 3, H, W] in [-1, 1]."""
    import dlib

    faces = resize_faces(faces.detach().float().cpu(), WORK_SIZE)
    pixels = ((faces.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    detection = _template_detection()
    return [
        dlib.get_face_chip(np.ascontiguousarray(face), detection, CHIP_SIZE, CHIP_PADDING) for face in pixels
    ]


class DlibResNetMatcher(Matcher):
    """dlib's `dlib_face_recognition_resnet_model_v1`: 128-D descriptors exactly as dlib (and so
    face_recognition) computes them, not normalised (their norms are about 1.3 to 1.6), so that
    face_recognition's tolerance (Euclidean distance 0.6) and its existing galleries work unchanged.
    Cosine similarity ranks them as well."""

    name, backend, dim, normalized, pretrained = "dlib", "dlib", 128, False, True

    def __init__(self) -> None:
        self.model = dlib_models.face_descriptor_model()
        self.model_sha256 = dlib_models.model_sha256(dlib_models.FACE_DESCRIPTOR)

    def embed(self, faces: Tensor) -> np.ndarray:
        if len(faces) == 0:
            return np.zeros((0, self.dim), np.float32)
        return np.asarray(self.model.compute_face_descriptor(face_chips(faces)), dtype=np.float32)
