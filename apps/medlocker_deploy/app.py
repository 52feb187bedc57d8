"""MedLocker as a MONAI Deploy App SDK application: a DICOM folder in, protected derived instances out.

The flow (``compose``)::

    DICOMDataLoaderOperator (SDK) --dicom_study_list--> DICOMSeriesSelectorOperator (SDK, fundus rules)
          |                                                     | study_selected_series_list
          +--dicom_study_list--> FundusProtectOperator <--------+
                                       | protect_batch
                                       v
                             MedlockerDicomWriterOperator --> OUT/public: derived instances (+ public sidecars)
                                                              OUT/private: records, summary.json

Run it with the deploy environment's Python (``.venv-deploy``, made by ``scripts/setup_deploy_env.sh``)::

    .venv-deploy/bin/python apps/medlocker_deploy -i DICOM_IN -o OUT [--seed 3] [--key owner.key] ...

or with ``HOLOSCAN_INPUT_PATH`` / ``HOLOSCAN_OUTPUT_PATH`` (or the SDK 0.x names ``MONAI_INPUTPATH`` /
``MONAI_OUTPUTPATH``) and ``MEDLOCKER_<OPTION>`` variables, as a packaged MAP is run. The exit status is 0 when every instance was protected, 1 when one was
skipped (not a fundus photograph), refused (unreadable) or failed, 2 for unusable settings.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from monai.deploy.conditions import CountCondition
from monai.deploy.core import AppContext, Application
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator

from app_settings import AppSettings, parse_app_settings
from medlocker_operators import FUNDUS_RULES_TEXT, FundusProtectOperator, MedlockerDicomWriterOperator
from protect_step import ProtectStep

__all__ = ["LEGACY_PATH_VARIABLES", "MedLockerDeployApp", "main"]

# MONAI Deploy App SDK 0.x read these; SDK 4.0 reads HOLOSCAN_INPUT_PATH / HOLOSCAN_OUTPUT_PATH only.
LEGACY_PATH_VARIABLES = {"MONAI_INPUTPATH": "HOLOSCAN_INPUT_PATH", "MONAI_OUTPUTPATH": "HOLOSCAN_OUTPUT_PATH"}


class MedLockerDeployApp(Application):
    """Protect the fundus photographs of a DICOM folder with MedLocker (see the module docstring).

    Args:
        settings: the MedLocker settings and the SDK's arguments (:func:`app_settings.parse_app_settings`).
        protect_step: the protect step, built (model loaded, settings checked) before the graph is.
        input_folder, output_folder: the folders, as the SDK resolves them (``-i``/``-o``, else
            ``HOLOSCAN_INPUT_PATH``/``HOLOSCAN_OUTPUT_PATH``, else ``./input``/``./output``).
    """

    def __init__(self, settings: AppSettings, protect_step: ProtectStep, input_folder: Path, output_folder: Path,
                 *args, **kwargs):
        self.settings = settings
        self.protect_step = protect_step
        self.input_folder, self.output_folder = Path(input_folder), Path(output_folder)
        self.writer: MedlockerDicomWriterOperator | None = None
        super().__init__(settings.sdk_argv, *args, **kwargs)

    def compose(self):
        # The SDK's context: its logging set-up, and the same folders main() resolved.
        app_context: AppContext = Application.init_app_context(self.settings.sdk_argv)
        assert Path(app_context.input_path).resolve() == self.input_folder, (app_context.input_path, self.input_folder)

        loader = DICOMDataLoaderOperator(self, CountCondition(self, 1), input_folder=self.input_folder, must_load=False,
                                         name="dicom_loader")
        selector = DICOMSeriesSelectorOperator(self, rules=FUNDUS_RULES_TEXT, all_matched=True, name="fundus_selector")
        protect = FundusProtectOperator(self, protect_step=self.protect_step, input_folder=self.input_folder,
                                        name="medlocker_protect")
        self.writer = MedlockerDicomWriterOperator(self, protect_step=self.protect_step, output_folder=self.output_folder,
                                                   name="medlocker_dicom_writer")

        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(loader, protect, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(selector, protect, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(protect, self.writer, {("protect_batch", "protect_batch")})


def main(argv: list[str] | None = None) -> int:
    """Run the app; the exit status (see the module docstring)."""
    from monai.deploy.core import RuntimeEnv

    from monai_medlocker.cli import _user_error
    from monai_medlocker.io.outdir import OutputLock, clean_temporaries, prepare_output_dir

    for older, current in LEGACY_PATH_VARIABLES.items():  # the SDK 0.x names, as older MONAI Deploy tooling sets them
        if os.environ.get(older) and not os.environ.get(current):
            os.environ[current] = os.environ[older]
    settings = parse_app_settings(sys.argv if argv is None else argv)
    try:
        # Checked before the SDK parses -o (it creates that folder): the SDK's defaults are HOLOSCAN_INPUT_PATH /
        # HOLOSCAN_OUTPUT_PATH, else ./input and ./output.
        runtime = RuntimeEnv()
        input_folder = Path(settings.input or runtime.input).resolve()
        output_folder = Path(settings.output or runtime.output).resolve()
        if not input_folder.is_dir():
            raise ValueError(f"input folder {input_folder} does not exist or is not a folder (-i or HOLOSCAN_INPUT_PATH)")
        if output_folder == input_folder or input_folder in output_folder.parents or output_folder in input_folder.parents:
            raise ValueError(f"the output folder {output_folder} and the input folder {input_folder} overlap; choose "
                             "separate folders so that originals are never mixed with or overwritten by protected copies")
        # The model, key and settings are loaded and checked here, so that a bad one is one clear error.
        protect_step = ProtectStep(input_folder, output_folder, settings.overrides, settings.bundle_root)
        prepare_output_dir(output_folder)
        with OutputLock(output_folder, wait=settings.wait, command="medlocker_deploy"):
            clean_temporaries(output_folder)  # what a killed run left; no other run is writing here now
            app = MedLockerDeployApp(settings, protect_step, input_folder, output_folder)
            app.run()
    except (ValueError, OSError, RuntimeError) as err:
        cause = _user_error(err)
        if cause is None:
            raise
        print(f"medlocker_deploy: error: {cause}", file=sys.stderr)
        return 2
    return app.writer.exit_code if app.writer is not None else 1


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
