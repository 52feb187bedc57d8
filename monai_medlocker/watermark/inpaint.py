"""Inpainting of a mask, and the footprint of logo marks: the one primitive the engine and the thief share.

The engine's removal-aware shield fills the marks it placed, as a thief would, to optimise against that;
the threat study's inpainting attacks (:mod:`monai_medlocker.threats.removal`) fill the marks a thief
traced or located. Both call :func:`inpaint_mask`, so the shield is optimised against the same fill
the study measures. This module lies below ``watermark.engine`` and ``threats``.

OpenCV (the ``threats`` extra) does Telea and Navier-Stokes; scikit-image does biharmonic.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy.ndimage import binary_dilation

from monai_medlocker.watermark.blend import Placement
from monai_medlocker.watermark.logo import render_logo

__all__ = ["check_rgb_image", "INPAINT_METHODS", "as_placements", "logo_footprint", "crop_around", "inpaint_mask", "opencv"]

INPAINT_METHODS = ("telea", "navier_stokes", "biharmonic")


def check_rgb_image(image: np.ndarray, name: str) -> np.ndarray:
    """``image`` as an array; ValueError naming ``name`` unless it is H x W x 3 uint8."""
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"{name}: expected an H x W x 3 uint8 image, got shape {arr.shape} and dtype {arr.dtype}.")
    return arr


def opencv():
    """The ``cv2`` module, or an ImportError that says which extra installs it."""
    try:
        import cv2
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("inpainting and the removal attacks need OpenCV, a dependency of monai-medlocker: "
                          "pip install opencv-python-headless") from err
    return cv2


def as_placements(placements: Iterable[Placement | Mapping] | None) -> list[Placement]:
    """Placements from :class:`Placement` objects or their record dicts (a protect record's ``marks``)."""
    if placements is None:
        return []
    out = []
    for p in placements:
        if isinstance(p, Placement):
            out.append(p)
        elif isinstance(p, Mapping):
            try:
                out.append(Placement.from_record(p))
            except KeyError as err:
                raise ValueError(f"placement record {dict(p)!r} lacks the field {err}") from None
        else:
            raise ValueError(f"expected a Placement or a placement record dict, got {type(p).__name__}.")
    return out


def logo_footprint(shape: Sequence[int], logo: np.ndarray, placements: Iterable[Placement | Mapping],
                   dilate: int = 2) -> np.ndarray:
    """H x W bool: where the logo covers anything (coverage > 0) in each box, grown by ``dilate`` px."""
    height, width = int(shape[0]), int(shape[1])
    mask = np.zeros((height, width), dtype=bool)
    for p in as_placements(placements):
        _, cov = render_logo(logo, p.width, p.height, p.rotation)
        x0, y0, x1, y1 = p.box_xyxy
        mask[max(0, y0):y1, max(0, x0):x1] |= (cov > 0)[max(0, -y0):y1 - y0, max(0, -x0):x1 - x0]
    if dilate > 0:
        mask = binary_dilation(mask, iterations=int(dilate))
    return mask


def crop_around(mask: np.ndarray, margin: int) -> tuple[slice, slice]:
    """The slices of ``mask``'s bounding box grown by ``margin`` px (clipped to the image)."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return (slice(max(0, ys.min() - margin), min(h, ys.max() + 1 + margin)),
            slice(max(0, xs.min() - margin), min(w, xs.max() + 1 + margin)))


def _fill(image: np.ndarray, mask: np.ndarray, method: str, radius: int) -> np.ndarray:
    if method == "biharmonic":
        from skimage.restoration import inpaint_biharmonic

        out = inpaint_biharmonic(image.astype(np.float64) / 255.0, mask, channel_axis=-1)
        return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
    cv2 = opencv()
    flag = cv2.INPAINT_TELEA if method == "telea" else cv2.INPAINT_NS
    return cv2.inpaint(np.ascontiguousarray(image), mask.astype(np.uint8), radius, flag)


def inpaint_mask(image: np.ndarray, mask: np.ndarray, method: str = "telea", radius: int = 3) -> np.ndarray:
    """Fill the pixels of ``mask`` in an H x W x 3 uint8 image; no other pixel changes.

    Only a crop around the mask (16 px margin) is inpainted: the same result near the hole, a
    fraction of the work.

    Args:
        image: H x W x 3 uint8.
        mask: H x W bool, the pixels to fill.
        method: one of :data:`INPAINT_METHODS`.
        radius: the neighbourhood of OpenCV's methods, in pixels.

    Raises:
        ValueError: an unknown method, or a mask of another size.
    """
    if method not in INPAINT_METHODS:
        raise ValueError(f"inpainting method must be one of {list(INPAINT_METHODS)}, got {method!r}.")
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"the inpainting mask is {mask.shape} but the image is {image.shape[:2]}; expected the same H x W.")
    out = image.copy()
    if not mask.any():
        return out
    sl = crop_around(mask, 16)
    filled = _fill(out[sl], mask[sl], method, radius)
    out[sl] = np.where(mask[sl][..., None], filled, out[sl])
    return out
