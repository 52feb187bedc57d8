"""Lesion sources for the WSM: the built-in detector, user masks (PNG/TIFF, NIfTI, DICOM SEG), the
``lesions`` and ``datalist`` commands, dataset layout converters and the trainable segmenter."""

from __future__ import annotations

import csv
import functools
import importlib.util
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from monai.data import MetaTensor
from monai_medlocker.cli import main
from monai_medlocker.data.layouts import aptos_datalist, eyepacs_datalist, idrid_datalist
from monai_medlocker.data.synthetic import LESION_TYPES, sample_seed, synthesize_fundus
from monai_medlocker.io.image import load_mask, load_rgb
from monai_medlocker.lesions import (
    BuiltinLesionDetector,
    BuiltinLesionDetectord,
    EmptyImageError,
    MaskFormatError,
    NoFieldOfViewError,
    detect_lesions,
    find_mask_files,
    lesion_bboxes,
    lesion_type_of,
    load_lesion_masks,
    wsm_from_boxes,
)
from monai_medlocker.transforms.dictionary import LesionBBoxMaskd

REPO = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


@functools.lru_cache(maxsize=None)
def _graded_samples(lab_version: int) -> tuple:
    # Grades 2-4 at 512 px: every lesion type, flame and pre-retinal haemorrhages included.
    return tuple(synthesize_fundus(512, seed, grade, lab_version=lab_version)
                 for seed, grade in ((11, 3), (12, 4), (13, 2)))


@pytest.fixture(scope="module")
def samples():
    return list(_graded_samples(1))  # lab v1: the detector was tuned on it


def _object_recall(masks: np.ndarray, wsm: np.ndarray) -> tuple[int, int]:
    found = total = 0
    for channel in masks:
        labels, n = ndimage.label(channel, structure=np.ones((3, 3)))
        for i, sl in enumerate(ndimage.find_objects(labels), start=1):
            total += 1
            found += bool(wsm[sl][labels[sl] == i].all())
    return found, total


def _gt(sample) -> np.ndarray:
    return np.stack([sample.masks[t] for t in LESION_TYPES])


# --------------------------------------------------------------------------------------- detector


@pytest.mark.parametrize("lab_version", [1, 2])
def test_detector_finds_synthetic_lesions_with_high_recall(lab_version):
    # Lab v2 adds camera artefacts and look-alikes; the same thresholds hold there (measured: all 3 images pass,
    # recall 290/293 over 6 such v2 images against 293/293 on v1).
    found = total = 0
    for s in _graded_samples(lab_version):
        probs, report = detect_lesions(s.image)
        assert probs.shape == (4,) + s.image.shape[:2] and probs.dtype == np.float32
        assert 0.0 <= probs.min() and probs.max() <= 1.0
        boxes, _ = lesion_bboxes(probs, 0.5, 1, 2)
        wsm = wsm_from_boxes(boxes, s.image.shape[:2])
        f, t = _object_recall(_gt(s), wsm)
        found, total = found + f, total + t
        assert wsm.mean() <= 0.35, f"WSM covers {wsm.mean():.2f} of the image"
        assert report["confidence"] > 0.7 and report["fov_fraction"] > 0.5
        # the optic disc is located within a disc radius of the truth
        dx, dy = s.meta["disc_center"]
        assert np.hypot(report["disc_center"][0] - dx, report["disc_center"][1] - dy) < s.meta["disc_radius"] * 1.5
    assert total > 50
    assert found / total >= 0.97, f"object recall {found}/{total}"


def test_detector_on_a_lesion_free_image_gives_a_small_wsm():
    s = synthesize_fundus(512, 5, grade=0, lab_version=1)
    probs, _ = detect_lesions(s.image)
    boxes, _ = lesion_bboxes(probs, 0.5, 1, 2)
    assert wsm_from_boxes(boxes, s.image.shape[:2]).mean() < 0.2


def test_detector_on_lesion_free_lab_v2_images_gives_a_small_wsm():
    """Lab v2's look-alikes (drusen, pigment, dust, eyelashes) draw some false boxes; measured on seeds 5-8:
    WSM fractions 0.27, 0.11, 0.14, 0.17 (v1, same seeds: 0.20, 0.17, 0.20, 0.19)."""
    fractions = []
    for seed in range(5, 9):
        s = synthesize_fundus(512, seed, grade=0, lab_version=2)
        probs, _ = detect_lesions(s.image)
        boxes, _ = lesion_bboxes(probs, 0.5, 1, 2)
        fractions.append(wsm_from_boxes(boxes, s.image.shape[:2]).mean())
    assert max(fractions) < 0.3 and np.mean(fractions) < 0.2, fractions


def test_array_and_dict_transforms_feed_lesion_bbox_mask(samples):
    s = samples[2]
    img = MetaTensor(torch.from_numpy(s.image.transpose(2, 0, 1).copy()), meta={"filename_or_obj": "x.png"})
    detector = BuiltinLesionDetector()
    out = detector(img)
    assert isinstance(out, MetaTensor) and out.shape == (4, 512, 512) and out.dtype == torch.float32
    assert out.meta["filename_or_obj"] == "x.png" and out.meta["lesion_channels"] == ["MA", "HE", "EX", "SE"]
    assert detector.last_report["confidence"] == out.meta["lesion_report"]["confidence"]
    as_numpy = detector(s.image.transpose(2, 0, 1))
    assert isinstance(as_numpy, np.ndarray) and np.array_equal(as_numpy, out.numpy())

    chain = [BuiltinLesionDetectord("image", "lesions"), LesionBBoxMaskd("lesions", wsm_key="wsm", margin=2)]
    d = {"image": img}
    for t in chain:
        d = t(d)
    wsm = np.asarray(d["wsm"])[0]
    assert "confidence" in d["lesion_report"]
    f, t = _object_recall(_gt(s), wsm)
    assert f / t >= 0.95


def test_empty_and_non_fundus_images_are_errors():
    with pytest.raises(EmptyImageError, match="no pixels"):
        detect_lesions(np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(EmptyImageError, match="black"):
        detect_lesions(np.zeros((200, 200, 3), np.uint8))
    with pytest.raises(NoFieldOfViewError, match="uniform"):
        detect_lesions(np.full((200, 300, 3), 128, np.uint8))
    noise = np.random.default_rng(0).integers(60, 255, (200, 200, 3), dtype=np.uint8)
    with pytest.raises(NoFieldOfViewError, match="dark surround"):
        detect_lesions(noise)
    with pytest.raises(ValueError, match="working_size"):
        detect_lesions(np.full((64, 64, 3), 9, np.uint8) + 1, working_size=50)
    assert issubclass(NoFieldOfViewError, ValueError) and issubclass(EmptyImageError, ValueError)


def test_small_pupil_shading_is_not_boxed_as_a_haemorrhage():
    """A small-pupil shadow (lab v2) darkens the whole periphery; it fades over tens of px, a haemorrhage's
    edge within a few. Before the edge-width check it became one box over 94% of this image."""
    s = synthesize_fundus(512, sample_seed(777, 35), grade=0, lab_version=2)
    assert s.meta["artefacts"]["small_pupil"]
    probs, _ = detect_lesions(s.image)
    boxes, _ = lesion_bboxes(probs, 0.5, 1, 2)
    assert wsm_from_boxes(boxes, s.image.shape[:2]).mean() < 0.35


def _bench_lesions():
    spec = importlib.util.spec_from_file_location("bench_lesions", REPO / "benchmarks" / "bench_lesions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_real_photograph_small_wsm_and_every_painted_lesion_found():
    """The CC0 photograph (a normal eye): WSM <= 20% of the image (was 27%, measured 18%); with 30 lab lesions
    of all five kinds painted on it, each lies wholly inside the WSM (measured WSM 21%: the lesions' own boxes
    add to it)."""
    bench = _bench_lesions()
    real = load_rgb(REPO / "monai_medlocker" / "assets" / "retina_skimage.png")
    settings = {"lesion_threshold": 0.5, "lesion_min_size": 1, "wsm_margin": 2, "wsm_margin_fraction": 0.0}
    wsm, _, _ = bench.build_wsm(detect_lesions(real)[0], settings)
    assert wsm.mean() <= 0.2
    painted, masks, kinds = bench.paint_lesions(real, seed=0)
    assert len(masks) == 30 and set(kinds) == {"microaneurysm", "blot", "flame", "hard_exudate", "cotton_wool"}
    wsm, _, _ = bench.build_wsm(detect_lesions(painted)[0], settings)
    missed = [k for k, m in zip(kinds, masks) if not wsm[m].all()]
    assert not missed, missed
    assert wsm.mean() <= 0.25


def test_lookalike_measure_finds_the_lookalikes_and_counts_boxed_ones():
    """bench_lesions --lookalikes: the look-alikes are what differs from the render without them; one counts as
    boxed when the WSM (outside the lesions' own WSM) holds half of it."""
    bench = _bench_lesions()
    settings = {"lesion_threshold": 0.5, "lesion_min_size": 1, "wsm_margin": 2, "wsm_margin_fraction": 0.0}
    seed = next(sample_seed(41, i) for i in range(60)
                if synthesize_fundus(256, sample_seed(41, i), grade=0, lab_version=2).meta["lookalikes"]["drusen"])
    s = synthesize_fundus(256, seed, grade=0, lab_version=2)
    gt = np.stack([s.masks[t] for t in LESION_TYPES])
    def measure(detect):  # the benchmark passes the detector's WSM of the image it already built
        return bench.lookalikes_of(s, seed, gt, settings, detect, 256, bench.build_wsm(detect(s.image)[0], settings)[0])

    nothing = measure(lambda img: (np.zeros((4, *img.shape[:2]), bool), {}))
    assert nothing["objects"] > 0 and nothing["boxed"] == 0 and nothing["wsm_area_added"] == 0
    everything = measure(lambda img: (np.ones((4, *img.shape[:2]), bool), {}))
    assert everything["boxed"] == everything["objects"]
    labels, n = bench.lookalike_objects(s.image, s.image)
    assert n == 0 and not labels.any()


def test_low_confidence_is_reported_not_hidden():
    # A bright rectangle on black: a "field of view", but square and grey, so not a fundus.
    img = np.zeros((300, 300, 3), np.uint8)
    img[30:270, 30:270] = 140
    img[100:110, 100:110] = 60
    _, report = detect_lesions(img)
    assert report["confidence"] < 0.5
    assert any("rectangular" in w for w in report["warnings"])
    assert any("red-dominant" in w for w in report["warnings"])


# --------------------------------------------------------------------------------------- user masks


def test_idrid_png_and_tiff_masks(tmp_path):
    ma = np.zeros((40, 50), np.uint8)
    ma[5:7, 5:7] = 255
    he = np.zeros((40, 50, 3), np.uint8)
    he[20:30, 10:20, 0] = 255  # IDRiD's TIFF masks are RGB with the lesion in red
    Image.fromarray(ma).save(tmp_path / "IDRiD_01_MA.png")
    Image.fromarray(he).save(tmp_path / "IDRiD_01_HE.tif")
    masks = load_lesion_masks([tmp_path / "IDRiD_01_MA.png", tmp_path / "IDRiD_01_HE.tif"], (40, 50))
    assert masks.shape == (4, 40, 50) and masks.dtype == bool
    assert masks[0].sum() == 4 and masks[1].sum() == 100 and not masks[2:].any()
    assert lesion_type_of("IDRiD_01_SE.tif") == "SE" and lesion_type_of("a_lesions.png") == "ALL"
    assert lesion_type_of("3. Hard Exudates") == "EX" and lesion_type_of("photo.png") is None
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "IDRiD_01.png")
    assert {p.name for p in find_mask_files(tmp_path / "IDRiD_01.png")} == {"IDRiD_01_MA.png", "IDRiD_01_HE.tif"}


def test_mask_size_mismatch_and_bad_files_name_the_file(tmp_path):
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(tmp_path / "a_MA.png")
    with pytest.raises(MaskFormatError, match=r"a_MA\.png.*40x30 px.*50x40 px"):
        load_lesion_masks(tmp_path / "a_MA.png", (40, 50))
    (tmp_path / "b_HE.png").write_bytes(b"not an image")
    with pytest.raises(MaskFormatError, match=r"b_HE\.png: not a readable mask"):
        load_lesion_masks(tmp_path / "b_HE.png")
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(tmp_path / "mystery.png")
    with pytest.raises(MaskFormatError, match="mystery.png: cannot tell which lesion type"):
        load_lesion_masks([tmp_path / "a_MA.png", tmp_path / "mystery.png"])
    (tmp_path / "c.txt").write_text("x")
    with pytest.raises(MaskFormatError, match="unsupported mask file type"):
        load_lesion_masks(tmp_path / "c.txt")
    with pytest.raises(FileNotFoundError):
        load_lesion_masks(tmp_path / "none_MA.png")


def test_nifti_masks(tmp_path):
    rows, cols = 20, 30
    stack = np.zeros((cols, rows, 4), np.uint8)  # NIfTI is (x, y, type)
    stack[3:6, 2:4, 0] = 1  # MA at x 3..5, y 2..3
    stack[10:20, 12:15, 2] = 1
    nib.save(nib.Nifti1Image(stack, np.eye(4)), tmp_path / "img.nii.gz")
    masks = load_lesion_masks(tmp_path / "img.nii.gz", (rows, cols))
    assert masks.shape == (4, rows, cols)
    assert masks[0, 2:4, 3:6].all() and masks[0].sum() == 6 and masks[2].sum() == 30 and not masks[1].any()
    labels = np.zeros((cols, rows), np.int16)
    labels[1, 1], labels[5, 5] = 2, 4  # a label map: 1..4 = MA, HE, EX, SE
    nib.save(nib.Nifti1Image(labels, np.eye(4)), tmp_path / "lab.nii")
    lm = load_lesion_masks(tmp_path / "lab.nii", (rows, cols))
    assert lm[1, 1, 1] and lm[3, 5, 5] and lm.sum() == 2
    with pytest.raises(MaskFormatError, match=r"lab\.nii.*30x20"):
        load_lesion_masks(tmp_path / "lab.nii", (30, 20))


def _source_dicom(rows: int, cols: int):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # secondary capture
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "P1", "Test^Fundus", "", "O"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName = "20240101", "120000", "", ""
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber, ds.Modality = "1", 1, 1, "OP"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.zeros((rows, cols), np.uint8).tobytes()
    return ds


def test_dicom_seg_masks(tmp_path):
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    rows, cols = 20, 30
    pixels = np.zeros((1, rows, cols, 2), bool)
    pixels[0, 2:5, 3:6, 0] = True
    pixels[0, 10:15, 20:25, 1] = True
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i + 1, segment_label=label,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for i, label in enumerate(["Haemorrhages", "EX"])
    ]
    seg = hd.seg.Segmentation(
        source_images=[_source_dicom(rows, cols)], pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=generate_uid(), series_number=2, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer="MedLocker", manufacturer_model_name="test", software_versions="0", device_serial_number="1")
    seg.save_as(tmp_path / "img_seg.dcm")
    _source_dicom(rows, cols).save_as(tmp_path / "img.dcm", enforce_file_format=True)
    from monai_medlocker.workflows.protect import find_protect_items

    items = find_protect_items(tmp_path)  # the SEG is the image's mask, never an image to protect
    assert [(i.image.name, [m.name for m in i.masks]) for i in items] == [("img.dcm", ["img_seg.dcm"])]
    masks = load_lesion_masks(tmp_path / "img_seg.dcm", (rows, cols))
    assert masks.shape == (4, rows, cols)
    assert masks[1].sum() == 9 and masks[1, 2:5, 3:6].all()  # "Haemorrhages" -> HE
    assert masks[2].sum() == 25 and not masks[0].any() and not masks[3].any()
    with pytest.raises(MaskFormatError, match=r"img_seg\.dcm.*30x20 px.*31x20 px"):
        load_lesion_masks(tmp_path / "img_seg.dcm", (rows, cols + 1))
    _source_dicom(rows, cols).save_as(tmp_path / "not_seg.dcm", enforce_file_format=True)
    with pytest.raises(MaskFormatError, match=r"not_seg\.dcm: not a readable DICOM SEG"):
        load_lesion_masks(tmp_path / "not_seg.dcm")


# --------------------------------------------------------------------------------------- CLI


def test_cli_lesions_writes_masks_and_wsm(tmp_path, samples, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    s = samples[0]
    Image.fromarray(s.image).save(src / "eye.png")
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(src / "grey.png")
    assert main(["lesions", str(src), str(out), "--quiet"]) == 1  # grey.png fails, eye.png is done
    wsm = load_mask(out / "eye_wsm.png", s.image.shape[:2])
    f, t = _object_recall(_gt(s), wsm)
    record = json.loads((out / "eye_lesions.json").read_text())
    lesion_boxes = [b for b, k in zip(record["wsm_boxes"], record["wsm_box_types"]) if k != "anatomy"]
    assert f / t >= 0.95 and wsm_from_boxes(np.asarray(lesion_boxes), s.image.shape[:2]).mean() <= 0.35
    # The WSM protect would use: the disc and macula zones too.
    assert [z["name"] for z in record["anatomy"]["zones"]] == ["optic_disc", "macula"]
    assert record["wsm_box_types"].count("anatomy") == 2
    for typ in LESION_TYPES:
        assert (out / f"eye_{typ}.png").is_file()
    assert record["lesion_source"] == "builtin" and record["settings"]["wsm_margin"] == 2  # inference.json's
    summary = json.loads((out / "lesions_summary.json").read_text())
    assert summary["failures"][0]["image"] == "grey.png" and "grey.png" in summary["failures"][0]["error"]
    assert "no field of view" in summary["failures"][0]["error"]
    assert "FAILED grey.png" in capsys.readouterr().out
    # With masks beside the image they win (as in protect), and "masks" mode rejects unmasked images.
    for typ in LESION_TYPES:
        Image.fromarray((s.masks[typ] * 255).astype(np.uint8)).save(src / f"eye_{typ}.png")
    (src / "grey.png").unlink()
    out2 = tmp_path / "out2"
    assert main(["lesions", str(src), str(out2), "--quiet", "--lesion-segmenter", "masks", "--wsm-margin", "0"]) == 0
    record = json.loads((out2 / "eye_lesions.json").read_text())
    assert record["lesion_source"] == "masks"
    boxes, _ = lesion_bboxes(_gt(s), margin=0)
    zones = [b for b, k in zip(record["wsm_boxes"], record["wsm_box_types"]) if k == "anatomy"]
    assert len(zones) == 2
    assert np.array_equal(load_mask(out2 / "eye_wsm.png"), wsm_from_boxes(np.concatenate([boxes, zones]), s.image.shape[:2]))


# --------------------------------------------------------------------------------------- layouts


def _jpeg(path: Path, size: int = 24) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), 100, np.uint8)).save(path)


def _csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def test_idrid_layout(tmp_path):
    root = tmp_path / "IDRiD"
    grading = root / "B. Disease Grading"
    for i in range(1, 7):
        _jpeg(grading / "1. Original Images" / "a. Training Set" / f"IDRiD_{i:03d}.jpg")
    _jpeg(grading / "1. Original Images" / "b. Testing Set" / "IDRiD_001.jpg")
    _csv(grading / "2. Groundtruths" / "a. IDRiD_Disease Grading_Training Labels.csv",
         ["Image name", "Retinopathy grade", "Risk of macular edema "], [[f"IDRiD_{i:03d}", i % 5, 0] for i in range(1, 8)])
    _csv(grading / "2. Groundtruths" / "b. IDRiD_Disease Grading_Testing Labels.csv",
         ["Image name", "Retinopathy grade", "Risk of macular edema "], [["IDRiD_001", 3, 1]])
    seg = root / "A. Segmentation"
    for i in (1, 2):
        _jpeg(seg / "1. Original Images" / "a. Training Set" / f"IDRiD_{i:02d}.jpg")
    for folder, typ in (("1. Microaneurysms", "MA"), ("2. Haemorrhages", "HE"), ("4. Soft Exudates", "SE")):
        for i in (1, 2):
            if typ == "SE" and i == 2:
                continue  # IDRiD leaves some types out for some images
            _jpeg(seg / "2. All Segmentation Groundtruths" / "a. Training Set" / folder / f"IDRiD_{i:02d}_{typ}.tif")

    out = tmp_path / "lists" / "idrid.json"
    assert main(["datalist", "--layout", "idrid", str(root), str(out), "--val-fraction", "0.2"]) == 0
    data = json.loads(out.read_text())
    assert len(data["training"]) + len(data["validation"]) == 6 and len(data["test"]) == 1
    assert data["missing"] == ["IDRiD_007"]
    test_item = data["test"][0]
    assert test_item["label"] == 3 and test_item["referable"] == 1 and "Testing" in test_item["image"]
    assert (out.parent / test_item["image"]).is_file()

    seg_list = idrid_datalist(root, tmp_path, part="segmentation", val_fraction=0.0)
    items = {Path(i["image"]).stem: i for i in seg_list["training"]}
    assert set(items) == {"IDRiD_01", "IDRiD_02"}
    assert set(items["IDRiD_01"]) >= {"mask_MA", "mask_HE", "mask_SE"} and "mask_SE" not in items["IDRiD_02"]
    assert items["IDRiD_01"]["mask_MA"].endswith("IDRiD_01_MA.tif")


def test_aptos_and_eyepacs_layouts(tmp_path):
    aptos = tmp_path / "aptos"
    ids = [f"{i:04x}abcd" for i in range(10)]
    for i in ids:
        _jpeg(aptos / "train_images" / f"{i}.png")
    _csv(aptos / "train.csv", ["id_code", "diagnosis"], [[i, k % 5] for k, i in enumerate(ids)])
    _jpeg(aptos / "test_images" / "ffff.png")
    _csv(aptos / "test.csv", ["id_code"], [["ffff"]])
    data = aptos_datalist(aptos, aptos, val_fraction=0.2)
    assert len(data["training"]) == 8 and len(data["validation"]) == 2 and data["test"] == [{"image": "test_images/ffff.png"}]
    assert sorted(i["label"] for i in data["validation"]) == [] or all(0 <= i["label"] <= 4 for i in data["validation"])

    eyepacs = tmp_path / "eyepacs"
    names = [f"{k}_{side}" for k in range(6) for side in ("left", "right")]
    for n in names[:-1]:
        _jpeg(eyepacs / "train" / f"{n}.jpeg")
    _csv(eyepacs / "trainLabels.csv", ["image", "level"], [[n, k % 5] for k, n in enumerate(names)])
    out = tmp_path / "eyepacs.json"
    assert main(["datalist", "--layout", "eyepacs", str(eyepacs), str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["missing"] == [names[-1]]
    assert sum(len(data[s]) for s in ("training", "validation", "test")) == 11
    _csv(eyepacs / "trainLabels.csv", ["image", "grade"], [["x", 1]])
    with pytest.raises(ValueError, match="missing column"):
        eyepacs_datalist(eyepacs, eyepacs)
    _csv(aptos / "train.csv", ["id_code", "diagnosis"], [[ids[0], 7]])
    assert main(["datalist", "--layout", "aptos", str(aptos), str(tmp_path / "a.json")]) == 2  # grade 7: error


# --------------------------------------------------------------------------------------- trainable segmenter


def test_train_lesions_config_runs_end_to_end(tmp_path):
    from monai.bundle import ConfigParser

    from monai_medlocker.data.synthetic import generate_dataset
    from monai_medlocker.lesions.network import NetworkLesionDetector

    data = tmp_path / "data"
    generate_dataset(data, n=6, size=128, seed=3, split=(0.5, 0.5, 0.0), progress=False, lab_version=1)
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundle" / "configs" / "train_lesions.json"))
    parser.update({"bundle_root": str(REPO / "bundle"), "dataset_dir": str(data), "output_dir": str(tmp_path / "models"),
                   "epochs": 1, "input_size": 64, "batch_size": 2, "unet_channels": [4, 8, 16]})
    for key in ("initialize", "run", "finalize"):
        parser.get_parsed_content(key)  # evaluating the expressions runs the workflow
    ckpt = tmp_path / "models" / "lesion_segmenter.pt"
    assert ckpt.is_file()
    detector = NetworkLesionDetector(ckpt, input_size=64, channels=(4, 8, 16))
    image = np.asarray(Image.open(data / "images" / "synth_00000.png").convert("RGB"))
    probs, report = detector(image)
    assert probs.shape == (4, 128, 128) and probs.dtype == np.float32 and report["segmenter"] == "network"
    assert 0.0 < report["confidence"] <= 1.0 and isinstance(report["warnings"], list)
    with pytest.raises(ValueError, match="not a lesion segmenter checkpoint"):
        NetworkLesionDetector(ckpt, input_size=64)  # default channels differ from the trained ones


def test_network_confidence_surfaces_doubtful_maps():
    from monai_medlocker.lesions.network import network_confidence

    probs = np.zeros((4, 100, 100), np.float32)
    probs[1, 10:20, 10:20] = 0.9
    assert network_confidence(probs) == (1.0, [])
    faint = probs.copy()
    faint[0, 40:80, 40:80] = 0.3  # a large sub-threshold response: lesions the WSM may miss
    confidence, warnings = network_confidence(faint)
    assert confidence < 1.0 and "between 0.1 and 0.5" in warnings[0]
    flooded = np.full((4, 100, 100), 0.9, np.float32)
    confidence, warnings = network_confidence(flooded)
    assert confidence <= 0.5 and "100% of the image" in warnings[0]


def test_fill_holes_equals_scipy():
    """The detector's one-labelling hole filling gives scipy's binary_fill_holes, holes at the border included."""
    from scipy import ndimage

    from monai_medlocker.lesions.builtin import _fill_holes

    rng = np.random.default_rng(5)
    for density in (0.3, 0.5, 0.7, 0.9):
        mask = ndimage.binary_opening(rng.random((97, 131)) < density)
        assert np.array_equal(_fill_holes(mask), ndimage.binary_fill_holes(mask)), density
    ring = np.zeros((20, 20), bool)
    ring[3:17, 3:17] = True
    ring[6:14, 6:14] = False
    assert _fill_holes(ring)[6:14, 6:14].all() and not _fill_holes(ring)[0].any()


@pytest.mark.parametrize("mode", ["reflect", "nearest", "constant"])
def test_opencv_gaussian_equals_scipy(mode):
    """The detector's OpenCV Gaussian gives scipy's gaussian_filter: every derivative order the detector uses,
    each boundary mode, small and large sigmas (kernels wider than the image included), to float32 rounding."""
    from monai_medlocker.lesions.builtin import _gaussian

    rng = np.random.default_rng(11)
    img = ndimage.gaussian_filter(rng.standard_normal((61, 87)), 1.0).astype(np.float32)
    for sigma in (0.7, 1.9, 6.0, 30.0):
        for order in ((0, 0), (0, 2), (2, 0), (1, 1), (1, 0), (0, 1)):
            want = ndimage.gaussian_filter(img, sigma, order=order, mode=mode)
            got = _gaussian(img, sigma, order=order, mode=mode)
            assert got.dtype == np.float32 and got.shape == img.shape
            assert np.abs(got - want).max() <= 1e-5 * max(1.0, float(np.abs(want).max())), (sigma, order)


def test_windowed_median_equals_scipy():
    """The detector's median filter gives scipy's median_filter (mode nearest) exactly, across row blocks."""
    from monai_medlocker.lesions.builtin import _median

    rng = np.random.default_rng(12)
    for shape, size in (((128, 128), 11), ((64, 64), 15), ((300, 97), 41), ((5, 9), 7)):
        values = rng.random(shape).astype(np.float32)
        assert np.array_equal(_median(values, size), ndimage.median_filter(values, size=size, mode="nearest"))
