"""What an image the surrogates were not fooled on gets (on_failure): capped opacity, a plain mark, withheld, or as is."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from monai_medlocker.transforms.array import AdversarialWatermark
from monai_medlocker.workflows.protect import DatasetProtector, format_summary
from tests.conftest import region_surrogate

ROOT = Path(__file__).resolve().parents[1]


def _unfoolable():
    """Class 0 whatever the image: no mark can flip it."""
    return region_surrogate(threshold=1e6)


def _protect(image: np.ndarray, **kwargs) -> tuple[np.ndarray, dict]:
    wm = AdversarialWatermark(_unfoolable(), max_queries=12, seed=1, **kwargs)
    out = wm(image.transpose(2, 0, 1), np.zeros(image.shape[:2], bool))
    return np.asarray(out).transpose(1, 2, 0), wm.last_record


def _changed_outside_marks(before: np.ndarray, after: np.ndarray, marks: list[dict]) -> int:
    changed = np.any(before != after, axis=-1)
    for m in marks:
        x0, y0, x1, y1 = m["box_xyxy"]
        changed[y0:y1, x0:x1] = False
    return int(changed.sum())


def test_default_caps_the_opacity_of_a_failed_attempt(dark_image):
    out, record = _protect(dark_image)
    assert record["protected"] and not record["success"]
    attempt = record["on_failure"]["attempt"]["marks"]
    assert record["on_failure"]["policy"] == "cap" and record["on_failure"]["opacity"] == 0.5
    assert max(m["alpha"] for m in attempt) > 0.5  # the attempt was more opaque than the cap
    assert record["marks"] and all(m["alpha"] <= 0.5 for m in record["marks"])
    assert [m["box_xyxy"] for m in record["marks"]] == [m["box_xyxy"] for m in attempt]
    assert _changed_outside_marks(dark_image, out, record["marks"]) == 0 and not np.array_equal(out, dark_image)


def test_mark_publishes_one_plain_mark_at_the_nominal_opacity(dark_image):
    out, record = _protect(dark_image, on_failure="mark", failure_opacity=0.4)
    assert record["protected"] and record["on_failure"]["policy"] == "mark"
    (mark,) = record["marks"]
    assert mark["alpha"] == 0.4 and mark["box_xyxy"] == record["on_failure"]["attempt"]["marks"][0]["box_xyxy"]
    assert _changed_outside_marks(dark_image, out, record["marks"]) == 0 and not np.array_equal(out, dark_image)


def test_withhold_leaves_the_image_unprotected_and_says_why(dark_image):
    out, record = _protect(dark_image, on_failure="withhold")
    assert np.array_equal(out, dark_image)
    assert record["protected"] is False and record["withheld"] is True and "not fooled" in record["reason"]


def test_best_keeps_the_attempt_as_it_was(dark_image):
    out, record = _protect(dark_image, on_failure="best")
    assert record["protected"] and record["on_failure"] == {"policy": "best"}
    assert max(m["alpha"] for m in record["marks"]) > 0.5


def test_bad_failure_settings_are_refused():
    with pytest.raises(ValueError, match="on_failure must be one of"):
        AdversarialWatermark(_unfoolable(), on_failure="opaque")
    with pytest.raises(ValueError, match="failure_opacity"):
        AdversarialWatermark(_unfoolable(), failure_opacity=0.0)


@pytest.mark.parametrize("policy", ["cap", "mark", "withhold"])
def test_the_summary_names_the_images_that_were_not_fooled(tmp_path, policy):
    src = tmp_path / "in"
    src.mkdir()
    for f in (ROOT / "bundle" / "samples").glob("fundus_c*.png"):
        shutil.copy(f, src / f.name)
    out = tmp_path / "out"
    summary = DatasetProtector(src, out, _unfoolable(), {"max_queries": 8, "on_failure": policy},
                               lesion_segmenter="masks", progress=False).run()
    assert summary["not_fooled"] == [{"image": "fundus_c.png", "action": policy}]
    assert "not fooled (1): fundus_c.png (" + policy + ")" in format_summary(summary)
    published = out / "public" / "fundus_c.png"
    record = json.loads(next((out / "private" / "records").rglob("*.record.json")).read_text())
    assert record["on_failure"]["policy"] == policy
    if policy == "withhold":
        assert not published.exists() and summary["protected"] == 0 and summary["exit_code"] == 1
        assert summary["failures"][0]["image"] == "fundus_c.png"
    else:
        assert published.exists() and summary["protected"] == 1 and summary["exit_code"] == 0


@pytest.mark.parametrize("policy", ["cap", "mark"])
def test_a_capped_or_plain_mark_verifies_and_unlocks_bit_exact(tmp_path, policy, capsys):
    from monai_medlocker.certify import generate_owner_key, save_owner_key
    from monai_medlocker.cli import main
    from monai_medlocker.io.image import load_rgb

    save_owner_key(tmp_path / "owner", generate_owner_key())
    src = tmp_path / "in"
    src.mkdir()
    for f in (ROOT / "bundle" / "samples").glob("fundus_c*.png"):
        shutil.copy(f, src / f.name)
    out = tmp_path / "out"
    summary = DatasetProtector(src, out, _unfoolable(), {"max_queries": 8, "on_failure": policy}, lesion_segmenter="masks",
                               owner_key=tmp_path / "owner.key", progress=False).run()
    assert summary["not_fooled"] == [{"image": "fundus_c.png", "action": policy}]
    capsys.readouterr()
    assert main(["verify", str(out / "public"), "--pub", str(tmp_path / "owner.pub"), "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["verdicts"] == {"authentic": 1}
    assert main(["unlock", str(out / "public"), str(tmp_path / "un"), "--key", str(tmp_path / "owner.key"), "--quiet"]) == 0
    original = load_rgb(src / "fundus_c.png")
    assert np.array_equal(load_rgb(tmp_path / "un" / "fundus_c.png"), original)
    assert not np.array_equal(load_rgb(out / "public" / "fundus_c.png"), original)
