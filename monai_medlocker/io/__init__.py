"""Reading and writing fundus images and their sidecars."""

from monai_medlocker.io.image import (
    ImageReadError,
    LoadFundusImage,
    LoadFundusImaged,
    atomic_write_bytes,
    load_mask,
    load_rgb,
    save_png,
)

__all__ = [
    "ImageReadError",
    "LoadFundusImage",
    "LoadFundusImaged",
    "atomic_write_bytes",
    "load_mask",
    "load_rgb",
    "save_png",
]
