"""The bundle's inference.json is a MONAI transform chain: its steps are visible and each can be swapped."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from monai_medlocker.bundle_config import parse_bundle_config
from monai_medlocker.io.image import load_rgb
from monai_medlocker.networks import load_protect_surrogates
from monai_medlocker.transforms.protect_steps import record_without_timings
from monai_medlocker.workflows.protect import DatasetProtector, record_path_for

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundle"
CHAIN = ["monai_medlocker.transforms.protect_steps.LoadFundusd", "monai_medlocker.transforms.protect_steps.LesionMapsd",
         "monai_medlocker.transforms.protect_steps.AnatomyZonesd", "monai_medlocker.transforms.dictionary.LesionBBoxMaskd", "monai_medlocker.transforms.protect_steps.RenderKeyd",
         "monai_medlocker.transforms.dictionary.AdversarialWatermarkd", "monai_medlocker.transforms.protect_steps.Certifyd",
         "monai_medlocker.transforms.protect_steps.SaveProtectedd"]
FAST = {"max_queries": 8, "lesion_segmenter": "masks", "progress": False, "seed": 3}


@pytest.fixture
def inputs(tmp_path) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    for f in (BUNDLE / "samples").glob("fundus_c*.png"):
        shutil.copy(f, src / f.name)
    shutil.copy(BUNDLE / "samples" / "fundus_m.png", src / "unmasked.png")
    return src


def test_inference_config_shows_the_chain_of_transforms():
    cfg = json.loads((BUNDLE / "configs" / "inference.json").read_text())
    steps = [cfg[ref[1:]]["_target_"] for ref in cfg["protect_chain"]["transforms"]]
    assert cfg["protect_chain"]["_target_"] == "Compose" and steps == CHAIN
    assert cfg["protector"]["chain"] == "@protect_chain"


def _run(src: Path, out: Path, extra: dict | None = None, config=("inference.json",)) -> dict:
    parser = parse_bundle_config(list(config), BUNDLE, {"dataset_dir": str(src), "output_dir": str(out), **FAST,
                                                        **(extra or {})})
    return parser.get_parsed_content("protector").run()


def _records(out: Path) -> dict:
    found = {}
    for p in sorted((out / "private" / "records").rglob("*.record.json")):
        record = record_without_timings(json.loads(p.read_text()))
        record.pop("run_settings")
        found[p.name] = record
    return found


def test_python_chain_and_bundle_chain_give_the_same_outputs(inputs, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    summary = _run(inputs, a)
    assert summary["protected"] == 1 and [f["image"] for f in summary["failures"]] == ["unmasked.png"]
    (b / "private").mkdir(parents=True)
    shutil.copy(a / "private" / "render_secret", b / "private" / "render_secret")  # the same keyless run secret
    cfg = json.loads((BUNDLE / "configs" / "inference.json").read_text())
    surrogates = load_protect_surrogates(cfg["surrogate"]["members"], checkpoint_dir=BUNDLE / "models" / "zoo")
    DatasetProtector(inputs, b, surrogates, {"max_queries": 8, "search_space": cfg["search_space"]},
                     lesion_segmenter="masks", seed=3, progress=False).run()
    assert np.array_equal(load_rgb(a / "public" / "fundus_c.png"), load_rgb(b / "public" / "fundus_c.png"))
    assert _records(a) == _records(b)
    assert (a / "public" / "fundus_c.png").read_bytes() == (b / "public" / "fundus_c.png").read_bytes()


def test_one_step_is_replaced_with_a_hash_path_override_file(inputs, tmp_path):
    """An override file swaps the lesion step for one that reads no masks: every image is then refused by name."""
    override = tmp_path / "no_masks.json"
    override.write_text(json.dumps({
        "lesion_maps": {"_target_": "monai_medlocker.transforms.protect_steps.LesionMapsd", "segmenter": "builtin"},
        "wsm#margin": 10,
    }))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file",
         f"['{BUNDLE / 'configs' / 'inference.json'}','{override}']", "--dataset_dir", str(inputs), "--output_dir", str(out),
         "--max_queries", "8", "--progress", "False", "--seed", "3"],
        capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The built-in detector now serves the unmasked image too; the wider margin is in the record.
    records = {p.name: json.loads(p.read_text()) for p in (out / "private" / "records").glob("*.record.json")}
    assert sorted(records) == ["fundus_c.png.record.json", "unmasked.png.record.json"]
    assert records["unmasked.png.record.json"]["lesion_source"] == "builtin"
    plain = tmp_path / "plain"
    _run(inputs, plain, {"lesion_segmenter": "builtin"})
    wide = records["fundus_c.png.record.json"]["wsm_pixels"]
    assert wide > json.loads(record_path_for(plain, "fundus_c.png").read_text())["wsm_pixels"]


def test_a_chain_without_a_watermark_step_is_refused(inputs, tmp_path):
    from monai.transforms import Compose

    from monai_medlocker.transforms.protect_steps import LoadFundusd

    with pytest.raises(ValueError, match="exactly one AdversarialWatermarkd"):
        DatasetProtector(inputs, tmp_path / "out", chain=Compose([LoadFundusd()]))
