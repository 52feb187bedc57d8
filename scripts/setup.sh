#!/usr/bin/env bash
# Set up (or refresh) the project-local virtual environment in .venv.
# Idempotent: a second run with unchanged pyproject.toml installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi

stamp=.venv/.medlocker-setup
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    # The CPU build of torch first and pinned: an unpinned torch would pull a multi-GB CUDA wheel.
    .venv/bin/pip install --quiet --disable-pip-version-check "torch==2.13.0"
    .venv/bin/pip install --quiet --disable-pip-version-check -e ".[test,dicom]"
    echo "$want" > "$stamp"
fi
