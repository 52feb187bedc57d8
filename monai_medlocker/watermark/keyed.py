"""Keyed, non-invertible rendering of the logo mark.

The plain mark is ``out = x (1 - a) + L a`` with ``a = min(coverage, alpha)``: whoever knows the public
logo ``L``, the box and the nominal opacity cap inverts it exactly, ``x = (out - a L) / (1 - a)``. A
keyed mark perturbs the opacity and the logo's colour by two secret fields ``f`` and ``g``::

    r(a) = (1 - a) * min(1, a / OPACITY_FLOOR)                 the room the mark has at opacity a
    a'   = clip(a + OPACITY_DEPTH * f(x, y) * r(a), 0, 1)
    L'   = clip(L + COLOUR_DEPTH * g(x, y) * r(a) / a', 0, 255)   (the same g on R, G and B)

so that the keyed composite differs from the plain one by ``(a' - a)(L - x) + a' (L' - L)``, and the
inverse blend with the nominal ``a`` and ``L`` leaves that difference divided by ``1 - a`` in every logo
pixel. Scaling by ``1 - a`` makes this inversion error about the same at every opacity cap of the
search space, ``OPACITY_DEPTH |L - x| f + COLOUR_DEPTH g`` grey levels, for the smallest visible
change: a strong mark is barely altered, a faint one more (its inversion amplifies errors least). Below
``OPACITY_FLOOR`` (the default space's lowest cap, 100/255; the logo's anti-aliased rim) the change
shrinks to 0 with ``a``; where ``a`` is 0 or 1 nothing changes.

``f`` and ``g`` are smooth random fields in (-1, 1), drawn from a NumPy generator seeded by a keyed
BLAKE2b hash of the 32-byte ``render_key`` and the box geometry (x0, y0, width, height, rotation): the
same key and box give the same pixels, another key or box other pixels, and without the key the fields
are unknown. Each field mixes two octaves of Gaussian-smoothed white noise (widths 1/12 and 1/36 of the
box's shorter side), squashed by ``tanh`` so that it never reaches +-1: it reads as a shading of the
logo, not as speckle that a median filter would take out.

Bound (what keeps the mark recognisably the owner's logo), per pixel:
    * ``|a' - a| <= OPACITY_DEPTH * r(a)``; ``a' = a`` where ``a`` is 0, so the keyed mark changes no
      pixel outside the plain mark's footprint (DESIGN invariant 1);
    * ``|keyed - plain| <= r(a) * (OPACITY_DEPTH * |L - x| + COLOUR_DEPTH)`` (+ 1 for the uint8
      rounding of each), with ``r(a) <= 1 - OPACITY_FLOOR``: at most about 0.6 * (0.3 * 255 + 24) = 61
      grey levels at the faintest cap, and 0 at a cap of 1;
    * the SSIM of the keyed composite against the plain one over the logo's footprint is at least
      :data:`MIN_FOOTPRINT_SSIM` (tested in ``tests/test_keyed_rendering.py``; the distribution on 40 lab
      images at 512 px is in ``benchmarks/results/keyed/keyed.json``).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np
from scipy.ndimage import gaussian_filter

__all__ = [
    "RENDER_KEY_BYTES", "KEYED_SCHEME", "OPACITY_DEPTH", "COLOUR_DEPTH", "OPACITY_FLOOR", "MIN_FOOTPRINT_SSIM",
    "check_render_key", "footprint_ssim", "keyed_fields", "keyed_layers", "rendering_record",
]

RENDER_KEY_BYTES = 32
KEYED_SCHEME = "medlocker-keyed-texture/1"
# Opacity modulation, as a fraction of the room r(a): a' within a +- OPACITY_DEPTH * r(a).
OPACITY_DEPTH = 0.3
# Luminance texture of the mark (a' (L' - L)), in grey levels (0-255) at full room.
COLOUR_DEPTH = 24.0
# Below this opacity the room shrinks linearly to 0 (the default search space's lowest cap).
OPACITY_FLOOR = 100 / 255
# Field widths as fractions of the box's shorter side, and each octave's share of the field.
_OCTAVES = ((1 / 12, 0.7), (1 / 36, 0.3))
# tanh(_SQUASH * unit-variance field): about 65% of the pixels beyond half the depth, none at it.
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
    """The keyed colour (0-255) and opacity of a mark from its plain ``rgb`` and ``opacity`` (see the module)."""
    f, g = keyed_fields(check_render_key(render_key), int(x0), int(y0), int(width), int(height), float(rotation))
    room = (1.0 - opacity) * np.minimum(1.0, opacity / np.float32(OPACITY_FLOOR))
    keyed_opacity = np.clip(opacity + np.float32(OPACITY_DEPTH) * f * room, 0.0, 1.0).astype(np.float32)
    tint = np.float32(COLOUR_DEPTH) * g * np.divide(room, keyed_opacity, out=np.zeros_like(room), where=keyed_opacity > 0)
    keyed_rgb = np.clip(rgb + tint[..., None], 0.0, 255.0).astype(np.float32)
    return keyed_rgb, keyed_opacity


def rendering_record(render_key: bytes | None) -> dict:
    """The ``rendering`` entry of a parameter record: the scheme and its bound, never the key or the fields."""
    if check_render_key(render_key) is None:
        return {"scheme": "plain"}
    return {
        "scheme": KEYED_SCHEME,
        "opacity_depth": OPACITY_DEPTH,
        "colour_depth": COLOUR_DEPTH,
        "opacity_floor": round(OPACITY_FLOOR, 6),
        "bound": "|keyed - plain| <= (1 - a) min(1, a / opacity_floor) (opacity_depth |L - x| + colour_depth) + 1 per pixel",
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
