"""The placement-leak measure: it must find a grade written in the marks' geometry, and find none in noise."""

from __future__ import annotations

import numpy as np

from monai_medlocker.threats.placement import placement_features, placement_leak


def _record(x0: int, y0: int, w: int = 60, rotation: float = 0.0) -> dict:
    return {"protected": True, "image_size": [512, 512],
            "marks": [{"x0": x0, "y0": y0, "width": w, "height": w, "rotation": rotation}]}


def test_geometry_that_encodes_the_grade_is_found():
    rng = np.random.default_rng(0)
    grades = [i % 5 for i in range(60)]
    records = [_record(40 + 80 * g + int(rng.integers(0, 10)), 200 + int(rng.integers(0, 40))) for g in grades]
    leak = placement_leak(records, grades)
    assert leak["images"] == 60 and leak["grade"]["majority_rate"] == 0.2
    assert leak["grade"]["knn_accuracy"] > 0.9 and leak["grade"]["centroid_accuracy"] > 0.9


def test_random_geometry_leaks_nothing_beyond_chance():
    rng = np.random.default_rng(1)
    grades = [i % 5 for i in range(200)]
    records = [_record(int(rng.integers(0, 400)), int(rng.integers(0, 400)), int(rng.integers(40, 100))) for _ in grades]
    leak = placement_leak(records, grades)
    assert leak["grade"]["knn_accuracy"] < 0.32 and leak["grade"]["centroid_accuracy"] < 0.32


def test_unprotected_and_too_few_images_give_no_figure():
    assert placement_leak([{"protected": False}] * 3 + [_record(1, 1)] * 3, [0, 1, 2, 0, 1, 2])["grade"] is None
    assert placement_features(_record(0, 0, rotation=90.0)).shape == (16,)
