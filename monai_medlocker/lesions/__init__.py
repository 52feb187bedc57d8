"""Lesion masks -> the WSM (watermark semantic mask): bounding boxes the logo must not touch."""

from monai_medlocker.lesions.wsm import lesion_bboxes, wsm_from_boxes

__all__ = ["lesion_bboxes", "wsm_from_boxes"]
