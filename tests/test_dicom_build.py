"""Source DICOM fundus instances (OP 8 bit, VL Photographic, Secondary Capture) and the dciodvfy wrapper."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from monai_medlocker.data.synthetic import synthesize_fundus
from monai_medlocker.io import dciodvfy as dciodvfy_mod
from monai_medlocker.io.dciodvfy import dciodvfy_available, parse_dciodvfy_output, run_dciodvfy
from monai_medlocker.io.dicom_build import SOP_CLASS_UIDS, TRANSFER_SYNTAXES, fundus_dataset, write_fundus_study

HAVE_DCIODVFY = dciodvfy_available()
NO_DCIODVFY = "dciodvfy (dicom3tools) is not installed here; CI installs it and runs this check"

STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = "1.2.826.0.1.3680043.8.498.1.1"


@pytest.fixture(scope="module")
def images() -> dict[str, np.ndarray]:
    colour = synthesize_fundus(160, seed=7, grade=2).image[16:144]  # 128 x 160, not square on purpose
    assert colour.shape == (128, 160, 3) and colour.dtype == np.uint8
    return {"colour": colour, "mono": np.ascontiguousarray(colour[..., 1])}  # red-free: the green channel


def _save_and_check(ds: pydicom.Dataset, path, expected: np.ndarray, ts: str, lossy: bool = False) -> pydicom.Dataset:
    ds.save_as(path, enforce_file_format=True)
    back = pydicom.dcmread(path)
    assert back.file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[ts]
    assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID
    arr = back.pixel_array
    assert arr.shape == expected.shape and arr.dtype == np.uint8
    if lossy:
        mad = np.abs(arr.astype(np.int16) - expected.astype(np.int16)).mean()
        assert mad < 3.0, f"JPEG baseline decoded with mean abs diff {mad:.2f}"
    else:
        np.testing.assert_array_equal(arr, expected)
    return back


def _assert_dciodvfy_clean(path) -> None:
    if not HAVE_DCIODVFY:
        pytest.skip(NO_DCIODVFY)
    report = run_dciodvfy(path)
    assert report.errors == [], f"dciodvfy errors:\n{report.output}"
    assert report.warnings == [], f"dciodvfy warnings:\n{report.output}"


@pytest.mark.parametrize("ts", ["explicit", "implicit", "rle", "jpeg-ls", "jpeg2000"])
@pytest.mark.parametrize("kind", ["colour", "mono"])
@pytest.mark.parametrize("iod", ["op8", "vl", "sc"])
def test_lossless_instances_round_trip_and_conform(tmp_path, images, iod, kind, ts):
    img = images[kind]
    ds = fundus_dataset(img, iod=iod, transfer_syntax=ts, study_uid=STUDY, series_uid=SERIES)
    path = tmp_path / f"{iod}_{kind}_{ts}.dcm"
    back = _save_and_check(ds, path, img, ts)
    assert back.SOPClassUID == SOP_CLASS_UIDS[iod]
    assert back.LossyImageCompression == "00"
    if kind == "mono":
        assert back.PhotometricInterpretation == "MONOCHROME2" and back.SamplesPerPixel == 1
    else:
        assert back.SamplesPerPixel == 3
        assert back.PhotometricInterpretation == ("YBR_RCT" if ts == "jpeg2000" else "RGB")
    _assert_dciodvfy_clean(path)


@pytest.mark.parametrize("kind", ["colour", "mono"])
@pytest.mark.parametrize("iod", ["op8", "vl", "sc"])
def test_jpeg_baseline_instances_decode_close_and_conform(tmp_path, images, iod, kind):
    img = images[kind]
    photometric = "YBR_FULL_422" if kind == "colour" else "RGB"  # ignored for monochrome
    ds = fundus_dataset(img, iod=iod, transfer_syntax="jpeg-baseline", photometric=photometric,
                        study_uid=STUDY, series_uid=SERIES)
    path = tmp_path / f"{iod}_{kind}_jpeg.dcm"
    back = _save_and_check(ds, path, img, "jpeg-baseline", lossy=True)
    assert back.PhotometricInterpretation == ("YBR_FULL_422" if kind == "colour" else "MONOCHROME2")
    assert back.LossyImageCompression == "01"
    assert back.LossyImageCompressionMethod == "ISO_10918_1"
    assert float(back.LossyImageCompressionRatio) > 1.0
    frame = next(pydicom.encaps.generate_frames(back.PixelData, number_of_frames=1))
    assert frame[:2] == b"\xff\xd8" and b"\xff\xc0" in frame  # SOI, baseline SOF0
    _assert_dciodvfy_clean(path)


def test_jpeg_baseline_ybr_full_decodes_but_is_flagged(tmp_path, images):
    img = images["colour"]
    ds = fundus_dataset(img, transfer_syntax="jpeg-baseline", photometric="YBR_FULL", study_uid=STUDY,
                        series_uid=SERIES)
    path = tmp_path / "ybr_full.dcm"
    back = _save_and_check(ds, path, img, "jpeg-baseline", lossy=True)
    assert back.PhotometricInterpretation == "YBR_FULL"
    # The default "RGB" with JPEG Baseline is stored as 4:2:2 YCbCr.
    assert fundus_dataset(img, transfer_syntax="jpeg-baseline").PhotometricInterpretation == "YBR_FULL_422"
    if not HAVE_DCIODVFY:
        pytest.skip(NO_DCIODVFY)
    report = run_dciodvfy(path)
    assert report.errors and all("Photometric Interpretation" in e for e in report.errors), report.output


def test_op8_attributes(images):
    ds = fundus_dataset(images["mono"], laterality="L", study_uid=STUDY, series_uid=SERIES, instance_number=3,
                        accession_number="A123", patient_id="P9")
    assert ds.Modality == "OP" and ds.ImageLaterality == "L" and "Laterality" not in ds
    assert ds.NumberOfFrames == 1 and ds.PresentationLUTShape == "IDENTITY"
    assert ds.AnatomicRegionSequence[0].CodeValue == "5665001"
    assert ds.AcquisitionDeviceTypeCodeSequence[0].CodeMeaning == "Fundus Camera"
    assert ds.LightPathFilterTypeStackCodeSequence[0].CodeMeaning == "Green optical filter"
    assert (ds.InstanceNumber, ds.AccessionNumber, ds.PatientID) == (3, "A123", "P9")
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID) == (STUDY, SERIES)


def test_deterministic_given_uids(tmp_path, images):
    paths = []
    for i in range(2):
        ds = fundus_dataset(images["colour"], transfer_syntax="rle", study_uid=STUDY, series_uid=SERIES)
        paths.append(tmp_path / f"{i}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    a = fundus_dataset(images["colour"])
    b = fundus_dataset(images["colour"])
    assert a.StudyInstanceUID != b.StudyInstanceUID and a.SeriesInstanceUID != b.SeriesInstanceUID
    # Lossy copies are new instances; lossless re-encodings keep the SOP Instance UID.
    uids = {ts: fundus_dataset(images["colour"], transfer_syntax=ts, study_uid=STUDY,
                               series_uid=SERIES).SOPInstanceUID for ts in ("explicit", "jpeg-ls", "jpeg-baseline")}
    assert uids["explicit"] == uids["jpeg-ls"] != uids["jpeg-baseline"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(iod="ct"), "iod"),
    (dict(transfer_syntax="jpeg-xl"), "transfer_syntax"),
    (dict(photometric="YBR_FULL_422"), "jpeg-baseline"),
    (dict(photometric="PALETTE COLOR"), "photometric"),
    (dict(laterality="X"), "laterality"),
])
def test_invalid_arguments(images, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fundus_dataset(images["colour"], **kwargs)


def test_invalid_images():
    with pytest.raises(ValueError, match="uint8"):
        fundus_dataset(np.zeros((8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        fundus_dataset(np.zeros((8, 8, 4), dtype=np.uint8))


def test_write_fundus_study(tmp_path, images):
    out = tmp_path / "study"
    imgs = [images["colour"], images["mono"], images["colour"][::-1].copy()]
    paths = write_fundus_study(imgs, out, laterality=["R", "L", "R"], transfer_syntax="jpeg-ls")
    assert [p.name for p in paths] == ["IMG0001.dcm", "IMG0002.dcm", "IMG0003.dcm"]
    dss = [pydicom.dcmread(p) for p in paths]
    assert len({ds.StudyInstanceUID for ds in dss}) == 1 and len({ds.SeriesInstanceUID for ds in dss}) == 1
    assert len({ds.SOPInstanceUID for ds in dss}) == 3
    assert [ds.InstanceNumber for ds in dss] == [1, 2, 3]
    assert [ds.ImageLaterality for ds in dss] == ["R", "L", "R"]
    for ds, img in zip(dss, imgs):
        np.testing.assert_array_equal(ds.pixel_array, img)
    before = paths[0].read_bytes()
    with pytest.raises(FileExistsError):
        write_fundus_study(imgs[:1], out)
    assert paths[0].read_bytes() == before
    with pytest.raises(ValueError, match="instance_number"):
        write_fundus_study(imgs, tmp_path / "x", instance_number=5)


# -- dciodvfy wrapper ------------------------------------------------------------------------------------------


def test_parse_dciodvfy_output():
    text = ("OphthalmicPhotography8BitImage\n"
            "Error - Missing attribute Type 1 Required Element=<FrameTime> Module=<X>\n"
            "Warning - Value dubious\n\tsome context\nError - another\n")
    errors, warnings = parse_dciodvfy_output(text)
    assert errors == ["Error - Missing attribute Type 1 Required Element=<FrameTime> Module=<X>", "Error - another"]
    assert warnings == ["Warning - Value dubious"]


def test_run_dciodvfy_missing_binary(tmp_path, monkeypatch):
    path = tmp_path / "x.dcm"
    path.write_bytes(b"\0" * 200)
    monkeypatch.setattr(dciodvfy_mod.shutil, "which", lambda name: None)
    assert not dciodvfy_mod.dciodvfy_available()
    with pytest.raises(RuntimeError, match="dciodvfy"):
        run_dciodvfy(path)


def test_run_dciodvfy_reports_errors(tmp_path, images):
    if not HAVE_DCIODVFY:
        pytest.skip(NO_DCIODVFY)
    ds = fundus_dataset(images["colour"], study_uid=STUDY, series_uid=SERIES)
    del ds.FrameTime  # referenced by Frame Increment Pointer
    del ds.AcquisitionDeviceTypeCodeSequence  # Type 1 in Ophthalmic Photographic Parameters
    path = tmp_path / "broken.dcm"
    ds.save_as(path, enforce_file_format=True)
    report = run_dciodvfy(path)
    assert not report.ok and len(report.errors) >= 2, report.output
    assert any("AcquisitionDeviceTypeCodeSequence" in e for e in report.errors), report.output
    with pytest.raises(FileNotFoundError):
        run_dciodvfy(tmp_path / "missing.dcm")


# -- medlocker synth --dicom -----------------------------------------------------------------------------------


def test_synth_cli_writes_dicom_study(tmp_path, capsys):
    from monai_medlocker.cli import main

    out = tmp_path / "lab"
    assert main(["synth", str(out), "--n", "3", "--size", "128", "--seed", "5", "--dicom", "--quiet"]) == 0
    assert "3 DICOM files (op8)" in capsys.readouterr().out
    datalist = json.loads((out / "datalist.json").read_text())
    items = sorted((it for k in ("training", "validation", "test") for it in datalist[k]), key=lambda it: it["image"])
    files = sorted((out / "dicom").glob("*.dcm"))
    assert [p.name for p in files] == ["IMG0001.dcm", "IMG0002.dcm", "IMG0003.dcm"]
    dss = [pydicom.dcmread(p) for p in files]
    assert len({ds.StudyInstanceUID for ds in dss}) == 1 and len({ds.PatientID for ds in dss}) == 1
    from PIL import Image

    for ds, item in zip(dss, items):
        assert ds.SOPClassUID == SOP_CLASS_UIDS["op8"]
        assert ds.ImageLaterality == ("L" if item["eye"] == "OS" else "R")
        np.testing.assert_array_equal(ds.pixel_array, np.asarray(Image.open(out / item["image"]).convert("RGB")))
    first = files[0].read_bytes()
    # Refused without --overwrite; reproducible with it.
    assert main(["synth", str(out), "--n", "3", "--size", "128", "--seed", "5", "--dicom", "--quiet"]) == 2
    assert main(["synth", str(out), "--n", "3", "--size", "128", "--seed", "5", "--dicom", "--quiet",
                 "--overwrite"]) == 0
    assert files[0].read_bytes() == first
    assert main(["synth", str(tmp_path / "other"), "--n", "1", "--size", "128", "--iod", "vl", "--quiet"]) == 2
    if HAVE_DCIODVFY:
        _assert_dciodvfy_clean(files[0])


def test_synth_cli_vl(tmp_path):
    from monai_medlocker.cli import main

    out = tmp_path / "lab"
    assert main(["synth", str(out), "--n", "1", "--size", "128", "--dicom", "--iod", "vl", "--quiet"]) == 0
    ds = pydicom.dcmread(out / "dicom" / "IMG0001.dcm")
    assert ds.SOPClassUID == SOP_CLASS_UIDS["vl"] and ds.Modality == "XC"
    _assert_dciodvfy_clean(out / "dicom" / "IMG0001.dcm")


@pytest.mark.parametrize("retain", ["uids", "dates", "none"])
@pytest.mark.parametrize("iod", ["op8", "vl", "sc"])
def test_deidentified_instances_stay_valid(tmp_path, images, iod, retain):
    """What protect publishes by default (DICOM PS3.15 Annex E) is still a valid instance of its IOD.

    Emptied Type 2 attributes (Patient ID, Study Date, ...) only draw dciodvfy's DICOMDIR warnings, which are
    expected for de-identified data; errors are not.
    """
    from monai_medlocker.io.deidentify import DicomPrivacy, deidentify

    if not HAVE_DCIODVFY:
        pytest.skip(NO_DCIODVFY)
    ds = fundus_dataset(images["colour"], iod=iod, patient_name="Doe^Jane", patient_id="PID-1", patient_birth_date="19500101",
                        patient_sex="F", accession_number="ACC-1", institution_name="Eye Clinic",
                        referring_physician_name="Who^Dr")
    ds.ImageComments = "grader: moderate NPDR"
    privacy = DicomPrivacy(retain_uids=retain != "none", retain_dates=retain == "dates")
    out = deidentify(ds, privacy, uid_secret=b"s" * 32)
    out.PixelData = ds.PixelData
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert (out.SOPInstanceUID == ds.SOPInstanceUID) == (retain != "none")
    out.save_as(tmp_path / "deid.dcm", enforce_file_format=True)
    report = run_dciodvfy(tmp_path / "deid.dcm")
    assert report.errors == [], f"dciodvfy errors:\n{report.output}"
    assert all("DICOMDIR" in w for w in report.warnings), report.output
    assert out.PatientIdentityRemoved == "YES" and "ImageComments" not in out and not out.PatientName
