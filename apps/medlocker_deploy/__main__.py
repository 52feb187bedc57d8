"""Entry point of the MedLocker Deploy app (``python apps/medlocker_deploy ...``, and of the packaged MAP)."""

import sys

from monai_medlocker.runtime import prepare_environment

prepare_environment()  # before the SDK and torch load: OpenMP reads its wait policy once (monai_medlocker.runtime)

from app import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
