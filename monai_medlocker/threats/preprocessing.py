"""The thief's own preprocessing, applied to a (protected) image before the target model.

Each step is a plain function over H x W x 3 uint8 images that returns a uint8 image, a MONAI array
transform over channel-first images (numpy, torch or MetaTensor in, the same container out, meta kept)
and its dictionary wrapper. They run before the target model's own resize and normalisation
(:func:`monai_medlocker.networks.preprocess_for_model`), as a thief's data pipeline would.

``THIEF_PREPROCESSING`` names the study's settings; :func:`get_thief_preprocessing` looks one up.
"""

from __future__ import annotations

import hashlib
import io
from functools import partial
from typing import Callable, Hashable, Mapping

import numpy as np
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends
from monai.utils.type_conversion import convert_to_dst_type, convert_to_numpy
from PIL import Image
from scipy.ndimage import gaussian_filter

from monai_medlocker.lesions.builtin import LesionDetectionError, detect_fov
from monai_medlocker.watermark.inpaint import check_rgb_image as _check_image

__all__ = [
    "fundus_disc_crop",
    "ben_graham_normalize",
    "jpeg_compress",
    "downscale",
    "center_crop_fraction",
    "horizontal_flip",
    "color_jitter",
    "gaussian_blur_image",
    "THIEF_PREPROCESSING",
    "get_thief_preprocessing",
    "FundusDiscCrop",
    "FundusDiscCropd",
    "FundusDiscCropD",
    "FundusDiscCropDict",
    "BenGrahamNormalize",
    "BenGrahamNormalized",
    "BenGrahamNormalizeD",
    "BenGrahamNormalizeDict",
    "JpegCompress",
    "JpegCompressd",
    "JpegCompressD",
    "JpegCompressDict",
    "Downscale",
    "Downscaled",
    "DownscaleD",
    "DownscaleDict",
    "CenterCropFraction",
    "CenterCropFractiond",
    "CenterCropFractionD",
    "CenterCropFractionDict",
    "HorizontalFlip",
    "HorizontalFlipd",
    "HorizontalFlipD",
    "HorizontalFlipDict",
    "ColorJitter",
    "ColorJitterd",
    "ColorJitterD",
    "ColorJitterDict",
    "GaussianBlurImage",
    "GaussianBlurImaged",
    "GaussianBlurImageD",
    "GaussianBlurImageDict",
]


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    # Pillow's resize is antialiased when shrinking, as a thief's PIL/torchvision pipeline would be.
    return np.asarray(Image.fromarray(image).resize((int(width), int(height)), Image.Resampling.BILINEAR))


# ------------------------------------------------------------------------------------------------
# Plain functions: H x W x 3 uint8 -> uint8
# ------------------------------------------------------------------------------------------------


def fundus_disc_crop(image: np.ndarray, size: int = 512) -> np.ndarray:
    """Crop to the bounding box of the field of view, pad it to a square, resize to ``size``.

    The usual Kaggle DR pipeline. The field of view is thresholded from the dark surround by
    :func:`monai_medlocker.lesions.builtin.detect_fov`; where none is found (no dark surround) the
    whole image is taken, as such pipelines do.
    """
    image = _check_image(image, "fundus_disc_crop")
    if size < 1:
        raise ValueError(f"fundus_disc_crop: size must be >= 1, got {size}.")
    try:
        fov, _ = detect_fov(image)
        ys, xs = np.nonzero(fov)
        crop = image[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    except LesionDetectionError:
        crop = image
    h, w = crop.shape[:2]
    side = max(h, w)
    # Chord-cut fields are taller or wider than the other way: pad with black to keep the disc round.
    square = np.zeros((side, side, 3), dtype=np.uint8)
    square[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = crop
    return _resize(square, size, size)


def ben_graham_normalize(image: np.ndarray, mask_fraction: float = 0.9) -> np.ndarray:
    """Ben Graham's local-average colour normalisation (Kaggle DR 2015 winner).

    ``4 I - 4 GaussianBlur(I, sigma = radius / 30) + 128``, then grey (128) outside a circle of
    ``mask_fraction`` times the fundus radius. The radius is estimated as in his code, from the middle
    row: half the number of pixels brighter than a tenth of the row's mean. His code first rescales the
    image to a fixed radius; here the image keeps its size (the target model resizes it anyway).
    """
    image = _check_image(image, "ben_graham_normalize")
    h, w = image.shape[:2]
    row = image[h // 2].astype(np.float32).sum(axis=1)
    radius = max(1.0, float((row > row.mean() / 10).sum()) / 2.0)
    img = image.astype(np.float32)
    blurred = gaussian_filter(img, (radius / 30.0, radius / 30.0, 0), mode="nearest")
    out = 4.0 * img - 4.0 * blurred + 128.0
    yy, xx = np.mgrid[0:h, 0:w]
    inside = (yy - h / 2.0) ** 2 + (xx - w / 2.0) ** 2 <= (mask_fraction * radius) ** 2
    out = np.where(inside[..., None], out, 128.0)
    return _to_uint8(out)


def jpeg_compress(image: np.ndarray, quality: int = 75) -> np.ndarray:
    """Encode as baseline JPEG with Pillow at ``quality`` (1-95) and decode again."""
    image = _check_image(image, "jpeg_compress")
    if not 1 <= int(quality) <= 95:
        raise ValueError(f"jpeg_compress: quality must be in 1..95, got {quality}.")
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def downscale(image: np.ndarray, factor: float = 0.5) -> np.ndarray:
    """Resize by ``factor`` in (0, 1] (antialiased bilinear); the output is smaller."""
    image = _check_image(image, "downscale")
    if not 0 < factor <= 1:
        raise ValueError(f"downscale: factor must be in (0, 1], got {factor}.")
    h, w = image.shape[:2]
    return _resize(image, max(1, round(w * factor)), max(1, round(h * factor)))


def center_crop_fraction(image: np.ndarray, fraction: float = 0.9) -> np.ndarray:
    """Keep the central ``fraction`` (0, 1] of each side."""
    image = _check_image(image, "center_crop_fraction")
    if not 0 < fraction <= 1:
        raise ValueError(f"center_crop_fraction: fraction must be in (0, 1], got {fraction}.")
    h, w = image.shape[:2]
    ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    return image[y0:y0 + ch, x0:x0 + cw].copy()


def horizontal_flip(image: np.ndarray) -> np.ndarray:
    """Mirror left-right."""
    return _check_image(image, "horizontal_flip")[:, ::-1].copy()


def _image_seed(image: np.ndarray) -> int:
    return int.from_bytes(hashlib.sha256(np.ascontiguousarray(image).tobytes()).digest()[:8], "little")


def color_jitter(image: np.ndarray, brightness: float = 0.2, contrast: float = 0.2, saturation: float = 0.2,
                 seed: int | None = None) -> np.ndarray:
    """Brightness, contrast and saturation jitter, as torchvision's ``ColorJitter`` (in that order).

    Each factor is drawn uniformly from ``[1 - v, 1 + v]``. ``seed=None`` derives the draw from the
    image's pixels (a per-image seed), so the result is a pure function of the image either way.
    """
    image = _check_image(image, "color_jitter")
    for name, v in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
        if not 0 <= v < 1:
            raise ValueError(f"color_jitter: {name} must be in [0, 1), got {v}.")
    rng = np.random.default_rng(_image_seed(image) if seed is None else seed)
    fb, fc, fs = (rng.uniform(1 - v, 1 + v) for v in (brightness, contrast, saturation))
    x = np.clip(image.astype(np.float32) * fb, 0, 255)
    grey = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    x = np.clip((x - grey.mean()) * fc + grey.mean(), 0, 255)
    grey = (x @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
    x = (x - grey) * fs + grey
    return _to_uint8(x)


def gaussian_blur_image(image: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Gaussian blur of each channel with standard deviation ``sigma`` pixels."""
    image = _check_image(image, "gaussian_blur_image")
    if sigma <= 0:
        raise ValueError(f"gaussian_blur_image: sigma must be > 0, got {sigma}.")
    return _to_uint8(gaussian_filter(image.astype(np.float32), (sigma, sigma, 0), mode="nearest"))


def _identity(image: np.ndarray) -> np.ndarray:
    return _check_image(image, "none").copy()


THIEF_PREPROCESSING: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": _identity,
    "disc_crop": partial(fundus_disc_crop, size=512),
    "ben_graham": partial(ben_graham_normalize, mask_fraction=0.9),
    "jpeg75": partial(jpeg_compress, quality=75),
    "downscale50": partial(downscale, factor=0.5),
    "center_crop90": partial(center_crop_fraction, fraction=0.9),
    "hflip": horizontal_flip,
    "color_jitter": partial(color_jitter, brightness=0.2, contrast=0.2, saturation=0.2, seed=None),
    "gaussian_blur": partial(gaussian_blur_image, sigma=1.5),
}


def get_thief_preprocessing(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """The study's preprocessing ``name`` as an H x W x 3 uint8 -> uint8 function.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    try:
        return THIEF_PREPROCESSING[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown thief preprocessing {name!r}; expected one of {', '.join(THIEF_PREPROCESSING)}.") from None


# ------------------------------------------------------------------------------------------------
# MONAI array transforms (channel-first) and dictionary wrappers
# ------------------------------------------------------------------------------------------------


class _ImageTransform(Transform):
    """Apply an H x W x 3 uint8 function to a 3 x H x W image and return the input's container.

    Float inputs are taken as 0-1 when their maximum is at most 1 and 0-255 otherwise, and come back
    on the same scale and dtype. A MetaTensor keeps its meta (its affine is not updated for crops).
    """

    backend = [TransformBackends.NUMPY, TransformBackends.TORCH]

    def _apply(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        arr = convert_to_numpy(img)
        if arr.ndim != 3 or arr.shape[0] != 3:
            raise ValueError(f"{type(self).__name__}: expected a 3 x H x W image, got shape {tuple(arr.shape)}.")
        hwc = np.moveaxis(arr, 0, -1)
        scale = 1.0
        if hwc.dtype != np.uint8:
            scale = 1.0 / 255.0 if float(hwc.max(initial=0)) <= 1.0 else 1.0
            hwc = _to_uint8(hwc.astype(np.float32) / scale)
        out = np.ascontiguousarray(np.moveaxis(self._apply(hwc), -1, 0))
        if scale != 1.0 or arr.dtype != np.uint8:
            out = (out.astype(np.float32) * scale).astype(arr.dtype)
        return convert_to_dst_type(out, img, dtype=out.dtype)[0]


class FundusDiscCrop(_ImageTransform):
    """Crop to the fundus disc and resize to ``size`` x ``size``: see :func:`fundus_disc_crop`."""

    def __init__(self, size: int = 512) -> None:
        if size < 1:
            raise ValueError(f"FundusDiscCrop: size must be >= 1, got {size}.")
        self.size = size

    def _apply(self, image: np.ndarray) -> np.ndarray:
        return fundus_disc_crop(image, self.size)


class BenGrahamNormalize(_ImageTransform):
    """Ben Graham's local-average colour normalisation: see :func:`ben_graham_normalize`."""

    def __init__(self, mask_fraction: float = 0.9) -> None:
        if not 0 < mask_fraction <= 1:
            raise ValueError(f"BenGrahamNormalize: mask_fraction must be in (0, 1], got {mask_fraction}.")
        self.mask_fraction = mask_fraction

    def _apply(self, image: np.ndarray) -> np.ndarray:
        return ben_graham_normalize(image, self.mask_fraction)


class JpegCompress(_ImageTransform):
    """JPEG round trip at ``quality``: see :func:`jpeg_compress`."""

    def __init__(self, quality: int = 75) -> None:
        if not 1 <= int(quality) <= 95:
            raise ValueError(f"JpegCompress: quality must be in 1..95, got {quality}.")
        self.quality = int(quality)

    def _apply(self, image: np.ndarray) -> np.ndarray:
        return jpeg_compress(image, self.quality)


class Downscale(_ImageTransform):
    """Shrink by ``factor``: see :func:`downscale`."""

    def __init__(self, factor: float = 0.5) -> None:
        if not 0 < factor <= 1:
            raise ValueError(f"Downscale: factor must be in (0, 1], got {factor}.")
        self.factor = factor

    def _apply(self, image: np.ndarray) -> np.ndarray:
        return downscale(image, self.factor)


class CenterCropFraction(_ImageTransform):
    """Keep the central ``fraction`` of each side: see :func:`center_crop_fraction`."""

    def __init__(self, fraction: float = 0.9) -> None:
        if not 0 < fraction <= 1:
            raise ValueError(f"CenterCropFraction: fraction must be in (0, 1], got {fraction}.")
        self.fraction = fraction

    def _apply(self, image: np.ndarray) -> np.ndarray:
        return center_crop_fraction(image, self.fraction)


class HorizontalFlip(_ImageTransform):
    """Mirror left-right: see :func:`horizontal_flip`."""

    def _apply(self, image: np.ndarray) -> np.ndarray:
        return horizontal_flip(image)


class ColorJitter(_ImageTransform):
    """Deterministic brightness/contrast/saturation jitter: see :func:`color_jitter`.

    Args:
        brightness, contrast, saturation: jitter amounts in [0, 1).
        seed: seed of the draw; ``None`` derives it from each image's pixels.
    """

    def __init__(self, brightness: float = 0.2, contrast: float = 0.2, saturation: float = 0.2,
                 seed: int | None = None) -> None:
        color_jitter(np.zeros((1, 1, 3), np.uint8), brightness, contrast, saturation, 0)  # validates
        self.brightness, self.contrast, self.saturation, self.seed = brightness, contrast, saturation, seed

    def _apply(self, image: np.ndarray) -> np.ndarray:
        return color_jitter(image, self.brightness, self.contrast, self.saturation, self.seed)


class GaussianBlurImage(_ImageTransform):
    """Gaussian blur with ``sigma`` pixels: see :func:`gaussian_blur_image`."""

    def __init__(self, sigma: float = 1.5) -> None:
        if sigma <= 0:
            raise ValueError(f"GaussianBlurImage: sigma must be > 0, got {sigma}.")
        self.sigma = sigma

    def _apply(self, image: np.ndarray) -> np.ndarray:
        return gaussian_blur_image(image, self.sigma)


class _ImageTransformd(MapTransform):
    """Dictionary wrapper: applies ``self.transform`` to each key."""

    transform: _ImageTransform

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


class FundusDiscCropd(_ImageTransformd):
    """Dictionary wrapper of :class:`FundusDiscCrop`."""

    backend = FundusDiscCrop.backend

    def __init__(self, keys: KeysCollection, size: int = 512, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = FundusDiscCrop(size)


class BenGrahamNormalized(_ImageTransformd):
    """Dictionary wrapper of :class:`BenGrahamNormalize`."""

    backend = BenGrahamNormalize.backend

    def __init__(self, keys: KeysCollection, mask_fraction: float = 0.9, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = BenGrahamNormalize(mask_fraction)


class JpegCompressd(_ImageTransformd):
    """Dictionary wrapper of :class:`JpegCompress`."""

    backend = JpegCompress.backend

    def __init__(self, keys: KeysCollection, quality: int = 75, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = JpegCompress(quality)


class Downscaled(_ImageTransformd):
    """Dictionary wrapper of :class:`Downscale`."""

    backend = Downscale.backend

    def __init__(self, keys: KeysCollection, factor: float = 0.5, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = Downscale(factor)


class CenterCropFractiond(_ImageTransformd):
    """Dictionary wrapper of :class:`CenterCropFraction`."""

    backend = CenterCropFraction.backend

    def __init__(self, keys: KeysCollection, fraction: float = 0.9, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = CenterCropFraction(fraction)


class HorizontalFlipd(_ImageTransformd):
    """Dictionary wrapper of :class:`HorizontalFlip`."""

    backend = HorizontalFlip.backend

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = HorizontalFlip()


class ColorJitterd(_ImageTransformd):
    """Dictionary wrapper of :class:`ColorJitter`."""

    backend = ColorJitter.backend

    def __init__(self, keys: KeysCollection, brightness: float = 0.2, contrast: float = 0.2, saturation: float = 0.2,
                 seed: int | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = ColorJitter(brightness, contrast, saturation, seed)


class GaussianBlurImaged(_ImageTransformd):
    """Dictionary wrapper of :class:`GaussianBlurImage`."""

    backend = GaussianBlurImage.backend

    def __init__(self, keys: KeysCollection, sigma: float = 1.5, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = GaussianBlurImage(sigma)


FundusDiscCropD = FundusDiscCropDict = FundusDiscCropd
BenGrahamNormalizeD = BenGrahamNormalizeDict = BenGrahamNormalized
JpegCompressD = JpegCompressDict = JpegCompressd
DownscaleD = DownscaleDict = Downscaled
CenterCropFractionD = CenterCropFractionDict = CenterCropFractiond
HorizontalFlipD = HorizontalFlipDict = HorizontalFlipd
ColorJitterD = ColorJitterDict = ColorJitterd
GaussianBlurImageD = GaussianBlurImageDict = GaussianBlurImaged
