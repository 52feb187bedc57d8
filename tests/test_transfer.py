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


# ------------------------------------------------------------------------------ EOT in the success test
from conftest import TinyConv  # noqa: E402

from monai_medlocker.networks import Surrogate, model_spec  # noqa: E402
from monai_medlocker.watermark import AttackProblem, SearchSpace, get_optimizer, load_logo, watermark_image  # noqa: E402
from monai_medlocker.watermark.blend import Placement  # noqa: E402
from monai_medlocker.watermark.optimizers import MedLockerOptimizer  # noqa: E402


def _region_problem(model, image, views=None, fraction=1.0):
    return AttackProblem(image, np.zeros((160, 160), bool), [model], load_logo(), SearchSpace(), label=0,
                         max_queries=200, views=views, view_fraction=fraction)


def test_eot_success_fails_when_a_view_undoes_the_attack(region_model, dark_image):
    """The region model is fooled only by a bright mark at its top-right region; a flip moves the mark away."""
    plain = _region_problem(region_model, dark_image)
    MedLockerOptimizer(max_queries=200).search(plain)
    winner = plain.best[1]
    assert plain.best[0] < 0 and winner.x0 + winner.width > 110  # fooled, over the region (native x 110-150)

    flipped = _region_problem(region_model, dark_image, ThiefViews(["hflip"], native_size=160))
    ev = flipped.evaluate([winner])
    assert ev.margins[0] > 0, "the flip view puts the mark on the left: the EOT test must call it a failure"
    # Half of the views {none, hflip} fooled: success at fraction 0.5, failure at 1.
    half = _region_problem(region_model, dark_image, ThiefViews(["none", "hflip"], native_size=160), 0.5)
    assert half.evaluate([winner]).margins[0] < 0
    full = _region_problem(region_model, dark_image, ThiefViews(["none", "hflip"], native_size=160), 1.0)
    assert full.evaluate([winner]).margins[0] > 0


def test_eot_search_finds_a_mark_that_survives_the_flip(dark_image):
    """With a model sensitive at both top corners, EOT over the flip asks for marks that cover the region
    in both the plain and the mirrored image: a mark at top-centre does, a top-right one does not."""
    from conftest import region_surrogate

    model = region_surrogate(region=(26, 4, 38, 16), threshold=-0.6)  # centred region: the flip keeps it
    views = ThiefViews(["hflip"], native_size=160)
    problem = _region_problem(model, dark_image, views)
    MedLockerOptimizer(max_queries=200, eot_views=["hflip"]).search(problem)
    assert problem.best[0] < 0
    again = _region_problem(model, dark_image, views)
    assert again.evaluate([problem.best[1]]).margins[0] < 0  # the kept placement passes the EOT test


def test_eot_record_and_query_count(tiny_surrogate, dark_image):
    opt = get_optimizer("medlocker", max_queries=80, eot_views=["hflip", "jpeg75"], eot_fraction=0.5)
    _, rec = watermark_image(dark_image, np.zeros((160, 160), bool), [tiny_surrogate], load_logo(), opt,
                             SearchSpace(), label=0, seed=1)
    assert rec["optimizer_settings"]["eot"] == {"views": ["hflip", "jpeg75"], "fraction": 0.5, "seed": 0}
    assert rec["eot"]["views"] == ["hflip", "jpeg75"] and len(rec["eot"]["fooled"]) == 2
    assert rec["verification_queries"] == 1 + 2
    assert rec["queries"] <= 80


# ------------------------------------------------------------------------------ paper and bhe unchanged
_DARK_WSM = (slice(20, 40), slice(30, 60))
# Measured on main before EOT existed (commit 5ad8800), TinyConv, label 0, seed 3, 120 queries.
GOLDEN = {
    ("bhe", "paper"): ((95, 70, 40, 40, 137), 51),
    ("medlocker", "paper"): ((2, 120, 40, 40, 100), 18),
    ("bhe", "full"): ((90, 65, 48, 48, 137), 51),
}


@pytest.mark.parametrize("optimizer,space", list(GOLDEN))
def test_paper_and_bhe_are_unchanged(optimizer, space, tiny_surrogate, dark_image):
    wsm = np.zeros((160, 160), bool)
    wsm[_DARK_WSM] = True
    _, rec = watermark_image(dark_image, wsm, [tiny_surrogate], load_logo(), get_optimizer(optimizer, max_queries=120),
                             SearchSpace.from_config(space), label=0, seed=3)
    (m,) = rec["marks"]
    assert ((m["x0"], m["y0"], m["width"], m["height"], m["alpha_255"]), rec["queries"]) == GOLDEN[(optimizer, space)]
    assert "eot" not in rec and "eot" not in rec["optimizer_settings"]
    assert "max_total_area_fraction" not in rec["search_space"]


# ------------------------------------------------------------------------------ total area of several marks
def test_total_area_constraint_holds_for_three_marks(tiny_surrogate):
    rng = np.random.default_rng(1)
    image = (rng.random((200, 200, 3)) * 60).astype(np.uint8)
    space = SearchSpace(scale_range=(0.2, 0.3), n_marks=3, max_area_fraction=0.10, max_total_area_fraction=0.10)
    # confidence 1e9: never satisfied, so every mark is searched and placed if it fits
    opt = get_optimizer("medlocker", max_queries=30, confidence=1e9)
    _, rec = watermark_image(image, np.zeros((200, 200), bool), [tiny_surrogate], load_logo(), opt, space, label=0)
    area = sum(m["width"] * m["height"] for m in rec["marks"]) / (200 * 200)
    assert len(rec["marks"]) >= 2  # the first mark leaves room for at least one smaller one
    assert area <= 0.10 + 1e-9, f"3 marks cover {area:.3f} of the image (cap 0.10)"
    assert rec["box_area_fraction"] <= 0.10
    # Without the total cap, three marks of up to 10% each cover more.
    loose = SearchSpace(scale_range=(0.2, 0.3), n_marks=3, max_area_fraction=0.10)
    _, rec2 = watermark_image(image, np.zeros((200, 200), bool), [tiny_surrogate], load_logo(), opt, loose, label=0)
    assert rec2["box_area_fraction"] > 0.10


def test_total_area_fraction_is_validated():
    with pytest.raises(ValueError, match="max_total_area_fraction"):
        SearchSpace(max_total_area_fraction=1.5)


# ------------------------------------------------------------------------------ the ensemble default
def test_ensemble_default_loads_every_source_member():
    from monai_medlocker.networks import load_zoo_surrogates
    from monai_medlocker.networks.zoo import load_zoo_config

    zoo = load_zoo_config()
    sources = [m for m in zoo.members.values() if m.role == "source"]
    models = load_zoo_surrogates()
    assert [s.spec.name for s in models] == [m.network for m in sources]
    assert all(not s.network.training for s in models)
    with pytest.raises(ValueError, match="held out"):
        load_zoo_surrogates(["resnet", "vit"])
    with pytest.raises(ValueError, match="unknown"):
        load_zoo_surrogates(["resnet", "alexnet"])



def test_inference_config_surrogate_is_the_zoo_source_ensemble():
    """The protect default (chosen in benchmarks/results/transfer): the zoo's resnet + densenet sources."""
    from pathlib import Path

    from monai.bundle import ConfigParser

    root = Path(__file__).resolve().parents[1]
    parser = ConfigParser()
    parser.read_config(str(root / "bundle/configs/inference.json"))
    parser["bundle_root"] = str(root / "bundle")
    surrogates = parser.get_parsed_content("surrogate")
    assert [s.spec.name for s in surrogates] == ["resnet-tiny", "densenet-tiny"]


# ------------------------------------------------------------------------------ input diversity, smoothing
def test_input_diversity_views_are_deterministic_and_differentiable():
    from monai_medlocker.watermark.eot import InputDiversity

    x = _fundus_batch(2).requires_grad_(True)
    div = InputDiversity(3, seed=4)
    out = div(x)
    assert out.shape == (6, 3, 64, 64) and torch.isfinite(out).all()
    assert torch.equal(out, InputDiversity(3, seed=4)(x))
    assert not torch.equal(out, InputDiversity(3, seed=5)(x))
    assert not torch.equal(out.view(2, 3, 3, 64, 64)[:, 0], x)  # a view is not the input
    out.sum().backward()
    assert x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="n_views"):
        InputDiversity(0)
    with pytest.raises(ValueError, match="scale_range"):
        InputDiversity(2, scale_range=(0.2, 1.0))


def test_diversity_shapes_the_gradient_not_the_margins(tiny_surrogate, dark_image):
    """The linearisation's margins stay the plain image's; its gradients change; the queries count the views."""
    from monai_medlocker.watermark.eot import InputDiversity

    def problem(**kw):
        return AttackProblem(dark_image, np.zeros((160, 160), bool), [tiny_surrogate], load_logo(), SearchSpace(),
                             label=0, max_queries=200, **kw)

    plain, div, smooth = problem(), problem(grad_views=InputDiversity(4, seed=1)), problem(grad_sigma=2.0)
    lp, ld, ls = plain.linearize(None), div.linearize(None), smooth.linearize(None)
    assert torch.allclose(lp.offsets, ld.offsets, atol=1e-5) and torch.allclose(lp.offsets, ls.offsets, atol=1e-5)
    assert not torch.allclose(lp.grads, ld.grads)
    assert div.queries - plain.queries == 4  # one more image per view, one surrogate
    assert smooth.queries == plain.queries
    # smoothing lowers the gradient's pixel-to-pixel variation
    tv = lambda g: float((g[..., 1:, :] - g[..., :-1, :]).abs().mean())  # noqa: E731
    assert tv(ls.grads) < 0.7 * tv(lp.grads)


def test_diversity_settings_are_recorded_and_validated(tiny_surrogate, dark_image):
    opt = get_optimizer("medlocker", max_queries=80, input_diversity=2, grad_sigma=1.5)
    _, rec = watermark_image(dark_image, np.zeros((160, 160), bool), [tiny_surrogate], load_logo(), opt,
                             SearchSpace(), label=0, seed=1)
    assert rec["optimizer_settings"]["input_diversity"] == 2 and rec["optimizer_settings"]["grad_sigma"] == 1.5
    assert rec["queries"] <= 80
    plain = get_optimizer("medlocker", max_queries=80).settings()
    assert "input_diversity" not in plain and "grad_sigma" not in plain  # earlier records unchanged
    with pytest.raises(ValueError, match="input_diversity"):
        get_optimizer("medlocker", input_diversity=-1)
    with pytest.raises(ValueError, match="grad_sigma"):
        get_optimizer("medlocker", grad_sigma=-0.5)
