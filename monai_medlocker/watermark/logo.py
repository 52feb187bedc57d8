"""The owner's logo: loading, hashing and rendering at a given box size and rotation."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["DEFAULT_LOGO", "load_logo", "logo_sha256", "render_logo", "greyscale_logo", "is_greyscale", "logo_for_image"]

DEFAULT_LOGO = "medlocker_logo.png"


def load_logo(path: str | Path | None = None) -> np.ndarray:
    """Read an RGBA logo as h x w x 4 uint8; ``None`` gives the shipped default owner logo.

    A logo without an alpha channel is taken as fully opaque.
    """
    if path is None:
        with resources.as_file(resources.files("monai_medlocker.assets") / DEFAULT_LOGO) as p:
            return load_logo(p)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"logo file not found: {path}")
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{path}: not a readable logo image ({err})") from err
    arr = np.asarray(img.convert("RGBA"), dtype=np.uint8)
    if not (arr[..., 3] > 0).any():
        raise ValueError(f"{path}: the logo is fully transparent")
    return arr


def logo_sha256(logo: np.ndarray) -> str:
    """Hash of the logo's shape and RGBA pixels: identifies the logo in parameter records."""
    h = hashlib.sha256()
    h.update(np.asarray(logo.shape, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(logo, dtype=np.uint8).tobytes())
    return h.hexdigest()


def greyscale_logo(logo: np.ndarray) -> np.ndarray:
    """The logo with its RGB replaced by its luma (ITU-R BT.601), alpha kept."""
    rgb = logo[..., :3].astype(np.float32)
    luma = np.clip(np.rint(rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)), 0, 255).astype(np.uint8)
    out = logo.copy()
    out[..., 0] = out[..., 1] = out[..., 2] = luma
    return out


def is_greyscale(image: np.ndarray) -> bool:
    """True when an H x W x 3 image has equal R, G and B everywhere (e.g. a red-free photograph)."""
    return bool(np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2]))


def logo_for_image(logo: np.ndarray, image: np.ndarray) -> tuple[np.ndarray, str]:
    """The logo as stamped on ``image``: in grey on a greyscale image, so that it stays greyscale.

    Returns:
        The RGBA logo to composite and its rendering, ``"greyscale"`` or ``"colour"`` (for the record).
    """
    if is_greyscale(image):
        return greyscale_logo(logo), "greyscale"
    return logo, "colour"


def render_logo(logo: np.ndarray, width: int, height: int, rotation: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Rotate (about its centre, expanding the canvas) and resize the logo to exactly ``width x height``.

    Returns:
        rgb (height x width x 3 float32, 0-255) and coverage (height x width float32, 0-1, from the
        logo's alpha channel).
    """
    rgb, cov = _render_cached(logo.tobytes(), logo.shape, int(width), int(height), round(float(rotation), 3))
    return rgb, cov


@lru_cache(maxsize=256)
def _render_cached(data: bytes, shape: tuple, width: int, height: int, rotation: float):
    if width < 1 or height < 1:
        raise ValueError(f"logo box must be at least 1x1 px, got {width}x{height}")
    img = Image.frombuffer("RGBA", (shape[1], shape[0]), data, "raw", "RGBA", 0, 1)
    if rotation:
        img = img.rotate(rotation, resample=Image.Resampling.BICUBIC, expand=True)
    # Premultiplied resampling avoids dark fringes where transparent pixels are averaged in.
    img = img.convert("RGBa").resize((width, height), Image.Resampling.LANCZOS).convert("RGBA")
    arr = np.asarray(img, dtype=np.float32)
    rgb = np.ascontiguousarray(arr[..., :3])
    cov = arr[..., 3] / 255.0
    rgb.setflags(write=False)
    cov.setflags(write=False)
    return rgb, cov
