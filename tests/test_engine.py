"""The watermark engine: WSM boxes, the pixel invariants, the success test and the optimizers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

import monai_medlocker.watermark.engine as engine
from conftest import TinyConv
from monai_medlocker.networks import Surrogate
from monai_medlocker.transforms import AdversarialWatermark, AdversarialWatermarkd, LesionBBoxMask, LesionBBoxMaskd
from monai_medlocker.watermark import (
    AttackProblem,
    NoFeasiblePlacementError,
    Placement,
    SearchSpace,
    WatermarkInvariantError,
    composite,
    load_logo,
)
from monai_medlocker.watermark.optimizers import MedLockerOptimizer, RandomPlacement

# ----------------------------------------------------------------------------- LesionBBoxMask


def test_lesion_bbox_mask_boxes_margin_and_min_size(lesion_masks):
    masks = lesion_masks.copy()
    masks[1, 5, 150] = True  # a 1-pixel speck
    t = LesionBBoxMask(min_size=2, margin=3)
    boxes, channels = t.boxes(masks)
    expected = {(27, 17, 41, 29), (87, 87, 96, 95), (7, 117, 43, 143)}
    assert {tuple(b) for b in boxes.tolist()} == expected
    assert sorted(channels.tolist()) == [0, 0, 1]
    wsm = t(masks)
    assert wsm.shape == (1, 160, 160) and wsm.dtype == bool
    assert wsm[0, 17:29, 27:41].all() and not wsm[0, 16, 27] and not wsm[0, 5, 150]


def test_lesion_bbox_mask_threshold_fraction_and_clipping():
    prob = np.zeros((1, 100, 200), dtype=np.float32)
    prob[0, 0:4, 190:200] = 0.9
    prob[0, 50:60, 50:60] = 0.3  # below threshold
    t = LesionBBoxMask(threshold=0.5, margin_fraction=0.05)
    boxes, _ = t.boxes(prob)
    assert boxes.tolist() == [[185, 0, 200, 9]]  # 5 px margin (5% of 100), clipped at the edges
    assert t(prob)[0].sum() == 15 * 9


@pytest.mark.parametrize("kind", ["numpy", "torch", "meta"])
def test_lesion_bbox_mask_container_types(kind, lesion_masks):
    data = {"numpy": lesion_masks, "torch": torch.as_tensor(lesion_masks),
            "meta": MetaTensor(torch.as_tensor(lesion_masks), meta={"filename_or_obj": "x.png"})}[kind]
    out = LesionBBoxMask(margin=1)(data)
    assert out.shape == (1, 160, 160)
    if kind == "numpy":
        assert isinstance(out, np.ndarray)
    elif kind == "meta":
        assert isinstance(out, MetaTensor)
        assert out.meta["filename_or_obj"] == "x.png"
        assert len(out.meta["wsm_boxes"]) == 3
    else:
        assert isinstance(out, torch.Tensor)


def test_lesion_bbox_mask_rejects_bad_settings():
    with pytest.raises(ValueError, match="threshold"):
        LesionBBoxMask(threshold=2.0)
    with pytest.raises(ValueError, match="C x H x W"):
        LesionBBoxMask()(np.zeros((10, 10)))


def test_lesion_bbox_maskd(lesion_masks):
    out = LesionBBoxMaskd("lesions", wsm_key="wsm", margin=2)({"lesions": lesion_masks})
    assert out["wsm"].shape == (1, 160, 160) and out["lesions"] is lesion_masks


# ----------------------------------------------------------------------------- invariants


@pytest.mark.parametrize("optimizer", ["random", "medlocker", "medlocker-free"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_pixel_changes_inside_wsm_or_outside_logo(optimizer, seed, tiny_surrogate, dark_image, lesion_masks):
    kwargs = {"gradient": False} if optimizer == "medlocker-free" else {}
    name = "medlocker" if optimizer.startswith("medlocker") else optimizer
    wsm = LesionBBoxMask(margin=2)(lesion_masks)
    t = AdversarialWatermark(tiny_surrogate, optimizer=name, optimizer_kwargs=kwargs, max_queries=40,
                             search_space={"n_marks": 2, "rotations": [0, 20]}, seed=seed)
    out = t(dark_image.transpose(2, 0, 1), wsm)
    changed = np.any(out.transpose(1, 2, 0) != dark_image, axis=-1)
    assert changed.any(), "the logo must be visible"
    assert not (changed & wsm[0]).any()
    footprint = np.zeros_like(changed)
    for mark in t.last_record["marks"]:
        x0, y0, x1, y1 = mark["box_xyxy"]
        footprint[y0:y1, x0:x1] = True
        assert not wsm[0, y0:y1, x0:x1].any()
    assert not (changed & ~footprint).any()
    assert t.last_record["changed_pixels"] == int(changed.sum())


def test_invariant_guard_trips_on_a_bad_composite(monkeypatch, tiny_surrogate, dark_image, lesion_masks):
    wsm = LesionBBoxMask()(lesion_masks)[0]

    def leaky_composite(image, logo, placements, value_max=255.0, render_key=None):
        out = image.copy()
        out[wsm] = 255  # paints over the lesions: must be caught
        return out

    monkeypatch.setattr(engine, "composite", leaky_composite)
    with pytest.raises(WatermarkInvariantError, match="inside the WSM"):
        AdversarialWatermark(tiny_surrogate, optimizer="random")(dark_image.transpose(2, 0, 1), wsm[None])


def test_success_is_judged_on_native_uint8_artefact(monkeypatch, region_model, dark_image):
    seen = []
    real = engine.preprocess_for_model

    def spy(images, spec):
        seen.append((images.dtype, tuple(images.shape)))
        return real(images, spec)

    monkeypatch.setattr(engine, "preprocess_for_model", spy)
    t = AdversarialWatermark(region_model, optimizer="medlocker", max_queries=60)
    out = t(dark_image.transpose(2, 0, 1), np.zeros((1, 160, 160), bool))
    # Every final judgement (one per mark placed) sees the written uint8 composite at native size.
    assert seen and set(seen) == {(torch.uint8, (1, 3, 160, 160))}
    # An independent re-judgement of the written pixels agrees with the record.
    with torch.no_grad():
        logits = region_model.network(real(torch.from_numpy(np.asarray(out))[None], region_model.spec))[0]
    record = t.last_record
    assert record["final"]["preds"] == [int(logits.argmax())]
    assert record["success"] == (int(logits.argmax()) != record["label"])
    assert record["final"]["margin"] == pytest.approx(float(logits[0] - logits[1]), abs=1e-4)


def test_no_feasible_placement_raises_or_skips(tiny_surrogate, dark_image):
    everything = np.ones((1, 160, 160), dtype=bool)
    everything[0, :20, :20] = False  # a gap too small for the logo
    img = dark_image.transpose(2, 0, 1)
    with pytest.raises(NoFeasiblePlacementError, match="no feasible logo placement"):
        AdversarialWatermark(tiny_surrogate)(img, everything)
    t = AdversarialWatermark(tiny_surrogate, on_infeasible="skip")
    out = t(img, everything)
    assert np.array_equal(out, img)
    assert t.last_record["protected"] is False and "no feasible" in t.last_record["reason"]


@pytest.mark.parametrize("dtype,scale", [(np.uint8, 255), (np.float32, 1.0), (np.float32, 255.0)])
def test_dtype_and_size_are_kept(dtype, scale, tiny_surrogate):
    rng = np.random.default_rng(3)
    img = (rng.random((3, 150, 211)) * scale).astype(dtype)
    out = AdversarialWatermark(tiny_surrogate, max_queries=20)(img, np.zeros((1, 150, 211), bool))
    assert out.shape == img.shape and out.dtype == img.dtype
    if dtype != np.uint8:
        assert float(out.max()) <= scale + 1e-5


def test_metatensor_meta_survives_and_gets_record(tiny_surrogate, dark_image):
    img = MetaTensor(torch.from_numpy(dark_image.transpose(2, 0, 1).copy()), meta={"filename_or_obj": "a.png"})
    out = AdversarialWatermark(tiny_surrogate, max_queries=20)(img, np.zeros((1, 160, 160), bool))
    assert isinstance(out, MetaTensor)
    assert out.meta["filename_or_obj"] == "a.png"
    rec = out.meta["medlocker"]
    assert rec["protected"] and len(rec["logo_sha256"]) == 64 and rec["optimizer"] == "medlocker"


def test_dictionary_transform_seeds_each_image(tiny_surrogate, dark_image):
    t = AdversarialWatermarkd("image", surrogates=tiny_surrogate, optimizer="random", seed_from="name")
    wsm = np.zeros((1, 160, 160), bool)
    a = t({"image": dark_image.transpose(2, 0, 1), "wsm": wsm, "name": "a.png"})["medlocker"]
    b = t({"image": dark_image.transpose(2, 0, 1), "wsm": wsm, "name": "b.png"})["medlocker"]
    a2 = t({"image": dark_image.transpose(2, 0, 1), "wsm": wsm, "name": "a.png"})["medlocker"]
    assert a["marks"] == a2["marks"] and a["marks"] != b["marks"]


# ----------------------------------------------------------------------------- optimizers


def _region_problem(region_model, image, budget):
    return AttackProblem(image, np.zeros(image.shape[:2], bool), [region_model], load_logo(), SearchSpace(),
                         max_queries=budget)


def test_medlocker_screen_finds_the_only_working_place(region_model, dark_image):
    problem = _region_problem(region_model, dark_image, 60)
    best = MedLockerOptimizer(max_queries=60).search(problem)
    assert problem.best[0] < 0, "the gradient screen should find the sensitive region"
    assert problem.queries <= 20  # clean + gradient + one batch of 16
    assert best.x0 + best.width > 110 and best.y0 < 50  # over the target region (native x 110-150, y 10-50)


def test_medlocker_gradient_free_mode_also_succeeds(region_model, dark_image):
    problem = _region_problem(region_model, dark_image, 200)
    MedLockerOptimizer(max_queries=200, gradient=False).search(problem)
    assert problem.best[0] < 0
    assert problem.queries <= 200


def test_random_placement_rarely_hits_it(region_model, dark_image):
    hits = 0
    for seed in range(20):
        problem = AttackProblem(dark_image, np.zeros((160, 160), bool), [region_model], load_logo(), SearchSpace(),
                                seed=seed)
        p = RandomPlacement().search(problem)
        hits += bool(problem.evaluate([p]).margins[0] < 0)
    assert hits < 10


def test_query_budget_is_respected(tiny_surrogate, dark_image):
    for budget in (5, 17, 50):
        problem = AttackProblem(dark_image, np.zeros((160, 160), bool), [tiny_surrogate], load_logo(), SearchSpace(),
                                max_queries=budget)
        p = MedLockerOptimizer(max_queries=budget, confidence=1e9).search(problem)
        assert problem.queries <= budget
        assert problem.is_feasible(p)


def test_ensemble_counts_queries_per_model(tiny_surrogate, region_model, dark_image):
    with pytest.raises(ValueError, match="share their classes"):
        AttackProblem(dark_image, np.zeros((160, 160), bool), [tiny_surrogate, region_model], load_logo(), SearchSpace())
    two_class = Surrogate(TinyConv(2), tiny_surrogate.spec)
    problem = AttackProblem(dark_image, np.zeros((160, 160), bool), [two_class, region_model], load_logo(),
                            SearchSpace(), max_queries=100)
    assert problem.queries == 2  # the clean check, once per model
    problem.evaluate([problem.random_placement()] * 3)
    assert problem.queries == 8


def test_composite_only_touches_opaque_logo_pixels():
    image = np.full((50, 60, 3), 7, dtype=np.uint8)
    logo = np.zeros((10, 10, 4), dtype=np.uint8)
    logo[2:8, 2:8] = (255, 0, 0, 255)
    out = composite(image, logo, [Placement(5, 5, 10, 10, 0.5)])
    changed = np.any(out != image, axis=-1)
    assert changed[5:15, 5:15].any() and not changed[:5].any() and not changed[:, :5].any()
    assert not changed[15:].any() and not changed[:, 15:].any()
    with pytest.raises(ValueError, match="outside"):
        composite(image, logo, [Placement(55, 5, 10, 10, 0.5)])


def test_same_seed_gives_the_same_parameters(tiny_surrogate, dark_image, lesion_masks):
    wsm = LesionBBoxMask(margin=2)(lesion_masks)
    records = []
    for _ in range(2):
        t = AdversarialWatermark(tiny_surrogate, max_queries=40, seed=5, search_space={"rotations": [0, 15]})
        out = t(dark_image.transpose(2, 0, 1), wsm)
        records.append((t.last_record["marks"], t.last_record["queries"], out.tobytes()))
    assert records[0] == records[1]


@pytest.mark.parametrize("shape", [(160, 160), (301, 457), (1024, 1024)])
def test_screen_frame_composite_matches_full_resize(shape, tiny_surrogate):
    """The optimizers' cheap model-frame composite equals resizing the native composite."""
    rng = np.random.default_rng(1)
    image = (rng.random((*shape, 3)) * 255).astype(np.uint8)
    problem = AttackProblem(image, np.zeros(shape, bool), [tiny_surrogate], load_logo(), SearchSpace())
    size = tiny_surrogate.spec.input_size
    for _ in range(3):
        p = problem.random_placement()
        native = torch.from_numpy(composite(image, problem.logo, [p]).transpose(2, 0, 1).astype(np.float32) / 255)
        ref = torch.nn.functional.interpolate(native[None], size=(size, size), mode="bilinear", align_corners=False,
                                              antialias=True)[0]
        assert torch.allclose(problem.screen_image([p]), ref, atol=1e-4)
