"""What a user hits in their first hour (issue 20): no lost pixel, one bad item never stops the batch,
and every error is one line naming the file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_medlocker.certify import generate_owner_key, save_owner_key
from monai_medlocker.data.synthetic import synthesize_fundus
from monai_medlocker.workflows.protect import DatasetProtector
from protect_outputs import manifest_rows, public_dir, read_summary, record_file, sidecar_file

FAST = dict(lesion_segmenter="masks", progress=False, watermark={"max_queries": 4})


def _fundus(folder: Path, name: str, seed: int = 0, mask: bool = True) -> Path:
    """A small fundus PNG, with an empty lesion mask beside it (``mask``)."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(synthesize_fundus(128, seed=seed, grade=1).image).save(folder / name)
    if mask:
        Image.fromarray(np.zeros((128, 128), np.uint8)).save(folder / f"{Path(name).stem}_lesions.png")
    return folder / name


@pytest.fixture(scope="module")
def owner_key(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("keys")
    save_owner_key(folder / "owner", generate_owner_key())
    return folder / "owner.key"


def _name_max(folder: Path) -> int:
    limit = os.pathconf(folder, "PC_NAME_MAX")
    if limit != 255:
        pytest.skip(f"the lengths below are for a 255-byte NAME_MAX, this file system has {limit}")
    return limit


# Item 3: long names fail their own item, before anything of it is written.
def test_long_name_whose_mask_name_cannot_exist_does_not_abort_the_run(tmp_path, tiny_surrogate):
    src = tmp_path / "src"
    _fundus(src, "ok.png")
    long = _fundus(src, "a" * (_name_max(tmp_path) - 11) + ".png", seed=1, mask=False)  # <stem>_lesions.png: 256 bytes
    out = tmp_path / "out"
    summary = DatasetProtector(src, out, tiny_surrogate, **FAST).run()
    assert summary["protected"] == 1 and summary["images"] == 2
    [failure] = summary["failures"]
    assert failure["image"] == long.name and str(long) in failure["error"]


@pytest.mark.parametrize("with_key", [False, True])
def test_244_character_name_fails_alone_and_writes_nothing(tmp_path, tiny_surrogate, owner_key, with_key):
    src = tmp_path / "src"
    _fundus(src, "ok.png")
    long = _fundus(src, "b" * (_name_max(tmp_path) - 15) + ".png", seed=1)  # its record name is 256 bytes
    out = tmp_path / "out"
    summary = DatasetProtector(src, out, tiny_surrogate, owner_key=owner_key if with_key else None, **FAST).run()
    assert summary["protected"] == 1
    [failure] = summary["failures"]
    assert failure["image"] == long.name
    assert str(long) in failure["error"] and "longer than the 255 bytes" in failure["error"]
    assert "\n" not in failure["error"]
    assert sorted(p.name for p in public_dir(out).iterdir()) == (["ok.medlocker.json", "ok.png"] if with_key else ["ok.png"])
    assert sorted(p.name for p in record_file(out, "ok.png").parent.iterdir()) == ["ok.png.record.json"]


@pytest.mark.parametrize("with_key", [False, True])
def test_236_character_name_is_protected_whole(tmp_path, tiny_surrogate, owner_key, with_key):
    """Its final names fit; only the temporaries' names (``.<name>.<random>.part``) did not, and they are cut short."""
    src = tmp_path / "src"
    long = _fundus(src, "c" * (_name_max(tmp_path) - 23) + ".png", seed=1)
    out = tmp_path / "out"
    summary = DatasetProtector(src, out, tiny_surrogate, owner_key=owner_key if with_key else None, **FAST).run()
    assert summary["failures"] == [] and summary["protected"] == 1
    assert (public_dir(out) / long.name).is_file() and record_file(out, long.name).is_file()
    assert sidecar_file(out, long.stem).is_file() == with_key
    assert [r["status"] for r in manifest_rows(out)] == ["protected"]
    assert read_summary(out)["exit_code"] == 0


def test_lesions_command_fails_a_too_long_name_alone_before_writing_it(tmp_path, capsys):
    from monai_medlocker.cli import main

    src = tmp_path / "src"
    _fundus(src, "ok.png")
    long = _fundus(src, "d" * (_name_max(tmp_path) - 12) + ".png", seed=1)  # <stem>_lesions.json: 256 bytes
    out = tmp_path / "out"
    assert main(["lesions", str(src), str(out), "--quiet", "--lesion-segmenter", "masks"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [line] = [line for line in err.splitlines() if line.startswith("  FAILED")]
    assert str(long) in line and "longer than the 255 bytes" in line
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "lesions_summary.json", "ok_EX.png", "ok_HE.png", "ok_MA.png", "ok_SE.png", "ok_lesions.json", "ok_wsm.png"]
