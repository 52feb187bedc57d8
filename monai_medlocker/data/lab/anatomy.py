"""Anatomy of the synthetic fundus lab: field of view and eye geometry, vessel trees, background, disc, macula.

Everything here is drawn from the ``anat`` and ``tex`` random streams of an image; see
:mod:`monai_medlocker.data.synthetic` for the whole lab.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from monai_medlocker.data.lab.raster import (
    _PAD,
    _TWO_PI,
    _bilinear,
    _blob,
    _densify,
    _harmonics,
    _patch,
    _smooth_noise,
    _splat_tubes,
    _upsample,
)

__all__: list[str] = []  # internal to the lab; the public API is monai_medlocker.data.synthetic

_LOWRES = 256  # side of the grid on which smooth fields (texture, illumination) are drawn


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


# Fraction of each channel that blood of full optical density removes: blood absorbs green and blue far
# more than red, so vessels and haemorrhages look dark red, veins (deoxygenated) darker than arteries.
_VEIN_ABSORB = np.array([0.26, 0.68, 0.55], dtype=np.float32)
_ARTERY_ABSORB = np.array([0.12, 0.5, 0.38], dtype=np.float32)
_NV_ABSORB = np.array([0.15, 0.55, 0.42], dtype=np.float32)
_REFLEX_GAIN = np.array([0.5, 1.5, 1.55], dtype=np.float32)  # whitish: the reflex restores green and blue


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
                  reflex: float = 0.0, stripe: float = 0.0, keepout: np.ndarray | None = None) -> None:
    """Darken ``img`` along the vessel trees (``kind`` "a" artery, "v" vein, "n" new vessels).

    ``reflex`` (lab v1 and v2) pales the centre of larger arteries. ``stripe`` (lab v2 only, a DR look-alike) adds
    the vessel light reflex of young eyes: a thin bright whitish line along the centre of the larger arteries and,
    fainter, veins; it is left out where ``keepout`` (a ``(size, size)`` bool map) is set, i.e. near lesions.
    """
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
        if stripe > 0 and kind != "n":
            glint = (stripe * (1.0 if kind == "a" else 0.6) * np.clip((hw - 1.5) / 1.5, 0.0, 1.0)
                     * np.exp(-(((1.0 - t) / 0.22) ** 2)) * cover)
            if keepout is not None:
                glint *= ~keepout.reshape(-1)[idx]
            flat[idx] *= 1.0 + glint[:, None] * _REFLEX_GAIN[None, :]
