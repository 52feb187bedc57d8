"""Run the atheris fuzzing harness of the image and DICOM loaders for a bounded time (CI does)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from monai_medlocker.io.dicom_build import fundus_dataset
from monai_medlocker.io.private_tags import MedlockerTags, write_medlocker_tags

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT / "tests" / "fuzz" / "fuzz_loaders.py"
SUFFIXES = (".png", ".jpg", ".tif", ".dcm")  # the harness's order: the first byte picks one


def _seed_corpus(folder: Path) -> None:
    rgb = (np.indices((32, 32)).sum(0)[..., None] * np.array([3, 5, 7]) % 256).astype(np.uint8)
    for index, fmt in enumerate(("PNG", "JPEG", "TIFF")):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format=fmt)
        (folder / f"seed{index}").write_bytes(bytes([index]) + buf.getvalue())
    buf = io.BytesIO()
    fundus_dataset(rgb, iod="op8").save_as(buf, enforce_file_format=True)
    (folder / "seed3").write_bytes(bytes([SUFFIXES.index(".dcm")]) + buf.getvalue())
    # Protected-looking inputs, so that the reader of the MedLocker block and text chunks is reached too.
    public = json.dumps({"format": "medlocker-public/1", "marks": [{"box_xyxy": [1, 2, 9, 9]}]})
    ds = fundus_dataset(rgb, iod="op8")
    write_medlocker_tags(ds, MedlockerTags(params=json.loads(public), certificate={"format": "x"}, signature=b"s" * 64,
                                           restore_payload=bytes(range(33)), sealed_record=bytes(range(21))))
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    (folder / "seed4").write_bytes(bytes([SUFFIXES.index(".dcm")]) + buf.getvalue())
    info = PngImagePlugin.PngInfo()
    for key, value in (("medlocker:public", public), ("medlocker:certificate", '{"format": "x"}'),
                       ("medlocker:sealed", "AAEC")):
        info.add_itxt(key, value)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", pnginfo=info)
    (folder / "seed5").write_bytes(bytes([SUFFIXES.index(".png")]) + buf.getvalue())


@pytest.mark.timeout(300)
def test_loaders_survive_fuzzing(tmp_path):
    corpus, crashes = tmp_path / "corpus", tmp_path / "crashes"
    corpus.mkdir()
    crashes.mkdir()
    _seed_corpus(corpus)
    seconds = int(os.environ.get("MEDLOCKER_FUZZ_SECONDS", "20"))
    cmd = [sys.executable, str(HARNESS), str(corpus), f"-max_total_time={seconds}", "-timeout=20",
           "-rss_limit_mb=4096", f"-artifact_prefix={crashes}/", "-print_final_stats=1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and not list(crashes.iterdir()), output[-4000:]
    runs = [line for line in output.splitlines() if "stat::number_of_executed_units" in line]
    assert runs and int(runs[-1].split(":")[-1]) > 50, output[-2000:]  # it really ran inputs


def test_garbled_header_element_found_by_the_fuzzer_is_a_clear_error(tmp_path):
    """pydicom parses elements lazily: a garbled VR failed (NotImplementedError) only when the
    reader looked at SamplesPerPixel. The fuzzer found it; it is a DicomReadError now."""
    from monai_medlocker.io.dicom import DicomReadError, read_fundus_dicom

    buf = io.BytesIO()
    rgb = np.zeros((32, 32, 3), np.uint8)
    fundus_dataset(rgb, iod="op8").save_as(buf, enforce_file_format=True)
    data = bytearray(buf.getvalue())
    at = data.index(b"\x28\x00\x02\x00US")  # (0028,0002) SamplesPerPixel, explicit VR "US"
    data[at + 4:at + 6] = b"U0"
    (tmp_path / "garbled.dcm").write_bytes(bytes(data))
    with pytest.raises(DicomReadError, match=r"garbled\.dcm: unreadable DICOM header \(NotImplementedError"):
        read_fundus_dicom(tmp_path / "garbled.dcm")


def test_crash_inputs_the_fuzzer_found_are_refused_cleanly():
    """Each input under tests/fuzz/crashes_fixed/ once crashed a loader; the harness replays them all."""
    inputs = sorted((ROOT / "tests" / "fuzz" / "crashes_fixed").glob("*.bin"))
    assert inputs
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(HARNESS), *map(str, inputs)], env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert proc.stderr.count("Executed ") == len(inputs), proc.stderr[-2000:]


def test_transfer_syntax_that_is_not_a_string_is_a_clear_error(tmp_path):
    """The fuzzer garbled the file meta so TransferSyntaxUID was not one string; naming the syntax in
    the error raised TypeError. It is a DicomReadError naming the file now."""
    from monai_medlocker.io.dicom import DicomReadError, read_fundus_dicom

    data = (ROOT / "tests" / "fuzz" / "crashes_fixed" / "transfer_syntax_not_a_string.bin").read_bytes()
    (tmp_path / "meta.dcm").write_bytes(data[1:])  # the harness's first byte picks the suffix
    with pytest.raises(DicomReadError, match=r"meta\.dcm: "):
        read_fundus_dicom(tmp_path / "meta.dcm")


def test_private_element_with_a_wrong_length_for_its_vr_is_a_clear_error(tmp_path):
    """The fuzzer turned the certificate's VR into UV (8-byte integers) over 14 bytes of text; pydicom
    raised its own BytesLengthException, which is no ValueError. It is a PrivateTagError naming the file now."""
    from monai_medlocker.certify.seal import read_protected

    data = (ROOT / "tests" / "fuzz" / "crashes_fixed" / "private_element_wrong_length_for_vr.bin").read_bytes()
    (tmp_path / "uv.dcm").write_bytes(data[1:])
    found = read_protected(tmp_path / "uv.dcm")  # the image reads; its certification is reported unreadable
    assert found.signed is None
    assert re.search(r"uv\.dcm: unreadable element in private group 0x0011 \(BytesLengthException", found.problem)
