"""DICOM fundus photographs in, derived DICOM instances out.

Reading (:func:`read_fundus_dicom`): single-frame 8-bit Ophthalmic Photography, VL Photographic
and Secondary Capture images (any SOP class with 8-bit single-frame pixels is accepted), in any
transfer syntax pydicom's installed plugins decode (uncompressed, RLE, JPEG Baseline/Extended/
Lossless, JPEG-LS, JPEG 2000). Colour comes out as RGB: YBR_FULL, YBR_FULL_422, YBR_ICT and
YBR_RCT are converted, PALETTE COLOR is expanded through its lookup table. MONAI's
``PydicomReader`` is not used: for single-frame RGB it returns the axes swapped (checked with
pydicom 3.0 / MONAI 1.6), and the watermark geometry must be exact.

Monochrome (MONOCHROME2, e.g. red-free photographs) is read as grey replicated to three
channels, so the surrogate sees what it would see for an RGB file of the same picture. The
watermark engine then stamps a greyscale rendering of the logo (the three channels stay equal)
and the writer stores one channel again as MONOCHROME2. MONOCHROME1 is refused: inverting it
would make the protected pixels differ in meaning from the original's.

Writing (:func:`derive_protected_dataset`): a new instance of the source's SOP class with a new
SOP Instance UID and Series Instance UID, the same Study Instance UID, the header of the dataset
it is given (the protect chain gives it the de-identified source, :mod:`monai_medlocker.io.deidentify`)
without private elements at any depth, ImageType ``DERIVED\\SECONDARY`` (``DERIVED\\PRIMARY\\WATERMARKED`` for
Ophthalmic Photography, whose IOD allows only PRIMARY as Value 2), a DerivationDescription and a
SourceImageSequence pointing at the original. Lossy-compression history is kept. Pixels are
written Explicit VR Little Endian uncompressed by default, or RLE Lossless / JPEG-LS Lossless
on request; lossy output is never written because it would alter the watermark and the
certified pixels.
"""

from __future__ import annotations

import copy
import datetime as _dt
import struct
import warnings
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEGLSLossless,
    PYDICOM_IMPLEMENTATION_UID,
    RLELossless,
    generate_uid,
)

from monai_medlocker import __version__
from monai_medlocker.io.files import ImageReadError, atomic_write_bytes
from monai_medlocker.io.private_tags import MedlockerTags, has_medlocker_tags, write_medlocker_tags

__all__ = [
    "DICOM_SUFFIXES",
    "DICOM_ENCODINGS",
    "DicomReadError",
    "FundusDicom",
    "is_dicom_file",
    "read_fundus_dicom",
    "derive_protected_dataset",
    "save_dicom",
    "already_protected",
    "dicom_subject_sha256",
    "derived_study_uid",
    "RESTORED_KEYWORDS",
    "original_header",
    "restore_original_dataset",
    "source_archive",
    "rebuild_source_file",
]

DICOM_SUFFIXES = (".dcm", ".dicom")
DICOM_ENCODINGS = {"explicit": ExplicitVRLittleEndian, "rle": RLELossless, "jpeg-ls": JPEGLSLossless}

# Transfer syntaxes whose presence alone proves lossy compression, and the method code for each.
_LOSSY_METHOD = {
    "1.2.840.10008.1.2.4.50": "ISO_10918_1",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51": "ISO_10918_1",  # JPEG Extended
    "1.2.840.10008.1.2.4.81": "ISO_14495_1",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.91": "ISO_15444_1",  # JPEG 2000 (may be lossy)
}
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")
# Attributes of the source that would be wrong or leak the original in a derived instance.
_DROP = (
    "IconImageSequence",  # a thumbnail of the unwatermarked picture
    "DigitalSignaturesSequence", "MACParametersSequence",  # no longer valid for the new pixels
    "SmallestImagePixelValue", "LargestImagePixelValue",
    "ExtendedOffsetTable", "ExtendedOffsetTableLengths",
    "PlanarConfiguration", "PixelData",
)
_OPHTHALMIC_PHOTOGRAPHY = "1.2.840.10008.5.1.4.1.1.77.1.5."
SOURCE_PURPOSE = ("121322", "DCM", "Source image for image processing operation")
DERIVATION_DESCRIPTION = (
    "MedLocker: owner logo composited at an optimised lesion-free placement; pixels outside the logo boxes unchanged"
)


class DicomReadError(ImageReadError):
    """A DICOM file that cannot be protected; the message names the file and says what is supported."""


@dataclass
class FundusDicom:
    """A decoded fundus DICOM image.

    Attributes:
        pixels: H x W x 3 uint8 RGB (grey replicated for monochrome).
        dataset: the source dataset, pixel data included, kept for the writer.
        monochrome: the source was MONOCHROME2.
        path: the file it came from.
    """

    pixels: np.ndarray
    dataset: Dataset
    monochrome: bool
    path: Path


def is_dicom_file(path: str | Path) -> bool:
    """True for a ``.dcm``/``.dicom`` name, or any file with the DICOM ``DICM`` preamble."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _check_identity(path: Path, ds: Dataset) -> None:
    """SOP Class and Instance UIDs must be known (from the dataset, else from the file meta)."""
    meta = getattr(ds, "file_meta", None)
    for keyword, fallback in (("SOPClassUID", "MediaStorageSOPClassUID"), ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
        if not ds.get(keyword):
            value = meta.get(fallback) if meta is not None else None
            if not value:
                raise DicomReadError(f"{path}: no {keyword} (nor {fallback} in the file meta); cannot derive an instance")
            setattr(ds, keyword, value)


def derived_study_uid(source: Dataset) -> str:
    """The derived instance's study: the source's, or (a source outside any study) one per source series."""
    if source.get("StudyInstanceUID"):
        return str(source.StudyInstanceUID)
    return generate_uid(entropy_srcs=["medlocker-study", str(source.get("SeriesInstanceUID") or source.SOPInstanceUID)])


def dicom_subject_sha256(ds: Dataset, study_uid: str | None = None) -> str:
    """Hash of who and which study an instance belongs to: signed, so a verifier sees a header swap.

    Args:
        study_uid: the study to hash instead of ``ds``'s (a source's derived study, see :func:`derived_study_uid`).
    """
    import hashlib
    import json

    keys = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "AccessionNumber", "StudyDate")
    values = {k: str(ds.get(k, "") or "") for k in keys}
    if study_uid is not None:
        values["StudyInstanceUID"] = study_uid
    return "sha256:" + hashlib.sha256(json.dumps(values, sort_keys=True).encode("utf-8")).hexdigest()


def _check_pixel_module(path: Path, ds: Dataset) -> None:
    if "PixelData" not in ds:
        what = ds.get("SOPClassUID")
        name = UID(what).name if what else "unknown SOP class"
        raise DicomReadError(f"{path}: no pixel data ({name} instance); nothing to protect")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise DicomReadError(
            f"{path}: multi-frame image with {frames} frames; only single-frame images are supported "
            "(Ophthalmic Photography 8 Bit, VL Photographic or Secondary Capture with one frame)"
        )
    bits_alloc, bits_stored = ds.get("BitsAllocated"), ds.get("BitsStored", ds.get("BitsAllocated"))
    if bits_alloc != 8 or bits_stored != 8:
        raise DicomReadError(
            f"{path}: {bits_stored}-bit pixels (BitsAllocated {bits_alloc}); only 8-bit images are supported "
            "(Ophthalmic Photography 8 Bit and 8-bit VL Photographic / Secondary Capture)"
        )
    if int(ds.get("PixelRepresentation", 0)) != 0:
        raise DicomReadError(f"{path}: signed pixel data; only unsigned 8-bit images are supported")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    samples = int(ds.get("SamplesPerPixel", 1))
    supported = _COLOUR + ("MONOCHROME2", "PALETTE COLOR")
    if photometric not in supported or (samples == 3) != (photometric in _COLOUR):
        raise DicomReadError(
            f"{path}: photometric interpretation {photometric!r} with {samples} samples per pixel is not supported "
            f"(expected one of {', '.join(supported)}; MONOCHROME1 is refused because it would have to be inverted)"
        )


def read_fundus_dicom(path: str | Path, data: bytes | None = None) -> FundusDicom:
    """Read and decode one fundus DICOM file (or its bytes ``data``, ``path`` naming them in messages).

    Raises:
        DicomReadError: not a DICOM file, no pixel data, multi-frame, not 8-bit, an unsupported
            photometric interpretation, a transfer syntax that cannot be decoded, or too small.
    """
    path = Path(path)
    if data is None and not path.is_file():
        raise DicomReadError(f"{path}: file not found")
    try:
        ds = pydicom.dcmread(path if data is None else BytesIO(data))
    except InvalidDicomError as err:
        raise DicomReadError(f"{path}: not a DICOM file ({err})") from err
    except Exception as err:  # pydicom raises many types for truncated or garbled files
        raise DicomReadError(f"{path}: unreadable DICOM file ({type(err).__name__}: {err})") from err
    try:
        _check_pixel_module(path, ds)
        _check_identity(path, ds)
        syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        photometric = str(ds.PhotometricInterpretation)
    except DicomReadError:
        raise
    except Exception as err:  # pydicom parses elements lazily: a garbled one fails only when it is read
        raise DicomReadError(f"{path}: unreadable DICOM header ({type(err).__name__}: {err})") from err
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = ds.pixel_array  # pydicom 3 converts YBR to RGB here
            if photometric == "PALETTE COLOR":
                from pydicom.pixels import apply_color_lut

                arr = apply_color_lut(arr, ds)
                if arr.dtype != np.uint8:
                    arr = (arr >> 8).astype(np.uint8)  # 16-bit LUT entries: keep the high byte
    except Exception as err:
        # A garbled file meta element may hold bytes or several values, not one UID string.
        name = UID(str(syntax)).name if syntax else "an unknown transfer syntax"
        raise DicomReadError(
            f"{path}: pixel data in {name} cannot be decoded ({type(err).__name__}: {err}); "
            "supported: uncompressed, RLE, JPEG Baseline/Extended/Lossless, JPEG-LS and JPEG 2000"
        ) from err
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        arr = arr.astype(np.uint8)
    monochrome = arr.ndim == 2
    if monochrome:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise DicomReadError(f"{path}: decoded pixel array has shape {arr.shape}, expected rows x columns (x 3)")
    if arr.shape[0] < 16 or arr.shape[1] < 16:
        raise DicomReadError(f"{path}: image of {arr.shape[1]}x{arr.shape[0]} px is too small to be a fundus photograph")
    return FundusDicom(np.ascontiguousarray(arr), ds, monochrome, path)


def _lossy_history(source: Dataset) -> dict:
    """LossyImageCompression and its ratio and method, from the attributes or the transfer syntax."""
    out = {}
    syntax = str(source.file_meta.get("TransferSyntaxUID", "")) if hasattr(source, "file_meta") else ""
    if source.get("LossyImageCompression") == "01" or (
        syntax in _LOSSY_METHOD and syntax != "1.2.840.10008.1.2.4.91"
    ):
        out["LossyImageCompression"] = "01"
        for keyword in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
            if keyword in source:
                out[keyword] = copy.deepcopy(source[keyword].value)
        if "LossyImageCompressionMethod" not in out and syntax in _LOSSY_METHOD:
            out["LossyImageCompressionMethod"] = _LOSSY_METHOD[syntax]
    elif "LossyImageCompression" in source:
        out["LossyImageCompression"] = source.LossyImageCompression
    return out


def _drop_private(ds: Dataset) -> None:
    for elem in list(ds):
        if elem.tag.is_private:
            del ds[elem.tag]
        elif elem.VR == "SQ":
            for item in elem.value:
                _drop_private(item)


def _code_item(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def derive_protected_dataset(
    source: Dataset,
    pixels: np.ndarray,
    tags: MedlockerTags,
    *,
    series_uid: str | None = None,
    series_number: int | None = None,
    series_description: str | None = None,
    encoding: str = "explicit",
    monochrome: bool | None = None,
    now: _dt.datetime | None = None,
    keep_private: bool = False,
) -> Dataset:
    """A derived instance holding the protected pixels and the MedLocker private block.

    Args:
        source: the original dataset (not modified).
        pixels: H x W x 3 uint8 protected RGB (all channels equal for a monochrome source).
        tags: the private block's content (parameter record, WSM boxes, certificate).
        series_uid: the derived series (one per protected source series); ``None`` makes a new one.
        series_number: default: the source's + 1000.
        series_description: default: the source's with " (MedLocker protected)".
        encoding: ``"explicit"`` (uncompressed), ``"rle"`` or ``"jpeg-ls"`` (both lossless).
        monochrome: write MONOCHROME2; default: the source is MONOCHROME2.
        keep_private: keep the source's private elements (other vendors' data), kept on purpose.

    Raises:
        ValueError: an unknown encoding, pixels of the wrong shape, or colour pixels for a monochrome output.
    """
    if encoding not in DICOM_ENCODINGS:
        raise ValueError(f"encoding must be one of {sorted(DICOM_ENCODINGS)} (lossless only), got {encoding!r}")
    pixels = np.asarray(pixels)
    rows, cols = int(source.Rows), int(source.Columns)
    if pixels.dtype != np.uint8 or pixels.shape != (rows, cols, 3):
        raise ValueError(f"protected pixels must be {rows} x {cols} x 3 uint8, got {pixels.shape} {pixels.dtype}")
    if monochrome is None:
        monochrome = source.get("PhotometricInterpretation") == "MONOCHROME2"
    if monochrome and not (np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0], pixels[..., 2])):
        raise ValueError("a monochrome output needs equal R, G and B channels (the logo must be rendered in grey)")
    # The day only: a creation time to the second would publish each image's protect time (issue 18).
    now = now or _dt.datetime.now().replace(hour=0, minute=0, second=0, microsecond=0)
    lossy = _lossy_history(source)

    ds = copy.deepcopy(source)
    for keyword in _DROP:
        if keyword in ds:
            del ds[keyword]
    if not keep_private:
        _drop_private(ds)  # other vendors' private data, at any depth, may describe the old pixels or the grade
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SeriesNumber = int(series_number if series_number is not None else int(source.get("SeriesNumber", 0) or 0) + 1000)
    ds.StudyInstanceUID = derived_study_uid(source)
    source_description = str(source.get("SeriesDescription", "") or "")
    ds.SeriesDescription = series_description or (
        f"{source_description} (MedLocker protected)" if source_description else "MedLocker protected"
    )[:64]
    image_type = list(source.get("ImageType", []) or [])
    if str(source.SOPClassUID).startswith(_OPHTHALMIC_PHOTOGRAPHY):
        # The OP image module enumerates Value 2 as PRIMARY only and requires Value 3 for DERIVED
        # images (PS3.3 C.8.17.2.1.1); "WATERMARKED" extends its defined terms.
        ds.ImageType = ["DERIVED", "PRIMARY"] + (image_type[2:] or ["WATERMARKED"])
    else:
        ds.ImageType = ["DERIVED", "SECONDARY"] + image_type[2:]
    ds.DerivationDescription = DERIVATION_DESCRIPTION
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    ref.PurposeOfReferenceCodeSequence = [_code_item(*SOURCE_PURPOSE)]
    ds.SourceImageSequence = [ref]
    ds.InstanceCreationDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = ds.ContentTime = now.strftime("%H%M%S")
    for keyword in ("LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod"):
        if keyword in ds:
            del ds[keyword]
    for keyword, value in lossy.items():
        setattr(ds, keyword, value)

    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if monochrome:
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        data = np.ascontiguousarray(pixels[..., 0])
        for keyword in ("RedPaletteColorLookupTableDescriptor", "GreenPaletteColorLookupTableDescriptor",
                        "BluePaletteColorLookupTableDescriptor", "RedPaletteColorLookupTableData",
                        "GreenPaletteColorLookupTableData", "BluePaletteColorLookupTableData"):
            if keyword in ds:
                del ds[keyword]
    else:
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        data = np.ascontiguousarray(pixels)
        for elem in list(ds):
            if "PaletteColorLookupTable" in (elem.keyword or ""):
                del ds[elem.tag]
    if "NumberOfFrames" in source:
        ds.NumberOfFrames = 1
    ds.PixelData = data.tobytes()
    ds["PixelData"].VR = "OB"
    write_medlocker_tags(ds, tags)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"MEDLOCKER_{__version__}"[:16]
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128
    if encoding != "explicit":
        ds.compress(DICOM_ENCODINGS[encoding], data)
    return ds


# Attributes the derivation sets or replaces; outputs of versions before the restore payload kept the
# original file (source_archive) carry their original values (or absence) in the certificate, and unlock
# of those still rebuilds the instance from them (restore_original_dataset).
RESTORED_KEYWORDS = (
    "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "SeriesNumber", "SeriesDescription", "ImageType",
    "DerivationDescription", "SourceImageSequence", "InstanceCreationDate", "InstanceCreationTime", "ContentDate",
    "ContentTime", "LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod",
)


def original_header(source: Dataset) -> dict:
    """The source's values of :data:`RESTORED_KEYWORDS` (DICOM JSON) and the ones it lacked."""
    kept = Dataset()
    for keyword in RESTORED_KEYWORDS:
        if keyword in source:
            kept[keyword] = copy.deepcopy(source[keyword])
    return {"attributes": kept.to_json_dict(), "absent": [k for k in RESTORED_KEYWORDS if k not in source],
            "sop_class": str(source.SOPClassUID)}


def restore_original_dataset(derived: Dataset, pixels: np.ndarray, header: dict) -> Dataset:
    """The original instance again: the derived dataset with the original pixels, UIDs and changed attributes.

    The MedLocker private block is removed. The pixels are written uncompressed (RGB, or MONOCHROME2
    when the derived instance is); attributes the protect step dropped for good (an icon image,
    other vendors' private data, digital signatures) cannot come back.

    Raises:
        ValueError: a header that is not from :func:`original_header`, or pixels of the wrong shape.
    """
    try:
        attributes = Dataset.from_json(header["attributes"])
        absent = list(header["absent"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"the certificate's DICOM header record is unusable ({err!r})") from err
    ds = copy.deepcopy(derived)
    for elem in list(ds):
        if elem.tag.is_private:
            del ds[elem.tag]
    for keyword in absent:
        if keyword in RESTORED_KEYWORDS and keyword in ds:
            del ds[keyword]
    for elem in attributes:
        ds[elem.tag] = elem
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.shape != (int(ds.Rows), int(ds.Columns), 3):
        raise ValueError(f"restored pixels must be {ds.Rows} x {ds.Columns} x 3 uint8, got {pixels.shape} {pixels.dtype}")
    if ds.PhotometricInterpretation == "MONOCHROME2":
        ds.PixelData = np.ascontiguousarray(pixels[..., 0]).tobytes()
    else:
        ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.PlanarConfiguration = "RGB", 3, 0
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds["PixelData"].VR = "OB"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


# The original file in the restore payload: b"MLSF" | version | layout | flags | cut offset u64 | cut length u64 |
# sha256 of the file | the file with the cut-out pixel bytes taken out (zlib when that is smaller).
_SOURCE = struct.Struct(">4sBBBQQ32s")
_SOURCE_MAGIC = b"MLSF"
_WHOLE, _INTERLEAVED, _MONO, _PLANAR = 0, 1, 2, 3
_ZLIB = 1


def _pixel_layouts(pixels: np.ndarray) -> dict[int, bytes]:
    """The native pixel bytes an original may hold that unlock can make again from its restored pixels."""
    rgb = np.ascontiguousarray(pixels)
    out = {_MONO: np.ascontiguousarray(rgb[..., 0]).tobytes()} if (
        np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])) else {}
    out[_INTERLEAVED] = rgb.tobytes()
    out[_PLANAR] = np.ascontiguousarray(rgb.transpose(2, 0, 1)).tobytes()
    return out


def source_archive(data: bytes, pixels: np.ndarray) -> bytes:
    """The original file ``data``, packed for the restore payload so that unlock gives back every byte of it.

    Everything is kept: file meta, transfer syntax, encapsulated (e.g. JPEG Baseline) or YBR / palette
    pixel data with its lookup tables, planar configuration, other vendors' data, the identity that
    the published instance leaves out. Where the file holds its pixels natively as the decoded
    ``pixels`` (RGB interleaved or planar, or one grey channel), those bytes are cut out, since unlock
    makes them again from the restored pixels: the payload then only grows by the compressed header.
    On a 1024 px synthetic fundus, file -> record (``benchmarks/bench_source_archive.py``): native RGB
    OP 3.1 MB -> 0.9 KB; YBR_FULL native 3.1 MB -> 0.83 MB; RLE 2.2 MB -> 1.3 MB; JPEG Baseline
    132 KB -> 123 KB (zlib level 6 where it shrinks the rest).

    Args:
        data: the original file's bytes.
        pixels: its decoded H x W x 3 uint8 pixels (the restore payload's original).
    """
    import hashlib
    import zlib

    data = bytes(data)
    layout, offset, length = _WHOLE, 0, 0
    for kind, raw in _pixel_layouts(np.asarray(pixels)).items():
        found = data.rfind(raw) if len(raw) >= 256 else -1  # too short to cut out reliably: keep it
        if found >= 0:
            layout, offset, length = kind, found, len(raw)
            break
    rest = data[:offset] + data[offset + length:] if layout != _WHOLE else data
    packed = zlib.compress(rest, 6)
    flags = _ZLIB if len(packed) < len(rest) else 0
    return _SOURCE.pack(_SOURCE_MAGIC, 1, layout, flags, offset, length, hashlib.sha256(data).digest()) + (
        packed if flags else rest)


def rebuild_source_file(archive: bytes, pixels: np.ndarray, source: str = "restore payload") -> bytes:
    """The original file's bytes from :func:`source_archive` and the restored pixels, checked against its hash.

    Raises:
        ValueError: a malformed archive, or a result that is not the original file.
    """
    import hashlib
    import zlib

    archive = bytes(archive)
    if len(archive) < _SOURCE.size:
        raise ValueError(f"{source}: the original DICOM file record is truncated")
    magic, version, layout, flags, offset, length, digest = _SOURCE.unpack_from(archive)
    if magic != _SOURCE_MAGIC or version != 1:
        raise ValueError(f"{source}: not a MedLocker original-file record (version {version})")
    rest = archive[_SOURCE.size:]
    if flags & _ZLIB:
        try:
            rest = zlib.decompress(rest)
        except zlib.error as err:
            raise ValueError(f"{source}: the original DICOM file record is unreadable ({err})") from err
    if layout == _WHOLE:
        data = rest
    else:
        raw = _pixel_layouts(np.asarray(pixels)).get(layout)
        if raw is None or len(raw) != length or offset > len(rest):
            raise ValueError(f"{source}: the restored pixels do not fit the original DICOM file record")
        data = rest[:offset] + raw + rest[offset:]
    if hashlib.sha256(data).digest() != digest:
        raise ValueError(f"{source}: the rebuilt DICOM file is not the original (hash mismatch); nothing written")
    return data


def save_dicom(path: str | Path, ds: Dataset) -> None:
    """Write ``ds`` as a DICOM Part 10 file, atomically (temporary file, then rename)."""
    from io import BytesIO

    buf = BytesIO()
    # The derived dataset is always written little endian, explicit VR, even from a big-endian source.
    pydicom.dcmwrite(buf, ds, implicit_vr=False, little_endian=True, enforce_file_format=True)
    atomic_write_bytes(path, buf.getvalue())


def already_protected(ds: Dataset) -> bool:
    """True when ``ds`` is itself a MedLocker output (protecting it again would stack logos)."""
    return has_medlocker_tags(ds)
