"""The one preprocessing path from a native-resolution RGB image to a classifier's input.

Training, evaluation and every optimizer's success test go through ``preprocess_for_model``,
so the watermark is judged on exactly what the model sees (DESIGN invariant 2).
"""

from __future__ import annotations

import numpy as np
import torch
from monai.config import DtypeLike, NdarrayOrTensor
from monai.transforms import Transform
from monai.utils import TransformBackends
from monai.utils.type_conversion import convert_to_tensor

from monai_medlocker.networks.factory import ModelSpec

__all__ = ["preprocess_for_model", "ModelPreprocess"]


def preprocess_for_model(images: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """Resize (bilinear, antialiased) to the model input and normalise.

    Args:
        images: B x 3 x H x W (or 3 x H x W) RGB; uint8 in [0, 255] or float in [0, 1].
        spec: the model's preprocessing contract.

    Returns:
        float32 B x 3 x S x S, differentiable with respect to float input.
    """
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected RGB images shaped B x 3 x H x W, got {tuple(images.shape)}.")
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    size = spec.input_size
    if x.shape[-2:] != (size, size):
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(spec.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


class ModelPreprocess(Transform):
    """Array transform wrapping ``preprocess_for_model`` for a single 3 x H x W image."""

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, spec: ModelSpec, dtype: DtypeLike = np.float32) -> None:
        self.spec = spec
        self.dtype = dtype

    def __call__(self, img: NdarrayOrTensor) -> torch.Tensor:
        t = convert_to_tensor(img, track_meta=False)
        return preprocess_for_model(t, self.spec)[0]
