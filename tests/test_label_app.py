"""The MONAI Label app (apps/monailabel_medlocker) against `medlocker protect`, in-process and behind a real server.

The app runs in `.venv-label` (scripts/setup_label_env.sh: monailabel 0.8.5), which this test's own
interpreter does not have, so both parts run it as a subprocess: the in-process part through
tests/label_inprocess.py, the server part as `monailabel start_server` on loopback. Without
`.venv-label` the tests skip, unless MEDLOCKER_REQUIRE_LABEL=1 (CI), which makes that a failure.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from monai_medlocker.cli import main as medlocker
from monai_medlocker.io.image import load_fundus
from monai_medlocker.lesions.wsm import wsm_from_boxes
from monai_medlocker.workflows.protect import record_path_for

from label_server import APP, LABEL_BIN, REPO, LabelServer, label_env

SAMPLES = REPO / "bundle" / "samples"
IMAGES = ("fundus_c", "fundus_m")
DICOM = "op8_colour"  # an Ophthalmic Photography instance: the task returns a derived DICOM instance
# The same settings for the app (--conf KEY VALUE) and for `medlocker protect` (--key value).
SETTINGS = {"seed": "7", "max_queries": "4", "lesion_segmenter": "masks"}
# What the public part of a record must never hold (DESIGN invariant 6).
PRIVATE_KEYS = {"label", "clean", "final", "wsm_boxes", "seed", "lesion_report", "lesion_source", "run_settings",
                "search_space"}


def require_label_env() -> None:
    if not (LABEL_BIN / "python").is_file() or not (LABEL_BIN / "monailabel").is_file():
        if os.environ.get("MEDLOCKER_REQUIRE_LABEL") == "1":
            pytest.fail(f"{REPO / '.venv-label'} is required here (MEDLOCKER_REQUIRE_LABEL=1) but missing; "
                        "run scripts/setup_label_env.sh")
        pytest.skip(".venv-label is not set up (bash scripts/setup_label_env.sh); CI sets it up")


def read_pixels(data: bytes | Path) -> np.ndarray:
    if isinstance(data, Path):
        return load_fundus(data)[0]  # PNG or DICOM
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> Path:
    """A studies folder: two sample PNGs and a DICOM file with their lesion masks in masks/, and a corrupt PNG."""
    require_label_env()
    root = tmp_path_factory.mktemp("label") / "studies"
    (root / "masks").mkdir(parents=True)
    for name in IMAGES:
        shutil.copy(SAMPLES / f"{name}.png", root)
    shutil.copy(SAMPLES / f"{DICOM}.dcm", root)
    for name in (*IMAGES, DICOM):
        for mask in SAMPLES.glob(f"{name}_*.png"):
            shutil.copy(mask, root / "masks")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a PNG")
    return root


@pytest.fixture(scope="module")
def reference(studies, tmp_path_factory) -> Path:
    """`medlocker protect` over a copy of the studies (MONAI Label adds its own files to the studies folder)."""
    source = tmp_path_factory.mktemp("reference") / "in"
    shutil.copytree(studies, source)
    out = source.parent / "out"
    options = [arg for key, value in SETTINGS.items() for arg in (f"--{key.replace('_', '-')}", value)]
    code = medlocker(["protect", str(source), str(out), "--quiet", *options])
    assert code == 1  # broken.png fails; the others are protected
    for name in IMAGES:
        assert (out / "public" / f"{name}.png").is_file()
    assert (out / "public" / f"{DICOM}.dcm").is_file()
    return out


def app_output(reference: Path, tmp_path: Path) -> Path:
    """The app's output folder, with the reference run's render secret (the keyless keyed rendering is per folder)."""
    out = tmp_path / "out"
    (out / "private").mkdir(parents=True)
    shutil.copy(reference / "private" / "render_secret", out / "private" / "render_secret")
    return out


def reference_wsm(reference: Path, name: str, suffix: str = ".png") -> np.ndarray:
    record = json.loads(record_path_for(reference, name + suffix).read_text())
    shape = tuple(record["image_size"])
    return wsm_from_boxes(np.asarray(record["wsm_boxes"]), shape)


def check_public(params: dict, file_name: str) -> None:
    assert params["image"] == file_name and params["protected"] is True
    assert not PRIVATE_KEYS & set(params), f"private fields in the public record: {PRIVATE_KEYS & set(params)}"
    assert params["marks"] and not any("alpha" in m for m in params["marks"])  # where the logo is, never its opacity


def check_protected(pixels: np.ndarray, reference: Path, studies: Path, name: str, suffix: str = ".png") -> None:
    """The app's image is `medlocker protect`'s, pixel for pixel, and no WSM pixel of the original changed."""
    expected = read_pixels(reference / "public" / f"{name}{suffix}")
    assert pixels.shape == expected.shape
    assert np.array_equal(pixels, expected), f"{name}: {int((pixels != expected).any(-1).sum())} pixels differ"
    original = read_pixels(studies / f"{name}{suffix}")
    wsm = reference_wsm(reference, name, suffix)
    assert wsm.any() and (original != pixels).any()  # a real WSM and a real watermark
    assert np.array_equal(original[wsm], pixels[wsm])


def app_conf(output: Path) -> dict:
    return {"output": str(output), **SETTINGS}


def test_tasks_in_process(studies, reference, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    requests = [{"model": "medlocker_protect", "image": IMAGES[0]},
                {"model": "medlocker_lesion_boxes", "image": IMAGES[0]},
                {"model": "medlocker_protect", "image": DICOM},
                {"model": "medlocker_protect", "image": "no_such_image"},
                {"model": "medlocker_protect", "image": "broken"},
                {"model": "medlocker_protect", "image": str(studies / f"{IMAGES[0]}.png")}]
    run = subprocess.run([str(LABEL_BIN / "python"), str(REPO / "tests" / "label_inprocess.py"), str(APP), str(studies),
                          json.dumps(app_conf(app_output(reference, tmp_path))), json.dumps(requests), str(results)],
                         capture_output=True, text=True, env=label_env(torch.get_num_threads()), timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    protect, boxes, dicom, missing, broken, server_path = [
        json.loads(line.split(" ", 1)[1]) for line in run.stdout.splitlines() if line.startswith("RESULT ")]

    check_public(protect["params"], f"{IMAGES[0]}.png")
    check_protected(read_pixels(Path(protect["file"])), reference, studies, IMAGES[0])
    assert record_path_for(tmp_path / "out", f"{IMAGES[0]}.png").is_file()  # the full record stays with the owner

    record = json.loads(record_path_for(reference, f"{IMAGES[0]}.png").read_text())
    assert boxes["params"]["wsm_boxes"] == record["wsm_boxes"]
    label = np.asarray(Image.open(boxes["file"]))
    assert np.array_equal(label > 0, reference_wsm(reference, IMAGES[0]))  # lesion pixels lie inside their boxes
    assert set(np.unique(label)) - {0, 1} and set(np.unique(label)) <= set(range(6))

    check_public(dicom["params"], f"{DICOM}.dcm")
    assert dicom["file"].endswith(".dcm")
    check_protected(read_pixels(Path(dicom["file"])), reference, studies, DICOM, ".dcm")

    assert missing["status"] == 404 and "no_such_image" in missing["detail"]
    assert broken["status"] == 422 and "broken.png" in broken["detail"]
    assert server_path["status"] == 400 and "only images of the datastore" in server_path["detail"]


def test_start_server_infer(studies, reference, tmp_path):
    with LabelServer(studies, app_conf(app_output(reference, tmp_path)), tmp_path, threads=torch.get_num_threads()) as server:
        params, image = server.protect(IMAGES[1])
        check_public(params, f"{IMAGES[1]}.png")
        check_protected(read_pixels(image), reference, studies, IMAGES[1])

        status, _, body = server.infer("medlocker_protect", "no_such_image")
        assert status == 404 and "no_such_image" in json.loads(body)["detail"]
