"""Removal attacks: a thief strips the visible logo before using the image.

Every attack maps an H x W x 3 uint8 protected image to a uint8 restored image of the same size, and
follows one calling convention::

    restored = attack(protected, logo, placements=None)

``logo`` is the public owner logo (RGBA; ``None`` is the shipped default) and ``placements`` the owner's
true record (:class:`~monai_medlocker.watermark.blend.Placement` objects or their ``to_record()``
dicts). Only the informed attack needs ``placements``; the inpainting attacks use them when given
(the thief traced the visible logo by hand) and locate the logo otherwise; the blind attacks ignore
them. Each docstring states the threat model: what the thief knows.

``REMOVAL_ATTACKS`` holds the attacks that need no fitting; :class:`LearnedRemover` and
:class:`CollectionAttack` instances follow the same convention once trained or fitted.
:func:`box_fidelity` scores a restoration against the original inside the true logo boxes.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
from scipy.ndimage import binary_dilation

from monai_medlocker.watermark.blend import Placement, mark_opacity
from monai_medlocker.watermark.logo import load_logo, logo_for_image, render_logo
from monai_medlocker.watermark.problem import SearchSpace, logo_box_size

__all__ = [
    "as_placements",
    "random_placement",
    "locate_logo",
    "estimate_opacity",
    "logo_footprint",
    "informed_inverse_blend",
    "blind_inverse_blend",
    "inpaint_telea",
    "inpaint_navier_stokes",
    "inpaint_biharmonic",
    "box_fidelity",
    "REMOVAL_ATTACKS",
    "get_removal_attack",
]

_DEFAULT_SPACE = SearchSpace()
# Below this transmission (1 - opacity) the inversion would amplify the 0.5-level rounding of the
# composite by more than 16 grey levels: those pixels are treated as lost and inpainted instead.
_MIN_TRANSMISSION = 1.0 / 32.0


def _cv2():
    try:
        import cv2
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("monai_medlocker.threats needs OpenCV: pip install 'monai-medlocker[threats]' "
                          "(opencv-python-headless)") from err
    return cv2


def _check_image(image: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"{name}: expected an H x W x 3 uint8 image, got shape {arr.shape} and dtype {arr.dtype}.")
    return arr


def as_placements(placements: Iterable[Placement | Mapping] | None) -> list[Placement]:
    """Placements from :class:`Placement` objects or their record dicts (a protect record's ``marks``)."""
    if placements is None:
        return []
    out = []
    for p in placements:
        if isinstance(p, Placement):
            out.append(p)
        elif isinstance(p, Mapping):
            try:
                out.append(Placement.from_record(p))
            except KeyError as err:
                raise ValueError(f"placement record {dict(p)!r} lacks the field {err}") from None
        else:
            raise ValueError(f"expected a Placement or a placement record dict, got {type(p).__name__}.")
    return out


def _stamped_logo(logo: np.ndarray | None, image: np.ndarray) -> np.ndarray:
    """The logo as the engine stamps it on ``image`` (grey on a greyscale image)."""
    return logo_for_image(load_logo() if logo is None else logo, image)[0]


def random_placement(shape: Sequence[int], logo: np.ndarray, rng: np.random.Generator,
                     space: SearchSpace | None = None, continuous: bool = False) -> Placement:
    """A uniformly random placement over a search space, with no lesion constraint.

    The plain visible watermark of the study's control, and the thief's training marks.

    Args:
        shape: the image's (H, W, ...).
        logo: the RGBA logo (its aspect ratio sizes the box).
        rng: random generator.
        space: the search space (default :class:`SearchSpace`): scales, rotations, opacity range.
        continuous: draw the scale uniformly over ``space.scale_range`` instead of from ``space.scales()``.
    """
    space = space or _DEFAULT_SPACE
    height, width = int(shape[0]), int(shape[1])
    short = min(height, width)
    scale = float(rng.uniform(*space.scale_range)) if continuous else float(rng.choice(space.scales()))
    rotation = float(rng.choice(space.rotations))
    h, w = logo_box_size(logo.shape, scale, rotation, short)
    x0, y0 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    return Placement(x0, y0, w, h, float(rng.uniform(*space.alpha_range)), rotation, scale)


# ------------------------------------------------------------------------------------------------
# Locating the mark and estimating its opacity (the blind thief's tools)
# ------------------------------------------------------------------------------------------------


def _box_sizes(logo: np.ndarray, short: int, scale_range: tuple[float, float], rotation: float) -> list[tuple[int, int]]:
    """Every integer box size the scale range allows (one per pixel of the longest side)."""
    lo, hi = int(np.floor(scale_range[0] * short)), int(np.ceil(scale_range[1] * short))
    sizes = {logo_box_size(logo.shape, side / short, rotation, short) for side in range(max(1, lo), hi + 1)}
    return sorted(sizes)


def _match(image: np.ndarray, rgb: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Normalised cross-correlation of the logo's pixels (masked by its coverage) at every position."""
    cv2 = _cv2()
    mask = np.repeat((cov > 0.5).astype(np.float32)[..., None], 3, axis=-1)
    score = cv2.matchTemplate(image, np.ascontiguousarray(rgb, dtype=np.float32), cv2.TM_CCOEFF_NORMED, mask=mask)
    return np.nan_to_num(score, nan=-1.0, posinf=-1.0, neginf=-1.0)


def locate_logo(image: np.ndarray, logo: np.ndarray | None = None, max_marks: int = 1,
                scale_range: tuple[float, float] = _DEFAULT_SPACE.scale_range,
                rotations: Sequence[float] = _DEFAULT_SPACE.rotations,
                alpha_range: tuple[float, float] = _DEFAULT_SPACE.alpha_range,
                min_score: float = 0.3, coarse_side: int = 32) -> list[tuple[Placement, float]]:
    """Find visible logo marks by multi-scale template matching; the blind thief's locator.

    Threat model: the thief knows the public logo and the public search space (scale range, rotations,
    opacity range), not where the marks are. The logo's pixels (masked by its coverage) are matched by
    normalised cross-correlation at every box size the scale range allows (one per pixel of the box's
    longest side) and every position: first on a copy shrunk until the smallest box is ``coarse_side``
    pixels across, then at full resolution around the best coarse hits, over nearby sizes and
    positions. Each found box's opacity comes from :func:`estimate_opacity`.

    Args:
        image: H x W x 3 uint8 image.
        logo: the public RGBA logo; ``None`` is the shipped default.
        max_marks: how many non-overlapping marks to return at most.
        scale_range, rotations, alpha_range: the public search space.
        min_score: marks after the first are kept only when their correlation reaches this.
        coarse_side: box side in pixels of the coarse search.

    Returns:
        ``(placement, score)`` pairs, best first; ``score`` is the correlation (at most 1).
    """
    image = _check_image(image, "locate_logo")
    lg = _stamped_logo(logo, image)
    cv2 = _cv2()
    height, width = image.shape[:2]
    short = min(height, width)
    img = image.astype(np.float32)
    found: list[tuple[Placement, float]] = []
    candidates = []
    for rotation in rotations:
        sizes = [s for s in _box_sizes(lg, short, scale_range, rotation) if s[0] <= height and s[1] <= width]
        if not sizes:
            continue
        f = min(1.0, coarse_side / min(min(s) for s in sizes))
        small = cv2.resize(img, (max(1, round(width * f)), max(1, round(height * f))), interpolation=cv2.INTER_AREA)
        seen = set()
        for h, w in sizes:
            ch, cw = max(4, round(h * f)), max(4, round(w * f))
            if (ch, cw) in seen or ch > small.shape[0] or cw > small.shape[1]:
                continue
            seen.add((ch, cw))
            rgb, cov = render_logo(lg, cw, ch, rotation)
            score = _match(small, rgb, cov)
            candidates.append((score, f, rotation, (h, w)))
    if not candidates:
        return []
    taken: list[tuple[int, int, int, int]] = []
    for _ in range(max_marks):
        best = None
        for score, f, rotation, (h, w) in candidates:
            s = score.copy()
            for x0, y0, x1, y1 in taken:  # no position whose coarse box overlaps a found mark
                u0, v0 = max(0, int(np.floor(x0 * f)) - round(w * f) + 1), max(0, int(np.floor(y0 * f)) - round(h * f) + 1)
                s[v0:int(np.ceil(y1 * f)), u0:int(np.ceil(x1 * f))] = -1.0
            v, u = np.unravel_index(int(np.argmax(s)), s.shape)
            if best is None or s[v, u] > best[0]:
                best = (float(s[v, u]), u, v, f, rotation, (h, w))
        if best is None or (found and best[0] < min_score) or best[0] <= -1.0:
            break
        placement, score = _refine(img, lg, short, scale_range, best)
        if found and score < min_score:
            break
        if any(not (placement.x0 + placement.width <= b[0] or b[2] <= placement.x0 or
                    placement.y0 + placement.height <= b[1] or b[3] <= placement.y0) for b in taken):
            break
        alpha = estimate_opacity(image, lg, placement, alpha_range)
        placement = Placement(placement.x0, placement.y0, placement.width, placement.height, alpha,
                              placement.rotation, placement.scale)
        found.append((placement, score))
        taken.append(placement.box_xyxy)
    return found


def _refine(img: np.ndarray, lg: np.ndarray, short: int, scale_range: tuple[float, float],
            best: tuple) -> tuple[Placement, float]:
    """Full-resolution search over sizes and positions near a coarse hit."""
    _, u, v, f, rotation, (h0, w0) = best
    height, width = img.shape[:2]
    reach = int(np.ceil(1.0 / f)) + 2
    sizes = [s for s in _box_sizes(lg, short, scale_range, rotation)
             if abs(s[0] - h0) <= reach and abs(s[1] - w0) <= reach and s[0] <= height and s[1] <= width]
    cx0, cy0 = u / f, v / f
    top = (-2.0, 0, 0, h0, w0)
    for h, w in sizes:
        x_lo, y_lo = max(0, int(cx0) - reach), max(0, int(cy0) - reach)
        x_hi, y_hi = min(width - w, int(cx0) + reach), min(height - h, int(cy0) + reach)
        if x_hi < x_lo or y_hi < y_lo:
            continue
        crop = img[y_lo:y_hi + h, x_lo:x_hi + w]
        rgb, cov = render_logo(lg, w, h, rotation)
        score = _match(crop, rgb, cov)
        dv, du = np.unravel_index(int(np.argmax(score)), score.shape)
        if score[dv, du] > top[0]:
            top = (float(score[dv, du]), x_lo + int(du), y_lo + int(dv), h, w)
    s, x0, y0, h, w = top
    return Placement(x0, y0, w, h, 1.0, float(rotation), max(h, w) / short), s


def _invert(region: np.ndarray, rgb: np.ndarray, opacity: np.ndarray,
            min_transmission: float = _MIN_TRANSMISSION) -> tuple[np.ndarray, np.ndarray]:
    """Inverse alpha blend of a box: x = (y - a L) / (1 - a). Returns x (float) and the lost pixels."""
    a = opacity[..., None].astype(np.float32)
    lost = (1.0 - opacity) < min_transmission
    t = np.maximum(1.0 - a, min_transmission)
    x = np.where(a > 0, (region - a * rgb) / t, region)
    return np.clip(x, 0.0, 255.0), lost & (opacity > 0)


def _edge_band(rgb: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Pixels next to the logo's own edges (colour or coverage jumps): where a wrong opacity leaves a ghost."""
    drawn = cov[..., None] * rgb
    gy, gx = np.gradient(drawn, axis=(0, 1))
    g = np.sqrt((gx ** 2 + gy ** 2).sum(-1))
    return binary_dilation(g > 0.25 * g.max(), iterations=1) if g.max() > 0 else np.ones(cov.shape, bool)


def estimate_opacity(image: np.ndarray, logo: np.ndarray, placement: Placement,
                     alpha_range: tuple[float, float] = _DEFAULT_SPACE.alpha_range) -> float:
    """The opacity cap that makes the inverted box smoothest across the logo's edges.

    A wrong opacity leaves a positive or negative ghost of the logo's edges in the inverted box; the
    estimate minimises the total variation of the inverted (clipped) box over a band around those
    edges, on a grid of 1/255 steps over ``alpha_range`` (coarse then fine).

    Args:
        image: H x W x 3 uint8 protected image.
        logo: the RGBA logo as stamped (see :func:`~monai_medlocker.watermark.logo.logo_for_image`).
        placement: the mark's box and rotation (its ``alpha`` is ignored).
        alpha_range: the public opacity range.
    """
    x0, y0, x1, y1 = placement.box_xyxy
    rgb, cov = render_logo(logo, placement.width, placement.height, placement.rotation)
    lo, hi = alpha_range
    return _smoothest(image[y0:y1, x0:x1].astype(np.float32), rgb, cov, _edge_band(rgb, cov),
                      lambda a: np.minimum(cov, np.float32(a)), lo, hi, 1 / 255)


def _smoothest(region: np.ndarray, rgb: np.ndarray, cov: np.ndarray, band: np.ndarray,
               opacity_for: Callable[[float], np.ndarray], lo: float, hi: float, step: float) -> float:
    """The parameter in [lo, hi] whose opacity map makes the inverted region smoothest over ``band``.

    A grid of 4 ``step`` first, then ``step`` around the best.
    """

    def energy(t: float) -> float:
        x, _ = _invert(region, rgb, opacity_for(t))
        gy = np.abs(np.diff(x, axis=0)).sum(-1)
        gx = np.abs(np.diff(x, axis=1)).sum(-1)
        return float(gy[band[1:] | band[:-1]].sum() + gx[band[:, 1:] | band[:, :-1]].sum())

    coarse = np.arange(lo, hi + 1e-9, 4 * step)
    t0 = float(coarse[int(np.argmin([energy(t) for t in coarse]))])
    fine = np.clip(np.arange(t0 - 4 * step, t0 + 4.5 * step, step), lo, hi)
    return float(fine[int(np.argmin([energy(t) for t in fine]))])


# ------------------------------------------------------------------------------------------------
# Inverse blends and inpainting
# ------------------------------------------------------------------------------------------------


def logo_footprint(shape: Sequence[int], logo: np.ndarray, placements: Iterable[Placement | Mapping],
                   dilate: int = 2) -> np.ndarray:
    """H x W bool: where the logo covers anything (coverage > 0) in each box, grown by ``dilate`` px."""
    height, width = int(shape[0]), int(shape[1])
    mask = np.zeros((height, width), dtype=bool)
    for p in as_placements(placements):
        _, cov = render_logo(logo, p.width, p.height, p.rotation)
        x0, y0, x1, y1 = p.box_xyxy
        mask[max(0, y0):y1, max(0, x0):x1] |= (cov > 0)[max(0, -y0):y1 - y0, max(0, -x0):x1 - x0]
    if dilate > 0:
        mask = binary_dilation(mask, iterations=int(dilate))
    return mask


def _fill_lost(out: np.ndarray, lost: np.ndarray) -> np.ndarray:
    """Telea inpainting of pixels whose opacity left no trace of the original."""
    if not lost.any():
        return out
    cv2 = _cv2()
    filled = cv2.inpaint(out, lost.astype(np.uint8), 3, cv2.INPAINT_TELEA)
    return np.where(lost[..., None], filled, out)


def _inverse_blend(protected: np.ndarray, lg: np.ndarray, placements: list[Placement]) -> np.ndarray:
    out = protected.astype(np.float32)
    lost_all = np.zeros(protected.shape[:2], dtype=bool)
    for p in reversed(placements):  # undo the last mark first
        x0, y0, x1, y1 = p.box_xyxy
        rgb, opacity = mark_opacity(lg, p)
        x, lost = _invert(out[y0:y1, x0:x1], rgb, opacity)
        out[y0:y1, x0:x1] = x
        lost_all[y0:y1, x0:x1] |= lost
    return _fill_lost(np.clip(np.rint(out), 0, 255).astype(np.uint8), lost_all)


def informed_inverse_blend(protected: np.ndarray, logo: np.ndarray | None = None,
                           placements: Iterable[Placement | Mapping] | None = None) -> np.ndarray:
    """Invert the alpha blend with the owner's true record: the upper bound of inverse blending.

    Threat model: the thief knows the logo, each mark's box, rotation and opacity cap (the owner's
    private record). Per pixel, with the engine's opacity ``a = min(coverage, alpha)`` from
    :func:`~monai_medlocker.watermark.blend.mark_opacity`, ``x = (y - a L) / (1 - a)``, clipped and
    rounded. What remains is the composite's rounding amplified by ``1 / (1 - a)``; pixels with
    ``1 - a < 1/32`` (an opacity near 1 leaves no trace of the original) are inpainted (Telea).

    Raises:
        ValueError: no placements given.
    """
    protected = _check_image(protected, "informed_inverse_blend")
    marks = as_placements(placements)
    if not marks:
        raise ValueError("informed_inverse_blend needs the owner's placements (the record's marks), got none.")
    return _inverse_blend(protected, _stamped_logo(logo, protected), marks)


def blind_inverse_blend(protected: np.ndarray, logo: np.ndarray | None = None,
                        placements: Iterable[Placement | Mapping] | None = None, max_marks: int = 1,
                        space: SearchSpace | None = None) -> np.ndarray:
    """Locate the mark, estimate its opacity, invert the blend: the public-logo thief.

    Threat model: the thief knows only the public logo and the public search space (scale range,
    rotations, opacity range) and has the protected image; ``placements`` is ignored. The marks come
    from :func:`locate_logo` (template matching) with :func:`estimate_opacity` (the opacity that
    makes the inverted box smoothest), then the inverse blend of :func:`informed_inverse_blend`.
    """
    protected = _check_image(protected, "blind_inverse_blend")
    space = space or _DEFAULT_SPACE
    lg = _stamped_logo(logo, protected)
    marks = [p for p, _ in locate_logo(protected, lg, max_marks, space.scale_range, space.rotations, space.alpha_range)]
    return _inverse_blend(protected, lg, marks) if marks else protected.copy()


def _footprint_for(protected: np.ndarray, logo: np.ndarray | None, placements, dilate: int) -> np.ndarray:
    lg = _stamped_logo(logo, protected)
    marks = as_placements(placements) or [p for p, _ in locate_logo(protected, lg)]
    return logo_footprint(protected.shape, lg, marks, dilate)


def _crop_around(mask: np.ndarray, margin: int) -> tuple[slice, slice]:
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return (slice(max(0, ys.min() - margin), min(h, ys.max() + 1 + margin)),
            slice(max(0, xs.min() - margin), min(w, xs.max() + 1 + margin)))


def _inpaint(protected: np.ndarray, logo, placements, dilate: int, method: Callable) -> np.ndarray:
    mask = _footprint_for(protected, logo, placements, dilate)
    out = protected.copy()
    if not mask.any():
        return out
    # Inpaint a crop around the footprint: the same result near the hole, a fraction of the work.
    sl = _crop_around(mask, 16)
    filled = method(out[sl], mask[sl])
    out[sl] = np.where(mask[sl][..., None], filled, out[sl])
    return out


def inpaint_telea(protected: np.ndarray, logo: np.ndarray | None = None,
                  placements: Iterable[Placement | Mapping] | None = None, dilate: int = 2, radius: int = 3) -> np.ndarray:
    """Fill the logo's footprint by OpenCV's Telea inpainting (fast marching).

    Threat model: the thief sees the mark and traces its footprint: the true ``placements`` when
    given (traced by hand), else the boxes :func:`locate_logo` finds with the public logo. The logo's
    pixels carry no information here; only pixels of :func:`logo_footprint` change.
    """
    protected = _check_image(protected, "inpaint_telea")
    cv2 = _cv2()
    return _inpaint(protected, logo, placements, dilate,
                    lambda img, m: cv2.inpaint(img, m.astype(np.uint8), radius, cv2.INPAINT_TELEA))


def inpaint_navier_stokes(protected: np.ndarray, logo: np.ndarray | None = None,
                          placements: Iterable[Placement | Mapping] | None = None, dilate: int = 2,
                          radius: int = 3) -> np.ndarray:
    """Fill the logo's footprint by OpenCV's Navier-Stokes inpainting; threat model as :func:`inpaint_telea`."""
    protected = _check_image(protected, "inpaint_navier_stokes")
    cv2 = _cv2()
    return _inpaint(protected, logo, placements, dilate,
                    lambda img, m: cv2.inpaint(img, m.astype(np.uint8), radius, cv2.INPAINT_NS))


def inpaint_biharmonic(protected: np.ndarray, logo: np.ndarray | None = None,
                       placements: Iterable[Placement | Mapping] | None = None, dilate: int = 2) -> np.ndarray:
    """Fill the logo's footprint by scikit-image's biharmonic inpainting; threat model as :func:`inpaint_telea`."""
    from skimage.restoration import inpaint_biharmonic as _biharmonic

    protected = _check_image(protected, "inpaint_biharmonic")

    def fill(img: np.ndarray, m: np.ndarray) -> np.ndarray:
        out = _biharmonic(img.astype(np.float64) / 255.0, m, channel_axis=-1)
        return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)

    return _inpaint(protected, logo, placements, dilate, fill)


# ------------------------------------------------------------------------------------------------
# Scoring
# ------------------------------------------------------------------------------------------------


def box_fidelity(restored: np.ndarray, original: np.ndarray, placements: Iterable[Placement | Mapping]) -> dict:
    """PSNR (dB) and SSIM of ``restored`` against ``original`` over the union of the true logo boxes.

    SSIM is scikit-image's (7 x 7 windows, per channel) on the crop spanning the boxes, averaged over
    the boxes' pixels. PSNR is ``inf`` for an exact restoration.

    Raises:
        ValueError: images of different shapes, or no placements.
    """
    from skimage.metrics import structural_similarity

    restored, original = np.asarray(restored), np.asarray(original)
    if restored.shape != original.shape:
        raise ValueError(f"box_fidelity: restored {restored.shape} and original {original.shape} differ in shape.")
    marks = as_placements(placements)
    if not marks:
        raise ValueError("box_fidelity needs at least one placement, got none.")
    mask = np.zeros(original.shape[:2], dtype=bool)
    for p in marks:
        x0, y0, x1, y1 = p.box_xyxy
        mask[y0:y1, x0:x1] = True
    diff = restored.astype(np.float64)[mask] - original.astype(np.float64)[mask]
    mse = float((diff ** 2).mean())
    psnr = float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)
    sl = _crop_around(mask, 0)
    _, smap = structural_similarity(restored[sl], original[sl], channel_axis=-1, data_range=255, full=True)
    ssim = float(smap.mean(axis=-1)[mask[sl]].mean())
    return {"psnr": round(float(psnr), 4), "ssim": round(ssim, 6)}


REMOVAL_ATTACKS: dict[str, Callable[..., np.ndarray]] = {
    "informed_inverse": informed_inverse_blend,
    "blind_inverse": blind_inverse_blend,
    "inpaint_telea": inpaint_telea,
    "inpaint_ns": inpaint_navier_stokes,
    "inpaint_biharmonic": inpaint_biharmonic,
}


def get_removal_attack(name: str) -> Callable[..., np.ndarray]:
    """The removal attack ``name`` of :data:`REMOVAL_ATTACKS`.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    try:
        return REMOVAL_ATTACKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown removal attack {name!r}; expected one of {', '.join(REMOVAL_ATTACKS)}.") from None
