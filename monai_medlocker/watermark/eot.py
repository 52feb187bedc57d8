"""Expectation over transformation (EOT): the thief's preprocessing as differentiable views.

The threat study (``monai_medlocker.threats.preprocessing.THIEF_PREPROCESSING``) runs each protected
image through the thief's own preprocessing before the model. ``ThiefViews`` emulates that set in
the optimizer's screen frame (``B x 3 x S x S`` in 0-1, what ``AttackProblem`` feeds the models), so a
search or a gradient step can ask that the mark survives every view, not only the untouched image.

Each view is a torch op that autograd differentiates, except JPEG, which is straight-through: the
forward pass is the real Pillow JPEG round trip of the screen image and the backward pass is the
identity. Views are deterministic: colour jitter draws its factors once, from ``seed``.

Approximations, and why they are acceptable:
- the thief works at native resolution and the model then resizes; here every view works on the
  already-resized screen image. Sizes that depend on the native resolution (the 0.5x downscale,
  the blur's sigma) are converted with ``native_size``; JPEG runs at the screen resolution, which is
  harsher than JPEG at 512 px followed by a 4x shrink (its 8 x 8 blocks are 4x larger), so it errs
  on the safe side.
- the disc crop finds the field of view by the same rule as ``lesions.builtin.detect_fov`` (pixels
  above 20% of the bright level) without its morphology; on lab and real fundus images the
  bounding box is the same to a screen pixel or two.
- Ben Graham's normalisation is a domain shift (a thief's model must be trained on it); it is
  available as ``"ben_graham"`` but not in ``DEFAULT_VIEWS``.
"""

from __future__ import annotations

import io
import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = ["VIEW_NAMES", "DEFAULT_VIEWS", "ThiefViews", "InputDiversity"]

VIEW_NAMES = (
    "none", "disc_crop", "jpeg75", "downscale50", "center_crop90", "hflip", "color_jitter", "gaussian_blur",
    "ben_graham",
)
# The study's preprocessing set without the Ben Graham domain shift.
DEFAULT_VIEWS = VIEW_NAMES[:-1]


def _resize(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    size = (size, size) if isinstance(size, int) else size
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur, edges replicated (scipy's ``mode="nearest"``, as the study's blur)."""
    radius = max(1, int(math.ceil(4.0 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def _grey(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


class ThiefViews:
    """The thief's preprocessing set as differentiable views of a screen-frame batch.

    Args:
        names: views to produce, in order (each among ``VIEW_NAMES``); default ``DEFAULT_VIEWS``.
        native_size: the shorter side of the native image the screen frame was resized from; it sets
            the downscale and blur sizes. ``None`` takes the screen size (as if the model saw native pixels).
        seed: seed of the colour-jitter factors.
        jpeg_quality: quality of the JPEG view.

    Calling it on ``x`` (B x 3 x S x S, 0-1) returns ``B * V`` views, image-major: row ``b * V + v``
    is view ``names[v]`` of image ``b`` (``out.view(B, V, 3, S, S)`` recovers the grid).
    """

    def __init__(self, names: Sequence[str] | None = None, native_size: int | None = None, seed: int = 0,
                 jpeg_quality: int = 75) -> None:
        names = tuple(DEFAULT_VIEWS if names is None else names)
        unknown = [n for n in names if n not in VIEW_NAMES]
        if unknown or not names:
            raise ValueError(f"ThiefViews: unknown or no view names {unknown or list(names)}; expected among "
                             f"{', '.join(VIEW_NAMES)}.")
        if native_size is not None and native_size < 1:
            raise ValueError(f"ThiefViews: native_size must be >= 1 or None, got {native_size}.")
        if not 1 <= int(jpeg_quality) <= 95:
            raise ValueError(f"ThiefViews: jpeg_quality must be in 1..95, got {jpeg_quality}.")
        self.names = names
        self.native_size = native_size
        self.seed = int(seed)
        self.jpeg_quality = int(jpeg_quality)
        rng = np.random.default_rng(self.seed)
        # brightness, contrast, saturation in [0.8, 1.2], as the study's color_jitter (0.2 each)
        self.jitter = tuple(float(f) for f in rng.uniform(0.8, 1.2, size=3))

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"ThiefViews(names={list(self.names)}, native_size={self.native_size}, seed={self.seed})"

    def to_record(self) -> dict:
        return {"views": list(self.names), "native_size": self.native_size, "seed": self.seed,
                "jpeg_quality": self.jpeg_quality}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-1] != x.shape[-2]:
            raise ValueError(f"ThiefViews: expected a B x 3 x S x S batch, got shape {tuple(x.shape)}.")
        views = [getattr(self, "_" + name)(x) for name in self.names]
        return torch.stack(views, dim=1).reshape(-1, *x.shape[1:])

    # ------------------------------------------------------------------------------------ the views
    def _native(self, s: int) -> int:
        return self.native_size or s

    def _none(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _hflip(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(-1)

    def _center_crop90(self, x: torch.Tensor) -> torch.Tensor:
        s = x.shape[-1]
        c = max(1, round(s * 0.9))
        o = (s - c) // 2
        return _resize(x[..., o:o + c, o:o + c], s)

    def _downscale50(self, x: torch.Tensor) -> torch.Tensor:
        # The thief halves the native image; only a size below the screen's loses detail the model would see.
        s = x.shape[-1]
        m = max(1, round(self._native(s) * 0.5))
        return _resize(_resize(x, m), s) if m < s else x

    def _gaussian_blur(self, x: torch.Tensor) -> torch.Tensor:
        s = x.shape[-1]
        return _gaussian_blur(x, 1.5 * s / self._native(s))

    def _color_jitter(self, x: torch.Tensor) -> torch.Tensor:
        fb, fc, fs = self.jitter
        x = (x * fb).clamp(0, 1)
        mean = _grey(x).mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * fc + mean).clamp(0, 1)
        g = _grey(x)
        return ((x - g) * fs + g).clamp(0, 1)

    def _jpeg75(self, x: torch.Tensor) -> torch.Tensor:
        arrays = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        out = []
        for a in arrays:
            buf = io.BytesIO()
            Image.fromarray(a).save(buf, format="JPEG", quality=self.jpeg_quality)
            buf.seek(0)
            out.append(np.asarray(Image.open(buf).convert("RGB")))
        jpeg = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(x.device, x.dtype) / 255.0
        return x + (jpeg - x).detach()  # straight-through: JPEG forward, identity backward

    def _disc_crop(self, x: torch.Tensor) -> torch.Tensor:
        s = x.shape[-1]
        lum = x.detach().amax(dim=1)  # B x S x S
        out = []
        for b in range(x.shape[0]):
            bright = torch.quantile(lum[b].flatten().float(), 0.99)
            inside = lum[b] > max(0.2 * float(bright), 12 / 255)
            rows, cols = torch.nonzero(inside.any(1)).flatten(), torch.nonzero(inside.any(0)).flatten()
            if rows.numel() == 0:
                out.append(x[b])
                continue
            crop = x[b:b + 1, :, int(rows[0]):int(rows[-1]) + 1, int(cols[0]):int(cols[-1]) + 1]
            h, w = crop.shape[-2:]
            side = max(h, w)
            top, left = (side - h) // 2, (side - w) // 2
            crop = F.pad(crop, (left, side - w - left, top, side - h - top))  # black, keeps the disc round
            out.append(_resize(crop, s)[0])
        return torch.stack(out)

    def _ben_graham(self, x: torch.Tensor) -> torch.Tensor:
        s = x.shape[-1]
        row = x.detach()[:, :, s // 2].sum(dim=1)  # B x S
        radius = ((row > row.mean(dim=1, keepdim=True) / 10).sum(dim=1).float() / 2).clamp(min=1)
        out = []
        yy, xx = torch.meshgrid(torch.arange(s, device=x.device), torch.arange(s, device=x.device), indexing="ij")
        for b in range(x.shape[0]):
            r = float(radius[b])
            y = 4 * x[b:b + 1] - 4 * _gaussian_blur(x[b:b + 1], r / 30) + 0.5
            inside = ((yy - s / 2) ** 2 + (xx - s / 2) ** 2 <= (0.9 * r) ** 2).to(x.dtype)
            out.append((y * inside + 0.5 * (1 - inside)).clamp(0, 1)[0])
        return torch.stack(out)


class InputDiversity:
    """Random resize-and-pad and colour views of a screen-frame batch, for the surrogates' gradient only.

    Input diversity (Xie et al., CVPR 2019): a gradient averaged over randomly rescaled, shifted and
    recoloured copies of the input depends less on one network's exact receptive-field alignment and
    colour response, so what it ranks highest fools other networks more often. Each view shrinks the
    image to a random fraction of its side in ``scale_range``, pads it back to ``S`` at a random offset
    (black, as the fundus surround) and scales brightness, contrast and saturation by random factors in
    ``1 +- jitter``. The draws are fixed at construction from ``seed``, so a search is reproducible.

    Unlike :class:`ThiefViews`, these views never judge success: ``AttackProblem`` averages the pairwise
    margins' gradients over the plain image and these views, and keeps the plain image's margins.

    Args:
        n_views: number of random views.
        scale_range: (min, max) fraction of the side the image is shrunk to.
        jitter: largest relative change of brightness, contrast and saturation.
        seed: seed of the draws.
    """

    def __init__(self, n_views: int = 4, scale_range: tuple[float, float] = (0.85, 1.0), jitter: float = 0.15,
                 seed: int = 0) -> None:
        if not isinstance(n_views, int) or n_views < 1:
            raise ValueError(f"InputDiversity: n_views must be an integer >= 1, got {n_views!r}.")
        lo, hi = scale_range
        if not 0.5 <= lo <= hi <= 1:
            raise ValueError(f"InputDiversity: scale_range must satisfy 0.5 <= min <= max <= 1, got {scale_range}.")
        if not 0 <= jitter < 1:
            raise ValueError(f"InputDiversity: jitter must be in [0, 1), got {jitter}.")
        rng = np.random.default_rng(seed)
        self.n_views = n_views
        self.seed = int(seed)
        self.scale_range = (float(lo), float(hi))
        self.jitter = float(jitter)
        self.scales = rng.uniform(lo, hi, n_views)
        self.offsets = rng.uniform(0, 1, (n_views, 2))  # where the shrunk image sits in the padding, per axis
        self.colour = rng.uniform(1 - jitter, 1 + jitter, (n_views, 3))  # brightness, contrast, saturation

    def __len__(self) -> int:
        return self.n_views

    def to_record(self) -> dict:
        return {"n_views": self.n_views, "scale_range": list(self.scale_range), "jitter": self.jitter, "seed": self.seed}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``B * n_views`` views of ``x`` (B x 3 x S x S, 0-1), image-major as :class:`ThiefViews`."""
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-1] != x.shape[-2]:
            raise ValueError(f"InputDiversity: expected a B x 3 x S x S batch, got shape {tuple(x.shape)}.")
        s = x.shape[-1]
        views = []
        for scale, (oy, ox), (fb, fc, fs) in zip(self.scales, self.offsets, self.colour):
            m = max(1, int(round(s * scale)))
            small = _resize(x, m)
            top, left = int(round(oy * (s - m))), int(round(ox * (s - m)))
            v = F.pad(small, (left, s - m - left, top, s - m - top))
            v = (v * fb).clamp(0, 1)
            mean = _grey(v).mean(dim=(1, 2, 3), keepdim=True)
            v = ((v - mean) * fc + mean).clamp(0, 1)
            g = _grey(v)
            views.append(((v - g) * fs + g).clamp(0, 1))
        return torch.stack(views, dim=1).reshape(-1, *x.shape[1:])
