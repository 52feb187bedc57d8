"""Fast photometric and geometric augmentation of fundus images for training the surrogates.

One torch transform does flips, a small rotation and brightness/contrast/gamma jitter on the
native-resolution image; chaining MONAI's generic transforms costs several times more per image
on a CPU, which dominated training time. The model preprocessing stays ``ModelPreprocess``.
"""

from __future__ import annotations

import math
from typing import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import TransformBackends
from monai.utils.type_conversion import convert_to_tensor

__all__ = ["FundusAugment", "FundusAugmentd", "FundusAugmentD", "FundusAugmentDict"]


class FundusAugment(RandomizableTransform):
    """Random flips, rotation and intensity jitter; returns float32 3 x H x W in [0, 1].

    Args:
        flip_prob: probability of each of the horizontal and vertical flips.
        rotate_range: maximum absolute rotation in radians (about the image centre, zero padding).
        brightness: maximum relative brightness change (multiplicative).
        contrast: maximum relative contrast change about the image mean.
        gamma: (min, max) gamma range.
        prob: probability that the intensity jitter is applied at all.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        flip_prob: float = 0.5,
        rotate_range: float = 0.26,
        brightness: float = 0.1,
        contrast: float = 0.1,
        gamma: tuple[float, float] = (0.8, 1.25),
        prob: float = 0.8,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        self.flip_prob = flip_prob
        self.rotate_range = rotate_range
        self.brightness = brightness
        self.contrast = contrast
        self.gamma = gamma

    def __call__(self, img: NdarrayOrTensor) -> torch.Tensor:
        x = convert_to_tensor(img, track_meta=False)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        r = self.R
        if r.rand() < self.flip_prob:
            x = x.flip(-1)
        if r.rand() < self.flip_prob:
            x = x.flip(-2)
        angle = r.uniform(-self.rotate_range, self.rotate_range)
        if abs(angle) > 1e-3:
            c, s = math.cos(angle), math.sin(angle)
            theta = torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=x.dtype)[None]
            grid = torch.nn.functional.affine_grid(theta, [1, *x.shape], align_corners=False)
            x = torch.nn.functional.grid_sample(x[None], grid, mode="bilinear", padding_mode="zeros",
                                                align_corners=False)[0]
        if r.rand() < self.prob:
            x = x * (1.0 + r.uniform(-self.brightness, self.brightness))
            mean = x.mean()
            x = (x - mean) * (1.0 + r.uniform(-self.contrast, self.contrast)) + mean
            x = x.clamp(0.0, 1.0) ** float(np.exp(r.uniform(np.log(self.gamma[0]), np.log(self.gamma[1]))))
        return x.clamp(0.0, 1.0)


class FundusAugmentd(MapTransform, RandomizableTransform):
    """Dictionary wrapper of :class:`FundusAugment`."""

    backend = FundusAugment.backend

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **kwargs) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, 1.0)
        self.augment = FundusAugment(**kwargs)

    def set_random_state(self, seed=None, state=None):
        super().set_random_state(seed, state)
        self.augment.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.augment(d[key])
        return d


FundusAugmentD = FundusAugmentDict = FundusAugmentd
