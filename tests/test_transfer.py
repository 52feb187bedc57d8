"""Transfer-aware optimisation: thief views (EOT), the EOT success test, the zoo ensemble, total box area."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_medlocker.watermark.eot import DEFAULT_VIEWS, VIEW_NAMES, ThiefViews


def _fundus_batch(b: int = 2, s: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    disc = (((yy - s / 2) ** 2 + (xx - s / 2) ** 2) <= (0.45 * s) ** 2).float()
    x = torch.rand(b, 3, s, s, generator=g) * 0.5 + 0.3
    return x * disc


@pytest.mark.parametrize("name", VIEW_NAMES)
def test_each_view_is_differentiable_and_shape_correct(name):
    x = _fundus_batch().requires_grad_(True)
    views = ThiefViews([name], native_size=256)
    out = views(x)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    (out * torch.linspace(0, 1, out.numel()).view_as(out)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0, f"view {name} passes no gradient"


def test_views_are_image_major_and_deterministic():
    x = _fundus_batch(3)
    views = ThiefViews(DEFAULT_VIEWS, native_size=512, seed=5)
    out = views(x)
    v = len(views)
    assert out.shape == (3 * v, 3, 64, 64)
    grid = out.view(3, v, 3, 64, 64)
    assert torch.equal(grid[:, DEFAULT_VIEWS.index("none")], x)
    assert torch.equal(grid[:, DEFAULT_VIEWS.index("hflip")], x.flip(-1))
    assert torch.equal(out, ThiefViews(DEFAULT_VIEWS, native_size=512, seed=5)(x))
    assert not torch.equal(out, ThiefViews(DEFAULT_VIEWS, native_size=512, seed=6)(x))  # jitter draws differ


def test_views_match_the_study_preprocessing():
    """Each view of the screen image is close to the screen image of the study's own preprocessing."""
    from monai_medlocker.threats.preprocessing import THIEF_PREPROCESSING
    from monai_medlocker.workflows.threat_study import lab_study_images

    image = lab_study_images(1, 256, seed=77)[0].original

    def screen(a):
        t = torch.from_numpy(a.transpose(2, 0, 1).copy()).float()[None] / 255
        return torch.nn.functional.interpolate(t, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)

    out = ThiefViews(VIEW_NAMES, native_size=256)(screen(image))
    for j, name in enumerate(VIEW_NAMES):
        if name == "color_jitter":
            continue  # the study draws its factors per image; the view draws them once from its seed
        ref = screen(THIEF_PREPROCESSING[name](image))[0]
        err = float((out[j] - ref).abs().mean() * 255)
        assert err < 6.0, f"view {name}: mean abs error {err:.2f}/255 against the study's preprocessing"


def test_bad_view_name_is_rejected():
    with pytest.raises(ValueError, match="unknown"):
        ThiefViews(["none", "sepia"])
