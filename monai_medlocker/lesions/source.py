"""Where an image's lesion maps come from: the user's mask files, or a detector when there are none.

The protect workflow and ``medlocker lesions`` both call :class:`LesionSource`, so the two always
agree on which masks are used and how a missing mask is handled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from monai_medlocker.io.image import image_stem
from monai_medlocker.lesions.masks import MASK_CHANNELS, load_lesion_masks

__all__ = ["LESION_SEGMENTERS", "MissingMaskError", "LesionSource"]

LESION_SEGMENTERS = ("builtin", "masks", "network")


class MissingMaskError(ValueError):
    """An image without any lesion mask while ``lesion_segmenter`` is ``"masks"``."""


class LesionSource:
    """Lesion maps (4 x H x W, channels MA, HE, EX, SE) for one image.

    Args:
        segmenter: what to do for an image without mask files: ``"builtin"`` (the weight-free
            detector), ``"network"`` (a trained segmenter) or ``"masks"`` (refuse the image).
        checkpoint: the trained segmenter's state_dict, for ``"network"``.
    """

    def __init__(self, segmenter: str = "builtin", checkpoint: str | Path | None = None) -> None:
        if segmenter not in LESION_SEGMENTERS:
            raise ValueError(f"lesion_segmenter must be one of {', '.join(LESION_SEGMENTERS)}, got {segmenter!r}")
        self.segmenter = segmenter
        self.detector = None
        if segmenter == "builtin":
            from monai_medlocker.lesions.builtin import detect_lesions

            self.detector = detect_lesions
        elif segmenter == "network":
            from monai_medlocker.lesions.network import NetworkLesionDetector

            if not checkpoint:
                raise ValueError("lesion_segmenter='network' needs segmenter_checkpoint (a trained state_dict), got None")
            self.detector = NetworkLesionDetector(checkpoint)

    def __call__(
        self, image_path: Path, image: np.ndarray, mask_paths: Sequence[Path]
    ) -> tuple[np.ndarray, str, dict | None]:
        """Return (maps, source, detector report): user masks when given, else the detector's maps.

        Raises:
            MissingMaskError: no masks and no detector.
            ValueError: unreadable or mismatched masks, or a failed detection (naming the file).
        """
        if mask_paths:
            masks = load_lesion_masks(list(mask_paths), image.shape[:2], MASK_CHANNELS)
            return masks.astype(np.float32), "masks", None
        if self.detector is None:
            raise MissingMaskError(
                f"{image_path}: no lesion mask found (expected {image_stem(image_path)}_MA/_HE/_EX/_SE/_lesions.png, "
                f"{image_stem(image_path)}.nii[.gz] or {image_stem(image_path)}_seg.dcm beside it or in masks/, or mask_* keys in "
                "the datalist) and lesion_segmenter is 'masks'; the WSM cannot be built, image not protected"
            )
        try:
            maps, report = self.detector(image)
        except ValueError as err:
            raise ValueError(f"{image_path}: lesion detection failed: {err}") from err
        return maps, self.segmenter, report
