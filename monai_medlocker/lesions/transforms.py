"""MONAI transforms for lesion detection: ``BuiltinLesionDetector`` and its dictionary wrapper.

The output (4 x H x W float32 lesion probabilities, channels ``MA``, ``HE``, ``EX``, ``SE``)
feeds :class:`~monai_medlocker.transforms.LesionBBoxMask` directly::

    Compose([LoadFundusImaged("image"), BuiltinLesionDetectord("image", "lesions"),
             LesionBBoxMaskd("lesions", wsm_key="wsm", margin=2)])
"""

from __future__ import annotations

from typing import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends
from monai.utils.type_conversion import convert_to_dst_type, convert_to_numpy

from monai_medlocker.lesions.builtin import DEFAULT_WORKING_SIZE, LESION_CHANNELS, detect_lesions

__all__ = [
    "BuiltinLesionDetector",
    "BuiltinLesionDetectord",
    "BuiltinLesionDetectorD",
    "BuiltinLesionDetectorDict",
]


class BuiltinLesionDetector(Transform):
    """Detect lesions with the weight-free classical detector (:func:`detect_lesions`).

    Args:
        working_size: longer side of the internal detection grid in px.
        red_threshold: noise-level multiple at which a dark candidate reaches probability 0.5.
        bright_threshold: the same for bright candidates.
        candidate_floor: sub-threshold candidates down to this fraction of a threshold are kept below 0.5.
        exclude_disc: drop the disc-sized bright region on the optic disc.

    The input is a channel-first RGB image (3 x H x W; uint8, or float in [0, 1] or [0, 255]). The
    output is 4 x H x W float32 in the input's container type; a MetaTensor keeps its meta and gets
    ``lesion_report`` (FOV, disc, counts, ``confidence``, ``warnings``) and ``lesion_channels``.
    The last report is also kept on ``last_report``.

    Raises:
        EmptyImageError, NoFieldOfViewError: both ``ValueError``; see :mod:`monai_medlocker.lesions.builtin`.
    """

    backend = [TransformBackends.NUMPY, TransformBackends.TORCH]

    def __init__(
        self,
        working_size: int = DEFAULT_WORKING_SIZE,
        red_threshold: float = 3.0,
        bright_threshold: float = 4.0,
        candidate_floor: float = 0.6,
        exclude_disc: bool = True,
    ) -> None:
        self.kwargs = {
            "working_size": int(working_size),
            "red_threshold": float(red_threshold),
            "bright_threshold": float(bright_threshold),
            "candidate_floor": float(candidate_floor),
            "exclude_disc": bool(exclude_disc),
        }
        self.last_report: dict | None = None

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        arr = convert_to_numpy(img)
        if arr.ndim != 3 or arr.shape[0] not in (1, 3):
            raise ValueError(f"BuiltinLesionDetector expects a channel-first 3 x H x W RGB image, got shape {arr.shape}")
        probs, report = detect_lesions(np.moveaxis(arr, 0, -1), **self.kwargs)
        self.last_report = report
        if isinstance(img, MetaTensor):
            meta = dict(img.meta)
            meta.update({"lesion_report": report, "lesion_channels": list(LESION_CHANNELS)})
            return MetaTensor(torch.as_tensor(probs), meta=meta, applied_operations=list(img.applied_operations))
        return convert_to_dst_type(probs, img, dtype=torch.float32 if isinstance(img, torch.Tensor) else np.float32)[0]


class BuiltinLesionDetectord(MapTransform):
    """Dictionary wrapper of :class:`BuiltinLesionDetector`.

    Args:
        keys: image key(s).
        output_key: where to write the lesion maps (one key only); ``None`` replaces the image.
        report_key: where to write the detector's report (``None``: not stored in the dictionary).
        other arguments: as :class:`BuiltinLesionDetector`.
    """

    backend = BuiltinLesionDetector.backend

    def __init__(
        self,
        keys: KeysCollection,
        output_key: str | None = "lesions",
        report_key: str | None = "lesion_report",
        working_size: int = DEFAULT_WORKING_SIZE,
        red_threshold: float = 3.0,
        bright_threshold: float = 4.0,
        candidate_floor: float = 0.6,
        exclude_disc: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if output_key is not None and len(self.keys) != 1:
            raise ValueError(f"output_key needs exactly one image key, got keys {self.keys}; use output_key=None")
        self.output_key = output_key
        self.report_key = report_key
        self.detector = BuiltinLesionDetector(working_size, red_threshold, bright_threshold, candidate_floor, exclude_disc)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.output_key or key] = self.detector(d[key])
            if self.report_key is not None:
                d[self.report_key] = self.detector.last_report
        return d


BuiltinLesionDetectorD = BuiltinLesionDetectorDict = BuiltinLesionDetectord
