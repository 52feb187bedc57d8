"""Bounding boxes of lesion components, grown by a safety margin, and their union (the WSM)."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = ["lesion_bboxes", "wsm_from_boxes"]

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def lesion_bboxes(
    mask: np.ndarray,
    threshold: float = 0.5,
    min_size: int = 1,
    margin: int = 0,
    margin_fraction: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Margin-grown boxes of the connected lesion components of every channel.

    Args:
        mask: C x H x W lesion masks or probability maps. Float channels are thresholded at
            ``threshold``; boolean and integer channels count every non-zero pixel.
        threshold: probability threshold for float input, in [0, 1].
        min_size: components smaller than this many pixels are dropped (noise).
        margin: pixels added on every side of each box.
        margin_fraction: extra margin as a fraction of the image's shorter side (rounded up).

    Returns:
        boxes: N x 4 int64, MONAI's xyxy (x0, y0, x1, y1) with end-exclusive x1, y1, clipped to the image.
        channels: N int64, the channel each box came from.
    """
    arr = np.asarray(mask)
    if arr.ndim != 3:
        raise ValueError(f"lesion mask must be C x H x W, got shape {arr.shape}.")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}.")
    if min_size < 1:
        raise ValueError(f"min_size must be >= 1 pixel, got {min_size}.")
    if margin < 0 or margin_fraction < 0:
        raise ValueError(f"margins must be >= 0, got margin={margin}, margin_fraction={margin_fraction}.")
    height, width = arr.shape[1:]
    grow = int(margin) + math.ceil(margin_fraction * min(height, width))
    boxes, channels = [], []
    for c, channel in enumerate(arr):
        binary = channel > threshold if np.issubdtype(channel.dtype, np.floating) else channel != 0
        labels, n = ndimage.label(binary, structure=_EIGHT_CONNECTED)
        if n == 0:
            continue
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        for idx, sl in enumerate(ndimage.find_objects(labels), start=1):
            if sl is None or sizes[idx] < min_size:
                continue
            ys, xs = sl
            boxes.append(
                (max(xs.start - grow, 0), max(ys.start - grow, 0), min(xs.stop + grow, width), min(ys.stop + grow, height))
            )
            channels.append(c)
    return np.asarray(boxes, dtype=np.int64).reshape(-1, 4), np.asarray(channels, dtype=np.int64)


def wsm_from_boxes(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The H x W boolean union of xyxy boxes."""
    wsm = np.zeros(shape, dtype=bool)
    for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.int64).reshape(-1, 4):
        wsm[y0:y1, x0:x1] = True
    return wsm
