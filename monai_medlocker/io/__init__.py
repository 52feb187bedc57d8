"""Reading and writing fundus images (PNG/JPEG/TIFF and DICOM) and their sidecars."""

from monai_medlocker._lazy import lazy_exports

# Imported on first use (PEP 562), so that the light commands do not load torch or MONAI.
__getattr__, __dir__ = lazy_exports(__name__, {
    "dicom": (
        "DicomReadError", "FundusDicom", "already_protected", "derive_protected_dataset", "is_dicom_file",
        "read_fundus_dicom", "save_dicom",
    ),
    "image": ("ImageReadError", "atomic_write_bytes", "load_fundus", "load_mask", "load_rgb", "save_png"),
    "transforms": ("LoadFundusImage", "LoadFundusImaged", "LoadFundusImageD", "LoadFundusImageDict"),
    "private_tags": ("MedlockerTags", "PrivateTagError", "read_medlocker_tags", "write_medlocker_tags"),
})

__all__ = [
    "DicomReadError",
    "FundusDicom",
    "ImageReadError",
    "LoadFundusImage",
    "LoadFundusImaged",
    "LoadFundusImageD",
    "LoadFundusImageDict",
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
