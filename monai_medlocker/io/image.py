"""Fundus images in (PNG/JPEG/TIFF/BMP, and DICOM through :mod:`monai_medlocker.io.dicom`), lossless PNG out.

MONAI's ``LoadImage`` with the PIL reader returns W x H arrays; the watermark geometry is
easier to keep right in row-major H x W, so this module reads with Pillow directly and hands
MONAI a channel-first MetaTensor whose meta records the source file.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Mapping

import numpy as np
from PIL import Image, UnidentifiedImageError

from monai_medlocker.io.files import ImageReadError, atomic_write_bytes, is_temporary_file, portable_name  # noqa: F401 (re-exported)

__all__ = [
    "ImageReadError",
    "load_rgb",
    "load_mask",
    "save_png",
    "atomic_write_bytes",
    "load_fundus",
    "image_stem",
    "is_temporary_file",
    "round_trip_mode",
    "portable_name",
]

SUPPORTED_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom")


def image_stem(path: str | Path) -> str:
    """An image's name without its image suffix; a UID-named DICOM file ("1.2.840...5") keeps its whole name."""
    path = Path(path)
    return path.stem if path.suffix.lower() in SUPPORTED_SUFFIXES else path.name


def _open(path: Path, decode: bool = True) -> Image.Image:
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    try:
        img = Image.open(path)
        _refuse_lossy_decoding(path, img)
        if decode:
            img.load()
    except ImageReadError:
        img.close()
        raise
    except Image.DecompressionBombError as err:
        # A tiny file that claims billions of pixels: decoding it would exhaust memory.
        raise ImageReadError(f"{path}: refused as a possible decompression bomb ({err})") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"{path}: not a readable image ({err})") from err
    return img


def _refuse_lossy_decoding(path: Path, img: Image.Image) -> None:
    """Refuse what Pillow would decode with pixels lost: more than one frame, or 16-bit colour samples.

    Only the first page of a multi-page TIFF (or frame of an APNG/GIF) would be protected, and the
    rest would silently disappear; a 16-bit RGB(A) PNG or TIFF opens as 8-bit RGB, dropping each
    sample's low byte, which unlock could never give back. (Must run before ``load()``, which clears ``tile``.)
    """
    frames = getattr(img, "n_frames", 1)
    if frames != 1:
        raise ImageReadError(f"{path}: image with {frames} frames (a multi-page or animated {img.format} file); only "
                             "single-frame images can be protected. Save each frame as its own file")
    for tile in img.tile or ():
        rawmode = tile.args if isinstance(tile.args, str) else (tile.args or ("",))[0]
        if img.mode in ("RGB", "RGBA") and isinstance(rawmode, str) and ";16" in rawmode:
            raise ImageReadError(f"{path}: 16-bit colour image ({img.format} {rawmode}); it would be read as 8-bit and "
                                 "the low byte of every sample lost. Only 8-bit colour (or greyscale) is supported: "
                                 "convert it to 8 bits per sample first")


_EXIF_ORIENTATION = 0x0112


def round_trip_mode(path: str | Path) -> str:
    """The mode (``"RGB"`` or ``"L"``) an unlocked copy of this PNG/JPEG/TIFF/BMP file will have again.

    Unlock gives back the pixels the watermark engine saw (RGB, or grey for a greyscale file). What
    those pixels cannot carry is refused here, before anything is protected, rather than silently
    lost: an alpha channel, a palette, CMYK, or an EXIF orientation (the picture as displayed is
    turned; the stored pixels are not).

    Raises:
        ImageReadError: an unreadable file or one of the formats above (the message says what to do).
    """
    path = Path(path)
    with _open(path, decode=False) as img:
        mode = img.mode
        transparency = "transparency" in img.info
        try:
            orientation = img.getexif().get(_EXIF_ORIENTATION, 1)  # a PNG's EXIF may come after its pixels
        except (OSError, SyntaxError, ValueError, struct.error) as err:
            raise ImageReadError(f"{path}: not a readable image ({err})") from err
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (transparency and mode != "P"):
        raise ImageReadError(f"{path}: image with an alpha channel ({mode}); the unlocked copy could not give it back. "
                             "Save it as RGB (or greyscale) first")
    if mode == "P":
        raise ImageReadError(f"{path}: palette image (mode P); the unlocked copy would be RGB, not a palette image. "
                             "Convert it to RGB first")
    if mode in ("CMYK", "YCbCr"):
        raise ImageReadError(f"{path}: {mode} image; the unlocked copy would be RGB. Convert it to RGB first")
    if orientation not in (None, 1):
        raise ImageReadError(f"{path}: EXIF orientation {orientation} (displayed rotated or mirrored); the unlocked PNG "
                             "would show the stored, unturned pixels. Apply the rotation first (e.g. PIL's "
                             "ImageOps.exif_transpose) and save without the orientation tag")
    return "L" if mode == "L" else "RGB"


def load_fundus(path: str | Path):
    """Read a fundus image as H x W x 3 uint8, with the decoded DICOM source when it is one.

    Returns:
        ``(pixels, dicom)``: ``dicom`` is a :class:`~monai_medlocker.io.dicom.FundusDicom` (source
        dataset kept for the derived-instance writer) or ``None`` for PNG/JPEG/TIFF/BMP files.

    Raises:
        ImageReadError: missing, corrupt or unsupported file (the message names it).
    """
    from monai_medlocker.io.dicom import is_dicom_file, read_fundus_dicom  # lazily: pydicom only when needed

    path = Path(path)
    if is_dicom_file(path):
        dicom = read_fundus_dicom(path)
        return dicom.pixels, dicom
    return load_rgb(path), None


def load_rgb(path: str | Path) -> np.ndarray:
    """Read an 8-bit colour (or grey) image as H x W x 3 uint8; DICOM files are decoded too.

    Raises:
        ImageReadError: missing or corrupt file, or a pixel format that is not 8-bit RGB/grey.
    """
    from monai_medlocker.io.dicom import is_dicom_file, read_fundus_dicom

    path = Path(path)
    if is_dicom_file(path):
        return read_fundus_dicom(path).pixels
    img = _open(path)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        raise ImageReadError(f"{path}: unsupported pixel format {img.mode!r} (expected 8-bit RGB or greyscale)")
    if img.mode not in ("RGB", "RGBA", "L", "LA", "P", "CMYK", "YCbCr"):
        raise ImageReadError(f"{path}: unsupported pixel format {img.mode!r} (expected 8-bit RGB or greyscale)")
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    if arr.shape[0] < 16 or arr.shape[1] < 16:
        raise ImageReadError(f"{path}: image of {arr.shape[1]}x{arr.shape[0]} px is too small to be a fundus photograph")
    return arr


def load_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a binary mask (non-zero = set) as H x W bool; a size mismatch is an error, never resized."""
    path = Path(path)
    arr = np.asarray(_open(path).convert("L"))
    if shape is not None and arr.shape != tuple(shape):
        raise ImageReadError(f"{path}: mask is {arr.shape[1]}x{arr.shape[0]} px but the image is {shape[1]}x{shape[0]} px")
    return arr > 0


# zlib level of the PNGs protect writes: level 1 encodes a 512 px fundus about 4x faster than PIL's default 6
# (22 vs 86 ms) for about 20 % more bytes; the pixels are the same (issue 19: benchmarks/results/cost).
PNG_COMPRESS_LEVEL = 1


def save_png(path: str | Path, image: np.ndarray, text: Mapping[str, str] | None = None,
             compress_level: int = PNG_COMPRESS_LEVEL) -> None:
    """Save H x W x 3 (or H x W) uint8 as a lossless PNG, atomically, with optional text chunks (zlib ``compress_level``)."""
    from PIL import PngImagePlugin

    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"save_png expects uint8 pixels, got {arr.dtype} for {path}")
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_itxt(key, value)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", pnginfo=info, compress_level=int(compress_level))
    atomic_write_bytes(path, buf.getvalue())
