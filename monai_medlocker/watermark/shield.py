"""The imperceptible shield: a bounded perturbation of the lesion-free retina, for what inpainting undoes.

A visible logo on lesion-free retina can be erased: inpainting its footprint, or inverting the blend,
gives the models back an image they grade right. The shield also changes the pixels of the field of
view (FOV) outside the lesion boxes (the WSM) and outside the logo boxes, each channel value by at
most ``linf`` grey levels (:data:`MAX_LINF` = 4, i.e. 4/255), so that the image still misleads the
models once the logo is gone.

The perturbation is found by momentum PGD (MI-FGSM, Dong et al. 2018) on the surrogate ensemble: it
maximises the mean cross-entropy of the label over the models, over the images the thief may end up
with (the protected image, and the same image with its logo boxes given back their original pixels,
as an inverse blend does, or filled by inpainting), and, when views are given, over the thief's
preprocessing views (expectation over transformation). Steps are whole grey levels (``step_size`` in
1-255 units, signed gradient), so the perturbation is an integer image and the bound is exact, not
a rounding away.

What never changes: the WSM (lesion pixels), pixels outside the FOV (the black surround), and the logo
boxes (the marks own them); a greyscale image stays greyscale. :func:`shield_region` is that rule; ``watermark_image`` checks it again on
the final image (``_check_invariants``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from monai_medlocker.networks import Surrogate, preprocess_for_model
from monai_medlocker.watermark.eot import _gaussian_blur
from monai_medlocker.watermark.logo import is_greyscale

__all__ = ["MAX_LINF", "ShieldSettings", "screen_geometry", "settings_views", "field_of_view", "shield_region", "shield_image", "psnr"]

MAX_LINF = 4  # grey levels of 255: the stated bound of DESIGN invariant 1's shield mode


@dataclass(frozen=True)
class ShieldSettings:
    """Settings of the shield.

    Attributes:
        enabled: ``False`` turns the shield off (same as no settings).
        linf: the L-infinity bound in grey levels of 255 (1 to :data:`MAX_LINF`).
        steps: momentum PGD iterations.
        step_size: grey levels per step (1 to ``linf``).
        momentum: MI-FGSM decay of the accumulated gradient (0: plain signed PGD).
        removal_aware: also optimise on the image with its logo boxes restored and inpainted.
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
    """

    enabled: bool = True
    linf: int = MAX_LINF
    steps: int = 10
    step_size: int = 1
    momentum: float = 1.0
    removal_aware: bool = True
    views: dict | None = None
    view_size: int | None = None
    smoothing: float = 1.0
    block: int | None = None

    def __post_init__(self) -> None:
        for name in ("linf", "steps", "step_size", "view_size", "block"):
            value = getattr(self, name)
            if name in ("view_size", "block") and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"shield {name} must be an integer, got {value!r}.")
        if not 1 <= self.linf <= MAX_LINF:
            raise ValueError(f"shield linf must be 1 to {MAX_LINF} grey levels (of 255), got {self.linf}.")
        if self.steps < 1:
            raise ValueError(f"shield steps must be at least 1, got {self.steps}.")
        if not 1 <= self.step_size <= self.linf:
            raise ValueError(f"shield step_size must be 1 to linf={self.linf} grey levels, got {self.step_size}.")
        if not self.momentum >= 0:
            raise ValueError(f"shield momentum must be >= 0, got {self.momentum}.")
        if self.block is not None and not 1 <= self.block <= 64:
            raise ValueError(f"shield block must be 1 to 64 pixels, got {self.block}.")
        if not 0 <= self.smoothing <= 8:
            raise ValueError(f"shield smoothing must be 0 to 8 screen pixels, got {self.smoothing}.")
        if self.view_size is not None and self.view_size < 16:
            raise ValueError(f"shield view_size must be at least 16 px, got {self.view_size}.")
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


def screen_geometry(settings: ShieldSettings, image_shape: Sequence[int],
                    surrogates: Sequence[Surrogate]) -> tuple[int, int, float]:
    """(view size, block side in native pixels, gradient blur sigma in native pixels) for one image."""
    view_size = settings.view_size or max(s.spec.input_size for s in surrogates)
    native_per_screen = min(image_shape[:2]) / view_size
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


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of two uint8 images; ``inf`` when equal."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * float(np.log10(255.0 ** 2 / mse))


def _hwc_uint8(image: np.ndarray, name: str) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"the shield needs an H x W x 3 uint8 {name}, got {image.shape} {image.dtype}.")
    return image


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

    Returns:
        The shielded H x W x 3 uint8 image: equal to ``image_uint8`` outside :func:`shield_region`, and
        within ``settings.linf`` grey levels of it inside.
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
    bases = [image]
    for other in removed:
        other = _hwc_uint8(other, "logo-removed image")
        if other.shape != image.shape:
            raise ValueError(f"a logo-removed image is {other.shape}, expected {image.shape}.")
        variant = image.copy()
        for x0, y0, x1, y1 in logo_boxes:
            variant[y0:y1, x0:x1] = other[y0:y1, x0:x1]
        bases.append(variant)
    x = torch.from_numpy(np.stack(bases)).permute(0, 3, 1, 2).float()  # K x 3 x H x W, 0-255
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
    for _ in range(settings.steps):
        d = delta.clone().requires_grad_(True)
        batch = (x + d) / 255.0
        loss = 0.0
        for s in surrogates:
            inp = batch
            if views is not None:
                inp = views(torch.nn.functional.interpolate(
                    batch, size=(view_size, view_size), mode="bilinear", align_corners=False,
                    antialias=True))
            logits = s.network(preprocess_for_model(inp.to(s.device), s.spec)).float().cpu()
            loss = loss + torch.nn.functional.cross_entropy(logits, targets.expand(logits.shape[0]))
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
