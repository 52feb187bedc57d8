"""Lesion masks -> the WSM (watermark semantic mask): bounding boxes the logo must not touch.

Lesion maps come from the built-in classical detector (:mod:`.builtin`, the default), a trained
segmentation network (:mod:`.network`) or user-supplied masks (:mod:`.masks`).
"""

from monai_medlocker.lesions.builtin import (
    LESION_CHANNELS,
    EmptyImageError,
    LesionDetectionError,
    NoFieldOfViewError,
    detect_fov,
    detect_lesions,
)
from monai_medlocker.lesions.masks import MaskFormatError, find_mask_files, lesion_type_of, load_lesion_masks
from monai_medlocker.lesions.transforms import (
    BuiltinLesionDetector,
    BuiltinLesionDetectord,
    BuiltinLesionDetectorD,
    BuiltinLesionDetectorDict,
)
from monai_medlocker.lesions.wsm import lesion_bboxes, wsm_from_boxes

__all__ = [
    "lesion_bboxes",
    "wsm_from_boxes",
    "LESION_CHANNELS",
    "LesionDetectionError",
    "EmptyImageError",
    "NoFieldOfViewError",
    "detect_fov",
    "detect_lesions",
    "BuiltinLesionDetector",
    "BuiltinLesionDetectord",
    "BuiltinLesionDetectorD",
    "BuiltinLesionDetectorDict",
    "MaskFormatError",
    "lesion_type_of",
    "load_lesion_masks",
    "find_mask_files",
]
