"""The protect workflow: CLI and bundle runs, outputs, bad inputs, re-runs, never touching inputs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_medlocker.cli import main
from monai_medlocker.io.image import atomic_write_bytes, load_mask, load_rgb
from monai_medlocker.lesions import lesion_bboxes, wsm_from_boxes
from protect_outputs import assert_public_record_of, manifest_rows, public_dir, read_record, read_summary

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "bundle" / "samples"


def _digest(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def sample_dir(tmp_path) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    for p in SAMPLES.glob("fundus_[cm]*.png"):
        shutil.copy(p, src / p.name)
    return src


def _wsm_for(image: Path, margin: int = 2) -> np.ndarray:
    shape = load_rgb(image).shape[:2]
    masks = [load_mask(m, shape) for m in sorted(image.parent.glob(f"{image.stem}_*.png"))]
    boxes, _ = lesion_bboxes(np.stack(masks), margin=margin)
    return wsm_from_boxes(boxes, shape)


def test_cli_protect_writes_outputs_and_never_touches_inputs(sample_dir, tmp_path):
    before = _digest(sample_dir)
    out = tmp_path / "out"
    assert main(["protect", str(sample_dir), str(out), "--quiet", "--max-queries", "40"]) == 0
    assert _digest(sample_dir) == before
    manifest = manifest_rows(out)
    assert sorted(r["image"] for r in manifest) == ["fundus_c.png", "fundus_m.png"]
    assert all(r["status"] == "protected" for r in manifest)
    assert sorted(r["output"] for r in manifest) == ["public/fundus_c.png", "public/fundus_m.png"]
    summary = read_summary(out)
    assert summary["images"] == 2 and summary["protected"] == 2 and summary["failures"] == []
    for name in ("fundus_c", "fundus_m"):
        original = load_rgb(sample_dir / f"{name}.png")
        protected = load_rgb(public_dir(out) / f"{name}.png")
        record = read_record(out, f"{name}.png")
        changed = np.any(original != protected, axis=-1)
        assert changed.any()
        assert not (changed & _wsm_for(sample_dir / f"{name}.png")).any()
        # --max-queries is the budget of each mark's search
        assert record["queries"] <= 40 * len(record["marks"]) and record["changed_pixels"] == int(changed.sum())
        # the PNG carries the public part of the record in a text chunk: the marks as seen, never their opacity
        text = Image.open(public_dir(out) / f"{name}.png").text
        assert "medlocker:params" not in text
        assert_public_record_of(json.loads(text["medlocker:public"]), record)


def test_bad_inputs_are_reported_and_the_batch_goes_on(sample_dir, tmp_path, capsys):
    (sample_dir / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(sample_dir / "nomask.png")
    Image.fromarray(np.zeros((200, 200, 3), np.uint8)).save(sample_dir / "wrongsize.png")
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(sample_dir / "wrongsize_MA.png")
    Image.fromarray(np.full((128, 128, 3), 90, np.uint8)).save(sample_dir / "alllesion.png")
    Image.fromarray(np.full((128, 128), 255, np.uint8)).save(sample_dir / "alllesion_HE.png")
    out = tmp_path / "out"
    # "masks" requires mask files (no built-in detector fallback), so nomask.png must fail.
    assert main(["protect", str(sample_dir), str(out), "--quiet", "--max-queries", "20",
                 "--lesion-segmenter", "masks"]) == 1
    summary = read_summary(out)
    errors = {f["image"]: f["error"] for f in summary["failures"]}
    assert set(errors) == {"corrupt.png", "nomask.png", "wrongsize.png", "alllesion.png"}
    assert "corrupt.png" in errors["corrupt.png"] and "not a readable image" in errors["corrupt.png"]
    assert "no lesion mask" in errors["nomask.png"]
    assert "100x100" in errors["wrongsize.png"] and "200x200" in errors["wrongsize.png"]
    assert "no feasible logo placement" in errors["alllesion.png"]
    assert summary["protected"] == 2  # the good images still went through
    assert "FAILED corrupt.png" in capsys.readouterr().out  # the summary is the result: stdout


def test_builtin_detector_protects_an_unmasked_image(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(SAMPLES / "fundus_m.png", src / "unmasked.png")  # its masks are not copied
    out = tmp_path / "out"
    assert main(["protect", str(src), str(out), "--quiet", "--max-queries", "20"]) == 0
    record = read_record(out, "unmasked.png")
    assert record["lesion_source"] == "builtin"
    assert record["protected"] and record["wsm_boxes"]
    assert 0.0 < record["lesion_report"]["confidence"] <= 1.0
    manifest = manifest_rows(out)
    assert manifest[0]["lesion_source"] == "builtin"
    # The logo stays off the detector's WSM, and that WSM covers the image's real lesions.
    shape = load_rgb(src / "unmasked.png").shape[:2]
    wsm = wsm_from_boxes(np.asarray(record["wsm_boxes"]), shape)
    changed = np.any(load_rgb(src / "unmasked.png") != load_rgb(public_dir(out) / "unmasked.png"), axis=-1)
    assert changed.any() and not (changed & wsm).any()
    truth = np.stack([load_mask(SAMPLES / f"fundus_m_{t}.png", shape) for t in ("MA", "HE", "EX", "SE")])
    assert wsm[truth.any(0)].mean() > 0.98


def test_rerun_skips_done_images_without_rewriting(sample_dir, tmp_path):
    out = tmp_path / "out"
    assert main(["protect", str(sample_dir), str(out), "--quiet", "--max-queries", "20"]) == 0
    stamp = (public_dir(out) / "fundus_c.png").stat().st_mtime_ns
    assert main(["protect", str(sample_dir), str(out), "--quiet", "--max-queries", "20"]) == 0
    manifest = manifest_rows(out)
    assert {r["status"] for r in manifest} == {"already-done"}
    assert (public_dir(out) / "fundus_c.png").stat().st_mtime_ns == stamp
    assert read_summary(out)["protected"] == 2


def test_output_inside_input_is_refused(sample_dir, capsys):
    assert main(["protect", str(sample_dir), str(sample_dir / "out"), "--quiet"]) == 2
    assert "inside" in capsys.readouterr().err
    assert not (sample_dir / "out").exists()


def test_datalist_input_uses_its_labels_and_masks(tmp_path):
    src = tmp_path / "ds"
    (src / "img").mkdir(parents=True)
    shutil.copy(SAMPLES / "fundus_h.png", src / "img" / "a.png")
    for t in ("MA", "HE", "EX", "SE"):
        shutil.copy(SAMPLES / f"fundus_h_{t}.png", src / "img" / f"a_{t}.png")
    items = [{"image": "img/a.png", "label": 4, **{f"mask_{t}": f"img/a_{t}.png" for t in ("MA", "HE", "EX", "SE")}}]
    (src / "datalist.json").write_text(json.dumps({"test": items}))
    out = tmp_path / "out"
    assert main(["protect", str(src / "datalist.json"), str(out), "--quiet", "--max-queries", "20"]) == 0
    record = read_record(out, "img/a.png")
    assert record["label"] == 4 and record["label_source"] == "given"


def test_atomic_write_leaves_nothing_half_written(tmp_path, monkeypatch):
    target = tmp_path / "x.png"

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"data")
    assert list(tmp_path.iterdir()) == []


def test_bundle_inference_config_runs_through_monai_bundle(sample_dir, tmp_path):
    out = tmp_path / "bundle_out"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "bundle/configs/inference.json",
           "--dataset_dir", str(sample_dir), "--output_dir", str(out), "--max_queries", "20", "--progress", "False"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert read_summary(out)["protected"] == 2


def test_absolute_datalist_path_never_overwrites_the_input(tmp_path):
    src = tmp_path / "ds"
    src.mkdir()
    for name in ("fundus_c.png", *(f"fundus_c_{t}.png" for t in ("MA", "HE", "EX", "SE"))):
        shutil.copy(SAMPLES / name, src / name)
    image = src / "fundus_c.png"
    (src / "datalist.json").write_text(json.dumps({"test": [{"image": str(image), "label": 2}]}))
    before = _digest(src)
    out = tmp_path / "out"
    assert main(["protect", str(src / "datalist.json"), str(out), "--quiet", "--max-queries", "20"]) == 0
    assert _digest(src) == before
    assert (public_dir(out) / "fundus_c.png").is_file()


def test_two_inputs_with_one_output_name_both_reported(sample_dir, tmp_path):
    Image.open(sample_dir / "fundus_c.png").convert("RGB").save(sample_dir / "fundus_c.jpg", quality=95)
    out = tmp_path / "out"
    assert main(["protect", str(sample_dir), str(out), "--quiet", "--max-queries", "20"]) == 1
    errors = {f["image"]: f["error"] for f in read_summary(out)["failures"]}
    assert "same output or record name" in errors["fundus_c.png"]


def test_rerun_still_reports_images_that_could_not_be_protected(sample_dir, tmp_path):
    Image.fromarray(np.full((128, 128, 3), 90, np.uint8)).save(sample_dir / "alllesion.png")
    Image.fromarray(np.full((128, 128), 255, np.uint8)).save(sample_dir / "alllesion_HE.png")
    out = tmp_path / "out"
    args = ["protect", str(sample_dir), str(out), "--quiet", "--max-queries", "20", "--on-infeasible", "skip"]
    assert main(args) == 1
    assert main(args) == 1  # the second run must not hide it
    failures = read_summary(out)["failures"]
    assert [f["image"] for f in failures] == ["alllesion.png"]


def test_bad_search_space_is_a_clear_error(sample_dir, tmp_path, capsys):
    assert main(["protect", str(sample_dir), str(tmp_path / "out"), "--quiet", "--space", '{"sclae_range": [0.1, 0.2]}']) == 2
    assert "bad search space" in capsys.readouterr().err
