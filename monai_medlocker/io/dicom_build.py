"""Build source DICOM fundus instances: what a clinic's fundus camera would send to MedLocker.

:func:`fundus_dataset` turns one ``H x W x 3`` (colour) or ``H x W`` (monochrome, e.g. red-free) uint8
image into a complete DICOM Part 10 dataset (with ``file_meta``) of one of three SOP classes:

* ``"op8"``: Ophthalmic Photography 8 Bit Image Storage (``1.2.840.10008.5.1.4.1.1.77.1.5.1``), Modality OP,
  the IOD a fundus camera uses. Every module the IOD requires is filled in (Patient, General Study,
  General Series + Ophthalmic Photography Series, Synchronization, General Equipment, General Image,
  Image Pixel, Multi-frame, Ophthalmic Photography Image, Ocular Region Imaged, Ophthalmic Photography
  Acquisition Parameters, Ophthalmic Photographic Parameters, SOP Common) so that ``dciodvfy`` reports no
  error.
* ``"vl"``: VL Photographic Image Storage (``1.2.840.10008.5.1.4.1.1.77.1.4``), Modality XC, as exported by
  general-purpose cameras and some viewers.
* ``"sc"``: Secondary Capture Image Storage (``1.2.840.10008.5.1.4.1.1.7``), Modality OP, as produced by a
  workstation that re-captures the photograph (Conversion Type ``SYN``: the pixels are synthetic).

Transfer syntaxes: ``"explicit"`` (Explicit VR Little Endian), ``"implicit"`` (Implicit VR Little Endian),
``"rle"`` (RLE Lossless), ``"jpeg-ls"`` (JPEG-LS Lossless), ``"jpeg2000"`` (JPEG 2000 Lossless; colour is
stored with the reversible colour transform, Photometric Interpretation ``YBR_RCT``), all encoded with
pydicom 3's :meth:`~pydicom.dataset.Dataset.compress`; and ``"jpeg-baseline"`` (JPEG Baseline 8 bit, lossy),
encoded with Pillow and encapsulated with :func:`pydicom.encaps.encapsulate` (pydicom has no JPEG
Baseline encoder). Colour JPEG Baseline is stored as ``YBR_FULL_422`` (4:2:2 chroma subsampling) or
``YBR_FULL`` (no subsampling; not permitted by these IODs, see :func:`fundus_dataset`); lossy instances
carry Lossy Image Compression ``01`` with its ratio and method ``ISO_10918_1``.

Every combination of IOD, colour/monochrome and transfer syntax (except ``YBR_FULL``) passes ``dciodvfy``
(dicom3tools) with no error and no warning.

Everything is deterministic: the acquisition date/time has a fixed default, and the SOP Instance and Frame of
Reference UIDs are derived (:func:`pydicom.uid.generate_uid` with entropy sources, under pydicom's UID root)
from the study/series UIDs, the instance number, the SOP class and the pixel values. Only Study and Series
Instance UIDs left as ``None`` are random.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    PYDICOM_IMPLEMENTATION_UID,
    RLELossless,
    generate_uid,
)

__all__ = [
    "IODS",
    "SOP_CLASS_UIDS",
    "TRANSFER_SYNTAXES",
    "PHOTOMETRICS",
    "DEFAULT_ACQUISITION_DATETIME",
    "fundus_dataset",
    "write_fundus_study",
]

#: ``iod`` argument -> SOP Class UID.
SOP_CLASS_UIDS: dict[str, UID] = {
    "op8": UID("1.2.840.10008.5.1.4.1.1.77.1.5.1"),  # Ophthalmic Photography 8 Bit Image Storage
    "vl": UID("1.2.840.10008.5.1.4.1.1.77.1.4"),  # VL Photographic Image Storage
    "sc": UID("1.2.840.10008.5.1.4.1.1.7"),  # Secondary Capture Image Storage
}
IODS = tuple(SOP_CLASS_UIDS)

#: ``transfer_syntax`` argument -> Transfer Syntax UID.
TRANSFER_SYNTAXES: dict[str, UID] = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "rle": RLELossless,
    "jpeg-ls": JPEGLSLossless,
    "jpeg2000": JPEG2000Lossless,
    "jpeg-baseline": JPEGBaseline8Bit,
}

#: Accepted ``photometric`` values for colour input.
PHOTOMETRICS = ("RGB", "YBR_FULL_422", "YBR_FULL")

#: Default acquisition (and study/content) date-time: fixed so that output is reproducible.
DEFAULT_ACQUISITION_DATETIME = _dt.datetime(2024, 1, 15, 9, 30, 0)

_MODALITY = {"op8": "OP", "vl": "XC", "sc": "OP"}
_MANUFACTURER = "MedLocker"
_MODEL = "Synthetic Fundus Camera"
_SOFTWARE = "monai_medlocker.io.dicom_build"
_ISO_10918_1 = "ISO_10918_1"
_JPEG_QUALITY = 95


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


# Codes from the Ophthalmic Photography context groups (PS3.16).
_RETINA = ("5665001", "SCT", "Retina")  # CID 4209 Ophthalmic Anatomic Structure Imaged
_FUNDUS_CAMERA = ("409898007", "SCT", "Fundus Camera")  # CID 4202 Ophthalmic Photography Acquisition Device
_DIFFUSE_DIRECT = ("111625", "DCM", "Diffuse direct illumination")  # CID 4203 Ophthalmic Photography Illumination
_NO_FILTER = ("111609", "DCM", "No filter")  # CID 4204 Ophthalmic Filter
_GREEN_FILTER = ("445465004", "SCT", "Green optical filter")  # CID 4204 (red-free photography)


def _check_image(rgb: Any) -> np.ndarray:
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8:
        raise ValueError(f"the image must be uint8, got dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(f"the image must be H x W x 3 (colour) or H x W (monochrome) uint8, got shape {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1 or arr.shape[0] > 65535 or arr.shape[1] > 65535:
        raise ValueError(f"image rows and columns must be 1..65535, got {arr.shape[:2]}")
    return np.ascontiguousarray(arr)


def _da(when: _dt.datetime) -> str:
    return when.strftime("%Y%m%d")


def _tm(when: _dt.datetime) -> str:
    return when.strftime("%H%M%S")


def _dt_str(when: _dt.datetime) -> str:
    return when.strftime("%Y%m%d%H%M%S")


def _ds_str(value: float) -> str:
    """A Decimal String of at most 16 characters."""
    for digits in range(6, 0, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{value:.0f}"


def _jpeg_baseline(arr: np.ndarray, photometric: str) -> bytes:
    """Encode one frame as a baseline (8-bit Huffman, process 1) JPEG with Pillow."""
    from PIL import Image

    buf = io.BytesIO()
    if arr.ndim == 2:
        Image.fromarray(arr, mode="L").save(buf, format="JPEG", quality=_JPEG_QUALITY, optimize=False,
                                            progressive=False)
    else:
        # Pillow stores RGB input as YCbCr (JFIF); subsampling 1 = 4:2:2, 0 = 4:4:4.
        subsampling = 1 if photometric == "YBR_FULL_422" else 0
        Image.fromarray(arr, mode="RGB").save(buf, format="JPEG", quality=_JPEG_QUALITY, subsampling=subsampling,
                                              optimize=False, progressive=False)
    return buf.getvalue()


def fundus_dataset(
    rgb: np.ndarray,
    *,
    iod: str = "op8",
    photometric: str = "RGB",
    transfer_syntax: str = "explicit",
    patient_id: str = "MLK-0001",
    patient_name: str = "Synthetic^Fundus",
    patient_birth_date: str = "",
    patient_sex: str = "",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    laterality: str = "R",
    study_description: str = "Synthetic fundus study",
    series_description: str = "Fundus photography",
    study_id: str = "1",
    series_number: int = 1,
    instance_number: int = 1,
    accession_number: str = "",
    referring_physician_name: str = "",
    acquisition_datetime: _dt.datetime | None = None,
    horizontal_field_of_view: float = 45.0,
    manufacturer: str = _MANUFACTURER,
    model_name: str = _MODEL,
    device_serial_number: str = "MLK-SYNTH-0001",
    institution_name: str = "",
) -> Dataset:
    """A complete DICOM file dataset holding one fundus photograph.

    Args:
        rgb: ``H x W x 3`` uint8 RGB image, or ``H x W`` uint8 monochrome (stored as ``MONOCHROME2``).
        iod: ``"op8"`` (Ophthalmic Photography 8 Bit), ``"vl"`` (VL Photographic) or ``"sc"`` (Secondary
            Capture).
        photometric: for colour input: ``"RGB"``, or ``"YBR_FULL_422"`` / ``"YBR_FULL"`` which need
            ``transfer_syntax="jpeg-baseline"``. Colour JPEG Baseline with ``"RGB"`` is stored as
            ``YBR_FULL_422`` (Pillow always writes YCbCr JPEG). ``"YBR_FULL"`` (no chroma subsampling) is
            what some cameras send and PS3.5 8.2.1 allows for JPEG, but the OP 8 Bit, VL Photographic (and, for
            ``dciodvfy``, Secondary Capture) image modules enumerate only ``YBR_FULL_422`` for lossy JPEG, so
            such an instance is deliberately non-conformant (``dciodvfy`` reports the Photometric
            Interpretation as an error): use it to exercise readers. Ignored for monochrome input. JPEG 2000
            colour is always stored as ``YBR_RCT`` (reversible colour transform).
        transfer_syntax: ``"explicit"``, ``"implicit"``, ``"rle"``, ``"jpeg-ls"``, ``"jpeg2000"`` (lossless)
            or ``"jpeg-baseline"`` (lossy).
        patient_id, patient_name, patient_birth_date, patient_sex: Patient module (birth date ``YYYYMMDD``
            and sex ``M``/``F``/``O`` may be empty).
        study_uid, series_uid: generated at random when ``None``.
        sop_instance_uid, frame_of_reference_uid: derived deterministically when ``None``.
        laterality: ``"R"`` or ``"L"`` (the eye photographed; ``"B"`` both).
        study_description, series_description, study_id, series_number, instance_number, accession_number,
        referring_physician_name: identifying attributes of the study, series and instance.
        acquisition_datetime: when the photograph was taken (also used as study, series and content
            date/time); default :data:`DEFAULT_ACQUISITION_DATETIME`.
        horizontal_field_of_view: degrees (OP only).
        manufacturer, model_name, device_serial_number, institution_name: General Equipment module.

    Returns:
        A :class:`pydicom.Dataset` with ``file_meta``, ready for ``ds.save_as(path, enforce_file_format=True)``.

    Raises:
        ValueError: an invalid argument (the message names it).
        RuntimeError: the encoder for ``transfer_syntax`` is unavailable.
    """
    arr = _check_image(rgb)
    if iod not in SOP_CLASS_UIDS:
        raise ValueError(f"iod must be one of {IODS}, got {iod!r}")
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"transfer_syntax must be one of {tuple(TRANSFER_SYNTAXES)}, got {transfer_syntax!r}")
    if photometric not in PHOTOMETRICS:
        raise ValueError(f"photometric must be one of {PHOTOMETRICS}, got {photometric!r}")
    if laterality not in ("R", "L", "B"):
        raise ValueError(f"laterality must be 'R', 'L' or 'B', got {laterality!r}")
    if isinstance(instance_number, bool) or not isinstance(instance_number, (int, np.integer)) \
            or not 0 <= instance_number < 2**31:
        raise ValueError(f"instance_number must be a non-negative integer, got {instance_number!r}")
    colour = arr.ndim == 3
    lossy = transfer_syntax == "jpeg-baseline"
    if colour and photometric != "RGB" and not lossy:
        raise ValueError(f"photometric {photometric!r} is only meaningful with transfer_syntax='jpeg-baseline' "
                         f"(got {transfer_syntax!r}); use 'RGB'")
    if not colour:
        stored_photometric = "MONOCHROME2"
    elif lossy:
        stored_photometric = "YBR_FULL" if photometric == "YBR_FULL" else "YBR_FULL_422"
    else:
        stored_photometric = "RGB"  # jpeg2000 switches to YBR_RCT below

    when = acquisition_datetime or DEFAULT_ACQUISITION_DATETIME
    sop_class = SOP_CLASS_UIDS[iod]
    ts_uid = TRANSFER_SYNTAXES[transfer_syntax]
    study_uid = UID(study_uid) if study_uid is not None else generate_uid()
    series_uid = UID(series_uid) if series_uid is not None else generate_uid()
    digest = hashlib.sha256(arr.tobytes() + repr(arr.shape).encode()).hexdigest()
    if sop_instance_uid is None:
        # A lossy copy is a new instance (PS3.3 C.7.6.1.1.5); lossless encodings of the same pixels are not.
        sop_instance_uid = generate_uid(entropy_srcs=[
            "sop", str(study_uid), str(series_uid), str(sop_class), str(int(instance_number)), digest,
            "lossy" if lossy else "lossless"])
    if frame_of_reference_uid is None:
        frame_of_reference_uid = generate_uid(entropy_srcs=["for", str(study_uid), str(series_uid)])

    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian if transfer_syntax != "implicit" else ImplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"PYDICOM {pydicom.__version__}"[:16]
    ds.file_meta = meta

    # SOP Common
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = UID(sop_instance_uid)
    ds.InstanceCreationDate = _da(when)
    ds.InstanceCreationTime = _tm(when)

    # Patient
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = patient_birth_date
    ds.PatientSex = patient_sex

    # General Study
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = _da(when)
    ds.StudyTime = _tm(when)
    ds.ReferringPhysicianName = referring_physician_name
    ds.StudyID = study_id
    ds.AccessionNumber = accession_number
    ds.StudyDescription = study_description

    # General Series (+ Ophthalmic Photography Series: Modality OP)
    ds.Modality = _MODALITY[iod]
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = int(series_number)
    ds.SeriesDate = _da(when)
    ds.SeriesTime = _tm(when)
    ds.SeriesDescription = series_description
    # The eye is recorded per image as Image Laterality (Ocular Region Imaged for OP, General Image otherwise),
    # not as the series' Laterality, which dciodvfy then rejects (its condition is "no Image Laterality").

    # General Equipment
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = model_name
    ds.DeviceSerialNumber = device_serial_number
    ds.SoftwareVersions = _SOFTWARE
    if institution_name:
        ds.InstitutionName = institution_name

    # General Image (+ the IOD's own image module)
    ds.InstanceNumber = int(instance_number)
    ds.ContentDate = _da(when)
    ds.ContentTime = _tm(when)
    ds.AcquisitionDateTime = _dt_str(when)
    ds.ImageType = ["ORIGINAL", "PRIMARY"] if iod != "sc" else ["DERIVED", "SECONDARY"]
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PatientOrientation = ""  # Type 2C; a photograph has no patient-based orientation

    # Image Pixel
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = stored_photometric
    ds.Rows, ds.Columns = int(arr.shape[0]), int(arr.shape[1])
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    if colour:
        ds.PlanarConfiguration = 0
    if not colour and iod in ("op8", "vl"):
        ds.PresentationLUTShape = "IDENTITY"

    if iod == "op8":
        _add_ophthalmic(ds, frame_of_reference_uid, when, laterality, colour, horizontal_field_of_view)
    elif iod == "vl":
        ds.AcquisitionContextSequence = []  # Acquisition Context module, Type 2
        ds.AnatomicRegionSequence = [_code(*_RETINA)]
        ds.ImageLaterality = laterality
    else:  # sc
        ds.ImageLaterality = laterality
        ds.ConversionType = "SYN"  # SC Equipment: synthetic image
        ds.DateOfSecondaryCapture = _da(when)
        ds.TimeOfSecondaryCapture = _tm(when)

    ds.PixelData = arr.tobytes()
    ds["PixelData"].VR = "OB"

    if transfer_syntax in ("rle", "jpeg-ls", "jpeg2000"):
        kwargs: dict[str, Any] = {}
        if transfer_syntax == "jpeg2000" and colour:
            # Lossless J2K colour uses the reversible colour transform: Photometric Interpretation YBR_RCT.
            ds.PhotometricInterpretation = "YBR_RCT"
            kwargs["use_mct"] = True
        ds.compress(ts_uid, arr, generate_instance_uid=False, **kwargs)
    elif lossy:
        frame = _jpeg_baseline(arr, stored_photometric)
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = ts_uid
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = _ds_str(arr.size / len(frame))
        ds.LossyImageCompressionMethod = _ISO_10918_1
    return ds


def _add_ophthalmic(ds: Dataset, frame_of_reference_uid: str, when: _dt.datetime, laterality: str, colour: bool,
                    horizontal_field_of_view: float) -> None:
    """The OP-specific modules of the Ophthalmic Photography 8 Bit Image IOD."""
    # Synchronization (M)
    ds.SynchronizationFrameOfReferenceUID = UID(frame_of_reference_uid)
    ds.SynchronizationTrigger = "NO TRIGGER"
    ds.AcquisitionTimeSynchronized = "N"

    # Multi-frame (M): one frame
    ds.NumberOfFrames = 1
    ds.FrameIncrementPointer = pydicom.tag.Tag("FrameTime")
    ds.FrameTime = 0

    # Ocular Region Imaged (M)
    ds.ImageLaterality = laterality
    ds.AnatomicRegionSequence = [_code(*_RETINA)]

    # Ophthalmic Photography Acquisition Parameters (M)
    ds.PatientEyeMovementCommanded = "NO"
    ds.HorizontalFieldOfView = float(horizontal_field_of_view)
    ds.RefractiveStateSequence = []
    ds.EmmetropicMagnification = None
    ds.IntraOcularPressure = None
    ds.PupilDilated = "NO"

    # Ophthalmic Photographic Parameters (M)
    ds.AcquisitionDeviceTypeCodeSequence = [_code(*_FUNDUS_CAMERA)]
    ds.IlluminationTypeCodeSequence = [_code(*_DIFFUSE_DIRECT)]
    ds.LightPathFilterTypeStackCodeSequence = [_code(*(_NO_FILTER if colour else _GREEN_FILTER))]
    ds.ImagePathFilterTypeStackCodeSequence = [_code(*_NO_FILTER)]
    ds.LensesCodeSequence = []
    ds.DetectorType = "CCD"


def write_fundus_study(images: Sequence[np.ndarray], out_dir: str | os.PathLike, **kwargs: Any) -> list[Path]:
    """Write ``images`` as one study and one series: ``out_dir/IMG0001.dcm``, ``IMG0002.dcm``, ...

    Args:
        images: the photographs (each as accepted by :func:`fundus_dataset`).
        out_dir: output folder (created if needed).
        **kwargs: passed to :func:`fundus_dataset` (``study_uid`` / ``series_uid`` are generated once for the
            whole study when not given; ``instance_number`` is set to 1..n; ``laterality`` may also be a
            sequence with one value per image).

    Returns:
        The written paths, in order.

    Raises:
        FileExistsError: one of the ``IMG####.dcm`` files already exists (nothing is overwritten; the check
            is made for all files before any is written).
        ValueError: invalid arguments (see :func:`fundus_dataset`).
    """
    images = list(images)
    if not images:
        raise ValueError("write_fundus_study needs at least one image")
    if len(images) > 9999:
        raise ValueError(f"at most 9999 images per study, got {len(images)}")
    for key in ("instance_number", "sop_instance_uid"):
        if key in kwargs:
            raise ValueError(f"{key} is set per image by write_fundus_study; do not pass it")
    root = Path(out_dir)
    paths = [root / f"IMG{i:04d}.dcm" for i in range(1, len(images) + 1)]
    existing = [p for p in paths if p.exists()]
    if existing:
        raise FileExistsError(f"{existing[0]} already exists; refusing to overwrite "
                              f"({len(existing)} of the {len(paths)} files are present)")
    opts = dict(kwargs)
    opts["study_uid"] = opts.get("study_uid") or generate_uid()
    opts["series_uid"] = opts.get("series_uid") or generate_uid()
    lat = opts.pop("laterality", "R")
    lats = [lat] * len(images) if isinstance(lat, str) else list(lat)
    if len(lats) != len(images):
        raise ValueError(f"laterality has {len(lats)} values for {len(images)} images")
    datasets = [fundus_dataset(img, instance_number=i, laterality=lats[i - 1], **opts)
                for i, img in enumerate(images, start=1)]
    root.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for path, ds in zip(paths, datasets):
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        with open(path, "xb") as fh:  # exclusive create: never overwrite
            fh.write(buf.getvalue())
        written.append(path)
    return written
