"""Lesions of the synthetic fundus lab: lesion types, ICDR grading rules, lesion plan, layout and drawing.

The rules (:func:`grade_from_lesions`) are the source of truth of every generated label; see
:mod:`monai_medlocker.data.synthetic` for the whole lab.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from monai_medlocker.data.lab.anatomy import _Geometry
from monai_medlocker.data.lab.raster import _TWO_PI, _bilinear, _blob, _harmonics, _patch

__all__ = [
    "LESION_TYPES",
    "LESION_NAMES",
    "GRADE_NAMES",
    "QUADRANTS",
    "SEVERE_HE_PER_QUADRANT",
    "SEVERE_SOFT_EXUDATES",
    "MASK_ALPHA_THRESHOLD",
    "grade_from_lesions",
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
MASK_ALPHA_THRESHOLD = 0.5


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



# Fraction of each channel that blood of full optical density removes: blood absorbs green and blue far
# more than red, so vessels and haemorrhages look dark red, veins (deoxygenated) darker than arteries.
_BLOOD_ABSORB = np.array([0.36, 0.76, 0.7], dtype=np.float32)
_MA_ABSORB = np.array([0.34, 0.86, 0.8], dtype=np.float32)  # saccular: thick blood, dark even when tiny


def _with_core(alpha: np.ndarray, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Guarantee a drawn lesion at least one masked pixel: a sub-pixel shape keeps its nearest pixel."""
    if not (alpha > MASK_ALPHA_THRESHOLD).any():
        d2 = xx * xx + yy * yy
        i, j = np.unravel_index(int(np.argmin(d2)), d2.shape)
        alpha = alpha.copy()
        alpha[i, j] = 1.0
    return alpha


def _lesion_extent(les: dict, s: float) -> tuple[float, float]:
    """Drawing radius and window half-side of lesion ``les`` in px, at image side ``s``.

    The lesion's support (``alpha > 0``) lies inside the window, so the window bounds everything it draws.
    """
    kind = les["kind"]
    if kind == "microaneurysm":
        r = max(1.0, les["r"] * s)
        return r, r + 2.0
    if kind in ("blot", "flame"):
        r = max(1.2, les["r"] * s)
        return r, r * math.sqrt(les["aspect"]) * 1.7 + 3.0
    if kind == "preretinal":
        r = les["r"] * s
        return r, r * 1.4 + 3.0
    if kind == "hard_exudate":
        r = max(0.9, les["r"] * s)
        return r, r * math.sqrt(les["aspect"]) * 1.6 + 2.0
    if kind == "cotton_wool":
        r = les["r"] * s
        return r, r * math.sqrt(les["aspect"]) * 2.2 + 2.0
    raise ValueError(f"unknown lesion kind {kind!r}")  # pragma: no cover


def _lesion_keepout(lesions: list[dict], size: int, margin: float = 2.0) -> np.ndarray:
    """``(size, size)`` bool map of the lesions' drawing windows grown by ``margin`` px: where look-alikes may
    not be drawn, so that they never touch a lesion or its mask."""
    s = float(size)
    keep = np.zeros((size, size), dtype=bool)
    for les in lesions:
        _, ext = _lesion_extent(les, s)
        win = _patch(les["x"] * s - 0.5, les["y"] * s - 0.5, ext + margin, size)
        if win is not None:
            keep[win[0]] = True
    return keep


def _draw_lesion(les: dict, img: np.ndarray, illum: np.ndarray, size: int) -> tuple[tuple, np.ndarray] | None:
    """Draw one lesion into ``img``; return its window and coverage ``alpha`` (mask = alpha > 0.5)."""
    s = float(size)
    cx, cy = les["x"] * s - 0.5, les["y"] * s - 0.5
    kind = les["kind"]
    r, ext = _lesion_extent(les, s)
    win = _patch(cx, cy, ext, size)
    if win is None:
        return None
    sl, xx, yy = win
    light = _bilinear(illum, les["x"], les["y"])
    if kind == "microaneurysm":
        d = np.sqrt(xx * xx + yy * yy)
        alpha = _with_core(np.clip(r - d + 0.5, 0.0, 1.0), xx, yy)
        dens = alpha * les["strength"] * (0.75 + 0.25 * np.clip(1.0 - d / r, 0, 1))
        img[sl] *= 1.0 - dens[..., None] * _MA_ABSORB
        return sl, alpha
    if kind in ("blot", "flame"):
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
        alpha, q = _blob(xx, yy, r, les["aspect"], les["angle"], les["harm"], 1.0)
        alpha = _with_core(alpha, xx, yy)
        colour = np.array([1.02, 0.9, 0.42], dtype=np.float32) * light
        opacity = alpha * les["strength"] * (0.85 + 0.15 * np.clip(1.0 - q, 0, 1))
        patch = img[sl]
        patch += opacity[..., None] * (colour - patch)
        return sl, alpha
    if kind == "cotton_wool":
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
