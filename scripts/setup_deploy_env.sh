#!/usr/bin/env bash
# Set up (or refresh) .venv-deploy: the MONAI Deploy App SDK environment of the MedLocker Deploy app
# (apps/medlocker_deploy). It is kept apart from .venv because the SDK needs holoscan (about 1.5 GB),
# and with holoscan installed `import monai` is slower and prints holoscan warnings.
# Idempotent: a second run with unchanged pins installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/app_env.sh
VENV=.venv-deploy
if app_env_stale "$VENV" deploy pyproject.toml apps/medlocker_deploy/requirements.txt scripts/setup_deploy_env.sh scripts/app_env.sh; then
    pip="$VENV/bin/pip install --quiet --disable-pip-version-check"
    # The CPU build of torch first and pinned: an unpinned torch would pull a multi-GB CUDA wheel.
    $pip "torch==2.13.0"
    # The project itself (editable: the app runs the same protect code as `medlocker protect`), with the
    # "dicom" extra: monai.deploy.operators imports highdicom (its DICOM SEG writer) at import time.
    $pip -e ".[dicom]"
    # The SDK and the holoscan release it works with (the pyproject extra "deploy" holds the same pins).
    $pip -r apps/medlocker_deploy/requirements.txt
    echo "$want" > "$stamp"
fi
