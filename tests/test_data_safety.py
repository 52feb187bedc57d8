"""A run never loses or corrupts data (issue 13, part B): outputs stay in their folder, resumed runs
honour what changed, temporaries, locks, protected inputs, changed DICOM headers, pixel formats that
cannot come back as they went in, non-UTF-8 names, and grants without the owner's public key."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from monai_medlocker.certify import generate_owner_key, make_grant, save_grant, save_owner_key
from monai_medlocker.cli import main
from monai_medlocker.data.synthetic import synthesize_fundus
from monai_medlocker.io.dicom_build import fundus_dataset
from monai_medlocker.io.image import load_rgb
from monai_medlocker.workflows.protect import DatasetProtector
from monai_medlocker.workflows.unlock import Unlocker
from monai_medlocker.workflows.verify import Verifier
from protect_outputs import private_dir, public_dir, record_file, sidecar_file

FAST = dict(lesion_segmenter="masks", progress=False, watermark={"max_queries": 4})


def _fundus(folder: Path, name: str, size: int = 128, seed: int = 0, mode: str = "RGB") -> Path:
    """A small fundus PNG (or another format by suffix) with an empty lesion mask beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = synthesize_fundus(size, seed=seed, grade=1).image
    path = folder / name
    img = Image.fromarray(rgb)
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path)
    Image.fromarray(np.zeros((size, size), np.uint8)).save(folder / f"{Path(name).stem}_lesions.png")
    return path


def _dicom(folder: Path, name: str = "eye.dcm", size: int = 128, seed: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rgb = synthesize_fundus(size, seed=seed, grade=1).image
    fundus_dataset(rgb, iod="op8").save_as(folder / name, enforce_file_format=True)
    Image.fromarray(np.zeros((size, size), np.uint8)).save(folder / f"{Path(name).stem}_lesions.png")
    return folder / name


@pytest.fixture(scope="module")
def owner(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    key = generate_owner_key()
    save_owner_key(folder / "owner", key)
    return folder, key


# B1: nothing is ever written outside the output folder or over an input.

def test_datalist_image_inside_the_output_folder_is_never_overwritten(tmp_path, tiny_surrogate):
    ds, out = tmp_path / "ds", tmp_path / "out"
    _fundus(ds, "b.jpg", seed=1)
    original = _fundus(out, "b.png", seed=2)  # an original that happens to lie in the output folder
    before = original.read_bytes()
    (ds / "datalist.json").write_text(json.dumps({"test": [{"image": "../out/b.png"}, {"image": "b.jpg"}]}))
    summary = DatasetProtector(ds / "datalist.json", out, tiny_surrogate, **FAST).run()
    assert original.read_bytes() == before
    errors = " ".join(f["error"] for f in summary["failures"])
    assert "b.png" in errors and summary["exit_code"] == 1


def test_unlock_never_writes_through_a_symlink_in_its_output_folder(tmp_path, tiny_surrogate, owner):
    folder, _ = owner
    _fundus(tmp_path / "in" / "sub", "a.png")
    DatasetProtector(tmp_path / "in", tmp_path / "prot", tiny_surrogate, owner_key=folder / "owner.key", **FAST).run()
    elsewhere, out = tmp_path / "elsewhere", tmp_path / "un"
    elsewhere.mkdir()
    out.mkdir()
    (out / "sub").symlink_to(elsewhere, target_is_directory=True)
    summary = Unlocker(public_dir(tmp_path / "prot"), out, key=folder / "owner.key", progress=False).run()
    assert list(elsewhere.iterdir()) == []
    assert summary["unlocked"] == 0 and "symbolic link" in summary["failures"][0]["error"]


# B2: a resumed run honours what changed.

def test_resume_with_another_key_refuses_and_names_it(tmp_path, tiny_surrogate, owner):
    folder, _ = owner
    for i in range(2):
        _fundus(tmp_path / "in", f"img{i}.png", seed=i)
    out = tmp_path / "out"
    assert DatasetProtector(tmp_path / "in", out, tiny_surrogate, **FAST).run()["protected"] == 2
    for p in (public_dir(out) / "img1.png", record_file(out, "img1.png")):  # "interrupted": the second image was never done
        p.unlink()
    with pytest.raises(ValueError, match=r"key_id.*earlier run: None.*this run"):
        DatasetProtector(tmp_path / "in", out, tiny_surrogate, owner_key=folder / "owner.key", **FAST).run()
    with pytest.raises(ValueError, match=r"seed"):
        DatasetProtector(tmp_path / "in", out, tiny_surrogate, seed=5, **FAST).run()
    summary = DatasetProtector(tmp_path / "in", out, tiny_surrogate, owner_key=folder / "owner.key", redo=True,
                               **FAST).run()
    assert summary["protected"] == 2 and summary["certified_by"]
    for i in range(2):  # every image the summary calls signed really has a certificate now
        assert "certificate" in json.loads(sidecar_file(out, f"img{i}").read_text())


def test_resume_refusal_reaches_the_command_line(tmp_path, capsys):
    _fundus(tmp_path / "in", "a.png")
    args = ["protect", str(tmp_path / "in"), str(tmp_path / "out"), "--quiet", "--max-queries", "4",
            "--lesion-segmenter", "masks"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args + ["--optimizer", "random"]) == 2
    err = capsys.readouterr().err
    assert "optimizer" in err and "--redo" in err and "Traceback" not in err
    assert main(args + ["--optimizer", "random", "--redo"]) == 0


# B3: temporary files never count as inputs and are cleaned on the next run.

def test_part_files_are_never_inputs_and_are_cleaned(tmp_path, tiny_surrogate, owner):
    folder, _ = owner
    dcm = _dicom(tmp_path / "in")
    out = tmp_path / "out"
    DatasetProtector(tmp_path / "in", out, tiny_surrogate, owner_key=folder / "owner.key", **FAST).run()
    # What a killed DICOM write leaves: the temporary copy beside the outputs, DICM preamble and all.
    shutil.copy(public_dir(out) / "eye.dcm", public_dir(out) / ".eye.dcm.abc123.part")
    shutil.copy(dcm, tmp_path / "in" / ".other.dcm.xyz.part")
    verified = Verifier(public_dir(out), folder / "owner.pub", progress=False).run()
    assert verified["images"] == 1 and verified["exit_code"] == 0, verified
    un = tmp_path / "un"
    un.mkdir()
    (un / ".eye.dcm.old.part").write_bytes(b"half")
    unlocked = Unlocker(public_dir(out), un, key=folder / "owner.key", progress=False).run()
    assert unlocked["images"] == 1 and unlocked["exit_code"] == 0, unlocked
    assert not list(un.glob("*.part"))
    summary = DatasetProtector(tmp_path / "in", out, tiny_surrogate, owner_key=folder / "owner.key", **FAST).run()
    assert summary["images"] == 1 and not list(out.rglob("*.part"))


# B4: two runs into one output folder at once.

def test_second_run_into_a_locked_folder_refuses_or_waits(tmp_path, tiny_surrogate, capsys):
    from monai_medlocker.io.outdir import OutputLock

    _fundus(tmp_path / "in", "a.png")
    out = tmp_path / "out"
    out.mkdir()
    lock = OutputLock(out).acquire()  # another run, as far as the next one can tell
    try:
        with pytest.raises(ValueError, match=rf"in use by another run \(pid {os.getpid()}"):
            DatasetProtector(tmp_path / "in", out, tiny_surrogate, **FAST).run()
        assert not (private_dir(out) / "manifest.jsonl").exists() and not (out / "manifest.jsonl").exists()
        threading.Timer(1.0, lock.release).start()
        t0 = time.monotonic()
        summary = DatasetProtector(tmp_path / "in", out, tiny_surrogate, wait=True, **FAST).run()
        assert summary["protected"] == 1 and time.monotonic() - t0 >= 0.9
    finally:
        lock.release()
    assert "waiting for the run with pid" in capsys.readouterr().err
    assert not (out / ".medlocker.lock").exists()


# B5: an already-protected PNG is refused as an input.

def test_protected_png_is_refused_as_input(tmp_path, tiny_surrogate):
    _fundus(tmp_path / "in", "a.png")
    DatasetProtector(tmp_path / "in", tmp_path / "out", tiny_surrogate, **FAST).run()
    again = tmp_path / "again"
    again.mkdir()
    shutil.copy(public_dir(tmp_path / "out") / "a.png", again / "a.png")
    shutil.copy(tmp_path / "in" / "a_lesions.png", again / "a_lesions.png")
    summary = DatasetProtector(again, tmp_path / "out2", tiny_surrogate, **FAST).run()
    assert summary["protected"] == 0 and "already a MedLocker-protected image" in summary["failures"][0]["error"]


# B6: unlock refuses a DICOM whose header changed after protection.

def test_unlock_refuses_a_dicom_with_a_changed_header(tmp_path, tiny_surrogate, owner):
    folder, _ = owner
    _dicom(tmp_path / "in")
    out = tmp_path / "out"
    DatasetProtector(tmp_path / "in", out, tiny_surrogate, owner_key=folder / "owner.key", **FAST).run()
    ds = pydicom.dcmread(public_dir(out) / "eye.dcm")
    ds.PatientName = "Someone^Else"
    ds.save_as(public_dir(out) / "eye.dcm")
    summary = Unlocker(public_dir(out), tmp_path / "un", key=folder / "owner.key", progress=False).run()
    assert summary["unlocked"] == 0 and "patient/study attributes" in summary["failures"][0]["error"]
    assert not (tmp_path / "un" / "eye.dcm").exists()


# B7: pixel formats come back as they went in, or are refused up front.

def test_greyscale_png_comes_back_greyscale(tmp_path, tiny_surrogate, owner):
    folder, _ = owner
    src = _fundus(tmp_path / "in", "grey.png", mode="L")
    out = tmp_path / "out"
    assert DatasetProtector(tmp_path / "in", out, tiny_surrogate, owner_key=folder / "owner.key", **FAST).run()["protected"] == 1
    assert Unlocker(public_dir(out), tmp_path / "un", key=folder / "owner.key", progress=False).run()["exit_code"] == 0
    with Image.open(src) as a, Image.open(tmp_path / "un" / "grey.png") as b:
        assert b.mode == a.mode == "L" and np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("mode,expected", [("RGBA", "alpha channel"), ("LA", "alpha channel"), ("P", "palette")])
def test_png_formats_that_cannot_round_trip_are_refused(tmp_path, tiny_surrogate, mode, expected):
    _fundus(tmp_path / "in", "odd.png", mode=mode)
    summary = DatasetProtector(tmp_path / "in", tmp_path / "out", tiny_surrogate, **FAST).run()
    error = summary["failures"][0]["error"]
    assert summary["protected"] == 0 and "odd.png" in error and expected in error, error


def test_exif_rotated_jpeg_is_refused(tmp_path, tiny_surrogate):
    folder = tmp_path / "in"
    _fundus(folder, "x.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    Image.open(folder / "x.png").save(folder / "rotated.jpg", exif=exif, quality=95)
    shutil.copy(folder / "x_lesions.png", folder / "rotated_lesions.png")
    (folder / "x.png").unlink()
    summary = DatasetProtector(folder, tmp_path / "out", tiny_surrogate, **FAST).run()
    error = summary["failures"][0]["error"]
    assert summary["protected"] == 0 and "rotated.jpg" in error and "EXIF orientation" in error, error


# B8: a file name that is not valid UTF-8.

def test_non_utf8_file_name_is_protected_verified_and_unlocked(tmp_path, tiny_surrogate, owner):
    folder, _ = owner
    src = tmp_path / "in"
    _fundus(src, "tmp.png")
    name = os.fsdecode(b"\xe9il-\xff.png")  # Latin-1 bytes: not UTF-8
    os.rename(src / "tmp.png", src / name)
    os.rename(src / "tmp_lesions.png", src / (name[:-4] + "_lesions.png"))
    out = tmp_path / "out"
    summary = DatasetProtector(src, out, tiny_surrogate, owner_key=folder / "owner.key", **FAST).run()
    assert summary["protected"] == 1, summary
    assert (public_dir(out) / name).is_file() and record_file(out, name).is_file()
    assert Verifier(public_dir(out), folder / "owner.pub", progress=False).run()["exit_code"] == 0
    assert Unlocker(public_dir(out), tmp_path / "un", key=folder / "owner.key", progress=False).run()["exit_code"] == 0
    assert np.array_equal(load_rgb(tmp_path / "un" / name), load_rgb(src / name))


# B9: a grant without the owner's public key never skips the signature check.

def test_grant_without_public_key_is_refused_unless_pub_is_given(tmp_path, tiny_surrogate, owner, capsys):
    folder, key = owner
    _fundus(tmp_path / "in", "a.png")
    out = tmp_path / "out"
    DatasetProtector(tmp_path / "in", out, tiny_surrogate, owner_key=folder / "owner.key", **FAST).run()
    image_id = json.loads(sidecar_file(out, "a").read_text())["certificate"]["image_id"]
    out = public_dir(out)  # what the grantee gets
    grant = save_grant(tmp_path / "g.grant", make_grant(key, [image_id]))
    data = json.loads(grant.read_text())
    del data["public_key"]
    grant.write_text(json.dumps(data))
    assert main(["unlock", str(out), str(tmp_path / "un"), "--grant", str(grant), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no owner public key" in err and "--pub" in err
    assert main(["unlock", str(out), str(tmp_path / "un"), "--grant", str(grant), "--pub", str(folder / "owner.pub"),
                 "--quiet"]) == 0


@pytest.mark.parametrize("linked", ["public/sub", "private/records/sub"])
def test_protect_never_writes_through_a_symlinked_folder_in_its_output(tmp_path, tiny_surrogate, linked):
    _fundus(tmp_path / "in" / "sub", "a.png")
    elsewhere, out = tmp_path / "elsewhere", tmp_path / "out"
    elsewhere.mkdir()
    (out / linked).parent.mkdir(parents=True)
    (out / linked).symlink_to(elsewhere, target_is_directory=True)
    summary = DatasetProtector(tmp_path / "in", out, tiny_surrogate, **FAST).run()
    assert list(elsewhere.iterdir()) == [] and summary["protected"] == 0
    assert "symbolic link" in summary["failures"][0]["error"]


def test_unlock_into_a_locked_folder_refuses_naming_the_pid(tmp_path, tiny_surrogate, owner, capsys):
    from monai_medlocker.io.outdir import OutputLock

    folder, _ = owner
    _fundus(tmp_path / "in", "a.png")
    DatasetProtector(tmp_path / "in", tmp_path / "prot", tiny_surrogate, owner_key=folder / "owner.key", **FAST).run()
    out = tmp_path / "un"
    out.mkdir()
    with OutputLock(out):
        args = ["unlock", str(public_dir(tmp_path / "prot")), str(out), "--key", str(folder / "owner.key"), "--quiet"]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"pid {os.getpid()}" in err and "--wait" in err and "Traceback" not in err
    assert main(args) == 0 and (out / "a.png").is_file()
