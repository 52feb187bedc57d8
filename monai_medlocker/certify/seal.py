"""The certify stage: sign a protected image's parameters, seal its restore payload, and find both again.

:class:`Certifier` is what the protect workflow calls for each image. Where the results live:

* PNG: iTXt chunks ``medlocker:certificate`` (canonical JSON), ``medlocker:signature`` and
  ``medlocker:payload`` (base64), next to ``medlocker:params``;
* DICOM: the ``MEDLOCKER 1`` private block (:mod:`monai_medlocker.io.private_tags`);
* both: the JSON sidecar ``<stem>.medlocker.json`` gets ``certificate``, ``signature`` and
  ``restore_payload``, so a copy that lost its embedded data (e.g. re-encoded as JPEG) can still
  be checked when the sidecar travels with it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monai_medlocker.certify.certificate import (
    CertificateError,
    SignedCertificate,
    build_certificate,
    canonical_bytes,
    certificate_digest,
    pixel_sha256,
    sign_certificate,
)
from monai_medlocker.certify.keys import OwnerKey, load_owner_key
from monai_medlocker.certify.payload import derive_image_key, encrypt_payload, pack_restore_payload

__all__ = [
    "PNG_CERTIFICATE",
    "PNG_SIGNATURE",
    "PNG_PAYLOAD",
    "PNG_PARAMS",
    "SIDECAR_SUFFIX",
    "Sealed",
    "Certifier",
    "ProtectedFile",
    "read_protected",
    "protected_file_problem",
    "payload_sha256",
    "mark_boxes",
]

PNG_PARAMS = "medlocker:params"
PNG_CERTIFICATE = "medlocker:certificate"
PNG_SIGNATURE = "medlocker:signature"
PNG_PAYLOAD = "medlocker:payload"
SIDECAR_SUFFIX = ".medlocker.json"


def payload_sha256(packed: bytes) -> str:
    """Hash of the packed (unencrypted) restore payload, as certified."""
    return "sha256:" + hashlib.sha256(packed).hexdigest()


def mark_boxes(params: dict) -> list[tuple[int, int, int, int]]:
    """The logo boxes (xyxy, end-exclusive) of a parameter record: the restore payload's footprint."""
    return [tuple(int(v) for v in m["box_xyxy"]) for m in params.get("marks", [])]


@dataclass
class Sealed:
    """A signed certificate and its encrypted restore payload."""

    signed: SignedCertificate
    payload: bytes

    def png_text(self) -> dict[str, str]:
        return {PNG_CERTIFICATE: canonical_bytes(self.signed.certificate).decode("ascii"),
                PNG_SIGNATURE: base64.b64encode(self.signed.signature).decode("ascii"),
                PNG_PAYLOAD: base64.b64encode(self.payload).decode("ascii")}

    def sidecar_fields(self) -> dict:
        return {**self.signed.to_dict(), "restore_payload": base64.b64encode(self.payload).decode("ascii")}


class Certifier:
    """Sign and seal protected images with an owner key.

    Args:
        key: an :class:`OwnerKey` or the path of an owner ``.key`` file.
        passphrase: the key file's passphrase, when it has one.
    """

    def __init__(self, key: OwnerKey | str | Path, passphrase: str | None = None) -> None:
        self.key = key if isinstance(key, OwnerKey) else load_owner_key(key, passphrase)

    @property
    def key_id(self) -> str:
        return self.key.key_id

    def seal(self, image_id: str, original: np.ndarray, protected: np.ndarray, params: dict,
             extra: dict | None = None) -> Sealed:
        """Certificate + restore payload of one image.

        Args:
            image_id: the SOP Instance UID of a DICOM original, or the file's relative path.
            original, protected: H x W x 3 uint8 pixels before and after the watermark.
            params: the watermark parameter record (its ``marks`` give the payload's footprint).
            extra: more signed facts (e.g. the original DICOM header values).
        """
        packed = pack_restore_payload(original, mark_boxes(params), protected)
        cert = build_certificate(self.key.key_id, image_id, params, pixel_sha256(protected), pixel_sha256(original),
                                 payload_sha256=payload_sha256(packed), extra=extra)
        signed = sign_certificate(cert, self.key)
        image_key = derive_image_key(self.key.master_secret, self.key.key_id, image_id)
        # The certificate's digest is the associated data: a payload only opens with its own certificate.
        return Sealed(signed, encrypt_payload(packed, image_key, certificate_digest(signed.certificate)))


@dataclass
class ProtectedFile:
    """A protected image as found on disk: pixels, and whatever certification it carries.

    Attributes:
        path: the image file.
        pixels: H x W x 3 uint8.
        dicom: the decoded DICOM (:class:`~monai_medlocker.io.dicom.FundusDicom`) or ``None``.
        params: the watermark parameter record, if any.
        signed: the signed certificate, if any.
        payload: the encrypted restore payload, if any.
        found_in: where the certificate came from: ``"png"``, ``"dicom"``, ``"sidecar"`` or ``None``.
        problem: why a certificate that seemed present could not be read.
        tags: the DICOM MedLocker private block, when there is one.
    """

    path: Path
    pixels: np.ndarray
    dicom: object | None = None
    params: dict | None = None
    signed: SignedCertificate | None = None
    payload: bytes | None = None
    found_in: str | None = None
    problem: str | None = None
    tags: object | None = None


def _b64(text, source: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError, TypeError) as err:
        raise CertificateError(f"{source}: the {what} is not valid base64") from err


def _from_mapping(pf: ProtectedFile, data: dict, where: str, source: str) -> None:
    """Fill ``pf`` from a sidecar-like mapping (certificate, signature, restore_payload)."""
    if "certificate" not in data:
        return
    pf.signed = SignedCertificate.from_dict(data, source)
    pf.payload = _b64(data["restore_payload"], source, "restore payload") if data.get("restore_payload") else None
    pf.found_in = where


def protected_file_problem(path: str | Path, dicom=None) -> str | None:
    """What makes a file an existing MedLocker output (so protecting it again would stack logos), or ``None``.

    Args:
        path: the file.
        dicom: its decoded :class:`~monai_medlocker.io.dicom.FundusDicom`, when it is one.
    """
    from monai_medlocker.io.dicom import already_protected

    if dicom is not None:
        return "instance (it has the MEDLOCKER 1 private block)" if already_protected(dicom.dataset) else None
    path = Path(path)
    if path.suffix.lower() != ".png":
        return None
    from PIL import Image

    with Image.open(path) as img:
        img.load()  # text chunks after the pixel data are only read with them
        found = sorted(k for k in (getattr(img, "text", {}) or {}) if k in (PNG_PARAMS, PNG_CERTIFICATE))
    return f"image (its PNG carries {', '.join(found)})" if found else None


def read_protected(path: str | Path) -> ProtectedFile:
    """Read an image and its certification (embedded first, then the sidecar beside it).

    Raises:
        ImageReadError: the image itself cannot be read.
    """
    from monai_medlocker.io.image import load_fundus
    from monai_medlocker.io.private_tags import PrivateTagError, read_medlocker_tags

    path = Path(path)
    pixels, dicom = load_fundus(path)
    pf = ProtectedFile(path, pixels, dicom)
    try:
        if dicom is not None:
            tags = pf.tags = read_medlocker_tags(dicom.dataset, str(path))
            if tags is not None:
                pf.params = tags.params
                if tags.certificate is not None:
                    pf.signed = SignedCertificate(tags.certificate, tags.signature or b"")
                    pf.payload, pf.found_in = tags.restore_payload, "dicom"
        elif path.suffix.lower() == ".png":
            from PIL import Image

            with Image.open(path) as img:
                text = dict(getattr(img, "text", {}) or {})
            if PNG_PARAMS in text:
                pf.params = json.loads(text[PNG_PARAMS])
            if PNG_CERTIFICATE in text:
                pf.signed = SignedCertificate(json.loads(text[PNG_CERTIFICATE]),
                                              _b64(text.get(PNG_SIGNATURE, ""), str(path), "signature"))
                pf.payload = _b64(text[PNG_PAYLOAD], str(path), "restore payload") if text.get(PNG_PAYLOAD) else None
                pf.found_in = "png"
        sidecar = path.with_name(path.stem + SIDECAR_SUFFIX)
        if pf.signed is None and sidecar.is_file():
            data = json.loads(sidecar.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                pf.params = pf.params or {k: v for k, v in data.items()
                                          if k not in ("certificate", "signature", "restore_payload")}
                _from_mapping(pf, data, "sidecar", str(sidecar))
    except (CertificateError, PrivateTagError, ValueError, KeyError, TypeError) as err:
        pf.problem = f"{path}: unreadable MedLocker certificate ({err})"
        pf.signed = None
    return pf
