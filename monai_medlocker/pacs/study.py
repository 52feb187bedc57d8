"""Protect one study held by a PACS: pull it over DICOMweb, protect each fundus instance, store a
new derived series back with STOW-RS. Nothing on the PACS is modified or deleted.

Steps:
1. QIDO-RS lists the study's series; WADO-RS metadata shows which series are already MedLocker
   outputs (their instances carry the ``MEDLOCKER 1`` private block). If any exists, the study is
   reported as already protected and nothing is done, unless ``force`` is set.
2. WADO-RS downloads every instance of a fundus photograph SOP class into ``work_dir/in``;
   instances of other classes (reports, OCT volumes, ...) are listed as skipped.
3. The protect workflow (:class:`~monai_medlocker.workflows.protect.DatasetProtector`) writes
   derived instances into ``work_dir/out``, one derived series per source series.
4. STOW-RS stores each derived instance on its own request, so that a failure touches one
   instance only; the report lists exactly which SOP Instance UIDs the PACS confirmed. With a
   ``store`` target (:class:`~monai_medlocker.pacs.dimse.DimseStore`) they go by C-STORE instead.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pydicom
from tqdm import tqdm

from monai_medlocker.workflows.protect import PRIVATE_DIR, write_private
from monai_medlocker.pacs.dicomweb import DicomWebPacs, PacsError, json_has_medlocker_block, json_value

__all__ = ["FUNDUS_SOP_CLASSES", "StudyProtector", "format_study_summary"]

FUNDUS_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.77.1.5.1": "Ophthalmic Photography 8 Bit Image",
    "1.2.840.10008.5.1.4.1.1.77.1.5.2": "Ophthalmic Photography 16 Bit Image",  # refused by the reader, with a reason
    "1.2.840.10008.5.1.4.1.1.77.1.4": "VL Photographic Image",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image",
}
_SERIES_UID, _SOP_CLASS, _SOP_UID = "0020000E", "00080016", "00080018"
_SOURCE_IMAGE_SEQUENCE, _REFERENCED_SOP_UID = "00082112", "00081155"


def _referenced_sources(item: dict) -> list[str]:
    refs = item.get(_SOURCE_IMAGE_SEQUENCE, {}).get("Value") or []
    return [json_value(r, _REFERENCED_SOP_UID) for r in refs if json_value(r, _REFERENCED_SOP_UID)]


class StudyProtector:
    """Protect one PACS study into a new derived series.

    Args:
        pacs: the DICOMweb service (a :class:`DicomWebPacs`, or its URL).
        study_uid: the Study Instance UID.
        protector: a configured :class:`~monai_medlocker.workflows.protect.DatasetProtector` whose
            ``input_path`` and ``output_dir`` are the work folders (``work_dir/in`` and ``work_dir/out``).
        force: protect again even when the study already has a MedLocker series (a new series is made).
        progress: show progress bars.
        store: where derived instances go; ``None`` = STOW-RS to ``pacs``, or a
            :class:`~monai_medlocker.pacs.dimse.DimseStore` for C-STORE.
        remove_work_dir: delete the work folder (the parent of ``work_dir/in`` and ``work_dir/out``)
            after the run, also after an error: it holds the pulled originals and the owner's clear
            records (the grades). The bundle sets it for its temporary ``medlocker-pacs-*`` folder;
            a ``--work-dir`` of the user's is kept (private/ in it is 0700).
    """

    def __init__(self, pacs: DicomWebPacs | str, study_uid: str, protector, force: bool = False,
                 progress: bool = True, store=None, remove_work_dir: bool = False) -> None:
        self.store = store
        self.remove_work_dir = bool(remove_work_dir)
        if not study_uid or not isinstance(study_uid, str):
            raise ValueError(f"study_uid must be a Study Instance UID string, got {study_uid!r}")
        self.pacs = pacs if isinstance(pacs, DicomWebPacs) else DicomWebPacs(pacs)
        self.study_uid = study_uid
        self.protector = protector
        self.force = bool(force)
        self.progress = progress
        self.summary: dict | None = None

    def _inventory(self) -> tuple[list[tuple[str, str]], dict[str, list[str]], list[dict], dict[str, str]]:
        """Fundus instances to protect, existing MedLocker series (uid -> source SOP UIDs), skipped instances,
        and the series of every non-MedLocker instance (SOP UID -> series UID)."""
        series = self.pacs.study_series(self.study_uid)
        if not series:
            raise PacsError(f"PACS {self.pacs.url}: study {self.study_uid} not found (QIDO-RS returned no series)")
        todo, protected, skipped, series_of = [], {}, [], {}
        for s in series:
            series_uid = json_value(s, _SERIES_UID)
            metadata = self.pacs.series_metadata(self.study_uid, series_uid)
            if any(json_has_medlocker_block(m) for m in metadata):
                protected[series_uid] = [ref for m in metadata for ref in _referenced_sources(m)]
                continue
            for m in metadata:
                sop_class, sop_uid = json_value(m, _SOP_CLASS), json_value(m, _SOP_UID)
                series_of[sop_uid] = series_uid
                if sop_class in FUNDUS_SOP_CLASSES:
                    todo.append((series_uid, sop_uid))
                else:
                    name = pydicom.uid.UID(sop_class).name if sop_class else "unknown SOP class"
                    skipped.append({"series": series_uid, "sop_instance": sop_uid,
                                    "reason": f"not a fundus photograph class ({name})"})
        return todo, protected, skipped, series_of

    def _check_work_dirs(self) -> tuple[Path, Path]:
        in_dir, out_dir = Path(self.protector.input_path), Path(self.protector.output_dir)
        for folder in (in_dir, out_dir):
            if folder.exists() and any(folder.iterdir()):
                raise ValueError(f"work folder {folder} is not empty (an earlier study's files would be protected and "
                                 "stored again); give a new or empty work folder")
        return in_dir, out_dir

    def run(self) -> dict:
        """Pull, protect, store; returns (and writes ``private/pacs_summary.json`` in the output folder) the report.

        A study whose MedLocker series already covers every fundus instance is left alone. One
        partly covered (an interrupted run, or images added later) gets only the missing
        instances, into the existing derived series. ``force`` protects everything again into new
        series.
        """
        in_dir, out_dir = self._check_work_dirs()  # before anything is written, so never a stale report
        store_to = self.store or self.pacs
        summary = {"pacs": self.pacs.url, "stored_via": store_to.url, "study": self.study_uid,
                   "existing_medlocker_series": [], "skipped": [], "pull_failed": [], "stored": [],
                   "store_failed": [], "protect_failures": [], "derived_series": {}}
        try:
            todo, existing, skipped, series_of = self._inventory()
            summary.update(existing_medlocker_series=sorted(existing), skipped=skipped)
            if existing and not self.force:
                covered = {ref for refs in existing.values() for ref in refs}
                todo = [(series, sop) for series, sop in todo if sop not in covered]
                if not todo:
                    summary.update(status="already-protected", exit_code=0, message=(
                        f"study {self.study_uid} is already protected: MedLocker series {', '.join(sorted(existing))} "
                        f"cover all {len(covered)} fundus instance(s); nothing done (use --force to protect it again "
                        "into new series)"))
                    return summary
                # Complete the existing derived series rather than start new ones.
                for derived, refs in existing.items():
                    for ref in refs:
                        if ref in series_of:
                            self.protector.series_overrides[series_of[ref]] = derived
                summary["completing"] = len(todo)
            if not todo:
                summary.update(status="nothing-to-protect", exit_code=1,
                               message=f"study {self.study_uid} has no fundus photograph instances to protect")
                return summary
            for series_uid, sop_uid in tqdm(todo, desc="pull", unit="img", disable=not self.progress, file=sys.stderr):
                try:
                    ds = self.pacs.retrieve(self.study_uid, series_uid, sop_uid)
                    target = in_dir / series_uid / f"{sop_uid}.dcm"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    ds.save_as(target, enforce_file_format=True)
                except Exception as err:  # one instance that cannot be pulled must not stop the study
                    summary["pull_failed"].append({"series": series_uid, "sop_instance": sop_uid, "error": str(err)})
            if any(in_dir.rglob("*.dcm")):
                protect = self.protector.run()
            else:  # every pull failed
                protect = {"failures": [], "images": 0, "protected": 0, "successes": 0, "success_rate": None,
                           "median_queries": None}
            summary["protect_failures"] = protect["failures"]
            summary["protect"] = {k: protect[k] for k in ("images", "protected", "successes", "success_rate", "median_queries")}
            manifest = out_dir / PRIVATE_DIR / "manifest.jsonl"
            rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()] if manifest.is_file() else []
            outputs = [out_dir / r["output"] for r in rows if r.get("output") and r.get("protected", True)]
            for path in tqdm(outputs, desc="store", unit="img", disable=not self.progress, file=sys.stderr):
                self._store_one(store_to, path, summary)
            failures = summary["store_failed"] or summary["protect_failures"] or summary["pull_failed"]
            summary.update(status="incomplete" if failures else "protected", exit_code=1 if failures else 0, message=(
                f"stored {len(summary['stored'])} protected instance(s) of study {self.study_uid} in "
                f"{len(summary['derived_series'])} series; {len(summary['pull_failed'])} pull failure(s), "
                f"{len(summary['protect_failures'])} protect failure(s), {len(summary['store_failed'])} store failure(s), "
                f"{len(skipped)} skipped"))
            return summary
        except BaseException as err:
            summary.update(status="aborted", exit_code=1, message=f"stopped by {type(err).__name__}: {err}; "
                           f"{len(summary['stored'])} instance(s) were stored before (listed in this report)")
            raise
        finally:
            try:
                self._finish(summary)
            finally:
                if self.remove_work_dir:
                    self._remove_work_dir(in_dir, out_dir)

    def _remove_work_dir(self, in_dir: Path, out_dir: Path) -> None:
        """Delete the work folder and everything in it (only the one folder that holds ``in`` and ``out``)."""
        work = out_dir.parent
        if in_dir.parent.resolve() != work.resolve():
            raise ValueError(f"work folders {in_dir} and {out_dir} do not share one parent; not removing anything")
        shutil.rmtree(work, ignore_errors=True)

    def _store_one(self, store_to, path: Path, summary: dict) -> None:
        ds = pydicom.dcmread(path)
        entry = {"sop_instance": str(ds.SOPInstanceUID), "series": str(ds.SeriesInstanceUID),
                 "source_sop_instance": str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID), "file": path.name}
        try:
            result = store_to.store([ds], self.study_uid)
        except Exception as err:  # PacsError, or a library error on this instance (e.g. no accepted context)
            summary["store_failed"].append({**entry, "error": str(err) if isinstance(err, PacsError)
                                            else f"PACS {store_to.url}: {type(err).__name__}: {err}"})
            return
        if entry["sop_instance"] in result.stored:
            summary["stored"].append(entry)
            summary["derived_series"][entry["series"]] = summary["derived_series"].get(entry["series"], 0) + 1
        else:
            reason = result.failed.get(entry["sop_instance"], "the PACS did not confirm it")
            summary["store_failed"].append({**entry, "error": f"PACS {store_to.url}: not stored ({reason})"})

    def _finish(self, summary: dict) -> dict:
        out_dir = Path(self.protector.output_dir)
        summary["work_dir"] = str(out_dir.parent)
        if self.remove_work_dir:
            summary["work_dir_removed"] = True  # the pulled copies and clear records do not outlive the run
        write_private(out_dir, out_dir / PRIVATE_DIR / "pacs_summary.json", json.dumps(summary, indent=2).encode())
        self.summary = summary
        print(format_study_summary(summary), file=sys.stderr)
        return summary


def format_study_summary(summary: dict) -> str:
    lines = [f"MedLocker pacs protect: {summary['message']}"]
    for item in summary["stored"]:
        lines.append(f"  STORED {item['sop_instance']} (from {item['source_sop_instance']})")
    for item in summary.get("pull_failed", []):
        lines.append(f"  NOT PULLED {item['sop_instance']}: {item['error']}")
    for item in summary["store_failed"]:
        lines.append(f"  NOT STORED {item['sop_instance']} (from {item['source_sop_instance']}): {item['error']}")
    for item in summary["protect_failures"]:
        lines.append(f"  FAILED {item['image']}: {item['error']}")
    for item in summary["skipped"]:
        lines.append(f"  SKIPPED {item['sop_instance']}: {item['reason']}")
    return "\n".join(lines)
