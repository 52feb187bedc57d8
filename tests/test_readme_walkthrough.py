"""The README's "Publish a dataset, step by step" runs as written (issue 20 item 13).

The commands are read from the README, not copied here: each runs in bash, in a folder where
``.venv/bin/medlocker`` starts this checkout's CLI, on two of ``bundle/samples`` (a PNG and a DICOM file).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "bundle" / "samples"
TITLE = "## Publish a dataset, step by step"


def walkthrough_steps() -> dict[int, list[str]]:
    """The shell commands of each numbered step of the README section (continuation lines joined)."""
    section = ROOT.joinpath("README.md").read_text().split(TITLE, 1)[1].split("\n## ", 1)[0]
    steps: dict[int, list[str]] = {}
    step, pending = 0, ""
    for line in section.splitlines():
        if m := re.match(r"(\d+)\. ", line):
            step = int(m.group(1))
        elif line.startswith(" " * 7) and line.strip():  # a code block inside a list item
            pending += line.strip()
            if pending.endswith("\\"):
                pending = pending[:-1].rstrip() + " "
            else:
                steps.setdefault(step, []).append(pending)
                pending = ""
    return steps


def run_as_written(folder: Path, commands: list[str], stdin: str = "") -> list[subprocess.CompletedProcess]:
    """Run ``commands`` in one bash session in ``folder`` (a variable exported by one is seen by the next), each
    one's output and exit status kept apart."""
    medlocker = folder / ".venv" / "bin" / "medlocker"
    medlocker.parent.mkdir(parents=True, exist_ok=True)
    medlocker.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m monai_medlocker.cli "$@"\n')
    medlocker.chmod(0o755)
    logs = folder / ".logs"
    logs.mkdir()
    script = "".join(f"{c} >{logs}/{i}.out 2>{logs}/{i}.err; echo $? >{logs}/{i}.rc\n" for i, c in enumerate(commands))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("MEDLOCKER_KEY_PASSPHRASE", None)
    subprocess.run(["bash", "-c", script], cwd=folder, input=stdin, text=True, env=env, timeout=600, check=True)
    return [subprocess.CompletedProcess(c, int((logs / f"{i}.rc").read_text()), (logs / f"{i}.out").read_text(),
                                        (logs / f"{i}.err").read_text()) for i, c in enumerate(commands)]


def test_the_walkthrough_is_the_commands_this_test_runs():
    steps = walkthrough_steps()
    assert sorted(steps) == [1, 2, 4, 5, 6, 7]  # step 3 is reading the summary and the montage
    assert steps[1][0].startswith("read -rs MEDLOCKER_KEY_PASSPHRASE")
    assert [c.split()[1] for c in (steps[1][1], steps[2][0], steps[4][0], steps[6][0], steps[7][1])] == [
        "keygen", "protect", "verify", "grant", "unlock"]


@pytest.mark.slow
def test_publish_walkthrough_from_keygen_to_the_partners_bit_exact_originals(tmp_path):
    steps = walkthrough_steps()
    owner, partner = tmp_path / "owner", tmp_path / "partner"
    photos = owner / "my_photos"
    photos.mkdir(parents=True)
    for name in ("fundus_c.png", "fundus_c_EX.png", "fundus_c_HE.png", "fundus_c_MA.png", "fundus_c_SE.png",
                 "op8_colour.dcm"):
        shutil.copy(SAMPLES / name, photos / name)

    # Steps 1-6, the owner's; the passphrase is typed at step 1's `read`.
    owner_steps = [c for n in (1, 2, 4, 5, 6) for c in steps[n]]
    done = run_as_written(owner, owner_steps, stdin="correct horse battery staple\n")
    for proc in done:
        assert proc.returncode == 0, (proc.args, proc.stderr[-2000:])
    assert (owner / "keys" / "hospital.key").stat().st_mode & 0o077 == 0
    assert b"ENCRYPTED" in (owner / "keys" / "hospital.key").read_bytes()
    summary = json.loads((owner / "release" / "private" / "summary.json").read_text())
    assert summary["images"] == summary["protected"] == 2 and not summary["failures"]
    assert (owner / "release" / "private" / "montage.png").is_file()
    *verdicts, total = done[owner_steps.index(steps[4][0])].stdout.strip().splitlines()
    assert len(verdicts) == 2 and all(v.startswith("AUTHENTIC (restorable) ") for v in verdicts) and "2 authentic" in total, verdicts

    # Step 7, the partner's: the published archive, the grant and the owner's public key beside them.
    partner.mkdir()
    for path in (owner / "fundus_release.tar.gz", owner / "partner.grant", owner / "keys" / "hospital.pub"):
        shutil.copy(path, partner / path.name)
    for proc in run_as_written(partner, steps[7]):
        assert proc.returncode == 0, (proc.args, proc.stderr[-2000:])
    restored = partner / "originals"
    assert np.array_equal(np.asarray(Image.open(restored / "fundus_c.png")), np.asarray(Image.open(photos / "fundus_c.png")))
    assert (restored / "op8_colour.dcm").read_bytes() == (photos / "op8_colour.dcm").read_bytes()
    assert pydicom.dcmread(restored / "op8_colour.dcm").SOPInstanceUID == pydicom.dcmread(photos / "op8_colour.dcm").SOPInstanceUID
