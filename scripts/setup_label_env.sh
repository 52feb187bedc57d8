#!/usr/bin/env bash
# Set up (or refresh) .venv-label: the MONAI Label environment for apps/monailabel_medlocker.
# Kept apart from .venv because monailabel 0.8.5 brings its own stack (fastapi, uvicorn, sam2, ...).
# Idempotent: a second run with unchanged inputs installs nothing. About 3.7 GB.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/app_env.sh
VENV=.venv-label
if app_env_stale "$VENV" label pyproject.toml scripts/setup_label_env.sh scripts/label_env/* scripts/app_env.sh; then
    pip=("$VENV/bin/pip" install --quiet --disable-pip-version-check)
    # The CPU build of torch first and pinned: an unpinned torch would pull a multi-GB CUDA wheel.
    "${pip[@]}" "torch==2.13.0"
    # The constraints keep torch, torchvision and monai pinned while monailabel's requirements resolve.
    "${pip[@]}" -c scripts/label_env/constraints.txt -e . "monailabel==0.8.5"
    # monailabel (through pydicom-seg) imports pydicom._storage_sopclass_uids, which pydicom 3
    # removed: a .pth line installs a lazy alias to pydicom.uid before anything imports monailabel.
    site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    cp scripts/label_env/medlocker_pydicom_alias.py "$site/"
    echo "import medlocker_pydicom_alias" > "$site/medlocker_pydicom_alias.pth"
    echo "$want" > "$stamp"
fi
