"""DICOM in and out: the reader, the derived-instance writer, the private block, and a corpus of
real-world encodings (pydicom's test files, written by dcmtk, GDCM and others)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import ImplicitVRLittleEndian

from monai_medlocker.io.dciodvfy import dciodvfy_available, run_dciodvfy
from monai_medlocker.io.dicom import DicomReadError, derive_protected_dataset, read_fundus_dicom, save_dicom
from monai_medlocker.io import LoadFundusImaged
from monai_medlocker.io.private_tags import MedlockerTags, PrivateTagError, read_medlocker_tags, write_medlocker_tags
from monai_medlocker.networks import Surrogate, model_spec
from monai_medlocker.workflows.protect import DatasetProtector
from protect_outputs import (
    assert_public_record_of,
    manifest_rows,
    public_dir,
    read_record,
    record_file,
    sidecar_file,
)

CORPUS = Path(pydicom.__file__).parent / "data" / "test_files"

# What each corpus file should give: protected, or refused with a message containing the text.
# (pydicom's data/test_files/README.txt says what is odd about each one.)
CORPUS_EXPECTED = {
    "SC_rgb_rle.dcm": "protected",  # RLE Lossless, RGB
    "SC_rgb_jpeg_gdcm.dcm": "protected",  # JPEG Lossless SV1 by GDCM
    "SC_rgb_jpeg_dcmtk.dcm": "protected",  # JPEG Baseline YBR_FULL by dcmtk
    "SC_rgb_dcmtk_+eb+cy+np.dcm": "protected",  # JPEG Baseline YBR_FULL_422 by dcmtk
    "SC_rgb_dcmtk_+eb+cr.dcm": "protected",  # JPEG Baseline in RGB (no colour transform)
    "SC_jpeg_no_color_transform.dcm": "protected",  # JPEG Baseline, RGB, Adobe APP14 absent
    "SC_rgb_gdcm_KY.dcm": "protected",  # JPEG 2000 by GDCM
    "GDCMJ2K_TextGBR.dcm": "protected",  # JPEG 2000 lossless, YBR_RCT
    "SC_rgb_jls_lossy_line.dcm": "protected",  # JPEG-LS near-lossless
    "SC_ybr_full_422_uncompressed.dcm": "protected",  # uncompressed YBR_FULL_422
    "ExplVR_BigEnd.dcm": "protected",  # Explicit VR Big Endian, ultrasound RGB
    "examples_rgb_color.dcm": "protected",  # uncompressed RGB ultrasound
    "examples_palette.dcm": "protected",  # PALETTE COLOR, expanded to RGB
    "examples_jpeg2k.dcm": "protected",  # JPEG 2000 lossless YBR_RCT 640x480
    "image_dfl.dcm": "protected",  # Deflated Explicit VR, MONOCHROME2 8-bit
    "JPEGLSNearLossless_08.dcm": "too small",  # 8-bit but 10 px wide
    "SC_rgb_small_odd.dcm": "too small",
    "SC_rgb_rle_2frame.dcm": "multi-frame",
    "examples_ybr_color.dcm": "multi-frame",
    "SC_rgb_rle_16bit.dcm": "only 8-bit",
    "CT_small.dcm": "only 8-bit",
    "MR_small_jp2klossless.dcm": "only 8-bit",
    "rtplan.dcm": "no pixel data",
    "no_meta.dcm": "not a DICOM file",
    "liver_1frame.dcm": "only 8-bit",  # 1-bit segmentation
}


def _errors(path: Path, tmp: Path | None = None) -> set[str]:
    report = run_dciodvfy(path)
    if tmp is not None and any("dataset read failed" in e for e in report.errors):
        # dciodvfy cannot parse this input (e.g. deflated): validate its content re-encoded as explicit VR instead.
        copy = tmp / f"{path.stem}.explicit.dcm"
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        pydicom.dcmwrite(copy, ds, implicit_vr=False, little_endian=True)
        report = run_dciodvfy(copy)
    return set(report.errors)


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory, request):
    """Protect a copy of the corpus (empty lesion masks beside each file) once for all corpus tests."""
    from conftest import TinyConv  # rootdir-relative import: tests/ is on sys.path under pytest

    src = tmp_path_factory.mktemp("corpus")
    for name in CORPUS_EXPECTED:
        shutil.copy(CORPUS / name, src / name)
        # An empty mask states "no lesions": these are not fundus photographs, so the detector would refuse them.
        rows, cols = 64, 64
        try:
            ds = pydicom.dcmread(CORPUS / name, stop_before_pixels=True)
            rows, cols = int(ds.get("Rows", 64)), int(ds.get("Columns", 64))
        except Exception:
            pass
        Image.fromarray(np.zeros((rows, cols), np.uint8)).save(src / f"{Path(name).stem}_lesions.png")
    out = tmp_path_factory.mktemp("corpus_out")
    surrogate = Surrogate(TinyConv(), model_spec("resnet-tiny", 64))
    summary = DatasetProtector(src, out, surrogate, watermark={"max_queries": 8, "search_space": "paper"},
                               lesion_segmenter="masks", progress=False).run()
    rows = {r["image"]: r for r in manifest_rows(out)}
    return src, out, rows, summary


@pytest.mark.parametrize("name", sorted(CORPUS_EXPECTED))
def test_corpus_file_is_protected_or_refused_clearly(corpus_run, name, tmp_path):
    src, out, rows, _ = corpus_run
    row = rows[name]
    expected = CORPUS_EXPECTED[name]
    if expected != "protected":
        assert row["status"] == "failed", row
        assert str(src / name) in row["error"] and expected in row["error"], row["error"]
        return
    assert row["status"] == "protected", row
    original = read_fundus_dicom(src / name)
    result = read_fundus_dicom(out / row["output"])
    ds = result.dataset
    # Identity and derivation.
    assert ds.SOPInstanceUID != original.dataset.SOPInstanceUID
    assert ds.SeriesInstanceUID != original.dataset.get("SeriesInstanceUID")
    assert ds.StudyInstanceUID == original.dataset.get("StudyInstanceUID", ds.StudyInstanceUID)  # new only when missing
    assert ds.SOPClassUID == original.dataset.SOPClassUID
    # De-identified by default (DICOM PS3.15 Annex E): the patient and study module attributes are emptied.
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyID", "AccessionNumber"):
        assert ds.get(keyword) in (None, ""), keyword
    assert ds.PatientIdentityRemoved == "YES"
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == original.dataset.SOPInstanceUID
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    # The private block parses back into the public part of the owner's record: no lesion boxes, no opacity.
    tags = read_medlocker_tags(ds)
    assert row["output"].startswith("public/")
    assert_public_record_of(tags.params, read_record(out, name))
    assert tags.version == "medlocker-dicom/2" and tags.wsm_boxes == [] and tags.sealed_record is None  # keyless
    assert tags.source_sop_instance_uid == original.dataset.SOPInstanceUID
    # Only the logo boxes changed.
    footprint = np.zeros(original.pixels.shape[:2], bool)
    for mark in tags.params["marks"]:
        x0, y0, x1, y1 = mark["box_xyxy"]
        footprint[y0:y1, x0:x1] = True
    changed = np.any(original.pixels != result.pixels, axis=-1)
    assert changed.any() and not (changed & ~footprint).any()
    # Monochrome stays monochrome.
    assert (ds.PhotometricInterpretation == "MONOCHROME2") == original.monochrome
    # Lossy history is kept (JPEG Baseline / near-lossless sources).
    syntax = original.dataset.file_meta.TransferSyntaxUID
    if syntax in ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.81") or original.dataset.get("LossyImageCompression") == "01":
        assert ds.LossyImageCompression == "01" and ds.LossyImageCompressionMethod
    else:
        assert ds.get("LossyImageCompression") in (None, "00")
    if dciodvfy_available():
        added = _errors(out / row["output"]) - _errors(src / name, tmp_path)
        assert not added, f"{name}: the derived instance adds dciodvfy errors: {sorted(added)}"


def test_corpus_summary_lists_every_refusal(corpus_run):
    _, _, rows, summary = corpus_run
    refused = {f["image"] for f in summary["failures"]}
    assert refused == {n for n, e in CORPUS_EXPECTED.items() if e != "protected"}
    assert summary["exit_code"] == 1


SEALED = bytes(range(37))  # an odd length: the OB value gets a padding byte


def _protected_copy(name: str, tmp_path: Path, encoding: str = "explicit") -> tuple[Path, np.ndarray]:
    fd = read_fundus_dicom(CORPUS / name)
    pixels = fd.pixels.copy()
    pixels[10:20, 30:50] = 255
    tags = MedlockerTags(params={"format": "medlocker-public/1", "marks": [{"box_xyxy": [30, 10, 50, 20]}]},
                         source_sop_instance_uid=fd.dataset.SOPInstanceUID, sealed_record=SEALED)
    out = tmp_path / f"{Path(name).stem}.{encoding}.dcm"
    save_dicom(out, derive_protected_dataset(fd.dataset, pixels, tags, encoding=encoding))
    return out, pixels


@pytest.mark.parametrize("encoding", ["explicit", "rle", "jpeg-ls"])
def test_lossless_encodings_round_trip_exactly(tmp_path, encoding):
    out, pixels = _protected_copy("SC_rgb_jpeg_dcmtk.dcm", tmp_path, encoding)
    back = read_fundus_dicom(out)
    assert np.array_equal(back.pixels, pixels)
    tags = read_medlocker_tags(back.dataset)
    assert tags.sealed_record == SEALED and tags.version == "medlocker-dicom/2" and tags.wsm_boxes == []
    expected = {"explicit": "1.2.840.10008.1.2.1", "rle": "1.2.840.10008.1.2.5", "jpeg-ls": "1.2.840.10008.1.2.4.80"}
    assert back.dataset.file_meta.TransferSyntaxUID == expected[encoding]


def test_lossy_output_is_refused():
    fd = read_fundus_dicom(CORPUS / "SC_rgb_rle.dcm")
    with pytest.raises(ValueError, match="lossless only"):
        derive_protected_dataset(fd.dataset, fd.pixels, MedlockerTags(params={}), encoding="jpeg-baseline")


def test_private_block_survives_implicit_vr_rewrite(tmp_path):
    out, _ = _protected_copy("SC_rgb_rle.dcm", tmp_path)
    ds = pydicom.dcmread(out)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    implicit = tmp_path / "implicit.dcm"
    ds.save_as(implicit, enforce_file_format=True)
    back = pydicom.dcmread(implicit)
    tags = read_medlocker_tags(back)
    assert tags.params["marks"][0]["box_xyxy"] == [30, 10, 50, 20]
    assert tags.sealed_record == SEALED


def test_lesion_boxes_are_never_written_in_clear_and_format_1_blocks_still_read():
    ds = pydicom.dcmread(CORPUS / "SC_rgb_rle.dcm")
    with pytest.raises(PrivateTagError, match="never with lesion boxes in clear"):
        write_medlocker_tags(ds, MedlockerTags(params={"a": 1}, wsm_boxes=[(0, 0, 5, 5)]))
    # A block an earlier version wrote (format 1: the record and the WSM boxes in clear) is read as it was.
    old = pydicom.dcmread(CORPUS / "SC_rgb_rle.dcm")
    block = old.private_block(0x0011, "MEDLOCKER 1", create=True)
    block.add_new(0x01, "LO", "medlocker-dicom/1")
    block.add_new(0x02, "UT", json.dumps({"format": "medlocker-params/1", "marks": []}))
    block.add_new(0x03, "UL", [0, 0, 5, 5, 60, 60, 70, 80])
    tags = read_medlocker_tags(old)
    assert tags.version == "medlocker-dicom/1" and tags.wsm_boxes == [(0, 0, 5, 5), (60, 60, 70, 80)]
    assert tags.params["format"] == "medlocker-params/1" and tags.sealed_record is None


@pytest.mark.parametrize("length", [39, 40])
def test_odd_length_payload_survives_the_even_length_padding(tmp_path, length):
    ds = pydicom.dcmread(CORPUS / "SC_rgb_rle.dcm")
    payload = bytes(range(length))
    sealed = bytes(range(length + 1, 0, -1))
    write_medlocker_tags(ds, MedlockerTags(params={"a": 1}, certificate={"c": 1}, signature=b"s" * 64, restore_payload=payload,
                                           sealed_record=sealed))
    ds.save_as(tmp_path / "p.dcm")
    back = read_medlocker_tags(pydicom.dcmread(tmp_path / "p.dcm"))
    assert back.restore_payload == payload and back.signature == b"s" * 64 and back.sealed_record == sealed


def test_private_block_reader_rejects_wrong_version_and_absent_block(tmp_path):
    ds = pydicom.dcmread(CORPUS / "SC_rgb_rle.dcm")
    assert read_medlocker_tags(ds) is None
    with pytest.raises(PrivateTagError, match="only medlocker-dicom/2"):
        write_medlocker_tags(ds, MedlockerTags(params={"a": 1}, version="medlocker-dicom/99"))
    write_medlocker_tags(ds, MedlockerTags(params={"a": 1}))
    ds.private_block(0x0011, "MEDLOCKER 1")[0x01].value = "medlocker-dicom/99"  # a block of a later version
    with pytest.raises(PrivateTagError, match="medlocker-dicom/99"):
        read_medlocker_tags(ds, "x.dcm")
    write_medlocker_tags(ds, MedlockerTags(params={"a": 2}))  # rewriting replaces the block
    assert read_medlocker_tags(ds).params == {"a": 2}


def test_monochrome_two_is_refused_as_monochrome_one(tmp_path):
    ds = pydicom.dcmread(CORPUS / "image_dfl.dcm")
    ds.PhotometricInterpretation = "MONOCHROME1"
    path = tmp_path / "mono1.dcm"
    ds.save_as(path)
    with pytest.raises(DicomReadError, match="MONOCHROME1"):
        read_fundus_dicom(path)


def test_undecodable_transfer_syntax_is_named(tmp_path):
    ds = pydicom.dcmread(CORPUS / "SC_rgb_jpeg_dcmtk.dcm")
    frames = list(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = pydicom.encaps.encapsulate([frames[0][: len(frames[0]) // 8]])  # truncated JPEG stream
    path = tmp_path / "broken_jpeg.dcm"
    ds.save_as(path)
    with pytest.raises(DicomReadError, match=r"broken_jpeg\.dcm: pixel data in JPEG Baseline"):
        read_fundus_dicom(path)


def test_protecting_a_protected_instance_is_refused(tmp_path, tiny_surrogate):
    out, _ = _protected_copy("examples_rgb_color.dcm", tmp_path / "made")
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(out, src / "again.dcm")
    Image.fromarray(np.zeros((240, 320), np.uint8)).save(src / "again_lesions.png")
    summary = DatasetProtector(src, tmp_path / "out", tiny_surrogate, lesion_segmenter="masks", progress=False).run()
    assert summary["protected"] == 0 and "already a MedLocker-protected instance" in summary["failures"][0]["error"]


def test_load_transform_keeps_the_source_dataset():
    d = LoadFundusImaged("image")({"image": str(CORPUS / "SC_rgb_jpeg_dcmtk.dcm")})
    img = d["image"]
    assert tuple(img.shape) == (3, 100, 100)
    assert img.meta["source_dataset"].SOPInstanceUID == pydicom.dcmread(CORPUS / "SC_rgb_jpeg_dcmtk.dcm").SOPInstanceUID
    assert img.meta["monochrome"] is False
    # Same pixels as pydicom's own RGB conversion, in rows x columns order (MONAI's PydicomReader swaps them).
    ref = pydicom.dcmread(CORPUS / "SC_rgb_jpeg_dcmtk.dcm").pixel_array
    assert np.array_equal(np.asarray(img).transpose(1, 2, 0), ref)


def test_protected_dicom_output_never_replaces_input(tmp_path, tiny_surrogate):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(CORPUS / "examples_rgb_color.dcm", src / "a.dcm")
    Image.fromarray(np.zeros((240, 320), np.uint8)).save(src / "a_lesions.png")
    before = (src / "a.dcm").read_bytes()
    out = tmp_path / "out"
    DatasetProtector(src, out, tiny_surrogate, lesion_segmenter="masks", progress=False,
                     watermark={"max_queries": 4}).run()
    assert (src / "a.dcm").read_bytes() == before and (public_dir(out) / "a.dcm").is_file()
    assert os.path.getsize(record_file(out, "a.dcm")) > 0


@pytest.mark.parametrize("transfer_syntax,monochrome", [("explicit", False), ("jpeg-baseline", False), ("rle", True)])
def test_conformant_op8_stays_conformant(tmp_path, tiny_surrogate, transfer_syntax, monochrome):
    """A fully conformant Ophthalmic Photography 8 Bit input gives a derived instance with no dciodvfy error."""
    from monai_medlocker.data.synthetic import synthesize_fundus
    from monai_medlocker.io.dicom_build import fundus_dataset

    rgb = synthesize_fundus(192, seed=4, grade=2).image
    src = tmp_path / "in"
    src.mkdir()
    ds = fundus_dataset(rgb[..., 1] if monochrome else rgb, iod="op8", transfer_syntax=transfer_syntax)
    ds.save_as(src / "op8.dcm", enforce_file_format=True)
    if dciodvfy_available():
        assert run_dciodvfy(src / "op8.dcm").errors == []
    Image.fromarray(np.zeros(rgb.shape[:2], np.uint8)).save(src / "op8_lesions.png")
    out = tmp_path / "out"
    summary = DatasetProtector(src, out, tiny_surrogate, lesion_segmenter="masks", progress=False,
                               watermark={"max_queries": 6}).run()
    assert summary["protected"] == 1, summary
    derived = pydicom.dcmread(public_dir(out) / "op8.dcm")
    assert list(derived.ImageType)[:2] == ["DERIVED", "PRIMARY"] and derived.ImageType[2]
    assert derived.PhotometricInterpretation == ("MONOCHROME2" if monochrome else "RGB")
    if transfer_syntax == "jpeg-baseline":
        assert derived.LossyImageCompression == "01" and derived.LossyImageCompressionMethod == "ISO_10918_1"
    if monochrome:
        assert read_medlocker_tags(derived).params["logo_rendering"] == "greyscale"
    if dciodvfy_available():
        report = run_dciodvfy(public_dir(out) / "op8.dcm")
        assert report.errors == [], report.output


def test_ci_has_the_dicom_validator():
    """Where CI asks for it (MEDLOCKER_REQUIRE_DCIODVFY=1), the dciodvfy checks above must really run."""
    if os.environ.get("MEDLOCKER_REQUIRE_DCIODVFY") != "1":
        pytest.skip("MEDLOCKER_REQUIRE_DCIODVFY is not set (only .ci/run sets it)")
    assert dciodvfy_available(), "dciodvfy (Debian dicom3tools) is required here but not installed"


@pytest.mark.parametrize("keyed", [False, True])
def test_uid_named_dicom_files_and_shared_output_names(tmp_path, tiny_surrogate, keyed):
    """PACS exports name files by UID: each is found and keeps its whole name. a.png + a.dcm have their own
    records (the input's suffix is in the record's name), but with an owner key one public sidecar: refused."""
    from monai_medlocker.certify.keys import generate_owner_key

    src = tmp_path / "in"
    src.mkdir()
    for name in ("1.2.826.0.1.3680043.8.498.4", "1.2.826.0.1.3680043.8.498.5"):
        shutil.copy(CORPUS / "examples_rgb_color.dcm", src / name)
        Image.fromarray(np.zeros((240, 320), np.uint8)).save(src / f"{name}_lesions.png")
    shutil.copy(CORPUS / "examples_rgb_color.dcm", src / "eye.dcm")
    Image.fromarray(np.zeros((240, 320, 3), np.uint8) + 90).save(src / "eye.png")
    Image.fromarray(np.zeros((240, 320), np.uint8)).save(src / "eye_lesions.png")
    out = tmp_path / "out"
    summary = DatasetProtector(src, out, tiny_surrogate, lesion_segmenter="masks", progress=False,
                               watermark={"max_queries": 4}, owner_key=generate_owner_key() if keyed else None).run()
    rows = {r["image"]: r for r in manifest_rows(out)}
    assert rows["1.2.826.0.1.3680043.8.498.4"]["output"] == "public/1.2.826.0.1.3680043.8.498.4.dcm"
    assert rows["1.2.826.0.1.3680043.8.498.5"]["output"] == "public/1.2.826.0.1.3680043.8.498.5.dcm"
    assert read_record(out, "1.2.826.0.1.3680043.8.498.4")["source"]["file"] == "1.2.826.0.1.3680043.8.498.4"
    if keyed:
        assert [r["status"] for n, r in sorted(rows.items()) if n.startswith("eye")] == ["protected", "failed"]
        assert "same output or record name" in rows["eye.png"]["error"] and summary["exit_code"] == 1
        assert not (public_dir(out) / "eye.png").exists()
        assert json.loads(sidecar_file(out, "eye").read_text())["certificate"]["image_id"].startswith(
            pydicom.dcmread(src / "eye.dcm").SOPInstanceUID + "#")
    else:  # nothing shared: both protected, each with its own record
        assert [r["status"] for n, r in sorted(rows.items()) if n.startswith("eye")] == ["protected", "protected"]
        assert summary["exit_code"] == 0
        assert read_record(out, "eye.png")["source"]["file"] == "eye.png"
        assert read_record(out, "eye.dcm")["source"]["file"] == "eye.dcm"


def test_missing_sop_instance_uid_is_named(tmp_path):
    ds = pydicom.dcmread(CORPUS / "SC_rgb_rle.dcm")
    del ds.SOPInstanceUID
    del ds.file_meta.MediaStorageSOPInstanceUID
    ds.save_as(tmp_path / "anonymous.dcm")
    with pytest.raises(DicomReadError, match=r"anonymous\.dcm: no SOPInstanceUID"):
        read_fundus_dicom(tmp_path / "anonymous.dcm")


@pytest.mark.parametrize("keyed", [False, True])
def test_resumed_run_does_not_take_another_images_record_or_sidecar(tmp_path, tiny_surrogate, keyed):
    from monai_medlocker.certify.keys import generate_owner_key

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.fromarray(np.zeros((240, 320, 3), np.uint8) + 90).save(src / "eye.png")
    Image.fromarray(np.zeros((240, 320), np.uint8)).save(src / "eye_lesions.png")
    settings = dict(lesion_segmenter="masks", progress=False, watermark={"max_queries": 4},
                    owner_key=generate_owner_key() if keyed else None)
    assert DatasetProtector(src, out, tiny_surrogate, **settings).run()["protected"] == 1
    record_before = record_file(out, "eye.png").read_bytes()
    sidecar_before = sidecar_file(out, "eye").read_bytes() if keyed else None
    shutil.copy(CORPUS / "examples_rgb_color.dcm", src / "eye.dcm")  # added later, same stem
    DatasetProtector(src, out, tiny_surrogate, **settings).run()
    rows = {r["image"]: r for r in manifest_rows(out)}
    assert rows["eye.png"]["status"] == "already-done" and record_file(out, "eye.png").read_bytes() == record_before
    if keyed:  # eye.dcm would replace eye.png's public sidecar
        assert rows["eye.dcm"]["status"] == "failed" and "is the public sidecar of another image" in rows["eye.dcm"]["error"]
        assert not (public_dir(out) / "eye.dcm").exists() and not record_file(out, "eye.dcm").exists()
        assert sidecar_file(out, "eye").read_bytes() == sidecar_before
    else:  # its own record and output: nothing of eye.png's is taken
        assert rows["eye.dcm"]["status"] == "protected" and read_record(out, "eye.dcm")["source"]["file"] == "eye.dcm"
        assert not list(public_dir(out).glob("*.medlocker.json"))


def test_garbled_private_element_is_a_clear_error(tmp_path):
    """Found by the fuzzer: an element of group 0x0011 with an unknown VR raised pydicom's NotImplementedError."""
    ds = pydicom.dcmread(CORPUS / "SC_rgb_rle.dcm")
    write_medlocker_tags(ds, MedlockerTags(params={"a": 1}, certificate={"c": 1}, signature=b"s" * 64,
                                           restore_payload=b"p" * 8, sealed_record=b"r" * 8))
    ds.save_as(tmp_path / "ok.dcm", implicit_vr=False, little_endian=True)
    data = (tmp_path / "ok.dcm").read_bytes()
    element = b"\x11\x00\x15\x10UL"  # (0011,1015) UL: the sealed record's length
    assert data.count(element) == 1
    (tmp_path / "bad.dcm").write_bytes(data.replace(element, b"\x11\x00\x15\x10U\xad"))
    garbled = pydicom.dcmread(tmp_path / "bad.dcm")
    with pytest.raises(PrivateTagError, match=r"bad\.dcm: unreadable element in private group 0x0011"):
        read_medlocker_tags(garbled, str(tmp_path / "bad.dcm"))


def test_header_digest_is_the_same_in_explicit_and_implicit_vr_and_names_changes(tmp_path):
    """Issue 18 item 9: the signed header digest reads the values as stored, whatever the VR encoding."""
    from pydicom.uid import ImplicitVRLittleEndian

    from monai_medlocker.data.synthetic import synthesize_fundus
    from monai_medlocker.io.dicom_build import fundus_dataset
    from monai_medlocker.io.dicom_header import dataset_header_digest, file_header_digest, header_changes

    ds = fundus_dataset(synthesize_fundus(128, seed=1, grade=1).image, iod="op8")
    signed = dataset_header_digest(ds)
    assert {"00200062", "00080060", "00080016", "00100020"} <= set(signed["elements"])  # laterality, modality, class, patient
    assert "7FE00010" not in signed["elements"] and "00280004" not in signed["elements"]
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(tmp_path / "implicit.dcm", enforce_file_format=True)
    assert file_header_digest(tmp_path / "implicit.dcm") == signed
    ds.ImageLaterality = "L"
    ds.AnatomicRegionSequence[0].CodeMeaning = "Eye"
    ds.save_as(tmp_path / "implicit.dcm", enforce_file_format=True)
    assert header_changes(signed, file_header_digest(tmp_path / "implicit.dcm")) == [
        "AnatomicRegionSequence changed", "ImageLaterality changed"]
