"""Alpha compositing of the logo at native resolution.

The per-pixel opacity is ``min(logo_coverage, alpha)``: ``alpha`` caps the opacity, as the
transparency ``a_max`` does in Adv-watermark. Only pixels inside the logo's box whose opacity is
above zero can change (DESIGN invariant 1). With a ``render_key`` the mark is rendered keyed
(:mod:`monai_medlocker.watermark.keyed`): the same footprint, an opacity and colour that only the key
holder can reproduce, so the blend no longer inverts from the public logo, box and opacity cap.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from monai_medlocker.watermark.keyed import keyed_layers
from monai_medlocker.watermark.logo import render_logo

__all__ = ["Placement", "composite", "invert_composite", "mark_opacity"]


@dataclass(frozen=True)
class Placement:
    """One logo mark in native pixel coordinates.

    Attributes:
        x0, y0: top-left corner of the logo's box (column, row).
        width, height: size of the box in pixels (the rotated logo is fitted to it).
        alpha: opacity cap in (0, 1].
        rotation: rotation of the logo in degrees (counter-clockwise).
        scale: the box's longest side as a fraction of the image's shorter side.
    """

    x0: int
    y0: int
    width: int
    height: int
    alpha: float
    rotation: float = 0.0
    scale: float = 0.0

    @property
    def box_xyxy(self) -> tuple[int, int, int, int]:
        """The box as MONAI's xyxy (x0, y0, x1, y1), end-exclusive."""
        return (self.x0, self.y0, self.x0 + self.width, self.y0 + self.height)

    def to_record(self) -> dict:
        rec = asdict(self)
        rec["box_xyxy"] = list(self.box_xyxy)
        rec["alpha"] = round(float(self.alpha), 6)
        rec["alpha_255"] = int(round(self.alpha * 255))
        return rec

    @classmethod
    def from_record(cls, rec: dict) -> "Placement":
        keys = ("x0", "y0", "width", "height", "rotation", "scale")
        # A public record shows where a mark is, never its opacity: full opacity stands in for it.
        return cls(**{k: rec[k] for k in keys}, alpha=rec.get("alpha", 1.0))


def mark_opacity(logo: np.ndarray, placement: Placement, render_key: bytes | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The logo's RGB (0-255) and per-pixel opacity over the placement's box, keyed when ``render_key`` is given."""
    rgb, cov = render_logo(logo, placement.width, placement.height, placement.rotation)
    opacity = np.minimum(cov, np.float32(placement.alpha))
    if render_key is None:
        return rgb, opacity
    p = placement
    return keyed_layers(rgb, opacity, render_key, p.x0, p.y0, p.width, p.height, p.rotation)


def composite(image: np.ndarray, logo: np.ndarray, placements: list[Placement], value_max: float = 255.0,
              render_key: bytes | None = None) -> np.ndarray:
    """Blend the logo into a copy of an H x W x 3 image at each placement.

    Args:
        image: H x W x 3, uint8 (rounded result) or float (0..``value_max``).
        logo: h x w x 4 uint8 RGBA.
        placements: marks to apply, in order.
        value_max: the image's white level (255 for uint8 and 0-255 floats, 1 for 0-1 floats).
        render_key: 32-byte secret of the keyed rendering; ``None`` is the plain (invertible) mark.

    Raises:
        ValueError: a box that does not lie inside the image.
    """
    out = np.array(image, copy=True)
    height, width = out.shape[:2]
    for p in placements:
        x0, y0, x1, y1 = p.box_xyxy
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            raise ValueError(f"logo box {p.box_xyxy} lies outside the {width}x{height} image")
        rgb, opacity = mark_opacity(logo, p, render_key)
        region = out[y0:y1, x0:x1].astype(np.float32)
        a = opacity[..., None]
        blended = region * (1.0 - a) + (rgb * np.float32(value_max / 255.0)) * a
        # Where the opacity is 0 the blend is exactly the original value, so nothing outside
        # the footprint changes, even after rounding.
        if out.dtype == np.uint8:
            blended = np.clip(np.rint(blended), 0, 255)
        out[y0:y1, x0:x1] = np.where(a > 0, blended, region).astype(out.dtype)
    return out


def invert_composite(
    composited: np.ndarray, logo: np.ndarray, placements: list[Placement], value_max: float = 255.0
) -> np.ndarray:
    """Undo :func:`composite` where it can be undone: ``(out - logo * a) / (1 - a)``, marks in reverse order.

    This is the inverse alpha blend a thief who knows the logo and the placements would try. A
    uint8 composite was rounded, so a pixel of opacity ``a`` comes back within
    ``0.5 / (1 - a)`` of its original value (and the error grows without bound as ``a`` nears 1);
    a pixel of opacity 1 holds nothing of the original and keeps the composited value. That
    rounding loss is why unlock uses the sealed restore payload, never this function.

    Returns:
        float32 H x W x 3 estimate of the image before compositing.

    Raises:
        ValueError: a box that does not lie inside the image.
    """
    out = np.asarray(composited, dtype=np.float32).copy()
    height, width = out.shape[:2]
    for p in reversed(placements):
        x0, y0, x1, y1 = p.box_xyxy
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            raise ValueError(f"logo box {p.box_xyxy} lies outside the {width}x{height} image")
        rgb, opacity = mark_opacity(logo, p)
        a = opacity[..., None]
        region = out[y0:y1, x0:x1]
        recoverable = a < 1.0
        estimate = (region - rgb * np.float32(value_max / 255.0) * a) / np.where(recoverable, 1.0 - a, 1.0)
        out[y0:y1, x0:x1] = np.where((a > 0) & recoverable, estimate, region)
    return out
