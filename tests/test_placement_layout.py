"""The keyed layout (issue 17 item 5): the search may use only keyed sites drawn blind to the image and its grade."""

from __future__ import annotations

import numpy as np
import pytest

from monai_medlocker.watermark import SearchSpace, load_logo, watermark_image
from monai_medlocker.watermark.optimizers import get_optimizer
from monai_medlocker.watermark.problem import SITE_ROUNDS, AttackProblem

KEY_A, KEY_B = bytes(range(32)), bytes(range(1, 33))
SPACE = SearchSpace(scale_range=(0.12, 0.3), n_scales=4, n_marks=3, max_total_area_fraction=0.1)


def _problem(image, wsm, surrogate, key=KEY_A, seed=0, sites=4, label=None) -> AttackProblem:
    return AttackProblem(image, wsm, [surrogate], load_logo(None), SPACE, label=label, seed=seed, render_key=key,
                         sites=sites)


def _site_set(problem: AttackProblem) -> set:
    return {(c.scale, int(x), int(y)) for c in problem.configs for y, x in zip(*np.nonzero(problem.native_feasible(c)))}


def test_the_sites_follow_the_key_never_the_image_or_the_grade(dark_image, tiny_surrogate):
    clear = np.zeros(dark_image.shape[:2], bool)
    bright = np.clip(dark_image.astype(int) + 120, 0, 255).astype(np.uint8)
    a = _problem(dark_image, clear, tiny_surrogate, label=0)
    assert len(_site_set(a)) <= 4  # the first round fits on an image without lesions
    assert a._keyed_sites() == _problem(bright, clear, tiny_surrogate, label=4)._keyed_sites()  # other pixels and grade
    assert _site_set(a) == _site_set(_problem(bright, clear, tiny_surrogate, label=4))
    assert a._keyed_sites() != _problem(dark_image, clear, tiny_surrogate, key=KEY_B)._keyed_sites()
    assert a._keyed_sites() != _problem(dark_image, clear, tiny_surrogate, seed=1)._keyed_sites()
    free = _problem(dark_image, clear, tiny_surrogate, sites=None)
    assert sum(int(free.native_feasible(c).sum()) for c in free.configs) > 1000  # off: every position


def test_a_site_on_a_lesion_is_dropped_and_the_next_round_opens(dark_image, tiny_surrogate):
    clear = np.zeros(dark_image.shape[:2], bool)
    first = _problem(dark_image, clear, tiny_surrogate)._keyed_sites()[:4]
    wsm = clear.copy()
    for scale, rotation, x0, y0 in first:  # a lesion under every site of the first round
        wsm[y0 + 2, x0 + 2] = True
    p = _problem(dark_image, wsm, tiny_surrogate)
    sites = _site_set(p)
    assert sites and not sites & {(s, x, y) for s, _, x, y in first}
    for c in p.configs:
        for y, x in zip(*np.nonzero(p.native_feasible(c))):
            assert not wsm[y : y + c.height, x : x + c.width].any()


def test_with_no_site_left_the_free_lesion_free_set_is_searched(dark_image, tiny_surrogate):
    wsm = np.ones(dark_image.shape[:2], bool)
    wsm[:60, :60] = False  # one lesion-free corner: the keyed sites (16 rounds of 1) almost surely miss it
    p = _problem(dark_image, wsm, tiny_surrogate, sites=1)
    assert SITE_ROUNDS == 16 and p._open_sites is None
    assert p.configs and all(p.native_feasible(c).any() for c in p.configs)


@pytest.mark.parametrize("optimizer", ["medlocker", "random"])
def test_every_mark_is_a_keyed_site_and_the_run_is_deterministic(dark_image, lesion_masks, tiny_surrogate, optimizer):
    wsm = lesion_masks.any(0)
    opt = get_optimizer(optimizer, max_queries=30, keyed_sites=4)
    out, rec = watermark_image(dark_image, wsm, [tiny_surrogate], load_logo(None), opt, SPACE, label=2, seed=3,
                               render_key=KEY_A)
    assert rec["optimizer_settings"]["keyed_sites"] == 4 and rec["marks"]
    current = wsm.copy()
    for i, m in enumerate(rec["marks"]):  # each mark one of its own problem's sites (seed + 7919 * mark)
        p = AttackProblem(dark_image, current, [tiny_surrogate], load_logo(None), SPACE, label=2, seed=3 + 7919 * i,
                          render_key=KEY_A, sites=4)
        assert (m["scale"], m["x0"], m["y0"]) in {(s, x, y) for s, _, x, y in p._open_sites}
        x0, y0, x1, y1 = m["box_xyxy"]
        assert not wsm[y0:y1, x0:x1].any()
        current[y0:y1, x0:x1] = True
        left = 0.1 - sum(mm["width"] * mm["height"] for mm in rec["marks"][: i + 1]) / wsm.size
        if left <= 1e-9:
            break
    again, rec2 = watermark_image(dark_image, wsm, [tiny_surrogate], load_logo(None), opt, SPACE, label=2, seed=3,
                                  render_key=KEY_A)
    assert np.array_equal(out, again) and rec2["marks"] == rec["marks"]


def test_bad_keyed_sites_are_refused():
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="keyed_sites"):
            get_optimizer("medlocker", keyed_sites=bad)
