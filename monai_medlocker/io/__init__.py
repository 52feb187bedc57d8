"""Reading and writing fundus images (PNG/JPEG/TIFF and DICOM) and their sidecars."""

from monai_medlocker.io.dicom import (
    DicomReadError,
    FundusDicom,
    already_protected,
    derive_protected_dataset,
    is_dicom_file,
    read_fundus_dicom,
    save_dicom,
)
from monai_medlocker.io.image import (
    ImageReadError,
    LoadFundusImage,
    LoadFundusImaged,
    atomic_write_bytes,
    load_fundus,
    load_mask,
    load_rgb,
    save_png,
)
from monai_medlocker.io.private_tags import MedlockerTags, PrivateTagError, read_medlocker_tags, write_medlocker_tags

__all__ = [
    "DicomReadError",
    "FundusDicom",
    "ImageReadError",
    "LoadFundusImage",
    "LoadFundusImaged",
    "MedlockerTags",
    "PrivateTagError",
    "already_protected",
    "atomic_write_bytes",
    "derive_protected_dataset",
    "is_dicom_file",
    "load_fundus",
    "load_mask",
    "load_rgb",
    "read_fundus_dicom",
    "read_medlocker_tags",
    "save_dicom",
    "save_png",
    "write_medlocker_tags",
]
