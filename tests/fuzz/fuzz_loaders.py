"""Coverage-guided fuzzing (atheris) of the image and DICOM loaders.

Every input is written to a file named ``.png``, ``.jpg``, ``.tif`` or ``.dcm`` (the loaders
choose by suffix and by the DICM preamble) and read with the functions the workflows use:
:func:`~monai_medlocker.io.image.load_fundus`, :func:`~monai_medlocker.io.image.round_trip_mode`
and :func:`~monai_medlocker.certify.seal.read_protected`. The only exception they may raise is
the project's :class:`~monai_medlocker.io.image.ImageReadError` (its DICOM subclass included):
anything else is a crash, and atheris stops with the input saved under ``-artifact_prefix``.

Run (``tests/test_fuzz.py`` does, for a bounded time)::

    python tests/fuzz/fuzz_loaders.py CORPUS_DIR -max_total_time=20 -artifact_prefix=OUT/
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import atheris

# Imported before instrumentation: monai and torch are not under test and would slow every input.
import monai  # noqa: F401
import numpy  # noqa: F401

with atheris.instrument_imports(include=["pydicom", "monai_medlocker"]):
    import pydicom  # noqa: F401 (pure Python: its parser is what coverage guides through)

    from monai_medlocker.certify.seal import read_protected
    from monai_medlocker.io.image import ImageReadError, load_fundus, round_trip_mode

SUFFIXES = (".png", ".jpg", ".tif", ".dcm")
WORK = Path(tempfile.mkdtemp(prefix="medlocker-fuzz-"))
atexit.register(shutil.rmtree, WORK, True)


def one_input(data: bytes) -> None:
    if not data:
        return
    suffix = SUFFIXES[data[0] % len(SUFFIXES)]
    path = WORK / f"input{suffix}"
    path.write_bytes(data[1:])
    for read in (load_fundus, round_trip_mode, read_protected):
        if read is round_trip_mode and suffix == ".dcm":
            continue
        try:
            read(path)
        except ImageReadError:
            pass  # refused with the project's own, clear error: what a bad file should get


def main() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # pydicom warns about every oddity of a garbled file: millions of lines that say nothing here.
    warnings.simplefilter("ignore")
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
