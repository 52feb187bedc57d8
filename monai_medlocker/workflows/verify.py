"""Verify protected images against an owner's public key: one verdict per image.

Verdicts:

* ``authentic``: authentic and restorable: the signature is valid, the pixels (and a DICOM's header)
  are exactly the certified ones, and the encrypted restore payload and sealed record are present
  and are the signed ones (a format 1 certificate, which signs no hashes of them, only needs them
  present); when the embedded copy is damaged, or a DICOM's MedLocker block was stripped (as a PACS may
  do), but the sidecar beside the image is intact, the image is verified with the sidecar (pixels and
  signed header digest included) and the detail says so. Printed ``AUTHENTIC (restorable)``; the
  ``--json`` rows keep ``"verdict": "authentic"`` and add ``"restorable"`` (true here, false for every
  other verdict, and for a format 1 certificate without a sealed record: ``authentic (no restore data)``);
* ``pixels authentic, restore data damaged``: as authentic, but the restore payload or the sealed
  record is missing or is not the signed one (altered, truncated, swapped), or the embedded public
  record differs from the certified one: the pixels can be trusted, but unlock would fail;
* ``watermark present, pixels modified``: the signature is valid, the pixels differ (lossy
  re-encoding, a resize, an edit), but the certified logo is still visible at its certified place;
* ``pixels modified, watermark not found``: the signature is valid, the pixels differ and the
  logo is not found where the certificate puts it;
* ``DICOM header modified``: the signature is valid, but the instance's patient/study identity or
  the source named in its MedLocker block is not the certified one (e.g. pixels and private block
  grafted onto another patient's instance), or, with exact pixels, any attribute of its header is
  not as protect wrote it (a format 2 certificate signs the header's digest): the detail and
  ``header_changes`` name the attributes (e.g. PatientID, ImageLaterality, Modality; names only, never
  their values). Pixels that differ get the verdicts above, with the header's changes listed under
  ``header_changes`` (a lossy transcode rewrites some);
* ``invalid signature``: the certificate or its signature was altered (or is unreadable);
* ``foreign owner``: the certificate was signed by another owner key;
* ``no certificate``: the image carries no MedLocker certificate (embedded or in a sidecar).

Exit codes: 0 when every image is ``authentic``; 3 when the others are all ``pixels authentic, restore
data damaged`` (the images can be trusted, but not unlocked: publish the files again from the
output folder); 1 when any image gets another verdict, or there is none.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from monai_medlocker.certify.certificate import PUBLISHED, pixel_sha256, verify_certificate
from monai_medlocker.certify.keys import OwnerPublicKey, load_public_key
from monai_medlocker.certify.seal import ProtectedFile, read_protected, restore_data_problem
from monai_medlocker.io.image import ImageReadError, atomic_write_bytes
from monai_medlocker.io.outdir import check_output_file
from monai_medlocker.watermark.logo import greyscale_logo, load_logo, logo_sha256

__all__ = ["VERDICTS", "RESTORE_DAMAGED", "EXIT_RESTORE_DAMAGED", "find_certified_images", "dicom_header_problem",
           "dicom_header_changes", "header_modified_detail", "verify_image", "Verifier", "verdict_label", "format_verify_summary"]

RESTORE_DAMAGED = "pixels authentic, restore data damaged"
EXIT_RESTORE_DAMAGED = 3
VERDICTS = ("authentic", RESTORE_DAMAGED, "watermark present, pixels modified", "pixels modified, watermark not found",
            "DICOM header modified", "invalid signature", "foreign owner", "no certificate", "unreadable image")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".dcm", ".dicom")


def find_certified_images(source: str | Path) -> list[Path]:
    """One file, or the images in a folder (recursively; masks, sidecars, reports and the temporary
    files of an interrupted write are not images)."""
    from monai_medlocker.io.dicom import is_dicom_file
    from monai_medlocker.io.image import is_temporary_file

    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"input not found: {source}")
    if source.is_file():
        return [source]
    from monai_medlocker.lesions.masks import is_mask_file

    files = [p for p in sorted(source.rglob("*")) if p.is_file() and not is_mask_file(p) and p.name.upper() != "DICOMDIR"
             and not is_temporary_file(p)
             and (p.suffix.lower() in _IMAGE_SUFFIXES or (p.suffix.lower() not in (".json", ".jsonl") and is_dicom_file(p)))]
    if not files:
        raise ValueError(f"no images found in {source}")
    return files


def dicom_header_problem(pf: ProtectedFile, cert: dict) -> str | None:
    """Why a protected DICOM's header is not the certified one (another patient, study or source), or ``None``."""
    from monai_medlocker.io.dicom import dicom_subject_sha256

    extra = cert.get("extra") or {}
    # The private block's source UID, not SourceImageSequence: a PACS or dcmtk transcoding the
    # instance legitimately re-points SourceImageSequence at the instance it transcoded.
    tags = pf.tags
    source_uid = str(cert.get("image_id") or "").split("#", 1)[0]  # the id is the UID plus the pixels' hash
    # A block stripped (as a PACS may) or unreadable, with the sidecar's certificate: the signed header digest
    # (which leaves the block out) checks the rest of the header.
    sidecar_only = _block_missing(pf) and _signs_header(cert)
    if not sidecar_only and (tags is None or tags.source_sop_instance_uid != source_uid):
        return f"its MedLocker block does not name the certified original {source_uid}"
    if "dicom_subject_sha256" in extra and extra["dicom_subject_sha256"] != dicom_subject_sha256(pf.dicom.dataset):
        return "its patient/study attributes are not the certified ones"
    return None


def _block_missing(pf: ProtectedFile) -> bool:
    """A DICOM without a readable MedLocker block, whose certificate came from the sidecar beside it."""
    return pf.dicom is not None and pf.tags is None and pf.found_in == "sidecar"


def _signs_header(cert: dict) -> bool:
    """Whether the certificate signs the digest of the DICOM header as written (format 2)."""
    published = cert.get(PUBLISHED)
    return isinstance(published, dict) and published.get("dicom_header") is not None


def dicom_header_changes(pf: ProtectedFile, cert: dict) -> list[str]:
    """The attributes of a protected DICOM's header that are not as protect wrote them (empty: none).

    A format 2 certificate signs the header's digest (:mod:`monai_medlocker.io.dicom_header`); a
    format 1 certificate signs none, so only :func:`dicom_header_problem` applies to it.
    """
    from monai_medlocker.io.dicom_header import file_header_digest, header_changes

    if cert.get("format") == "medlocker-certificate/1":
        return []
    if not _signs_header(cert):
        return ["the certificate signs no digest of the header"]
    return header_changes(cert[PUBLISHED]["dicom_header"], file_header_digest(pf.path))


def header_modified_detail(problem: str | None, changes: list[str]) -> str:
    """What verify and unlock say of a modified DICOM header: the problem, and the attributes that changed (names only)."""
    named = ", ".join(changes)
    if problem:
        return f"{problem} ({named})" if named else problem
    return f"not as protect wrote it: {named}"


def verify_image(pf: ProtectedFile, pub: OwnerPublicKey, logo: np.ndarray) -> dict:
    """The verdict for one image already read by :func:`read_protected` (its sidecar too, when its embedded copy fails)."""
    row = _verdict(pf, pub, logo)
    if _block_missing(pf) and row["verdict"] == "authentic":
        row["detail"] = "the instance has no MedLocker block (a PACS may strip private data): verified with the sidecar"
    if row["verdict"] != "authentic" and pf.fallback is not None:
        alt = _verdict(pf.fallback, pub, logo)
        rank = (lambda r: {"authentic": 0, RESTORE_DAMAGED: 1}.get(r["verdict"], 2))  # noqa: E731
        if rank(alt) < rank(row):
            damage = f"the embedded copy is damaged ({row['verdict']}" + (f": {row['detail']})" if row.get("detail") else ")")
            alt["detail"] = "; ".join(x for x in (alt.get("detail"), f"verified with the sidecar; {damage}") if x)
            return alt
    return row


def _verdict(pf: ProtectedFile, pub: OwnerPublicKey, logo: np.ndarray) -> dict:
    row = {"image": str(pf.path), "certificate_in": pf.found_in, "restorable": False}
    if pf.problem:
        return {**row, "verdict": "invalid signature", "detail": pf.problem}
    if pf.signed is None:
        return {**row, "verdict": "no certificate"}
    cert = pf.signed.certificate
    row.update(image_id=cert.get("image_id"), key_id=cert.get("key_id"))
    status = verify_certificate(pf.signed, pub)
    if status != "valid":
        detail = (f"signed by {cert.get('key_id')}, not by {pub.key_id}" if status == "foreign owner"
                  else "the certificate or its signature does not match the owner's public key")
        return {**row, "verdict": status, "detail": detail}
    changes = dicom_header_changes(pf, cert) if pf.dicom is not None else []
    if changes:
        row["header_changes"] = changes
    problem = dicom_header_problem(pf, cert) if pf.dicom is not None else None
    exact = pixel_sha256(pf.pixels) == cert.get("watermarked_sha256")
    if problem or (changes and exact):
        return {**row, "verdict": "DICOM header modified", "detail": header_modified_detail(problem, changes)}
    if exact:
        damage = restore_data_problem(pf)
        if damage:
            return {**row, "verdict": RESTORE_DAMAGED, "detail": damage}
        # A format 1 certificate may stand without a sealed record, which unlock needs.
        return {**row, "verdict": "authentic", "restorable": pf.payload is not None and pf.sealed_record is not None}
    params = cert.get("params") or {}
    if params.get("logo_sha256") != logo_sha256(logo):
        return {**row, "verdict": "pixels modified, watermark not found",
                "detail": "the certified logo is not the one given (--logo), so it could not be looked for"}
    mark_logo = greyscale_logo(logo) if params.get("logo_rendering") == "greyscale" else logo
    from monai_medlocker.certify.detect import detect_logo

    found = detect_logo(pf.pixels, params, mark_logo)
    verdict = "watermark present, pixels modified" if found["present"] else "pixels modified, watermark not found"
    return {**row, "verdict": verdict, "detection_score": round(found["score"], 4), "detection_threshold": found["threshold"]}


class Verifier:
    """Verify a file or a folder of protected images.

    Args:
        input_path: an image or a folder.
        public_key: the owner's ``.pub`` file (or ``.key``; only its public part is read), or an
            :class:`OwnerPublicKey`.
        logo: the owner's logo file, used to look for the mark in modified images (default: the shipped logo).
        report: optional path of a JSON report.
        progress: show a progress bar.
    """

    def __init__(self, input_path: str | Path, public_key: str | Path | OwnerPublicKey, logo: str | Path | None = None,
                 report: str | Path | None = None, progress: bool = True) -> None:
        self.input_path = Path(input_path)
        self.public_key = public_key if isinstance(public_key, OwnerPublicKey) else load_public_key(public_key)
        self.logo = load_logo(logo)
        self.report = check_output_file(report, "--report") if report else None
        self.progress = progress
        self.summary: dict | None = None

    def run(self) -> dict:
        start = time.perf_counter()
        rows = []
        for path in tqdm(find_certified_images(self.input_path), desc="verify", unit="img", disable=not self.progress,
                         file=sys.stderr):
            try:
                rows.append(verify_image(read_protected(path), self.public_key, self.logo))
            except (ImageReadError, ValueError, OSError) as err:
                message = str(err)
                rows.append({"image": str(path), "verdict": "unreadable image", "restorable": False,
                             "detail": message if str(path) in message else f"{path}: {message}"})
            except Exception as err:  # a library failure on one file must not stop the batch
                rows.append({"image": str(path), "verdict": "unreadable image", "restorable": False,
                             "detail": f"{path}: {type(err).__name__}: {err}"})
        counts = {v: sum(r["verdict"] == v for r in rows) for v in VERDICTS if any(r["verdict"] == v for r in rows)}
        self.summary = {"input": str(self.input_path), "owner_key_id": self.public_key.key_id, "images": len(rows),
                        "verdicts": counts, "results": rows, "seconds": round(time.perf_counter() - start, 2),
                        "exit_code": _exit_code(rows)}
        if self.report:
            atomic_write_bytes(self.report, json.dumps(self.summary, indent=2).encode())
        return self.summary


def _exit_code(rows: list[dict]) -> int:
    """0: all authentic; 3: the rest only have damaged restore data; 1: anything else (or no image)."""
    verdicts = {r["verdict"] for r in rows}
    if not rows or verdicts - {"authentic", RESTORE_DAMAGED}:
        return 1
    return EXIT_RESTORE_DAMAGED if RESTORE_DAMAGED in verdicts else 0


def verdict_label(row: dict) -> str:
    """A row's verdict as printed: ``authentic (restorable)`` apart from ``authentic (no restore data)``."""
    if row["verdict"] != "authentic":
        return row["verdict"]
    return "authentic (restorable)" if row.get("restorable") else "authentic (no restore data)"


def format_verify_summary(summary: dict) -> str:
    lines, counts = [], {}
    for r in summary["results"]:
        label = verdict_label(r)  # e.g. AUTHENTIC (restorable)
        head = r["verdict"].upper() + label[len(r["verdict"]):]
        lines.append(f"{head:38s} {r['image']}" + (f"  ({r['detail']})" if r.get("detail") else ""))
        counts[label] = counts.get(label, 0) + 1
    lines.append(f"MedLocker verify: {summary['images']} image(s): " + ", ".join(f"{n} {v}" for v, n in counts.items()))
    return "\n".join(lines)
