"""File-level helpers every reader and writer shares: the input error, atomic writes, temporary and portable names.

:mod:`~monai_medlocker.io.image` and :mod:`~monai_medlocker.io.dicom` both import this module; it
imports nothing of the package.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["ImageReadError", "TEMP_SUFFIX", "atomic_write_bytes", "is_temporary_file", "name_too_long", "portable_name"]

TEMP_SUFFIX = ".part"
_TEMP_EXTRA = len(".") + len(".") + 8 + len(TEMP_SUFFIX)  # mkstemp's ".<name>.<8 random>.part" around a name


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


def _name_max(folder: Path) -> int:
    """The longest file name (in bytes) the file system of ``folder`` (or of its nearest existing parent) takes."""
    for parent in (folder, *folder.parents):
        if parent.is_dir():
            try:
                return int(os.pathconf(parent, "PC_NAME_MAX"))
            except (OSError, ValueError):
                break
    return 255


def name_too_long(path: str | Path) -> str | None:
    """Why ``path`` cannot be created (a component longer than its file system's NAME_MAX); ``None`` when it can.

    Checked before an item's first write, so that a too-long name fails that item alone instead
    of leaving some of its outputs written. (The temporary of :func:`atomic_write_bytes` always
    fits when the final name does.)
    """
    path = Path(path)
    limit = _name_max(path.parent)
    for part in path.parts:
        size = len(os.fsencode(part))
        if size > limit:
            return (f"{path}: file name of {size} bytes is longer than the {limit} bytes its file system allows; "
                    "rename the input to a shorter name")
    return None


def _temp_prefix(path: Path) -> str:
    """``.<name>.`` for :func:`atomic_write_bytes`, the name cut short so that the temporary's name fits NAME_MAX."""
    room = _name_max(path.parent) - _TEMP_EXTRA
    name = path.name
    while len(os.fsencode(name)) > room and name:
        name = name[:-1]
    return f".{name}."


class ImageReadError(ValueError):
    """An input image that cannot be used; the message names the file and the problem."""


def atomic_write_bytes(path: str | Path, data: bytes, mode: int | None = None) -> None:
    """Write to a temporary file in the same folder, then rename: no half-written outputs.

    Args:
        mode: file permissions; ``None`` gives the usual umask-based ones (mkstemp alone makes 0600).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as err:
        raise _naming(err, path) from err
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        if mode is None:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise _naming(err, path) from err
        raise


def _naming(err: OSError, path: Path) -> OSError:
    """``err`` naming the file that was being written (a full disk's write() error names none: "[Errno 28] ...")."""
    return type(err)(err.errno, f"{err.strerror or err}; {path} not written") if err.errno else err
