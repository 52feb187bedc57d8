"""Every bad input gets a clear one-line message naming the file or option, and the batch goes on
(issue 13, part C): bad output paths, datalists, labels, checkpoints, PACS answers, certificates,
decompression bombs and option values. No traceback ever reaches the user."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_medlocker.certify import generate_owner_key, save_owner_key
from monai_medlocker.certify.seal import PNG_CERTIFICATE, SIDECAR_SUFFIX
from monai_medlocker.cli import main
from monai_medlocker.data.synthetic import synthesize_fundus
from monai_medlocker.workflows.protect import DatasetProtector
from protect_outputs import public_dir, read_summary

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--quiet", "--max-queries", "4", "--lesion-segmenter", "masks"]


def _fundus(folder: Path, name: str, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(synthesize_fundus(128, seed=seed, grade=1).image).save(folder / name)
    Image.fromarray(np.zeros((128, 128), np.uint8)).save(folder / f"{Path(name).stem}_lesions.png")
    return folder / name


def bomb_png(path: Path, side: int = 50000) -> Path:
    """A 1 kB PNG that claims side x side pixels (2.5 gigapixels): a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4096))
                     + chunk(b"IEND", b""))
    return path


def _error_line(err: str, command: str, *needles: str) -> str:
    """The one ``medlocker COMMAND: error: ...`` line, which must hold every needle; never a traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"medlocker {command}: error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def protected(tmp_path_factory):
    """Two PNGs protected with an owner key (tiny surrogate): the key folder and the published part of the output."""
    from conftest import TinyConv
    from monai_medlocker.networks import Surrogate, model_spec

    keys = tmp_path_factory.mktemp("keys")
    save_owner_key(keys / "owner", generate_owner_key())
    src = tmp_path_factory.mktemp("src")
    for i in range(2):
        _fundus(src, f"img{i}.png", seed=i)
    out = tmp_path_factory.mktemp("prot")
    DatasetProtector(src, out, Surrogate(TinyConv(), model_spec("resnet-tiny", 64)), lesion_segmenter="masks",
                     owner_key=keys / "owner.key", progress=False, watermark={"max_queries": 4}).run()
    return keys, public_dir(out)


def _copy(published: Path, dst: Path) -> Path:
    shutil.copytree(published, dst)
    return dst


# Output paths.

def test_output_that_is_a_file_or_under_a_file(tmp_path, capsys):
    _fundus(tmp_path / "in", "a.png")
    blocker = tmp_path / "taken.txt"
    blocker.write_text("x")
    assert main(["protect", str(tmp_path / "in"), str(blocker), *FAST]) == 2
    _error_line(capsys.readouterr().err, "protect", str(blocker), "is a file")
    assert main(["protect", str(tmp_path / "in"), str(blocker / "sub"), *FAST]) == 2
    _error_line(capsys.readouterr().err, "protect", str(blocker / "sub"), "under", "is a file")


def test_unlock_and_lesions_output_that_is_a_file(protected, tmp_path, capsys):
    keys, out = protected
    blocker = tmp_path / "taken.txt"
    blocker.write_text("x")
    assert main(["unlock", str(out), str(blocker), "--key", str(keys / "owner.key"), "--quiet"]) == 2
    _error_line(capsys.readouterr().err, "unlock", str(blocker), "is a file")
    _fundus(tmp_path / "in", "a.png")
    assert main(["lesions", str(tmp_path / "in"), str(blocker / "sub"), "--quiet"]) == 2
    _error_line(capsys.readouterr().err, "lesions", str(blocker / "sub"), "is a file")


def test_read_only_output_folder(tmp_path):
    """Run as an unprivileged user (root writes through read-only modes), so the folder really is read-only."""
    base = Path(tempfile.mkdtemp(prefix="medlocker-ro-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        _fundus(base / "in", "a.png")
        out = base / "out"
        out.mkdir()
        for p in (base / "in", *(base / "in").iterdir()):
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        os.chmod(out, 0o555)
        cmd = [sys.executable, "-m", "monai_medlocker.cli", "protect", str(base / "in"), str(out), *FAST]
        if os.geteuid() == 0:
            cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(base), "PYTHONDONTWRITEBYTECODE": "1"}
        proc = subprocess.run(cmd, cwd=base, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr[-3000:]
        _error_line(proc.stderr, "protect", str(out), "not writable")
        assert list(out.iterdir()) == []
    finally:
        os.chmod(base / "out", 0o755)
        shutil.rmtree(base)


def test_report_naming_a_folder(protected, tmp_path, capsys):
    keys, out = protected
    (tmp_path / "reports").mkdir()
    assert main(["verify", str(out), "--pub", str(keys / "owner.pub"), "--quiet", "--report", str(tmp_path / "reports")]) == 2
    _error_line(capsys.readouterr().err, "verify", "--report", str(tmp_path / "reports"), "is a folder")


# Datalists.

def test_datalist_that_is_a_json_list(tmp_path, capsys):
    _fundus(tmp_path / "ds", "a.png")
    (tmp_path / "ds" / "list.json").write_text(json.dumps([{"image": "a.png"}]))
    assert main(["protect", str(tmp_path / "ds" / "list.json"), str(tmp_path / "out"), *FAST]) == 2
    _error_line(capsys.readouterr().err, "protect", str(tmp_path / "ds" / "list.json"), "JSON object")


def test_malformed_datalist_json_names_the_file(tmp_path, capsys):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "broken.json").write_text('{"test": [{"image": "a.png"}')
    assert main(["protect", str(tmp_path / "ds" / "broken.json"), str(tmp_path / "out"), *FAST]) == 2
    _error_line(capsys.readouterr().err, "protect", str(tmp_path / "ds" / "broken.json"), "not valid JSON")


def test_bad_datalist_items_are_reported_and_the_batch_goes_on(tmp_path, capsys):
    ds = tmp_path / "ds"
    _fundus(ds, "good.png")
    _fundus(ds, "nan.png", seed=1)
    # NaN is what Python's json writes for a missing float label; json.loads reads it back.
    (ds / "datalist.json").write_text('{"test": [{"image": "good.png", "label": 1}, {"image": 5}, {"image": null}, '
                                      '{"image": ""}, {"image": "nan.png", "label": NaN}]}')
    assert main(["protect", str(ds / "datalist.json"), str(tmp_path / "out"), *FAST]) == 1
    summary = read_summary(tmp_path / "out")
    assert summary["protected"] == 1, summary
    errors = [f["error"] for f in summary["failures"]]
    assert len(errors) == 4 and all(str(ds / "datalist.json") in e for e in errors), errors
    assert "got 5" in errors[0] and "got None" in errors[1] and "got ''" in errors[2] and "label nan" in errors[3]
    assert "Traceback" not in capsys.readouterr().err


def test_datalist_reader_names_bad_items(tmp_path):
    from monai_medlocker.data.datalist import load_datalist

    (tmp_path / "datalist.json").write_text('{"test": [{"image": 5, "label": 1}]}')
    with pytest.raises(ValueError, match=r"datalist .*datalist\.json: item 0 of 'test' 'image' must be a non-empty path"):
        load_datalist(tmp_path, "test")


# Models, options, PACS.

def test_model_file_that_is_not_a_checkpoint(tmp_path, capsys):
    _fundus(tmp_path / "in", "a.png")
    (tmp_path / "model.pt").write_bytes(b"this is not a checkpoint\n")
    assert main(["protect", str(tmp_path / "in"), str(tmp_path / "out"), *FAST, "--model", str(tmp_path / "model.pt")]) == 2
    _error_line(capsys.readouterr().err, "protect", str(tmp_path / "model.pt"), "is not a readable model checkpoint")


@pytest.mark.parametrize("value", ['{"scale_range": [0.1', "sideways"])
def test_bad_space_value_names_the_option(tmp_path, capsys, value):
    _fundus(tmp_path / "in", "a.png")
    assert main(["protect", str(tmp_path / "in"), str(tmp_path / "out"), *FAST, "--space", value]) == 2
    _error_line(capsys.readouterr().err, "protect", "--space")


class _BadJsonHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        body = self.server.body
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.mark.parametrize("body", [b'[{"0020000E": {"vr": "UI", "Value": ["1.2', b'{"not": "a list"}', b'[1, 2]'])
def test_pacs_answering_malformed_json(tmp_path, capsys, body):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BadJsonHandler)
    server.body = body
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
        code = main(["pacs", "protect", "--url", url, "--study", "1.2.3", "--retries", "1", "--work-dir",
                     str(tmp_path / "work"), *FAST])
    finally:
        server.shutdown()
        server.server_close()
    assert code != 0
    _error_line(capsys.readouterr().err, "pacs", url, "1.2.3")


# Certificates and decompression bombs in folders given to verify, unlock and lesions.

def test_certificate_chunk_that_is_json_but_not_an_object(protected, tmp_path, capsys):
    from PIL import PngImagePlugin

    keys, out = protected
    folder = _copy(out, tmp_path / "copy")
    target = folder / "img0.png"
    with Image.open(target) as img:
        text, arr = dict(img.text), np.array(img)
    text[PNG_CERTIFICATE] = "[1, 2, 3]"
    info = PngImagePlugin.PngInfo()
    for k, v in text.items():
        info.add_itxt(k, v)
    Image.fromarray(arr).save(target, pnginfo=info)
    (folder / f"img0{SIDECAR_SUFFIX}").unlink()
    assert main(["verify", str(folder), "--pub", str(keys / "owner.pub"), "--quiet", "--json"]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    verdicts = {Path(r["image"]).name: r for r in json.loads(captured.out)["results"]}
    assert verdicts["img1.png"]["verdict"] == "authentic"
    assert verdicts["img0.png"]["verdict"] == "invalid signature" and "not an object" in verdicts["img0.png"]["detail"]
    assert main(["unlock", str(folder), str(tmp_path / "un"), "--key", str(keys / "owner.key"), "--quiet", "--json"]) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["unlocked"] == 1 and "img0.png" in report["failures"][0]["error"]
    assert "not an object" in report["failures"][0]["error"]


def test_decompression_bomb_in_verify_unlock_and_lesions_folders(protected, tmp_path, capsys):
    keys, out = protected
    folder = _copy(out, tmp_path / "copy")
    bomb_png(folder / "bomb.png")
    assert main(["verify", str(folder), "--pub", str(keys / "owner.pub"), "--quiet", "--json"]) == 1
    captured = capsys.readouterr()
    rows = {Path(r["image"]).name: r for r in json.loads(captured.out)["results"]}
    assert rows["bomb.png"]["verdict"] == "unreadable image" and "decompression bomb" in rows["bomb.png"]["detail"]
    assert rows["img0.png"]["verdict"] == "authentic" and "Traceback" not in captured.err
    assert main(["unlock", str(folder), str(tmp_path / "un"), "--key", str(keys / "owner.key"), "--quiet", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["unlocked"] == 2 and "decompression bomb" in report["failures"][0]["error"]
    src = tmp_path / "lesions_in"
    _fundus(src, "eye.png")
    bomb_png(src / "bomb.png")
    assert main(["lesions", str(src), str(tmp_path / "lesions_out"), "--quiet"]) == 1
    summary = json.loads((tmp_path / "lesions_out" / "lesions_summary.json").read_text())
    assert summary["done"] == 1 and "decompression bomb" in summary["failures"][0]["error"]
    assert "Traceback" not in capsys.readouterr().err
