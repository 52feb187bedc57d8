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

from monai_medlocker.threats.preprocessing import _check_image
from monai_medlocker.watermark.blend import Placement, composite, mark_opacity
from monai_medlocker.watermark.inpaint import as_placements, crop_around, inpaint_mask, logo_footprint, opencv
from monai_medlocker.watermark.logo import load_logo, logo_for_image, render_logo
from monai_medlocker.watermark.problem import SearchSpace, logo_box_size
from monai_medlocker.watermark.remover import RemoverNetwork, _to_tensor, _unet

__all__ = [
    "as_placements",
    "random_placement",
    "make_lab_pairs",
    "locate_logo",
    "estimate_opacity",
    "logo_footprint",
    "informed_inverse_blend",
    "blind_inverse_blend",
    "inpaint_telea",
    "inpaint_navier_stokes",
    "inpaint_biharmonic",
    "box_fidelity",
    "THIEF_LAB_SEED",
    "QUICK_REMOVER",
    "THIEF_REMOVER",
    "OWNER_REMOVER_SEED",
    "train_remover",
    "LearnedRemover",
    "CollectionAttack",
    "REMOVAL_ATTACKS",
    "get_removal_attack",
]

_DEFAULT_SPACE = SearchSpace()
# Below this transmission (1 - opacity) the inversion would amplify the 0.5-level rounding of the
# composite by more than 16 grey levels: those pixels are treated as lost and inpainted instead.
_MIN_TRANSMISSION = 1.0 / 32.0


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
    cv2 = opencv()
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
    pixels across, then at full resolution around the best coarse hit, over nearby sizes and
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
    cv2 = opencv()
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


def _grid_min(energy: Callable[[float], float], lo: float, hi: float, step: float) -> float:
    """The minimiser of ``energy`` on a grid over [lo, hi]: 4 ``step`` apart first, then ``step`` around the best."""
    coarse = np.arange(lo, hi + 1e-9, 4 * step)
    t0 = float(coarse[int(np.argmin([energy(t) for t in coarse]))])
    fine = np.clip(np.arange(t0 - 4 * step, t0 + 4.5 * step, step), lo, hi)
    return float(fine[int(np.argmin([energy(t) for t in fine]))])


def _smoothest(region: np.ndarray, rgb: np.ndarray, cov: np.ndarray, band: np.ndarray,
               opacity_for: Callable[[float], np.ndarray], lo: float, hi: float, step: float) -> float:
    """The parameter in [lo, hi] whose opacity map makes the inverted region smoothest over ``band``."""

    def energy(t: float) -> float:
        x, _ = _invert(region, rgb, opacity_for(t))
        gy = np.abs(np.diff(x, axis=0)).sum(-1)
        gx = np.abs(np.diff(x, axis=1)).sum(-1)
        return float(gy[band[1:] | band[:-1]].sum() + gx[band[:, 1:] | band[:, :-1]].sum())

    return _grid_min(energy, lo, hi, step)


# ------------------------------------------------------------------------------------------------
# Inverse blends and inpainting
# ------------------------------------------------------------------------------------------------


def _fill_lost(out: np.ndarray, lost: np.ndarray) -> np.ndarray:
    """Telea inpainting of pixels whose opacity left no trace of the original."""
    if not lost.any():
        return out
    cv2 = opencv()
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


def _inpaint(protected: np.ndarray, logo, placements, dilate: int, method: str, radius: int = 3) -> np.ndarray:
    return inpaint_mask(protected, _footprint_for(protected, logo, placements, dilate), method, radius)


def inpaint_telea(protected: np.ndarray, logo: np.ndarray | None = None,
                  placements: Iterable[Placement | Mapping] | None = None, dilate: int = 2, radius: int = 3) -> np.ndarray:
    """Fill the logo's footprint by OpenCV's Telea inpainting (fast marching).

    Threat model: the thief sees the mark and traces its footprint: the true ``placements`` when
    given (traced by hand), else the boxes :func:`locate_logo` finds with the public logo. The logo's
    pixels carry no information here; only pixels of :func:`logo_footprint` change.
    """
    protected = _check_image(protected, "inpaint_telea")
    return _inpaint(protected, logo, placements, dilate, "telea", radius)


def inpaint_navier_stokes(protected: np.ndarray, logo: np.ndarray | None = None,
                          placements: Iterable[Placement | Mapping] | None = None, dilate: int = 2,
                          radius: int = 3) -> np.ndarray:
    """Fill the logo's footprint by OpenCV's Navier-Stokes inpainting; threat model as :func:`inpaint_telea`."""
    protected = _check_image(protected, "inpaint_navier_stokes")
    return _inpaint(protected, logo, placements, dilate, "navier_stokes", radius)


def inpaint_biharmonic(protected: np.ndarray, logo: np.ndarray | None = None,
                       placements: Iterable[Placement | Mapping] | None = None, dilate: int = 2) -> np.ndarray:
    """Fill the logo's footprint by scikit-image's biharmonic inpainting; threat model as :func:`inpaint_telea`."""
    protected = _check_image(protected, "inpaint_biharmonic")
    return _inpaint(protected, logo, placements, dilate, "biharmonic")


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
    sl = crop_around(mask, 0)
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


# ------------------------------------------------------------------------------------------------
# A learned remover, trained by the thief on pairs they make themselves
# ------------------------------------------------------------------------------------------------

# The thief's own images: another lab seed than any the owner's datasets use in this project.
THIEF_LAB_SEED = 424242
# CI's setting: trains in tens of seconds on one core.
QUICK_REMOVER = {"n_pairs": 32, "size": 128, "epochs": 60, "crop": 48, "channels": (8, 16, 32, 64), "n_val": 8}
# A serious thief (issue 17 item 4): 800 Adam steps on 160 pairs, crops that hold a whole mark at 384 px
# (marks are 0.2-0.3 of the shorter side); a few minutes on one CPU thread. ``size`` is the image size.
# train_remover's defaults are this recipe (the full threat study's thief); the quick study keeps QUICK_REMOVER.
THIEF_REMOVER = {"n_pairs": 160, "epochs": 40, "crop": 128, "channels": (16, 32, 64, 128), "n_val": 16}
# The owner's own remover, the one the shield's objective optimises against (ShieldSettings.remover): the same
# recipe on another lab seed than the thief's, so that the objective never sees the remover it is judged by.
OWNER_REMOVER_SEED = 515151


def make_lab_pairs(n: int, size: int, seed: int, logo: np.ndarray | None = None, space: SearchSpace | None = None,
                   continuous: bool = True) -> list[tuple[np.ndarray, np.ndarray, Placement]]:
    """``n`` (clean, protected, placement) triples: lab images with one random mark each.

    Image ``i`` is ``synthesize_fundus(size, sample_seed(seed, i))``; the marks come from
    :func:`random_placement` over ``space`` (continuous scales by default, as a thief would draw them;
    ``continuous=False`` uses the engine's discrete scales, as the ``random`` optimizer does). Each mark
    is rendered keyed with a random key of the thief's own: the public code shows the scheme, never the
    owner's keys, so the thief trains on the scheme.
    """
    from monai_medlocker.data.synthetic import sample_seed, synthesize_fundus

    logo = load_logo() if logo is None else logo
    space = space or _DEFAULT_SPACE
    rng = np.random.default_rng([seed, 1])
    pairs = []
    for i in range(n):
        clean = synthesize_fundus(size, sample_seed(seed, i)).image
        lg = _stamped_logo(logo, clean)
        p = random_placement(clean.shape, lg, rng, space, continuous=continuous)
        pairs.append((clean, composite(clean, lg, [p], render_key=rng.bytes(32)), p))
    return pairs


def _crop_origin(p: Placement, crop: int, size: int, rng: np.random.Generator) -> tuple[int, int]:
    """A random crop origin whose crop overlaps the mark's box by at least half the crop in each axis."""
    def axis(a0: int, extent: int) -> int:
        lo = max(0, min(a0 + extent - crop // 2, a0) - crop // 2)
        hi = min(size - crop, max(a0 + crop // 2 - crop, a0 + extent - crop // 2))
        lo, hi = (min(max(v, 0), size - crop) for v in (lo, hi))  # the crop stays inside the image
        return int(rng.integers(min(lo, hi), max(lo, hi) + 1)) if size > crop else 0
    return axis(p.x0, p.width), axis(p.y0, p.height)


def train_remover(out_path: str | None, n_pairs: int = 160, size: int = 512, seed: int = THIEF_LAB_SEED,
                  epochs: int = 40, crop: int | None = None, batch_size: int = 8, channels: Sequence[int] = (16, 32, 64, 128),
                  lr: float = 2e-3, n_val: int = 16, logo: np.ndarray | None = None,
                  space: SearchSpace | None = None, progress: bool = False) -> tuple["LearnedRemover", dict]:
    """Train a small MONAI UNet to remove the public logo, as a thief would.

    Threat model: the thief has this project's public code and the public logo, and their own fundus
    images (here: the lab at ``seed``, not the owner's seed). They stamp plain marks at random over the
    public search space (positions, scales over ``space.scale_range``, opacities over
    ``space.alpha_range``) and train the network to predict the clean image from the protected one
    (residual learning: output = input + UNet(input)), on random crops that overlap the mark, with an
    L1 loss. ``n_val`` further pairs (other images of the same seed) are held out and scored by
    :func:`box_fidelity` before and after removal.

    Args:
        out_path: where to save the checkpoint (written atomically); ``None`` saves nothing.
        n_pairs: training pairs (one image, one mark each).
        size: side of the thief's images; the remover works at this resolution (see ``LearnedRemover``).
        seed: lab seed of the thief's images.
        epochs: passes over the pairs, one random crop per pair per pass.
        crop: side of the training crops, a multiple of the UNet's total stride (8 by default); ``None``
            is 128 (a whole mark at 384 px), or the largest such multiple that fits in ``size``.
        batch_size, lr: Adam's batch and learning rate (cosine decay).
        channels: the UNet's channels (strides 2 between levels, one residual unit each).
        n_val: held-out pairs for the report.
        logo: the public logo; ``None`` is the shipped default.
        space: the public search space (default :class:`SearchSpace`).
        progress: print the loss once per epoch.

    Returns:
        The trained :class:`LearnedRemover` and a report: settings, seconds, final loss and the held-out
        box PSNR/SSIM of the protected and of the restored images (means) with the PSNR gain.
    """
    import time

    import torch

    step = 2 ** (len(channels) - 1)
    if crop is None:  # 128 px, or the largest multiple of the UNet's stride that fits smaller images
        crop = min(128, size - size % step)
    if crop < step or crop % step or crop > size:
        raise ValueError(f"train_remover: crop must be a multiple of {step} and at most size={size}, got {crop}.")
    if n_pairs < 1 or epochs < 1:
        raise ValueError(f"train_remover: n_pairs and epochs must be >= 1, got {n_pairs} and {epochs}.")
    start = time.perf_counter()
    space = space or _DEFAULT_SPACE
    logo = load_logo() if logo is None else logo
    torch.manual_seed(seed)
    pairs = make_lab_pairs(n_pairs + n_val, size, seed, logo, space)
    train, val = pairs[:n_pairs], pairs[n_pairs:]
    net = _unet(channels)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    n_steps = epochs * int(np.ceil(n_pairs / batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, n_steps)
    rng = np.random.default_rng([seed, 2])
    loss_value = float("nan")
    net.train()
    for epoch in range(epochs):
        order = rng.permutation(n_pairs)
        losses = []
        for b in range(0, n_pairs, batch_size):
            xs, ys = [], []
            for i in order[b:b + batch_size]:
                clean, marked, p = train[i]
                u, v = _crop_origin(p, crop, size, rng)
                xs.append(marked[v:v + crop, u:u + crop])
                ys.append(clean[v:v + crop, u:u + crop])
            x, y = _to_tensor(xs), _to_tensor(ys)
            loss = torch.nn.functional.l1_loss(x + net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        loss_value = float(np.mean(losses))
        if progress:
            print(f"train_remover: epoch {epoch + 1}/{epochs} loss {loss_value:.4f}", flush=True)
    net.eval()
    config = {"channels": list(channels), "num_res_units": 1, "size": int(size), "crop": int(crop),
              "seed": int(seed), "n_pairs": int(n_pairs), "epochs": int(epochs), "batch_size": int(batch_size),
              "lr": float(lr), "scale_range": list(space.scale_range), "alpha_range": list(space.alpha_range),
              "rotations": list(space.rotations)}
    remover = LearnedRemover(net, config)
    train_seconds = time.perf_counter() - start
    before, after = [], []
    for clean, marked, p in val:
        before.append(box_fidelity(marked, clean, [p]))
        after.append(box_fidelity(remover(marked, logo), clean, [p]))

    def mean(rows: list[dict], key: str) -> float:
        return round(float(np.mean([r[key] for r in rows])), 4) if rows else float("nan")

    report = {"config": config, "train_seconds": round(train_seconds, 2), "final_loss": round(loss_value, 5),
              "held_out": {"n": len(val), "protected_psnr": mean(before, "psnr"), "restored_psnr": mean(after, "psnr"),
                           "protected_ssim": mean(before, "ssim"), "restored_ssim": mean(after, "ssim")}}
    report["held_out"]["psnr_gain"] = round(report["held_out"]["restored_psnr"] - report["held_out"]["protected_psnr"], 4)
    remover.report = report
    if out_path is not None:
        remover.save(out_path, report)
    return remover, report


class LearnedRemover(RemoverNetwork):
    """A trained logo remover (see :func:`train_remover`), applied fully convolutionally.

    Threat model: as :func:`train_remover` (public code, public logo, the thief's own images); at use
    the thief has only the protected image, so ``placements`` is ignored. With ``region="located"``
    (default) the network runs on the box :func:`locate_logo` finds, grown by a margin, and only that
    box changes; with ``"full"`` it runs on the whole image. An image whose shorter side differs from
    the training size is processed at the training scale and the result resized back. The network
    itself, and its use on known boxes (the owner's), is :class:`~monai_medlocker.watermark.remover.RemoverNetwork`.
    """

    def __call__(self, protected: np.ndarray, logo: np.ndarray | None = None,
                 placements: Iterable[Placement | Mapping] | None = None) -> np.ndarray:
        protected = _check_image(protected, "LearnedRemover")
        work, f = self._at_training_scale(protected)
        if self.region == "full":
            out, cv2 = self.predict(work), opencv()
            height, width = protected.shape[:2]
            return out if work is protected else cv2.resize(out, (width, height), interpolation=cv2.INTER_CUBIC)
        space = SearchSpace(scale_range=tuple(self.config["scale_range"]), alpha_range=tuple(self.config["alpha_range"]),
                            rotations=tuple(self.config["rotations"]))
        marks = locate_logo(protected, logo, 1, space.scale_range, space.rotations, space.alpha_range)
        return self._boxes(protected, work, f, [p for p, _ in marks])


# ------------------------------------------------------------------------------------------------
# The collection attack (Dekel et al., CVPR 2017)
# ------------------------------------------------------------------------------------------------


def _poisson_dirichlet(gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """The field E, zero on the outer one-pixel frame, whose forward differences best match (gx, gy).

    ``gx`` is H x (W-1) x C, ``gy`` (H-1) x W x C; returns H x W x C. Solved exactly by the discrete
    sine transform (the 5-point Laplacian with zero Dirichlet boundary).
    """
    from scipy.fft import dstn, idstn

    div = (gx[1:-1, 1:] - gx[1:-1, :-1]) + (gy[1:, 1:-1] - gy[:-1, 1:-1])  # (H-2) x (W-2) x C
    n, m = div.shape[:2]
    lam = (2 * np.cos(np.pi * np.arange(1, n + 1) / (n + 1)) - 2)[:, None] + \
          (2 * np.cos(np.pi * np.arange(1, m + 1) / (m + 1)) - 2)[None, :]
    out = np.zeros(gx.shape[:1] + gy.shape[1:2] + gx.shape[2:], dtype=np.float64)
    for c in range(div.shape[2]):
        out[1:-1, 1:-1, c] = idstn(dstn(div[..., c], type=1) / lam, type=1)
    return out


class CollectionAttack:
    """Estimate the watermark from many protected images at once, then invert it in each.

    After Dekel et al., "On the effectiveness of visible watermarks" (CVPR 2017). Threat model: the thief
    has many images protected the same way (one release) and the public logo, used only to find and
    align the marks; the watermark's appearance ``W`` and opacity matte ``alpha`` are estimated from
    the images, not taken from the logo file, and no owner record is used.

    ``fit``: each image's mark is located (:func:`locate_logo`), its box (grown by a two-pixel ring)
    resized to a canonical ``canonical`` x ``canonical`` frame; the per-pixel median over the collection
    of the image gradients estimates the gradient of the mark's contribution, and a Poisson solve
    (zero outside the box, where the logo is transparent) integrates it into ``E ~ alpha (W - B)``,
    ``B`` the typical background. ``alpha`` comes from a per-pixel regression over the collection of the
    protected pixel on a smooth estimate of the background under the box (the box inpainted from its
    ring and blurred): ``J = (1 - alpha) B + alpha W`` has slope ``1 - alpha``. Then ``W = B_med + E / alpha``
    is the paper's initial estimate.
    The matte is normalised by its median inside the mark (1 inside, as the logo's coverage).
    Refinement (``refine`` rounds): each image's opacity cap ``t`` is fitted (opacity ``min(alpha, t)``,
    as the engine's ``min(coverage, alpha)``), choosing the ``t`` whose inverted box, blurred, best
    matches the background filled in from the box's ring; then ``W`` is re-estimated per pixel from
    every image, ``(J - (1 - o) B) / o``, weighted by ``o^2``.
    ``remove`` (also ``__call__``): locate the mark, resize ``alpha`` and ``W`` to its box, fit its
    opacity cap the same way, and invert the blend.

    Where it departs from the paper: the marks are found by template matching with the public logo
    (the paper detects them from the collection's median gradient by chamfer matching, without the
    logo); they are aligned by resizing each box to the canonical frame (the paper's marks share one
    size and position up to a translation; here scale and position vary per image); ``alpha`` is a
    regression on a smooth background fill, not the paper's multi-image matting by alternating
    optimisation with image priors, and ``W``, ``alpha`` and the images are not refined iteratively;
    the per-image opacity cap is ours (the paper assumes one opacity for the collection; the
    protect engine draws one per image). One rotation only: marks at other rotations are not aligned.

    Args:
        canonical: side of the canonical frame in pixels.
        min_score: marks whose template correlation is below this are left out of the fit.
        space: the public search space (scale range and rotation used to locate the marks).
        refine: rounds of refinement (per-image opacity, then ``W`` re-estimated per pixel from every
            image, weighted by the squared opacity); 0 keeps the Poisson estimate.
    """

    def __init__(self, canonical: int = 128, min_score: float = 0.5, space: SearchSpace | None = None,
                 refine: int = 2) -> None:
        if canonical < 16:
            raise ValueError(f"CollectionAttack: canonical must be >= 16 px, got {canonical}.")
        self.canonical = int(canonical)
        self.min_score = float(min_score)
        self.space = space or _DEFAULT_SPACE
        self.refine = int(refine)
        self.alpha: np.ndarray | None = None  # canonical x canonical matte
        self.watermark: np.ndarray | None = None  # canonical x canonical x 3, 0-255
        self.contribution: np.ndarray | None = None  # E, canonical x canonical x 3
        self.n_used = 0
        self.logo: np.ndarray | None = None

    def _locate(self, image: np.ndarray) -> list[tuple[Placement, float]]:
        return locate_logo(image, self.logo, 1, self.space.scale_range, self.space.rotations[:1], self.space.alpha_range)

    def _aligned(self, image: np.ndarray, p: Placement) -> tuple[np.ndarray, np.ndarray]:
        """The box with a ring of 2 canonical pixels, resized to the canonical frame, and its background fill."""
        cv2 = opencv()
        c, ring = self.canonical, 2
        gx_, gy_ = ring * p.width / c, ring * p.height / c
        x0, y0 = p.x0 - gx_, p.y0 - gy_
        # Sub-pixel crop by an affine warp: exact alignment of the box to [ring, ring + c).
        sx, sy = (c + 2 * ring) / (p.width + 2 * gx_), (c + 2 * ring) / (p.height + 2 * gy_)
        warp = np.array([[sx, 0, -x0 * sx], [0, sy, -y0 * sy]], dtype=np.float64)
        crop = cv2.warpAffine(image, warp, (c + 2 * ring, c + 2 * ring), flags=cv2.INTER_AREA if sx < 1 else cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REFLECT)
        hole = np.zeros(crop.shape[:2], np.uint8)
        hole[ring:ring + c, ring:ring + c] = 1
        fill = cv2.inpaint(crop, hole, 3, cv2.INPAINT_TELEA).astype(np.float32)
        fill = cv2.GaussianBlur(fill, (0, 0), c / 16)
        return crop.astype(np.float32), fill

    def _fit_cap(self, region: np.ndarray, wm: np.ndarray, matte: np.ndarray, fill: np.ndarray, side: int) -> float:
        """The opacity cap whose inversion's low frequencies best match the background filled in from the ring.

        With an estimated (imperfect) ``W`` this is steadier than the edge smoothness of
        :func:`estimate_opacity`: a wrong cap shifts the whole inverted mark towards or away from ``W``.
        """
        cv2 = opencv()
        region, wm, fill = (np.asarray(v, dtype=np.float32) for v in (region, wm, fill))
        inside = matte > 0.5
        sigma = side / 16

        def energy(t: float) -> float:
            x, _ = _invert(region, wm, np.minimum(matte, np.float32(t)))
            return float(((cv2.GaussianBlur(x, (0, 0), sigma) - fill) ** 2).sum(-1)[inside].sum())

        lo, hi = self.space.alpha_range
        return _grid_min(energy, lo, hi, 1 / 255)

    def _box_fill(self, image: np.ndarray, p: Placement) -> np.ndarray:
        """A smooth estimate of the background under the box: inpainted from an 8-px ring, then blurred."""
        cv2 = opencv()
        m = 8
        height, width = image.shape[:2]
        x0, y0, x1, y1 = p.box_xyxy
        cx0, cy0, cx1, cy1 = max(0, x0 - m), max(0, y0 - m), min(width, x1 + m), min(height, y1 + m)
        crop = image[cy0:cy1, cx0:cx1]
        hole = np.zeros(crop.shape[:2], np.uint8)
        hole[y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0] = 1
        fill = cv2.GaussianBlur(cv2.inpaint(crop, hole, 3, cv2.INPAINT_TELEA).astype(np.float32), (0, 0),
                                max(p.width, p.height) / 16)
        return fill[y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0]

    def fit(self, images: Iterable[np.ndarray], logo: np.ndarray | None = None) -> "CollectionAttack":
        """Estimate ``alpha`` and ``W`` from protected H x W x 3 uint8 images.

        Args:
            images: the protected collection (any sizes).
            logo: the public logo used to find the marks; ``None`` is the shipped default.

        Raises:
            ValueError: fewer than three images with a located mark.
        """
        self.logo = load_logo() if logo is None else logo
        crops, fills = [], []
        for image in images:
            image = _check_image(image, "CollectionAttack.fit")
            marks = self._locate(image)
            if marks and marks[0][1] >= self.min_score:
                crop, fill = self._aligned(image, marks[0][0])
                crops.append(crop)
                fills.append(fill)
        if len(crops) < 3:
            raise ValueError(f"CollectionAttack.fit: needs at least 3 images with a located mark, got {len(crops)}.")
        J, B = np.stack(crops).astype(np.float64), np.stack(fills).astype(np.float64)
        gx = np.median(np.diff(J, axis=2), axis=0)
        gy = np.median(np.diff(J, axis=1), axis=0)
        E = _poisson_dirichlet(gx, gy)
        dj, db = J - J.mean(0), B - B.mean(0)
        slope = (dj * db).sum(axis=(0, 3)) / np.maximum((db * db).sum(axis=(0, 3)), 1e-6)
        from scipy.ndimage import median_filter

        alpha = median_filter(np.clip(1.0 - slope, 0.0, 1.0), size=3)
        r, c = 2, self.canonical
        B, J = B[:, r:r + c, r:r + c], J[:, r:r + c, r:r + c]
        b_med, a, e = np.median(B, axis=0), alpha[r:r + c, r:r + c], E[r:r + c, r:r + c]
        w = np.where(a[..., None] > 0.1, b_med + e / np.maximum(a[..., None], 0.1), b_med)
        # The regression gives the collection's mean opacity; normalised by its typical value inside
        # the mark it becomes a matte (1 inside), capped per image by a fitted opacity, as the engine
        # caps the logo's coverage.
        inside = a > 0.3
        matte = np.clip(a / max(float(np.median(a[inside])) if inside.any() else 1.0, 1e-3), 0.0, 1.0)
        # Refinement: fit each image's opacity cap with the current estimate, then re-estimate W per
        # pixel from each image, (J - (1 - o) B) / o, weighted by o^2 (opaque marks show W best).
        for _ in range(self.refine):
            caps = [self._fit_cap(Jk, w, matte, Bk, c) for Jk, Bk in zip(J, B)]
            o = np.stack([np.minimum(matte, t) for t in caps])[..., None]
            est = (J - (1 - o) * B) / np.maximum(o, 0.05)
            weight = o ** 2
            w = np.where(matte[..., None] > 0.1, (weight * est).sum(0) / np.maximum(weight.sum(0), 1e-6), b_med)
        self.alpha = matte.astype(np.float32)
        self.watermark = np.clip(w, 0, 255).astype(np.float32)
        self.contribution = e.astype(np.float32)
        self.n_used = len(crops)
        return self

    def remove(self, image: np.ndarray) -> np.ndarray:
        """Invert the collection's watermark estimate at the mark located in ``image``."""
        if self.alpha is None:
            raise ValueError("CollectionAttack.remove: call fit() on the protected collection first.")
        image = _check_image(image, "CollectionAttack.remove")
        cv2 = opencv()
        marks = self._locate(image)
        if not marks:
            return image.copy()
        p = marks[0][0]
        a = np.clip(cv2.resize(self.alpha, (p.width, p.height), interpolation=cv2.INTER_LINEAR), 0, 1)
        wm = cv2.resize(self.watermark, (p.width, p.height), interpolation=cv2.INTER_LINEAR)
        x0, y0, x1, y1 = p.box_xyxy
        region = image[y0:y1, x0:x1].astype(np.float32)
        t = self._fit_cap(region, wm, a, self._box_fill(image, p), max(p.width, p.height))
        x, lost = _invert(region, wm, np.minimum(a, np.float32(t)))
        out = image.copy()
        out[y0:y1, x0:x1] = np.clip(np.rint(x), 0, 255).astype(np.uint8)
        lost_all = np.zeros(image.shape[:2], bool)
        lost_all[y0:y1, x0:x1] = lost
        return _fill_lost(out, lost_all)

    def __call__(self, protected: np.ndarray, logo: np.ndarray | None = None,
                 placements: Iterable[Placement | Mapping] | None = None) -> np.ndarray:
        """:meth:`remove`, in the common calling convention (``logo`` and ``placements`` unused)."""
        return self.remove(protected)
