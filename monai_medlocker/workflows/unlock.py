"""Unlock protected images: bit-exact originals for the owner or a grant holder.

For each image: read its certificate, encrypted restore payload and sealed record, check the
signature (when an owner public key is known), derive or look up the image's key, decrypt both
(the certificate is the associated data, so a changed certificate, payload or record fails
here), put the original pixels back under the logo boxes, and check the result against the
certified hash of the original. When the embedded copy fails (or a DICOM's MedLocker block was stripped)
and an intact sidecar sits beside the image, the sidecar is used.
Only then is anything written. A DICOM image comes back as its original file, byte for byte (identity,
encoding and all, from the encrypted restore payload; outputs of earlier versions get their original
UIDs and header values back from the certificate); one whose patient or study attributes, or any
signed header attribute (e.g. laterality, modality), changed after protection is refused (verify
calls it "DICOM header modified").
The signature is always checked: without the owner's public key (from the key, the grant or
``public_key``) nothing is unlocked. One run at a time holds the output folder, and nothing is
written outside it (:mod:`monai_medlocker.io.outdir`).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from monai_medlocker.certify.certificate import certificate_digest, pixel_sha256, verify_certificate
from monai_medlocker.certify.grant import Grant, GrantError, load_grant
from monai_medlocker.certify.keys import OwnerKey, OwnerPublicKey, load_owner_key, load_public_key
from monai_medlocker.certify.payload import (
    PayloadError,
    apply_restore_payload,
    decrypt_payload,
    derive_image_key,
    restore_payload_source_file,
)
from monai_medlocker.certify.seal import ProtectedFile, SealedRecordError, open_sealed_record, payload_sha256, read_protected
from monai_medlocker.io.image import ImageReadError, atomic_write_bytes, load_rgb, round_trip_mode, save_png
from monai_medlocker.io.outdir import OutputError, OutputLock, clean_temporaries, inside_output, output_name, prepare_output_dir
from monai_medlocker.workflows.verify import (
    dicom_header_changes,
    dicom_header_problem,
    find_certified_images,
    header_modified_detail,
)

__all__ = ["UnlockError", "unlock_image", "Unlocker", "format_unlock_summary"]


class UnlockError(ValueError):
    """An image that cannot be unlocked; the message names the file and the reason."""


def unlock_image(pf: ProtectedFile, key: OwnerKey | None = None, grant: Grant | None = None,
                 pub: OwnerPublicKey | None = None) -> tuple[np.ndarray, dict]:
    """The original pixels of one protected image, checked against the certified hash, and its whole record.

    Raises:
        UnlockError: see :func:`_open_protected`.
    """
    restored, record, _ = _open_protected(pf, key, grant, pub)
    return restored, record


def _open_protected(pf: ProtectedFile, key: OwnerKey | None = None, grant: Grant | None = None,
                    pub: OwnerPublicKey | None = None) -> tuple[np.ndarray, dict, bytes]:
    """The original pixels, the whole record and the decrypted restore payload of one protected image.

    Args:
        pub: the owner's public key; default: the owner key's. Required with a grant that carries none.

    Raises:
        UnlockError: no certificate, an invalid signature or foreign owner, no public key to check
            the signature with, a DICOM header changed after protection, a key or grant that does
            not open it, a tampered payload, record or certificate, or pixels that do not restore.
    """
    where = str(pf.path)
    if pf.problem:
        raise UnlockError(pf.problem)
    if pf.signed is None or pf.payload is None:
        raise UnlockError(f"{where}: no MedLocker certificate with a restore payload (was it protected with --key?)")
    cert = pf.signed.certificate
    image_id, key_id = cert.get("image_id"), cert.get("key_id")
    pub = pub or (key.public if key is not None else None) or (grant.public_key if grant is not None else None)
    if pub is None:
        raise UnlockError(f"{where}: no owner public key to check the signature with; nothing unlocked")
    status = verify_certificate(pf.signed, pub)
    if status != "valid":
        raise UnlockError(f"{where}: {status} (certificate key {key_id}, expected {pub.key_id}); nothing unlocked")
    if pf.dicom is not None:
        problem, changes = dicom_header_problem(pf, cert), dicom_header_changes(pf, cert)
        if problem or changes:
            raise UnlockError(f"{where}: DICOM header modified after protection: {header_modified_detail(problem, changes)}; "
                              "the original pixels are not handed back under another header (nothing unlocked)")
    if key is not None:
        if key_id != key.key_id:
            raise UnlockError(f"{where}: protected by owner key {key_id}, not by the given key {key.key_id}")
        image_key = derive_image_key(key.master_secret, key.key_id, image_id)
    elif grant is not None:
        if key_id != grant.key_id:
            raise UnlockError(f"{where}: protected by owner key {key_id}; the grant is for {grant.key_id}")
        try:
            image_key = grant.key_for(image_id)
        except GrantError as err:
            raise UnlockError(f"{where}: {err}") from err
    else:
        raise UnlockError("unlock needs an owner key or a grant")
    try:
        record = open_sealed_record(pf.signed, pf.sealed_record, image_key, where)
        packed = decrypt_payload(pf.payload, image_key, certificate_digest(cert), source=where)
    except (PayloadError, SealedRecordError) as err:
        raise UnlockError(str(err)) from err
    if payload_sha256(packed) != cert.get("payload_sha256"):
        raise UnlockError(f"{where}: the decrypted restore payload does not match the certified hash")
    try:
        restored = apply_restore_payload(pf.pixels, packed, source=where)
    except PayloadError as err:
        raise UnlockError(str(err)) from err
    if pixel_sha256(restored) != cert.get("original_sha256"):
        raise UnlockError(f"{where}: the restored pixels do not match the certified original (the protected image was "
                          "modified after protection, outside the logo); nothing written")
    return restored, record, packed


def _holds_file(target: Path, content: bytes) -> bool:
    """Whether the existing ``target`` is ``content``, byte for byte."""
    try:
        return target.stat().st_size == len(content) and target.read_bytes() == content
    except OSError:
        return False


def _holds_original(target: Path, original_sha256: str | None, mode: str | None) -> bool:
    """Whether the existing ``target`` decodes to the certified original pixels (and, for a PNG, in its ``mode``)."""
    try:
        if mode is not None and round_trip_mode(target) != mode:
            return False
        return original_sha256 is not None and pixel_sha256(load_rgb(target)) == original_sha256
    except (ImageReadError, ValueError, OSError):
        return False


class Unlocker:
    """Unlock a file or a folder of protected images into ``output_dir``.

    Args:
        input_path: a protected image or a folder of them.
        output_dir: where originals are written (same relative names, or the original ones of images
            published under opaque names; never inside the input folder).
        key: the owner's ``.key`` file (or an :class:`OwnerKey`); or
        grant: a grant file (or a :class:`Grant`) covering the images.
        passphrase: the key file's passphrase, when it has one.
        public_key: the owner's ``.pub`` (needed with a grant that carries no public key; taken
            from the key or the grant otherwise).
        progress: show a progress bar.
        wait: wait for another run that holds ``output_dir`` instead of refusing.

    Raises:
        ValueError: neither or both of a key and a grant, a grant without a public key and no
            ``public_key``, or an output folder inside the input folder.
    """

    def __init__(self, input_path: str | Path, output_dir: str | Path, key: str | Path | OwnerKey | None = None,
                 grant: str | Path | Grant | None = None, passphrase: str | None = None,
                 public_key: str | Path | OwnerPublicKey | None = None, progress: bool = True,
                 wait: bool = False) -> None:
        if (key is None) == (grant is None):
            raise ValueError("give exactly one of an owner key (--key) or a grant (--grant)")
        self.key = key if isinstance(key, OwnerKey) or key is None else load_owner_key(key, passphrase)
        self.grant = grant if isinstance(grant, Grant) or grant is None else load_grant(grant)
        if isinstance(public_key, (str, Path)):
            public_key = load_public_key(public_key)
        # The signature is always checked: the owner key or the grant carries the public key.
        self.public_key = public_key or (self.key.public if self.key else self.grant.public_key)
        if self.public_key is None:
            raise ValueError(f"grant {self.grant.path or ''} carries no owner public key, so the certificates' signatures "
                             "could not be checked; pass the owner's public key with --pub")
        self.input_path, self.output_dir = Path(input_path), Path(output_dir)
        in_root, out_root = self.input_path.resolve(), self.output_dir.resolve()
        # A folder's outputs must not land among its inputs (a re-run would read them back);
        # a single file only needs a different folder.
        if out_root == in_root or (self.input_path.is_dir() and in_root in out_root.parents) or \
                (self.input_path.is_file() and out_root == in_root.parent):
            raise ValueError(f"output folder {self.output_dir} is the input folder or inside it; choose a separate folder")
        self.progress = progress
        self.wait = bool(wait)
        self.summary: dict | None = None

    def _target(self, path: Path, is_dicom: bool, source: dict | None = None) -> Path:
        rel = path.relative_to(self.input_path) if self.input_path.is_dir() else Path(path.name)
        if (source or {}).get("public_name") and source.get("file"):
            rel = Path(source["file"])  # published under an opaque name: the original relative path comes back
        try:
            return inside_output(self.output_dir, self.output_dir / output_name(rel, is_dicom))
        except OutputError as err:
            raise UnlockError(f"{path}: {err}") from err

    def _unlock_one(self, path: Path) -> dict:
        from monai_medlocker.io.dicom import read_fundus_dicom, rebuild_source_file, restore_original_dataset, save_dicom

        pf = read_protected(path)
        try:
            restored, record, packed = _open_protected(pf, self.key, self.grant, self.public_key)
        except UnlockError as err:
            if pf.fallback is None:
                raise
            try:  # the embedded copy is damaged: an intact sidecar beside the image still restores it
                restored, record, packed = _open_protected(pf.fallback, self.key, self.grant, self.public_key)
            except UnlockError:
                raise err from None
            pf = pf.fallback
        target = self._target(path, pf.dicom is not None, record.get("source"))
        if self.input_path.is_dir() and self.input_path.resolve() in target.resolve().parents:
            raise UnlockError(f"{path}: its output {target} would lie inside the input folder; choose another output folder")
        cert = pf.signed.certificate
        try:
            source_file = restore_payload_source_file(packed, str(path)) if pf.dicom is not None else None
        except PayloadError as err:
            raise UnlockError(str(err)) from err
        original = None
        if source_file is not None:
            # The original file, every byte: identity, other vendors' data, encoding and transfer syntax.
            try:
                original = rebuild_source_file(source_file, restored, str(path))
                decoded = read_fundus_dicom(path, original).pixels
            except ValueError as err:
                raise UnlockError(str(err)) from err
            if pixel_sha256(decoded) != cert.get("original_sha256"):
                raise UnlockError(f"{path}: the original DICOM file in the restore payload does not decode to the "
                                  "certified original pixels; nothing written")
        if target.exists():
            # An earlier (perhaps killed) run's output: done when it holds the original (for a kept original file,
            # byte for byte), else never replaced.
            if (_holds_file(target, original) if original is not None else
                    _holds_original(target, cert.get("original_sha256"), None if pf.dicom is not None else
                                    (record.get("source") or {}).get("mode", "RGB"))):
                return {"image": str(path), "status": "already-restored", "output": str(target),
                        "image_id": cert.get("image_id"), "original_sha256": cert.get("original_sha256")}
            raise UnlockError(f"{path}: {target} already exists and is not the certified original; not overwritten")
        if original is not None:
            atomic_write_bytes(target, original)
        elif pf.dicom is not None:  # written before the original file was kept: rebuilt from the certificate
            header = (cert.get("extra") or {}).get("dicom_original")
            if header is None:
                raise UnlockError(f"{path}: the certificate holds no original DICOM header; cannot rebuild the instance")
            save_dicom(target, restore_original_dataset(pf.dicom.dataset, restored, header))
        else:
            mode = (record.get("source") or {}).get("mode", "RGB")
            save_png(target, restored[..., 0] if mode == "L" else restored)  # a greyscale original comes back grey
        return {"image": str(path), "status": "unlocked", "output": str(target), "image_id": cert.get("image_id"),
                "original_sha256": cert.get("original_sha256"), "certificate_in": pf.found_in}

    def run(self) -> dict:
        """Unlock every image (one run at a time per output folder); returns the summary.

        Raises:
            OutputError: an unusable output folder, or another run holding it.
        """
        paths = find_certified_images(self.input_path)
        created = not self.output_dir.exists()
        prepare_output_dir(self.output_dir)
        try:
            with OutputLock(self.output_dir, wait=self.wait, command="medlocker unlock"):
                clean_temporaries(self.output_dir)
                return self._run(paths)
        finally:
            if created and not any(self.output_dir.iterdir()):
                self.output_dir.rmdir()  # nothing unlocked: leave no trace

    def _run(self, paths: list[Path]) -> dict:
        start = time.perf_counter()
        rows = []
        for path in tqdm(paths, desc="unlock", unit="img", disable=not self.progress, file=sys.stderr):
            try:
                rows.append(self._unlock_one(path))
            except (UnlockError, ImageReadError, ValueError, OSError) as err:
                message = str(err)
                rows.append({"image": str(path), "status": "failed",
                             "error": message if str(path) in message else f"{path}: {message}"})
            except Exception as err:  # a library failure on one file must not stop the batch
                rows.append({"image": str(path), "status": "failed", "error": f"{path}: {type(err).__name__}: {err}"})
        failed = [r for r in rows if r["status"] == "failed"]
        self.summary = {"input": str(self.input_path), "output_dir": str(self.output_dir), "images": len(rows),
                        "unlocked": len(rows) - len(failed), "failures": failed, "results": rows,
                        "already_restored": sum(r["status"] == "already-restored" for r in rows),
                        "seconds": round(time.perf_counter() - start, 2), "exit_code": 1 if failed or not rows else 0}
        if rows and len(failed) < len(rows):
            atomic_write_bytes(self.output_dir / "unlock_summary.json", json.dumps(self.summary, indent=2).encode())
        return self.summary


def format_unlock_summary(summary: dict) -> str:
    lines = [f"MedLocker unlock: {summary['unlocked']}/{summary['images']} image(s) restored -> {summary['output_dir']}"]
    if summary.get("already_restored"):
        lines[0] += f" ({summary['already_restored']} already restored by an earlier run, skipped)"
    lines += [f"  FAILED {f['error']}" for f in summary["failures"]]
    return "\n".join(lines)
