"""The MedLocker operators of the Deploy app: protect the selected fundus series, write derived instances.

``FundusProtectOperator`` takes the SDK loader's study list and the SDK selector's selected series. It
protects every instance of every selected series (through :class:`protect_step.ProtectStep`, the
same per-image step as ``medlocker protect``), and names what it does not protect: each instance of
a series the fundus rules did not select (a CT, say) is *skipped*; each file that looks like DICOM
but that the loader could not read is *refused* with the reason. ``MedlockerDicomWriterOperator``
writes the derived instances with their MedLocker private block (the SDK's DICOM writers build new
objects and would drop it) through the bundle's own save step, the per-image records, and the
summary, in ``medlocker protect``'s public/private layout; a skipped or refused
instance, or one that failed, makes the app exit non-zero.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.uid import UID

from monai.deploy.core import Fragment, Operator, OperatorSpec

from monai_medlocker.io.dicom import is_dicom_file, read_fundus_dicom
from monai_medlocker.io.image import ImageReadError, atomic_write_bytes, is_temporary_file, portable_name
from monai_medlocker.io.outdir import OutputError, inside_output
from monai_medlocker.lesions.masks import is_mask_file
from monai_medlocker.workflows.protect import PRIVATE_DIR, PUBLISH_NOTE, PUBLISH_TEXT

from protect_step import InstanceOutcome, ProtectStep

__all__ = ["FUNDUS_SELECTION_RULES", "FUNDUS_RULES_TEXT", "ProtectBatch", "FundusProtectOperator",
           "MedlockerDicomWriterOperator"]

_OP = r"^1\.2\.840\.10008\.5\.1\.4\.1\.1\.77\.1\.5\.[12]$"  # Ophthalmic Photography 8 Bit / 16 Bit Image Storage
_VL_PHOTOGRAPHIC = r"^1\.2\.840\.10008\.5\.1\.4\.1\.1\.77\.1\.4$"
_SECONDARY_CAPTURE = r"^1\.2\.840\.10008\.5\.1\.4\.1\.1\.7$"
# DICOMSeriesSelectorOperator rules: its string conditions are case-insensitive regular expressions (anchored
# here, so that "OP" does not also match "OPT", the OCT modality); a series matching several is taken once.
FUNDUS_SELECTION_RULES = {
    "selections": [
        {"name": "Ophthalmic Photography", "conditions": {"SOPClassUID": _OP}},
        {"name": "VL Photographic", "conditions": {"SOPClassUID": _VL_PHOTOGRAPHIC}},
        {"name": "Ophthalmic Secondary Capture", "conditions": {"SOPClassUID": _SECONDARY_CAPTURE, "Modality": "^OP$"}},
        {"name": "Modality OP", "conditions": {"Modality": "^OP$"}},
    ]
}
FUNDUS_RULES_TEXT = json.dumps(FUNDUS_SELECTION_RULES)
FUNDUS_DESCRIPTION = ("Ophthalmic Photography 8/16 Bit, VL Photographic, and Secondary Capture or any other instance "
                      "with Modality OP")

logger = logging.getLogger("medlocker_deploy")


@dataclass
class ProtectBatch:
    """What the protect operator hands to the writer: the outcomes and what was not protected, with why."""

    outcomes: list[InstanceOutcome] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    refused: list[dict] = field(default_factory=list)
    ignored: list[dict] = field(default_factory=list)


def _report(kind: str, path: Path, message: str) -> dict:
    """Say on stderr that ``path`` was skipped, refused or ignored, and why; its summary row."""
    print(f"medlocker_deploy: {kind.upper()} {message}", file=sys.stderr, flush=True)
    return {"file": str(path), "reason": message}


class FundusProtectOperator(Operator):
    """Protect every instance of the selected fundus series; name the instances skipped or refused.

    Named inputs:
        dicom_study_list: every study the SDK's ``DICOMDataLoaderOperator`` loaded.
        study_selected_series_list: the series ``DICOMSeriesSelectorOperator`` selected with the fundus rules.

    Named output:
        protect_batch: a :class:`ProtectBatch`.
    """

    def __init__(self, fragment: Fragment, *args, protect_step: ProtectStep, input_folder: Path, **kwargs):
        self.protect_step = protect_step
        self.input_folder = Path(input_folder).resolve()
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("dicom_study_list")
        spec.input("study_selected_series_list")
        spec.output("protect_batch")

    def compute(self, op_input, op_output, context):
        studies = op_input.receive("dicom_study_list") or []
        selected = op_input.receive("study_selected_series_list") or []
        chosen = {s.series.SeriesInstanceUID: s.series for study in selected for s in study.selected_series}
        batch = ProtectBatch()
        loaded: set[Path] = set()
        to_protect: list[Path] = []
        for study in studies:
            for series in study.get_all_series():
                for sop in series.get_sop_instances():
                    ds = sop.get_native_sop_instance()
                    path = Path(ds.filename).resolve()
                    loaded.add(path)
                    if series.SeriesInstanceUID in chosen:
                        to_protect.append(path)
                        continue
                    sop_class = ds.get("SOPClassUID")
                    what = UID(str(sop_class)).name if sop_class else "unknown SOP class"
                    batch.skipped.append(_report("skipped", path, (
                        f"{path}: skipped: not a fundus photograph ({what}, Modality {series.Modality or 'not given'}, "
                        f"series {series.SeriesInstanceUID}); this app protects {FUNDUS_DESCRIPTION}")))
        self._not_loaded(loaded, batch)
        for path in sorted(to_protect):
            outcome = self.protect_step.protect(path)
            if outcome.error:
                print(f"medlocker_deploy: FAILED {outcome.error}", file=sys.stderr, flush=True)
            else:
                logger.info("protected %s in %.2f s", path, outcome.seconds)
            batch.outcomes.append(outcome)
        op_output.emit(batch, "protect_batch")

    def _not_loaded(self, loaded: set[Path], batch: ProtectBatch) -> None:
        """The input files the SDK's loader did not load: refused when they look like DICOM, else ignored."""
        for path in sorted(p.resolve() for p in self.input_folder.rglob("*") if p.is_file()):
            if path in loaded or is_temporary_file(path) or path.name.upper() == "DICOMDIR":
                continue
            if is_mask_file(path) or "masks" in path.relative_to(self.input_folder).parts[:-1]:
                continue  # lesion masks beside an image, used by the protect step
            if not is_dicom_file(path):
                batch.ignored.append(_report("ignored", path, f"{path}: not a DICOM file; ignored"))
                continue
            try:
                read_fundus_dicom(path)
            except ImageReadError as err:
                reason = str(err)
            else:
                reason = (f"{path}: the SDK's DICOMDataLoaderOperator did not load it (no Study or Series Instance "
                          "UID, or a duplicate of another instance)")
            batch.refused.append(_report("refused", path, reason))


class MedlockerDicomWriterOperator(Operator):
    """Write the derived instances (MedLocker private block kept), their records, and the summary.

    The bundle's save step writes each derived instance into ``OUT/public`` (with its public
    sidecar when signed); the whole record goes into ``OUT/private/records`` and the run's summary
    into ``OUT/private/summary.json``, as ``medlocker protect`` lays them out (``OUT/PUBLISH.txt``
    says which part may be published).

    Named input:
        protect_batch: a :class:`ProtectBatch`.

    After it ran, ``summary`` holds the run's summary and ``exit_code`` is 1 when anything was
    skipped, refused or failed, else 0.
    """

    def __init__(self, fragment: Fragment, *args, protect_step: ProtectStep, output_folder: Path, **kwargs):
        self.protect_step = protect_step
        self.output_folder = Path(output_folder)
        self.summary: dict | None = None
        self.exit_code = 1  # until a batch has been written
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("protect_batch")

    def compute(self, op_input, op_output, context):
        batch: ProtectBatch = op_input.receive("protect_batch")
        protected, failed = [], []
        for outcome in batch.outcomes:
            try:
                row = self._write(outcome)
            except (OutputError, OSError, ValueError) as err:
                row = {"file": str(outcome.item.image), "error": f"{outcome.item.image}: cannot write its output: {err}"}
            (protected if "output" in row else failed).append(row)
        for row in failed:
            print(f"medlocker_deploy: FAILED {row['error']}", file=sys.stderr, flush=True)
        self.summary = {
            "input_instances": len(batch.outcomes) + len(batch.skipped) + len(batch.refused),
            "protected": protected, "failed": failed, "skipped": batch.skipped, "refused": batch.refused,
            "ignored": batch.ignored,
            "protect_seconds": round(sum(o.seconds for o in batch.outcomes), 3),
        }
        self.exit_code = 1 if failed or batch.skipped or batch.refused else 0
        self.summary["exit_code"] = self.exit_code
        atomic_write_bytes(self.output_folder / PRIVATE_DIR / "summary.json", json.dumps(self.summary, indent=2).encode())
        atomic_write_bytes(self.output_folder / PUBLISH_NOTE, PUBLISH_TEXT.encode())
        print(f"medlocker_deploy: {len(protected)} protected, {len(batch.skipped)} skipped, {len(batch.refused)} "
              f"refused, {len(failed)} failed -> {self.output_folder}", file=sys.stderr, flush=True)

    def _write(self, outcome: InstanceOutcome) -> dict:
        """Save one outcome (the bundle's save step, then its record); its summary row (``error`` when not protected)."""
        source = outcome.item.image
        if outcome.error:
            return {"file": str(source), "error": outcome.error}
        inside_output(self.output_folder, outcome.out_path)  # never through a symlink or out of the folder
        t0 = time.perf_counter()
        record = self.protect_step.save(outcome)
        outcome.seconds = round(outcome.seconds + time.perf_counter() - t0, 3)  # the whole chain, as medlocker protect times it
        if not record.get("protected"):
            return {"file": str(source), "error": f"{source}: not protected: {record.get('reason') or 'no reason given'}"}
        return {"file": str(source), "output": portable_name(outcome.out_path.relative_to(self.output_folder)),
                "sop_instance": record["dicom"]["derived"]["sop_instance"], "seconds": outcome.seconds}
