"""The MONAI loading transforms of fundus images (kept apart from :mod:`.image`, which needs no MONAI)."""

from __future__ import annotations

from pathlib import Path
from typing import Hashable, Mapping

import numpy as np
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends

from monai_medlocker.io.image import load_fundus

__all__ = ["LoadFundusImage", "LoadFundusImaged", "LoadFundusImageD", "LoadFundusImageDict"]


class LoadFundusImage(Transform):
    """Load a fundus image (PNG/JPEG/TIFF/BMP or DICOM) as a 3 x H x W uint8 RGB MetaTensor.

    Meta: ``filename_or_obj``; for DICOM also ``source_dataset`` (the pydicom dataset, kept for
    the derived-instance writer) and ``monochrome`` (the source was MONOCHROME2, read as grey
    replicated to three channels).
    """

    backend = [TransformBackends.NUMPY, TransformBackends.TORCH]

    def __call__(self, filename: str | Path) -> MetaTensor:
        arr, dicom = load_fundus(filename)
        meta = {"filename_or_obj": str(filename), "spatial_shape": np.array(arr.shape[:2]), "original_channel_dim": 0}
        if dicom is not None:
            meta.update(source_dataset=dicom.dataset, monochrome=dicom.monochrome)
        return MetaTensor(np.ascontiguousarray(arr.transpose(2, 0, 1)), meta=meta)


class LoadFundusImaged(MapTransform):
    """Dictionary wrapper of :class:`LoadFundusImage`."""

    backend = LoadFundusImage.backend

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadFundusImage()

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
        return d


LoadFundusImageD = LoadFundusImageDict = LoadFundusImaged
