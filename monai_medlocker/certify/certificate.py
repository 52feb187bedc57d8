"""Signed certificates: which owner watermarked which image, where, and what the pixels were.

A certificate is a JSON object (format ``medlocker-certificate/2``) signed with the owner's Ed25519
key over its canonical bytes: JSON with sorted keys, no whitespace, ASCII only and no NaN or
infinity, so any verifier that re-serialises the parsed object the same way gets the same bytes.

Format 2 adds the ``"published"`` object: hashes of the bytes protect published beside the pixels
(the encrypted restore payload and sealed record, and a DICOM instance's header), so that verify
sees any change to them. Those blobs are encrypted with the certificate digest as associated data,
so the digest (:func:`certificate_digest`) leaves ``"published"`` out: it is added after encryption.
Format 1 certificates (no ``"published"``) are still read; their digest is unchanged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

import numpy as np
from cryptography.exceptions import InvalidSignature

from monai_medlocker import __version__
from monai_medlocker.certify.keys import OwnerKey, OwnerPublicKey

__all__ = [
    "CERT_FORMAT",
    "PUBLISHED",
    "CertificateError",
    "SignedCertificate",
    "pixel_sha256",
    "canonical_bytes",
    "build_certificate",
    "certificate_digest",
    "sign_certificate",
    "verify_certificate",
]

CERT_FORMAT = "medlocker-certificate/2"
# The certificate's item that holds the hashes of the published blobs and header (format 2).
PUBLISHED = "published"
_PIXEL_HASH_TAG = b"medlocker-pixels/1"


class CertificateError(ValueError):
    """A certificate that cannot be built, serialised or read."""


def pixel_sha256(pixels: np.ndarray) -> str:
    """``"sha256:"`` + hex digest over a header (shape, dtype) and the C-contiguous pixel bytes.

    The header makes a reshaped or re-typed array with the same bytes hash differently. Multi-byte
    dtypes are hashed little-endian, so the hash depends on the values, not on the machine.
    """
    arr = np.asarray(pixels)
    if arr.dtype.hasobject:
        raise CertificateError("pixel_sha256: object arrays cannot be hashed")
    if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and not np.little_endian):
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    header = _PIXEL_HASH_TAG + f"\x00shape={list(arr.shape)}\x00dtype={arr.dtype.str}\x00".encode("ascii")
    h = hashlib.sha256(header)
    h.update(np.ascontiguousarray(arr).tobytes())
    return "sha256:" + h.hexdigest()


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays (common in parameter records) become plain JSON values.
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def canonical_bytes(cert: Mapping[str, Any]) -> bytes:
    """The canonical JSON bytes of a certificate: sorted keys, ``(",", ":")`` separators, ASCII, no NaN/inf.

    Raises:
        CertificateError: a value that is not JSON (NaN, infinity, or an unsupported type).
    """
    try:
        text = json.dumps(cert, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False,
                          default=_json_default)
    except (TypeError, ValueError) as err:
        raise CertificateError(f"certificate is not canonical JSON: {err}") from err
    return text.encode("ascii")


def _plain_json(value: Any, what: str) -> Any:
    """A deep copy of ``value`` as parsed JSON, so the certificate equals what a verifier reads back."""
    try:
        return json.loads(canonical_bytes(value))
    except CertificateError as err:
        raise CertificateError(f"{what}: {err}") from err


def _timestamp(created: datetime | str | None) -> str:
    if created is None:
        # The day only: one per-image time to the second gave each image's protect time away (and with it
        # the grade, issue 18); a batch shares its day.
        created = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    if isinstance(created, str):
        return created
    if created.tzinfo is None:
        raise CertificateError("created must be timezone-aware (UTC)")
    return created.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_certificate(
    key_id: str,
    image_id: str,
    params: Mapping[str, Any],
    watermarked_sha256: str,
    original_sha256: str,
    payload_sha256: str | None = None,
    created: datetime | str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict:
    """Assemble an unsigned certificate.

    Args:
        key_id: the owner's key id.
        image_id: the image's identifier (also selects its unlock key).
        params: the watermark parameter record (a JSON object).
        watermarked_sha256: :func:`pixel_sha256` of the published image.
        original_sha256: :func:`pixel_sha256` of the original image.
        payload_sha256: hash of the packed (unencrypted) restore payload, when there is one; the
            encrypted blobs' hashes are added under :data:`PUBLISHED` after encryption.
        created: UTC time (aware ``datetime`` or ready ISO-8601 string); defaults to today (midnight UTC).
        extra: further items (e.g. DICOM source UIDs), stored under ``"extra"``.

    Raises:
        CertificateError: empty ids or values that are not JSON.
    """
    for name, value in (("key_id", key_id), ("image_id", image_id)):
        if not isinstance(value, str) or not value:
            raise CertificateError(f"certificate {name} must be a non-empty string, got {value!r}")
    if not isinstance(params, Mapping):
        raise CertificateError(f"certificate params must be a JSON object, got {type(params).__name__}")
    cert = {
        "format": CERT_FORMAT,
        "key_id": key_id,
        "image_id": image_id,
        "params": _plain_json(dict(params), "params"),
        "watermarked_sha256": watermarked_sha256,
        "original_sha256": original_sha256,
        "payload_sha256": payload_sha256,
        "created": _timestamp(created),
        "software": f"monai-medlocker {__version__}",
        "extra": _plain_json(dict(extra or {}), "extra"),
    }
    canonical_bytes(cert)  # fail now, not at signing time
    return cert


def certificate_digest(cert: Mapping[str, Any]) -> bytes:
    """SHA-256 of the canonical bytes: the associated data that binds a restore payload to its certificate.

    :data:`PUBLISHED` is left out: it holds the hashes of the encrypted blobs themselves, so it can only
    be added after encryption (a format 1 certificate has none, so its digest is the same as before).
    """
    return hashlib.sha256(canonical_bytes({k: v for k, v in cert.items() if k != PUBLISHED})).digest()


@dataclass(frozen=True)
class SignedCertificate:
    """A certificate with its Ed25519 signature over :func:`canonical_bytes`.

    Attributes:
        certificate: the certificate object.
        signature: the 64-byte signature.

    Raises:
        CertificateError: a certificate that is not a JSON object, or a signature that is not bytes
            (whatever a file held: every reader builds its certificate through here).
    """

    certificate: dict
    signature: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.certificate, dict):
            raise CertificateError(f"the certificate is not an object (got a JSON {type(self.certificate).__name__})")
        if not isinstance(self.signature, (bytes, bytearray)):
            raise CertificateError(f"the signature is not bytes (got {type(self.signature).__name__})")

    @property
    def canonical(self) -> bytes:
        return canonical_bytes(self.certificate)

    def to_dict(self) -> dict:
        return {"certificate": self.certificate, "signature": base64.b64encode(self.signature).decode("ascii")}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "certificate") -> "SignedCertificate":
        """Read ``{"certificate": {...}, "signature": base64}`` (e.g. a sidecar); ``source`` names it in errors.

        Raises:
            CertificateError: no certificate object or no base64 signature.
        """
        if not isinstance(data, Mapping):
            raise CertificateError(f"{source}: expected a JSON object with certificate and signature")
        cert, sig = data.get("certificate"), data.get("signature")
        if not isinstance(cert, dict):
            raise CertificateError(f"{source}: no certificate object")
        if not isinstance(sig, str):
            raise CertificateError(f"{source}: no signature")
        try:
            signature = base64.b64decode(sig, validate=True)
        except (binascii.Error, ValueError) as err:
            raise CertificateError(f"{source}: the signature is not valid base64") from err
        return cls(cert, signature)


def sign_certificate(cert: Mapping[str, Any], key: OwnerKey) -> SignedCertificate:
    """Sign a certificate with the owner key it names.

    Raises:
        CertificateError: the certificate names another key id, or is not canonical JSON.
    """
    if cert.get("key_id") != key.key_id:
        raise CertificateError(f"certificate key_id {cert.get('key_id')!r} is not the signing key's {key.key_id}")
    cert = _plain_json(dict(cert), "certificate")
    return SignedCertificate(cert, key.signing_key.sign(canonical_bytes(cert)))


def verify_certificate(signed: SignedCertificate, pub: OwnerPublicKey) -> str:
    """Check a signed certificate against an owner's public key; never raises on a bad certificate.

    Returns:
        ``"valid"``; ``"foreign owner"`` when the certificate names another key id (its signature is
        not checked then); or ``"invalid signature"`` (altered certificate, altered or malformed
        signature, or a certificate that is not canonical JSON).
    """
    cert = signed.certificate
    if not isinstance(cert, Mapping) or cert.get("key_id") != pub.key_id:
        return "foreign owner" if isinstance(cert, Mapping) else "invalid signature"
    try:
        pub.verify_key.verify(bytes(signed.signature), canonical_bytes(cert))
    except (InvalidSignature, CertificateError, TypeError, ValueError):
        return "invalid signature"
    return "valid"
