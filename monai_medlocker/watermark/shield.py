"""The imperceptible shield: a bounded perturbation of the lesion-free retina, for what inpainting undoes.

A visible logo on lesion-free retina can be erased: inpainting its footprint, or inverting the blend,
gives the models back an image they grade right. The shield also changes the pixels of the field of
view (FOV) outside the lesion boxes (the WSM) and outside the logo boxes, each channel value by at
most ``linf`` grey levels (4/255 by default for the block kind; a hard cap of :data:`MAX_LINF` = 12/255
for any kind), so that the image still misleads the models once the logo is gone.

The perturbation is found by momentum PGD (MI-FGSM, Dong et al. 2018) on the surrogate ensemble: it
maximises the mean cross-entropy of the label over the models, over the images the thief may end up
with (the protected image, and the same image with its logo boxes given back their original pixels,
as an inverse blend does, or with the marks' footprint filled by Telea or biharmonic inpainting or by
a learned remover: :func:`removal_images`; the fills take turns, one per step by default, so the cost
of a step does not grow with their number), and, when views are given, over the thief's
preprocessing views (expectation over transformation). Block kind: steps are whole grey levels (``step_size`` in
1-255 units, signed gradient), so the perturbation is an integer image and the bound is exact, not
a rounding away.

What never changes: the WSM (lesion pixels), pixels outside the FOV (the black surround), and the logo
boxes (the marks own them); a greyscale image stays greyscale. :func:`shield_region` is that rule; ``watermark_image`` checks it again on
the final image (``_check_invariants``).

Two kinds of perturbation field (``ShieldSettings.kind``):

* ``"block"`` (the first shield): a flat L-inf box of ``linf`` grey levels, constant over blocks of one
  screen pixel. At 8/255 its block edges show in flat retina.
* ``"perceptual"``: a smooth field, spent where the eye sees it least. The free values are a coarse grid
  of coefficients in a luminance/chroma (YCbCr) basis, upsampled bicubically (no block edges). Each
  pixel's budget is a just-noticeable-difference map of the original image (:func:`jnd_map`: luminance
  adaptation plus texture masking, as in Chou & Li 1995 and Yang et al. 2005), scaled by ``jnd_scale``,
  capped at ``linf`` (at most :data:`MAX_LINF`) and feathered to zero at the region's edges. Luminance
  gets the share ``luma`` of it, chroma the rest, so that no RGB channel moves by more than the budget.
  The per-pixel bound is :func:`shield_bound_map`; ``watermark_image`` enforces it on the final image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from monai_medlocker.networks import Surrogate, preprocess_for_model
from monai_medlocker.watermark.eot import _gaussian_blur
from monai_medlocker.watermark.logo import is_greyscale

__all__ = ["MAX_LINF", "BLOCK_LINF", "KINDS", "REMOVALS", "removal_images", "owner_remover", "LEVELS", "DEFAULT_LEVEL", "level_settings", "ShieldSettings", "jnd_map",
           "shield_bound_map", "offmark_fidelity",
           "block_edge_ratio", "screen_geometry", "settings_views", "field_of_view", "shield_region", "shield_image", "psnr"]

MAX_LINF = 12  # grey levels of 255: the hard cap of DESIGN invariant 1's shield mode
BLOCK_LINF = 4  # the block shield's default bound: blocky to the eye above it
PERCEPTUAL_LINF = 12  # the perceptual shield's default cap: its JND map keeps most pixels far below it
KINDS = ("block", "perceptual")
# The removals the objective can cover (issue 17 item 4): "inverse" gives the boxes back their original
# pixels; the others are fills of the marks' footprint (OpenCV Telea, scikit-image biharmonic, the owner's
# learned remover), each computed once on the marked image and held constant during the steps.
REMOVALS = ("inverse", "telea", "biharmonic", "learned")
_FIELD_STEP = 0.25  # signed step of the perceptual field's coefficients (in units of the budget) per iteration
# YCbCr -> RGB (BT.601): R = Y + 1.402 Cr, G = Y - 0.344 Cb - 0.714 Cr, B = Y + 1.772 Cb
_YCC_TO_RGB = ((1.0, 0.0, 1.402), (1.0, -0.344136, -0.714136), (1.0, 1.772, 0.0))


@dataclass(frozen=True)
class ShieldSettings:
    """Settings of the shield.

    Attributes:
        enabled: ``False`` turns the shield off (same as no settings).
        kind: ``"block"`` (flat L-inf box, blocks of constant change) or ``"perceptual"`` (smooth field,
            per-pixel JND budget, chroma before luminance); see the module text.
        linf: the L-infinity bound in grey levels of 255 (1 to :data:`MAX_LINF`); for the perceptual kind
            the hard cap on its per-pixel budget. ``None``: :data:`BLOCK_LINF` for block,
            :data:`PERCEPTUAL_LINF` for perceptual.
        steps: momentum PGD iterations.
        step_size: grey levels per step (1 to ``linf``).
        momentum: MI-FGSM decay of the accumulated gradient (0: plain signed PGD).
        removal_aware: also optimise on the image with its logo boxes removed, as :data:`REMOVALS` says.
        removals: the removals the objective covers (expectation over removals), among :data:`REMOVALS`:
            ``"inverse"`` (the boxes given back their original pixels, as an inverse blend does) is in
            every step; the fills (``"telea"``, ``"biharmonic"``, ``"learned"``) take turns, ``fills_per_step``
            of them per step, so that the cost per step does not grow with their number.
        fills_per_step: how many of the fills each step optimises on (they cycle); at least 1.
        remover: checkpoint of the owner's learned remover for ``"learned"`` (``None``: the bundle's
            ``models/shield_remover.pt``, trained on another lab seed than the threat study's thief).
        views: keyword arguments of :class:`monai_medlocker.watermark.eot.ThiefViews` (the thief's
            preprocessing views of EOT; ``{}`` for its default set, ``native_size`` defaults to the
            image's shorter side), or ``None`` for the models' own preprocessing only.
        view_size: side of the square screen frame the views act on; ``None``: the largest model input.
        block: the perturbation is constant over blocks of ``block`` x ``block`` native pixels
            (1: per pixel): fewer free values, a smaller restore payload; ``None``: one block per
            screen pixel (the image's shorter side over ``view_size``, rounded, at least 1).
        smoothing: Gaussian sigma, in pixels of that screen frame, of the blur applied to the gradient
            before each step (translation-invariant attack, Dong et al. 2019): smoother perturbations
            transfer better to unseen models and compress better; 0 turns it off.
        jnd_scale: perceptual only: the budget is ``jnd_scale`` times the JND map (then capped at ``linf``).
        luma: perceptual only: the share of the budget luminance may use (0 to 1); chroma gets the rest.
        grid: perceptual only: spacing, in native pixels, of the coarse field's control points;
            ``None``: two screen pixels.
        target_shift: 0 moves the models away from the true grade (an evasion shield). ``k`` (1 to 4) pulls
            every image toward grade ``(g + k) mod C`` instead: the same shift for every image, so the
            shield carries features of one wrong grade per true grade, the class-consistent targets of
            adversarial poisoning (Fowl et al. 2021), meant to mislead a thief who trains on the release.
        feature_weight: weight of a feature-level term (0: off): the objective also pushes each model's
            intermediate features (the last block at 1/8 of its input size, :func:`feature_module`) away from
            those of the unshielded image, as feature-level transfer attacks do (Zhou et al. 2018, Wang et
            al. 2021): mid-level features are shared across families more than the logits are.
    """

    enabled: bool = True
    kind: str = "block"
    linf: int | None = None
    steps: int = 10
    step_size: int = 1
    momentum: float = 1.0
    removal_aware: bool = True
    removals: tuple = ("inverse", "telea", "biharmonic", "learned")
    fills_per_step: int = 1
    remover: str | None = None
    views: dict | None = None
    view_size: int | None = None
    smoothing: float = 1.0
    block: int | None = None
    jnd_scale: float = 0.8
    luma: float = 0.25
    grid: int | None = None
    target_shift: int = 0
    feature_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"shield kind must be one of {KINDS}, got {self.kind!r}.")
        if self.linf is None:  # frozen: resolve the kind's default once, so records state the bound
            object.__setattr__(self, "linf", BLOCK_LINF if self.kind == "block" else PERCEPTUAL_LINF)
        if isinstance(self.removals, str) or not all(isinstance(r, str) for r in self.removals):
            raise ValueError(f"shield removals must be a list of names among {REMOVALS}, got {self.removals!r}.")
        object.__setattr__(self, "removals", tuple(self.removals))  # a JSON list becomes a tuple
        bad = sorted(set(self.removals) - set(REMOVALS))
        if bad:
            raise ValueError(f"unknown shield removal(s) {bad}; expected among {REMOVALS}.")
        for name in ("linf", "steps", "step_size", "view_size", "block", "grid", "fills_per_step", "target_shift"):
            value = getattr(self, name)
            if name in ("view_size", "block", "grid") and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"shield {name} must be an integer, got {value!r}.")
        if not 1 <= self.linf <= MAX_LINF:
            raise ValueError(f"shield linf must be 1 to {MAX_LINF} grey levels (of 255), got {self.linf}.")
        if self.fills_per_step < 1:
            raise ValueError(f"shield fills_per_step must be at least 1, got {self.fills_per_step}.")
        if self.steps < 1:
            raise ValueError(f"shield steps must be at least 1, got {self.steps}.")
        if not 0 <= self.target_shift <= 4:
            raise ValueError(f"shield target_shift must be 0 to 4 grades, got {self.target_shift}.")
        if self.kind == "block" and not 1 <= self.step_size <= self.linf:
            raise ValueError(f"shield step_size must be 1 to linf={self.linf} grey levels, got {self.step_size}.")
        if not self.momentum >= 0:
            raise ValueError(f"shield momentum must be >= 0, got {self.momentum}.")
        if self.block is not None and not 1 <= self.block <= 64:
            raise ValueError(f"shield block must be 1 to 64 pixels, got {self.block}.")
        if not 0 <= self.smoothing <= 8:
            raise ValueError(f"shield smoothing must be 0 to 8 screen pixels, got {self.smoothing}.")
        if not 0 < self.jnd_scale <= 4:
            raise ValueError(f"shield jnd_scale must be in (0, 4], got {self.jnd_scale}.")
        if not 0 <= self.luma <= 1:
            raise ValueError(f"shield luma must be 0 to 1, got {self.luma}.")
        if self.grid is not None and not 1 <= self.grid <= 64:
            raise ValueError(f"shield grid must be 1 to 64 pixels, got {self.grid}.")
        if self.view_size is not None and self.view_size < 16:
            raise ValueError(f"shield view_size must be at least 16 px, got {self.view_size}.")
        if not 0 <= self.feature_weight <= 100:
            raise ValueError(f"shield feature_weight must be 0 to 100, got {self.feature_weight}.")
        if self.views is not None and not isinstance(self.views, dict):
            raise ValueError(f"shield views must be a dict of ThiefViews settings or None, got {type(self.views).__name__}.")

    @classmethod
    def from_config(cls, config: "ShieldSettings | dict | bool | None") -> "ShieldSettings | None":
        """Settings from a config value; ``None``, ``False`` or ``enabled: false`` mean no shield (``None``)."""
        if config is None or config is False:
            return None
        if config is True:
            settings = cls()
        elif isinstance(config, cls):
            settings = config
        elif isinstance(config, dict):
            unknown = sorted(set(config) - set(cls.__dataclass_fields__))
            if unknown:
                raise ValueError(f"unknown shield setting(s) {unknown}; expected among {sorted(cls.__dataclass_fields__)}.")
            settings = cls(**config)
        else:
            raise TypeError(f"shield must be None, a bool, a dict or ShieldSettings, got {type(config).__name__}.")
        return settings if settings.enabled else None

    def to_record(self) -> dict:
        return asdict(self)


# Protection levels (issue 17 item 2): named shield presets. "mark" is the visible mark alone (the paper's
# method) and stays the default: the perceptual shield misses the default targets (accuracy and a
# cost of 1 s per image at 512 px), see benchmarks/results/shield/README.md.
LEVELS: dict[str, dict | None] = {
    "mark": None,
    "shield": {"kind": "perceptual"},
    "strong": {"kind": "perceptual", "jnd_scale": 2.0},
}
DEFAULT_LEVEL = "mark"


def level_settings(level: str | None = None, shield: "ShieldSettings | dict | bool | None" = None
                   ) -> tuple[str, "ShieldSettings | None"]:
    """(level name, shield settings) of a protection level; an explicit ``shield`` overrides the level's.

    ``shield`` ``False`` is the ``"mark"`` level; other explicit settings are named by the level whose
    preset they equal, else ``"custom"``.

    Raises:
        ValueError: an unknown level name.
    """
    level = DEFAULT_LEVEL if level is None else level
    if level not in LEVELS:
        raise ValueError(f"unknown protection level {level!r}; expected one of {sorted(LEVELS)}.")
    if shield is None:
        return level, ShieldSettings.from_config(LEVELS[level])
    settings = ShieldSettings.from_config(shield)
    for name, preset in LEVELS.items():
        if settings == ShieldSettings.from_config(preset):
            return name, settings
    return "custom", settings


def screen_geometry(settings: ShieldSettings, image_shape: Sequence[int],
                    surrogates: Sequence[Surrogate]) -> tuple[int, int, float]:
    """(view size, block side (perceptual: field grid spacing) in native pixels, gradient blur sigma in native pixels)."""
    view_size = settings.view_size or max(s.spec.input_size for s in surrogates)
    native_per_screen = min(image_shape[:2]) / view_size
    if settings.kind == "perceptual":  # the "block" is the spacing of the smooth field's control points
        block = settings.grid or max(1, round(2 * native_per_screen))
    else:
        block = settings.block or max(1, round(native_per_screen))
    return view_size, int(block), settings.smoothing * native_per_screen


def settings_views(settings: ShieldSettings, image_shape: Sequence[int]):
    """The EOT views of ``settings`` for an image of ``image_shape`` (``None`` when it has none)."""
    if settings.views is None:
        return None
    from monai_medlocker.watermark.eot import ThiefViews

    return ThiefViews(**{"native_size": int(min(image_shape[:2])), **settings.views})


def field_of_view(image: np.ndarray) -> np.ndarray:
    """The fundus field of view (H x W bool) of the built-in lesion detector (``detect_fov``).

    Raises:
        LesionDetectionError: an image with no round field on a dark surround.
    """
    from monai_medlocker.lesions.builtin import detect_fov

    return detect_fov(image)[0]


def shield_region(wsm: np.ndarray, fov_mask: np.ndarray, logo_boxes: Sequence[Sequence[int]]) -> np.ndarray:
    """The pixels the shield may change: inside the FOV, outside the WSM and outside every logo box."""
    wsm, fov_mask = np.asarray(wsm, dtype=bool), np.asarray(fov_mask, dtype=bool)
    if wsm.shape != fov_mask.shape:
        raise ValueError(f"the WSM is {wsm.shape} but the FOV mask is {fov_mask.shape}; expected the same H x W.")
    region = fov_mask & ~wsm
    for x0, y0, x1, y1 in logo_boxes:
        region[int(y0):int(y1), int(x0):int(x1)] = False
    return region


def _luma(image: np.ndarray) -> np.ndarray:
    f = np.asarray(image, dtype=np.float64)
    return 0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]


def jnd_map(image: np.ndarray) -> np.ndarray:
    """Just-noticeable difference (grey levels of 255) per pixel of an H x W x 3 uint8 image.

    Luminance adaptation (Chou & Li 1995: the eye sees less change in dark and in bright surrounds)
    plus texture masking (the local gradient hides change), combined as in Yang et al. 2005
    (``LA + TM - 0.3 min(LA, TM)``) and smoothed so that the budget has no edges of its own.
    """
    from scipy.ndimage import gaussian_filter, sobel

    y = _luma(image)
    bg = gaussian_filter(y, 2.0)
    la = np.where(bg <= 127, 17.0 * (1.0 - np.sqrt(bg / 127.0)) + 3.0, 3.0 / 128.0 * (bg - 127.0) + 3.0)
    ys = gaussian_filter(y, 1.0)
    grad = np.hypot(sobel(ys, 0), sobel(ys, 1)) / 8.0  # grey levels per pixel
    mg = gaussian_filter(4.0 * grad, 2.0)  # the change across ~4 px, as Chou & Li's 5 x 5 operators
    tm = np.maximum(mg * (0.115 + 1e-4 * bg) + 0.5 - 0.01 * bg, 0.0)
    return gaussian_filter(la + tm - 0.3 * np.minimum(la, tm), 2.0).astype(np.float32)


def shield_bound_map(reference: np.ndarray, wsm: np.ndarray, fov_mask: np.ndarray,
                     logo_boxes: Sequence[Sequence[int]], settings: ShieldSettings,
                     cell: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(budget, bound): the shield's per-pixel budget (float grey levels) and its stated integer bound.

    Both are 0 outside :func:`shield_region`. Block kind: ``settings.linf`` everywhere in the region.
    Perceptual kind: ``jnd_scale`` x :func:`jnd_map` of ``reference`` (the original image), capped at
    ``linf`` and feathered to 0 over ``cell`` pixels at the region's edges (no step at a box or the FOV
    rim). The bound is the budget rounded (what a rounded change within the budget can reach); no channel
    of a pixel may change by more (``watermark_image`` checks it).
    """
    region = shield_region(wsm, fov_mask, logo_boxes)
    if settings.kind == "block":
        budget = np.where(region, float(settings.linf), 0.0).astype(np.float32)
        return budget, np.where(region, settings.linf, 0).astype(np.int16)
    from scipy.ndimage import distance_transform_edt

    reference = _hwc_uint8(reference, "reference image")
    if reference.shape[:2] != region.shape:
        raise ValueError(f"the masks are {region.shape} but the image is {reference.shape[:2]}; expected the same H x W.")
    taper = np.clip(distance_transform_edt(region) / max(1, cell), 0.0, 1.0)
    budget = (np.minimum(settings.jnd_scale * jnd_map(reference), settings.linf) * taper).astype(np.float32)
    return budget, np.minimum(np.rint(budget), settings.linf).astype(np.int16)


def offmark_fidelity(original: np.ndarray, protected: np.ndarray, region: np.ndarray) -> dict:
    """SSIM on luminance and PSNR (all channels) of ``protected`` against ``original`` over ``region``.

    The region is the lesion-free field of view outside the marks (:func:`shield_region`): what the
    shield may change. SSIM is skimage's (7 px window) on the luminance, averaged over the region.
    """
    from skimage.metrics import structural_similarity

    region = np.asarray(region, dtype=bool)
    if not region.any():
        return {"ssim_luma": 1.0, "psnr": float("inf")}
    _, smap = structural_similarity(_luma(original), _luma(protected), data_range=255, full=True)
    diff = original.astype(np.float64)[region] - protected.astype(np.float64)[region]
    mse = float((diff ** 2).mean())
    return {"ssim_luma": round(float(smap[region].mean()), 6),
            "psnr": float("inf") if mse == 0 else round(10.0 * float(np.log10(255.0 ** 2 / mse)), 4)}


def block_edge_ratio(original: np.ndarray, protected: np.ndarray, region: np.ndarray, periods=range(2, 9)) -> float:
    """Largest, over block periods, of the mean horizontal step of the change across block edges over its mean elsewhere.

    The change is ``protected - original`` (all channels); only steps between two region pixels count. A
    field constant over p x p blocks has all its steps on the edges (ratio >> 1); a smooth one has none (~1).
    """
    d = protected.astype(np.float64) - original.astype(np.float64)
    step = np.abs(np.diff(d, axis=1)).sum(axis=-1)  # step between columns j and j + 1
    both = region[:, 1:] & region[:, :-1]
    ratios = []
    for p in periods:
        edge = (np.arange(step.shape[1]) % p) == p - 1  # steps into a new block of p columns
        on, off = step[:, edge][both[:, edge]], step[:, ~edge][both[:, ~edge]]
        if on.size and off.size:
            ratios.append(float(on.mean()) / max(float(off.mean()), 1e-9))
    return max(ratios) if ratios else 1.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of two uint8 images; ``inf`` when equal."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * float(np.log10(255.0 ** 2 / mse))


def _hwc_uint8(image: np.ndarray, name: str) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"the shield needs an H x W x 3 uint8 {name}, got {image.shape} {image.dtype}.")
    return image


def _coarse_inpaint(marked: np.ndarray, footprint: np.ndarray, factor: int, method: str) -> np.ndarray:
    """Inpaint ``footprint`` on a copy shrunk ``factor`` times, then enlarge the fill into the footprint.

    The surrogates read the image at their input size (a few native pixels per screen pixel), so the fill's
    detail below that scale barely reaches the loss; biharmonic inpainting at native size costs far more.
    A shrunk pixel is a hole when it is mostly footprint.
    """
    from monai_medlocker.watermark.inpaint import crop_around, inpaint_mask, opencv

    if factor <= 1 or not footprint.any():
        return inpaint_mask(marked, footprint, method)
    cv2 = opencv()
    sl = crop_around(footprint, 16)
    crop, hole = marked[sl], footprint[sl]
    h, w = hole.shape
    sh, sw = max(8, -(-h // factor)), max(8, -(-w // factor))
    small = cv2.resize(crop, (sw, sh), interpolation=cv2.INTER_AREA)
    small_hole = cv2.resize(hole.astype(np.float32), (sw, sh), interpolation=cv2.INTER_AREA) > 0.5  # mostly logo
    up = cv2.resize(inpaint_mask(small, small_hole, method), (w, h), interpolation=cv2.INTER_CUBIC)
    out = marked.copy()
    out[sl] = np.where(hole[..., None], up, crop)
    return out


_REMOVERS: dict = {}


def owner_remover(path: str | None = None):
    """The owner's learned remover of the objective (cached per path); ``None``: the bundle's ``models/shield_remover.pt``.

    Raises:
        ValueError: the checkpoint is missing or is not a remover checkpoint (the message names the file).
    """
    from monai_medlocker.watermark.remover import RemoverNetwork

    if path is None:
        from monai_medlocker.bundle_config import bundle_root

        try:
            path = str(bundle_root() / "models" / "shield_remover.pt")
        except FileNotFoundError as err:
            raise ValueError(f"the shield's learned remover: {err}; or set the shield's 'remover' checkpoint, "
                             "or leave 'learned' out of its 'removals'") from None
    if path not in _REMOVERS:
        _REMOVERS[path] = RemoverNetwork.from_checkpoint(path)
    return _REMOVERS[path]


def removal_images(image: np.ndarray, marked: np.ndarray, logo: np.ndarray, marks, settings: ShieldSettings,
                   native_per_screen: float = 1.0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(removed, fills) for :func:`shield_image`: the images that stand for the marks removed, per ``settings.removals``.

    ``removed``: the original ``image`` for ``"inverse"`` (what an inverse blend recovers). ``fills``: the
    marks' footprint (``logo_footprint``, grown 2 px as the attacks' traced footprint) inpainted on the
    marked image by Telea (native size), biharmonic (on a copy half the models' scale, ``native_per_screen / 2``
    times smaller than native: :func:`_coarse_inpaint`; at the models' scale it differs from the native fill by
    less than Telea does, at a fifth of the cost) and the owner's learned remover (:func:`owner_remover`, on the true
    boxes). Each fill is computed once, on the marked image, and held constant while the shield is
    optimised: inpainting is not differentiable, and the fill reads the footprint's surround, which lies
    in the mark's box (the shield never changes it) or where the shield's budget is feathered to zero at
    the box's edge, so the shield moves it by a fraction of its own change (a recomputed fill differs by about
    a third of the shield's mean change: tests/test_shield.py). A straight-through gradient through the fill
    would add little for that reason; the fills cost one inpainting each per image, not one per step.
    """
    if not settings.removal_aware:
        return [], []
    from monai_medlocker.watermark.inpaint import inpaint_mask, logo_footprint

    removed = [image] if "inverse" in settings.removals else []
    fills = []
    footprint = None
    for name in settings.removals:
        if name in ("telea", "biharmonic") and footprint is None:
            footprint = logo_footprint(marked.shape, logo, marks)
        if name == "telea":
            fills.append(inpaint_mask(marked, footprint, "telea"))
        elif name == "biharmonic":
            fills.append(_coarse_inpaint(marked, footprint, max(1, int(round(native_per_screen / 2))), "biharmonic"))
        elif name == "learned":
            fills.append(owner_remover(settings.remover).remove_at(marked, marks))
    return removed, fills


def shield_image(
    image_uint8: np.ndarray,
    wsm: np.ndarray,
    fov_mask: np.ndarray,
    surrogates: Sequence[Surrogate],
    label: int,
    logo_boxes: Sequence[Sequence[int]],
    views: Callable[[torch.Tensor], torch.Tensor] | None = None,
    settings: ShieldSettings | None = None,
    removed: Sequence[np.ndarray] = (),
    reference: np.ndarray | None = None,
    fills: Sequence[np.ndarray] = (),
) -> np.ndarray:
    """Perturb the shield region of a protected image so that the models mispredict with or without its logo.

    Args:
        image_uint8: the H x W x 3 uint8 image with its logo marks in place.
        wsm: H x W bool lesion boxes (never changed).
        fov_mask: H x W bool field of view (nothing outside it changes).
        surrogates: the models to mislead (an ensemble: the mean cross-entropy over them is maximised).
        label: the grade to move away from.
        logo_boxes: the marks' xyxy boxes (end-exclusive; never changed by the shield).
        views: a differentiable ``B x 3 x S x S -> B*V x 3 x S x S`` map of 0-1 images (the thief's
            preprocessing views), applied to a square ``settings.view_size`` resize; ``None``: none.
            :func:`settings_views` builds them from the settings.
        settings: the bound and the optimisation (default :class:`ShieldSettings`).
        removed: images that stand for the logo removed (only their logo-box pixels are used): e.g. the
            original image (what an inverse blend recovers) and an inpainted copy. Each is optimised on
            with the shield added, beside ``image_uint8`` itself.
        reference: the original image the perceptual kind's JND map reads (``None``: ``image_uint8``).
        fills: more logo-removed images (inpainted footprints, :func:`removal_images`), used as ``removed``
            but in turns: ``settings.fills_per_step`` of them per step, cycling, beside ``removed``.

    Returns:
        The shielded H x W x 3 uint8 image: equal to ``image_uint8`` outside :func:`shield_region`, and
        within :func:`shield_bound_map`'s bound (at most ``settings.linf`` grey levels) of it inside.
    """
    settings = settings or ShieldSettings()
    image = _hwc_uint8(image_uint8, "image")
    region = shield_region(wsm, fov_mask, logo_boxes)
    if region.shape != image.shape[:2]:
        raise ValueError(f"the masks are {region.shape} but the image is {image.shape[:2]}; expected the same H x W.")
    if not surrogates:
        raise ValueError("the shield needs at least one surrogate model.")
    if not region.any():
        return image.copy()
    def variants(others) -> list[np.ndarray]:
        out = []
        for other in others:
            other = _hwc_uint8(other, "logo-removed image")
            if other.shape != image.shape:
                raise ValueError(f"a logo-removed image is {other.shape}, expected {image.shape}.")
            variant = image.copy()
            for x0, y0, x1, y1 in logo_boxes:
                variant[y0:y1, x0:x1] = other[y0:y1, x0:x1]
            out.append(variant)
        return out

    x = torch.from_numpy(np.stack([image] + variants(removed))).permute(0, 3, 1, 2).float()  # K x 3 x H x W, 0-255
    x_fills = [torch.from_numpy(v).permute(2, 0, 1).float() for v in variants(fills)]
    per_step = min(settings.fills_per_step, len(x_fills))

    def batch(step: int) -> torch.Tensor:
        """The images of one step: the fixed ones and ``per_step`` fills, in turns (expectation over removals)."""
        if not per_step:
            return x
        return torch.cat([x, torch.stack([x_fills[(step * per_step + j) % len(x_fills)] for j in range(per_step)])])

    if settings.kind == "perceptual":
        return _perceptual(image, x, batch, wsm, fov_mask, surrogates, label, logo_boxes, views, settings,
                           image if reference is None else reference)
    mask = torch.from_numpy(region)[None, None].float()
    # Where x + delta would leave 0-255, those levels are out of reach: clip the bound per pixel.
    lo = torch.clamp(-x[:1], min=-settings.linf) * mask
    hi = torch.clamp(255.0 - x[:1], max=settings.linf) * mask
    height, width = image.shape[:2]
    view_size, block, sigma = screen_geometry(settings, image.shape, surrogates)
    # The free variables: one integer per block of block x block pixels (per channel); 1 = per pixel.
    coarse = torch.zeros(1, 3, -(-height // block), -(-width // block))
    delta = torch.zeros_like(x[:1])
    velocity = torch.zeros_like(coarse)
    targets = torch.full((1,), int(label), dtype=torch.long)
    # A greyscale image (red-free, stored grey) stays greyscale: one perturbation for all three channels.
    grey = is_greyscale(image)
    for step in range(settings.steps):
        d = delta.clone().requires_grad_(True)
        clean = batch(step)
        loss = _ensemble_loss((clean + d) / 255.0, surrogates, targets, views, view_size, settings.target_shift,
                              clean / 255.0, settings.feature_weight)
        (grad,) = torch.autograd.grad(loss, d)
        if sigma > 0:
            grad = _gaussian_blur(grad, sigma)
        grad = grad * mask
        if grey:
            grad = grad.sum(dim=1, keepdim=True).expand_as(grad)
        if block > 1:
            grad = torch.nn.functional.avg_pool2d(grad, block, ceil_mode=True)
        velocity = settings.momentum * velocity + grad / grad.abs().mean().clamp_min(1e-12)
        # Signed integer steps keep delta on whole grey levels: the bound holds exactly, no rounding.
        coarse = (coarse + settings.step_size * torch.sign(velocity)).clamp(-settings.linf, settings.linf)
        full = coarse.repeat_interleave(block, dim=2).repeat_interleave(block, dim=3)[..., :height, :width]
        delta = torch.minimum(torch.maximum(full, lo), hi)
    out = (x[0] + delta[0]).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return np.ascontiguousarray(out)


def feature_module(network: torch.nn.Module, input_size: int, stride: int = 8) -> torch.nn.Module:
    """The module whose output is the network's mid-level features: the last one (two levels deep at most, in
    the order they run) whose output is ``input_size / stride`` pixels wide (ResNet's layer2, DenseNet's
    denseblock2, EfficientNet's third block at stride 8)."""
    cached = getattr(network, "_medlocker_feature_module", None)
    if cached is not None:
        return cached
    found: list[torch.nn.Module] = []
    want = input_size // stride

    def note(module, _inputs, output):
        if torch.is_tensor(output) and output.dim() == 4 and output.shape[-1] == want:
            found.append(module)

    hooks = [m.register_forward_hook(note) for name, m in network.named_modules() if name and name.count(".") <= 1]
    try:
        with torch.no_grad():
            network(torch.zeros(1, 3, input_size, input_size, device=next(network.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    if not found:
        raise ValueError(f"{type(network).__name__}: no module gives {want} x {want} features at input {input_size}")
    object.__setattr__(network, "_medlocker_feature_module", found[-1])
    return found[-1]


def _feature_distance(s: Surrogate, shielded: torch.Tensor, unshielded: torch.Tensor) -> torch.Tensor:
    """How far the shield moves the model's mid-level features: squared change over the unshielded energy."""
    module = feature_module(s.network, s.spec.input_size)
    grabbed: list[torch.Tensor] = []
    hook = module.register_forward_hook(lambda _m, _i, out: grabbed.append(out))
    try:
        s.network(preprocess_for_model(torch.cat([shielded, unshielded]).to(s.device), s.spec))
    finally:
        hook.remove()
    moved, base = grabbed[0].float().cpu().chunk(2)
    base = base.detach()
    return ((moved - base) ** 2).mean() / (base**2).mean().clamp_min(1e-12)


def _ensemble_loss(batch: torch.Tensor, surrogates: Sequence[Surrogate], targets: torch.Tensor, views,
                   view_size: int, target_shift: int = 0, unshielded: torch.Tensor | None = None,
                   feature_weight: float = 0.0) -> torch.Tensor:
    """The objective the shield ascends: the sum over the models of the mean cross-entropy of the true grades
    ``targets`` on ``batch`` (0-1), through the views; with ``target_shift`` k, minus that of grades
    ``(targets + k) mod C`` (a pull toward them); with ``feature_weight``, plus that times each model's
    feature change against ``unshielded`` (the same images without the shield, on the models' own input)."""
    loss = 0.0
    if feature_weight:
        for s in surrogates:
            loss = loss + feature_weight * _feature_distance(s, batch, unshielded)
    for s in surrogates:
        inp = batch
        if views is not None:
            inp = views(torch.nn.functional.interpolate(
                batch, size=(view_size, view_size), mode="bilinear", align_corners=False, antialias=True))
        logits = s.network(preprocess_for_model(inp.to(s.device), s.spec)).float().cpu()
        if target_shift:
            if target_shift % logits.shape[1] == 0:
                raise ValueError(f"shield target_shift {target_shift} is a multiple of the {logits.shape[1]} classes: "
                                 "it would pull toward the true grade.")
            shifted = (targets + target_shift) % logits.shape[1]
            loss = loss - torch.nn.functional.cross_entropy(logits, shifted.expand(logits.shape[0]))
        else:
            loss = loss + torch.nn.functional.cross_entropy(logits, targets.expand(logits.shape[0]))
    return loss


def _perceptual(image, x, batch, wsm, fov_mask, surrogates, label, logo_boxes, views, settings, reference) -> np.ndarray:
    """The perceptual kind of :func:`shield_image`: a smooth luminance/chroma field within the JND budget."""
    height, width = image.shape[:2]
    view_size, cell, sigma = screen_geometry(settings, image.shape, surrogates)
    budget, bound = shield_bound_map(reference, wsm, fov_mask, logo_boxes, settings, cell)
    budget_t = torch.from_numpy(budget)[None, None]
    grey = is_greyscale(image)
    # Coefficient weights (Y, Cb, Cr) in units of the budget: luminance gets ``luma``, chroma the rest,
    # scaled so that every RGB channel of YCbCr -> RGB stays within the budget (R: luma + 1.402 wr = 1).
    luma = 1.0 if grey else settings.luma
    weights = torch.tensor([luma, (1 - luma) / 1.772, (1 - luma) / 1.402]).view(1, 3, 1, 1)
    to_rgb = torch.tensor(_YCC_TO_RGB)
    coarse = torch.zeros(1, 3, -(-height // cell) + 1, -(-width // cell) + 1)
    velocity = torch.zeros_like(coarse)
    targets = torch.full((1,), int(label), dtype=torch.long)

    def field(c: torch.Tensor) -> torch.Tensor:  # coarse coefficients -> smooth RGB change (grey levels)
        smooth = torch.nn.functional.interpolate(c, size=(height, width), mode="bicubic", align_corners=False)
        ycc = smooth.clamp(-1, 1) * weights  # bicubic overshoot clipped: still continuous
        return torch.einsum("rc,bchw->brhw", to_rgb, ycc) * budget_t

    for step in range(settings.steps):
        c = coarse.clone().requires_grad_(True)
        clean = batch(step)
        loss = _ensemble_loss(((clean + field(c)) / 255.0).clamp(0, 1), surrogates, targets, views, view_size,
                              settings.target_shift, clean / 255.0, settings.feature_weight)
        (grad,) = torch.autograd.grad(loss, c)
        if sigma > 0:
            grad = _gaussian_blur(grad, sigma / cell)
        if grey:  # a grey image stays grey: no chroma
            grad[:, 1:] = 0
        velocity = settings.momentum * velocity + grad / grad.abs().mean().clamp_min(1e-12)
        coarse = (coarse + _FIELD_STEP * torch.sign(velocity)).clamp(-1, 1)
    bound_t = torch.from_numpy(bound.astype(np.float32))[None, None]
    delta = torch.minimum(torch.maximum(field(coarse).round(), -bound_t), bound_t)
    out = (x[0] + delta[0]).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return np.ascontiguousarray(out)
