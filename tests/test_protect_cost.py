"""The default protect's cheaper search (issue 19 item 5): checks verified in chunks, the linearisation reused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_medlocker.networks import preprocess_for_model
from monai_medlocker.watermark import AttackProblem, SearchSpace, get_optimizer, load_logo, watermark_image
from monai_medlocker.watermark.optimizers import MedLockerOptimizer

ROOT = Path(__file__).resolve().parents[1]


def _region_problem(model, image, budget, **kwargs):
    return AttackProblem(image, np.zeros(image.shape[:2], bool), [model], load_logo(), SearchSpace(),
                         max_queries=budget, **kwargs)


def _count_batches(monkeypatch) -> list[int]:
    sizes: list[int] = []
    evaluate = AttackProblem.evaluate

    def counted(self, candidates):
        sizes.append(len(candidates))
        return evaluate(self, candidates)

    monkeypatch.setattr(AttackProblem, "evaluate", counted)
    return sizes


def test_verify_chunk_stops_at_the_first_fooling_pass(monkeypatch, region_model, dark_image):
    sizes = _count_batches(monkeypatch)
    whole = _region_problem(region_model, dark_image, 60)
    MedLockerOptimizer(max_queries=60).search(whole)
    assert sizes == [16]  # the old behaviour: one pass of the whole round
    sizes.clear()
    chunked = _region_problem(region_model, dark_image, 60)
    MedLockerOptimizer(max_queries=60, verify_chunk=3).search(chunked)
    assert chunked.best[0] < 0 and all(n <= 3 for n in sizes)
    assert chunked.queries == 2 + 3 * len(sizes) < whole.queries  # clean + gradient + the passes it needed


def test_verify_chunk_goes_on_until_the_margin_is_met(monkeypatch, region_model, dark_image):
    """The stop is the confidence margin, a setting: an unmet margin keeps checking the round's other passes."""
    sizes = _count_batches(monkeypatch)
    problem = _region_problem(region_model, dark_image, 60)
    MedLockerOptimizer(max_queries=60, verify_chunk=3, confidence=1e9).search(problem)
    assert sum(sizes[:6]) == 16 and len(sizes) > 1


def test_reanchored_linearisation_is_exact_at_the_new_image(tiny_surrogate, dark_image):
    first = _region_problem(tiny_surrogate, dark_image, None)
    lin = first.linearize(None)
    assert first.clean_linearization is lin
    marked = dark_image.copy()
    marked[10:40, 10:40] = 200  # an earlier mark, say
    second = _region_problem(tiny_surrogate, marked, None, inherited=lin)
    moved = second.reanchor(second.inherited)
    with torch.no_grad():
        z = tiny_surrogate.network(preprocess_for_model(second.clean_screen[None], tiny_surrogate.spec))[0]
    label = second.label
    exact = torch.stack([z[label] - z[k] for k in range(z.shape[0]) if k != label])
    assert torch.allclose(moved.offsets, exact, atol=1e-4)
    assert moved.grads is lin.grads  # no new gradient: no query
    assert second.queries == 1  # the clean check only


def test_later_marks_reuse_the_first_linearisation(monkeypatch, tiny_surrogate, dark_image):
    calls: list = []
    linearize = AttackProblem.linearize

    def counted(self, placement=None):
        calls.append(placement)
        return linearize(self, placement)

    monkeypatch.setattr(AttackProblem, "linearize", counted)
    space = SearchSpace(scale_range=(0.15, 0.15), n_scales=1, n_marks=3)
    wsm = np.zeros((160, 160), bool)
    opt = MedLockerOptimizer(max_queries=40, verify_chunk=3, reuse_linearization=True)
    _, rec = watermark_image(dark_image, wsm, [tiny_surrogate], load_logo(), opt, space, label=0, seed=1)
    assert len(rec["marks"]) == 3
    assert sum(p is None for p in calls) == 1  # later marks re-anchor the first mark's gradients
    calls.clear()
    _, plain = watermark_image(dark_image, wsm, [tiny_surrogate], load_logo(), MedLockerOptimizer(max_queries=40),
                               space, label=0, seed=1)
    assert sum(p is None for p in calls) == 3
    assert "reuse_linearization" not in plain["optimizer_settings"] and "verify_chunk" not in plain["optimizer_settings"]
    assert rec["optimizer_settings"]["reuse_linearization"] and rec["optimizer_settings"]["verify_chunk"] == 3


def test_default_protect_uses_the_cheap_search(tiny_surrogate):
    """One place holds protect's defaults: the transform (bundle and Python chains) and the threat study use them."""
    from monai_medlocker.transforms import AdversarialWatermark
    from monai_medlocker.workflows.study_tools import protect_tools
    from monai_medlocker.workflows.threat_study import V1_SETTINGS

    opt = AdversarialWatermark(tiny_surrogate).optimizer
    assert opt.verify_chunk == 3 and opt.reuse_linearization and opt.confidence == 0 and opt.give_up == 2.0
    mine = AdversarialWatermark(tiny_surrogate, optimizer_kwargs={"verify_chunk": None, "confidence": 1.0}).optimizer
    assert mine.verify_chunk is None and mine.reuse_linearization and mine.confidence == 1.0
    assert AdversarialWatermark(tiny_surrogate, optimizer="bhe").optimizer.name == "bhe"  # no medlocker settings
    study, _, _ = protect_tools({"optimizer": "medlocker"})
    assert study.verify_chunk == 3 and study.reuse_linearization
    v1, _, _ = protect_tools({**V1_SETTINGS, "logo": None})
    assert v1.settings() == get_optimizer("medlocker").settings()  # the old default stays the old default
    for config in ("inference.json", "evaluate_protection.json"):  # the configs add nothing of their own
        assert json.loads((ROOT / "bundle/configs" / config).read_text())["optimizer_kwargs"] == {}


def test_verify_chunk_is_validated():
    with pytest.raises(ValueError, match="verify_chunk"):
        MedLockerOptimizer(verify_chunk=0)
    with pytest.raises(ValueError, match="give_up"):
        MedLockerOptimizer(give_up=0)


def test_give_up_ends_a_hopeless_search_early(region_model, dark_image):
    """A margin target far out of reach (confidence 1e9) spends the whole budget, unless give_up stops it."""
    full = _region_problem(region_model, dark_image, 200)
    MedLockerOptimizer(max_queries=200, verify_chunk=3, confidence=1e9).search(full)
    assert full.queries > 190
    short = _region_problem(region_model, dark_image, 200)
    opt = MedLockerOptimizer(max_queries=200, verify_chunk=3, confidence=1e9, give_up=2.0)
    opt.search(short)
    # clean + gradient, then half a round of candidates (8 = 3 passes of 3) before the rate is judged
    assert short.queries == 2 + 9
    assert short.best[1] is not None and short.best[0] >= full.best[0]  # it keeps its best placement
    assert opt.settings()["give_up"] == 2.0 and "give_up" not in MedLockerOptimizer().settings()


def test_give_up_keeps_a_search_that_gets_there(region_model, dark_image):
    """A search that reaches the target is not cut: the same queries and outcome with give_up as without."""
    plain = _region_problem(region_model, dark_image, 60)
    MedLockerOptimizer(max_queries=60, verify_chunk=3).search(plain)
    early = _region_problem(region_model, dark_image, 60)
    MedLockerOptimizer(max_queries=60, verify_chunk=3, give_up=2.0).search(early)
    assert early.best[0] < 0 and early.queries == plain.queries and early.best[1] == plain.best[1]


def test_linearize_gradients_are_the_per_class_gradients(tiny_surrogate, dark_image):
    """The batched backward pass gives, row k, the gradient of the k-th pairwise margin (one pass per class before)."""
    problem = _region_problem(tiny_surrogate, dark_image, None)
    lin = problem.linearize(None)
    x = problem.clean_screen.clone().requires_grad_(True)
    z = tiny_surrogate.network(preprocess_for_model(x[None], tiny_surrogate.spec))[0]
    others = [k for k in range(z.shape[0]) if k != problem.label]
    assert lin.grads.shape == (len(others),) + tuple(x.shape)
    for row, k in enumerate(others):
        (g,) = torch.autograd.grad(z[problem.label] - z[k], x, retain_graph=True)
        assert torch.allclose(lin.grads[row], g, atol=1e-6)


def test_one_summed_area_table_serves_every_box_size(monkeypatch, tiny_surrogate, dark_image):
    import monai_medlocker.watermark.problem as problem_module
    from monai_medlocker.watermark.feasibility import feasible_top_left, summed_area_table

    rng = np.random.default_rng(4)
    wsm = rng.random((160, 160)) < 0.002
    sat = summed_area_table(wsm)
    for h, w in ((1, 1), (9, 23), (40, 17), (160, 160)):
        brute = np.array([[not wsm[y:y + h, x:x + w].any() for x in range(161 - w)] for y in range(161 - h)])
        assert np.array_equal(feasible_top_left(wsm, h, w, sat), brute)
    tables = []
    monkeypatch.setattr(problem_module, "summed_area_table", lambda m: tables.append(1) or summed_area_table(m))
    problem = AttackProblem(dark_image, wsm, [tiny_surrogate], load_logo(), SearchSpace(n_scales=4))
    assert len(problem.configs) == 4 and len(tables) == 1
