"""The protect chain as MONAI dictionary transforms: load -> lesion maps -> WSM -> watermark -> certify -> save.

``bundle/configs/inference.json`` composes them in a ``Compose`` (``protect_chain``), so any step
can be swapped with a ``#``-path override file; :class:`~monai_medlocker.workflows.protect.DatasetProtector`
runs the chain once per image and only orchestrates (the image list, resume, the manifest, the report).

Keys of one image's dictionary, and the step that fills each:

==================  ===========================================================================
``image_path``      the input file (the protector)
``relative``        its path relative to the input folder or datalist (the protector)
``mask_paths``      its lesion mask files, maybe none (the protector)
``label``           its true grade, or ``None`` (the protector)
``seed``            its search seed (the protector)
``out_path``        where its protected image goes, in ``OUT/public`` (the protector)
``public_name``     its opaque public name, when names are not published (the protector; optional)
``image``           C x H x W uint8, watermarked in place by :class:`~.dictionary.AdversarialWatermarkd`
``original``        the same pixels, never changed (:class:`LoadFundusd`)
``dicom``, ``mode`` the decoded DICOM source (or ``None``) and the PNG mode to write back (:class:`LoadFundusd`)
``image_id``        the id its certificate and keys use (:class:`LoadFundusd`)
``lesion_maps``     4 x H x W lesion maps, with ``lesion_source`` and ``lesion_report`` (:class:`LesionMapsd`)
``optic_disc``,     the datalist's disc and fovea ``{"x", "y", "r"}`` (pixels), when it gives them (the protector)
``fovea``
``anatomy``         the no-go zones of the disc and macula and how each was found, with ``anatomy_boxes`` (:class:`AnatomyZonesd`)
``wsm``             the forbidden mask, with ``wsm_boxes`` (:class:`~.dictionary.LesionBBoxMaskd`)
``render_key``      the secret of its keyed rendering (:class:`RenderKeyd`)
``medlocker``       the watermark record (:class:`~.dictionary.AdversarialWatermarkd`)
``record``          the whole record, ``sealed`` its certificate and sealed blobs (:class:`Certifyd`)
==================  ===========================================================================
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Hashable, Mapping

import numpy as np
from monai.transforms import Transform

from monai_medlocker.certify.certificate import pixel_sha256
from monai_medlocker.certify.seal import PNG_PUBLIC, SIDECAR_SUFFIX, Keyring, protected_file_problem, public_record
from monai_medlocker.io.image import ImageReadError, atomic_write_bytes, load_fundus, portable_name, round_trip_mode, save_png
from monai_medlocker.lesions.source import LesionSource

__all__ = ["LoadFundusd", "LesionMapsd", "AnatomyZonesd", "RenderKeyd", "Certifyd", "SaveProtectedd", "record_without_timings"]

# Per-run facts of a record: not embedded in the published image, so that reruns give the same bytes.
_TIMINGS = ("seconds", "certify_seconds")


def record_without_timings(record: dict) -> dict:
    """The record as certified and embedded: without this run's timings (the detector's included)."""
    out = {k: v for k, v in record.items() if k not in _TIMINGS}
    if isinstance(out.get("lesion_report"), dict):
        out["lesion_report"] = {k: v for k, v in out["lesion_report"].items() if k not in _TIMINGS}
    return out


class LoadFundusd(Transform):
    """Read ``image_path`` (PNG/JPEG/TIFF/DICOM) into ``image`` and ``original`` (3 x H x W uint8).

    Also sets ``dicom`` (the decoded source instance, or ``None``), ``dicom_public`` (its header as it
    may be published, see :mod:`monai_medlocker.io.deidentify`), ``mode`` (``"L"`` for a greyscale
    PNG, written back grey) and ``image_id``: a DICOM's (published) SOP Instance UID or a file's
    relative name, plus ``#`` and the start of the original pixels' hash (a name or a UID alone would
    let one image's key open another's: two different instances may carry the same SOP Instance UID).

    Args:
        keep_identity: publish a DICOM source's patient, study and equipment identity (a clinic's own
            PACS round trip); default: de-identify by DICOM PS3.15 Annex E (Basic Profile, Retain UIDs).
        keep_free_text: with ``keep_identity``, publish free text that can carry findings (ImageComments, descriptions).
        retain_dates: the Retain Longitudinal Temporal Information with Full Dates Option.
        retain_uids: the Retain UIDs Option (default). Off, the published UIDs (the image id, which the
            certificate and grants name, included) are keyed hashes of the source's, under a secret
            that only the owner's ``keyring`` derives.
        keyring: the run's :class:`~monai_medlocker.certify.seal.Keyring` (needed with ``retain_uids`` off).
        keep_private: with ``keep_identity``, publish other vendors' private elements on purpose (default: removed
            at any depth).

    Raises:
        ImageReadError: an unreadable file, or one that is already a MedLocker output.
    """

    def __init__(self, keep_identity: bool = False, keep_free_text: bool = False, retain_dates: bool = False,
                 retain_uids: bool = True, keyring: Keyring | None = None, keep_private: bool = False) -> None:
        from monai_medlocker.io.deidentify import DicomPrivacy

        self.privacy = DicomPrivacy(keep_identity=bool(keep_identity), keep_free_text=bool(keep_free_text),
                                    retain_dates=bool(retain_dates), retain_uids=bool(retain_uids),
                                    keep_private=bool(keep_private))
        if not self.privacy.keep_identity and not self.privacy.retain_uids and keyring is None:
            raise ValueError("replacing UIDs (retain_uids false) needs the run's keyring, whose secret keys the UID hash")
        self.keyring = keyring

    def _uid_secret(self) -> bytes | None:
        if self.privacy.keep_identity or self.privacy.retain_uids:
            return None
        # An owner-only secret (a render key: grants never hold those) for an id no image can have.
        return self.keyring.render_key("\x00medlocker-uid-hash")

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        path = Path(d["image_path"])
        image, dicom = load_fundus(path)
        problem = protected_file_problem(path, dicom)
        if problem:
            raise ImageReadError(f"{path}: already a MedLocker-protected {problem}; protect the original instead")
        d["dicom"] = dicom
        if dicom is not None:
            from monai_medlocker.io.deidentify import deidentify

            d["dicom_public"] = deidentify(dicom.dataset, self.privacy, self._uid_secret())
            d["dicom_keep_private"] = self.privacy.keep_private  # the writer keeps them too
        d["mode"] = "RGB" if dicom is not None else round_trip_mode(path)
        # The id is public: a DICOM's published SOP Instance UID, never a hidden (opaque-named) file's name.
        name = (str(d["dicom_public"].SOPInstanceUID) if dicom is not None
                else d.get("public_name") or portable_name(d["relative"]))
        d["image_id"] = f"{name}#{pixel_sha256(image).split(':', 1)[1][:16]}"
        d["original"] = image.transpose(2, 0, 1)
        d["image"] = d["original"]  # the watermark step replaces it with a new array
        return d


class LesionMapsd(Transform):
    """``lesion_maps`` (MA, HE, EX, SE) from the image's mask files, or from a detector when it has none.

    Args:
        segmenter: ``"builtin"``, ``"network"`` or ``"masks"`` (see :class:`~monai_medlocker.lesions.source.LesionSource`).
        checkpoint: the trained segmenter, for ``"network"``.
    """

    def __init__(self, segmenter: str = "builtin", checkpoint: str | Path | None = None) -> None:
        self.source = LesionSource(segmenter, checkpoint)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        image = np.ascontiguousarray(np.asarray(d["original"]).transpose(1, 2, 0))
        d["lesion_maps"], d["lesion_source"], d["lesion_report"] = self.source(
            Path(d["image_path"]), image, [Path(p) for p in d.get("mask_paths") or []])
        return d


class AnatomyZonesd(Transform):
    """``anatomy`` and ``anatomy_boxes``: the optic disc and macula no-go zones that the WSM holds (DESIGN invariant 1).

    The datalist's ``optic_disc`` / ``fovea`` (``{"x", "y", "r"}`` in pixels) win; otherwise the built-in
    locator finds them (:func:`~monai_medlocker.lesions.anatomy.anatomy_zones` says how, and what the zones are).

    Args:
        enabled: ``False`` keeps only the lesion boxes (not for images a grader reads).
        on_missing: ``"fallback"`` (default: a conservative central zone, said in the record and the summary)
            or ``"refuse"`` (the image fails with a message naming it and is not published).
        disc_scale, macula_radius_dd, disc_margin, macula_margin: as :func:`~monai_medlocker.lesions.anatomy.anatomy_zones`.
    """

    def __init__(self, enabled: bool = True, on_missing: str = "fallback", disc_scale: float = 1.5,
                 macula_radius_dd: float = 1.0, disc_margin: float = 1.0, macula_margin: float = 1.5) -> None:
        from monai_medlocker.lesions.anatomy import ON_MISSING_ANATOMY

        if on_missing not in ON_MISSING_ANATOMY:
            raise ValueError(f"on_missing_anatomy must be one of {ON_MISSING_ANATOMY}, got {on_missing!r}")
        if disc_scale < 1.0 or macula_radius_dd <= 0 or disc_margin < 0 or macula_margin < 0:
            raise ValueError(f"anatomy zones need disc_scale >= 1, macula_radius_dd > 0 and margins >= 0, got "
                             f"{disc_scale}, {macula_radius_dd}, {disc_margin}, {macula_margin}")
        self.enabled, self.on_missing = bool(enabled), on_missing
        self.disc_scale, self.macula_radius_dd = float(disc_scale), float(macula_radius_dd)
        self.disc_margin, self.macula_margin = float(disc_margin), float(macula_margin)

    def to_record(self) -> dict:
        return {"enabled": self.enabled, "on_missing": self.on_missing, "disc_scale": self.disc_scale,
                "macula_radius_dd": self.macula_radius_dd, "disc_margin": self.disc_margin,
                "macula_margin": self.macula_margin}

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        from monai_medlocker.lesions.anatomy import AnatomyNotFoundError, anatomy_zones, zone_boxes

        d = dict(data)
        if not self.enabled:
            d["anatomy"], d["anatomy_boxes"] = {"enabled": False}, []
            return d
        image = np.ascontiguousarray(np.asarray(d["original"]).transpose(1, 2, 0))
        try:
            zones, record = anatomy_zones(image, d.get("optic_disc"), d.get("fovea"), self.disc_scale,
                                          self.macula_radius_dd, self.on_missing, self.disc_margin, self.macula_margin)
        except AnatomyNotFoundError as err:
            raise AnatomyNotFoundError(f"{d['image_path']}: {err}") from None
        except ValueError as err:
            raise ValueError(f"{d['image_path']}: {err}") from None
        d["anatomy"] = record
        d["anatomy_boxes"] = zone_boxes(zones, image.shape[:2]).tolist()
        return d


class RenderKeyd(Transform):
    """``render_key``: the secret of the image's keyed rendering, from the run's :class:`~monai_medlocker.certify.seal.Keyring`."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        d["render_key"] = self.keyring.render_key(d["image_id"])
        return d


class Certifyd(Transform):
    """``record`` (the whole record of the image) and, with an owner key, ``sealed`` (certificate and sealed blobs)."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        from monai_medlocker.io.dicom import derived_study_uid, dicom_subject_sha256, source_archive

        d = dict(data)
        record = dict(d["medlocker"])
        record["image_id"] = d["image_id"]
        record["source"] = {"file": portable_name(d["relative"]), "masks": [Path(m).name for m in d.get("mask_paths") or []]}
        if d.get("public_name"):
            record["source"]["public_name"] = d["public_name"]  # sealed: unlock gives the original name back
        if d["mode"] != "RGB":
            record["source"]["mode"] = d["mode"]  # unlock writes this mode again
        record["lesion_source"] = d["lesion_source"]
        if d.get("lesion_report") is not None:
            record["lesion_report"] = d["lesion_report"]
        record["wsm_boxes"] = [list(b) for b in d["wsm_boxes"]]
        if d.get("anatomy") is not None:
            record["anatomy"] = d["anatomy"]
        d["sealed"] = None
        if record.get("protected") and self.keyring.certifier is not None:
            t0 = time.perf_counter()
            src = d["dicom"].dataset if d["dicom"] is not None else None
            hwc = [np.ascontiguousarray(np.asarray(d[k]).transpose(1, 2, 0)) for k in ("original", "image")]
            extra = source_file = None
            if src is not None:
                # The certificate is public: it names only the published header (de-identified unless kept);
                # the original file, identity and all, is in the encrypted restore payload.
                public = d.get("dicom_public", src)
                extra = {"dicom_subject_sha256": dicom_subject_sha256(public, derived_study_uid(public))}
                source_file = source_archive(self._source_bytes(Path(d["image_path"]), hwc[0]), hwc[0])
            d["sealed"] = self.keyring.certifier.seal(d["image_id"], hwc[0], hwc[1], record_without_timings(record), extra,
                                                      source_file)
            record["certify_seconds"] = round(time.perf_counter() - t0, 4)
        d["record"] = record
        return d

    @staticmethod
    def _source_bytes(path: Path, pixels: np.ndarray) -> bytes:
        """The DICOM source's bytes, checked to be the file that was protected (unlock gives them back).

        Raises:
            ImageReadError: the file changed since it was read.
        """
        from monai_medlocker.io.dicom import read_fundus_dicom

        data = path.read_bytes()
        if not np.array_equal(read_fundus_dicom(path, data).pixels, pixels):
            raise ImageReadError(f"{path}: the file changed while it was being protected; protect it again")
        return data


class SaveProtectedd(Transform):
    """Write the protected image into ``out_path`` (in ``OUT/public``) with only its public record in clear.

    A PNG gets the public record and, when certified, the certificate and sealed blobs as text
    chunks; a DICOM input gives a derived instance (its series: :meth:`derived_series_uid`) with
    the ``MEDLOCKER 1`` private block. A certified image also gets its public sidecar. Nothing is
    written for an image that was not protected (no feasible placement, ``on_infeasible: skip``).

    Args:
        output_dir: the run's output folder (it makes the derived series UIDs stable per folder).
        dicom_encoding: ``"explicit"``, ``"rle"`` or ``"jpeg-ls"`` (lossless only).
    """

    def __init__(self, output_dir: str | Path, dicom_encoding: str = "explicit") -> None:
        from monai_medlocker.io.dicom import DICOM_ENCODINGS

        if dicom_encoding not in DICOM_ENCODINGS:
            raise ValueError(f"dicom_encoding must be one of {sorted(DICOM_ENCODINGS)} (lossless only), got {dicom_encoding!r}")
        self.output_dir = Path(output_dir)
        self.dicom_encoding = dicom_encoding
        self.series_overrides: dict[str, str] = {}

    def derived_series_uid(self, source_series_uid: str) -> str:
        """One derived series per source series and output folder; stable, so a resumed run adds to it.

        ``series_overrides`` (source series -> derived series) lets a caller complete an existing
        derived series, e.g. a PACS study protected in part earlier.
        """
        from pydicom.uid import generate_uid

        if source_series_uid in self.series_overrides:
            return self.series_overrides[source_series_uid]
        return generate_uid(entropy_srcs=["medlocker-protected", source_series_uid, str(self.output_dir.resolve())])

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        from monai_medlocker.io.dicom import derive_protected_dataset, save_dicom
        from monai_medlocker.io.dicom_header import dataset_header_digest
        from monai_medlocker.io.private_tags import MedlockerTags, write_medlocker_tags

        d = dict(data)
        record, sealed, out_path = d["record"], d["sealed"], Path(d["out_path"])
        if not record.get("protected"):
            return d
        protected = np.ascontiguousarray(np.asarray(d["image"]).transpose(1, 2, 0))
        public = public_record(record_without_timings(record))
        dicom = d["dicom"]
        if dicom is not None:
            src = dicom.dataset
            public_header = d.get("dicom_public", src)
            tags = MedlockerTags(params=public, source_sop_instance_uid=str(public_header.SOPInstanceUID))
            derived = derive_protected_dataset(public_header, protected, tags, encoding=self.dicom_encoding,
                                               series_uid=self.derived_series_uid(str(src.get("SeriesInstanceUID", ""))),
                                               keep_private=bool(d.get("dicom_keep_private")))
            if sealed is not None:
                # The header exactly as written is signed too, so the certificate is completed only now.
                sealed = d["sealed"] = sealed.with_dicom_header(dataset_header_digest(derived))
                tags.certificate, tags.signature, tags.restore_payload, tags.sealed_record = (
                    sealed.signed.certificate, sealed.signed.signature, sealed.payload, sealed.record)
                write_medlocker_tags(derived, tags)
            record["dicom"] = {
                "source": {"study": str(src.get("StudyInstanceUID", "")), "series": str(src.get("SeriesInstanceUID", "")),
                           "sop_instance": str(src.SOPInstanceUID), "sop_class": str(src.SOPClassUID)},
                "derived": {"series": str(derived.SeriesInstanceUID), "sop_instance": str(derived.SOPInstanceUID),
                            "transfer_syntax": str(derived.file_meta.TransferSyntaxUID)},
                "monochrome": dicom.monochrome,
            }
            save_dicom(out_path, derived)
        else:
            text = {PNG_PUBLIC: json.dumps(public, sort_keys=True)}
            if sealed is not None:
                text.update(sealed.png_text())
            save_png(out_path, protected[..., 0] if d["mode"] == "L" else protected, text=text)
        published = [out_path]
        if sealed is not None:  # the public sidecar: it travels with a copy that lost its embedded data
            published.append(out_path.with_name(out_path.stem + SIDECAR_SUFFIX))
            atomic_write_bytes(published[-1], json.dumps(sealed.sidecar_fields(), indent=2).encode())
        # File times travel in archives: the day only, as the certificate's, never each image's protect time.
        day = time.time() // 86400 * 86400
        for path in published:
            os.utime(path, (day, day))
        return d
