"""The one place where the Deploy app calls MedLocker's protect workflow.

The protector is built from the bundle's ``inference.json`` with the same overrides as
``medlocker protect`` (:func:`monai_medlocker.cli.protect.protect_overrides`), and each instance goes
through :meth:`DatasetProtector.protect_timed` (the per-image step of ``medlocker protect``: load,
lesions, WSM, watermark, certify, derive), with the input's path relative to the input folder, so
its search seed, and so its pixels, are those ``medlocker protect`` gives for the same folder.

``protect_timed`` writes its derived instance and record to a path it is given. Here that path is a
staging folder outside the output: the derived dataset and the record are read back and handed to
the app's writer operator, which alone writes into the output folder. When the protect workflow
offers a per-image step that returns the derived dataset without saving it, only
:meth:`ProtectStep.__call__` changes.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from monai_medlocker.certify.seal import SIDECAR_SUFFIX
from monai_medlocker.cli._bundle import bundle_root, parse_bundle_config
from monai_medlocker.lesions.masks import find_mask_files
from monai_medlocker.workflows.protect import DatasetProtector, ProtectItem

__all__ = ["InstanceOutcome", "ProtectStep"]


@dataclass
class InstanceOutcome:
    """What protecting one DICOM instance gave.

    Attributes:
        source: the input file.
        relative: its path relative to the input folder (names its output, seeds its search).
        derived: the derived instance with the MedLocker private block; ``None`` when none was made.
        record: the per-image record ``medlocker protect`` writes beside its output (``None`` on error).
        error: why the instance failed (names the file), or ``None``.
        seconds: the protect step's wall time.
    """

    source: Path
    relative: Path
    derived: Dataset | None
    record: dict | None
    error: str | None
    seconds: float


class ProtectStep:
    """Protect single DICOM instances exactly as ``medlocker protect`` would.

    Args:
        input_dir: the app's input folder (paths are taken relative to it).
        output_dir: the app's output folder (it names the derived series, as for ``medlocker protect``).
        overrides: ``inference.json`` settings (``None`` values keep the config's), as the CLI makes them.
        explicit_bundle_root: the bundle folder (default: ``$MEDLOCKER_BUNDLE`` or the one beside the package).
    """

    def __init__(self, input_dir: Path, output_dir: Path, overrides: dict, explicit_bundle_root: str | None = None):
        self.input_dir = Path(input_dir)
        root = bundle_root(explicit_bundle_root)
        settings = {**overrides, "dataset_dir": str(self.input_dir.resolve()), "output_dir": str(Path(output_dir).resolve())}
        self.protector: DatasetProtector = parse_bundle_config("inference.json", root, settings).get_parsed_content(
            "protector")

    def __call__(self, path: Path) -> InstanceOutcome:
        relative = Path(path).relative_to(self.input_dir)
        item = ProtectItem(Path(path), relative, find_mask_files(path))
        with tempfile.TemporaryDirectory(prefix="medlocker-deploy-") as stage:
            staged = Path(stage) / "instance.dcm"
            outcome = self.protector.protect_timed(item, staged)
            seconds = float(outcome["seconds"])
            if "error" in outcome:
                return InstanceOutcome(item.image, relative, None, None, outcome["error"], seconds)
            record = json.loads(staged.with_name(staged.stem + SIDECAR_SUFFIX).read_text(encoding="utf-8"))
            derived = pydicom.dcmread(staged) if staged.is_file() else None  # none when not protected
        return InstanceOutcome(item.image, relative, derived, record, None, seconds)
