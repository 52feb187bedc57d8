"""Certificates and keys: owner keys, signed watermark certificates, encrypted restore payloads, grants.

* :mod:`.keys`: an owner key is an Ed25519 signing key plus a 32-byte master secret.
* :mod:`.certificate`: a signed statement of which owner watermarked which image, with which
  parameters, and the hashes of the watermarked and original pixels.
* :mod:`.payload`: the original pixels under the marks, compressed losslessly and sealed with
  AES-256-GCM under a per-image key derived from the master secret (HKDF-SHA256) and bound to the
  certificate.
* :mod:`.grant`: per-image keys handed to someone allowed to restore those images.
* :mod:`.detect`: whether the certified logo is still visible in a (possibly re-encoded or resized) image.

Every primitive comes from the ``cryptography`` package. :mod:`.detect` is imported on first use:
it needs the watermark engine (and so torch), which the key and grant commands should not load.
"""

from __future__ import annotations

from typing import Any

from monai_medlocker.certify.certificate import (
    CERT_FORMAT,
    CertificateError,
    SignedCertificate,
    build_certificate,
    canonical_bytes,
    certificate_digest,
    pixel_sha256,
    sign_certificate,
    verify_certificate,
)
from monai_medlocker.certify.grant import GRANT_FORMAT, Grant, GrantError, load_grant, make_grant, save_grant
from monai_medlocker.certify.keys import (
    KEY_FORMAT,
    PUB_FORMAT,
    KeyFileError,
    OwnerKey,
    OwnerPublicKey,
    generate_owner_key,
    load_owner_key,
    load_public_key,
    save_owner_key,
)
from monai_medlocker.certify.payload import (
    PayloadError,
    apply_restore_payload,
    decrypt_payload,
    derive_image_key,
    encrypt_payload,
    footprint_bytes,
    pack_restore_payload,
)

__all__ = [
    # keys
    "KEY_FORMAT",
    "PUB_FORMAT",
    "KeyFileError",
    "OwnerKey",
    "OwnerPublicKey",
    "generate_owner_key",
    "save_owner_key",
    "load_owner_key",
    "load_public_key",
    # certificates
    "CERT_FORMAT",
    "CertificateError",
    "SignedCertificate",
    "pixel_sha256",
    "canonical_bytes",
    "build_certificate",
    "certificate_digest",
    "sign_certificate",
    "verify_certificate",
    # restore payloads
    "PayloadError",
    "derive_image_key",
    "pack_restore_payload",
    "apply_restore_payload",
    "footprint_bytes",
    "encrypt_payload",
    "decrypt_payload",
    # grants
    "GRANT_FORMAT",
    "Grant",
    "GrantError",
    "make_grant",
    "save_grant",
    "load_grant",
    # detection
    "DETECT_THRESHOLD",
    "detect_logo",
]


def __getattr__(name: str) -> Any:
    # PEP 562 lazy attributes: the detector pulls in the watermark package (torch) only when used.
    if name in ("DETECT_THRESHOLD", "detect_logo"):
        from monai_medlocker.certify import detect

        return getattr(detect, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
