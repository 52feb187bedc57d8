"""MONAI transforms of MedLocker: array versions and dictionary wrappers."""

from monai_medlocker.transforms.array import AdversarialWatermark, LesionBBoxMask
from monai_medlocker.transforms.dictionary import (
    AdversarialWatermarkd,
    AdversarialWatermarkD,
    AdversarialWatermarkDict,
    LesionBBoxMaskd,
    LesionBBoxMaskD,
    LesionBBoxMaskDict,
)

__all__ = [
    "AdversarialWatermark",
    "AdversarialWatermarkd",
    "AdversarialWatermarkD",
    "AdversarialWatermarkDict",
    "LesionBBoxMask",
    "LesionBBoxMaskd",
    "LesionBBoxMaskD",
    "LesionBBoxMaskDict",
]
