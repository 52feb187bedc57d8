#!/usr/bin/env bash
# Set up (or refresh) the project-local virtual environment in .venv.
# Idempotent: a second run with unchanged pyproject.toml installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages used as real components by the DICOM/PACS features and their tests: a PACS
# (Orthanc + DICOMweb plugin), the dciodvfy validator (dicom3tools) and dcmtk.
DEBIAN_PACKAGES="orthanc orthanc-dicomweb dicom3tools dcmtk"
missing=""
for pkg in $DEBIAN_PACKAGES; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    else
        echo "setup.sh: please install the Debian packages:$missing (needs root); the PACS tests need them" >&2
    fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi

stamp=.venv/.medlocker-setup
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    # The CPU build of torch first and pinned: an unpinned torch would pull a multi-GB CUDA wheel.
    .venv/bin/pip install --quiet --disable-pip-version-check "torch==2.13.0"
    .venv/bin/pip install --quiet --disable-pip-version-check -e ".[test,dicom,threats,ray]"
    echo "$want" > "$stamp"
fi

# The MONAI Deploy and MONAI Label apps live in environments of their own (.venv-deploy, about
# 3.3 GB with holoscan; .venv-label, about 3.8 GB), made on request: MEDLOCKER_APP_ENVS="deploy label".
for app in ${MEDLOCKER_APP_ENVS:-}; do
    case "$app" in
        deploy|label) bash "scripts/setup_${app}_env.sh" ;;
        *) echo "setup.sh: MEDLOCKER_APP_ENVS lists '$app'; expected deploy and/or label" >&2; exit 2 ;;
    esac
done
