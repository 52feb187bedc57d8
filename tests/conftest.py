"""Shared fixtures: small deterministic surrogate models and images for engine tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_medlocker.networks import Surrogate, model_spec


class RegionDetector(torch.nn.Module):
    """A transparent 2-class model: class 1 wins when the mean brightness of a target region
    (in the model's input frame) rises above a threshold. A bright logo placed over the region
    flips it, so success is reachable only at known places."""

    def __init__(self, size: int, region: tuple[int, int, int, int], threshold: float):
        super().__init__()
        weight = torch.zeros(1, 3, size, size)
        x0, y0, x1, y1 = region
        weight[..., y0:y1, x0:x1] = 1.0 / (3 * (y1 - y0) * (x1 - x0))
        self.register_buffer("weight", weight)
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = (x * self.weight).sum(dim=(1, 2, 3))
        return torch.stack([torch.full_like(score, self.threshold), score], dim=1) * 10.0


def region_surrogate(size: int = 64, region=(44, 4, 60, 20), threshold: float = 0.0) -> Surrogate:
    spec = model_spec("resnet-tiny", size)
    # Normalised input: (x - mean) / std, so a dark image scores about -2 and white about +2.
    return Surrogate(RegionDetector(size, region, threshold), spec)


class TinyConv(torch.nn.Module):
    def __init__(self, n_classes: int = 5):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 5, stride=2), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 5, stride=2),
            torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, n_classes),
        )

    def forward(self, x):
        return self.body(x)


@pytest.fixture
def tiny_surrogate() -> Surrogate:
    return Surrogate(TinyConv(), model_spec("resnet-tiny", 64))


@pytest.fixture
def region_model() -> Surrogate:
    return region_surrogate()


@pytest.fixture
def dark_image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.random((160, 160, 3)) * 40).astype(np.uint8)


@pytest.fixture
def lesion_masks() -> np.ndarray:
    masks = np.zeros((2, 160, 160), dtype=bool)
    masks[0, 20:26, 30:38] = True
    masks[0, 90:92, 90:93] = True
    masks[1, 120:140, 10:40] = True
    return masks
