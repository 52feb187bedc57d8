"""Run David Clunie's ``dciodvfy`` (dicom3tools) on a DICOM file and parse what it reports.

``dciodvfy`` checks a file against the Information Object Definition (IOD) of its SOP Class: required
modules and attributes, value multiplicity, enumerated values, conditions. It writes its findings to
stderr (some builds to stdout) as lines such as ``Error - Missing attribute Type 1 Required ...`` or
``Warning - Value dubious for this VR ...``; its exit status is not a reliable signal, so the text is
parsed. Lines that belong to one finding (the ``Error`` line and the indented context below it) are
kept together in :attr:`DciodvfyReport.output` but only the ``Error``/``Warning`` lines themselves are
listed in :attr:`DciodvfyReport.errors` / :attr:`DciodvfyReport.warnings`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DCIODVFY", "DciodvfyReport", "dciodvfy_available", "run_dciodvfy"]

#: The command that is run (looked up on ``PATH``).
DCIODVFY = "dciodvfy"


@dataclass
class DciodvfyReport:
    """What ``dciodvfy`` said about one file.

    Attributes:
        path: the file checked.
        errors: the lines that start with ``Error`` (stripped), in order.
        warnings: the lines that start with ``Warning`` (stripped), in order.
        output: the whole text (stdout then stderr).
        returncode: the exit status (informative only; ``dciodvfy`` does not use it consistently).
    """

    path: Path
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    output: str = ""
    returncode: int = 0

    @property
    def ok(self) -> bool:
        """``True`` when no error was reported (warnings allowed)."""
        return not self.errors

    def __str__(self) -> str:
        return (f"dciodvfy {self.path}: {len(self.errors)} error(s), {len(self.warnings)} warning(s)"
                + "".join(f"\n  {line}" for line in self.errors + self.warnings))


def dciodvfy_available() -> bool:
    """Whether the ``dciodvfy`` command is on ``PATH``."""
    return shutil.which(DCIODVFY) is not None


def parse_dciodvfy_output(text: str) -> tuple[list[str], list[str]]:
    """Split ``dciodvfy`` output into its ``Error`` and ``Warning`` lines."""
    errors: list[str] = []
    warnings: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("Error"):
            errors.append(line)
        elif line.startswith("Warning"):
            warnings.append(line)
    return errors, warnings


def run_dciodvfy(path: str | os.PathLike, timeout: float = 120.0) -> DciodvfyReport:
    """Verify ``path`` with ``dciodvfy`` and return the parsed report.

    Args:
        path: a DICOM Part 10 file.
        timeout: seconds before the command is abandoned.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        RuntimeError: the ``dciodvfy`` command is not installed (the message says how to get it), or it
            did not finish within ``timeout``.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such DICOM file to verify: {p}")
    exe = shutil.which(DCIODVFY)
    if exe is None:
        raise RuntimeError(f"the '{DCIODVFY}' command (David Clunie's dicom3tools) is not on PATH; install it "
                           "(Debian/Ubuntu: apt-get install dicom3tools) to verify DICOM files")
    try:
        proc = subprocess.run([exe, str(p)], capture_output=True, text=True, errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired as err:
        raise RuntimeError(f"'{DCIODVFY} {p}' did not finish within {timeout:g} s") from err
    output = proc.stdout + proc.stderr
    errors, warnings = parse_dciodvfy_output(output)
    return DciodvfyReport(path=p, errors=errors, warnings=warnings, output=output, returncode=proc.returncode)
