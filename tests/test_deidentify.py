"""What a protected DICOM instance publishes (DICOM PS3.15 Annex E de-identification, no other vendors' data,
no free-text findings) and what unlock gives back (the original file, byte for byte, for odd encodings too)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from PIL import Image

from monai_medlocker.certify.keys import generate_owner_key, save_owner_key
from monai_medlocker.cli import main
from monai_medlocker.data.synthetic import synthesize_fundus
from monai_medlocker.io.dciodvfy import dciodvfy_available, run_dciodvfy
from monai_medlocker.io.deidentify import DicomPrivacy, annex_e_action, deidentify, findings_text_tags
from monai_medlocker.io.dicom import rebuild_source_file, source_archive
from monai_medlocker.io.dicom_build import fundus_dataset
from monai_medlocker.io.private_tags import read_medlocker_tags
from monai_medlocker.workflows.protect import PUBLISH_NOTE, DatasetProtector
from protect_outputs import public_dir

# The source's identity and findings: none of these may appear in public/ (in any encoding pydicom writes).
IDENTITY = {"PatientName": "Doe^Jane", "PatientID": "PID-778899", "PatientBirthDate": "19581231",
            "AccessionNumber": "ACC-554433", "InstitutionName": "Lakeside Eye Clinic",
            "ReferringPhysicianName": "Grader^Greta", "DeviceSerialNumber": "SN-31337-XYZ"}
FINDINGS = {"ImageComments": "grader: moderate NPDR", "StudyDescription": "DR screening, referable",
            "nested private": "ICDR grade 2; referable"}


def _source(rgb: np.ndarray, **kwargs) -> pydicom.Dataset:
    """An OP 8 bit instance with a patient, a grader's comment and another vendor's private data in a sequence item."""
    ds = fundus_dataset(rgb, iod="op8", patient_name=IDENTITY["PatientName"], patient_id=IDENTITY["PatientID"],
                        patient_birth_date=IDENTITY["PatientBirthDate"], accession_number=IDENTITY["AccessionNumber"],
                        institution_name=IDENTITY["InstitutionName"],
                        referring_physician_name=IDENTITY["ReferringPhysicianName"],
                        device_serial_number=IDENTITY["DeviceSerialNumber"],
                        study_description=FINDINGS["StudyDescription"], **kwargs)
    ds.ImageComments = FINDINGS["ImageComments"]
    block = ds.AnatomicRegionSequence[0].private_block(0x0099, "OTHER VENDOR", create=True)
    block.add_new(0x01, "LO", FINDINGS["nested private"])
    top = ds.private_block(0x0029, "OTHER VENDOR", create=True)
    top.add_new(0x01, "LO", "grade 2")
    return ds


def _private_paths(ds: pydicom.Dataset, where: str = "") -> list[str]:
    """Every private element at any depth, except MedLocker's own block at the top level."""
    medlocker = [elem.tag.group for elem in ds if elem.tag.is_private_creator and elem.value == "MEDLOCKER 1"]
    found = []
    for elem in ds:
        if elem.tag.is_private and not (where == "" and elem.tag.group in medlocker):
            found.append(f"{where}{elem.tag}")
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value):
                found += _private_paths(item, f"{where}{elem.keyword}[{i}].")
    return found


@pytest.fixture(scope="module")
def owner(tmp_path_factory):
    folder = tmp_path_factory.mktemp("key")
    save_owner_key(folder / "owner", generate_owner_key())
    return folder / "owner.key"


def _protect(tmp_path: Path, files: dict[str, pydicom.Dataset], owner: Path, tiny_surrogate, **kwargs) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    for name, ds in files.items():
        ds.save_as(src / f"{name}.dcm", enforce_file_format=True)
        Image.fromarray(np.zeros((int(ds.Rows), int(ds.Columns)), np.uint8)).save(src / f"{name}_lesions.png")
    out = tmp_path / "out"
    summary = DatasetProtector(src, out, tiny_surrogate, lesion_segmenter="masks", progress=False, owner_key=owner,
                               watermark={"max_queries": 4}, **kwargs).run()
    assert summary["protected"] == len(files), summary
    return out


def _unlock(out: Path, owner: Path, dst: Path) -> None:
    assert main(["unlock", str(public_dir(out)), str(dst), "--key", str(owner), "--quiet"]) == 0


def test_published_bytes_carry_no_identity_no_private_data_and_unlock_restores_them(tmp_path, owner, tiny_surrogate):
    rgb = synthesize_fundus(128, seed=3, grade=2).image
    source = _source(rgb)
    out = _protect(tmp_path, {"eye": source}, owner, tiny_surrogate)
    published = list(public_dir(out).rglob("*"))
    assert any(p.suffix == ".dcm" for p in published)
    for path in (p for p in published if p.is_file()):
        data = path.read_bytes()
        for value in list(IDENTITY.values()) + list(FINDINGS.values()):
            for form in {value, value.replace("^", " "), value.replace("-", "")}:  # long enough not to occur by chance
                assert form.encode() not in data, f"{path.name} publishes {form!r}"
    ds = pydicom.dcmread(public_dir(out) / "eye.dcm")
    assert _private_paths(ds) == [] and read_medlocker_tags(ds) is not None
    assert ds.PatientIdentityRemoved == "YES" and ds.PatientName == "" and ds.PatientID == ""
    assert [item.CodeValue for item in ds.DeidentificationMethodCodeSequence] == ["113100", "113110"]
    assert ds.StudyInstanceUID == source.StudyInstanceUID  # Retain UIDs Option: still the same study
    assert "ImageComments" not in ds and "StudyDate" in ds and not ds.StudyDate
    assert "Annex E" in (out / PUBLISH_NOTE).read_text()
    if dciodvfy_available():
        report = run_dciodvfy(public_dir(out) / "eye.dcm")
        assert report.errors == [], report.output
    _unlock(out, owner, tmp_path / "un")
    back = (tmp_path / "un" / "eye.dcm").read_bytes()
    assert back == (tmp_path / "in" / "eye.dcm").read_bytes()  # identity, comments and vendor data all come back
    again = pydicom.dcmread(tmp_path / "un" / "eye.dcm")
    assert again.AnatomicRegionSequence[0][0x00991001].value == FINDINGS["nested private"]


def test_keep_identity_keeps_the_patient_but_not_other_vendors_data(tmp_path, owner, tiny_surrogate):
    rgb = synthesize_fundus(128, seed=4, grade=1).image
    out = _protect(tmp_path, {"eye": _source(rgb)}, owner, tiny_surrogate, keep_identity=True)
    ds = pydicom.dcmread(public_dir(out) / "eye.dcm")
    assert ds.PatientName == IDENTITY["PatientName"] and ds.PatientID == IDENTITY["PatientID"]
    assert ds.InstitutionName == IDENTITY["InstitutionName"] and "PatientIdentityRemoved" not in ds
    assert _private_paths(ds) == [] and "ImageComments" not in ds  # findings never go out unless kept on purpose


def test_private_elements_kept_on_purpose(tmp_path, owner, tiny_surrogate):
    """Issue 18 item 5: keep_private (with keep_identity) publishes other vendors' data at any depth; unlock is exact."""
    rgb = synthesize_fundus(128, seed=7, grade=2).image
    source = _source(rgb)
    inner = pydicom.Dataset()  # a vendor's private sequence holding a standard free-text attribute
    inner.ImageComments = FINDINGS["ImageComments"]
    inner.private_block(0x0099, "OTHER VENDOR", create=True).add_new(0x02, "LO", "kept")
    source.private_block(0x0029, "OTHER VENDOR").add_new(0x02, "SQ", pydicom.Sequence([inner]))
    out = _protect(tmp_path, {"eye": source}, owner, tiny_surrogate, keep_identity=True, keep_private=True)
    ds = pydicom.dcmread(public_dir(out) / "eye.dcm")
    assert ds.AnatomicRegionSequence[0][0x00991001].value == FINDINGS["nested private"]
    kept = ds.private_block(0x0029, "OTHER VENDOR")[0x02].value[0]
    assert kept[0x00991002].value == "kept" and "ImageComments" not in kept  # free text goes at any depth
    assert ds.private_block(0x0029, "OTHER VENDOR")[0x01].value == "grade 2" and read_medlocker_tags(ds) is not None
    assert "ImageComments" not in ds  # free text is a setting of its own
    assert main(["verify", str(public_dir(out)), "--pub", str(owner.with_suffix(".pub")), "--quiet"]) == 0
    _unlock(out, owner, tmp_path / "un")
    assert (tmp_path / "un" / "eye.dcm").read_bytes() == (tmp_path / "in" / "eye.dcm").read_bytes()
    with pytest.raises(ValueError, match="keep_private .* needs keep_identity"):
        DatasetProtector(tmp_path / "in", tmp_path / "x", tiny_surrogate, keep_private=True)


def test_free_text_kept_on_purpose():
    rgb = synthesize_fundus(128, seed=5, grade=0).image
    kept = deidentify(_source(rgb), DicomPrivacy(keep_identity=True, keep_free_text=True))
    assert kept.ImageComments == FINDINGS["ImageComments"] and kept.StudyDescription == FINDINGS["StudyDescription"]
    assert _private_paths(kept) == []
    # De-identified, the profile removes free text anyway (it may name the patient).
    assert "ImageComments" not in deidentify(_source(rgb), DicomPrivacy(keep_free_text=True))


# Rows of DICOM PS3.15 (2026c) table E.1-1, copied from the standard, that the table in use must give (beside
# the whole older copy, ANNEX_E_COPY: rows it lacks or that changed since, e.g. InstanceCreationDate).
STANDARD_ROWS = {
    "PatientName": "Z", "PatientBirthDate": "Z", "PatientSex": "Z", "AccessionNumber": "Z", "StudyDate": "Z",
    "StudyTime": "Z", "StudyID": "Z", "ReferringPhysicianName": "Z", "PatientAddress": "X", "OtherPatientIDs": "X",
    "OtherPatientNames": "X", "PatientAge": "X", "PatientWeight": "X", "ImageComments": "X", "StudyDescription": "X",
    "SeriesDescription": "X", "AdditionalPatientHistory": "X", "PatientComments": "X", "DerivationDescription": "X",
    "InstitutionAddress": "X", "StudyInstanceUID": "U", "SeriesInstanceUID": "U", "SOPInstanceUID": "U",
    "FrameOfReferenceUID": "U", "SynchronizationFrameOfReferenceUID": "U", "ReferencedSOPInstanceUID": "U",
    "InstitutionName": "X/Z/D", "DeviceSerialNumber": "X/Z/D", "StationName": "X/Z/D", "AcquisitionDateTime": "X/Z/D",
    "ContentDate": "Z/D", "ContentTime": "Z/D", "SeriesDate": "X/D", "InstanceCreationDate": "X/D",
    "SourceImageSequence": "X/Z/U*", "ReferencedImageSequence": "X/Z/U*", "AcquisitionDate": "X/Z",
}


# Table E.1-1 as an independent copy holds it (tests/data/ps3.15_table_e.1-1.tsv: tag, action, name; an older edition).
ANNEX_E_COPY = Path(__file__).parent / "data" / "ps3.15_table_e.1-1.tsv"
# Rows whose action the standard changed after the copy's edition: tag -> (the copy's action, the 2026c action).
# Patient ID's change shows in dicom-anonymizer's own tables (Z in its 2023 table, Z/D from 2024b).
EDITION_CHANGES = {0x00100020: ("Z", "Z/D"), 0x30060009: ("X/D", "Z"), 0x300A00B2: ("X", "X/Z"),
                   0x30100077: ("D", "X/D")}


def _annex_e_copy() -> list[tuple[str, str, str]]:
    rows = [tuple(line.split("\t")) for line in ANNEX_E_COPY.read_text(encoding="utf-8").splitlines()
            if line and not line.startswith("#")]
    assert len(rows) == 460 and all(len(r) == 3 for r in rows)  # the whole table, not a sample
    return rows


def test_annex_e_table_has_every_row_of_an_independent_copy():
    """Issue 18 item 4: every row of Table E.1-1 (460, from a copy apart from dicom-anonymizer) gets its action."""
    wrong = {}
    for tag, action, name in _annex_e_copy():
        if tag == "odd":  # private attributes: removed at any depth, checked below
            continue
        # A repeating group (50xx, 60xx): a few even groups, any element.
        for value in {tag[:4].replace("xx", g) + tag[4:].replace("x", d) for g, d in (("00", "0"), ("02", "1"), ("1E", "E"))}:
            expected = EDITION_CHANGES.get(int(value, 16), (action, action))
            assert expected[0] == action, f"{name}: the copy says {action}, EDITION_CHANGES {expected[0]}"
            if annex_e_action(int(value, 16)) != expected[1]:
                wrong[f"{name} ({value})"] = (annex_e_action(int(value, 16)), expected[1])
    assert wrong == {}
    source = Dataset()
    source.PatientName = "Doe^Jane"
    source.private_block(0x0011, "OTHER VENDOR", create=True).add_new(0x01, "LO", "grade 2")
    assert _private_paths(deidentify(source)) == []


def test_annex_e_table_matches_the_standard():
    from pydicom.datadict import tag_for_keyword

    wrong = {k: (annex_e_action(tag_for_keyword(k)), v) for k, v in STANDARD_ROWS.items()
             if annex_e_action(tag_for_keyword(k)) != v}
    assert wrong == {}
    assert annex_e_action(0x60003000) == "X" and annex_e_action(0x60023000) == "X"  # Overlay Data, repeating group
    assert annex_e_action(0x00280010) is None and annex_e_action(0x00080060) is None  # Rows, Modality: kept
    assert {tag_for_keyword(k) for k in ("ImageComments", "StudyDescription", "AdditionalPatientHistory")} <= findings_text_tags()


def test_replaced_uids_are_keyed_and_consistent():
    rgb = synthesize_fundus(128, seed=6, grade=0).image
    source = _source(rgb)
    one = deidentify(source, DicomPrivacy(retain_uids=False), uid_secret=b"k" * 32)
    two = deidentify(source, DicomPrivacy(retain_uids=False), uid_secret=b"k" * 32)
    other = deidentify(source, DicomPrivacy(retain_uids=False), uid_secret=b"j" * 32)
    assert one.StudyInstanceUID == two.StudyInstanceUID != source.StudyInstanceUID
    assert other.StudyInstanceUID != one.StudyInstanceUID and one.StudyInstanceUID.startswith("2.25.")
    assert "113110" not in [i.CodeValue for i in one.DeidentificationMethodCodeSequence]
    dated = deidentify(source, DicomPrivacy(retain_dates=True))
    assert dated.StudyDate == source.StudyDate and "113106" in [i.CodeValue for i in dated.DeidentificationMethodCodeSequence]
    with pytest.raises(ValueError, match="uid_secret"):
        deidentify(source, DicomPrivacy(retain_uids=False))


# -- exactness: odd encodings come back as they were ----------------------------------------------------------


def _native(rgb: np.ndarray) -> pydicom.Dataset:
    return fundus_dataset(rgb, iod="vl", patient_name="Odd^Encoding", patient_id="ODD-1")


def _ybr_full(rgb):
    from pydicom.pixels import convert_color_space

    ds = _native(rgb)
    ds.PhotometricInterpretation = "YBR_FULL"
    ds.PixelData = np.ascontiguousarray(convert_color_space(rgb, "RGB", "YBR_FULL")).tobytes()
    return ds


def _palette(rgb):
    ds = _native(rgb)
    index = (rgb[..., 1] // 4).astype(np.uint8)  # 64 entries
    lut = (np.arange(256) * 4).clip(0, 255).astype(np.uint16) * 257
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "PALETTE COLOR"
    del ds.PlanarConfiguration
    for colour, scale in (("Red", 1), ("Green", 2), ("Blue", 3)):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", ((lut // scale).astype("<u2")).tobytes())
    ds.PixelData = index.tobytes()
    return ds


def _planar(rgb):
    ds = _native(rgb)
    ds.PlanarConfiguration = 1
    ds.PixelData = np.ascontiguousarray(rgb.transpose(2, 0, 1)).tobytes()
    return ds


def _extremes(rgb):
    ds = _native(rgb)
    ds.SmallestImagePixelValue, ds.LargestImagePixelValue = int(rgb.min()), int(rgb.max())
    return ds


def _jpeg(rgb):
    return fundus_dataset(rgb, iod="op8", transfer_syntax="jpeg-baseline", patient_id="ODD-2")


ODD = {"ybr_full": _ybr_full, "palette": _palette, "planar": _planar, "extremes": _extremes, "jpeg": _jpeg}


def test_odd_encodings_unlock_to_the_original_file(tmp_path, owner, tiny_surrogate):
    rgb = synthesize_fundus(128, seed=8, grade=2).image
    files = {name: make(rgb) for name, make in ODD.items()}
    out = _protect(tmp_path, files, owner, tiny_surrogate)
    _unlock(out, owner, tmp_path / "un")
    for name in ODD:
        original = (tmp_path / "in" / f"{name}.dcm").read_bytes()
        assert (tmp_path / "un" / f"{name}.dcm").read_bytes() == original, name
        assert b"ODD-" not in (public_dir(out) / f"{name}.dcm").read_bytes()
    back = pydicom.dcmread(tmp_path / "un" / "jpeg.dcm")
    assert back.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit


def test_source_archive_cuts_out_natively_stored_pixels():
    """A native RGB, planar or grey original costs the payload only its compressed header, not its pixels."""
    rgb = synthesize_fundus(128, seed=9, grade=1).image
    for ds, pixels in ((_native(rgb), rgb), (_planar(rgb), rgb),
                       (fundus_dataset(rgb[..., 1], iod="op8"), np.repeat(rgb[..., 1:2], 3, axis=2))):
        from io import BytesIO

        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        data = buf.getvalue()
        archive = source_archive(data, pixels)
        assert len(archive) < len(data) - pixels[..., 0].size + 4096, (len(archive), len(data))
        assert rebuild_source_file(archive, pixels) == data
        with pytest.raises(ValueError, match="not the original"):
            wrong = pixels.copy()
            wrong[0, 0] ^= 1
            rebuild_source_file(archive, wrong)


def test_resuming_with_another_identity_setting_is_refused(tmp_path, owner, tiny_surrogate):
    """Keeping identity changes what is published: a resumed run with another setting names it (unless --redo)."""
    from monai_medlocker.io.outdir import OutputError

    rgb = synthesize_fundus(128, seed=10, grade=1).image
    out = _protect(tmp_path, {"eye": _source(rgb)}, owner, tiny_surrogate)
    with pytest.raises(OutputError, match="dicom_privacy"):
        DatasetProtector(tmp_path / "in", out, tiny_surrogate, lesion_segmenter="masks", progress=False, owner_key=owner,
                         watermark={"max_queries": 4}, keep_identity=True).run()


def test_replaced_uids_leave_no_source_uid_in_public_and_unlock_restores_them(tmp_path, owner, tiny_surrogate, capsys):
    """Without the Retain UIDs Option no source UID is published, not even as the image id; verify and unlock work."""
    rgb = synthesize_fundus(128, seed=11, grade=2).image
    source = _source(rgb)
    out = _protect(tmp_path, {"eye": source}, owner, tiny_surrogate, retain_uids=False)  # the Python API's setting
    src = tmp_path / "in"
    uids = [source.SOPInstanceUID, source.StudyInstanceUID, source.SeriesInstanceUID,
            source.SynchronizationFrameOfReferenceUID]
    for path in public_dir(out).rglob("*"):
        data = path.read_bytes()
        assert not [u for u in uids if u.encode() in data], path.name
    ds = pydicom.dcmread(public_dir(out) / "eye.dcm")
    assert ds.StudyInstanceUID.startswith("2.25.") and "113110" not in [i.CodeValue for i in ds.DeidentificationMethodCodeSequence]
    assert main(["verify", str(public_dir(out)), "--pub", str(owner.with_suffix(".pub")), "--quiet"]) == 0
    _unlock(out, owner, tmp_path / "un")
    assert (tmp_path / "un" / "eye.dcm").read_bytes() == (src / "eye.dcm").read_bytes()


def test_python_api_takes_every_privacy_setting(tmp_path, owner, tiny_surrogate):
    """Issue 18 item 4: DatasetProtector takes the bundle's privacy settings, not only keep_identity."""
    rgb = synthesize_fundus(128, seed=12, grade=1).image
    source = _source(rgb)
    source.StudyDate = "20200102"
    out = _protect(tmp_path, {"eye": source}, owner, tiny_surrogate, keep_identity=True, keep_free_text=True)
    ds = pydicom.dcmread(public_dir(out) / "eye.dcm")
    assert ds.PatientName == IDENTITY["PatientName"] and ds.ImageComments == FINDINGS["ImageComments"]
    (tmp_path / "dated").mkdir()
    dated = _protect(tmp_path / "dated", {"eye": source}, owner, tiny_surrogate, retain_dates=True)
    ds = pydicom.dcmread(public_dir(dated) / "eye.dcm")
    assert ds.StudyDate == "20200102" and ds.PatientName == "" and "ImageComments" not in ds
    assert [i.CodeValue for i in ds.DeidentificationMethodCodeSequence] == ["113100", "113110", "113106"]


def _protect_cli(src: Path, out: Path, owner: Path, *flags: str) -> pydicom.Dataset:
    assert main(["protect", str(src), str(out), "--quiet", "--max-queries", "4", "--lesion-segmenter", "masks",
                 "--key", str(owner), *flags]) == 0
    return pydicom.dcmread(public_dir(out) / "eye.dcm")


def _dicom_input(tmp_path: Path, seed: int) -> tuple[Path, pydicom.Dataset]:
    """A folder with one identified OP instance (a study date, a grader's comment) and its empty lesion mask."""
    source = _source(synthesize_fundus(128, seed=seed, grade=2).image)
    source.StudyDate = "20200102"
    src = tmp_path / "in"
    src.mkdir()
    source.save_as(src / "eye.dcm", enforce_file_format=True)
    Image.fromarray(np.zeros((128, 128), np.uint8)).save(src / "eye_lesions.png")
    return src, source


def test_cli_privacy_flags_end_to_end(tmp_path, owner):
    """Issue 18 item 4: --replace-uids, --retain-dates, --keep-identity, --keep-free-text through the CLI (inference.json)."""
    src, source = _dicom_input(tmp_path, seed=13)
    ds = _protect_cli(src, tmp_path / "dated", owner, "--replace-uids", "--retain-dates")
    assert ds.StudyInstanceUID.startswith("2.25.") and ds.StudyInstanceUID != source.StudyInstanceUID
    assert ds.StudyDate == "20200102" and ds.PatientName == "" and "ImageComments" not in ds
    assert [i.CodeValue for i in ds.DeidentificationMethodCodeSequence] == ["113100", "113106"]
    kept = _protect_cli(src, tmp_path / "kept", owner, "--keep-identity", "--keep-free-text", "--keep-private")
    assert kept.PatientName == IDENTITY["PatientName"] and kept.ImageComments == FINDINGS["ImageComments"]
    assert len(_private_paths(kept)) == 4  # both vendors' blocks (creator + element), as kept on purpose
    assert kept.StudyInstanceUID == source.StudyInstanceUID and "DeidentificationMethodCodeSequence" not in kept
    for name in ("dated", "kept"):
        _unlock(tmp_path / name, owner, tmp_path / f"un_{name}")
        assert (tmp_path / f"un_{name}" / "eye.dcm").read_bytes() == (src / "eye.dcm").read_bytes()


@pytest.mark.slow
def test_bundle_privacy_keys_through_monai_bundle_run(tmp_path, owner):
    """Issue 18 items 4 and 5: the bundle's privacy keys (retain_uids, retain_dates, keep_identity, keep_free_text,
    keep_private) with monai.bundle run."""
    from test_bundle_run import BUNDLE, bundle_run

    src, source = _dicom_input(tmp_path, seed=14)
    common = ["--dataset_dir", str(src), "--owner_key", str(owner), "--max_queries", "4", "--lesion_segmenter", "masks",
              "--progress", "False"]
    runs = {"dated": ["--retain_uids", "False", "--retain_dates", "True"],
            "kept": ["--keep_identity", "True", "--keep_free_text", "True", "--keep_private", "True"]}
    for name, keys in runs.items():
        proc = bundle_run([BUNDLE / "configs" / "inference.json"], *common, "--output_dir", str(tmp_path / name), *keys,
                          cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
    dated, kept = (pydicom.dcmread(public_dir(tmp_path / n) / "eye.dcm") for n in runs)
    assert dated.StudyInstanceUID.startswith("2.25.") and dated.StudyDate == "20200102" and dated.PatientName == ""
    assert [i.CodeValue for i in dated.DeidentificationMethodCodeSequence] == ["113100", "113106"]
    assert kept.PatientID == IDENTITY["PatientID"] and kept.ImageComments == FINDINGS["ImageComments"]
    assert kept.AnatomicRegionSequence[0][0x00991001].value == FINDINGS["nested private"]  # keep_private
    settings = json.loads((tmp_path / "dated" / "private" / "run_settings.json").read_text())
    assert settings["dicom_privacy"] == DicomPrivacy(retain_uids=False, retain_dates=True).to_record()


def test_missing_annex_e_table_names_the_package_not_an_extra(monkeypatch):
    """dicom-anonymizer is a core dependency now: the error must not send the user to the [dicom] extra."""
    import importlib

    from monai_medlocker.io import deidentify as module

    real_import = importlib.import_module

    def no_anonymizer(name, *args):
        if name.startswith("dicomanonymizer"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args)
    module.annex_e_actions.cache_clear()
    monkeypatch.setattr(importlib, "import_module", no_anonymizer)
    try:
        with pytest.raises(RuntimeError, match="dicom-anonymizer") as err:
            module.annex_e_actions()
        assert "[dicom]" not in str(err.value) and "--keep-identity" in str(err.value)
    finally:
        monkeypatch.undo()
        module.annex_e_actions.cache_clear()


def test_restore_payload_version_3_carries_the_original_file():
    from monai_medlocker.certify.payload import PayloadError, apply_restore_payload, pack_restore_payload, \
        restore_payload_source_file

    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    protected = original.copy()
    protected[5:15, 5:20] = 255
    shielded = protected.copy()
    shielded[30, 40] = np.clip(shielded[30, 40].astype(int) + 2, 0, 255)
    boxes = [(5, 5, 20, 15)]
    for marked in (protected, shielded):  # without and with a residual outside the box
        packed = pack_restore_payload(original, boxes, marked, source_file=b"original file record")
        assert np.array_equal(apply_restore_payload(marked, packed), original)
        assert restore_payload_source_file(packed) == b"original file record"
        with pytest.raises(PayloadError):
            restore_payload_source_file(packed[:-1])
        with pytest.raises(PayloadError):
            apply_restore_payload(marked, packed + b"x")
    assert restore_payload_source_file(pack_restore_payload(original, boxes, protected)) is None  # version 1
