"""Scriptable commands (issue 20 items 10-12): results on stdout, ``--json`` summaries, reproducible keyless
runs with a reused render secret, and grants from protected file paths."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_medlocker.certify import generate_owner_key, load_grant, save_owner_key
from monai_medlocker.cli import main
from monai_medlocker.io.image import load_rgb
from monai_medlocker.workflows.protect import DatasetProtector
from protect_outputs import manifest_rows, private_dir, public_dir, read_record, read_summary, sidecar_file

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "bundle" / "samples"
NAMES = ("fundus_c", "fundus_m")
# The bundle's protect settings, made fast: few queries, the given masks.
FAST = ["--quiet", "--max-queries", "12", "--lesion-segmenter", "masks"]


def _originals(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in NAMES:
        for p in SAMPLES.glob(f"{name}*.png"):
            shutil.copy(p, folder / p.name)
    return folder


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    """Two sample PNGs protected with an owner key: (key folder, originals, output folder)."""
    from conftest import TinyConv
    from monai_medlocker.networks import Surrogate, model_spec

    base = tmp_path_factory.mktemp("keyed")
    save_owner_key(base / "owner", generate_owner_key())
    save_owner_key(base / "other", generate_owner_key())
    src = _originals(base / "in")
    out = base / "out"
    DatasetProtector(src, out, Surrogate(TinyConv(), model_spec("resnet-tiny", 64)), watermark={"max_queries": 6},
                     lesion_segmenter="masks", owner_key=base / "owner.key", progress=False).run()
    return base, src, out


def _cert_id(out: Path, stem: str) -> str:
    return json.loads(sidecar_file(out, stem).read_text())["certificate"]["image_id"]


# ------------------------------------------------------------------------------------------- item 10


def test_verify_verdicts_go_to_stdout(keyed, capsys):
    keys, _, out = keyed
    assert main(["verify", str(public_dir(out)), "--pub", str(keys / "owner.pub"), "--quiet"]) == 0
    captured = capsys.readouterr()
    for name in NAMES:
        line = next(x for x in captured.out.splitlines() if x.endswith(f"{name}.png"))
        assert line.startswith("AUTHENTIC (restorable) ")  # issue 18 item 8: apart from restore data damaged
    assert "2 image(s): 2 authentic (restorable)" in captured.out and "AUTHENTIC" not in captured.err


def test_verify_json_is_the_only_stdout(keyed, capsys):
    keys, _, out = keyed
    assert main(["verify", str(public_dir(out)), "--pub", str(keys / "other.pub"), "--quiet", "--json"]) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)  # nothing but the one JSON object
    assert report["command"] == "verify" and report["images"] == 2 and report["exit_code"] == 1
    rows = {Path(r["image"]).stem: r for r in report["results"]}
    for name in NAMES:
        assert rows[name]["image"] == str(public_dir(out) / f"{name}.png")
        assert rows[name]["image_id"] == _cert_id(out, name)
        assert rows[name]["status"] == rows[name]["verdict"] == "foreign owner"
        assert "not by" in rows[name]["message"]
    assert "FOREIGN OWNER" in captured.err  # the human-readable verdicts still reach the terminal


def test_unlock_json_lists_every_image(keyed, tmp_path, capsys):
    keys, src, out = keyed
    (tmp_path / "in").mkdir()
    for name in NAMES:
        shutil.copy(public_dir(out) / f"{name}.png", tmp_path / "in" / f"{name}.png")
    shutil.copy(sidecar_file(out, NAMES[0]), tmp_path / "in")  # the other one's sidecar is left behind
    with Image.open(public_dir(out) / f"{NAMES[1]}.png") as img:
        Image.fromarray(np.array(img.convert("RGB"))).save(tmp_path / "in" / f"{NAMES[1]}.png")  # no certificate left
    code = main(["unlock", str(tmp_path / "in"), str(tmp_path / "un"), "--key", str(keys / "owner.key"), "--quiet",
                 "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1 and report["command"] == "unlock" and report["unlocked"] == 1
    rows = {Path(r["image"]).stem: r for r in report["results"]}
    assert rows[NAMES[0]]["status"] == "unlocked" and rows[NAMES[0]]["image_id"] == _cert_id(out, NAMES[0])
    assert rows[NAMES[0]]["message"] is None and Path(rows[NAMES[0]]["output"]).is_file()
    assert rows[NAMES[1]]["status"] == "failed" and "no MedLocker certificate" in rows[NAMES[1]]["message"]
    assert np.array_equal(load_rgb(tmp_path / "un" / f"{NAMES[0]}.png"), load_rgb(src / f"{NAMES[0]}.png"))


def test_unlock_summary_goes_to_stdout(keyed, tmp_path, capsys):
    keys, _, out = keyed
    assert main(["unlock", str(public_dir(out)), str(tmp_path / "un"), "--key", str(keys / "owner.key"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "2/2 image(s) restored" in captured.out and "restored" not in captured.err


def test_protect_json(tmp_path, capsys):
    src = _originals(tmp_path / "in")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = tmp_path / "out"
    assert main(["protect", str(src), str(out), *FAST, "--json"]) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["command"] == "protect" and report["images"] == 3 and report["protected"] == 2
    rows = {r["image"]: r for r in report["results"]}
    assert set(rows) == {"broken.png", "fundus_c.png", "fundus_m.png"}
    for name in NAMES:
        row = rows[f"{name}.png"]
        assert row["status"] == "protected" and row["message"] is None and row["output"] == f"public/{name}.png"
        assert row["image_id"] == read_record(out, f"{name}.png")["image_id"] and row["image_id"].startswith(f"{name}.png#")
    assert rows["broken.png"]["status"] == "failed" and "not a readable image" in rows["broken.png"]["message"]
    assert "MedLocker protect: 2/3" in captured.err  # the human summary moved aside
    # the owner's montage: each original beside its protected copy, one row per protected image
    assert report["montage"] == "private/montage.png" and "look before publishing: private/montage.png" in captured.err
    sheet = np.asarray(Image.open(out / report["montage"]).convert("RGB"))
    assert sheet.shape == (2 * (256 + 14 + 4) + 4, 2 * 256 + 3 * 4, 3)
    left, right = sheet[18:274, 4:260], sheet[18:274, 264:520]
    assert left.any() and not np.array_equal(left, right)  # the mark shows on the right
    # the manifest names each image's id too (where the README sends the owner)
    assert {r["image"]: r.get("image_id") for r in manifest_rows(out)}["fundus_c.png"] == \
        rows["fundus_c.png"]["image_id"]
    # without --json the summary is the result: stdout
    assert main(["protect", str(src), str(out), *FAST]) == 1
    captured = capsys.readouterr()
    assert "MedLocker protect: 2/3" in captured.out and "MedLocker protect" not in captured.err


def test_protect_workers_json_keeps_stdout_clean(tmp_path):
    src = _originals(tmp_path / "in")
    cmd = [sys.executable, "-m", "monai_medlocker.cli", "protect", str(src), str(tmp_path / "out"), *FAST,
           "--workers", "2", "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)  # the ranks' own summary went to stderr
    assert report["protected"] == 2 and sorted(r["image"] for r in report["results"]) == [f"{n}.png" for n in NAMES]
    assert "MedLocker protect: 2/2" in done.stderr


def test_lesions_json(tmp_path, capsys):
    src = _originals(tmp_path / "in")
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(src / "grey.png")
    assert main(["lesions", str(src), str(tmp_path / "out"), "--ignore-masks", "--json"]) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["command"] == "lesions" and report["done"] == 2
    rows = {r["image"]: r for r in report["results"]}
    assert rows["fundus_c.png"]["status"] == "done" and rows["fundus_c.png"]["message"] is None
    assert rows["grey.png"]["status"] == "failed" and "no field of view" in rows["grey.png"]["message"]
    assert all("image_id" in r for r in report["results"])
    assert "grey.png: failed" in captured.err  # the per-image lines moved aside
    assert main(["lesions", str(src), str(tmp_path / "out2"), "--ignore-masks"]) == 1
    captured = capsys.readouterr()
    assert "fundus_c.png: done" in captured.out and "FAILED grey.png" in captured.out


# ------------------------------------------------------------------------------------------- item 11


def _public_pixels(out: Path) -> dict:
    return {p.name: load_rgb(p) for p in sorted(public_dir(out).glob("*.png"))}


def _same_pixels(a: dict, b: dict) -> bool:
    return sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_keyless_runs_with_one_render_secret_are_identical(tmp_path, capsys):
    src = _originals(tmp_path / "in")
    first = tmp_path / "first"
    assert main(["protect", str(src), str(first), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "depend on the render secret private/render_secret" in printed
    secret = private_dir(first) / "render_secret"
    runs = {}
    for name in ("a", "b"):
        assert main(["protect", str(src), str(tmp_path / name), *FAST, "--render-secret", str(secret)]) == 0
        assert f"(a copy of {secret})" in capsys.readouterr().out
        runs[name] = _public_pixels(tmp_path / name)
        assert (private_dir(tmp_path / name) / "render_secret").read_bytes() == secret.read_bytes()
        assert read_summary(tmp_path / name)["render_secret_from"] == str(secret)
    assert _same_pixels(runs["a"], runs["b"]) and _same_pixels(runs["a"], _public_pixels(first))
    # without it, another folder draws its own secret: other marks (why the option exists)
    assert main(["protect", str(src), str(tmp_path / "c"), *FAST]) == 0
    assert not _same_pixels(runs["a"], _public_pixels(tmp_path / "c"))


def test_render_secret_refusals_name_the_file(tmp_path, capsys):
    src = _originals(tmp_path / "in")
    bad = tmp_path / "short_secret"
    bad.write_bytes(b"x" * 5)
    assert main(["protect", str(src), str(tmp_path / "o1"), *FAST, "--render-secret", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "expected 32 bytes" in err and not (tmp_path / "o1" / "public").exists()
    # a folder protected with one secret is not continued with another
    assert main(["protect", str(src), str(tmp_path / "o2"), *FAST]) == 0
    other = tmp_path / "other_secret"
    other.write_bytes(os.urandom(32))
    assert main(["protect", str(src), str(tmp_path / "o2"), *FAST, "--render-secret", str(other)]) == 2
    err = capsys.readouterr().err
    assert "holds another render secret" in err and str(other) in err
    # with an owner key the render secrets derive from the key
    save_owner_key(tmp_path / "owner", generate_owner_key())
    assert main(["protect", str(src), str(tmp_path / "o3"), *FAST, "--key", str(tmp_path / "owner.key"),
                 "--render-secret", str(other)]) == 2
    assert "only a keyless run" in capsys.readouterr().err


def test_bundle_runner_and_cli_agree_with_one_render_secret(tmp_path):
    src = _originals(tmp_path / "in")
    secret = tmp_path / "secret"
    secret.write_bytes(os.urandom(32))
    assert main(["protect", str(src), str(tmp_path / "cli"), *FAST, "--render-secret", str(secret)]) == 0
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(ROOT / "bundle" / "configs" / "inference.json"),
           "--dataset_dir", str(src), "--output_dir", str(tmp_path / "bundle"), "--render_secret", str(secret),
           "--max_queries", "12", "--lesion_segmenter", "masks", "--progress", "False"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(a copy of" in done.stdout
    assert _same_pixels(_public_pixels(tmp_path / "cli"), _public_pixels(tmp_path / "bundle"))


# ------------------------------------------------------------------------------------------- item 12


def test_grant_takes_protected_file_paths(keyed, tmp_path, capsys):
    keys, src, out = keyed
    first, second = (public_dir(out) / f"{n}.png" for n in NAMES)
    ids = tmp_path / "ids.txt"
    ids.write_text(_cert_id(out, NAMES[1]) + "\n")
    args = ["grant", "--key", str(keys / "owner.key"), "--out"]
    assert main(args + [str(tmp_path / "one.grant"), "--images", str(first)]) == 0
    assert "covers 1 image" in capsys.readouterr().out
    assert sorted(load_grant(tmp_path / "one.grant").image_keys) == [_cert_id(out, NAMES[0])]
    # files, sidecars and id lists together
    assert main(args + [str(tmp_path / "mixed.grant"), "--images", str(sidecar_file(out, NAMES[0])), str(ids)]) == 0
    assert sorted(load_grant(tmp_path / "mixed.grant").image_keys) == sorted(_cert_id(out, n) for n in NAMES)
    # the grant opens exactly that image
    assert main(["unlock", str(public_dir(out)), str(tmp_path / "un"), "--grant", str(tmp_path / "one.grant"),
                 "--quiet"]) == 1
    assert np.array_equal(load_rgb(tmp_path / "un" / first.name), load_rgb(src / first.name))
    assert not (tmp_path / "un" / second.name).exists()
    capsys.readouterr()
    # a file of another owner, or with no certificate, is an error naming it
    assert main(["grant", "--key", str(keys / "other.key"), "--out", str(tmp_path / "x.grant"), "--images", str(first)]) == 2
    assert str(first) in capsys.readouterr().err
    plain = tmp_path / "plain.png"
    shutil.copy(src / first.name, plain)
    assert main(args + [str(tmp_path / "y.grant"), "--images", str(plain)]) == 2
    err = capsys.readouterr().err
    assert str(plain) in err and "no MedLocker certificate" in err
    assert not (tmp_path / "x.grant").exists() and not (tmp_path / "y.grant").exists()
