"""The one place where the Deploy app calls MedLocker's protect workflow.

The protector is built from the bundle's ``inference.json`` with the same overrides as
``medlocker protect`` (:func:`monai_medlocker.cli.protect.protect_overrides`), so its protect chain
is the bundle's (load -> lesion maps -> ``LesionBBoxMaskd`` -> render key -> ``AdversarialWatermarkd``
-> certify -> save, with any ``#``-path override the bundle has). The app splits that chain in
two: :meth:`ProtectStep.protect` (the protect operator) runs every step before the save step;
:meth:`ProtectStep.save` (the writer operator) runs the save step, ``SaveProtectedd``, which writes
the derived instance with the ``MEDLOCKER 1`` private block into ``OUT/public``, then the whole
record into ``OUT/private/records``, as ``medlocker protect`` does. Each image's search seed comes
from its path relative to the input folder (:meth:`DatasetProtector.run_chain`), so its pixels are
those ``medlocker protect`` gives for the same folder and settings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from monai.transforms import Compose

from monai_medlocker.bundle_config import bundle_root, parse_bundle_config
from monai_medlocker.lesions.masks import find_mask_files
from monai_medlocker.workflows.protect import DatasetProtector, ProtectItem, image_failure

__all__ = ["InstanceOutcome", "ProtectStep"]


@dataclass
class InstanceOutcome:
    """What the protect steps gave for one DICOM instance.

    Attributes:
        item: the instance as the protect workflow names it (file, path relative to the input folder, masks).
        out_path: where its derived instance goes (``OUT/public/<relative name>.dcm``).
        data: the protect chain's dictionary after the last step before saving (``None`` on error).
        error: why the instance failed (names the file), or ``None``.
        seconds: the protect steps' wall time.
    """

    item: ProtectItem
    out_path: Path
    data: dict | None
    error: str | None
    seconds: float

    @property
    def protected(self) -> bool:
        return self.data is not None and bool(self.data["record"].get("protected"))


class ProtectStep:
    """Protect single DICOM instances with the bundle's protect chain, saving apart.

    Args:
        input_dir: the app's input folder (paths are taken relative to it).
        output_dir: the app's output folder (``public/`` and ``private/`` go there).
        overrides: ``inference.json`` settings (``None`` values keep the config's), as the CLI makes them.
        explicit_bundle_root: the bundle folder (default: ``$MEDLOCKER_BUNDLE`` or the one beside the package).

    Raises:
        ValueError: the bundle's protect chain does not end with its save step.
    """

    def __init__(self, input_dir: Path, output_dir: Path, overrides: dict, explicit_bundle_root: str | None = None):
        self.input_dir = Path(input_dir)
        root = bundle_root(explicit_bundle_root)
        settings = {**overrides, "dataset_dir": str(self.input_dir.resolve()), "output_dir": str(Path(output_dir).resolve())}
        self.protector: DatasetProtector = parse_bundle_config("inference.json", root, settings).get_parsed_content(
            "protector")
        steps = list(self.protector.chain.transforms)
        if steps[-1] is not self.protector.saver:
            raise ValueError(f"{root}/configs/inference.json: the protect chain must end with its save step "
                             f"(SaveProtectedd), ends with {type(steps[-1]).__name__}")
        self.before_save = Compose(steps[:-1])

    def protect(self, path: Path) -> InstanceOutcome:
        """Every protect step before saving, for one instance; a failure is kept in the outcome, not raised."""
        item = ProtectItem(Path(path), Path(path).relative_to(self.input_dir), find_mask_files(path))
        out_path = self.protector.paths(item)[0]
        t0 = time.perf_counter()
        try:
            data, error = self.protector.run_chain(item, out_path, self.before_save), None
        except Exception as err:  # one bad instance, or a model failure on it, must not stop the others
            data, error = None, image_failure(item, err)
        return InstanceOutcome(item, out_path, data, error, round(time.perf_counter() - t0, 3))

    def save(self, outcome: InstanceOutcome) -> dict:
        """The save step for one outcome (the derived instance and public sidecar), then its whole record; the record.

        An instance that was not protected (no feasible placement) gets its record only, as in ``medlocker protect``.
        """
        data = self.protector.saver(outcome.data)
        self.protector.write_record(outcome.item, data["record"])
        return data["record"]
