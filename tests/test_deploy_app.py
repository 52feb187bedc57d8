"""The MONAI Deploy App SDK app (apps/medlocker_deploy), run for real with the SDK in .venv-deploy.

The app runs as a subprocess with ``.venv-deploy/bin/python`` (made by ``scripts/setup_deploy_env.sh``;
``MEDLOCKER_DEPLOY_PYTHON`` names another interpreter) on CPU, on a DICOM folder holding the bundle's
two Ophthalmic Photography samples, a VL Photographic and a Secondary Capture instance (in a
subfolder), a CT instance (not a fundus photograph: skipped and named) and a truncated instance
(unreadable: refused and named). The tests skip when that environment is absent, unless
``MEDLOCKER_REQUIRE_DEPLOY=1`` (CI), where they fail.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from monai_medlocker.io.dciodvfy import dciodvfy_available, run_dciodvfy
from monai_medlocker.io.dicom import read_fundus_dicom
from monai_medlocker.io.dicom_build import fundus_dataset
from monai_medlocker.io.private_tags import read_medlocker_tags
from monai_medlocker.workflows.protect import PRIVATE_DIR, PUBLIC_DIR, record_path_for

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "apps" / "medlocker_deploy"
SAMPLES = REPO / "bundle" / "samples"
DEPLOY_PYTHON = Path(os.environ.get("MEDLOCKER_DEPLOY_PYTHON") or REPO / ".venv-deploy" / "bin" / "python")
REQUIRED = os.environ.get("MEDLOCKER_REQUIRE_DEPLOY") == "1"
# The settings both runs use: the seed through the app's environment variable, the budget as an argument.
SEED, MAX_QUERIES = 5, 80
FUNDUS = ["op8_colour.dcm", "op8_redfree.dcm", "study2/vl_colour.dcm", "study2/sc_colour.dcm"]
LESION_TYPES = ("EX", "HE", "MA", "SE")


def _need_deploy_env() -> None:
    if DEPLOY_PYTHON.is_file():
        return
    message = f"{DEPLOY_PYTHON} is missing: run scripts/setup_deploy_env.sh to make the MONAI Deploy environment"
    if REQUIRED:
        pytest.fail(message + " (MEDLOCKER_REQUIRE_DEPLOY=1)")
    pytest.skip(message)


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _record(out: Path, name: str) -> dict:
    """The whole (private) record of input ``name`` in output folder ``out``."""
    return json.loads(record_path_for(out, name).read_text())


def _make_input(folder: Path) -> None:
    """The DICOM folder: fundus instances of three SOP classes with their lesion masks, a CT, a truncated file."""
    folder.mkdir()
    for name in ("op8_colour", "op8_redfree"):
        for path in SAMPLES.glob(f"{name}*"):
            shutil.copy(path, folder / path.name)
    sub = folder / "study2"
    sub.mkdir()
    rgb = np.asarray(Image.open(SAMPLES / "fundus_c.png").convert("RGB"))
    for iod in ("vl", "sc"):
        ds = fundus_dataset(rgb, iod=iod, series_number=2 if iod == "vl" else 3, series_description=f"{iod} fundus")
        ds.save_as(sub / f"{iod}_colour.dcm", enforce_file_format=True)
        for lesion in LESION_TYPES:
            shutil.copy(SAMPLES / f"fundus_c_{lesion}.png", sub / f"{iod}_colour_{lesion}.png")
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "ct_small.dcm")
    whole = (SAMPLES / "op8_colour.dcm").read_bytes()
    (folder / "truncated.dcm").write_bytes(whole[:3000])  # the header, cut inside it


@pytest.fixture(scope="module")
def deploy_run(tmp_path_factory):
    """Run the app and ``medlocker protect`` on the same folder; their outputs, logs and the input hashes."""
    _need_deploy_env()
    base = tmp_path_factory.mktemp("deploy")
    source = base / "dicom_in"
    _make_input(source)
    before = _hashes(source)
    from monai_medlocker.cli import main as medlocker

    owner = base / "keys" / "owner"
    assert medlocker(["keygen", str(owner)]) == 0
    out = base / "deploy_out"
    # The input, output, seed and key through the environment (as a MAP is run), the budget as an argument.
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MEDLOCKER_SEED": str(SEED),
           "MEDLOCKER_KEY": f"{owner}.key", "HOLOSCAN_INPUT_PATH": str(source), "HOLOSCAN_OUTPUT_PATH": str(out)}
    proc = subprocess.run([str(DEPLOY_PYTHON), str(APP), "--max-queries", str(MAX_QUERIES)], env=env,
                          capture_output=True, text=True, timeout=600, cwd=base)
    reference = base / "protect_out"
    protect_code = medlocker(["protect", str(source), str(reference), "--seed", str(SEED), "--max-queries",
                              str(MAX_QUERIES), "--key", f"{owner}.key", "--quiet"])
    return {"source": source, "out": out, "reference": reference, "proc": proc, "before": before,
            "after": _hashes(source), "protect_code": protect_code, "owner": owner, "base": base}


def test_deploy_app_protects_fundus_names_the_rest_and_exits_nonzero(deploy_run):
    proc = deploy_run["proc"]
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log[-4000:]
    summary = json.loads((deploy_run["out"] / PRIVATE_DIR / "summary.json").read_text())
    assert sorted(r["output"] for r in summary["protected"]) == sorted(f"{PUBLIC_DIR}/{n}" for n in FUNDUS), summary
    assert summary["failed"] == []
    ct = str(deploy_run["source"] / "ct_small.dcm")
    assert [r["file"] for r in summary["skipped"]] == [ct]
    assert "not a fundus photograph" in summary["skipped"][0]["reason"] and "CT Image Storage" in summary["skipped"][0]["reason"]
    truncated = str(deploy_run["source"] / "truncated.dcm")
    assert [r["file"] for r in summary["refused"]] == [truncated]
    # Each is named on stderr, with what happened to it.
    assert f"SKIPPED {ct}: skipped: not a fundus photograph" in proc.stderr
    assert f"REFUSED {truncated}:" in proc.stderr
    assert summary["exit_code"] == 1


def test_deploy_outputs_are_valid_derived_instances_with_the_private_block(deploy_run):
    if not dciodvfy_available() and os.environ.get("MEDLOCKER_REQUIRE_DCIODVFY") == "1":
        pytest.fail("dciodvfy (Debian dicom3tools) is required here but not installed")
    for name in FUNDUS:
        path = deploy_run["out"] / PUBLIC_DIR / name
        src = pydicom.dcmread(deploy_run["source"] / name)
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID == src.SOPClassUID and ds.StudyInstanceUID == src.StudyInstanceUID
        assert ds.SeriesInstanceUID != src.SeriesInstanceUID and ds.SOPInstanceUID != src.SOPInstanceUID
        tags = read_medlocker_tags(ds, str(path))
        assert tags is not None, f"{path}: no MedLocker private block"
        assert tags.source_sop_instance_uid == str(src.SOPInstanceUID)
        assert tags.params["protected"] is True
        # The whole record (lesion boxes included) is the owner's: in private/, never in the published instance.
        record = _record(deploy_run["out"], name)
        assert record["protected"] is True and record["wsm_boxes"]
        assert record["dicom"]["derived"]["sop_instance"] == str(ds.SOPInstanceUID)
        assert "wsm_boxes" not in tags.params and not tags.wsm_boxes
        if dciodvfy_available():
            report = run_dciodvfy(path)
            assert report.errors == [], str(report)


def test_deploy_keeps_wsm_pixels_and_sources(deploy_run):
    for name in FUNDUS:
        original = read_fundus_dicom(deploy_run["source"] / name).pixels
        protected = read_fundus_dicom(deploy_run["out"] / PUBLIC_DIR / name).pixels
        inside = np.zeros(original.shape[:2], dtype=bool)
        for x0, y0, x1, y1 in _record(deploy_run["out"], name)["wsm_boxes"]:
            inside[y0:y1, x0:x1] = True
        assert inside.any()
        assert np.array_equal(protected[inside], original[inside]), f"{name}: a pixel inside the WSM changed"
        assert not np.array_equal(protected, original), f"{name}: no logo was stamped"
    assert deploy_run["after"] == deploy_run["before"], "the app changed its input folder"


def test_deploy_pixels_equal_medlocker_protect(deploy_run):
    assert deploy_run["protect_code"] == 1  # the CT and the truncated file fail there too
    for name in FUNDUS:
        app = pydicom.dcmread(deploy_run["out"] / PUBLIC_DIR / name)
        cli = pydicom.dcmread(deploy_run["reference"] / PUBLIC_DIR / name)
        assert np.array_equal(app.pixel_array, cli.pixel_array), f"{name}: the app's pixels differ from medlocker protect's"
        assert read_medlocker_tags(app).params == read_medlocker_tags(cli).params
        ours, theirs = _record(deploy_run["out"], name), _record(deploy_run["reference"], name)
        assert ours["wsm_boxes"] == theirs["wsm_boxes"] and ours["marks"] == theirs["marks"]


def test_deploy_outputs_verify_and_unlock_to_the_originals(deploy_run):
    """Signed with the owner key given by MEDLOCKER_KEY: medlocker verify and unlock accept the app's outputs."""
    from monai_medlocker.cli import main as medlocker

    owner, out = deploy_run["owner"], deploy_run["out"] / PUBLIC_DIR
    for name in FUNDUS:
        assert read_medlocker_tags(pydicom.dcmread(out / name)).certificate is not None, name
    assert medlocker(["verify", str(out), "--pub", f"{owner}.pub", "--quiet"]) == 0
    unlocked = deploy_run["base"] / "unlocked"
    assert medlocker(["unlock", str(out), str(unlocked), "--key", f"{owner}.key", "--quiet"]) == 0
    for name in FUNDUS:
        original = pydicom.dcmread(deploy_run["source"] / name)
        restored = pydicom.dcmread(unlocked / name)
        assert restored.SOPInstanceUID == original.SOPInstanceUID
        assert np.array_equal(restored.pixel_array, original.pixel_array), f"{name}: unlock is not bit-exact"


def test_deploy_app_refuses_an_output_inside_its_input(tmp_path):
    _need_deploy_env()
    source = tmp_path / "in"
    source.mkdir()
    shutil.copy(SAMPLES / "op8_colour.dcm", source)
    proc = subprocess.run([str(DEPLOY_PYTHON), str(APP), "-i", str(source), "-o", str(source / "out")],
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "overlap" in proc.stderr and str(source) in proc.stderr
    assert [p.name for p in source.iterdir()] == ["op8_colour.dcm"]  # nothing written into the input


def test_deploy_app_names_a_missing_model(tmp_path):
    _need_deploy_env()
    source = tmp_path / "in"
    source.mkdir()
    shutil.copy(SAMPLES / "op8_colour.dcm", source)
    missing = tmp_path / "no_such_model.pt"
    proc = subprocess.run([str(DEPLOY_PYTHON), str(APP), "-i", str(source), "-o", str(tmp_path / "out"), "--model",
                           str(missing)], env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"medlocker_deploy: error: model checkpoint not found: {missing}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_staged_map_folder_runs_with_its_own_package_and_bundle(tmp_path):
    """The folder scripts/stage_deploy_map.py makes for ``monai-deploy package`` runs on its own: its copy of
    the package finds its copy of the bundle (a seed set only in the staged inference.json proves it)."""
    _need_deploy_env()
    staged = tmp_path / "map"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "stage_deploy_map.py"), "--out", str(staged)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for name in ("__main__.py", "app.yaml", "requirements.txt", "monai_medlocker/__init__.py",
                 "bundle/configs/inference.json", "bundle/models/model.pt"):
        assert (staged / name).is_file(), name
    assert "monai-deploy-app-sdk==4.0.0" in (staged / "requirements.txt").read_text()
    config = staged / "bundle" / "configs" / "inference.json"
    config.write_text(config.read_text().replace('"seed": 0,', '"seed": 11,'))
    source = tmp_path / "in"
    source.mkdir()
    for path in SAMPLES.glob("op8_colour*"):
        shutil.copy(path, source / path.name)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "MEDLOCKER_BUNDLE", "HOLOSCAN_INPUT_PATH", "HOLOSCAN_OUTPUT_PATH")}
    # The folders by the SDK 0.x variable names, which older MONAI Deploy tooling sets.
    env.update(OMP_NUM_THREADS="1", MONAI_INPUTPATH=str(source), MONAI_OUTPUTPATH=str(tmp_path / "out"))
    proc = subprocess.run([str(DEPLOY_PYTHON), str(staged), "--max-queries", "20"], env=env, capture_output=True,
                          text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _record(tmp_path / "out", "op8_colour.dcm")["run_settings"]["seed"] == 11


# Checks that need no deploy environment: the app's settings and its pins.

def _app_settings():
    sys.path.insert(0, str(APP))
    try:
        import app_settings
    finally:
        sys.path.remove(str(APP))
    return app_settings


def test_app_settings_from_environment_and_arguments():
    settings = _app_settings().parse_app_settings(
        ["app", "-i", "in", "--seed", "7", "-o", "out"],
        {"MEDLOCKER_SEED": "3", "MEDLOCKER_OPTIMIZER": "bhe", "MEDLOCKER_KEY": "owner.key", "MEDLOCKER_WAIT": "1"})
    assert settings.overrides["seed"] == 7  # the argument wins over MEDLOCKER_SEED
    assert settings.overrides["optimizer"] == "bhe"
    assert settings.overrides["owner_key"] == str(Path("owner.key").resolve())
    assert settings.wait is True and "wait" not in settings.overrides and "redo" not in settings.overrides
    assert settings.sdk_argv == ["app", "-i", "in", "-o", "out"]


def test_app_settings_refuse_redo_and_bad_values(capsys):
    module = _app_settings()
    with pytest.raises(SystemExit):
        module.parse_app_settings(["app", "--redo"], {})
    assert "--redo is not supported by the Deploy app" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        module.parse_app_settings(["app"], {"MEDLOCKER_OPTIMIZER": "nonsense"})
    assert "nonsense" in capsys.readouterr().err


def test_deploy_pins_agree():
    """The MAP's requirements.txt and the pyproject extra "deploy" pin the same SDK and holoscan releases."""
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["deploy"]
    lines = [line.strip() for line in (APP / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert sorted(extra) == sorted(lines)
    assert {"monai-deploy-app-sdk==4.0.0", "holoscan-cu13==4.2.0", "holoscan-cli==4.2.0"} <= set(lines)
