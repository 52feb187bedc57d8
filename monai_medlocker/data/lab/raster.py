"""Rasterisation helpers of the synthetic fundus lab: tube splatting, windows, blobs, smooth noise, sampling.

Geometry is given in units of the image side ``S`` (x, y in [0, 1], pixel ``j`` has centre ``(j + 0.5) / S``);
these helpers turn it into pixels.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

__all__: list[str] = []  # internal to the lab; the public API is monai_medlocker.data.synthetic

_TWO_PI = 2.0 * math.pi

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
