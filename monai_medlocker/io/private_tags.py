"""The MedLocker private block in a DICOM instance: the public record, the certificate and the sealed record.

A protected instance is published, so the block holds nothing of the grade or the means of
removal in clear: the watermark parameters are there, sealed (AES-256-GCM, see
:mod:`monai_medlocker.certify.seal`), beside the public record and the signed certificate.

The block lives in odd group ``0x0011`` under the private creator ``"MEDLOCKER 1"``. pydicom
(and any conformant PACS) keep it through a store/retrieve because the creator reserves the
element range. Element offsets inside the block (the block's base ``0x0011,xx00`` is chosen by
pydicom when the block is created; readers look the creator up, never a fixed element number):

========  ====  =========================================================
offset    VR    content
========  ====  =========================================================
``0x01``  LO    format version, :data:`PRIVATE_FORMAT`
``0x02``  UT    the public watermark record (canonical JSON, ASCII; no grade, opacity or lesion boxes)
``0x03``  UL    format 1 only (never written now): the WSM boxes in clear
``0x04``  UI    the SOP Instance UID of the source image
``0x10``  UT    the certificate (canonical JSON), when signed
``0x11``  OB    the Ed25519 signature over the certificate's canonical bytes
``0x12``  OB    the encrypted restore payload
``0x13``  UL    the payload's length in bytes (OB values are padded to an even length)
``0x14``  OB    the sealed watermark record (the whole record, encrypted), when signed
``0x15``  UL    the sealed record's length in bytes
========  ====  =========================================================

Format 1 blocks (``medlocker-dicom/1``, written before the record was sealed) are still read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from pydicom.dataset import Dataset

__all__ = [
    "PRIVATE_GROUP",
    "PRIVATE_CREATOR",
    "PRIVATE_FORMAT",
    "MedlockerTags",
    "PrivateTagError",
    "write_medlocker_tags",
    "read_medlocker_tags",
    "has_medlocker_tags",
]

PRIVATE_GROUP = 0x0011
PRIVATE_CREATOR = "MEDLOCKER 1"
PRIVATE_FORMAT = "medlocker-dicom/2"
_READ_FORMATS = ("medlocker-dicom/1", PRIVATE_FORMAT)

_FORMAT, _PARAMS, _WSM, _SOURCE_UID = 0x01, 0x02, 0x03, 0x04
_CERTIFICATE, _SIGNATURE, _PAYLOAD, _PAYLOAD_LENGTH = 0x10, 0x11, 0x12, 0x13
_SEALED, _SEALED_LENGTH = 0x14, 0x15


class PrivateTagError(ValueError):
    """The MedLocker private block is present but unreadable (wrong version, bad JSON, bad boxes)."""


@dataclass
class MedlockerTags:
    """The content of a MedLocker private block (``wsm_boxes``: only what a format 1 block held)."""

    params: dict
    source_sop_instance_uid: str | None = None
    certificate: dict | None = None
    signature: bytes | None = None
    restore_payload: bytes | None = None
    sealed_record: bytes | None = None
    version: str = PRIVATE_FORMAT
    wsm_boxes: list[tuple[int, int, int, int]] = field(default_factory=list)


def _json_text(obj: dict) -> str:
    # ASCII only, so that the UT value never depends on the instance's Specific Character Set.
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def write_medlocker_tags(ds: Dataset, tags: MedlockerTags) -> None:
    """Write (or replace) the MedLocker private block of ``ds``."""
    if has_medlocker_tags(ds):
        old = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
        for offset in range(0x100):
            if offset in old:
                del old[offset]
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    if tags.version != PRIVATE_FORMAT or tags.wsm_boxes:
        raise PrivateTagError(f"only {PRIVATE_FORMAT} blocks are written, and never with lesion boxes in clear")
    block.add_new(_FORMAT, "LO", tags.version)
    block.add_new(_PARAMS, "UT", _json_text(tags.params))
    if tags.source_sop_instance_uid:
        block.add_new(_SOURCE_UID, "UI", tags.source_sop_instance_uid)
    if tags.certificate is not None:
        block.add_new(_CERTIFICATE, "UT", _json_text(tags.certificate))
    if tags.signature is not None:
        block.add_new(_SIGNATURE, "OB", bytes(tags.signature))
    for blob, offset, length in ((tags.restore_payload, _PAYLOAD, _PAYLOAD_LENGTH),
                                 (tags.sealed_record, _SEALED, _SEALED_LENGTH)):
        if blob is not None:
            block.add_new(offset, "OB", bytes(blob))
            block.add_new(length, "UL", len(blob))


def _creators(ds: Dataset, filename: str) -> list[str]:
    try:
        return [str(e.value) for e in ds.group_dataset(PRIVATE_GROUP) if e.tag.element <= 0xFF and e.tag.element >= 0x10]
    except Exception as err:  # noqa: BLE001 (pydicom raises its own types too, e.g. BytesLengthException)
        # pydicom decodes an element when it is first read: a garbled one (e.g. an unknown VR) fails here.
        raise PrivateTagError(f"{filename}: unreadable element in private group 0x{PRIVATE_GROUP:04x} "
                              f"({type(err).__name__}: {err})") from err


def has_medlocker_tags(ds: Dataset, filename: str = "dataset") -> bool:
    """True when ``ds`` carries a MedLocker private block (it is already a protected instance).

    Raises:
        PrivateTagError: an element of the private group cannot be decoded (reading it once decodes them all).
    """
    return PRIVATE_CREATOR in _creators(ds, filename)


def _value(filename: str, block, offset: int):
    try:
        elem = block[offset]
    except KeyError:
        return None
    value = elem.value
    if isinstance(value, bytes) and offset in (_FORMAT, _PARAMS, _CERTIFICATE, _SOURCE_UID):
        # Read from an implicit-VR copy: pydicom cannot know a private VR, so text arrives as bytes.
        try:
            value = value.decode("ascii").rstrip("\x00 ")
        except UnicodeDecodeError as err:
            raise PrivateTagError(f"{filename}: MedLocker private element 0x{offset:02x} is not ASCII text ({err})") from err
    return value


def _bytes(value, filename: str, what: str) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, (bytes, bytearray)):  # e.g. a block written with a text VR where OB belongs
        raise PrivateTagError(f"{filename}: MedLocker {what} is not binary data (got {type(value).__name__})")
    return bytes(value)


def read_medlocker_tags(ds: Dataset, filename: str = "dataset") -> MedlockerTags | None:
    """The MedLocker block of ``ds`` as :class:`MedlockerTags`; ``None`` when there is none.

    Raises:
        PrivateTagError: the block is present but is not a readable MedLocker block.
    """
    if not has_medlocker_tags(ds, filename):
        return None
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
    version = _value(filename, block, _FORMAT)
    if version not in _READ_FORMATS:
        raise PrivateTagError(f"{filename}: MedLocker private block has format {version!r}, expected one of "
                              f"{', '.join(_READ_FORMATS)}")
    try:
        params = json.loads(_value(filename, block, _PARAMS) or "")
        cert_text = _value(filename, block, _CERTIFICATE)
        certificate = json.loads(cert_text) if cert_text else None
    except (ValueError, TypeError) as err:
        raise PrivateTagError(f"{filename}: MedLocker private block holds invalid JSON ({err})") from err
    if not isinstance(params, dict) or not (certificate is None or isinstance(certificate, dict)):
        raise PrivateTagError(f"{filename}: MedLocker private block holds JSON that is not an object where the parameter "
                              "record or the certificate belongs")
    raw = _value(filename, block, _WSM)
    if isinstance(raw, bytes):  # implicit VR: four-byte little-endian integers
        raw = [int.from_bytes(raw[i:i + 4], "little") for i in range(0, len(raw), 4)]
    try:
        flat = [] if raw is None or raw == "" else ([int(raw)] if isinstance(raw, int) else [int(v) for v in raw])
    except (TypeError, ValueError) as err:
        raise PrivateTagError(f"{filename}: MedLocker WSM boxes are not integers ({err})") from err
    if len(flat) % 4:
        raise PrivateTagError(f"{filename}: MedLocker WSM boxes hold {len(flat)} values, not a multiple of 4")
    boxes = [tuple(flat[i:i + 4]) for i in range(0, len(flat), 4)]
    source_uid = _value(filename, block, _SOURCE_UID)
    return MedlockerTags(
        params=params, wsm_boxes=boxes, source_sop_instance_uid=str(source_uid) if source_uid else None,
        certificate=certificate, signature=_bytes(_value(filename, block, _SIGNATURE), filename, "signature"),
        restore_payload=_blob(filename, block, _PAYLOAD, _PAYLOAD_LENGTH, "restore payload"),
        sealed_record=_blob(filename, block, _SEALED, _SEALED_LENGTH, "sealed record"), version=version,
    )


def _blob(filename: str, block, offset: int, length_offset: int, what: str) -> bytes | None:
    """An OB value cut to its recorded length (OB values are padded to an even length).

    A recorded length that does not fit (a blob cut short or grown since) leaves the bytes as stored:
    the certificate signs the blob's hash, so verify names it as damaged restore data.
    """
    blob = _bytes(_value(filename, block, offset), filename, what)
    length = _value(filename, block, length_offset)
    if blob is None or length is None:
        return blob
    if isinstance(length, bytes):
        length = int.from_bytes(length[:4], "little")
    try:
        length = int(length)
    except (TypeError, ValueError):
        return blob
    if not 0 <= length <= len(blob) or len(blob) - length > 1:
        return blob
    return blob[: int(length)]
