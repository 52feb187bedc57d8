"""The certify stage: sign what is public, seal what is not, and find both again.

A protected image is published, so nothing it carries may tell a thief the grade or how to take
the mark off. Its watermark record is split in two:

* the **public record** (:func:`public_record`): what verification needs and what anyone can see
  in the pixels anyway: the format, the logo's hash and rendering, the image size and the visible
  geometry of each mark (box, rotation, scale; never its opacity);
* the **sealed record**: the whole record (grade, predictions, margins, opacities, lesion boxes,
  detector report, source file) as canonical JSON with a random salt, encrypted with AES-256-GCM
  under a key derived from the image's unlock key, the certificate digest as associated data. The
  certificate holds the SHA-256 of the salted plaintext, so a grantee cannot swap it for another
  record, and the salt keeps the hash from being a guessing oracle for the grade.

:class:`Certifier` signs a certificate over the public record and the hashes, seals the record,
and encrypts the restore payload. Where the results live:

* PNG: iTXt chunks ``medlocker:public`` (the public record), and with an owner key
  ``medlocker:certificate`` (canonical JSON), ``medlocker:signature``, ``medlocker:payload`` and
  ``medlocker:sealed`` (base64);
* DICOM: the ``MEDLOCKER 1`` private block (:mod:`monai_medlocker.io.private_tags`);
* both, with an owner key: the public sidecar ``<stem>.medlocker.json`` beside the image gets
  ``certificate``, ``signature``, ``restore_payload`` and ``sealed_record``, so a copy that lost
  its embedded data (e.g. re-encoded as JPEG) can still be checked when the sidecar travels with it.

Without an owner key nothing can be sealed: the published image carries only the public record,
and the whole record stays in the owner's private folder (``private/records``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from monai_medlocker.certify.certificate import (
    PUBLISHED,
    CertificateError,
    SignedCertificate,
    build_certificate,
    canonical_bytes,
    certificate_digest,
    pixel_sha256,
    sign_certificate,
)
from monai_medlocker.certify.keys import OwnerKey, load_owner_key
from monai_medlocker.certify.payload import (
    PayloadError,
    decrypt_payload,
    derive_image_key,
    derive_subkey,
    encrypt_payload,
    footprint_bytes,
    pack_restore_payload,
)

__all__ = [
    "PNG_CERTIFICATE",
    "PNG_SIGNATURE",
    "PNG_PAYLOAD",
    "PNG_PUBLIC",
    "PNG_SEALED",
    "PNG_LEGACY_PARAMS",
    "SIDECAR_SUFFIX",
    "PUBLIC_FORMAT",
    "SealedRecordError",
    "public_record",
    "render_key",
    "Sealed",
    "Certifier",
    "Keyring",
    "ProtectedFile",
    "read_protected",
    "protected_file_problem",
    "payload_sha256",
    "blob_sha256",
    "restore_data_problem",
    "mark_boxes",
    "open_sealed_record",
]

PNG_PUBLIC = "medlocker:public"
PNG_SEALED = "medlocker:sealed"
# Outputs of versions before the record was sealed carried the whole record here, in clear.
PNG_LEGACY_PARAMS = "medlocker:params"
PNG_CERTIFICATE = "medlocker:certificate"
PNG_SIGNATURE = "medlocker:signature"
PNG_PAYLOAD = "medlocker:payload"
SIDECAR_SUFFIX = ".medlocker.json"
PUBLIC_FORMAT = "medlocker-public/1"
_VISIBLE_MARK_FIELDS = ("x0", "y0", "width", "height", "rotation", "scale", "box_xyxy")
_RECORD_INFO = b"medlocker-record/1\x00"
_RENDER_INFO = b"medlocker-render/1\x00"
# Both blobs' lengths are public. A sealed record grows with the lesion boxes (Spearman rho +0.77 with
# the grade on 40 lab images, issue 18), so every record is padded to one size; only a record over
# 16 KiB (hundreds of lesion boxes) goes to the next doubling.
SEALED_RECORD_BUCKET = 16 * 1024
# A restore payload is padded to at least half the raw size of the mark boxes (public geometry): the
# lossless codecs give 0.15-0.4 of it, so its length follows the visible marks, not the content.
PAYLOAD_MIN_BUCKET = 4 * 1024


class SealedRecordError(ValueError):
    """A sealed record that is missing, does not open, or is not the certified one."""


def public_record(record: dict) -> dict:
    """The part of a watermark record that may be published: nothing of the grade or the means of removal.

    Everything here is visible in the protected pixels anyway (where the logo is, how big, how
    turned) or is needed to look for the logo (its hash and rendering, the image size).
    """
    public = {"format": PUBLIC_FORMAT, "software": record.get("software"), "protected": bool(record.get("protected")),
              "image_size": record.get("image_size"), "logo_sha256": record.get("logo_sha256")}
    if record.get("logo_rendering") is not None:
        public["logo_rendering"] = record["logo_rendering"]
    public["marks"] = [{k: m[k] for k in _VISIBLE_MARK_FIELDS if k in m} for m in record.get("marks", [])]
    return public


def render_key(master_secret: bytes, key_id: str, image_id: str) -> bytes:
    """The 32-byte secret of one image's keyed mark rendering (HKDF-SHA256, apart from its unlock key).

    Only the owner can derive it; a grant (which holds unlock keys) does not reveal it.
    """
    return derive_subkey(master_secret, key_id.encode("utf-8"), _RENDER_INFO + image_id.encode("utf-8"))


def _record_key(image_key: bytes) -> bytes:
    return derive_subkey(image_key, b"", _RECORD_INFO)


def _salted_record(record: dict) -> bytes:
    return canonical_bytes({"salt": base64.b64encode(secrets.token_bytes(16)).decode("ascii"), "record": record})


def payload_sha256(packed: bytes) -> str:
    """Hash of the packed (unencrypted) restore payload, as certified."""
    return "sha256:" + hashlib.sha256(packed).hexdigest()


def blob_sha256(blob: bytes) -> str:
    """Hash of a published (encrypted) blob, as signed under the certificate's ``"published"`` item."""
    return "sha256:" + hashlib.sha256(bytes(blob)).hexdigest()


def mark_boxes(params: dict) -> list[tuple[int, int, int, int]]:
    """The logo boxes (xyxy, end-exclusive) of a parameter record: the restore payload's footprint."""
    return [tuple(int(v) for v in m["box_xyxy"]) for m in params.get("marks", [])]


# Room in the restore payload's bucket for what is not under the marks, so that its size does not show:
# a DICOM source's archive (its header with the removed identity and free text, and a compressed original's
# pixel stream), and a shield's residual (whose extent follows the WSM, and so the lesions).
SOURCE_ARCHIVE_ALLOWANCE = 64 * 1024


def payload_bucket(shape: tuple[int, ...], params: dict, source_file: bool = False) -> int:
    """The restore payload's padding bucket: a power of two from facts that are public or the same for the whole run.

    The marks' footprint (half its raw size); with a shield, a quarter of the image's raw size for its
    residual; with a DICOM source archive, :data:`SOURCE_ARCHIVE_ALLOWANCE` (a natively stored original's
    archive is its header, which fits; a compressed original's pixel stream may not, and then the length
    tells which doubling its compressed size falls in, which follows the published pixels: left as it is,
    since a JPEG of the published pixels tells the same: on 40 lab images at 1024 px JPEG Baseline the
    archive's size follows it with rho 0.98, and has rho +0.10, referable AUC 0.58 with the grade, its
    doubling rho +0.04; ``benchmarks/bench_jpeg_payload.py``).
    """
    room = footprint_bytes(shape, mark_boxes(params)) // 2
    if params.get("shield"):
        room += int(np.prod(shape)) // 4
    if source_file:
        room += SOURCE_ARCHIVE_ALLOWANCE
    return max(PAYLOAD_MIN_BUCKET, 1 << max(room - 1, 0).bit_length())


@dataclass
class Sealed:
    """A signed certificate and its encrypted restore payload.

    ``key`` (the owner key that signed it) lets :meth:`with_dicom_header` sign again once the DICOM
    instance is built: its header can only be hashed then.
    """

    signed: SignedCertificate
    payload: bytes
    record: bytes
    key: OwnerKey | None = field(default=None, repr=False)

    def with_dicom_header(self, header: dict) -> "Sealed":
        """The same blobs under a certificate that also signs the written instance's header digest.

        Args:
            header: :func:`~monai_medlocker.io.dicom_header.header_digest` of the dataset as written.
        """
        if self.key is None:
            raise CertificateError("a DICOM header can only be signed with the owner key that sealed the image")
        cert = dict(self.signed.certificate)
        cert[PUBLISHED] = {**cert.get(PUBLISHED, {}), "dicom_header": header}
        return Sealed(sign_certificate(cert, self.key), self.payload, self.record, self.key)

    def png_text(self) -> dict[str, str]:
        return {PNG_CERTIFICATE: canonical_bytes(self.signed.certificate).decode("ascii"),
                PNG_SIGNATURE: base64.b64encode(self.signed.signature).decode("ascii"),
                PNG_PAYLOAD: base64.b64encode(self.payload).decode("ascii"),
                PNG_SEALED: base64.b64encode(self.record).decode("ascii")}

    def sidecar_fields(self) -> dict:
        """The public sidecar: the signed certificate and the two encrypted blobs."""
        return {**self.signed.to_dict(), "restore_payload": base64.b64encode(self.payload).decode("ascii"),
                "sealed_record": base64.b64encode(self.record).decode("ascii")}


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

    def render_key(self, image_id: str) -> bytes:
        """The secret of ``image_id``'s keyed mark rendering."""
        return render_key(self.key.master_secret, self.key.key_id, image_id)

    def seal(self, image_id: str, original: np.ndarray, protected: np.ndarray, record: dict,
             extra: dict | None = None, source_file: bytes | None = None) -> Sealed:
        """Signed public certificate, sealed record and restore payload of one image.

        Args:
            image_id: the SOP Instance UID of a DICOM original, or the file's relative path + pixel hash.
            original, protected: H x W x 3 uint8 pixels before and after the watermark.
            record: the whole watermark record (its ``marks`` give the payload's footprint); only
                :func:`public_record` of it is signed in clear, the rest is sealed.
            extra: more signed facts (e.g. the DICOM source UIDs as published).
            source_file: the original file's record, encrypted in the restore payload (a DICOM source:
                unlock gives back its every byte; see :func:`~monai_medlocker.io.dicom.source_archive`).
        """
        packed = pack_restore_payload(original, mark_boxes(record), protected, source_file)
        salted = _salted_record(record)
        cert = build_certificate(self.key.key_id, image_id, public_record(record), pixel_sha256(protected),
                                 pixel_sha256(original), payload_sha256=payload_sha256(packed), extra=extra)
        cert["sealed_record_sha256"] = "sha256:" + hashlib.sha256(salted).hexdigest()
        image_key = derive_image_key(self.key.master_secret, self.key.key_id, image_id)
        # The certificate's digest is the associated data: both blobs only open with their own certificate.
        digest = certificate_digest(cert)
        payload = encrypt_payload(packed, image_key, digest, pad_bucket=payload_bucket(original.shape, record, source_file is not None))
        sealed = encrypt_payload(salted, _record_key(image_key), digest, pad_bucket=SEALED_RECORD_BUCKET)
        # The blobs as published are signed too, so that verify sees a damaged one (the digest leaves this out).
        cert[PUBLISHED] = {"restore_payload_sha256": blob_sha256(payload), "sealed_record_sha256": blob_sha256(sealed)}
        return Sealed(sign_certificate(cert, self.key), payload, sealed, self.key)


class Keyring:
    """The secrets of one protect run: the owner key's :class:`Certifier`, or a keyless run's render secret.

    Without an owner key nothing can be signed or sealed, but the marks are still rendered with a
    secret: a random 32-byte secret made for the output folder on its first image and kept in the
    owner's private folder (``secret_path``), from which each image's render key is derived. A
    resumed run, or another rank of the same run, reads the same file. The marks' placements and
    the outcomes depend on that secret: to reproduce a keyless run in another folder, give its
    secret file as ``secret_from`` (copied into ``secret_path``, which must then hold the same secret).

    Args:
        owner_key: an :class:`OwnerKey` or an owner ``.key`` file; ``None`` for a keyless run.
        passphrase: the key file's passphrase, when it has one.
        secret_path: where a keyless run keeps its render secret (needed without ``owner_key``).
        secret_from: a keyless run's render secret to reuse (e.g. another run's ``private/render_secret``).

    Raises:
        ValueError: ``secret_from`` with an owner key, or a ``secret_from`` that is not a render secret.
    """

    def __init__(self, owner_key: OwnerKey | str | Path | None = None, passphrase: str | None = None,
                 secret_path: str | Path | None = None, secret_from: str | Path | None = None) -> None:
        self.certifier = Certifier(owner_key, passphrase) if owner_key else None
        if self.certifier is None and secret_path is None:
            raise ValueError("a keyless run needs secret_path, the file that keeps its render secret")
        if self.certifier is not None and secret_from:
            raise ValueError(f"render secret {secret_from}: only a keyless run takes a render secret file; with an owner "
                             "key each image's render secret derives from the key")
        self.secret_path = Path(secret_path) if secret_path is not None else None
        self.secret_from = Path(secret_from) if secret_from else None
        if self.secret_from is not None:
            _read_render_secret(self.secret_from)  # a wrong file fails now, before any output is written

    @property
    def key_id(self) -> str | None:
        return self.certifier.key_id if self.certifier is not None else None

    def render_key(self, image_id: str) -> bytes:
        """The secret of ``image_id``'s keyed rendering (a keyless run makes its secret file on first use).

        Raises:
            ValueError: a secret file that is not 32 bytes (named).
        """
        if self.certifier is not None:
            return self.certifier.render_key(image_id)
        from monai_medlocker.io.image import atomic_write_bytes

        given = _read_render_secret(self.secret_from) if self.secret_from is not None else None
        if not self.secret_path.is_file():
            atomic_write_bytes(self.secret_path, secrets.token_bytes(32) if given is None else given, mode=0o600)
        secret = _read_render_secret(self.secret_path)
        if given is not None and secret != given:
            raise ValueError(f"{self.secret_path} holds another render secret than {self.secret_from}: its images were "
                             "protected with that one; choose another output folder")
        return render_key(secret, "", image_id)  # the run secret stands in for the master secret


def _read_render_secret(path: Path) -> bytes:
    """The 32 bytes of a keyless run's render secret file.

    Raises:
        ValueError: an unreadable file, or one that is not 32 bytes (named).
    """
    try:
        secret = path.read_bytes()
    except OSError as err:
        raise ValueError(f"{path}: cannot read the render secret ({err.strerror or err})") from err
    if len(secret) != 32:
        raise ValueError(f"{path}: not a MedLocker render secret (expected 32 bytes, found {len(secret)})")
    return secret


def open_sealed_record(signed: SignedCertificate, blob: bytes | None, image_key: bytes, source: str) -> dict:
    """The whole watermark record sealed beside a certificate, for its owner or a grantee.

    Raises:
        SealedRecordError: no sealed record, one that does not open with ``image_key`` (wrong key,
            altered record or certificate), or one that is not the certified record.
    """
    cert = signed.certificate
    if blob is None:
        raise SealedRecordError(f"{source}: no sealed record beside the certificate")
    try:
        salted = decrypt_payload(blob, _record_key(image_key), certificate_digest(cert), source=f"{source} (sealed record)")
    except PayloadError as err:
        raise SealedRecordError(str(err).replace("restore payload", "sealed record")) from err
    if "sha256:" + hashlib.sha256(salted).hexdigest() != cert.get("sealed_record_sha256"):
        raise SealedRecordError(f"{source}: the sealed record does not match the certified hash")
    try:
        record = json.loads(salted)["record"]
    except (ValueError, KeyError, TypeError) as err:
        raise SealedRecordError(f"{source}: the sealed record is not a MedLocker record ({err})") from err
    if not isinstance(record, dict):
        raise SealedRecordError(f"{source}: the sealed record is not a JSON object")
    return record


@dataclass
class ProtectedFile:
    """A protected image as found on disk: pixels, and whatever certification it carries.

    Attributes:
        path: the image file.
        pixels: H x W x 3 uint8.
        dicom: the decoded DICOM (:class:`~monai_medlocker.io.dicom.FundusDicom`) or ``None``.
        params: the public watermark record, if any (:func:`public_record`).
        signed: the signed certificate, if any.
        payload: the encrypted restore payload, if any.
        sealed_record: the encrypted whole record, if any (:func:`open_sealed_record`).
        found_in: where the certificate came from: ``"png"``, ``"dicom"``, ``"sidecar"`` or ``None``.
        problem: why a certificate that seemed present could not be read.
        tags: the DICOM MedLocker private block, when there is one.
        public: the public record embedded beside the certificate (PNG chunk or DICOM block), if any.
        fallback: the same image read with its sidecar, when the certificate came from the embedded
            copy (or that copy was unreadable) and a sidecar sits beside it: used when the embedded
            copy is damaged.
    """

    path: Path
    pixels: np.ndarray
    dicom: object | None = None
    params: dict | None = None
    signed: SignedCertificate | None = None
    payload: bytes | None = None
    sealed_record: bytes | None = None
    found_in: str | None = None
    problem: str | None = None
    tags: object | None = None
    public: dict | None = None
    fallback: "ProtectedFile | None" = None


def _b64(text, source: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError, TypeError) as err:
        raise CertificateError(f"{source}: the {what} is not valid base64") from err


def _from_mapping(pf: ProtectedFile, data: dict, where: str, source: str) -> None:
    """Fill ``pf`` from a sidecar-like mapping (certificate, signature, restore_payload, sealed_record)."""
    if "certificate" not in data:
        return
    pf.signed = SignedCertificate.from_dict(data, source)
    pf.payload = _b64(data["restore_payload"], source, "restore payload") if data.get("restore_payload") else None
    pf.sealed_record = _b64(data["sealed_record"], source, "sealed record") if data.get("sealed_record") else None
    pf.params = pf.params or pf.signed.certificate.get("params")
    pf.found_in = where


def restore_data_problem(pf: ProtectedFile) -> str | None:
    """What is missing or damaged in the restore data beside ``pf``'s certificate, or ``None``.

    A format 2 certificate signs the hashes of the encrypted restore payload and sealed record as
    published (:data:`~monai_medlocker.certify.certificate.PUBLISHED`): both must be present and match.
    A format 1 certificate signs neither, so only their presence is checked. The public record
    embedded beside the certificate must be the certified one. The signature is not checked here.
    """
    cert = pf.signed.certificate
    legacy = cert.get("format") == "medlocker-certificate/1"
    published = cert.get(PUBLISHED)
    if not legacy and not isinstance(published, dict):
        return "the certificate signs no hashes of its restore data"
    problems = []
    for what, blob, name, plain in (("restore payload", pf.payload, "restore_payload_sha256", "payload_sha256"),
                                    ("sealed record", pf.sealed_record, "sealed_record_sha256", "sealed_record_sha256")):
        if blob is None:
            if not legacy or cert.get(plain):
                problems.append(f"its {what} is missing")
        elif not legacy and blob_sha256(blob) != published.get(name):
            problems.append(f"its {what} is not the signed one (altered, truncated or swapped)")
    if pf.public is not None and pf.public != cert.get("params"):
        problems.append("its embedded public record differs from the certified one")
    return "; ".join(problems) or None


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
        found = sorted(k for k in (getattr(img, "text", {}) or {}) if k in (PNG_PUBLIC, PNG_LEGACY_PARAMS, PNG_CERTIFICATE))
    return f"image (its PNG carries {', '.join(found)})" if found else None


def read_protected(path: str | Path) -> ProtectedFile:
    """Read an image and its certification: embedded first, then the sidecar beside it.

    When the image carries its own copy (or an unreadable one) and a sidecar sits beside it, the
    sidecar's reading is kept as :attr:`ProtectedFile.fallback`, for when the embedded copy is damaged.

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
                if tags.version != "medlocker-dicom/1":  # format 1 blocks held the whole record in clear
                    pf.public = tags.params
                if tags.certificate is not None:
                    pf.signed = SignedCertificate(tags.certificate, tags.signature or b"")
                    pf.payload, pf.sealed_record, pf.found_in = tags.restore_payload, tags.sealed_record, "dicom"
        elif path.suffix.lower() == ".png":
            from PIL import Image

            with Image.open(path) as img:
                text = dict(getattr(img, "text", {}) or {})
            for name in (PNG_PUBLIC, PNG_LEGACY_PARAMS):
                if name in text and pf.params is None:
                    pf.params = json.loads(text[name])
                    pf.public = pf.params if name == PNG_PUBLIC else None
            if PNG_CERTIFICATE in text:
                pf.signed = SignedCertificate(json.loads(text[PNG_CERTIFICATE]),
                                              _b64(text.get(PNG_SIGNATURE, ""), str(path), "signature"))
                pf.payload = _b64(text[PNG_PAYLOAD], str(path), "restore payload") if text.get(PNG_PAYLOAD) else None
                pf.sealed_record = _b64(text[PNG_SEALED], str(path), "sealed record") if text.get(PNG_SEALED) else None
                pf.found_in = "png"
    except (CertificateError, PrivateTagError, ValueError, KeyError, TypeError) as err:
        pf.problem = f"{path}: unreadable MedLocker certificate ({err})"
        pf.signed = None
    sidecar = path.with_name(path.stem + SIDECAR_SUFFIX)
    if sidecar.is_file():
        if pf.signed is None and pf.problem is None:
            _read_sidecar(pf, sidecar)
        else:  # the embedded copy comes first; the sidecar stands by in case it is damaged
            pf.fallback = ProtectedFile(path, pixels, dicom, params=pf.params, tags=pf.tags)
            _read_sidecar(pf.fallback, sidecar)
    return pf


def _read_sidecar(pf: ProtectedFile, sidecar: Path) -> None:
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            _from_mapping(pf, data, "sidecar", str(sidecar))
    except (CertificateError, ValueError, KeyError, TypeError, OSError) as err:
        pf.problem = f"{sidecar}: unreadable MedLocker certificate ({err})"
        pf.signed = None
