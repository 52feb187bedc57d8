"""kill -9 in the middle of ``medlocker protect``, then a rerun: the outputs equal an uninterrupted run's.

The protect command really runs as a subprocess on PNGs and a DICOM file and is killed with SIGKILL
as soon as its first output appears. The rerun must take over the folder (the kernel dropped the
killed run's lock), clean the temporary files it left, skip what was finished and do the rest, so
that the folder ends up as an uninterrupted run leaves it: the same bytes for every PNG, the same
DICOM instance apart from its new SOP Instance UID and creation time (every derived instance gets
a fresh one by design), and the same records apart from timings.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from monai_medlocker.data.synthetic import synthesize_fundus
from monai_medlocker.io.dicom_build import fundus_dataset
from protect_outputs import private_dir, read_summary

ROOT = Path(__file__).resolve().parents[1]
# Attributes a derived instance takes from the moment it is made.
PER_INSTANCE = {"SOPInstanceUID", "InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime"}
TIMINGS = {"seconds", "certify_seconds"}
# Per-run files: what differs between an interrupted run and an uninterrupted one is their business.
PER_RUN = {"private/summary.json", "private/manifest.jsonl"}


def _inputs(folder: Path) -> None:
    folder.mkdir()
    for i in range(4):
        Image.fromarray(synthesize_fundus(256, seed=40 + i, grade=2).image).save(folder / f"img{i}.png")
        Image.fromarray(np.zeros((256, 256), np.uint8)).save(folder / f"img{i}_lesions.png")
    rgb = synthesize_fundus(256, seed=50, grade=2).image
    fundus_dataset(rgb, iod="op8").save_as(folder / "photo.dcm", enforce_file_format=True)
    Image.fromarray(np.zeros((256, 256), np.uint8)).save(folder / "photo_lesions.png")


def _protect(src: Path, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "monai_medlocker.cli", "protect", str(src), str(out), "--quiet",
           "--max-queries", "30", "--lesion-segmenter", "masks"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]


def _record(path: Path) -> dict:
    record = json.loads(path.read_text())
    for key in TIMINGS:
        record.pop(key, None)
    if "dicom" in record:
        record["dicom"]["derived"].pop("sop_instance")
    return record


def _dicom_view(path: Path) -> dict:
    ds = pydicom.dcmread(path)
    view = {elem.tag: elem.value for elem in ds if elem.keyword not in PER_INSTANCE}
    meta = {elem.tag: elem.value for elem in ds.file_meta if elem.keyword != "MediaStorageSOPInstanceUID"}
    return {"dataset": view, "meta": meta, "pixels": ds.PixelData}


@pytest.mark.timeout(1200)
def test_kill_9_mid_run_then_rerun_equals_an_uninterrupted_run(tmp_path):
    src, out, reference = tmp_path / "in", tmp_path / "out", tmp_path / "reference"
    _inputs(src)
    # The uninterrupted run, in the same folder path (the derived series UID depends on it), moved aside.
    _finish(_protect(src, out))
    out.rename(reference)
    # Keyless renderings depend on the folder's secret: the second run continues with the first one's.
    private_dir(out).mkdir(parents=True)
    shutil.copy(private_dir(reference) / "render_secret", private_dir(out) / "render_secret")

    records = private_dir(out) / "records"
    proc = _protect(src, out)
    deadline = time.monotonic() + 600
    while not list(records.glob("*.record.json")):
        assert proc.poll() is None, "protect ended before its first output appeared"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    done_when_killed = sorted(p.name for p in records.glob("*.record.json"))
    assert 1 <= len(done_when_killed) < 5, done_when_killed  # really mid-run
    assert not (private_dir(out) / "summary.json").exists()

    _finish(_protect(src, out))  # no --wait: a killed run's lock is gone with it
    assert not list(out.rglob("*.part")) and not (out / ".medlocker.lock").exists()
    summary = read_summary(out)
    assert summary["protected"] == 5 and summary["failures"] == [], summary
    assert summary["newly_protected"] == 5 - len(done_when_killed)

    names = _files(reference)
    assert names == _files(out)
    for name in names:
        a, b = reference / name, out / name
        if name.endswith(".record.json"):
            assert _record(a) == _record(b), name
        elif name.endswith(".dcm"):
            assert _dicom_view(a) == _dicom_view(b), name
        else:
            assert a.read_bytes() == b.read_bytes(), name
    assert any(n.endswith(".png") for n in names) and "public/photo.dcm" in names
    assert len([n for n in names if n.endswith(".record.json")]) == 5


def _files(folder: Path) -> list[str]:
    """Every file of an output folder but the per-run ones, relative to it."""
    return sorted(n for n in (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
                  if n not in PER_RUN)
