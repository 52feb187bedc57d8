"""User-supplied lesion masks: PNG/TIFF (IDRiD layout), NIfTI and DICOM SEG, as C x H x W bool.

Formats:

* **PNG/TIFF/BMP/JPEG**, one file per lesion type (IDRiD layout) or one file for all types.
  Non-zero = lesion. The lesion type is read from the file name's last ``_``-separated part:
  ``MA``, ``HE``, ``EX``, ``SE`` (IDRiD: ``IDRiD_01_MA.tif``, ``IDRiD_01_HE.tif``...), also
  ``lesions``/``all`` for a combined mask. IDRiD's folder names (``1. Microaneurysms``,
  ``2. Haemorrhages``, ``3. Hard Exudates``, ``4. Soft Exudates``) are recognised too.
* **NIfTI** (``.nii``, ``.nii.gz``, via nibabel): a 2-D mask (x, y), a 3-D one (x, y, C) with one
  lesion type per slice, or a label map (integer values 1..4 = MA, HE, EX, SE). NIfTI stores
  x first, so the array is transposed to rows x columns.
* **DICOM SEG** (via highdicom ``segread``): one segment per lesion type; the segment label
  (or its description) names the type, otherwise segments go to channels in order.

Matching rule for a folder of images (:func:`find_mask_files`): for image ``<stem>.<ext>`` the
masks are ``<stem>_<TYPE>.<png|tif|tiff|bmp>``, ``<stem>.nii[.gz]``, ``<stem>_seg.dcm`` or
``<stem>.seg.dcm``, beside the image or in a ``masks/`` folder beside it. A datalist names its
masks explicitly (``mask_MA``, ``mask_HE``... keys).

A mask whose size differs from the image's is an error (never resized): a resampled mask would
put the WSM boxes in the wrong place.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from monai_medlocker.io.image import image_stem

__all__ = ["MASK_CHANNELS", "MASK_SUFFIXES", "MaskFormatError", "is_mask_file", "lesion_type_of", "load_lesion_masks",
           "find_mask_files"]

MASK_CHANNELS: tuple[str, ...] = ("MA", "HE", "EX", "SE")
MASK_SUFFIXES = ("_MA", "_HE", "_EX", "_SE", "_lesions")
_RASTER = (".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg")
_ALIASES = {
    "ma": "MA", "microaneurysm": "MA", "microaneurysms": "MA",
    "he": "HE", "haemorrhage": "HE", "haemorrhages": "HE", "hemorrhage": "HE", "hemorrhages": "HE",
    "ex": "EX", "hardexudate": "EX", "hardexudates": "EX",
    "se": "SE", "softexudate": "SE", "softexudates": "SE", "cottonwoolspot": "SE", "cottonwoolspots": "SE",
    "lesions": "ALL", "lesion": "ALL", "all": "ALL",
}


class MaskFormatError(ValueError):
    """A mask file that cannot be used; the message names the file and the problem."""


def _key(text: str) -> str:
    return re.sub(r"[^a-z]", "", text.lower())


def lesion_type_of(name: str) -> str | None:
    """Lesion type (``MA``/``HE``/``EX``/``SE``, or ``ALL`` for a combined mask) named by a file or segment name.

    ``IDRiD_01_MA.tif`` -> ``MA``; ``a_lesions.png`` -> ``ALL``; ``Haemorrhages`` -> ``HE``; otherwise ``None``.
    """
    stem = Path(name).name
    for ext in (".nii.gz", ".seg.dcm", ".nii", ".dcm", *_RASTER):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    last = stem.rsplit("_", 1)[-1]
    for candidate in (last, stem, re.sub(r"^\d+\.?\s*", "", stem)):
        found = _ALIASES.get(_key(candidate))
        if found:
            return found
    return None


def _check_shape(path: Path, shape: tuple[int, int], expected: tuple[int, int] | None) -> None:
    if expected is not None and tuple(shape) != tuple(expected):
        raise MaskFormatError(f"{path}: mask is {shape[1]}x{shape[0]} px (width x height) but the image is "
                              f"{expected[1]}x{expected[0]} px; masks are never resized, supply one at the image's size")


def _raster(path: Path) -> np.ndarray:
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise MaskFormatError(f"{path}: not a readable mask image ({err})") from err
    if img.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LA"):
        arr = np.asarray(img.convert("RGB")).max(axis=-1)  # IDRiD's TIFFs are RGB with the lesion in red
    elif img.mode in ("1", "L", "I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(img)
    else:
        raise MaskFormatError(f"{path}: unsupported mask pixel format {img.mode!r} (expected binary, grey or RGB)")
    return arr != 0


def _nifti(path: Path, n_channels: int) -> tuple[np.ndarray, list[str | None]]:
    """NIfTI mask -> (stack of H x W bool, lesion type per slice or ``None`` for channel order)."""
    import nibabel as nib

    try:
        data = np.asanyarray(nib.load(str(path)).dataobj)
    except Exception as err:  # nibabel raises several types for bad files
        raise MaskFormatError(f"{path}: not a readable NIfTI file ({err})") from err
    data = np.squeeze(data)
    if data.ndim == 2:
        plane = data.T  # NIfTI is (x, y); images are rows x columns
        values = np.unique(plane[plane != 0])
        if np.issubdtype(plane.dtype, np.integer) and values.size > 1 and np.isin(values, np.arange(1, n_channels + 1)).all():
            return np.stack([plane == v for v in range(1, n_channels + 1)]), [None] * n_channels  # label map
        return (plane != 0)[None], [lesion_type_of(path.name) or "ALL"]
    if data.ndim == 3:
        if data.shape[2] > n_channels:
            raise MaskFormatError(f"{path}: 3-D NIfTI mask with {data.shape[2]} slices; expected one slice per "
                                  f"lesion type (at most {n_channels})")
        return np.stack([data[..., c].T != 0 for c in range(data.shape[2])]), [None] * data.shape[2]
    raise MaskFormatError(f"{path}: NIfTI mask of shape {data.shape}; expected 2-D (x, y) or 3-D (x, y, lesion type)")


def _dicom_seg(path: Path) -> tuple[np.ndarray, list[str | None]]:
    import highdicom as hd
    import pydicom

    try:
        seg = hd.seg.segread(str(path))
    except (pydicom.errors.InvalidDicomError, AttributeError, ValueError, KeyError, OSError) as err:
        raise MaskFormatError(f"{path}: not a readable DICOM SEG ({err})") from err
    numbers = list(seg.segment_numbers)
    if not numbers:
        raise MaskFormatError(f"{path}: DICOM SEG has no segments")
    names = []
    for n in numbers:
        desc = seg.get_segment_description(n)
        label = getattr(desc, "segment_label", None) or ""
        names.append(lesion_type_of(label) or lesion_type_of(str(getattr(desc, "segment_description", "") or "")))
    sops = [tuple(ref)[2] for ref in seg.get_source_image_uids()] if hasattr(seg, "get_source_image_uids") else []
    try:
        if sops:
            arr = seg.get_pixels_by_source_instance(source_sop_instance_uids=sops[:1], segment_numbers=numbers,
                                                    combine_segments=False)
        else:
            arr = seg.get_total_pixel_matrix(segment_numbers=numbers, combine_segments=False)
    except (ValueError, RuntimeError) as err:
        raise MaskFormatError(f"{path}: cannot read the DICOM SEG's pixels as one 2-D frame per segment ({err})") from err
    arr = np.asarray(arr)
    arr = arr.reshape(arr.shape[-3], arr.shape[-2], arr.shape[-1]) if arr.ndim == 4 else arr  # (1, H, W, S)
    return np.moveaxis(arr, -1, 0) != 0, names


def load_lesion_masks(
    paths: str | Path | Sequence[str | Path],
    shape: tuple[int, int] | None = None,
    channels: Sequence[str] = MASK_CHANNELS,
) -> np.ndarray:
    """Read user lesion masks as ``len(channels) x H x W`` bool, one channel per lesion type.

    Args:
        paths: one file or several (e.g. the four IDRiD files of an image): PNG/TIFF/BMP/JPEG,
            NIfTI (``.nii``/``.nii.gz``) or DICOM SEG (``.dcm``).
        shape: the image's (H, W); every mask must match it exactly.
        channels: output channel order.

    Raises:
        MaskFormatError: an unreadable file, a wrong pixel format or dimensionality, a raster file
            whose name does not state its lesion type while several are given, or a size mismatch
            (the message names the file and both sizes).
        FileNotFoundError: a missing file.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise MaskFormatError("no mask files given (expected one or more PNG/TIFF, NIfTI or DICOM SEG files)")
    channels = list(channels)
    out: np.ndarray | None = None

    def put(path: Path, mask: np.ndarray, kind: str | None, index: int) -> None:
        nonlocal out
        _check_shape(path, mask.shape, shape)
        if out is None:
            out = np.zeros((len(channels),) + mask.shape, dtype=bool)
        elif out.shape[1:] != mask.shape:
            raise MaskFormatError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} px but other masks of this image "
                                  f"are {out.shape[2]}x{out.shape[1]} px")
        if kind == "ALL":
            out |= mask[None]
        elif kind in channels:
            out[channels.index(kind)] |= mask
        elif kind is None and index < len(channels):
            out[index] |= mask
        else:
            raise MaskFormatError(f"{path}: lesion type {kind!r} is not one of {', '.join(channels)}")

    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"mask file not found: {path}")
        name = path.name.lower()
        if name.endswith((".nii", ".nii.gz")):
            stack, kinds = _nifti(path, len(channels))
            for c, (m, kind) in enumerate(zip(stack, kinds)):
                put(path, m, kind, c)
        elif name.endswith(".dcm") or name.endswith(".seg"):
            stack, names = _dicom_seg(path)
            for c, (m, kind) in enumerate(zip(stack, names)):
                put(path, m, kind, c)
        elif name.endswith(_RASTER):
            kind = lesion_type_of(path.name) or lesion_type_of(path.parent.name)
            if kind is None and len(paths) > 1:
                raise MaskFormatError(f"{path}: cannot tell which lesion type this mask is; name it "
                                      f"<image>_<TYPE>{path.suffix} with TYPE one of {', '.join(channels)} (IDRiD layout)")
            put(path, _raster(path), kind or "ALL", 0)
        else:
            raise MaskFormatError(f"{path}: unsupported mask file type (expected PNG/TIFF/BMP/JPEG, NIfTI .nii/.nii.gz "
                                  "or DICOM SEG .dcm)")
    assert out is not None
    return out


def is_mask_file(path: str | Path) -> bool:
    """Whether ``path`` is named as a lesion mask (or a saved WSM) by the naming rule, not as an image."""
    path = Path(path)
    if path.suffix.lower() == ".dcm" and path.stem.endswith(("_seg", ".seg")):
        return True  # a DICOM SEG lesion mask
    return any(path.stem.endswith(s) for s in MASK_SUFFIXES) or path.stem.endswith("_wsm")


def _is_file(path: Path) -> bool:
    """``path.is_file()``, False for a name the file system cannot hold (Errno 36): no such mask can exist."""
    try:
        return path.is_file()
    except OSError:
        return False


def find_mask_files(image: str | Path) -> list[Path]:
    """Mask files of ``image`` by the naming rule in the module docstring (an empty list when none)."""
    image = Path(image)
    stem = image_stem(image)
    found: list[Path] = []
    for folder in (image.parent, image.parent / "masks"):
        if not folder.is_dir():
            continue
        for suffix in (*(f"_{t}" for t in MASK_CHANNELS), "_lesions"):
            for ext in (".png", ".tif", ".tiff", ".bmp"):
                candidate = folder / f"{stem}{suffix}{ext}"
                if _is_file(candidate):
                    found.append(candidate)
        for name in (f"{stem}.nii", f"{stem}.nii.gz", f"{stem}_seg.dcm", f"{stem}.seg.dcm"):
            candidate = folder / name
            if _is_file(candidate) and candidate != image:
                found.append(candidate)
    return found
