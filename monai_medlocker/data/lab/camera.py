"""Camera of the synthetic fundus lab: non-lesion findings of the capture and the finishing of the photograph.

See :mod:`monai_medlocker.data.synthetic` for the whole lab.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageFilter

from monai_medlocker.data.lab.anatomy import _Geometry
from monai_medlocker.data.lab.raster import _TWO_PI, _bilinear, _patch

__all__: list[str] = []  # internal to the lab; the public API is monai_medlocker.data.synthetic


def _distractors(rng: np.random.Generator, img: np.ndarray, illum: np.ndarray, g: _Geometry, size: int) -> None:
    """Non-lesion findings every grade may show: lens dust and faint drusen (neither is masked)."""
    s = float(size)
    if rng.random() < 0.3:
        for _ in range(int(rng.integers(1, 5))):
            phi, rad = rng.uniform(0, _TWO_PI), rng.uniform(0.0, 0.9) * g.r
            x, y = g.cx + rad * math.cos(phi), g.cy + rad * math.sin(phi)
            sig = rng.uniform(0.006, 0.018) * s
            win = _patch(x * s - 0.5, y * s - 0.5, 3 * sig, size)
            if win is None:
                continue
            sl, xx, yy = win
            ring = np.exp(-((np.sqrt(xx * xx + yy * yy) - sig) ** 2) / (2 * (0.5 * sig) ** 2))
            img[sl] *= (1.0 - rng.uniform(0.03, 0.09) * ring)[..., None]
    if rng.random() < 0.15:
        for _ in range(int(rng.integers(3, 15))):
            x, y = g.from_polar(rng.uniform(0, _TWO_PI), rng.uniform(0.3, 1.8) * g.dd)
            r = max(0.8, rng.uniform(0.0015, 0.003) * s)
            win = _patch(x * s - 0.5, y * s - 0.5, 2.5 * r, size)
            if win is None:
                continue
            sl, xx, yy = win
            soft = np.exp(-(xx * xx + yy * yy) / (2 * r * r)) * rng.uniform(0.15, 0.3)
            colour = np.array([0.95, 0.75, 0.45], dtype=np.float32) * _bilinear(illum, x, y)
            img[sl] += soft[..., None] * (colour - img[sl])


def _finish(rng: np.random.Generator, img: np.ndarray, g: _Geometry, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Rim, sensor noise, tone curve and colour cast, defocus, JPEG; returns (uint8 image, FOV mask)."""
    s = float(size)
    coords = (np.arange(size, dtype=np.float32) + 0.5) / np.float32(s)
    dist = np.sqrt((coords[None, :] - np.float32(g.cx)) ** 2 + (coords[:, None] - np.float32(g.cy)) ** 2)
    fov = (dist <= g.r) & (np.abs(coords - g.cy) <= g.hh)[:, None]
    rim_w = rng.uniform(0.006, 0.02)
    # The fundus fades to black over the last ~1-2 % of the radius; reflectance 1 maps to 255 (brighter
    # parts of the disc saturate, as they often do in real photographs).
    rim = np.clip((np.float32(g.r) - dist) * np.float32(1.0 / rim_w), 0.0, 1.0)
    rim *= np.clip((g.hh - np.abs(coords - g.cy)) / (0.4 * rim_w), 0.0, 1.0).astype(np.float32)[:, None]
    rim *= rim * np.float32(255.0)
    sigma = np.float32(rng.uniform(0.004, 0.014) * math.sqrt(12.0))
    noise = rng.random((size, size), dtype=np.float32)
    noise -= np.float32(0.5)
    img += noise[..., None] * (sigma * np.array([1.0, 1.15, 1.4], dtype=np.float32))
    img *= rim[..., None]
    np.clip(img, 0.0, 255.0, out=img)
    pil = Image.fromarray(img.astype(np.uint8))
    # Colour cast (channel gains) and tone (gamma) in one lookup table per channel.
    gains = (rng.uniform(0.92, 1.08), rng.uniform(0.85, 1.12), rng.uniform(0.8, 1.1))
    gamma = rng.uniform(0.8, 1.2)
    curve = [min(255, int(255.0 * min(1.0, k * gain / 255.0) ** gamma + 0.5)) for gain in gains
             for k in range(256)]
    pil = pil.point(curve)
    pil = pil.filter(ImageFilter.BoxBlur(rng.uniform(0.3, 1.0) * s / 512.0))  # defocus / optics
    quality = int(rng.integers(75, 97))
    if rng.random() < 0.85:
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        pil = Image.open(buf).convert("RGB")
    out = np.array(pil, dtype=np.uint8)
    out *= fov[..., None]
    return out, fov
