"""The output folder of a run: one run at a time, nothing written outside it, no temporaries left.

Every workflow that writes a folder (protect, unlock, lesions) goes through these helpers:

* :func:`prepare_output_dir` checks the folder up front (not a file, not under a file, writable),
  so a bad ``OUT`` is one clear error before any image is read;
* :class:`OutputLock` holds ``OUT/.medlocker.lock`` (an ``flock`` on a file holding the owner's
  pid) for the whole run: a second run into the same folder refuses, naming the pid, or waits;
  the kernel drops the lock when its owner dies, even by ``kill -9``, so a lock is never stale;
* :func:`inside_output` refuses any output path that would leave the folder, through ``..``, an
  absolute name or a symlink (to a file or to a folder) inside it;
* :func:`clean_temporaries` removes the ``*.part`` files an interrupted run left behind
  (:func:`~monai_medlocker.io.image.atomic_write_bytes` writes them, then renames).
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
from pathlib import Path

from monai_medlocker.io.image import is_temporary_file

__all__ = ["LOCK_NAME", "OutputError", "OutputLockedError", "OutputLock", "prepare_output_dir", "check_output_file",
           "inside_output", "clean_temporaries", "output_name"]

LOCK_NAME = ".medlocker.lock"


class OutputError(ValueError):
    """An output folder or file that cannot be used; the message names it and the problem."""


class OutputLockedError(OutputError):
    """Another run holds the output folder's lock."""


def _file_above(path: Path) -> Path | None:
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            return parent
    return None


def prepare_output_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Create the output folder if needed, after checking it can hold the run's outputs.

    Raises:
        OutputError: ``path`` is a file or lies under a file, or the folder is not writable.
    """
    path = Path(path)
    blocker = _file_above(path)
    if blocker == path:
        raise OutputError(f"{what} {path} is a file, not a folder; choose a folder")
    if blocker is not None:
        raise OutputError(f"{what} {path} lies under {blocker}, which is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{what} {path} cannot be created ({err.strerror or err})") from err
    # os.access says yes to root on a read-only folder or mount: try a real write instead.
    probe = path / f".medlocker-write-test.{os.getpid()}.part"
    try:
        probe.write_bytes(b"")
        probe.unlink(missing_ok=True)
    except OSError as err:
        raise OutputError(f"{what} {path} is not writable ({err.strerror or err})") from err
    return path


def check_output_file(path: str | os.PathLike, what: str) -> Path:
    """An output file's path (e.g. ``--report``): not a folder, and its folder not a file.

    Raises:
        OutputError: the path names a folder, or lies under a file.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; give a file name (e.g. {path / 'report.json'})")
    blocker = _file_above(path.parent)
    if blocker is not None:
        raise OutputError(f"{what} {path} lies under {blocker}, which is a file, not a folder")
    return path


def inside_output(output_dir: str | os.PathLike, path: str | os.PathLike) -> Path:
    """``path`` (inside ``output_dir``), after checking that writing it stays inside the folder.

    Every existing component between the folder and the file must be a real folder (not a
    symlink), and the file itself must not be a symlink: writing through one would land elsewhere.

    Raises:
        OutputError: the path leaves the folder (``..``, absolute) or goes through a symlink.
    """
    root, path = Path(output_dir), Path(path)
    try:
        relative = path.relative_to(root)
    except ValueError:
        raise OutputError(f"{path} lies outside the output folder {root}") from None
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise OutputError(f"{path} lies outside the output folder {root}")
    current = root
    for part in relative.parts:
        current = current / part
        if current.is_symlink():
            raise OutputError(f"{current} is a symbolic link inside the output folder {root}; writing through it "
                              "would land outside the folder (remove the link)")
    if root.resolve() not in path.resolve().parents:
        raise OutputError(f"{path} lies outside the output folder {root}")
    return path


def clean_temporaries(output_dir: str | os.PathLike) -> list[Path]:
    """Remove the temporary files an interrupted run left in ``output_dir`` (recursively); returns them."""
    removed = []
    for p in sorted(Path(output_dir).rglob("*.part")):
        if p.is_file() and not p.is_symlink() and is_temporary_file(p):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _lock_owner(path: Path) -> str:
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return "unknown"
    return text or "unknown"


class OutputLock:
    """An exclusive lock on an output folder for one run: ``OUT/.medlocker.lock`` holds the owner's pid.

    Args:
        output_dir: the folder (created by :func:`prepare_output_dir` first).
        wait: wait for the other run to finish instead of refusing.
        command: the command's name, for the messages.

    Raises (on enter):
        OutputLockedError: another live process holds the lock and ``wait`` is false.
    """

    def __init__(self, output_dir: str | os.PathLike, wait: bool = False, command: str = "medlocker") -> None:
        self.path = Path(output_dir) / LOCK_NAME
        self.wait = wait
        self.command = command
        self._fd: int | None = None

    def acquire(self) -> "OutputLock":
        told = False
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                owner = _lock_owner(self.path)
                if not self.wait:
                    os.close(fd)
                    raise OutputLockedError(
                        f"output folder {self.path.parent} is in use by another run (pid {owner}, lock file "
                        f"{self.path}); wait for it to finish, pass --wait, or choose another folder") from None
                if not told:
                    print(f"{self.command}: waiting for the run with pid {owner} to release {self.path}", file=sys.stderr)
                    told = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            # The previous owner may have removed the file while we waited: lock the file that is there now.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode("ascii"))
            self._fd = fd
            return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def output_name(relative: Path, is_dicom: bool) -> Path:
    """Where an input's protected (or unlocked) copy goes, relative to the output folder."""
    if is_dicom:
        # A UID-named file keeps its whole name: "1.2.3.4" and "1.2.3.5" must not both become "1.2.3.dcm".
        known = relative.suffix.lower() in (".dcm", ".dicom")
        return relative.with_suffix(".dcm") if known else relative.with_name(relative.name + ".dcm")
    return relative.with_suffix(".png")
