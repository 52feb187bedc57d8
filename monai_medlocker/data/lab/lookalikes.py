"""DR look-alikes of the synthetic fundus lab (v2): findings a model may confuse with lesions that are not DR.

* drusen: small soft-edged yellow-white dots, mostly within ~1.5 disc diameters of the fovea (look-alikes of
  hard exudates, which are sharper-edged, waxier and yellower);
* pigment clumps: small irregular brown-black specks in the mid-periphery (look-alikes of microaneurysms and dot
  haemorrhages, which are red: blood keeps the red channel, pigment does not);
* vessel light reflex: a thin bright central stripe on the larger vessels (drawn by
  :func:`~monai_medlocker.data.lab.anatomy._draw_vessels`).

None of them is a lesion: they never enter a lesion mask, the lesion counts or the grade, and they are placed
off every lesion's drawing window (:func:`~monai_medlocker.data.lab.lesions._lesion_keepout`), so no mask pixel
changes because of them.
"""

from __future__ import annotations

import math

import numpy as np

from monai_medlocker.data.lab.anatomy import _Geometry
from monai_medlocker.data.lab.raster import _TWO_PI, _bilinear, _blob, _harmonics, _patch

__all__ = ["LOOKALIKE_RATES"]

#: Per-image probability of each look-alike in lab v2 (independent draws, same rates at every grade).
LOOKALIKE_RATES: dict[str, float] = {
    "drusen": 0.2,  # 5..40 dots, radius S/520..S/170
    "pigment_clumps": 0.1,  # 1..8 specks, radius S/420..S/160
    "vessel_reflex": 0.45,  # stripe strength 0.5..1.0 (relative brightening of the vessel centre)
}

_DRUSEN_COLOUR = np.array([0.96, 0.86, 0.66], dtype=np.float32)
_PIGMENT_ABSORB = np.array([0.62, 0.7, 0.66], dtype=np.float32)  # brown-black: the red channel darkens too


def _plan_lookalikes(rng: np.random.Generator, g: _Geometry) -> dict:
    """Draw the look-alikes of one image (positions and sizes in units of ``S``); independent of the image size."""
    u = rng.random(3)
    plan: dict = {"vessel_reflex": float(rng.uniform(0.5, 1.0)) if u[2] < LOOKALIKE_RATES["vessel_reflex"] else 0.0,
                  "spots": []}
    dd = g.dd
    if u[0] < LOOKALIKE_RATES["drusen"]:
        for _ in range(int(rng.integers(5, 41))):
            # Denser near the fovea, as age-related drusen are.
            x, y = g.from_polar(rng.uniform(0, _TWO_PI), dd * (0.2 + 1.5 * rng.random() ** 1.5))
            plan["spots"].append({"kind": "drusen", "x": x, "y": y,
                                  "r": math.exp(rng.uniform(math.log(1 / 520), math.log(1 / 170))),
                                  "strength": float(rng.uniform(0.25, 0.5))})
    if u[1] < LOOKALIKE_RATES["pigment_clumps"]:
        for _ in range(int(rng.integers(1, 9))):
            x, y = g.from_polar(rng.uniform(0, _TWO_PI), dd * rng.uniform(1.2, 4.0))
            plan["spots"].append({"kind": "pigment", "x": x, "y": y, "r": float(rng.uniform(1 / 420, 1 / 160)),
                                  "aspect": float(rng.uniform(1.0, 2.0)), "angle": float(rng.uniform(0, math.pi)),
                                  "harm": _harmonics(rng, 0.2, 4), "strength": float(rng.uniform(0.6, 0.9))})
    return plan


def _draw_lookalikes(spots: list[dict], img: np.ndarray, illum: np.ndarray, g: _Geometry, size: int,
                     keepout: np.ndarray) -> dict[str, int]:
    """Draw the drusen and pigment clumps of a plan into ``img``, skipping any whose window would touch
    ``keepout`` (the lesions' windows), leaves the FOV or covers the disc; returns how many of each were drawn."""
    s = float(size)
    drawn = {"drusen": 0, "pigment": 0}
    for spot in spots:
        x, y = spot["x"], spot["y"]
        if not g.inside(x, y, 3.0 * spot["r"] + 0.01) or math.hypot(x - g.dx, y - g.dy) < 1.3 * g.rd:
            continue
        r = max(0.8, spot["r"] * s)
        win = _patch(x * s - 0.5, y * s - 0.5, 2.5 * r + 1.0, size)
        if win is None or keepout[win[0]].any():
            continue
        sl, xx, yy = win
        if spot["kind"] == "drusen":
            # Soft dome: a Gaussian profile, no crisp edge (hard exudates have one).
            opacity = spot["strength"] * np.exp(-(xx * xx + yy * yy) / (2.0 * (0.8 * r) ** 2))
            colour = _DRUSEN_COLOUR * _bilinear(illum, x, y)
            img[sl] += opacity[..., None] * (colour - img[sl])
        else:
            alpha, _ = _blob(xx, yy, r, spot["aspect"], spot["angle"], spot["harm"], 0.8)
            img[sl] *= 1.0 - (alpha * spot["strength"])[..., None] * _PIGMENT_ABSORB
        drawn[spot["kind"]] += 1
    return drawn
