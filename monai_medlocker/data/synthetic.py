"""Procedural colour fundus photographs with diabetic-retinopathy lesions, masks and ICDR grades.

The "synthetic fundus lab" draws macula-centred 45-degree-style fundus photographs: a circular field
of view (FOV) on black with a soft rim (sometimes cut by flat chords, as many cameras do), an
orange-red fundus whose pigmentation, hue, brightness, contrast, vignetting and uneven illumination
vary per image, a choroidal (tigroid) pattern and mottling, a bright optic disc with a paler cup, a
darker macula and fovea about 2.5 disc diameters temporal to the disc (right or left eye), and a
branching tree of arteries (lighter, thinner) and veins (darker, wider) leaving the disc in arcades,
tapering at each branch. Sensor noise, defocus blur and JPEG compression finish the image.
All geometry is drawn in units of the image side ``S`` from random streams that do not depend on
``S``, so an image at 256 px is (up to noise and compression) a downsampled copy of the one at 1024 px.

Lesions (the four IDRiD segmentation types), each with its own binary mask:

* ``MA`` microaneurysms: small dark-red round dots, radius ``S/600 .. S/280`` but at least 1 px.
* ``HE`` haemorrhages: dot/blot (roundish, irregular, radius ``S/120 .. S/50``) and flame-shaped
  (elongated along the nerve-fibre direction); for grade 4 also a large boat-shaped preretinal
  haemorrhage (half-width ``S/15 .. S/8``, flat upper fluid level) near the arcades. Preretinal
  haemorrhages are part of the ``HE`` mask but are counted separately as ``PRH``.
* ``EX`` hard exudates: small bright yellow waxy spots in clusters or partial (circinate) rings
  around the macula.
* ``SE`` soft exudates (cotton-wool spots): pale fluffy blobs with soft edges, radius ``S/60 .. S/30``,
  mostly along the vascular arcades.

Mask rule: each lesion is drawn from a coverage field ``alpha`` in ``[0, 1]`` (1 inside the shape,
falling to 0 across an anti-aliased or, for cotton-wool spots, feathered edge); its colour change
scales with ``alpha`` (times a per-lesion strength) and is zero where ``alpha`` is. The lesion's mask is
exactly ``alpha > 0.5`` (inside the FOV); the faint outer half of a feathered edge is drawn but not
masked, and a lesion smaller than a pixel keeps its nearest pixel (alpha 1) so that it is never lost.
Masks of different types never overlap except in rare placements where no free spot was found.
Grade-4 images may also show neovascular tufts (thin tortuous new vessels) that have no mask, as in IDRiD.

Grades (ICDR 0-4) follow from the lesion counts by :func:`grade_from_lesions`; these rules are the
source of truth, and every generated label is computed from what was actually drawn:

* **4 (PDR)**: at least one preretinal haemorrhage (``PRH >= 1``).
* **3 (severe NPDR)**, a simplified "4-2-1" rule: at least ``SEVERE_HE_PER_QUADRANT`` (5) intraretinal
  haemorrhages in each of the four quadrants, **or** at least ``SEVERE_SOFT_EXUDATES`` (4) soft
  exudates together with haemorrhages in all four quadrants.
* **2 (moderate NPDR)**: any haemorrhage, hard exudate or soft exudate, short of the above.
* **1 (mild NPDR)**: microaneurysms only.
* **0 (no DR)**: no lesions.

Quadrants (``QUADRANTS``: superotemporal, superonasal, inferonasal, inferotemporal) are split by the
horizontal and vertical lines through the fovea; a haemorrhage belongs to the quadrant of its centre.
Referable DR is grade >= 2.

Generation samples a target grade and then lesions with a clear gap between classes: grade 1 has
3-15 microaneurysms; grade 2 has haemorrhages in at most two quadrants (at most 3 per quadrant)
and/or exudates, and at most 2 soft exudates; grade 3 has 5-9 haemorrhages in every quadrant, or 2-4
per quadrant with 4-7 soft exudates; grade 4 adds a preretinal haemorrhage to a grade-2 or grade-3
background. Grade-0 images are not perfectly clean: they may carry camera dust, faint drusen,
peripapillary atrophy, flare and blur, none of which is a lesion type.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageFilter

__all__ = [
    "LESION_TYPES",
    "LESION_NAMES",
    "GRADE_NAMES",
    "QUADRANTS",
    "SEVERE_HE_PER_QUADRANT",
    "SEVERE_SOFT_EXUDATES",
    "MIN_SIZE",
    "MAX_SIZE",
    "MASK_ALPHA_THRESHOLD",
    "REAL_SAMPLE_PATH",
    "FundusSample",
    "synthesize_fundus",
    "grade_from_lesions",
    "sample_seed",
    "generate_dataset",
    "write_real_sample",
    "load_real_sample",
]

LESION_TYPES: tuple[str, ...] = ("MA", "HE", "EX", "SE")
LESION_NAMES: dict[str, str] = {
    "MA": "microaneurysms",
    "HE": "haemorrhages",
    "EX": "hard exudates",
    "SE": "soft exudates",
}
GRADE_NAMES: dict[int, str] = {
    0: "no DR",
    1: "mild NPDR",
    2: "moderate NPDR",
    3: "severe NPDR",
    4: "proliferative DR",
}
QUADRANTS: tuple[str, ...] = ("superotemporal", "superonasal", "inferonasal", "inferotemporal")
SEVERE_HE_PER_QUADRANT = 5
SEVERE_SOFT_EXUDATES = 4
MIN_SIZE = 128
MAX_SIZE = 2048
MASK_ALPHA_THRESHOLD = 0.5
REAL_SAMPLE_PATH = Path(__file__).resolve().parents[1] / "assets" / "retina_skimage.png"

_DATALIST_NAME = "datalist.json"
_SPLITS = ("training", "validation", "test")
_OWN_FILE = re.compile(r"^synth_\d{5,}(_(MA|HE|EX|SE))?\.png$")
_LOWRES = 256  # side of the grid on which smooth fields (texture, illumination) are drawn
_TWO_PI = 2.0 * math.pi


# --------------------------------------------------------------------------------------------------
# Public data types and rules
# --------------------------------------------------------------------------------------------------


@dataclass
class FundusSample:
    """One synthetic fundus photograph with its lesion masks and grade.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB image, black outside the field of view.
        masks: lesion type (``LESION_TYPES``) -> ``(H, W)`` bool mask, ``alpha > 0.5`` of the drawn lesions.
        grade: ICDR grade 0-4 computed by :func:`grade_from_lesions` from ``counts``.
        referable: ``grade >= 2``.
        counts: lesion counts: ``MA``, ``HE`` (intraretinal haemorrhages), ``EX`` (exudate spots), ``SE``,
            ``PRH`` (preretinal haemorrhages) and ``HE_quadrants`` (haemorrhages per ``QUADRANTS`` entry).
        meta: generation details: ``seed``, ``size``, ``requested_grade``, ``eye`` ("OD" right / "OS" left),
            ``disc_center`` / ``fovea_center`` / ``fov_center`` as ``(x, y)`` pixels, ``disc_radius``,
            ``fov_radius`` and ``fov_half_height`` (less than the radius where flat chords cut the FOV) in
            pixels, ``severe_rule`` ("haemorrhages", "soft_exudates" or None),
            ``neovascularisation`` and ``lesions`` (one dict per lesion: type, kind, centre, radius, quadrant).
    """

    image: np.ndarray
    masks: dict[str, np.ndarray]
    grade: int
    referable: bool
    counts: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)


def _count(counts: Mapping[str, Any], key: str) -> int:
    value = counts.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"lesion count {key!r} must be a non-negative integer, got {value!r}")
    return int(value)


def grade_from_lesions(counts: Mapping[str, Any]) -> int:
    """ICDR grade (0-4) from lesion counts, by the rules in the module docstring.

    Args:
        counts: mapping with non-negative integer counts ``MA``, ``HE``, ``EX``, ``SE`` and ``PRH``
            (missing keys count as 0) and optionally ``HE_quadrants``: four non-negative integers,
            haemorrhages per quadrant in ``QUADRANTS`` order, summing to ``HE``. Without
            ``HE_quadrants`` the haemorrhages' spread is unknown and the severe (grade 3) criteria,
            which need it, are not met.

    Returns:
        The grade: 4 if ``PRH >= 1``; 3 if every quadrant has ``>= SEVERE_HE_PER_QUADRANT``
        haemorrhages, or ``SE >= SEVERE_SOFT_EXUDATES`` and every quadrant has a haemorrhage; 2 if any
        ``HE``, ``EX`` or ``SE``; 1 if only ``MA``; else 0.

    Raises:
        ValueError: a negative or non-integer count, ``HE_quadrants`` not four counts, or its sum
            differing from ``HE``.
    """
    if not isinstance(counts, Mapping):
        raise ValueError(f"counts must be a mapping of lesion counts, got {type(counts).__name__}")
    ma, he, ex, se, prh = (_count(counts, key) for key in ("MA", "HE", "EX", "SE", "PRH"))
    quadrants = counts.get("HE_quadrants")
    if quadrants is not None:
        quadrants = list(quadrants)
        if len(quadrants) != 4:
            raise ValueError(f"HE_quadrants must hold 4 counts ({', '.join(QUADRANTS)}), got {quadrants!r}")
        quadrants = [_count({"HE_quadrants": q}, "HE_quadrants") for q in quadrants]
        if sum(quadrants) != he:
            raise ValueError(f"HE_quadrants {quadrants} sum to {sum(quadrants)}, but HE is {he}")
    if prh > 0:
        return 4
    if quadrants is not None:
        fewest = min(quadrants)
        if fewest >= SEVERE_HE_PER_QUADRANT or (se >= SEVERE_SOFT_EXUDATES and fewest >= 1):
            return 3
    if he + ex + se > 0:
        return 2
    if ma > 0:
        return 1
    return 0


def _check_size(size: Any) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be an integer from {MIN_SIZE} to {MAX_SIZE} px inclusive, got {size!r}")
    return int(size)


def _check_seed(seed: Any, name: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {seed!r}")
    return int(seed)


def _check_grade(grade: Any) -> int | None:
    if grade is None:
        return None
    if isinstance(grade, bool) or not isinstance(grade, (int, np.integer)) or not 0 <= grade <= 4:
        raise ValueError(f"grade must be None or an integer ICDR grade 0..4, got {grade!r}")
    return int(grade)


# --------------------------------------------------------------------------------------------------
# Geometry (all in units of the image side: x, y in [0, 1], pixel j has centre (j + 0.5) / S)
# --------------------------------------------------------------------------------------------------


@dataclass
class _Geometry:
    t: float  # +1 when the fovea lies right of the disc in the image (left eye), -1 for a right eye
    fx: float
    fy: float
    dx: float
    dy: float
    rd: float  # disc radius
    cx: float  # FOV centre and radius; hh: half-height of the chord-cut FOV (>= r when uncut)
    cy: float
    r: float
    hh: float

    @property
    def dd(self) -> float:
        return 2.0 * self.rd

    def inside(self, x: float, y: float, margin: float = 0.0) -> bool:
        in_circle = (x - self.cx) ** 2 + (y - self.cy) ** 2 <= (self.r - margin) ** 2
        return in_circle and abs(y - self.cy) <= self.hh - margin

    def reach(self, ux: float, uy: float, margin: float) -> float:
        """Distance from the fovea to the FOV boundary (less ``margin``) along unit direction (ux, uy)."""
        ox, oy = self.fx - self.cx, self.fy - self.cy
        b = ox * ux + oy * uy
        c = ox * ox + oy * oy - (self.r - margin) ** 2
        dist = -b + math.sqrt(max(b * b - c, 0.0))
        if abs(uy) > 1e-9:
            dist = min(dist, ((self.hh - margin) - oy * math.copysign(1.0, uy)) / abs(uy))
        return max(dist, 0.0)

    def quadrant(self, x: float, y: float) -> int:
        temporal = (x - self.fx) * self.t > 0
        superior = y < self.fy
        if superior:
            return 0 if temporal else 1
        return 3 if temporal else 2

    def from_polar(self, phi: float, rad: float) -> tuple[float, float]:
        """Point at angle ``phi`` (0 = temporal, pi/2 = superior) and distance ``rad`` from the fovea."""
        return self.fx + self.t * rad * math.cos(phi), self.fy - rad * math.sin(phi)


def _sample_geometry(rng: np.random.Generator) -> tuple[str, _Geometry]:
    eye = "OD" if rng.random() < 0.5 else "OS"
    t = -1.0 if eye == "OD" else 1.0  # right eye: disc (nasal) on the image's right
    r = rng.uniform(0.445, 0.49)
    cx, cy = 0.5 + rng.uniform(-0.008, 0.008), 0.5 + rng.uniform(-0.008, 0.008)
    hh = r * rng.uniform(0.86, 0.95) if rng.random() < 0.3 else r + 1.0
    rd = rng.uniform(0.048, 0.058)
    fx = cx + t * rng.uniform(-0.01, 0.06)
    fy = cy + rng.uniform(-0.03, 0.03)
    dist = rng.uniform(2.3, 2.7) * 2.0 * rd
    dx = fx - t * dist
    dy = fy - rng.uniform(-0.05, 0.35) * 2.0 * rd
    return eye, _Geometry(t=t, fx=fx, fy=fy, dx=dx, dy=dy, rd=rd, cx=cx, cy=cy, r=r, hh=hh)


# Vessel growth modes: follow an arcade around the fovea, run outwards, or converge on the fovea.
_ARC, _OUT, _MAC = 0, 1, 2


def _grow_vessels(rng: np.random.Generator, g: _Geometry) -> list[tuple[str, np.ndarray]]:
    """Grow the artery and vein trees as polylines ``(kind, array[N, 3] of x, y, half-width)``."""
    dd = g.dd
    ds = 0.006  # step (units of S): geometry does not depend on the pixel size
    hw_vein = dd * rng.uniform(0.06, 0.075)
    hw_art = hw_vein * rng.uniform(0.68, 0.8)
    hw_min = 0.0008  # ~0.4 px at 512: thinner capillaries are invisible anyway
    tort = rng.uniform(0.6, 1.4)
    taper = math.exp(-ds * 0.5)
    max_len = (0.95, 0.42, 0.24, 0.13)
    stack: list[tuple] = []  # x, y, heading, hw, kind, mode, hemi, depth, r_target, r_stop
    for hemi in (-1.0, 1.0):  # superior (up in the image), inferior
        r_arc = rng.uniform(1.9, 2.5) * dd
        for kind, hw0 in (("v", hw_vein), ("a", hw_art)):
            tilt = math.radians(rng.uniform(0.0, 30.0))
            heading = math.atan2(hemi * math.cos(tilt), g.t * math.sin(tilt))
            sx = g.dx + rng.uniform(-0.25, 0.25) * g.rd
            sy = g.dy + hemi * rng.uniform(0.05, 0.3) * g.rd
            r_t = r_arc + (rng.uniform(-0.3, 0.3) * dd if kind == "a" else 0.0)
            stack.append((sx, sy, heading, hw0 * rng.uniform(0.92, 1.08), kind, _ARC, hemi, 0, r_t, 0.0))
            a = math.radians(rng.uniform(20.0, 70.0))
            heading = math.atan2(hemi * math.sin(a), -g.t * math.cos(a))
            stack.append((sx, sy, heading, hw0 * rng.uniform(0.6, 0.8), kind, _OUT, hemi, 0, 0.0, 0.0))
    for _ in range(int(rng.integers(1, 4))):  # small papillomacular vessels heading for the fovea
        heading = math.atan2(g.fy - g.dy, g.fx - g.dx) + math.radians(rng.uniform(-25.0, 25.0))
        kind = "a" if rng.random() < 0.5 else "v"
        hemi = -1.0 if rng.random() < 0.5 else 1.0
        stack.append((g.dx, g.dy, heading, hw_art * rng.uniform(0.3, 0.45), kind, _MAC, hemi, 1, 0.0,
                      rng.uniform(0.35, 0.6) * dd))

    out: list[tuple[str, np.ndarray]] = []
    fx, fy, t = g.fx, g.fy, g.t
    ndx, ndy = (g.dx - fx) / math.hypot(g.dx - fx, g.dy - fy), (g.dy - fy) / math.hypot(g.dx - fx, g.dy - fy)
    r2_fov = (g.r * 0.995) ** 2
    cx, cy, hh, disc_x, disc_y = g.cx, g.cy, g.hh, g.dx, g.dy
    atan2, cos, sin, pi = math.atan2, math.cos, math.sin, math.pi
    while stack and len(out) < 600:
        x, y, th, hw, kind, mode, hemi, depth, r_target, r_stop = stack.pop()
        n_steps = int(max_len[depth] / ds)
        sig = 0.017 * tort * (1.25 if kind == "v" else 1.0) * (1.0 + 0.2 * depth) * (0.6 if mode == _MAC else 1.0)
        noise = (rng.standard_normal(n_steps) * sig).tolist()
        k_steer = (0.07, 0.05, 0.1)[mode]
        spacing = (rng.uniform(0.5, 0.9) if depth == 0 else rng.uniform(0.8, 1.6)) * dd
        next_branch = spacing + (g.rd if depth == 0 else 0.0)
        drift = rng.uniform(0.05, 0.2)
        open_at, open_rate = math.radians(rng.uniform(50.0, 80.0)), rng.uniform(0.8, 1.6)
        spin = -t * hemi  # orientation of the arcade around the fovea
        pts = [(x, y, hw)]
        om = 0.0
        length = 0.0
        for i in range(n_steps):
            if mode == 0:  # _ARC
                vx, vy = x - fx, y - fy
                rr = math.hypot(vx, vy) + 1e-9
                ux, uy = vx / rr, vy / rr
                # Angle travelled around the fovea since the disc: past ~60 degrees the arcade opens
                # outwards towards the temporal periphery instead of closing around the macula.
                beta = abs(atan2(ux * ndy - uy * ndx, ux * ndx + uy * ndy))
                corr = max(-1.0, min(1.0, (r_target - rr) / (0.4 * r_target)))
                push = corr + drift + open_rate * min(max(beta - open_at, 0.0), 1.0)
                desired = atan2(spin * ux + push * uy, -spin * uy + push * ux)
            elif mode == 1:  # _OUT
                desired = atan2(y - fy, x - fx) if (x - fx) * t > 0 else atan2(y - disc_y, x - disc_x)
            else:
                desired = atan2(fy - y, fx - x)
            om = 0.9 * om + noise[i]
            th += om + k_steer * ((desired - th + pi) % _TWO_PI - pi)
            x += ds * cos(th)
            y += ds * sin(th)
            hw *= taper
            length += ds
            if (x - cx) ** 2 + (y - cy) ** 2 > r2_fov or abs(y - cy) > hh or hw < hw_min:
                break
            if mode == _MAC and math.hypot(x - fx, y - fy) < r_stop:
                break
            # Temporal raphe: superior and inferior trees do not cross the horizontal line temporal to the fovea.
            if (x - fx) * t > 0 and (y - fy) * hemi < -0.004:
                break
            pts.append((x, y, hw))
            if length >= next_branch and depth < len(max_len) - 1:
                next_branch = length + spacing * rng.uniform(0.7, 1.3)
                child = hw * (rng.uniform(0.3, 0.7) if depth == 0 else rng.uniform(0.5, 0.8))
                if child < 1.6 * hw_min:
                    continue
                side = 1.0 if rng.random() < 0.5 else -1.0
                cth = th + side * math.radians(rng.uniform(35.0, 75.0))
                rf = math.hypot(x - fx, y - fy)
                toward_fovea = (math.cos(cth) * (fx - x) + math.sin(cth) * (fy - y)) / (rf + 1e-9) > 0.5
                if toward_fovea and (x - g.dx) * t > 0 and rf < 3.2 * dd:
                    cmode, stop = _MAC, rng.uniform(0.3, 0.55) * dd
                else:
                    cmode, stop = _OUT, 0.0
                stack.append((x, y, cth, child, kind, cmode, hemi, depth + 1, 0.0, stop))
                hw = max((hw**3 - child**3) ** (1.0 / 3.0), 0.75 * hw)  # Murray's law, bounded
        if len(pts) >= 3:
            out.append((kind, np.asarray(pts, dtype=np.float64)))
    return out


def _neovascular_tufts(rng: np.random.Generator, g: _Geometry) -> list[tuple[str, np.ndarray]]:
    """Thin, tortuous, looping new vessels on the disc (NVD) or along an arcade (NVE)."""
    tufts = []
    n_sites = int(rng.integers(1, 3))
    for _ in range(n_sites):
        if rng.random() < 0.5:
            ox, oy = g.dx + rng.uniform(-0.5, 0.5) * g.rd, g.dy + rng.uniform(-0.5, 0.5) * g.rd
        else:
            phi = rng.choice([rng.uniform(0.4, 2.6), rng.uniform(3.6, 5.9)])
            ox, oy = g.from_polar(phi, rng.uniform(1.6, 2.6) * g.dd)
            if not g.inside(ox, oy, 0.05):
                continue
        for _ in range(int(rng.integers(6, 14))):
            th = rng.uniform(0.0, _TWO_PI)
            x, y = ox + rng.normal(0, 0.15) * g.rd, oy + rng.normal(0, 0.15) * g.rd
            hw = rng.uniform(0.0009, 0.0014)
            om = rng.normal(0.0, 0.25)
            pts = [(x, y, hw)]
            for _ in range(int(rng.integers(15, 45))):
                om = 0.9 * om + rng.normal(0.0, 0.12)
                th += om
                x += 0.0025 * math.cos(th)
                y += 0.0025 * math.sin(th)
                if not g.inside(x, y, 0.01):
                    break
                pts.append((x, y, hw))
            if len(pts) >= 3:
                tufts.append(("n", np.asarray(pts, dtype=np.float64)))
    return tufts


# --------------------------------------------------------------------------------------------------
# Rasterisation helpers
# --------------------------------------------------------------------------------------------------

_OFFSETS: dict[int, tuple[np.ndarray, np.ndarray]] = {}
_PAD = 8  # border of the vessel depth map, so that stamps near the image edge need no bounds checks


def _disc_offsets(quarters: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer offsets within radius ``quarters / 4`` px (cached)."""
    if quarters not in _OFFSETS:
        radius = quarters / 4.0
        n = int(math.ceil(radius))
        oy, ox = np.mgrid[-n : n + 1, -n : n + 1]
        keep = ox**2 + oy**2 < radius**2
        _OFFSETS[quarters] = (oy[keep].astype(np.int32), ox[keep].astype(np.int32))
    return _OFFSETS[quarters]


def _densify(polys: list[np.ndarray]) -> np.ndarray:
    """Resample polylines ``(N_k, 3)`` of px x, y, half-width at spacings fine enough for their widths.

    All polylines are resampled by one ``np.interp`` per coordinate: they are laid end to end along a common
    arc-length axis with a gap between them, so no sample falls between two polylines.
    """
    lengths, cums, spacings = [], [], []
    offset = 0.0
    for poly in polys:
        seg = np.hypot(np.diff(poly[:, 0]), np.diff(poly[:, 1]))
        cum = np.empty(len(poly))
        cum[0] = 0.0
        np.cumsum(seg, out=cum[1:])
        cums.append(cum + offset)
        lengths.append(cum[-1])
        spacings.append(min(max(0.5 * float(poly[len(poly) // 2, 2]), 0.6), 1.5))
        offset += cum[-1] + 10.0
    lengths_a, spacing_a = np.asarray(lengths), np.asarray(spacings)
    starts = np.concatenate([[0.0], np.cumsum(lengths_a + 10.0)[:-1]])
    counts = np.floor(lengths_a / spacing_a).astype(np.int64) + 1
    owner = np.repeat(np.arange(len(polys)), counts)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    local = np.arange(int(counts.sum())) - np.repeat(first, counts)
    where = starts[owner] + local * spacing_a[owner]
    axis = np.concatenate(cums)
    allpts = np.concatenate(polys)
    return np.stack([np.interp(where, axis, allpts[:, k]) for k in range(3)], axis=1)


def _splat_tubes(depth: np.ndarray, ratio: np.ndarray, pts: np.ndarray) -> None:
    """Max-composite discs centred on ``pts`` (x, y, hw in px) into two padded maps.

    ``depth`` receives ``hw - distance`` (px) and ``ratio`` ``1 - distance / hw``. Over densely spaced discs the
    running maxima equal those quantities for the distance to the centreline of a tube of slowly varying width:
    ``depth`` gives anti-aliased coverage (values above -0.5), ``ratio`` the position across the vessel. Both maps
    are padded by ``_PAD`` px on each side so that stamps near the image edge need no bounds checks.
    """
    width = depth.shape[1]
    flat_depth, flat_ratio = depth.reshape(-1), ratio.reshape(-1)
    pts = pts[pts[:, 2] > 0.15]
    if len(pts) == 0:
        return
    # Pixels with depth > -0.5 lie within hw + 0.5 of the centre, hence within hw + 1.21 of the rounded centre.
    quarters = np.ceil((pts[:, 2] + 1.21) * 4.0).astype(np.int64)
    lim = _PAD - 1
    for q in np.unique(quarters):
        sel = pts[quarters == q]
        oy, ox = _disc_offsets(int(q))
        oyf, oxf = oy.astype(np.float32), ox.astype(np.float32)
        px, py = sel[:, 0].astype(np.float32), sel[:, 1].astype(np.float32)
        hw = sel[:, 2:3].astype(np.float32)
        ix = np.clip(np.rint(px).astype(np.int32), -lim, width - 2 * _PAD + lim)
        iy = np.clip(np.rint(py).astype(np.int32), -lim, width - 2 * _PAD + lim)
        fx, fy = (ix.astype(np.float32) - px)[:, None], (iy.astype(np.float32) - py)[:, None]
        dist = np.sqrt((fx + oxf) ** 2 + (fy + oyf) ** 2)
        index = (((iy + _PAD) * width + (ix + _PAD))[:, None] + (oy * width + ox)[None, :]).reshape(-1).astype(np.intp)
        # float32 values into float32 maps: a dtype cast would push ufunc.at onto its slow path.
        np.maximum.at(flat_depth, index, (hw - dist).reshape(-1).astype(np.float32, copy=False))
        np.maximum.at(flat_ratio, index, (1.0 - dist / hw).reshape(-1).astype(np.float32, copy=False))


def _patch(cx: float, cy: float, ext: float, size: int):
    """Slices of the window of half-side ``ext`` px around px (cx, cy) and its offset grids (broadcastable)."""
    x0, x1 = max(int(math.floor(cx - ext)), 0), min(int(math.ceil(cx + ext)) + 1, size)
    y0, y1 = max(int(math.floor(cy - ext)), 0), min(int(math.ceil(cy + ext)) + 1, size)
    if x1 <= x0 or y1 <= y0:
        return None
    xx = (np.arange(x0, x1, dtype=np.float32) - np.float32(cx))[None, :]
    yy = (np.arange(y0, y1, dtype=np.float32) - np.float32(cy))[:, None]
    return (slice(y0, y1), slice(x0, x1)), xx, yy


def _blob(xx, yy, r, aspect, angle, harmonics, edge, taper=0.0):
    """Coverage ``alpha`` of an irregular ellipse of equivalent radius ``r`` px and its normalised radius ``q``.

    The boundary is the ellipse modulated by ``harmonics`` (k, amplitude, phase); ``alpha`` rises from 0 to 1
    across ``edge`` px centred on it, so ``alpha > 0.5`` is exactly the inside of the modulated boundary.
    ``taper`` widens one end (flame haemorrhages).
    """
    c, s = math.cos(angle), math.sin(angle)
    a = r * math.sqrt(aspect)
    b = r / math.sqrt(aspect)
    u = (xx * c + yy * s) / a
    v = (yy * c - xx * s) / b
    if taper:
        v = v / (1.0 + taper * np.clip(u, -1.0, 1.0))
    q = np.sqrt(u * u + v * v)
    bound = 1.0
    if harmonics:
        theta = np.arctan2(v, u)
        bound = 1.0 + sum(amp * np.cos(k * theta + ph) for k, amp, ph in harmonics)
    alpha = np.clip((bound - q) * (b / edge) + 0.5, 0.0, 1.0)
    return alpha.astype(np.float32), q


def _harmonics(rng: np.random.Generator, strength: float, kmax: int = 5):
    return [(k, strength * rng.uniform(0.3, 1.0) / k**0.6, rng.uniform(0.0, _TWO_PI)) for k in range(2, kmax + 1)]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Unit-variance white noise low-passed by a periodic Gaussian of ``sigma`` cells (done in Fourier space)."""
    fy = np.fft.fftfreq(shape[0]).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(shape[1]).astype(np.float32)[None, :]
    gain = np.exp(np.float32(-2.0 * (math.pi * sigma) ** 2) * (fx * fx + fy * fy))
    spectrum = np.fft.rfft2(rng.standard_normal(shape, dtype=np.float32)) * gain
    n = np.fft.irfft2(spectrum, s=shape).astype(np.float32, copy=False)
    return n / (n.std() + 1e-8)


def _upsample(field: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(np.ascontiguousarray(field, dtype=np.float32), "F").resize(
        (size, size), Image.BICUBIC), dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# Lesion planning and placement
# --------------------------------------------------------------------------------------------------


def _plan(rng: np.random.Generator, grade: int) -> dict[str, Any]:
    """Target lesion numbers for ``grade``, leaving a gap to the neighbouring grades."""
    plan: dict[str, Any] = {"MA": 0, "HE_q": [0, 0, 0, 0], "EX_clusters": [], "SE": 0, "PRH": 0, "NV": False,
                            "severe_rule": None}
    if grade == 0:
        return plan
    if grade == 1:
        plan["MA"] = int(rng.integers(3, 16))
        return plan
    base = grade if grade < 4 else (3 if rng.random() < 0.6 else 2)
    if base == 2:
        plan["MA"] = int(rng.integers(0, 21)) if rng.random() < 0.85 else 0
        n_quadrants = int(rng.choice([0, 1, 2], p=[0.2, 0.4, 0.4]))
        for q in rng.permutation(4)[:n_quadrants]:
            plan["HE_q"][int(q)] = int(rng.integers(1, SEVERE_HE_PER_QUADRANT - 1))
        if rng.random() < 0.55:
            plan["EX_clusters"] = [int(rng.integers(3, 13)) for _ in range(int(rng.integers(1, 3)))]
        if rng.random() < 0.35:
            plan["SE"] = int(rng.integers(1, 3))
        if sum(plan["HE_q"]) + plan["SE"] == 0 and not plan["EX_clusters"]:
            plan["HE_q"][int(rng.integers(0, 4))] = int(rng.integers(1, 4))
    else:
        plan["MA"] = int(rng.integers(8, 31))
        if rng.random() < 0.7:
            plan["severe_rule"] = "haemorrhages"
            plan["HE_q"] = [int(rng.integers(SEVERE_HE_PER_QUADRANT, SEVERE_HE_PER_QUADRANT + 5)) for _ in range(4)]
            plan["SE"] = int(rng.integers(0, SEVERE_SOFT_EXUDATES))
        else:
            plan["severe_rule"] = "soft_exudates"
            plan["HE_q"] = [int(rng.integers(2, SEVERE_HE_PER_QUADRANT)) for _ in range(4)]
            plan["SE"] = int(rng.integers(SEVERE_SOFT_EXUDATES, SEVERE_SOFT_EXUDATES + 4))
        if rng.random() < 0.6:
            plan["EX_clusters"] = [int(rng.integers(4, 16)) for _ in range(int(rng.integers(1, 4)))]
    if grade == 4:
        plan["PRH"] = 1 if rng.random() < 0.85 else 2
        plan["NV"] = rng.random() < 0.7
        plan["severe_rule"] = None
    return plan


class _Placer:
    """Rejection sampling of lesion centres inside the FOV, off the disc and apart from earlier lesions."""

    def __init__(self, rng: np.random.Generator, g: _Geometry):
        self.rng, self.g = rng, g
        self.placed: list[tuple[float, float, float]] = []

    def ok(self, x: float, y: float, rad: float, apart: bool) -> bool:
        g = self.g
        if not g.inside(x, y, rad + 0.012):
            return False
        if math.hypot(x - g.dx, y - g.dy) < 1.25 * g.rd + rad:
            return False
        if apart:
            for px, py, pr in self.placed:
                if (x - px) ** 2 + (y - py) ** 2 < (1.1 * (rad + pr) + 0.002) ** 2:
                    return False
        return True

    def polar(self, phi_lo: float, phi_hi: float, r_lo: float, r_hi: float, rad: float) -> tuple[float, float]:
        """A centre at fovea-polar angle in [phi_lo, phi_hi] and distance in [r_lo, r_hi] (clipped to the FOV)."""
        g, rng = self.g, self.rng
        for attempt in range(160):
            phi = rng.uniform(phi_lo, phi_hi)
            ux, uy = g.t * math.cos(phi), -math.sin(phi)
            hi = min(r_hi, g.reach(ux, uy, rad + 0.014))
            if hi <= r_lo:
                continue
            x, y = g.from_polar(phi, rng.uniform(r_lo, hi))
            if self.ok(x, y, rad, apart=attempt < 120):  # give up on spacing before giving up the lesion
                self.placed.append((x, y, rad))
                return x, y
        # Very crowded: anywhere in the posterior pole that is inside the FOV and off the disc.
        for _ in range(1000):
            phi = rng.uniform(phi_lo, phi_hi)
            x, y = g.from_polar(phi, rng.uniform(0.3 * g.dd, 3.0 * g.dd))
            if self.ok(x, y, rad, apart=False):
                self.placed.append((x, y, rad))
                return x, y
        raise RuntimeError("could not place a lesion inside the field of view")  # pragma: no cover

    def near(self, x0: float, y0: float, spread: float, rad: float) -> tuple[float, float] | None:
        for _ in range(30):
            x, y = x0 + self.rng.normal(0.0, spread), y0 + self.rng.normal(0.0, spread)
            if self.ok(x, y, rad, apart=True):
                self.placed.append((x, y, rad))
                return x, y
        return None


def _layout(rng: np.random.Generator, g: _Geometry, plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Concrete lesions (normalised centre, size, shape parameters) realising ``plan``; biggest first."""
    dd = g.dd
    placer = _Placer(rng, g)
    lesions: list[dict[str, Any]] = []
    arcade_phis = (0.25, 2.9, 3.4, 6.0)  # superior band (0.25..2.9) and inferior band (3.4..6.0), radians
    for _ in range(plan["PRH"]):
        half = rng.uniform(1.0 / 15.0, 1.0 / 8.0)
        lo, hi = (arcade_phis[0], arcade_phis[1]) if rng.random() < 0.5 else (arcade_phis[2], arcade_phis[3])
        x, y = placer.polar(lo, hi, 1.2 * dd, 3.0 * dd, half * 1.1)
        lesions.append({"type": "HE", "kind": "preretinal", "x": x, "y": y, "r": half,
                        "aspect": rng.uniform(0.5, 0.8), "level": rng.uniform(0.05, 0.45),
                        "angle": rng.uniform(-0.12, 0.12), "harm": _harmonics(rng, 0.05, 4),
                        "strength": rng.uniform(0.8, 0.93), "serum": rng.uniform(0.1, 0.3),
                        "clots": [(rng.normal(0, 0.5), rng.normal(0, 0.5), rng.uniform(0.1, 0.3), rng.uniform(-1, 1))
                                  for _ in range(int(rng.integers(3, 8)))]})
    for _ in range(plan["SE"]):
        r = rng.uniform(1.0 / 60.0, 1.0 / 30.0)
        if rng.random() < 0.65:
            lo, hi = (arcade_phis[0], arcade_phis[1]) if rng.random() < 0.5 else (arcade_phis[2], arcade_phis[3])
            x, y = placer.polar(lo, hi, 1.4 * dd, 3.0 * dd, r * 1.3)
        else:
            x, y = placer.polar(0.0, _TWO_PI, 0.8 * dd, 3.2 * dd, r * 1.3)
        lesions.append({"type": "SE", "kind": "cotton_wool", "x": x, "y": y, "r": r,
                        "aspect": rng.uniform(1.0, 1.8), "angle": rng.uniform(0, math.pi),
                        "harm": _harmonics(rng, 0.18, 6), "strength": rng.uniform(0.45, 0.75),
                        "puffs": [(rng.normal(0, 0.45), rng.normal(0, 0.45), rng.uniform(0.3, 0.6))
                                  for _ in range(int(rng.integers(2, 5)))]})
    for n_spots in plan["EX_clusters"]:
        ring = rng.random() < 0.5
        ccx, ccy = placer.polar(0.0, _TWO_PI, 0.7 * dd, 2.0 * dd, 0.0)
        placer.placed.pop()  # the cluster centre itself is not a lesion
        ring_r = rng.uniform(0.3, 0.75) * dd
        start, span = rng.uniform(0, _TWO_PI), rng.uniform(1.5, 4.5)
        strength = rng.uniform(0.7, 0.95)
        for k in range(n_spots):
            r = math.exp(rng.uniform(math.log(1.0 / 450.0), math.log(1.0 / 130.0)))
            if ring:
                ang = start + span * (k + rng.uniform(-0.3, 0.3)) / max(n_spots - 1, 1)
                px0, py0 = ccx + ring_r * math.cos(ang), ccy + ring_r * math.sin(ang)
                pos = placer.near(px0, py0, 0.08 * dd, r)
            else:
                pos = placer.near(ccx, ccy, 0.35 * dd, r)
            if pos is None:  # no free spot in the cluster: anywhere around the macula instead
                pos = placer.polar(0.0, _TWO_PI, 0.5 * dd, 2.5 * dd, r)
            lesions.append({"type": "EX", "kind": "hard_exudate", "x": pos[0], "y": pos[1], "r": r,
                            "aspect": rng.uniform(1.0, 1.7), "angle": rng.uniform(0, math.pi),
                            "harm": _harmonics(rng, 0.12, 4), "strength": strength * rng.uniform(0.9, 1.05)})
    for q, n in enumerate(plan["HE_q"]):
        for _ in range(n):
            flame = rng.random() < 0.3
            r = rng.uniform(1.0 / 120.0, 1.0 / 50.0) * (0.8 if flame else 1.0)
            ext = r * (2.0 if flame else 1.3)
            margin = math.radians(8.0)
            x, y = placer.polar(q * math.pi / 2 + margin, (q + 1) * math.pi / 2 - margin, 0.5 * dd, 3.6 * dd, ext)
            # Flame haemorrhages lie along the nerve fibres: radial from the disc, arcuate around the fovea.
            if (x - g.fx) * g.t > 0:
                fibre = math.atan2(y - g.fy, x - g.fx) + math.pi / 2
            else:
                fibre = math.atan2(y - g.dy, x - g.dx)
            lesions.append({"type": "HE", "kind": "flame" if flame else "blot", "x": x, "y": y, "r": r,
                            "aspect": rng.uniform(2.5, 5.0) if flame else rng.uniform(1.0, 1.5),
                            "angle": fibre + rng.normal(0, 0.15) if flame else rng.uniform(0, math.pi),
                            "harm": _harmonics(rng, 0.05 if flame else 0.14, 5),
                            "strength": rng.uniform(0.7, 0.95), "taper": rng.uniform(0.2, 0.6) if flame else 0.0,
                            "phase": rng.uniform(0, _TWO_PI)})
    for _ in range(plan["MA"]):
        r = rng.uniform(1.0 / 600.0, 1.0 / 280.0)
        x, y = placer.polar(0.0, _TWO_PI, 0.3 * dd, 3.4 * dd, max(r, 0.003))
        lesions.append({"type": "MA", "kind": "microaneurysm", "x": x, "y": y, "r": r,
                        "strength": rng.uniform(0.85, 1.0)})
    return lesions


# --------------------------------------------------------------------------------------------------
# The renderer
# --------------------------------------------------------------------------------------------------

# Fraction of each channel that blood of full optical density removes: blood absorbs green and blue far
# more than red, so vessels and haemorrhages look dark red, veins (deoxygenated) darker than arteries.
_VEIN_ABSORB = np.array([0.26, 0.68, 0.55], dtype=np.float32)
_ARTERY_ABSORB = np.array([0.12, 0.5, 0.38], dtype=np.float32)
_NV_ABSORB = np.array([0.15, 0.55, 0.42], dtype=np.float32)
_BLOOD_ABSORB = np.array([0.36, 0.76, 0.7], dtype=np.float32)
_MA_ABSORB = np.array([0.34, 0.86, 0.8], dtype=np.float32)  # saccular: thick blood, dark even when tiny


def _bilinear(field: np.ndarray, x: float, y: float) -> np.ndarray:
    """Sample a ``(C, G, G)`` low-resolution field at normalised (x, y)."""
    n = field.shape[-1]
    gx = min(max(x * n - 0.5, 0.0), n - 1.001)
    gy = min(max(y * n - 0.5, 0.0), n - 1.001)
    i, j = int(gy), int(gx)
    fy, fx = gy - i, gx - j
    top = field[:, i, j] * (1 - fx) + field[:, i, j + 1] * fx
    bottom = field[:, i + 1, j] * (1 - fx) + field[:, i + 1, j + 1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def _background(rng: np.random.Generator, g: _Geometry, size: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Low-resolution reflectance x illumination fields, upsampled: returns (lit image, illumination grid, params)."""
    n = _LOWRES
    k = n / 128.0  # noise widths below are given in cells of a 128 grid
    coords = (np.arange(n, dtype=np.float32) + 0.5) / n
    gx, gy = coords[None, :], coords[:, None]
    pigment = rng.uniform(0.0, 1.0)
    base = np.array([0.86 - 0.2 * pigment, 0.36 - 0.12 * pigment, 0.27 - 0.14 * pigment], dtype=np.float32)
    base *= (1.0 + rng.normal(0.0, 0.06, 3)).astype(np.float32)
    rf = np.sqrt((gx - g.fx) ** 2 + (gy - g.fy) ** 2)
    # Choroidal (tigroid) pattern: the zero lines of band-passed noise look like choroidal vessels,
    # hidden under the macular pigment and stronger in lightly pigmented fundi.
    stripes = np.exp(-((_smooth_noise(rng, (n, n), 1.2 * k) / 0.35) ** 2))
    tigroid = rng.uniform(0.0, 0.05) if rng.random() < 0.65 else rng.uniform(0.05, 0.16) * (1.2 - 0.6 * pigment)
    tig = tigroid * (stripes - stripes.mean()) * (1.0 - np.exp(-((rf / (2.0 * g.dd)) ** 2)))
    mottle = rng.uniform(0.02, 0.06) * _smooth_noise(rng, (n, n), 6.0 * k) + 0.015 * _smooth_noise(rng, (n, n), 0.8 * k)
    grain = rng.uniform(0.01, 0.03) * _smooth_noise(rng, (n, n), 0.6)  # fine granular pigment texture
    refl = np.stack([base[c] * (1.0 + mottle * m + tig * w + grain * m) for c, (m, w) in
                     enumerate(((0.6, 0.2), (1.0, 0.85), (1.0, 0.75)))])
    if rng.random() < 0.55:
        # Nerve-fibre-layer sheen (young eyes): fine whitish striations radiating from the disc, strongest
        # above and below it where the fibre bundles are thickest.
        theta = np.arctan2(gy - g.dy, gx - g.dx)
        rho = np.sqrt((gx - g.dx) ** 2 + (gy - g.dy) ** 2) / g.dd
        spokes = _smooth_noise(rng, (1, 1440), 1.0)[0]
        streak = np.clip(np.interp(theta, np.linspace(-math.pi, math.pi, 1440, endpoint=False), spokes,
                                   period=_TWO_PI), 0.0, None)
        fade = np.exp(-(((rho - 1.0) / 0.7) ** 2)) * np.clip(rho - 0.5, 0.0, 0.2) * 5.0 * np.sin(theta) ** 4
        sheen = (rng.uniform(0.015, 0.045) * streak * fade).astype(np.float32)
        refl = refl + sheen[None] * np.array([0.55, 0.5, 0.5], dtype=np.float32)[:, None, None]
    # Illumination: radial fall-off, a tilt (uneven illumination), slow blotches, channel-dependent fall-off.
    rr = np.sqrt((gx - g.cx) ** 2 + (gy - g.cy) ** 2) / g.r
    bright = rng.uniform(1.0, 1.35)
    vign = rng.uniform(0.2, 0.6) * (1.0 - np.clip(rr, 0, 1.2) ** rng.uniform(1.8, 3.8))
    tilt_dir = rng.uniform(0, _TWO_PI)
    tilt = rng.uniform(0.0, 0.3) * (math.cos(tilt_dir) * (gx - g.cx) + math.sin(tilt_dir) * (gy - g.cy)) / g.r
    blotches = 1.0 + 0.07 * _smooth_noise(rng, (n, n), 12.0 * k)
    light = bright * (1.0 - rng.uniform(0.2, 0.6) + vign) * (1.0 + tilt) * blotches
    light = np.clip(light, 0.05, None)
    expo = np.array([0.8, 1.1, 1.2]) + rng.normal(0.0, 0.05, 3)
    illum = np.stack([light ** e for e in expo]).astype(np.float32)
    lit = refl * illum
    if rng.random() < 0.3:  # flare: a whitish haze along part of the rim
        theta = np.arctan2(gy - g.cy, gx - g.cx)
        lobe = np.clip(np.cos(theta - rng.uniform(0, _TWO_PI)), 0, 1) ** 2
        haze = rng.uniform(0.06, 0.25) * lobe * np.exp(-(((1.0 - rr) / rng.uniform(0.08, 0.2)) ** 2))
        lit = lit + haze[None] * np.array([1.0, 0.85, 0.6], dtype=np.float32)[:, None, None]
    image = np.empty((size, size, 3), dtype=np.float32)
    for c in range(3):
        image[..., c] = _upsample(lit[c], size)
    return image, illum, {"pigment": pigment, "tigroid": tigroid}


def _draw_disc(rng: np.random.Generator, img: np.ndarray, illum: np.ndarray, g: _Geometry, size: int) -> None:
    s = float(size)
    rd = g.rd * s
    cx, cy = g.dx * s - 0.5, g.dy * s - 0.5
    win = _patch(cx, cy, 2.6 * rd, size)
    if win is None:
        return
    sl, xx, yy = win
    light = _bilinear(illum, g.dx, g.dy)
    elong = rng.uniform(1.0, 1.15)
    ang = math.pi / 2 + rng.normal(0, 0.15)  # discs are slightly taller than wide
    alpha, q = _blob(xx, yy, rd, elong, ang, _harmonics(rng, 0.025, 3), max(1.0, rng.uniform(0.1, 0.25) * rd))
    temporal = np.clip(xx * g.t / rd, -1.0, 1.0)  # the temporal rim is thinner, so paler
    rim = np.array([0.95, 0.54, 0.36], dtype=np.float32) * rng.uniform(0.9, 1.1) * (1.0 + rng.normal(0, 0.04, 3))
    cup_col = np.array([1.05, 0.86, 0.64], dtype=np.float32) * rng.uniform(0.95, 1.15)
    cup_r = rng.uniform(0.25, 0.5) * rd
    shift = rng.uniform(0.05, 0.2) * rd * g.t
    cup, qc = _blob(xx - shift, yy, cup_r, rng.uniform(1.0, 1.3), ang, _harmonics(rng, 0.06, 4),
                    max(1.0, rng.uniform(0.25, 0.6) * cup_r))
    patch = img[sl]
    # Neuroretinal rim: pinker at the margin, brightening towards the cup; the cup is pale yellow-white.
    towards_cup = np.clip(1.0 - q, 0.0, 1.0) ** 2 * rng.uniform(0.1, 0.4)
    colour = rim[None, None, :] * (1.0 + 0.1 * temporal)[..., None] * light
    colour = colour + np.maximum(cup, towards_cup)[..., None] * (cup_col * light - colour)
    if rng.random() < 0.25:  # peripapillary atrophy: a pale or pigmented crescent on the temporal side
        ring, _ = _blob(xx - 0.3 * rd * g.t, yy, rd * rng.uniform(1.0, 1.15), elong, ang, None, max(1.0, 0.15 * rd))
        outside, _ = _blob(xx, yy, rd * 1.02, elong, ang, None, max(1.0, 0.15 * rd))
        temporal_side = np.clip(xx * g.t / rd * 2.0, 0.0, 1.0)
        crescent = ring * (1.0 - outside) * temporal_side * rng.uniform(0.25, 0.5)
        ppa = (np.array([0.85, 0.62, 0.42]) if rng.random() < 0.6 else np.array([0.42, 0.24, 0.15])).astype(np.float32)
        patch += crescent[..., None] * (ppa * light - patch)
    # The rim is translucent (the background shows through it), the cup is not.
    opacity = alpha * (rng.uniform(0.7, 0.9) + (1.0 - rng.uniform(0.7, 0.9)) * cup)
    patch += opacity[..., None] * (colour - patch)


def _draw_macula(rng: np.random.Generator, img: np.ndarray, g: _Geometry, size: int) -> None:
    s = float(size)
    sig_m = rng.uniform(0.45, 0.75) * g.dd * s
    sig_f = rng.uniform(0.1, 0.18) * g.dd * s
    win = _patch(g.fx * s - 0.5, g.fy * s - 0.5, 3.0 * sig_m, size)
    if win is None:
        return
    sl, xx, yy = win
    r2 = xx * xx + yy * yy
    dark = rng.uniform(0.2, 0.42) * np.exp(-r2 / (2 * sig_m**2))  # macular pigment
    dark = dark + rng.uniform(0.08, 0.25) * np.exp(-r2 / (2 * sig_f**2))  # the foveal pit
    img[sl] *= 1.0 - dark[..., None] * np.array([0.4, 0.75, 0.8], dtype=np.float32)
    if rng.random() < 0.5:  # foveal light reflex
        sig_r = max(0.7, 0.003 * s)
        img[sl] *= (1.0 + rng.uniform(0.1, 0.35) * np.exp(-r2 / (2 * sig_r**2)))[..., None]


def _draw_vessels(img: np.ndarray, trees: list[tuple[str, np.ndarray]], size: int, contrast: float,
                  reflex: float = 0.0) -> None:
    """Darken ``img`` along the vessel trees (``kind`` "a" artery, "v" vein, "n" new vessels)."""
    s = float(size)
    absorb = {"v": _VEIN_ABSORB, "a": _ARTERY_ABSORB, "n": _NV_ABSORB}
    flat = img.reshape(-1, 3)
    scale = 512.0 / s  # darkness depends on the width in 512-px pixels, which keeps S-invariance
    side = size + 2 * _PAD
    for kind in ("a", "v", "n"):
        polys = [np.column_stack([p[:, 0] * s - 0.5, p[:, 1] * s - 0.5, p[:, 2] * s]) for k, p in trees if k == kind]
        if not polys:
            continue
        depth = np.full((side, side), -1.0, dtype=np.float32)
        ratio = np.full((side, side), -1.0, dtype=np.float32)
        _splat_tubes(depth, ratio, _densify(polys))
        depth = depth[_PAD:-_PAD, _PAD:-_PAD].reshape(-1)
        idx = np.flatnonzero(depth > -0.5)
        m = depth[idx]
        t = np.clip(ratio[_PAD:-_PAD, _PAD:-_PAD].reshape(-1)[idx], 0.12, 1.0)
        hw = np.maximum(m, 0.05) / t * scale  # local half-width in 512-px pixels
        cover = np.clip(m + 0.5, 0.0, 1.0)
        # Beer-Lambert through a cylinder: the path length across the vessel follows sqrt(1 - (d/hw)^2), and the
        # darkness at the centre grows with the vessel's width, so capillaries stay faint.
        centre = 1.0 - np.exp(-((hw / 1.4) ** 1.3))
        density = cover * centre * np.sqrt(t * (2.0 - t)) * contrast
        if kind == "a" and reflex > 0:  # central light reflex of larger arteries
            density *= 1.0 - reflex * np.clip((hw - 1.2) / 1.5, 0.0, 1.0) * np.exp(-(((1.0 - t) / 0.22) ** 2))
        flat[idx] *= 1.0 - density[:, None] * absorb[kind][None, :]


def _with_core(alpha: np.ndarray, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Guarantee a drawn lesion at least one masked pixel: a sub-pixel shape keeps its nearest pixel."""
    if not (alpha > MASK_ALPHA_THRESHOLD).any():
        d2 = xx * xx + yy * yy
        i, j = np.unravel_index(int(np.argmin(d2)), d2.shape)
        alpha = alpha.copy()
        alpha[i, j] = 1.0
    return alpha


def _draw_lesion(les: dict, img: np.ndarray, illum: np.ndarray, size: int) -> tuple[tuple, np.ndarray] | None:
    """Draw one lesion into ``img``; return its window and coverage ``alpha`` (mask = alpha > 0.5)."""
    s = float(size)
    cx, cy = les["x"] * s - 0.5, les["y"] * s - 0.5
    kind = les["kind"]
    light = _bilinear(illum, les["x"], les["y"])
    if kind == "microaneurysm":
        r = max(1.0, les["r"] * s)
        win = _patch(cx, cy, r + 2.0, size)
        if win is None:
            return None
        sl, xx, yy = win
        d = np.sqrt(xx * xx + yy * yy)
        alpha = _with_core(np.clip(r - d + 0.5, 0.0, 1.0), xx, yy)
        dens = alpha * les["strength"] * (0.75 + 0.25 * np.clip(1.0 - d / r, 0, 1))
        img[sl] *= 1.0 - dens[..., None] * _MA_ABSORB
        return sl, alpha
    if kind in ("blot", "flame"):
        r = max(1.2, les["r"] * s)
        ext = r * math.sqrt(les["aspect"]) * 1.7 + 3.0
        win = _patch(cx, cy, ext, size)
        if win is None:
            return None
        sl, xx, yy = win
        edge = max(1.0, (0.35 if kind == "flame" else 0.3) * r)
        alpha, q = _blob(xx, yy, r, les["aspect"], les["angle"], les["harm"], edge, les.get("taper", 0.0))
        alpha = _with_core(alpha, xx, yy)
        core = 0.7 + 0.3 * np.clip(1.0 - q, 0, 1)  # blood is thickest in the middle
        if kind == "flame":  # streaks along the nerve fibres
            across = (yy * math.cos(les["angle"]) - xx * math.sin(les["angle"])) / max(r * 0.25, 0.8)
            core = core * (0.8 + 0.2 * np.cos(across * 2.5 + les["phase"]))
        dens = alpha * les["strength"] * core
        img[sl] *= 1.0 - dens[..., None] * _BLOOD_ABSORB
        return sl, alpha
    if kind == "preretinal":
        r = les["r"] * s
        ext = r * 1.4 + 3.0
        win = _patch(cx, cy, ext, size)
        if win is None:
            return None
        sl, xx, yy = win
        # A horizontally elongated blob whose top is cut by a horizontal fluid level (boat shape).
        b = r * les["aspect"]  # vertical half-height; r is the horizontal half-width
        alpha_e, q = _blob(xx, yy, r * math.sqrt(les["aspect"]), 1.0 / les["aspect"], les["angle"], les["harm"],
                           max(1.0, 0.03 * r))
        level = -b * (1.0 - les["level"])
        below = yy - level  # px below the fluid level
        alpha = _with_core(np.minimum(alpha_e, np.clip(below + 0.5, 0.0, 1.0)).astype(np.float32), xx, yy)
        # Red cells settle: darker towards the bottom, paler serum just under the level, slight mottling.
        serum = np.clip(1.0 - below / (les["serum"] * b + 1.0), 0, 1) ** 1.5
        settle = np.clip(below / (2.0 * b), 0.0, 1.0)
        mottle = np.zeros_like(alpha)
        for ox, oy, pr, amp in les["clots"]:
            mottle += amp * np.exp(-(((xx - ox * r) ** 2 + (yy - oy * b) ** 2) / (2 * (pr * r) ** 2)))
        dark = np.array([0.58, 0.09, 0.06], dtype=np.float32) * light
        pale = np.array([0.74, 0.3, 0.17], dtype=np.float32) * light
        shade = (1.0 - 0.25 * settle - 0.15 * mottle)[..., None]
        colour = (dark + serum[..., None] * (pale - dark)) * shade
        patch = img[sl]
        patch += (alpha * les["strength"])[..., None] * (colour - patch)
        return sl, alpha
    if kind == "hard_exudate":
        r = max(0.9, les["r"] * s)
        ext = r * math.sqrt(les["aspect"]) * 1.6 + 2.0
        win = _patch(cx, cy, ext, size)
        if win is None:
            return None
        sl, xx, yy = win
        alpha, q = _blob(xx, yy, r, les["aspect"], les["angle"], les["harm"], 1.0)
        alpha = _with_core(alpha, xx, yy)
        colour = np.array([1.02, 0.9, 0.42], dtype=np.float32) * light
        opacity = alpha * les["strength"] * (0.85 + 0.15 * np.clip(1.0 - q, 0, 1))
        patch = img[sl]
        patch += opacity[..., None] * (colour - patch)
        return sl, alpha
    if kind == "cotton_wool":
        r = les["r"] * s
        ext = r * math.sqrt(les["aspect"]) * 2.2 + 2.0
        win = _patch(cx, cy, ext, size)
        if win is None:
            return None
        sl, xx, yy = win
        alpha, q = _blob(xx, yy, r, les["aspect"], les["angle"], les["harm"], max(1.0, 0.8 * r))
        alpha = _with_core(alpha, xx, yy)
        fluff = np.zeros_like(alpha)
        for ox, oy, pr in les["puffs"]:
            fluff = np.maximum(fluff, np.exp(-(((xx - ox * r) ** 2 + (yy - oy * r) ** 2) / (2 * (pr * r) ** 2))))
        colour = np.array([1.02, 0.9, 0.74], dtype=np.float32) * light
        # Feathered: opacity follows a smoothstep of the coverage, so the edge has no visible outline.
        opacity = alpha * alpha * (3.0 - 2.0 * alpha) * les["strength"] * (0.6 + 0.4 * fluff)
        patch = img[sl]
        patch += opacity[..., None] * (colour - patch)
        return sl, alpha
    raise ValueError(f"unknown lesion kind {kind!r}")  # pragma: no cover


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


def _synthesize(size: int, seed: int, grade: int | None, draw_lesions: bool = True) -> FundusSample:
    """:func:`synthesize_fundus` with a switch to leave the lesions out (everything else unchanged)."""
    size = _check_size(size)
    seed = _check_seed(seed)
    grade = _check_grade(grade)
    rng_grade, rng_anat, rng_tex, rng_les, rng_cam = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5))
    requested = int(rng_grade.integers(0, 5)) if grade is None else grade
    eye, g = _sample_geometry(rng_anat)
    trees = _grow_vessels(rng_anat, g)
    img, illum, look = _background(rng_tex, g, size)
    _draw_disc(rng_anat, img, illum, g, size)
    _draw_macula(rng_anat, img, g, size)
    plan = _plan(rng_les, requested)
    lesions = _layout(rng_les, g, plan)
    nv = _neovascular_tufts(rng_les, g) if plan["NV"] else []
    vessel_contrast = rng_tex.uniform(0.75, 1.05)
    reflex = rng_tex.uniform(0.2, 0.5) if rng_tex.random() < 0.6 else 0.0
    _draw_vessels(img, trees + (nv if draw_lesions else []), size, vessel_contrast, reflex)
    _distractors(rng_tex, img, illum, g, size)
    drawn = []
    windows = []
    if draw_lesions:
        for les in lesions:
            res = _draw_lesion(les, img, illum, size)
            windows.append(res)
    image, fov = _finish(rng_cam, img, g, size)

    masks = {t: np.zeros((size, size), dtype=bool) for t in LESION_TYPES}
    counts: dict[str, Any] = {"MA": 0, "HE": 0, "EX": 0, "SE": 0, "PRH": 0, "HE_quadrants": [0, 0, 0, 0]}
    for les, res in zip(lesions, windows):
        if res is None:
            continue
        sl, alpha = res
        visible = (alpha > MASK_ALPHA_THRESHOLD) & fov[sl]
        if not visible.any():
            continue  # not drawn where it counts: it does not enter the grade either
        masks[les["type"]][sl] |= visible
        if les["kind"] == "preretinal":
            counts["PRH"] += 1
        else:
            counts[les["type"]] += 1
            if les["type"] == "HE":
                counts["HE_quadrants"][g.quadrant(les["x"], les["y"])] += 1
        drawn.append({"type": les["type"], "kind": les["kind"],
                      "center": (round(les["x"] * size - 0.5, 2), round(les["y"] * size - 0.5, 2)),
                      "radius": round(max(les["r"] * size, 1.0), 2),
                      "quadrant": QUADRANTS[g.quadrant(les["x"], les["y"])]})
    label = grade_from_lesions(counts)
    meta = {
        "seed": seed,
        "size": size,
        "requested_grade": requested,
        "eye": eye,
        "disc_center": (g.dx * size - 0.5, g.dy * size - 0.5),
        "disc_radius": g.rd * size,
        "fovea_center": (g.fx * size - 0.5, g.fy * size - 0.5),
        "fov_center": (g.cx * size - 0.5, g.cy * size - 0.5),
        "fov_radius": g.r * size,
        "fov_half_height": min(g.hh, g.r) * size,
        "severe_rule": plan["severe_rule"] if label == 3 else None,
        "neovascularisation": bool(plan["NV"] and draw_lesions),
        "pigment": round(float(look["pigment"]), 3),
        "lesions": drawn,
    }
    return FundusSample(image=image, masks=masks, grade=label, referable=label >= 2, counts=counts, meta=meta)


def synthesize_fundus(size: int, seed: int, grade: int | None = None) -> FundusSample:
    """Draw one synthetic fundus photograph with lesion masks and its ICDR grade.

    Args:
        size: side ``S`` of the square image in pixels, ``MIN_SIZE`` (128) to ``MAX_SIZE`` (2048).
        seed: non-negative integer; the result is a pure function of ``(size, seed, grade)`` (only
            ``numpy.random.default_rng`` streams derived from ``seed`` are used, no global state).
        grade: target ICDR grade 0-4, or ``None`` to draw one uniformly from the seed.

    Returns:
        A :class:`FundusSample`; its ``grade`` is computed from the drawn lesions by
        :func:`grade_from_lesions` and equals the target grade.

    Raises:
        ValueError: ``size`` outside 128..2048, a negative ``seed``, or ``grade`` outside 0..4.
    """
    return _synthesize(size, seed, grade, draw_lesions=True)


# --------------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------------


def sample_seed(seed: int, index: int) -> int:
    """The image seed used by :func:`generate_dataset` for image ``index`` of a dataset with ``seed``.

    ``synthesize_fundus(size, sample_seed(seed, i), label_i)`` regenerates image ``i`` alone.
    """
    _check_seed(seed)
    _check_seed(index, "index")
    hi, lo = np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint32)
    return (int(hi) << 31) ^ int(lo)


def _apportion(total: int, weights: np.ndarray) -> np.ndarray:
    """Split ``total`` into integers proportional to ``weights`` (largest remainder, ties to the lower index)."""
    w = np.asarray(weights, dtype=np.float64)
    share = w / w.sum() * total
    counts = np.floor(share).astype(np.int64)
    rest = total - int(counts.sum())
    order = sorted(range(len(w)), key=lambda k: (-(share[k] - counts[k]), k))
    for k in order[:rest]:
        counts[k] += 1
    return counts


def _assign(n: int, seed: int, split: np.ndarray, weights: np.ndarray) -> tuple[list[int], list[int]]:
    """Target grade and split index per image: grade quotas, then stratified, globally balanced splits."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0x5EED,)))
    quota = _apportion(n, weights)
    grades = rng.permutation(np.repeat(np.arange(5), quota)).tolist()
    which = [0] * n
    assigned = np.zeros(len(split))
    seen = 0
    active = split > 0
    for grade in range(5):
        members = [i for i in range(n) if grades[i] == grade]
        if not members:
            continue
        members = [members[k] for k in rng.permutation(len(members))]
        seen += len(members)
        want = np.clip(split * seen - assigned, 0, None)
        counts = _apportion(len(members), want if want.sum() > 0 else split)
        if len(members) >= int(active.sum()):  # every split gets this grade when there are enough images
            for k in np.flatnonzero(active & (counts == 0)):
                counts[int(np.argmax(counts))] -= 1
                counts[k] += 1
        assigned += counts
        pos = 0
        for k, c in enumerate(counts):
            for i in members[pos : pos + int(c)]:
                which[i] = k
            pos += int(c)
    return grades, which


def _write_one(task: tuple[str, int, int, int, int]) -> dict[str, Any]:
    """Generate and save image ``i`` (worker function; top level so that it pickles)."""
    out_dir, i, size, seed_i, grade = task
    sample = synthesize_fundus(size, seed_i, grade)
    stem = f"synth_{i:05d}"
    root = Path(out_dir)
    Image.fromarray(sample.image).save(root / "images" / f"{stem}.png", compress_level=3)
    item: dict[str, Any] = {"image": f"images/{stem}.png", "label": int(sample.grade),
                            "referable": int(sample.referable)}
    for t in LESION_TYPES:
        mask = Image.fromarray(sample.masks[t].astype(np.uint8) * 255)
        mask.save(root / "masks" / f"{stem}_{t}.png", compress_level=3)
        item[f"mask_{t}"] = f"masks/{stem}_{t}.png"
    item["seed"] = int(seed_i)
    item["eye"] = sample.meta["eye"]
    item["counts"] = {k: (list(v) if isinstance(v, list) else int(v)) for k, v in sample.counts.items()}
    return item


def generate_dataset(
    out_dir: str | os.PathLike,
    n: int,
    size: int = 256,
    seed: int = 0,
    split: Sequence[float] = (0.7, 0.15, 0.15),
    grade_weights: Sequence[float] | None = None,
    progress: bool = True,
    overwrite: bool = False,
    workers: int = 1,
) -> Path:
    """Write ``n`` synthetic fundus images, their lesion masks and a MONAI datalist.

    Layout (paths in the datalist are relative to ``out_dir``)::

        out_dir/images/synth_00000.png          RGB uint8
        out_dir/masks/synth_00000_{MA,HE,EX,SE}.png   uint8 0/255
        out_dir/datalist.json                   {"training": [...], "validation": [...], "test": [...], ...}

    Each item is ``{"image", "label" (grade), "referable" (0/1), "mask_MA", "mask_HE", "mask_EX", "mask_SE",
    "seed", "eye", "counts"}``. Grades are allotted by quota (largest remainder of ``n * grade_weights``) and
    shuffled; splits are stratified by grade so that every split gets every grade when there are enough
    images. Image ``i`` is ``synthesize_fundus(size, sample_seed(seed, i), label)``; the whole dataset is a
    pure function of ``(n, size, seed, split, grade_weights)``.

    Args:
        out_dir: output folder (created if needed).
        n: number of images, >= 1.
        size: image side in px, 128..2048.
        seed: non-negative dataset seed.
        split: fractions for training, validation, test; non-negative, summing to 1.
        grade_weights: five non-negative weights for grades 0..4 (not all zero); ``None`` is uniform.
        progress: show a tqdm progress bar.
        overwrite: allow replacing an earlier dataset in ``out_dir``; its ``synth_*`` images and masks are
            deleted first (no other file is touched).
        workers: processes to use (1 = in-process; 0 = one per CPU).

    Returns:
        Path of the written ``datalist.json``.

    Raises:
        ValueError: an invalid argument (the message states the value and what is expected), or ``out_dir``
            already holding a dataset (``datalist.json`` or ``synth_*`` files) without ``overwrite=True``.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1 (number of images), got {n!r}")
    n = int(n)
    size = _check_size(size)
    seed = _check_seed(seed)
    try:
        fractions = np.asarray([float(f) for f in split], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"split must be three fractions (training, validation, test), got {split!r}") from err
    if fractions.shape != (3,) or (fractions < 0).any() or not np.isfinite(fractions).all() \
            or abs(fractions.sum() - 1.0) > 1e-6:
        raise ValueError(f"split must be three non-negative fractions (training, validation, test) summing to 1, "
                         f"got {tuple(split)!r}")
    if grade_weights is None:
        weights = np.ones(5)
    else:
        try:
            weights = np.asarray([float(w) for w in grade_weights], dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"grade_weights must be 5 non-negative numbers (grades 0..4), got {grade_weights!r}") from err
        if weights.shape != (5,) or (weights < 0).any() or not np.isfinite(weights).all() or weights.sum() <= 0:
            raise ValueError(f"grade_weights must be 5 non-negative numbers (grades 0..4), not all zero, "
                             f"got {tuple(grade_weights)!r}")
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 0:
        raise ValueError(f"workers must be an integer >= 0 (0 = one per CPU), got {workers!r}")
    workers = int(workers) or (os.cpu_count() or 1)

    root = Path(out_dir).expanduser()
    if root.exists() and not root.is_dir():
        raise ValueError(f"out_dir {root} exists and is not a folder")
    datalist_path = root / _DATALIST_NAME
    own = [p for sub in ("images", "masks") if (root / sub).is_dir()
           for p in (root / sub).iterdir() if _OWN_FILE.match(p.name)]
    if (datalist_path.exists() or own) and not overwrite:
        what = datalist_path if datalist_path.exists() else root / "images"
        raise ValueError(f"{what} already holds a dataset; refusing to overwrite it (pass overwrite=True, "
                         f"or --overwrite on the command line, or choose another folder)")
    for p in own:
        p.unlink()
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)

    grades, which = _assign(n, seed, fractions, weights)
    tasks = [(str(root), i, size, sample_seed(seed, i), grades[i]) for i in range(n)]
    from tqdm import tqdm

    items: list[dict[str, Any]] = []
    bar = tqdm(total=n, desc="synth fundus", unit="img", disable=not progress)
    try:
        if workers > 1 and n > 1:
            import multiprocessing

            with multiprocessing.get_context().Pool(min(workers, n)) as pool:
                for item in pool.imap(_write_one, tasks, chunksize=max(1, min(16, n // (4 * workers)))):
                    items.append(item)
                    bar.update(1)
        else:
            for task in tasks:
                items.append(_write_one(task))
                bar.update(1)
    finally:
        bar.close()
    for i, item in enumerate(items):
        if item["label"] != grades[i]:  # the rules and the sampler disagree: never write a wrong label
            raise RuntimeError(f"image {i}: drawn lesions grade {item['label']}, requested {grades[i]}")

    datalist = {
        "name": "MedLocker synthetic fundus",
        "description": (f"{n} procedural colour fundus photographs ({size}x{size} px, seed {seed}) with IDRiD-style "
                        "lesion masks (MA, HE, EX, SE) and ICDR grades computed from the lesions; "
                        "generated by monai_medlocker.data.synthetic"),
        "reference": "monai_medlocker.data.synthetic.generate_dataset",
        "licence": "CC0-1.0 (synthetic)",
        "num_classes": 5,
        "labels": {str(k): v for k, v in GRADE_NAMES.items()},
        "lesion_types": list(LESION_TYPES),
        "lesion_names": dict(LESION_NAMES),
        "mask_rule": f"lesion coverage alpha > {MASK_ALPHA_THRESHOLD}",
        "quadrants": list(QUADRANTS),
        "size": size,
        "seed": seed,
        "split": [float(f) for f in fractions],
        "grade_weights": [float(w) for w in weights],
        "numTraining": sum(1 for k in which if k == 0),
    }
    for k, name in enumerate(_SPLITS):
        datalist[name] = [items[i] for i in range(n) if which[i] == k]
    tmp = root / f".{_DATALIST_NAME}.tmp"
    tmp.write_text(json.dumps(datalist, indent=1), encoding="utf-8")
    os.replace(tmp, datalist_path)  # atomic: a datalist only ever lists files that exist
    return datalist_path


# --------------------------------------------------------------------------------------------------
# The real sample shipped with the package
# --------------------------------------------------------------------------------------------------


def write_real_sample(path: str | os.PathLike = REAL_SAMPLE_PATH, max_side: int = 1024) -> Path:
    """Save scikit-image's ``data.retina()`` photograph (CC0, no DR grade) as a PNG, downscaled to ``max_side``.

    Args:
        path: destination PNG.
        max_side: longest side of the saved image in px (never upscaled).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    from skimage import data

    image = Image.fromarray(np.asarray(data.retina(), dtype=np.uint8))
    scale = min(1.0, max_side / max(image.size))
    if scale < 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, optimize=True)
    return path


def load_real_sample() -> np.ndarray:
    """The shipped real fundus photograph (``assets/retina_skimage.png``) as an ``(H, W, 3)`` uint8 array."""
    if not REAL_SAMPLE_PATH.is_file():
        raise FileNotFoundError(f"real sample image missing: {REAL_SAMPLE_PATH} (see write_real_sample)")
    return np.asarray(Image.open(REAL_SAMPLE_PATH).convert("RGB"))
