"""DESIGN invariant 6: nothing a protect run publishes tells the grade or the means of removal in clear.

A protect output folder has ``public/`` (what may be published) and ``private/`` (the owner's).
These tests read every byte of every file under ``public/`` (PNG text chunks, every DICOM element,
the public sidecars) as a thief would, and look for the grade, the predictions and margins, the
lesion boxes, the opacities and the rendering secrets of the images protected into it.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from monai_medlocker.certify.keys import generate_owner_key, load_owner_key, save_owner_key
from monai_medlocker.certify.payload import derive_image_key
from monai_medlocker.certify.seal import (
    PNG_PUBLIC,
    SealedRecordError,
    open_sealed_record,
    public_record,
    read_protected,
    render_key,
)
from monai_medlocker.cli import main
from monai_medlocker.io.image import load_rgb

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "bundle" / "samples"
# Names of record fields that must never be readable in a published file.
FORBIDDEN_KEYS = {"label", "label_source", "clean", "final", "preds", "margin", "model_margins", "alpha", "alpha_255",
                  "wsm_boxes", "wsm_pixels", "lesion_report", "lesion_source", "optimizer_settings", "queries",
                  "success", "seed", "run_settings", "masks"}
_SETTINGS = ["--max-queries", "8", "--lesion-segmenter", "masks", "--quiet", "--seed", "5"]


def _inputs(tmp_path: Path) -> Path:
    """Three PNGs and one DICOM under neutral names (the samples' own names say their grade), in a labelled datalist."""
    src = tmp_path / "in"
    src.mkdir()
    entries = []
    for i, (name, grade) in enumerate([("fundus_c", 2), ("fundus_m", 3), ("fundus_h", 4),
                                       ("op8_colour", 2)]):
        suffix = ".dcm" if name.startswith("op8") else ".png"
        stem = f"eye{i}"
        shutil.copy(SAMPLES / (name + suffix), src / (stem + suffix))
        for lesion in ("MA", "HE", "EX", "SE"):
            shutil.copy(SAMPLES / f"{name}_{lesion}.png", src / f"{stem}_{lesion}.png")
        entries.append({"image": stem + suffix, "label": grade,
                        **{f"mask_{t.lower()}": f"{stem}_{t}.png" for t in ("MA", "HE", "EX", "SE")}})
    (src / "datalist.json").write_text(json.dumps({"testing": entries}))
    return src


@pytest.fixture(scope="module")
def releases(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("publication")
    src = _inputs(tmp)
    key_path, _ = save_owner_key(tmp / "owner", generate_owner_key())
    out_key, out_plain = tmp / "out_key", tmp / "out_plain"
    assert main(["protect", str(src / "datalist.json"), str(out_key), "--key", str(key_path), *_SETTINGS]) == 0
    assert main(["protect", str(src / "datalist.json"), str(out_plain), *_SETTINGS]) == 0
    return {"src": src, "key": load_owner_key(key_path), "keyed": out_key, "plain": out_plain}


def _json_docs(text: str) -> list:
    """Every JSON value that a text holds whole (a text chunk, a UT element, a sidecar)."""
    try:
        return [json.loads(text)]
    except ValueError:
        return []


def _keys(doc) -> set[str]:
    if isinstance(doc, dict):
        return set(doc) | {k for v in doc.values() for k in _keys(v)}
    if isinstance(doc, list):
        return {k for v in doc for k in _keys(v)}
    return set()


def _dicom_texts(ds: pydicom.Dataset) -> list[str]:
    texts = []
    for elem in ds.iterall():
        value = elem.value
        if isinstance(value, bytes):
            texts.append(value.decode("latin-1"))
        elif not isinstance(value, pydicom.Sequence):
            texts.append(str(value))
    return texts


def published_texts(public: Path) -> dict[Path, list[str]]:
    """What a thief reads in each published file: its raw bytes, and every text value it holds."""
    found = {}
    for path in sorted(p for p in public.rglob("*") if p.is_file()):
        data = path.read_bytes()
        texts = [data.decode("latin-1")]
        if path.suffix == ".png":
            with Image.open(path) as img:
                img.load()
                texts += list((getattr(img, "text", {}) or {}).values())
        elif path.suffix == ".dcm":
            texts += _dicom_texts(pydicom.dcmread(path))
        found[path] = texts
    return found


def _secrets_of(record: dict) -> list[str]:
    """Renderings of the record's private values as they would appear in JSON or DICOM text."""
    out = []
    for m in record.get("marks", []):
        out += [json.dumps(m["alpha"]), repr(float(m["alpha"]))]
    for box in record.get("wsm_boxes", []):
        out += [json.dumps(box), json.dumps(box, separators=(",", ":")), "\\".join(str(v) for v in box)]
    for side in ("clean", "final"):
        if isinstance(record.get(side), dict):
            out.append(json.dumps(record[side]["margin"]))
    return [s for s in out if len(s) >= 6]  # short numbers occur by chance in any file


@pytest.mark.parametrize("which", ["keyed", "plain"])
def test_nothing_published_reveals_grade_boxes_opacity_or_secrets(releases, which):
    out = releases[which]
    records = [json.loads(p.read_text()) for p in sorted((out / "private" / "records").rglob("*.record.json"))]
    assert len(records) == 4 and all(r["protected"] and r["label_source"] == "given" for r in records)
    assert sorted(r["label"] for r in records) == [2, 2, 3, 4]
    if which == "keyed":
        rendering = [render_key(releases["key"].master_secret, releases["key"].key_id, r["image_id"]) for r in records]
    else:
        rendering = [(out / "private" / "render_secret").read_bytes()]
    forbidden_texts = [s for r in records for s in _secrets_of(r)]
    forbidden_texts += [s for k in rendering for s in (k.hex(), base64.b64encode(k).decode())]
    texts = published_texts(out / "public")
    assert {p.suffix for p in texts} >= ({".png", ".dcm", ".json"} if which == "keyed" else {".png", ".dcm"})
    for path, values in texts.items():
        raw = path.read_bytes()
        for k in rendering:
            assert k not in raw, f"{path}: holds a rendering secret"
        for value in values:
            for needle in forbidden_texts:
                assert needle not in value, f"{path}: holds {needle!r} from the private record"
            for doc in _json_docs(value):
                leaked = _keys(doc) & FORBIDDEN_KEYS
                assert not leaked, f"{path}: a published JSON value has the private fields {sorted(leaked)}"
        for name in FORBIDDEN_KEYS:
            assert f'"{name}"'.encode() not in raw, f"{path}: its bytes hold the field name {name!r}"


def test_output_folder_says_what_to_publish(releases):
    out = releases["keyed"]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["PUBLISH.txt", "private", "public"]
    note = (out / "PUBLISH.txt").read_text()
    assert "public/" in note and "private/" in note
    private = sorted(p.name for p in (out / "private").iterdir())
    assert {"manifest.jsonl", "summary.json", "run_settings.json", "records"} <= set(private)
    # Keyless: no sidecar (nothing can be sealed), the PNG holds only the public record; the run secret stays private.
    plain = releases["plain"]
    assert not list((plain / "public").rglob("*.json"))
    with Image.open(plain / "public" / "eye0.png") as img:
        img.load()
        assert set(img.text) == {PNG_PUBLIC}
    assert ((plain / "private" / "render_secret").stat().st_mode & 0o777) == 0o600


def test_public_record_keeps_only_what_verification_needs():
    record = {"format": "medlocker-params/1", "software": "x", "protected": True, "image_size": [10, 20],
              "logo_sha256": "sha256:ab", "logo_rendering": "colour", "label": 3, "clean": {"preds": [3], "margin": 2.0},
              "marks": [{"x0": 1, "y0": 2, "width": 3, "height": 4, "alpha": 0.5, "alpha_255": 128, "rotation": 0.0,
                         "scale": 0.2, "box_xyxy": [1, 2, 4, 6]}], "wsm_boxes": [[0, 0, 1, 1]]}
    public = public_record(record)
    assert public["marks"] == [{"x0": 1, "y0": 2, "width": 3, "height": 4, "rotation": 0.0, "scale": 0.2,
                                "box_xyxy": [1, 2, 4, 6]}]
    assert not _keys(public) & FORBIDDEN_KEYS
    assert public["image_size"] == [10, 20] and public["logo_sha256"] == "sha256:ab"


def test_owner_and_grantee_open_the_sealed_record(releases):
    out, key = releases["keyed"], releases["key"]
    for path in sorted((out / "public").glob("eye*.*")):
        if path.suffix == ".json":
            continue
        pf = read_protected(path)
        assert pf.sealed_record is not None and pf.found_in in ("png", "dicom")
        image_id = pf.signed.certificate["image_id"]
        record = open_sealed_record(pf.signed, pf.sealed_record, derive_image_key(key.master_secret, key.key_id, image_id),
                                    str(path))
        private = json.loads((out / "private" / "records" / f"{path.stem}{'.dcm' if path.suffix == '.dcm' else '.png'}"
                              ".record.json").read_text())
        assert record["label"] == private["label"] and record["marks"] == private["marks"]
        assert record["wsm_boxes"] == private["wsm_boxes"]
        with pytest.raises(SealedRecordError, match=str(path)):
            open_sealed_record(pf.signed, pf.sealed_record, bytes(32), str(path))


def test_a_sealed_record_that_fails_to_open_is_named_and_the_batch_goes_on(releases, tmp_path):
    copy = tmp_path / "release"
    shutil.copytree(releases["keyed"] / "public", copy)
    # Flip a byte of one image's sealed record, in its PNG chunk, and drop its sidecar (an intact one would serve instead).
    target = copy / "eye1.png"
    (copy / "eye1.medlocker.json").unlink()
    with Image.open(target) as img:
        img.load()
        text = dict(img.text)
        pixels = np.asarray(img).copy()
    blob = bytearray(base64.b64decode(text["medlocker:sealed"]))
    blob[-1] ^= 1
    text["medlocker:sealed"] = base64.b64encode(bytes(blob)).decode()
    from monai_medlocker.io.image import save_png

    save_png(target, pixels, text=text)
    key_path, _ = save_owner_key(tmp_path / "owner", releases["key"])
    unlocked = tmp_path / "unlocked"
    assert main(["unlock", str(copy), str(unlocked), "--key", str(key_path), "--quiet"]) == 1
    summary = json.loads((unlocked / "unlock_summary.json").read_text())
    failed = {f["image"]: f["error"] for f in summary["failures"]}
    assert list(failed) == [str(target)] and "sealed record" in failed[str(target)]
    assert not (unlocked / "eye1.png").exists()
    for name in ("eye0.png", "eye2.png"):
        assert np.array_equal(load_rgb(unlocked / name), load_rgb(releases["src"] / name))


def test_an_old_clear_text_output_folder_is_refused(releases, tmp_path, capsys):
    old = tmp_path / "old"
    old.mkdir()
    (old / "manifest.jsonl").write_text("")
    assert main(["protect", str(releases["src"] / "datalist.json"), str(old), *_SETTINGS]) != 0
    assert "earlier MedLocker version" in capsys.readouterr().err
