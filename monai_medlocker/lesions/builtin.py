"""A weight-free classical lesion detector for colour fundus photographs (the default WSM source).

It needs no training and no download, works on any image size, and is tuned for **recall**: a
missed lesion lets the logo cover it (a clinical harm), while a false detection only takes some
freedom of placement away from the watermark. The steps, all on a fixed internal grid whose
longer side is ``working_size`` px (geometry in fractions of the field of view, so any camera
resolution behaves alike):

1. **Field of view (FOV)**: pixels brighter than a fraction of the bright level, largest
   component, holes filled. No FOV (a uniform or non-fundus image) is an error, never a guess.
2. **Contrast normalisation**: green channel (where blood and exudates have most contrast),
   divided by a background estimate (median filter on a coarse grid, inside the FOV only), so
   uneven illumination and vignetting cancel; the residual is scaled by its robust noise level.
3. **Red lesions** (microaneurysms, haemorrhages): multi-scale Hessian blob response of the
   dark residual. A round dark spot curves upwards in *both* principal directions, a vessel only
   across itself, so the smaller eigenvalue (damped by the eigenvalue ratio) suppresses vessels.
   Elongated (flame) haemorrhages curve like vessels but end, and are darker than vessels of their
   width: dark components of bounded extent and non-vessel thickness, taken at several darkness
   levels (as in MSER, so one touching a vessel is cut free at a deeper level), are candidates too.
   Large dark regions (pre-retinal haemorrhages) are found against a second, coarser background;
   those whose edge fades over more than ``DEEP_MAX_EDGE_WIDTH`` units are shading (a small pupil,
   a dark crescent) and are dropped. MA-sized dots off the vessel ridges count from ``MA_THRESHOLD``
   of the threshold (defocus flattens microaneurysms).
4. **Bright lesions** (hard and soft exudates): the same Hessian at bright polarity plus a local
   threshold on the residual.
5. **Extent**: each candidate grows into neighbouring pixels above ~1/3 of its peak contrast
   (lesion masks mark about half the peak), bounded by a distance tied to its detection scale, so
   a lesion touching a vessel does not drag the vessel tree into its box. Touching candidates
   bright candidates merge (a vessel crossing a soft exudate splits it in two); dark ones are kept
   apart by a one-pixel seam (else a chain of vessel pieces touching a haemorrhage becomes one box
   around a curved vessel). Each is padded by ``1 + 6 %`` (dark: ``RED_PAD + 6 %``) of its extent.
6. **Optic disc exclusion**: the disc is located (bright and where the vessels converge) and the
   disc-sized bright region on it is dropped; smaller bright candidates near it are kept, since
   exudates can lie there. Its centre, radius and contrast are reported.
7. Component maps go back to the native grid (nearest neighbour).

Output: a ``4 x H x W`` float32 map in ``[0, 1]`` in the channel order of :data:`LESION_CHANNELS`
(``MA``, ``HE``, ``EX``, ``SE``; red candidates go to ``MA``/``HE`` and bright ones to ``EX``/``SE``
by size). Each detected component carries one probability; ``0.5`` is the tuned operating point
(``LesionBBoxMask``'s default threshold). Sub-threshold candidates are kept with values below 0.5,
so lowering the threshold trades WSM area for recall. A report (FOV fraction, disc, counts, a
``confidence`` in ``[0, 1]`` and ``warnings``) goes to ``last_report`` / the MetaTensor meta: low
confidence is surfaced, never hidden.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

__all__ = [
    "LESION_CHANNELS",
    "DEFAULT_WORKING_SIZE",
    "LesionDetectionError",
    "EmptyImageError",
    "NoFieldOfViewError",
    "detect_lesions",
    "detect_fov",
]

LESION_CHANNELS: tuple[str, ...] = ("MA", "HE", "EX", "SE")
# The detection grid's longer side. 512 px costs 0.64x the pixels of the former 640 and needs no
# upsampling of 512 px photographs (benchmarks/results/lesions_speed.json: recall before and after).
DEFAULT_WORKING_SIZE = 512
# Large dark regions whose edge fades over more than this many units are shading, not haemorrhage
# (measured on lab v2 seed 777: haemorrhages 4-14, small-pupil and crescent shading 15-55).
DEEP_MAX_EDGE_WIDTH = 18.0
SPLIT_RED = True  # a seam between touching dark candidates (see step 5)
RED_PAD = 2.0  # px of the working grid around dark candidates: their faint rims reach past the grown region
# A dark candidate of at most MA_MAX_AREA unit^2, under MA_MAX_RIDGE of it on vessel ridges, counts from
# MA_THRESHOLD x the red threshold (defocus flattens microaneurysms). On lab v2 seeds 777 and 2027 (80
# images at 1024 px) 80 units^2 found 919 of 946 microaneurysms and 120 finds 922, at the same WSM (17.1%).
# A threshold of 0.6 finds 929 (18.4%), but on noisier images it boxes dozens of false dots (lab v1 at
# 384 px: 27 -> 70 MA boxes), which left no lesion-free place for a mark: 0.7 stays.
MA_MAX_AREA, MA_MAX_RIDGE, MA_THRESHOLD = 120.0, 0.6, 0.7
_EIGHT = np.ones((3, 3), dtype=bool)


class LesionDetectionError(ValueError):
    """The detector cannot run on this input; the message states what is wrong with it."""


class EmptyImageError(LesionDetectionError):
    """An image with no pixels, too small, or all black."""


class NoFieldOfViewError(LesionDetectionError):
    """No circular bright field of view on a dark surround was found: not a fundus photograph."""


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _as_hwc_uint8(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.size == 0:
        raise EmptyImageError(f"empty image: shape {arr.shape} has no pixels (expected an RGB fundus image)")
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = np.moveaxis(arr, 0, -1)  # channel-first (MONAI) -> channel-last
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
        raise ValueError(f"expected an H x W x 3 or 3 x H x W RGB image, got shape {arr.shape}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if min(arr.shape[:2]) < 16:
        raise EmptyImageError(f"image of {arr.shape[1]}x{arr.shape[0]} px is too small for lesion detection "
                              "(expected at least 16 px on each side)")
    if arr.dtype != np.uint8:
        f = arr.astype(np.float32)
        top = 1.0 if np.nanmax(f) <= 1.0 else 255.0  # float images in [0, 1] or [0, 255]
        arr = np.clip(np.nan_to_num(f) * (255.0 / top), 0, 255).astype(np.uint8)
    if int(arr.max()) <= 12:
        raise EmptyImageError(f"empty image: every pixel is black (maximum value {int(arr.max())}; expected a "
                              "bright fundus field of view)")
    if int(arr.max()) == int(arr.min()):
        raise NoFieldOfViewError(f"no field of view found: every pixel has the value {int(arr.max())} (a uniform "
                                 "image; expected a bright round fundus on a dark surround)")
    return np.ascontiguousarray(arr)


def _resize(arr: np.ndarray, shape: tuple[int, int], resample=Image.BILINEAR) -> np.ndarray:
    """Resize a 2-D float32 or uint8 array (or H x W x 3 uint8) to ``shape`` (rows, cols)."""
    if arr.shape[:2] == tuple(shape):
        return arr
    if arr.dtype == np.float32 and arr.ndim == 2:
        return np.asarray(Image.fromarray(arr, mode="F").resize((shape[1], shape[0]), resample), dtype=np.float32)
    return np.asarray(Image.fromarray(arr).resize((shape[1], shape[0]), resample))


# scipy.ndimage boundary modes and their OpenCV equivalents (scipy's "reflect" repeats the edge pixel).
_BORDERS = {"reflect": 2, "nearest": 1, "constant": 0}  # cv2.BORDER_REFLECT, BORDER_REPLICATE, BORDER_CONSTANT


def _gaussian_kernel(sigma: float, order: int, radius: int) -> np.ndarray:
    """The 1-D Gaussian (derivative) kernel of ``ndimage.gaussian_filter1d``, as a correlation kernel."""
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / (sigma * sigma) * x * x)
    phi /= phi.sum()
    if order == 0:
        return phi
    # d^n/dx^n of the Gaussian = q(x) * phi(x), with q from the recursion q' - x q / sigma^2 (scipy's kernel).
    q = np.zeros(order + 1)
    q[0] = 1.0
    d = np.diag(np.arange(1, order + 1), 1)  # derivative of a polynomial in coefficient form
    p = np.diag(np.ones(order) / -(sigma * sigma), -1)  # multiplication by -x / sigma^2
    for _ in range(order):
        q = d.dot(q) + p.dot(q)
    return ((x[:, None] ** np.arange(order + 1)).dot(q) * phi)[::-1]  # scipy convolves: reversed to correlate


def _gaussian(img: np.ndarray, sigma: float, order: tuple[int, int] = (0, 0), mode: str = "reflect") -> np.ndarray:
    """``ndimage.gaussian_filter(img, sigma, order, mode)`` in float32 (the same kernels, truncated at 4 sigma).

    OpenCV's separable filter runs it 5-15x faster than scipy's; the results agree to float32 rounding
    (about 1e-7 of the response; ``tests/test_lesions.py``). It runs on one OpenCV thread (the filters are
    small, and a pool only waits on a shared machine); the process's OpenCV setting is restored after.
    """
    import cv2

    src = np.ascontiguousarray(img, dtype=np.float32)
    if sigma <= 1e-15:  # scipy leaves the image as it is
        return src.copy()
    radius = int(4.0 * float(sigma) + 0.5)
    ky, kx = (_gaussian_kernel(float(sigma), o, radius).astype(np.float32) for o in order)
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        return cv2.sepFilter2D(src, cv2.CV_32F, kx, ky, borderType=_BORDERS[mode])
    finally:
        cv2.setNumThreads(previous)


def _median(values: np.ndarray, size: int) -> np.ndarray:
    """``ndimage.median_filter(values, size, mode="nearest")`` (the same result) by sorting windows in row blocks.

    scipy's rank filter is about 3x slower on the detector's coarse grids; blocks bound the memory.
    """
    half = size // 2
    padded = np.pad(values, half, mode="edge")
    out = np.empty_like(values)
    rows = max(1, (1 << 22) // max(1, values.shape[1] * size * size))
    for r0 in range(0, values.shape[0], rows):
        r1 = min(values.shape[0], r0 + rows)
        win = np.lib.stride_tricks.sliding_window_view(padded[r0:r1 + 2 * half], (size, size))
        win = win.reshape(r1 - r0, values.shape[1], size * size)
        out[r0:r1] = np.partition(win, size * size // 2, axis=-1)[..., size * size // 2]
    return out


def _norm_blur(values: np.ndarray, weight: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian average of ``values`` over the pixels where ``weight`` is set (normalised convolution)."""
    w = weight.astype(np.float32)
    num = _gaussian(values * w, sigma, mode="constant")
    den = _gaussian(w, sigma, mode="constant")
    return num / np.maximum(den, 1e-6)


def _fill_outside(values: np.ndarray, fov: np.ndarray, sigma: float) -> np.ndarray:
    """Replace pixels outside the FOV with a smooth continuation of the inside (no rim edges for filters)."""
    out = values.copy()
    out[~fov] = _norm_blur(values, fov, sigma)[~fov]
    still = ~fov & (out == 0)
    if still.any():
        out[still] = float(np.median(values[fov]))
    return out


def _hessian_eigs(img: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Scale-normalised Hessian eigenvalues (smaller, larger) of ``img`` at ``sigma``."""
    hxx = _gaussian(img, sigma, order=(0, 2), mode="nearest")
    hyy = _gaussian(img, sigma, order=(2, 0), mode="nearest")
    hxy = _gaussian(img, sigma, order=(1, 1), mode="nearest")
    half_tr = 0.5 * (hxx + hyy)
    root = np.sqrt(0.25 * (hxx - hyy) ** 2 + hxy * hxy)
    s2 = sigma * sigma
    return (half_tr - root) * s2, (half_tr + root) * s2


def _label_max(values: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Per-label maximum of ``values`` for labels 1..n (``ndimage.maximum`` sorts; this does not)."""
    out = np.full(n + 1, -np.inf, dtype=np.float64)
    sel = labels > 0
    np.maximum.at(out, labels[sel], values[sel])
    return out[1:]


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``ndimage.binary_fill_holes`` (same result): background not 4-connected to the border is filled.

    One labelling instead of scipy's dilation repeated until nothing changes.
    """
    labels, _ = ndimage.label(~mask)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    outside = np.zeros(labels.max() + 1, bool)
    outside[border] = True
    outside[0] = False
    return ~outside[labels]


def _robust_scale(values: np.ndarray) -> float:
    med = float(np.median(values))
    return max(1.4826 * float(np.median(np.abs(values - med))), 1e-6)


# --------------------------------------------------------------------------------------------------
# Field of view and optic disc
# --------------------------------------------------------------------------------------------------


def detect_fov(rgb: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """The field of view of a fundus photograph: H x W bool and a report.

    The FOV is the largest component brighter than 20 % of the bright level (the 99th
    percentile of the per-pixel channel maximum), holes filled. Fundus cameras image a
    round field on black, so a photograph whose "FOV" covers the whole frame, or whose
    surround is not dark, is not a fundus image.

    Raises:
        EmptyImageError: an image without pixels, or an all-black one.
        NoFieldOfViewError: a uniform image, nothing bright enough, a FOV under 5 % of the image, or no dark surround.
    """
    rgb = _as_hwc_uint8(rgb)
    lum = np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2]).astype(np.float32)
    bright = float(np.percentile(lum, 99))
    level = max(0.2 * bright, 12.0)
    binary = lum > level
    # Close small gaps (dark lesions, vessels at the rim) so that the FOV is one region.
    binary = ndimage.binary_opening(binary, iterations=2)
    labels, n = ndimage.label(binary)
    h, w = lum.shape
    if n == 0:
        raise NoFieldOfViewError(f"no field of view found: no region brighter than {level:.0f}/255 "
                                 "(expected a bright round fundus on a dark surround)")
    sizes = np.bincount(labels.ravel())[1:]
    fov = _fill_holes(labels == (int(np.argmax(sizes)) + 1))
    frac = float(fov.mean())
    outside = ~fov
    if frac < 0.05:
        raise NoFieldOfViewError(f"no field of view found: the largest bright region covers {100 * frac:.1f}% of the "
                                 "image (expected a round fundus covering at least 5%)")
    out_frac = float(outside.mean())
    inside_level = float(np.median(lum[fov]))
    outside_level = float(np.median(lum[outside])) if out_frac > 0 else inside_level
    if out_frac < 0.02 or outside_level > 0.35 * inside_level:
        raise NoFieldOfViewError(
            f"no field of view found: {100 * out_frac:.1f}% of the image lies outside the bright region, with median "
            f"level {outside_level:.0f} vs {inside_level:.0f} inside (expected a round fundus on a dark surround, "
            "at least 2% of the image dark); is this a fundus photograph?")
    ys, xs = np.nonzero(fov)
    cy, cx = float(ys.mean()), float(xs.mean())
    radius = 0.5 * float(max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1))
    fill = float(fov.sum()) / (math.pi * radius * radius)  # 1 for a disc; chord-cut fields a little less
    box_fill = float(fov.sum()) / float((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1))  # disc: pi/4
    report = {"fov_fraction": round(frac, 4), "fov_center": [round(cx, 1), round(cy, 1)],
              "fov_radius": round(float(radius), 1), "fov_fill": round(fill, 3), "fov_box_fill": round(box_fill, 3)}
    return fov, report


def _find_disc(green: np.ndarray, vessels: np.ndarray, fov: np.ndarray, fov_radius: float
               ) -> tuple[float, float, float, float]:
    """Optic disc centre (x, y), radius and contrast.

    The disc is a bright disc-sized region where the large vessels converge. Brightness alone
    confuses it with cotton-wool spots or pale exudate clusters, so the score adds the density of
    vessel pixels in a disc-sized neighbourhood (both in robust z-units inside the FOV).
    """
    rd = 0.11 * fov_radius  # the disc's radius is about 1/9 of a 45-degree field's radius
    k = 4  # disc-sized filters run on a 1/4 grid: the disc is large, and wide Gaussians are costly
    # Green: the red channel often saturates on and around the disc, the green one rarely does.
    lum_s, fov_s = green[::k, ::k], fov[::k, ::k]
    inner = ndimage.binary_erosion(fov_s, iterations=max(1, int(0.5 * rd / k)))
    if not inner.any():
        inner = fov_s
    # Contrast of a disc-sized average against its surround (difference of Gaussians).
    centre = _gaussian(lum_s, 0.6 * rd / k)
    surround = _norm_blur(lum_s, fov_s, 2.5 * rd / k)
    bright = centre - surround
    density = _norm_blur(vessels[::k, ::k].astype(np.float32), fov_s, 1.0 * rd / k)

    def zscore(v: np.ndarray) -> np.ndarray:
        return (v - np.median(v[inner])) / _robust_scale(v[inner])

    score = np.where(inner, zscore(bright) + 0.5 * zscore(density), -np.inf)
    iy, ix = np.unravel_index(int(np.argmax(score)), score.shape)
    contrast = float(bright[iy, ix]) / max(float(np.median(lum_s[fov_s])), 1e-6)
    return float(ix * k + (k - 1) / 2), float(iy * k + (k - 1) / 2), rd, contrast


# --------------------------------------------------------------------------------------------------
# The detector
# --------------------------------------------------------------------------------------------------


def _grow(seed_labels: np.ndarray, signal: np.ndarray, region: np.ndarray, reach: np.ndarray,
          fraction: float = 0.3, floor: float = 1.5) -> np.ndarray:
    """Grow labelled seeds to the lesion's edge: a half-maximum rule bounded by distance.

    A pixel joins its nearest seed when it lies inside ``region``, within ``reach`` (of that seed
    pixel) and its ``signal`` (contrast, in noise units) is above ``fraction`` of the seed's peak
    (and above ``floor``), connected to the seed. The lab's masks (and most manual ones) mark
    lesions down to about half their peak contrast, so ``fraction < 0.5`` errs on the safe side.

    Returns the grown label image (seed labels kept; unreached pixels 0).
    """
    seeds = seed_labels > 0
    if not seeds.any():
        return seed_labels
    n = int(seed_labels.max())
    peak = np.zeros(n + 1, np.float32)
    peak[1:] = _label_max(signal, seed_labels, n)
    dist, (iy, ix) = ndimage.distance_transform_edt(~seeds, return_indices=True)
    nearest = seed_labels[iy, ix]
    level = np.maximum(fraction * peak[nearest], floor)
    allowed = seeds | (region & (signal > level) & (dist <= reach[iy, ix]))
    # Keep only allowed pixels connected to their seed (no jumps across gaps).
    comp, _ = ndimage.label(allowed, structure=_EIGHT)
    keep = np.zeros(comp.max() + 1, dtype=bool)
    keep[np.unique(comp[seeds])] = True
    keep[0] = False
    return np.where(keep[comp], nearest, 0)


def _pad_components(labels: np.ndarray, slices: list, base: float = 1.0, fraction: float = 0.06) -> np.ndarray:
    """Dilate each labelled component by ``base + fraction * extent * sqrt(elongation)`` px (a safety margin).

    Detected outlines sit a little inside a lesion's soft edge, more so for large lesions (their
    edges fade over more pixels) and at the tapered tips of elongated ones (flame haemorrhages),
    so the margin grows with the component's extent and, up to 1.6x, with its elongation
    (``extent**2 / area``, relative to a disc's).
    """
    if not slices:
        return labels
    extent = np.array([max(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start) if sl else 0 for sl in slices],
                      dtype=np.float32)
    area = np.bincount(labels.ravel(), minlength=len(slices) + 1)[1:].astype(np.float32)
    elongation = np.clip(extent**2 / np.maximum(area, 1.0) * (math.pi / 4.0), 1.0, 2.5)
    pad = np.concatenate([[0.0], base + fraction * extent * np.sqrt(elongation)]).astype(np.float32)
    dist, (iy, ix) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    nearest = labels[iy, ix]
    return np.where(dist <= pad[nearest], nearest, 0)


def _compact_dark(z: np.ndarray, core: np.ndarray, unit: float, levels=(2.5, 4.0, 6.0, 9.0, 13.0),
                  peak: float = 5.0, max_extent: float = 50.0, min_fill: float = 0.11) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clearly dark regions of bounded extent, cut free of the vessel tree: (mask, reach in px, strength).

    Elongated haemorrhages (flame-shaped) curve like vessels locally, so the blob response misses
    them; but unlike vessels they end, and they are darker than vessels of their width. The dark
    component tree is sampled at several levels (as in MSER): a component no longer than
    ``max_extent`` units whose darkest pixel is below ``-peak`` noise levels is a candidate, even
    when at a shallower level it joined a vessel, unless it is as thin as a vessel piece (mean
    thickness under ``min_fill`` of its length). Its reach (for growing into its faint edges)
    is a quarter of its extent; its strength is its darkest level over ``peak`` (>= 1).
    """
    mask = np.zeros(z.shape, bool)
    reach = np.zeros(z.shape, np.float32)
    strength = np.zeros(z.shape, np.float32)
    for level in levels:
        labels, n = ndimage.label((z < -level) & core, structure=_EIGHT)
        if n == 0:
            break
        darkest = -_label_max(-z, labels, n)
        extent = np.array([max(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start)
                           for sl in ndimage.find_objects(labels)], dtype=np.float32)
        area = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        # Mean thickness over length: >= 0.13 for haemorrhages up to ~1:5, ~0.05-0.1 for vessel pieces.
        stout = (area / np.maximum(extent, 1.0) ** 2 >= min_fill) | (extent <= 10 * unit)
        ok = (darkest <= -max(peak, level + 1.0)) & (extent <= max_extent * unit) & stout
        keep = np.zeros(n + 1, bool)
        keep[1:] = ok
        r = np.zeros(n + 1, np.float32)
        r[1:] = np.where(ok, extent / 4.0, 0.0)
        st = np.zeros(n + 1, np.float32)
        st[1:] = np.where(ok, -darkest / peak, 0.0)
        if not ok.any():
            continue
        sel = keep[labels]  # few pixels: update only those
        hit = labels[sel]
        mask |= sel
        reach[sel] = np.maximum(reach[sel], r[hit])
        strength[sel] = np.maximum(strength[sel], st[hit])
    return mask, reach, strength


def _sharp_regions(mask: np.ndarray, resid: np.ndarray, unit: float, max_width: float) -> np.ndarray:
    """Keep the components of ``mask`` whose edge is sharp: depth over mean edge slope <= ``max_width`` units.

    A haemorrhage ends within a few px; shading (a small pupil, a dark crescent, the macula) fades
    over tens of units, so its outline at any level has a shallow slope for its depth.
    """
    labels, n = ndimage.label(mask, structure=_EIGHT)
    if n == 0:
        return mask
    depth = _label_max(-resid, labels, n)
    grad = np.hypot(_gaussian(resid, 1.5 * unit, (1, 0)), _gaussian(resid, 1.5 * unit, (0, 1)))
    rim = mask & ~ndimage.binary_erosion(mask, structure=_EIGHT)
    rim_n = np.bincount(labels[rim], minlength=n + 1)[1:]
    slope = np.bincount(labels[rim], weights=grad[rim], minlength=n + 1)[1:] / np.maximum(rim_n, 1)
    keep = np.zeros(n + 1, bool)
    keep[1:] = depth <= max_width * unit * slope
    return keep[labels]


def _components(mask_labels: np.ndarray, score: np.ndarray) -> tuple[list[tuple[slice, slice]], np.ndarray, np.ndarray]:
    n = int(mask_labels.max())
    if n == 0:
        return [], np.zeros(0), np.zeros(0)
    peak = _label_max(score, mask_labels, n)
    area = np.bincount(mask_labels.ravel(), minlength=n + 1)[1:].astype(np.float64)
    return ndimage.find_objects(mask_labels, max_label=n), peak, area


def detect_lesions(
    image: np.ndarray,
    working_size: int = DEFAULT_WORKING_SIZE,
    red_threshold: float = 3.0,
    bright_threshold: float = 4.0,
    candidate_floor: float = 0.6,
    exclude_disc: bool = True,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Detect red and bright lesions in a colour fundus photograph.

    Args:
        image: H x W x 3 (or 3 x H x W) RGB, uint8 or float in [0, 1]; any size of at least 16 px.
        working_size: longer side of the internal grid in px (detection resolution; 512-768 is sensible).
        red_threshold: blob response, in units of the image's noise level, at which a dark candidate
            reaches probability 0.5 (lower = higher recall, larger WSM).
        bright_threshold: the same for bright candidates.
        candidate_floor: candidates down to this fraction of the threshold are kept with probability < 0.5.
        exclude_disc: drop the disc-sized bright region centred on the optic disc (smaller bright
            candidates near the disc are kept: exudates can lie there).

    Returns:
        probs: 4 x H x W float32 in [0, 1], channels :data:`LESION_CHANNELS`.
        report: FOV and disc geometry, per-type component counts at 0.5, ``confidence`` and ``warnings``.

    Raises:
        EmptyImageError: no pixels, or an all-black image.
        NoFieldOfViewError: no fundus field of view found (e.g. a uniform grey image).
        ValueError: a bad argument (the message states the value and what is expected).
    """
    t0 = time.perf_counter()
    if not 128 <= int(working_size) <= 2048:
        raise ValueError(f"working_size must be an integer from 128 to 2048 px, got {working_size!r}")
    if red_threshold <= 0 or bright_threshold <= 0:
        raise ValueError(f"thresholds must be > 0, got red={red_threshold}, bright={bright_threshold}")
    if not 0 < candidate_floor <= 1:
        raise ValueError(f"candidate_floor must be in (0, 1], got {candidate_floor}")
    rgb = _as_hwc_uint8(image)
    native = rgb.shape[:2]
    scale = float(working_size) / max(native)
    work_shape = (max(16, round(native[0] * scale)), max(16, round(native[1] * scale)))
    small = _resize(rgb, work_shape, Image.BILINEAR if scale > 1 else Image.BOX)
    fov, report = detect_fov(small)
    fov_r = report["fov_radius"]
    unit = fov_r / 300.0  # 1 "unit" = 1 px of a field of radius 300 px (a 640-px photograph)

    green = small[..., 1].astype(np.float32)
    # The FOV's rim fades to black over ~1-2 % of its radius: replace the rim by a smooth continuation
    # of the inside before any filtering, and decide only inside it (the rim's own gradient would
    # read as a ring of dark and bright "lesions").
    inner = ndimage.binary_erosion(fov, iterations=max(1, round(6 * unit)))
    if inner.sum() < 0.5 * fov.sum():
        inner = fov
    core = ndimage.binary_erosion(inner, iterations=max(1, round(2 * unit)))
    if core.sum() < 100:
        core = fov
    filled = _fill_outside(green, inner, 8 * unit)

    # Background: a median on a coarse grid ignores lesions and vessels smaller than its window.
    k = 4
    coarse = filled[::k, ::k]
    bg = _median(coarse, size=max(3, int(round(55 * unit / k)) | 1))
    bg = _gaussian(bg, 1.0)
    bg = _resize(bg.astype(np.float32), work_shape)
    bg = np.maximum(bg, 2.0)
    resid = filled / bg - 1.0  # relative contrast: uneven illumination cancels
    noise = _robust_scale(resid[core]) if core.any() else _robust_scale(resid[fov])
    z = resid / noise

    # Multi-scale Hessian: fine scales on the working grid, coarse ones on a half grid.
    fine_sigmas = [s * unit for s in (1.0, 1.6, 2.5)]
    coarse_sigmas = [s * unit for s in (4.0, 6.5, 10.0)]
    # The coarsest scale is for soft exudates (up to ~20 units in radius) only: dark regions that
    # large are found by the coarse background below, and at this scale vessel crossings look like blobs.
    red_max_sigma = 6.5 * unit
    red_score = np.zeros(work_shape, np.float32)
    bright_score = np.zeros(work_shape, np.float32)
    red_scale = np.zeros(work_shape, np.float32)
    bright_scale = np.zeros(work_shape, np.float32)
    sample = core & (np.add.outer(np.arange(work_shape[0]), np.arange(work_shape[1])) % 3 == 0)
    for sigmas, step in ((fine_sigmas, 1), (coarse_sigmas, 2)):
        zz = z if step == 1 else ndimage.zoom(z, 0.5, order=1)
        for sigma in sigmas:
            lo, hi = _hessian_eigs(zz, sigma / step)
            if step == 1 and sigma == fine_sigmas[-1]:
                # Dark ridges (vessels) for the optic-disc finder: the larger eigenvalue, clearly positive.
                vessels = hi > 4.0 * _robust_scale(hi[sample])
                ridge = vessels & (lo < 0.35 * hi)  # line-like: curved across, flat along
            if step != 1:
                lo = _resize(lo.astype(np.float32), work_shape)
                hi = _resize(hi.astype(np.float32), work_shape)
            # Dark blob: both eigenvalues positive -> the smaller one; bright blob: both negative. Each
            # response is in units of its own spread inside the FOV, so scales and images compare.
            # Blobness: a vessel has one large eigenvalue and one near 0, so (lo / hi) ** 0.5 damps ridges.
            if sigma <= red_max_sigma:  # coarser scales never update the red score: not computed
                r = np.maximum(lo, 0.0) / _robust_scale(lo[sample])
                r *= np.sqrt(np.clip(lo / np.where(np.abs(hi) > 1e-6, hi, 1e-6), 0.0, 1.0))
                upd = r > red_score
                np.copyto(red_score, r, where=upd)
                red_scale[upd] = sigma
            b = np.maximum(-hi, 0.0) / _robust_scale(hi[sample])
            b *= np.sqrt(np.clip(hi / np.where(np.abs(lo) > 1e-6, lo, -1e-6), 0.0, 1.0))
            upd = b > bright_score
            np.copyto(bright_score, b, where=upd)
            bright_scale[upd] = sigma
    red_score[~core] = 0
    bright_score[~core] = 0

    dx, dy, drad, dcontrast = _find_disc(green, vessels, core if core.any() else fov, fov_r)

    # Large dark regions (pre-retinal / big blot haemorrhages) against a very coarse background.
    big = _median(filled[::8, ::8], size=max(3, int(round(160 * unit / 8)) | 1))
    big = np.maximum(_resize(_gaussian(big, 1.0), work_shape), 2.0)
    big_resid = filled / big - 1.0
    opened = ndimage.binary_opening((big_resid < -0.18) & core, iterations=max(1, round(6 * unit)))
    # Back to the region's edge (the opening rounds corners off): half its depth, near the opened core.
    deep_dark = ndimage.binary_dilation(opened, iterations=max(1, round(8 * unit))) & (big_resid < -0.08) & core
    deep_dark = _sharp_regions(deep_dark, big_resid, unit, DEEP_MAX_EDGE_WIDTH)

    results = {}
    for kind, score, sc, polarity, thr in (
        ("red", red_score, red_scale, -1.0, red_threshold),
        ("bright", bright_score, bright_scale, 1.0, bright_threshold),
    ):
        seeds = score > candidate_floor * thr
        reach = np.maximum(2.5 * sc, 2.0 * unit)
        if kind == "red":
            compact, compact_reach, compact_strength = _compact_dark(z, core, unit)
            seeds |= deep_dark | compact
            reach = np.maximum(reach, compact_reach)
            peak_map = np.maximum(score, compact_strength * thr)
            peak_map[deep_dark] = 10 * thr
        else:
            # Local threshold: clearly brighter than the local background (exudates with weak curvature).
            seeds |= (z > 3.0 * thr) & core
        seed_labels, _ = ndimage.label(seeds, structure=_EIGHT)
        grown = _grow(seed_labels, polarity * z, core, reach)
        if kind == "red":
            grown = np.where(deep_dark & (grown == 0), seed_labels, grown)
        else:
            peak_map = np.maximum(score, z / 3.0)
        sl, peak, area = _components(grown, peak_map)
        if kind == "red" and len(sl):
            on = grown > 0
            n_c = len(sl)
            ridge_frac = np.bincount(grown[on], weights=ridge[on], minlength=n_c + 1)[1:] / np.maximum(area, 1)
            dot = (area <= MA_MAX_AREA * unit * unit) & (ridge_frac < MA_MAX_RIDGE) & (peak >= MA_THRESHOLD * thr)
            peak = np.where(dot, np.maximum(peak, 1.01 * thr), peak)
        if kind == "bright" and exclude_disc and len(sl):
            on = grown > 0
            ys, xs = np.nonzero(on)
            n_px = np.maximum(np.bincount(grown[on], minlength=len(sl) + 1)[1:], 1)
            com = zip(np.bincount(grown[on], weights=ys, minlength=len(sl) + 1)[1:] / n_px,
                      np.bincount(grown[on], weights=xs, minlength=len(sl) + 1)[1:] / n_px)
            # Only disc-sized bright regions centred on the disc go: a small exudate beside the disc
            # (or in a wrongly located "disc") is kept, since a missed lesion costs more than a box.
            for i, (cyy, cxx) in enumerate(com):
                near = (cxx - dx) ** 2 + (cyy - dy) ** 2 <= (1.2 * drad) ** 2
                if near and area[i] >= 0.6 * math.pi * drad * drad:  # larger than the largest soft exudate
                    peak[i] = 0.0
        results[kind] = (_pad_components(grown, sl, base=RED_PAD if kind == "red" else 1.0), peak, area, thr)

    # Paint component probabilities on the working grid, then map to native.
    probs_work = np.zeros((4,) + work_shape, np.float32)
    counts = {t: 0 for t in LESION_CHANNELS}
    small_area = (3.2 * unit) ** 2 * math.pi  # equivalent radius below ~3 units -> MA / EX
    for kind, (grown, peak, area, thr) in results.items():
        if len(peak) == 0:
            continue
        prob = 1.0 / (1.0 + np.exp(-3.0 * (peak / thr - 1.0)))  # 0.5 at the threshold
        prob[peak < candidate_floor * thr] = 0.0
        # Touching candidates are one lesion (a vessel crossing a soft exudate splits it in two):
        # merge them, with the strongest one's probability.
        lut = np.concatenate([[0.0], prob]).astype(np.float32)
        painted = lut[grown]
        if kind == "red" and SPLIT_RED:
            # Dark candidates stay apart: a chain of vessel pieces touching a haemorrhage would
            # otherwise become one box around a curved vessel. A one-px seam, cut from the weaker of
            # two touching candidates (the lesion keeps its edge), keeps them 8-disconnected.
            rank = np.zeros(len(prob) + 1, np.int64)
            rank[1:] = np.lexsort((np.arange(len(prob)), prob)).argsort() + 1
            live = np.where(painted > 0, rank[grown], 0)
            painted[(live > 0) & (ndimage.maximum_filter(live, size=3) > live)] = 0.0
        grown, n = ndimage.label(painted > 0, structure=_EIGHT)
        if n == 0:
            continue
        prob = _label_max(painted, grown, n).astype(np.float32)
        area = np.bincount(grown.ravel(), minlength=n + 1)[1:].astype(np.float64)
        small_types = area <= small_area
        ch_small, ch_big = (0, 1) if kind == "red" else (2, 3)
        lut = np.zeros((2, n + 1), np.float32)
        lut[0, 1:] = np.where(small_types, prob, 0.0)
        lut[1, 1:] = np.where(small_types, 0.0, prob)
        probs_work[ch_small] = np.maximum(probs_work[ch_small], lut[0][grown])
        probs_work[ch_big] = np.maximum(probs_work[ch_big], lut[1][grown])
        counts[LESION_CHANNELS[ch_small]] += int(((prob >= 0.5) & small_types).sum())
        counts[LESION_CHANNELS[ch_big]] += int(((prob >= 0.5) & ~small_types).sum())

    # Back to native size (nearest keeps the 0.5 boundaries).
    probs = np.zeros((4,) + tuple(native), np.float32)
    for c in range(4):
        if probs_work[c].max() > 0:
            probs[c] = _resize(probs_work[c], native, Image.NEAREST)

    inv = 1.0 / scale
    warnings = []
    confidence = 1.0
    if report["fov_fraction"] < 0.25 or report["fov_fraction"] > 0.97:
        warnings.append(f"unusual field of view: it covers {100 * report['fov_fraction']:.0f}% of the image")
        confidence *= 0.6
    if report["fov_box_fill"] > 0.93:
        warnings.append(f"field of view is rectangular, not round (it fills {100 * report['fov_box_fill']:.0f}% of its "
                        "bounding box; a round field fills about 79%): is this a fundus photograph?")
        confidence *= 0.5
    if report["fov_fill"] < 0.7:
        warnings.append(f"field of view is not round (fill {report['fov_fill']:.2f} of its enclosing circle)")
        confidence *= 0.7
    mean_rgb = [small[..., c][fov].mean() for c in range(3)]
    if not mean_rgb[0] > mean_rgb[1]:
        warnings.append("the field of view is not red-dominant; colours are unlike a colour fundus photograph")
        confidence *= 0.5
    if dcontrast < 0.15:
        warnings.append(f"optic disc not clearly found (contrast {dcontrast:.2f}); disc exclusion may be wrong")
        confidence *= 0.8
    if noise > 0.08:
        warnings.append(f"noisy or strongly textured image (relative noise {noise:.3f}); expect extra detections")
        confidence *= 0.8
    report.update({
        "fov_center": [round(v * inv, 1) for v in report["fov_center"]],
        "fov_radius": round(report["fov_radius"] * inv, 1),
        "disc_center": [round(dx * inv, 1), round(dy * inv, 1)],
        "disc_radius": round(drad * inv, 1),
        "disc_contrast": round(dcontrast, 3),
        "noise": round(noise, 4),
        "working_size": list(work_shape),
        "components": counts,
        "confidence": round(confidence, 3),
        "warnings": warnings,
        "seconds": round(time.perf_counter() - t0, 3),
    })
    return probs, report
