"""Faces: detection with 5 landmarks, alignment to the generator's framing, synthetic masks.

Pure functions on uint8 RGB arrays; only `detect` touches a neural network (and imports it
lazily), so alignment and masking stay cheap to import.
"""

from unmask_core.faces.align import (
    FFHQ_TEMPLATE_256,
    AlignmentError,
    RMFRDAlignment,
    align_face,
    lfw_crop,
    rmfrd_align,
    transform_points,
)
from unmask_core.faces.detect import Face, InsightFaceDetector, MTCNNDetector, build_detector
from unmask_core.faces.masks import MASK_KINDS, MaskError, MaskResult, apply_mask, choose_mask

__all__ = [
    "FFHQ_TEMPLATE_256",
    "MASK_KINDS",
    "AlignmentError",
    "Face",
    "InsightFaceDetector",
    "MTCNNDetector",
    "MaskError",
    "MaskResult",
    "RMFRDAlignment",
    "align_face",
    "apply_mask",
    "build_detector",
    "choose_mask",
    "lfw_crop",
    "rmfrd_align",
    "transform_points",
]
