"""The thief's toolbox (monai_medlocker.threats): each preprocessing and removal attack does what it claims."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_medlocker.data.synthetic import synthesize_fundus
from monai_medlocker.threats import preprocessing as pp
from monai_medlocker.threats import removal as rm
from monai_medlocker.watermark.blend import Placement, composite
from monai_medlocker.watermark.logo import load_logo

LOGO = load_logo()


@lru_cache(maxsize=None)
def lab(seed: int, size: int = 256) -> np.ndarray:
    image = synthesize_fundus(size, seed).image
    image.setflags(write=False)
    return image


def protected(seed: int, size: int = 256, placement_seed: int = 0, continuous: bool = False):
    image = lab(seed, size)
    p = rm.random_placement(image.shape, LOGO, np.random.default_rng(placement_seed), continuous=continuous)
    return image, composite(image, LOGO, [p]), p


def box(p: Placement) -> tuple[slice, slice]:
    return slice(p.y0, p.y0 + p.height), slice(p.x0, p.x0 + p.width)


# ------------------------------------------------------------------------------------------------ preprocessing


EXPECTED_SHAPE = {
    "none": (256, 256), "disc_crop": (512, 512), "ben_graham": (256, 256), "jpeg75": (256, 256),
    "downscale50": (128, 128), "center_crop90": (230, 230), "hflip": (256, 256), "color_jitter": (256, 256),
    "gaussian_blur": (256, 256),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_SHAPE))
def test_preprocessing_shape_dtype_deterministic(name):
    image = lab(1)
    fn = pp.get_thief_preprocessing(name)
    out = fn(image)
    assert out.dtype == np.uint8 and out.shape == EXPECTED_SHAPE[name] + (3,)
    assert np.array_equal(out, fn(image.copy()))
    if name != "none":
        # Each step does something: compare on the common frame where the shapes agree.
        other = out if out.shape == image.shape else None
        assert other is None or not np.array_equal(other, image)
    assert np.array_equal(lab(1), image)  # the input is not modified


def test_preprocessing_semantics():
    image = lab(2)
    assert np.array_equal(pp.horizontal_flip(image), image[:, ::-1])
    crop = pp.center_crop_fraction(image, 0.5)
    assert np.array_equal(crop, image[64:192, 64:192])
    # The disc crop removes the black surround: the middle row and column now reach the rim.
    disc = pp.fundus_disc_crop(image, 128)
    assert image[128, :8].max() < 10 and image[:8, 128].max() < 10
    assert disc[64, :4].min() > 20 and disc[:4, 64].min() > 20
    # Ben Graham: mid-grey outside 0.9 of the radius, local contrast kept inside.
    bg = pp.ben_graham_normalize(image)
    assert np.all(bg[0, 0] == 128) and bg[64:192, 64:192].std() > 2
    assert abs(float(bg[96:160, 96:160].mean()) - 128) < 30
    # JPEG at a lower quality loses more.
    e75 = np.abs(pp.jpeg_compress(image, 75).astype(int) - image).mean()
    e20 = np.abs(pp.jpeg_compress(image, 20).astype(int) - image).mean()
    assert 0 < e75 < e20
    # Colour jitter: same seed same image, other seed other image; None: a per-image seed.
    assert np.array_equal(pp.color_jitter(image, seed=3), pp.color_jitter(image, seed=3))
    assert not np.array_equal(pp.color_jitter(image, seed=3), pp.color_jitter(image, seed=4))
    assert not np.array_equal(pp.color_jitter(image), pp.color_jitter(lab(3)[: 256]))  # different images
    assert pp.gaussian_blur_image(image, 2.0).std() < image.std()


@pytest.mark.parametrize("cls,kwargs,shape", [
    (pp.FundusDiscCrop, {"size": 96}, (96, 96)), (pp.BenGrahamNormalize, {}, (256, 256)),
    (pp.JpegCompress, {"quality": 75}, (256, 256)), (pp.Downscale, {"factor": 0.5}, (128, 128)),
    (pp.CenterCropFraction, {"fraction": 0.9}, (230, 230)), (pp.HorizontalFlip, {}, (256, 256)),
    (pp.ColorJitter, {"seed": 1}, (256, 256)), (pp.GaussianBlurImage, {"sigma": 1.0}, (256, 256)),
])
def test_transforms_keep_container_and_meta(cls, kwargs, shape):
    chw = np.ascontiguousarray(lab(1).transpose(2, 0, 1))
    meta_in = MetaTensor(torch.from_numpy(chw.copy()), meta={"filename_or_obj": "eye.png"})
    out = cls(**kwargs)(meta_in)
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "eye.png"
    assert tuple(out.shape) == (3,) + shape and out.dtype == torch.uint8
    out_np = cls(**kwargs)(chw)
    assert isinstance(out_np, np.ndarray) and np.array_equal(out_np, out.numpy())
    # The dictionary wrapper and its aliases, on a 0-1 float MetaTensor: same scale and dtype back.
    dict_cls = getattr(pp, cls.__name__ + "d")
    assert getattr(pp, cls.__name__ + "D") is dict_cls and getattr(pp, cls.__name__ + "Dict") is dict_cls
    d = dict_cls(keys="image", **kwargs)({"image": meta_in.float() / 255.0, "label": 2})
    assert d["label"] == 2 and isinstance(d["image"], MetaTensor) and d["image"].meta["filename_or_obj"] == "eye.png"
    assert d["image"].dtype == torch.float32 and float(d["image"].max()) <= 1.0
    assert np.abs(d["image"].numpy() * 255 - out.numpy()).max() < 1e-3


def test_bad_names_and_values_raise():
    with pytest.raises(ValueError, match="disc_crop"):
        pp.get_thief_preprocessing("jpeg50")
    with pytest.raises(ValueError, match="blind_inverse"):
        rm.get_removal_attack("magic")
    with pytest.raises(ValueError, match="quality"):
        pp.JpegCompress(quality=0)
    with pytest.raises(ValueError, match="3 x H x W"):
        pp.HorizontalFlip()(np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        pp.jpeg_compress(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="placements"):
        rm.informed_inverse_blend(lab(1), LOGO, None)


# ------------------------------------------------------------------------------------------------ inverse blends


@pytest.mark.parametrize("alpha", [100 / 255, 0.6, 0.9])
def test_informed_inverse_restores_within_two_levels(alpha):
    image = lab(4)
    p = Placement(60, 70, 64, 64, alpha, 0.0, 0.25)
    marked = composite(image, LOGO, [p])
    assert np.abs(marked[box(p)].astype(int) - image[box(p)]).max() > 50  # the mark is there
    restored = rm.informed_inverse_blend(marked, LOGO, [p.to_record()])
    err = np.abs(restored.astype(int) - image)
    # Rounding of the composite, amplified by 1 / (1 - alpha): 2 levels up to alpha 0.75.
    bound = 2 if alpha <= 0.75 else int(np.ceil(0.5 / (1 - alpha))) + 1
    assert err[box(p)].max() <= bound
    assert err.sum() == err[box(p)].sum()  # nothing outside the box changes


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_locator_finds_box_and_scale(seed):
    image, marked, p = protected(seed, 256, placement_seed=seed, continuous=True)
    (q, score), = rm.locate_logo(marked, LOGO)
    assert abs(q.x0 - p.x0) <= 2 and abs(q.y0 - p.y0) <= 2, (p, q)
    assert abs(q.width - p.width) <= 2 and abs(q.height - p.height) <= 2
    assert abs(q.alpha - p.alpha) <= 4 / 255 and score > 0.8
    # On the clean image the best match is a poor one.
    (_, clean_score), = rm.locate_logo(image, LOGO)
    assert clean_score < 0.6


def test_blind_inverse_gets_close():
    # Measured on these two images: 50.4 and 47.4 dB, 1.3-1.4 dB below the informed inversion.
    for seed in (8, 9):
        image, marked, p = protected(seed, 256, placement_seed=seed)
        blind = rm.box_fidelity(rm.blind_inverse_blend(marked, LOGO), image, [p])
        informed = rm.box_fidelity(rm.informed_inverse_blend(marked, LOGO, [p]), image, [p])
        nothing = rm.box_fidelity(marked, image, [p])
        assert blind["psnr"] > 45 and nothing["psnr"] < 15
        assert blind["psnr"] > informed["psnr"] - 2 and blind["ssim"] > 0.98


# ------------------------------------------------------------------------------------------------ inpainting


@pytest.mark.parametrize("name", ["inpaint_telea", "inpaint_ns", "inpaint_biharmonic"])
@pytest.mark.parametrize("traced", [True, False])
def test_inpainting_changes_only_the_footprint(name, traced):
    image, marked, p = protected(12, 256, placement_seed=3)
    attack = rm.get_removal_attack(name)
    out = attack(marked, LOGO, [p] if traced else None)
    footprint = rm.logo_footprint(image.shape, LOGO, [p])
    changed = np.any(out != marked, axis=-1)
    assert out.dtype == np.uint8 and out.shape == marked.shape
    assert not (changed & ~footprint).any()
    assert changed.sum() > 0.8 * footprint.sum()  # it filled the hole, not a few pixels
    before, after = rm.box_fidelity(marked, image, [p]), rm.box_fidelity(out, image, [p])
    assert after["psnr"] > before["psnr"] + 3


# ------------------------------------------------------------------------------------------------ learned remover


@pytest.fixture(scope="module")
def quick_remover(tmp_path_factory):
    path = tmp_path_factory.mktemp("remover") / "remover.pt"
    remover, report = rm.train_remover(str(path), **rm.QUICK_REMOVER)
    return path, remover, report


def test_learned_remover_improves_held_out_box_psnr(quick_remover):
    path, remover, report = quick_remover
    held = report["held_out"]
    # Measured at the quick setting: 10.0 -> 13.4 dB on the 8 held-out pairs, in about 15 s.
    assert held["n"] == rm.QUICK_REMOVER["n_val"] and held["restored_psnr"] > held["protected_psnr"] + 1.5
    assert report["config"]["seed"] == rm.THIEF_LAB_SEED
    # Applied to an owner image of another size (256 px; trained at 128): only the located box changes.
    image, marked, p = protected(13, 256, placement_seed=4)
    loaded = rm.LearnedRemover.from_checkpoint(path)
    out = loaded(marked, LOGO)
    assert out.dtype == np.uint8 and out.shape == marked.shape
    assert np.array_equal(out, remover(marked, LOGO))
    changed = np.any(out != marked, axis=-1)
    inside = np.zeros_like(changed)
    inside[box(p)] = True
    assert changed[inside].mean() > 0.5 and not (changed & ~inside).any()
    assert rm.box_fidelity(out, image, [p])["psnr"] > rm.box_fidelity(marked, image, [p])["psnr"]
    full = rm.LearnedRemover.from_checkpoint(path, region="full")(marked, LOGO)
    assert full.shape == marked.shape and np.any(full[~inside] != marked[~inside])
    # The owner's use (the shield's objective): the given boxes, not located; the same result where they agree.
    at = loaded.remove_at(marked, [p])
    at_changed = np.any(at != marked, axis=-1)
    assert at_changed[inside].mean() > 0.5 and not (at_changed & ~inside).any()
    shifted = Placement(p.x0 + 7, p.y0 + 5, p.width, p.height, p.alpha, p.rotation, p.scale)
    moved = np.any(loaded.remove_at(marked, [shifted]) != marked, axis=-1)
    x0, y0, x1, y1 = shifted.box_xyxy
    assert moved[y0:y1, x0:x1].any() and not moved[:y0].any() and not moved[:, :x0].any()


def test_remover_presets_train_on_different_seeds():
    # The thief's remover (study) and the owner's (the shield's objective) never share their training images.
    assert rm.OWNER_REMOVER_SEED != rm.THIEF_LAB_SEED
    assert rm.THIEF_REMOVER["n_pairs"] * rm.THIEF_REMOVER["epochs"] // 8 >= 500  # several hundred Adam steps
    import inspect

    defaults = {k: v.default for k, v in inspect.signature(rm.train_remover).parameters.items()}
    assert all(defaults[k] == v for k, v in rm.THIEF_REMOVER.items() if k in ("n_pairs", "epochs", "channels", "n_val"))


def test_remover_checkpoint_errors_name_the_file(tmp_path):
    bad = tmp_path / "not_a_model.pt"
    bad.write_bytes(b"hello")
    with pytest.raises(ValueError, match="not_a_model.pt"):
        rm.LearnedRemover.from_checkpoint(bad)
    with pytest.raises(ValueError, match="missing.pt"):
        rm.LearnedRemover.from_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="crop"):
        rm.train_remover(None, crop=50)


# ------------------------------------------------------------------------------------------------ collection attack


def test_collection_attack_estimates_logo_and_removes_it():
    from monai_medlocker.watermark.logo import render_logo

    triples = [protected(30 + i, 256, placement_seed=i) for i in range(12)]
    attack = rm.CollectionAttack().fit([m for _, m, _ in triples[:10]])
    assert attack.n_used == 10
    rgb, cov = render_logo(LOGO, attack.canonical, attack.canonical)
    inside = attack.alpha > 0.5
    # Measured: matte 0.98, appearance 0.95 correlation with the true logo.
    assert np.corrcoef(attack.alpha.ravel(), cov.ravel())[0, 1] > 0.9
    assert np.corrcoef(attack.watermark[inside].ravel(), rgb[inside].ravel())[0, 1] > 0.85
    # Removal, also from the two images outside the fitted ten: every box PSNR improves (measured +2.0 to +12.5 dB).
    gains = []
    for image, marked, p in triples:
        out = attack(marked, LOGO)
        gains.append(rm.box_fidelity(out, image, [p])["psnr"] - rm.box_fidelity(marked, image, [p])["psnr"])
    assert min(gains) > 1.0 and np.mean(gains) > 5.0
    with pytest.raises(ValueError, match="fit"):
        rm.CollectionAttack().remove(triples[0][1])
    with pytest.raises(ValueError, match="at least 3"):
        rm.CollectionAttack().fit([lab(1), lab(2)])


def test_remover_training_crops_stay_inside_the_image():
    """train_remover's crops are crop x crop wherever the mark sits: a mark at the edge of a 256 px image (a box
    from 0 to size - width) gave an origin past size - crop, a short crop, and np.stack failed in the study."""
    rng = np.random.default_rng(0)
    for size, crop in ((256, 128), (512, 128), (160, 152)):
        for x0 in range(0, size - 40, 7):
            for width in (40, 77, min(115, size - x0)):
                p = Placement(x0=x0, y0=size - width, width=width, height=width, alpha=0.5)
                u, v = rm._crop_origin(p, crop, size, rng)
                assert 0 <= u <= size - crop and 0 <= v <= size - crop, (size, crop, x0, width, u, v)
