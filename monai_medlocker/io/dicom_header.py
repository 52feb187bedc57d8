"""A digest of a protected DICOM instance's header as written, so that the certificate can sign it.

The digest covers every data element of the written instance but these, at every depth:

* the pixels (Pixel Data, and whatever follows it: the file is read up to the pixels);
* the attributes that only describe how the pixels are encoded (samples per pixel, photometric
  interpretation, planar configuration, bits allocated/stored, high bit, pixel representation):
  a lossless transcode may change them, and the certified pixel hash covers what they mean;
* the MedLocker private block itself (its creator and its elements), which holds the certificate.

Each element is hashed over its tag and its value bytes as stored (sequences item by item, element
by element), which are the same in explicit and implicit VR little-endian files. The digest holds
the SHA-256 of all of them and a short hash per top-level element, so that verify can name the
attributes that changed (every value here is in the published header anyway). The instance is
serialised and read back before hashing, so protect hashes exactly the bytes a verifier reads.
"""

from __future__ import annotations

import hashlib
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from monai_medlocker.io.private_tags import PRIVATE_CREATOR, PRIVATE_GROUP

__all__ = ["HEADER_FORMAT", "header_digest", "dataset_header_digest", "file_header_digest", "header_changes"]

HEADER_FORMAT = "medlocker-dicom-header/1"
_ENCODING_TAGS = {0x00280002, 0x00280004, 0x00280006, 0x00280100, 0x00280101, 0x00280102, 0x00280103}
_UNDEFINED = 0xFFFFFFFF


def _vr(ds: Dataset, tag) -> str:
    raw = ds.get_item(tag)
    vr = getattr(raw, "VR", None)
    if vr:
        return str(vr)
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


def _medlocker_tags(ds: Dataset) -> set[int]:
    """The MedLocker block's creator element and reserved range, left out of the digest."""
    out: set[int] = set()
    for elem in ds.group_dataset(PRIVATE_GROUP):
        if 0x10 <= elem.tag.element <= 0xFF and str(elem.value).strip() == PRIVATE_CREATOR:
            out.add(int(elem.tag))
            base = (PRIVATE_GROUP << 16) | (elem.tag.element << 8)
            out.update(range(base, base + 0x100))
    return out


def _element_bytes(ds: Dataset, tag) -> bytes:
    raw = ds.get_item(tag)
    vr = _vr(ds, tag)
    if vr == "SQ" or (isinstance(raw, RawDataElement) and raw.length == _UNDEFINED and tag != 0x7FE00010):
        parts = [b"SQ"]
        for item in ds[tag].value or []:
            parts.append(b"ITEM" + _dataset_bytes(item))
        return b"".join(parts)
    if isinstance(raw, RawDataElement):
        return bytes(raw.value or b"")
    # A converted element (a dataset built in memory): its value encoded as a file would hold it.
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_data_element

    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_data_element(fp, raw)
    return fp.getvalue()[8:]


def _dataset_bytes(ds: Dataset, skip: set[int] = frozenset()) -> bytes:
    return b"".join(int(tag).to_bytes(4, "little") + _element_hash(ds, tag) for tag in sorted(ds.keys())
                    if int(tag) not in skip)


def _element_hash(ds: Dataset, tag) -> bytes:
    return hashlib.sha256(_element_bytes(ds, tag)).digest()


def header_digest(ds: Dataset) -> dict:
    """The digest of a dataset read from a file (see the module notes): ``format``, ``sha256`` and ``elements``."""
    skip = _ENCODING_TAGS | _medlocker_tags(ds) | {0x7FE00010}
    elements, whole = {}, hashlib.sha256(HEADER_FORMAT.encode("ascii"))
    for tag in sorted(ds.keys()):
        if int(tag) in skip or tag.group == 0x0002:
            continue
        digest = _element_hash(ds, tag)
        whole.update(int(tag).to_bytes(4, "little") + digest)
        elements[f"{int(tag):08X}"] = digest.hex()[:16]
    return {"format": HEADER_FORMAT, "sha256": "sha256:" + whole.hexdigest(), "elements": elements}


def dataset_header_digest(ds: Dataset) -> dict:
    """The digest of ``ds`` as it will be written (little endian, explicit VR) and read back by a verifier."""
    buf = BytesIO()
    pydicom.dcmwrite(buf, ds, implicit_vr=False, little_endian=True, enforce_file_format=True)
    buf.seek(0)
    return header_digest(pydicom.dcmread(buf, stop_before_pixels=True))


def file_header_digest(path: str | Path) -> dict:
    """The digest of a DICOM file's header (read up to its pixels)."""
    return header_digest(pydicom.dcmread(path, stop_before_pixels=True))


def _name(key: str) -> str:
    try:
        tag = int(key, 16)
    except ValueError:
        return key
    return keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def header_changes(signed: dict, current: dict) -> list[str]:
    """What differs between a signed header digest and the current one, attribute by attribute (empty: nothing)."""
    if not isinstance(signed, dict) or signed.get("format") != HEADER_FORMAT or not isinstance(signed.get("elements"), dict):
        return ["the signed header digest is not one this version reads"]
    if signed.get("sha256") == current["sha256"]:
        return []
    before, after = signed["elements"], current["elements"]
    changes = [f"{_name(k)} changed" for k in sorted(before) if k in after and after[k] != before[k]]
    changes += [f"{_name(k)} removed" for k in sorted(before) if k not in after]
    changes += [f"{_name(k)} added" for k in sorted(after) if k not in before]
    return changes or ["the header's digest differs"]
