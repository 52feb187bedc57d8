"""Lesion masks -> the WSM (watermark semantic mask): bounding boxes the logo must not touch.

Lesion maps come from the built-in classical detector (:mod:`.builtin`, the default), a trained
segmentation network (:mod:`.network`) or user-supplied masks (:mod:`.masks`).
"""

from monai_medlocker._lazy import lazy_exports

# Imported on first use (PEP 562): verify and unlock read mask names without loading torch.
__getattr__, __dir__ = lazy_exports(__name__, {
    "builtin": ("DEFAULT_WORKING_SIZE", "LESION_CHANNELS", "EmptyImageError", "LesionDetectionError", "NoFieldOfViewError", "detect_fov",
                "detect_lesions"),
    "masks": ("MASK_SUFFIXES", "MaskFormatError", "find_mask_files", "is_mask_file", "lesion_type_of", "load_lesion_masks"),
    "transforms": ("BuiltinLesionDetector", "BuiltinLesionDetectord", "BuiltinLesionDetectorD", "BuiltinLesionDetectorDict"),
    "wsm": ("lesion_bboxes", "wsm_from_boxes"),
})

__all__ = [
    "lesion_bboxes",
    "wsm_from_boxes",
    "DEFAULT_WORKING_SIZE",
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
    "MASK_SUFFIXES",
    "MaskFormatError",
    "is_mask_file",
    "lesion_type_of",
    "load_lesion_masks",
    "find_mask_files",
]
