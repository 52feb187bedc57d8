"""Tests of the synthetic fundus lab: determinism, geometry, masks vs drawing, grade rules, datasets, CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from monai_medlocker.cli import main
from monai_medlocker.data import (
    LESION_NAMES,
    LESION_TYPES,
    QUADRANTS,
    SEVERE_HE_PER_QUADRANT,
    SEVERE_SOFT_EXUDATES,
    FundusSample,
    generate_dataset,
    grade_from_lesions,
    sample_seed,
    synthesize_fundus,
)
from monai_medlocker.data.lab import anatomy, lesions as lab_lesions, render


def _counts(ma=0, he_q=(0, 0, 0, 0), ex=0, se=0, prh=0) -> dict:
    return {"MA": ma, "HE": sum(he_q), "EX": ex, "SE": se, "PRH": prh, "HE_quadrants": list(he_q)}


def _outside_fov(sample: FundusSample) -> np.ndarray:
    size = sample.image.shape[0]
    cx, cy = sample.meta["fov_center"]
    yy, xx = np.mgrid[:size, :size]
    return np.hypot(xx - cx, yy - cy) > sample.meta["fov_radius"] + 0.5


# ---------------------------------------------------------------------------------------------- images


def test_constants():
    assert LESION_TYPES == ("MA", "HE", "EX", "SE")
    assert set(LESION_NAMES) == set(LESION_TYPES)
    assert len(QUADRANTS) == 4


def test_deterministic_for_size_seed_grade():
    a = synthesize_fundus(160, seed=11, grade=3)
    b = synthesize_fundus(160, seed=11, grade=3)
    np.testing.assert_array_equal(a.image, b.image)
    for t in LESION_TYPES:
        np.testing.assert_array_equal(a.masks[t], b.masks[t])
    assert a.counts == b.counts and a.grade == b.grade
    c = synthesize_fundus(160, seed=12, grade=3)
    assert np.abs(a.image.astype(int) - c.image.astype(int)).mean() > 5
    # Without a grade, the grade itself comes from the seed.
    assert synthesize_fundus(128, seed=5).grade == synthesize_fundus(128, seed=5).grade


@pytest.mark.parametrize("size", [128, 300, 512])
def test_shapes_dtypes_and_black_outside_fov(size):
    sample = synthesize_fundus(size, seed=size, grade=4)
    assert sample.image.shape == (size, size, 3) and sample.image.dtype == np.uint8
    assert set(sample.masks) == set(LESION_TYPES)
    outside = _outside_fov(sample)
    for t in LESION_TYPES:
        assert sample.masks[t].shape == (size, size) and sample.masks[t].dtype == bool
        assert not (sample.masks[t] & outside).any(), f"{t} mask leaves the field of view"
    assert outside.any() and sample.image[outside].max() == 0
    inside = ~outside
    assert sample.image[inside].mean() > 40  # the fundus itself is not black
    # Orange-red fundus: red dominates green, green dominates blue.
    r, g, b = (sample.image[..., c][inside].mean() for c in range(3))
    assert r > 1.5 * g and g > b
    assert isinstance(sample.grade, int) and sample.referable == (sample.grade >= 2)
    assert sample.meta["size"] == size and sample.meta["eye"] in ("OD", "OS")


def test_anatomy_layout():
    for seed in range(6):
        sample = synthesize_fundus(256, seed=seed, grade=0)
        meta = sample.meta
        (dx, dy), (fx, fy), rd = meta["disc_center"], meta["fovea_center"], meta["disc_radius"]
        dist_dd = np.hypot(fx - dx, fy - dy) / (2 * rd)
        assert 2.0 < dist_dd < 3.0  # fovea ~2.5 disc diameters from the disc
        # Right eye: disc (nasal) on the image's right of the fovea; left eye: on the left.
        assert (dx > fx) == (meta["eye"] == "OD")
        green = sample.image[..., 1].astype(float)
        yy, xx = np.mgrid[:256, :256]
        disc = np.hypot(xx - dx, yy - dy) < 0.6 * rd
        ring = (np.hypot(xx - fx, yy - fy) > 3 * rd) & (np.hypot(xx - fx, yy - fy) < 4 * rd)
        fovea = np.hypot(xx - fx, yy - fy) < 0.5 * rd
        assert green[disc].mean() > green[ring].mean() + 20  # bright disc
        assert green[fovea].mean() < green[ring].mean()  # darker macula


def test_geometry_scales_with_size():
    small = synthesize_fundus(256, seed=21, grade=3)
    large = synthesize_fundus(1024, seed=21, grade=3)
    assert small.counts == large.counts
    disc_small, disc_large = np.array(small.meta["disc_center"]), np.array(large.meta["disc_center"])
    np.testing.assert_allclose(disc_large + 0.5, 4 * (disc_small + 0.5))  # pixel centres at (j + 0.5) / S
    down = np.asarray(Image.fromarray(large.image).resize((256, 256), Image.BOX), dtype=float)
    assert np.abs(down - small.image).mean() < 8  # different seeds differ by ~20
    he_large = np.asarray(Image.fromarray(large.masks["HE"].astype(np.uint8) * 255).resize((256, 256), Image.BOX)) > 127
    inter = (he_large & small.masks["HE"]).sum()
    union = (he_large | small.masks["HE"]).sum()
    assert union > 0 and inter / union > 0.8


# ----------------------------------------------------------------------------------------------- masks


@pytest.mark.parametrize("seed,grade", [(3, 3), (4, 4), (7, 2), (8, 3)])
def test_masks_mark_drawn_pixels(seed, grade):
    sample = synthesize_fundus(256, seed=seed, grade=grade)
    clean = render._synthesize(256, seed, grade, draw_lesions=False)
    assert not any(clean.masks[t].any() for t in LESION_TYPES) and clean.grade == 0
    diff = sample.image.astype(float) - clean.image.astype(float)
    any_mask = np.zeros((256, 256), dtype=bool)
    for t in LESION_TYPES:
        mask = sample.masks[t]
        any_mask |= mask
        if not mask.any():
            continue
        changed = np.abs(diff[mask]).sum(axis=1) > 12
        assert changed.mean() > 0.85, f"{t}: only {changed.mean():.2f} of mask pixels were drawn"
        green = diff[..., 1][mask].mean()
        if t in ("MA", "HE"):
            assert green < -15, f"{t} should darken the retina, mean green change {green:.1f}"
        else:
            assert green > 15, f"{t} should brighten the retina, mean green change {green:.1f}"
    far = ~np.asarray(Image.fromarray(any_mask.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(15))).astype(bool)
    assert np.abs(diff[far]).mean() < 2.0  # away from lesions the two renderings agree


def test_lesion_alpha_is_exactly_the_drawn_shape():
    """On a flat canvas every pixel with alpha > 0.5 changes, and nothing outside the lesion's support does."""
    rng = np.random.default_rng(0)
    eye, geo = anatomy._sample_geometry(rng)
    lesions = lab_lesions._layout(rng, geo, lab_lesions._plan(rng, 4))
    assert {les["type"] for les in lesions} >= {"HE", "MA"}
    illum = np.ones((3, 8, 8), dtype=np.float32)
    for les in lesions:
        canvas = np.full((400, 400, 3), 0.5, dtype=np.float32)
        sl, alpha = lab_lesions._draw_lesion(les, canvas, illum, 400)
        change = np.abs(canvas - 0.5).sum(axis=2)
        inside = np.zeros((400, 400), dtype=bool)
        inside[sl] = alpha > lab_lesions.MASK_ALPHA_THRESHOLD
        support = np.zeros((400, 400), dtype=bool)
        support[sl] = alpha > 0
        assert inside.any(), les["kind"]
        assert (change[inside] > 0.02).all(), les["kind"]
        assert (change[~support] == 0).all(), les["kind"]


def test_counts_match_masks():
    for grade in range(5):
        for seed in range(3):
            sample = synthesize_fundus(192, seed=100 + seed, grade=grade)
            for t in LESION_TYPES:
                n = sample.counts[t] + (sample.counts["PRH"] if t == "HE" else 0)
                assert (n > 0) == bool(sample.masks[t].any()), (grade, seed, t)
            assert len(sample.meta["lesions"]) == sum(sample.counts[t] for t in LESION_TYPES) + sample.counts["PRH"]


# ---------------------------------------------------------------------------------------------- grades


def test_grade_rules_by_hand():
    K, M = SEVERE_HE_PER_QUADRANT, SEVERE_SOFT_EXUDATES
    assert grade_from_lesions(_counts()) == 0
    assert grade_from_lesions({}) == 0
    assert grade_from_lesions(_counts(ma=1)) == 1
    assert grade_from_lesions(_counts(ma=40)) == 1
    assert grade_from_lesions(_counts(he_q=(1, 0, 0, 0))) == 2
    assert grade_from_lesions(_counts(ex=1)) == 2
    assert grade_from_lesions(_counts(se=1)) == 2
    assert grade_from_lesions(_counts(ma=5, he_q=(K, K, K, 0), ex=9)) == 2  # three quadrants are not enough
    assert grade_from_lesions(_counts(he_q=(K, K, K, K - 1))) == 2  # boundary: one short
    assert grade_from_lesions(_counts(he_q=(K, K, K, K))) == 3
    assert grade_from_lesions(_counts(he_q=(1, 1, 1, 1), se=M)) == 3
    assert grade_from_lesions(_counts(he_q=(1, 1, 1, 1), se=M - 1)) == 2
    assert grade_from_lesions(_counts(he_q=(3, 3, 3, 0), se=M + 3)) == 2  # soft exudates need HE in all quadrants
    assert grade_from_lesions(_counts(prh=1)) == 4
    assert grade_from_lesions(_counts(ma=3, he_q=(K, K, K, K), prh=1)) == 4
    # Without quadrant counts the spread is unknown: haemorrhages alone stay moderate.
    assert grade_from_lesions({"HE": 40}) == 2


@pytest.mark.parametrize("bad", [
    {"MA": -1}, {"HE": 1.5}, {"EX": True}, {"HE": 2, "HE_quadrants": [1, 0, 0]},
    {"HE": 3, "HE_quadrants": [1, 0, 0, 0]}, {"HE": 1, "HE_quadrants": [2, -1, 0, 0]}, [("MA", 1)],
])
def test_grade_rules_reject_bad_counts(bad):
    with pytest.raises(ValueError):
        grade_from_lesions(bad)


@pytest.mark.parametrize("grade", range(5))
def test_generated_grade_follows_rules(grade):
    for seed in range(4):
        sample = synthesize_fundus(128, seed=1000 * grade + seed, grade=grade)
        assert sample.grade == grade
        assert grade_from_lesions(sample.counts) == sample.grade
        assert sample.referable == (grade >= 2)
        q = sample.counts["HE_quadrants"]
        if grade == 2:  # a clear gap below the severe criteria
            assert sum(n > 0 for n in q) <= 2 and max(q) < SEVERE_HE_PER_QUADRANT - 1
        if grade == 3:
            assert min(q) >= 2 and sample.meta["severe_rule"] in ("haemorrhages", "soft_exudates")
        if grade == 4:
            assert sample.counts["PRH"] >= 1


# -------------------------------------------------------------------------------------------- datasets


def test_generate_dataset(tmp_path):
    out = tmp_path / "lab"
    path = generate_dataset(out, n=10, size=128, seed=3, progress=False)
    assert path == out / "datalist.json"
    data = json.loads(path.read_text())
    assert data["num_classes"] == 5 and set(data["labels"]) == {str(g) for g in range(5)}
    assert data["lesion_types"] == list(LESION_TYPES)
    items = data["training"] + data["validation"] + data["test"]
    assert len(items) == 10 and len({it["image"] for it in items}) == 10
    assert sorted(it["label"] for it in items) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]  # uniform quotas
    for it in items:
        assert 0 <= it["label"] <= 4 and it["referable"] == int(it["label"] >= 2)
        assert not Path(it["image"]).is_absolute()
        image = np.asarray(Image.open(out / it["image"]))
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8
        for t in LESION_TYPES:
            mask = np.asarray(Image.open(out / it[f"mask_{t}"]))
            assert mask.shape == (128, 128) and set(np.unique(mask)) <= {0, 255}
        assert grade_from_lesions(it["counts"]) == it["label"]
    # One image regenerates alone from its seed and label.
    first = data["training"][0]
    index = int(first["image"].split("_")[1].split(".")[0])
    assert first["seed"] == sample_seed(3, index)
    again = synthesize_fundus(128, first["seed"], first["label"])
    np.testing.assert_array_equal(again.image, np.asarray(Image.open(out / first["image"])))
    # Never clobber: a second run into the same folder is refused, unless asked to overwrite.
    with pytest.raises(ValueError, match="lab"):
        generate_dataset(out, n=4, size=128, seed=3, progress=False)
    generate_dataset(out, n=4, size=128, seed=3, progress=False, overwrite=True)
    assert len(list((out / "images").iterdir())) == 4 and len(list((out / "masks").iterdir())) == 16


def test_generate_dataset_deterministic_and_stratified(tmp_path):
    a = generate_dataset(tmp_path / "a", n=40, size=128, seed=9, progress=False)
    b = generate_dataset(tmp_path / "b", n=40, size=128, seed=9, progress=False, workers=2)
    da, db = json.loads(a.read_text()), json.loads(b.read_text())
    assert da == db
    assert (tmp_path / "a/images/synth_00007.png").read_bytes() == (tmp_path / "b/images/synth_00007.png").read_bytes()
    for split in ("training", "validation", "test"):
        assert {it["label"] for it in da[split]} == set(range(5)), split
    assert len(da["training"]) > len(da["validation"])
    c = json.loads(generate_dataset(tmp_path / "c", n=40, size=128, seed=10, progress=False).read_text())
    assert c["training"] != da["training"]


def test_generate_dataset_grade_weights(tmp_path):
    path = generate_dataset(tmp_path / "w", n=8, size=128, seed=0, progress=False, grade_weights=[1, 0, 0, 0, 1],
                            split=(1.0, 0.0, 0.0))
    data = json.loads(path.read_text())
    assert sorted(it["label"] for it in data["training"]) == [0] * 4 + [4] * 4
    assert data["validation"] == [] and data["test"] == []


@pytest.mark.parametrize("kwargs,needle", [
    ({"size": 64}, "64"), ({"size": 4096}, "4096"), ({"n": 0}, "0"), ({"n": -3}, "-3"),
    ({"split": (0.5, 0.5, 0.5)}, "0.5"), ({"split": (0.7, 0.3)}, "0.7"), ({"split": (1.2, -0.1, -0.1)}, "-0.1"),
    ({"grade_weights": [1, 1, 1]}, "1"), ({"grade_weights": [1, -1, 1, 1, 1]}, "-1"),
    ({"grade_weights": [0, 0, 0, 0, 0]}, "0"), ({"seed": -1}, "-1"),
])
def test_generate_dataset_rejects_bad_arguments(tmp_path, kwargs, needle):
    args = {"n": 2, "size": 128, "progress": False, **kwargs}
    with pytest.raises(ValueError, match=re.escape(needle)):
        generate_dataset(tmp_path / "bad", **args)
    assert not (tmp_path / "bad").exists()  # validation happens before anything is written


@pytest.mark.parametrize("size", [64, 127, 2049, 4096])
def test_synthesize_rejects_bad_size(size):
    with pytest.raises(ValueError, match=str(size)):
        synthesize_fundus(size, seed=0)


def test_synthesize_rejects_bad_seed_and_grade():
    with pytest.raises(ValueError, match="-1"):
        synthesize_fundus(128, seed=-1)
    with pytest.raises(ValueError, match="5"):
        synthesize_fundus(128, seed=0, grade=5)


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_synth(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["synth", str(out), "--n", "6", "--size", "128", "--seed", "1", "--quiet"]) == 0
    summary = capsys.readouterr().out
    assert "6 images" in summary and "training" in summary and "grades" in summary
    data = json.loads((out / "datalist.json").read_text())
    assert sum(len(data[s]) for s in ("training", "validation", "test")) == 6
    assert main(["synth", str(out), "--n", "6", "--size", "128", "--quiet"]) == 2  # refuses to overwrite
    assert main(["synth", str(out), "--n", "3", "--size", "128", "--quiet", "--overwrite"]) == 0
    assert main(["synth", str(tmp_path / "big"), "--size", "5000", "--quiet"]) == 2
    assert "5000" in capsys.readouterr().err
    assert main(["synth", str(tmp_path / "s"), "--n", "2", "--size", "128", "--split", "0.5", "0.5", "0.5"]) == 2
