"""Keyed, non-invertible rendering of the logo mark.

The plain mark is ``out = x (1 - a) + L a`` with ``a = min(coverage, alpha)``: whoever knows the public
logo ``L``, the box and the nominal opacity cap inverts it exactly. A keyed mark multiplies the opacity
by a secret field and adds a secret luminance texture to the logo's colour::

    a' = clip(a * (1 + OPACITY_DEPTH * f(x, y)), 0, 1)
    L' = clip(L + COLOUR_DEPTH * g(x, y), 0, 255)          (the same g on R, G and B)

``f`` and ``g`` are smooth random fields in (-1, 1), drawn from a generator seeded by a keyed BLAKE2b
hash of the 32-byte ``render_key`` and the box geometry (x0, y0, width, height, rotation): the same key
and box give the same pixels, another key other pixels, and without the key the fields are unknown.
Each field is a mix of two octaves of Gaussian-smoothed white noise (widths 1/12 and 1/36 of the box's
shorter side), squashed by ``tanh`` so that it never reaches +-1: slow enough to read as a shading of
the logo, not speckle, and too fine and too image-dependent to be fitted back from the composite.

The inverse blend with the nominal ``a`` and ``L`` then leaves the error
``((a' - a)(L - x) + a' (L' - L)) / (1 - a)`` in every logo pixel.

Bound (what keeps the mark recognisably the owner's logo):
    * opacity stays within ``a * (1 +- OPACITY_DEPTH)`` (and in [0, 1]); where ``a`` is 0 it stays 0,
      so the keyed mark changes exactly the pixels the plain mark changes (DESIGN invariant 1);
    * the logo's colour stays within ``+- COLOUR_DEPTH`` grey levels of the logo's own;
    * hence a keyed composite differs from the plain one by at most
      ``a * (OPACITY_DEPTH * |L - x| + (1 + OPACITY_DEPTH) * COLOUR_DEPTH)`` per pixel (plus rounding).
    * measured on 40 lab images at 512 px (``benchmarks/bench_keyed.py``): the SSIM of the keyed against
      the plain composite over the logo's footprint is reported there, and tested to stay at or above
      :data:`MIN_FOOTPRINT_SSIM` in ``tests/test_keyed_rendering.py``.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np
from scipy.ndimage import gaussian_filter

__all__ = [
    "RENDER_KEY_BYTES", "KEYED_SCHEME", "OPACITY_DEPTH", "COLOUR_DEPTH", "MIN_FOOTPRINT_SSIM",
    "check_render_key", "footprint_ssim", "keyed_fields", "keyed_layers", "rendering_record",
]

RENDER_KEY_BYTES = 32
KEYED_SCHEME = "medlocker-keyed-texture/1"
# Relative opacity modulation: a' within a * (1 +- OPACITY_DEPTH).
OPACITY_DEPTH = 0.3
# Luminance texture added to the logo's colour, in grey levels (0-255).
COLOUR_DEPTH = 32.0
# Field widths as fractions of the box's shorter side, and each octave's share of the field.
_OCTAVES = ((1 / 12, 0.7), (1 / 36, 0.3))
# tanh(_SQUASH * unit-variance field): about 80% of pixels beyond half the depth, none at it.
_SQUASH = 1.2
# The SSIM of a keyed composite against the plain one over the footprint stays at or above this.
MIN_FOOTPRINT_SSIM = 0.7


def check_render_key(render_key: bytes | None) -> bytes | None:
    """``render_key`` as bytes, or ``None``.

    Raises:
        ValueError: a key that is not 32 bytes.
    """
    if render_key is None:
        return None
    if not isinstance(render_key, (bytes, bytearray)) or len(render_key) != RENDER_KEY_BYTES:
        got = f"{len(render_key)} bytes" if isinstance(render_key, (bytes, bytearray)) else type(render_key).__name__
        raise ValueError(f"render_key must be {RENDER_KEY_BYTES} bytes, got {got}.")
    return bytes(render_key)


def _unit_field(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    side = min(height, width)
    field = np.zeros((height, width), dtype=np.float64)
    for fraction, weight in _OCTAVES:
        octave = gaussian_filter(rng.standard_normal((height, width)), max(0.8, fraction * side), mode="wrap")
        field += weight * octave / max(float(octave.std()), 1e-12)
    return np.tanh(_SQUASH * field / max(float(field.std()), 1e-12)).astype(np.float32)


@lru_cache(maxsize=512)
def keyed_fields(render_key: bytes, x0: int, y0: int, width: int, height: int, rotation: float) -> tuple[np.ndarray, np.ndarray]:
    """The secret opacity field ``f`` and luminance field ``g`` (height x width, in (-1, 1)) of one box.

    Deterministic in (render_key, box geometry); read-only arrays (cached: the optimizers score many
    candidates of the same box).
    """
    geometry = np.array([x0, y0, width, height], dtype=np.int64).tobytes() + np.float64(round(rotation, 3)).tobytes()
    digest = hashlib.blake2b(geometry, key=check_render_key(render_key), person=b"medlocker-tex/1").digest()
    rng = np.random.Generator(np.random.PCG64(int.from_bytes(digest, "little")))
    f, g = _unit_field(rng, height, width), _unit_field(rng, height, width)
    f.setflags(write=False)
    g.setflags(write=False)
    return f, g


def keyed_layers(rgb: np.ndarray, opacity: np.ndarray, render_key: bytes, x0: int, y0: int, width: int, height: int,
                 rotation: float) -> tuple[np.ndarray, np.ndarray]:
    """The keyed colour (0-255) and opacity of a mark from its plain ``rgb`` and ``opacity``."""
    f, g = keyed_fields(check_render_key(render_key), int(x0), int(y0), int(width), int(height), float(rotation))
    keyed_opacity = np.clip(opacity * (1.0 + np.float32(OPACITY_DEPTH) * f), 0.0, 1.0).astype(np.float32)
    keyed_rgb = np.clip(rgb + np.float32(COLOUR_DEPTH) * g[..., None], 0.0, 255.0).astype(np.float32)
    return keyed_rgb, keyed_opacity


def rendering_record(render_key: bytes | None) -> dict:
    """The ``rendering`` entry of a parameter record: the scheme and its bound, never the key or the fields."""
    if check_render_key(render_key) is None:
        return {"scheme": "plain"}
    return {
        "scheme": KEYED_SCHEME,
        "opacity_depth": OPACITY_DEPTH,
        "colour_depth": COLOUR_DEPTH,
        "field_widths": [round(w, 6) for w, _ in _OCTAVES],
        "min_footprint_ssim": MIN_FOOTPRINT_SSIM,
    }


def footprint_ssim(keyed: np.ndarray, plain: np.ndarray, logo: np.ndarray, placements) -> float:
    """SSIM of a keyed composite against the plain one, averaged over the logo's footprint (coverage > 0).

    scikit-image's SSIM (7 x 7 windows, per channel) on each box, the mean over the footprint pixels of
    every mark: how much the keyed mark departs from the owner's logo as it is seen on the image.
    """
    from skimage.metrics import structural_similarity

    from monai_medlocker.watermark.logo import render_logo

    values = []
    for p in placements:
        x0, y0, x1, y1 = p.box_xyxy
        _, cov = render_logo(logo, p.width, p.height, p.rotation)
        _, smap = structural_similarity(keyed[y0:y1, x0:x1], plain[y0:y1, x0:x1], channel_axis=-1,
                                        data_range=255, full=True)
        values.append(smap.mean(axis=-1)[cov > 0])
    if not values:
        raise ValueError("footprint_ssim needs at least one placement, got none.")
    return float(np.concatenate(values).mean())
