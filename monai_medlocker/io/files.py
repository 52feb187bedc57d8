"""File-level helpers every reader and writer shares: the input error, atomic writes, temporary and portable names.

:mod:`~monai_medlocker.io.image` and :mod:`~monai_medlocker.io.dicom` both import this module; it
imports nothing of the package.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["ImageReadError", "TEMP_SUFFIX", "atomic_write_bytes", "is_temporary_file", "portable_name"]

TEMP_SUFFIX = ".part"


def portable_name(path: str | Path) -> str:
    """A relative path as valid Unicode text for records, certificates and image ids.

    A file name that is not valid UTF-8 (Python holds its bytes as lone surrogates, which no
    UTF-8 encoder or strict JSON reader accepts) shows those bytes as ``\\xNN``; any other name
    is unchanged.
    """
    return os.fsencode(Path(path).as_posix()).decode("utf-8", "backslashreplace")


def is_temporary_file(path: str | Path) -> bool:
    """True for a temporary file of :func:`atomic_write_bytes` (``.<name>.<random>.part``): never an input."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


class ImageReadError(ValueError):
    """An input image that cannot be used; the message names the file and the problem."""


def atomic_write_bytes(path: str | Path, data: bytes, mode: int | None = None) -> None:
    """Write to a temporary file in the same folder, then rename: no half-written outputs.

    Args:
        mode: file permissions; ``None`` gives the usual umask-based ones (mkstemp alone makes 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        if mode is None:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
