"""Protect with a key, verify, unlock: round trips on PNG and DICOM, and every kind of tampering."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, PngImagePlugin

from monai_medlocker.certify import generate_owner_key, make_grant, save_grant, save_owner_key
from monai_medlocker.certify.seal import PNG_CERTIFICATE, PNG_PAYLOAD, PNG_SEALED, PNG_SIGNATURE, SIDECAR_SUFFIX
from monai_medlocker.cli import main
from monai_medlocker.data.synthetic import synthesize_fundus
from monai_medlocker.io.dciodvfy import dciodvfy_available, run_dciodvfy
from monai_medlocker.io.dicom import read_fundus_dicom
from monai_medlocker.io.dicom_build import fundus_dataset
from monai_medlocker.io.image import load_rgb
from monai_medlocker.io.private_tags import has_medlocker_tags
from monai_medlocker.workflows.protect import DatasetProtector
from monai_medlocker.workflows.verify import RESTORE_DAMAGED
from protect_outputs import public_dir

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    owner, other = generate_owner_key(), generate_owner_key()
    save_owner_key(folder / "owner", owner)
    save_owner_key(folder / "other", other)
    return folder, owner, other


@pytest.fixture(scope="module")
def protected(tmp_path_factory, keys):
    """Two PNGs and two DICOM files (colour JPEG Baseline OP 8-bit, red-free RLE) protected with the owner key;
    the originals and the published part of the output (``OUT/public``: what a partner or a thief gets)."""
    from conftest import TinyConv
    from monai_medlocker.networks import Surrogate, model_spec

    folder, _, _ = keys
    src = tmp_path_factory.mktemp("originals")
    for name in ("fundus_c", "fundus_m"):
        shutil.copy(ROOT / "bundle" / "samples" / f"{name}.png", src / f"{name}.png")
    rgb = synthesize_fundus(256, seed=21, grade=2).image
    fundus_dataset(rgb, iod="op8", transfer_syntax="jpeg-baseline").save_as(src / "colour.dcm", enforce_file_format=True)
    fundus_dataset(rgb[..., 1], iod="op8", transfer_syntax="rle").save_as(src / "redfree.dcm", enforce_file_format=True)
    for stem in ("fundus_c", "fundus_m", "colour", "redfree"):  # empty masks: fast and deterministic
        shape = (512, 512) if stem.startswith("fundus_") else (256, 256)
        Image.fromarray(np.zeros(shape, np.uint8)).save(src / f"{stem}_lesions.png")
    out = tmp_path_factory.mktemp("protected")
    surrogate = Surrogate(TinyConv(), model_spec("resnet-tiny", 64))
    summary = DatasetProtector(src, out, surrogate, watermark={"max_queries": 6}, lesion_segmenter="masks",
                               owner_key=folder / "owner.key", progress=False).run()
    assert summary["protected"] == 4 and summary["certified_by"] == keys[1].key_id, summary
    return src, public_dir(out)


def _copy(out: Path, tmp_path: Path, names: list[str]) -> Path:
    dst = tmp_path / "copy"
    dst.mkdir()
    for name in names:
        for p in out.glob(f"{Path(name).stem}*"):
            shutil.copy(p, dst / p.name)
    return dst


def _verify(target: Path, pub: Path, capsys) -> tuple[int, dict]:
    capsys.readouterr()  # stdout from here on is this command's alone (a protect run before it prints its summary)
    code = main(["verify", str(target), "--pub", str(pub), "--json", "--quiet"])
    return code, json.loads(capsys.readouterr().out)


def _rewrite_png(path: Path, change_text=None, change_pixels=None) -> None:
    with Image.open(path) as img:
        text, arr = dict(img.text), np.array(img.convert("RGB"))
    if change_text:
        change_text(text)
    if change_pixels:
        change_pixels(arr)
    info = PngImagePlugin.PngInfo()
    for k, v in text.items():
        info.add_itxt(k, v)
    Image.fromarray(arr).save(path, pnginfo=info)
    path.with_name(path.stem + SIDECAR_SUFFIX).unlink()  # only the embedded copy is under test


def test_verify_authentic_and_unlock_bit_exact(protected, keys, tmp_path, capsys):
    src, out = protected
    folder, owner, _ = keys
    code, report = _verify(out, folder / "owner.pub", capsys)
    assert code == 0 and report["verdicts"] == {"authentic": 4}, report
    assert all(r["verdict"] == r["status"] == "authentic" and r["restorable"] is True for r in report["results"])
    assert main(["unlock", str(out), str(tmp_path / "un"), "--key", str(folder / "owner.key"), "--quiet"]) == 0
    for name in ("fundus_c", "fundus_m"):
        assert np.array_equal(load_rgb(tmp_path / "un" / f"{name}.png"), load_rgb(src / f"{name}.png"))
        assert not np.array_equal(load_rgb(out / f"{name}.png"), load_rgb(src / f"{name}.png"))
    for name in ("colour", "redfree"):
        original, unlocked = read_fundus_dicom(src / f"{name}.dcm"), read_fundus_dicom(tmp_path / "un" / f"{name}.dcm")
        assert np.array_equal(unlocked.pixels, original.pixels)
        o, u = original.dataset, unlocked.dataset
        for keyword in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "SeriesNumber", "ImageType",
                        "ContentDate", "ContentTime", "PatientID", "LossyImageCompression"):
            assert u.get(keyword) == o.get(keyword), keyword
        assert "SourceImageSequence" not in u and "DerivationDescription" not in u and not has_medlocker_tags(u)
        # The original file comes back byte for byte: JPEG Baseline / RLE encoding and transfer syntax included.
        assert (tmp_path / "un" / f"{name}.dcm").read_bytes() == (src / f"{name}.dcm").read_bytes()
        if dciodvfy_available():
            assert run_dciodvfy(tmp_path / "un" / f"{name}.dcm").errors == []


def test_verify_prints_authentic_and_restorable_apart_from_damaged_restore_data(protected, keys, tmp_path, capsys):
    """Issue 18 item 8: a fully good file reads AUTHENTIC (restorable); one with damaged restore data does not."""
    _, out = protected
    folder, _, _ = keys
    copy = _copy(out, tmp_path, ["fundus_c.png", "fundus_m.png"])
    _rewrite_png(copy / "fundus_m.png", change_text=lambda text: text.pop(PNG_PAYLOAD))
    capsys.readouterr()
    assert main(["verify", str(copy), "--pub", str(folder / "owner.pub"), "--quiet"]) == 3
    printed = capsys.readouterr().out.splitlines()
    good, damaged = (next(x for x in printed if f"{os.sep}{name}" in x) for name in ("fundus_c.png", "fundus_m.png"))
    assert good.startswith("AUTHENTIC (restorable) ")
    assert damaged.startswith("PIXELS AUTHENTIC, RESTORE DATA DAMAGED ") and "restorable" not in damaged
    assert printed[-1].endswith("2 image(s): 1 authentic (restorable), 1 pixels authentic, restore data damaged")


def test_grant_unlocks_exactly_its_images(protected, keys, tmp_path):
    src, out = protected
    folder, owner, _ = keys
    grant = tmp_path / "partner.grant"
    image_id = json.loads((out / f"fundus_c{SIDECAR_SUFFIX}").read_text())["certificate"]["image_id"]
    assert image_id.startswith("fundus_c.png#")  # the file name plus the original's hash: unique
    save_grant(grant, make_grant(owner, [image_id]))
    assert main(["unlock", str(out / "fundus_c.png"), str(tmp_path / "ok"), "--grant", str(grant), "--quiet"]) == 0
    assert np.array_equal(load_rgb(tmp_path / "ok" / "fundus_c.png"), load_rgb(src / "fundus_c.png"))
    assert "master_secret" not in grant.read_text() and base64.b64encode(owner.master_secret).decode() not in grant.read_text()
    # A grant for other images does not open this one, and nothing is written.
    assert main(["unlock", str(out / "fundus_m.png"), str(tmp_path / "no"), "--grant", str(grant), "--quiet"]) == 1
    assert not (tmp_path / "no").exists()
    # Nor does a grant for the bare file name (another dataset's fundus_c.png).
    save_grant(tmp_path / "name.grant", make_grant(owner, ["fundus_c.png"]))
    assert main(["unlock", str(out / "fundus_c.png"), str(tmp_path / "no"), "--grant",
                 str(tmp_path / "name.grant"), "--quiet"]) == 1


def test_grant_holder_always_checks_the_signature(protected, keys, tmp_path, capsys):
    _, out = protected
    _, owner, _ = keys
    target = _copy(out, tmp_path, ["fundus_m.png"]) / "fundus_m.png"
    image_id = json.loads((target.parent / f"fundus_m{SIDECAR_SUFFIX}").read_text())["certificate"]["image_id"]

    def edit(text):
        sig = bytearray(base64.b64decode(text[PNG_SIGNATURE]))
        sig[0] ^= 0x01
        text[PNG_SIGNATURE] = base64.b64encode(bytes(sig)).decode()
    _rewrite_png(target, change_text=edit)
    save_grant(tmp_path / "g.grant", make_grant(owner, [image_id]))
    assert main(["unlock", str(target), str(tmp_path / "un"), "--grant", str(tmp_path / "g.grant"), "--quiet"]) == 1
    assert "invalid signature" in capsys.readouterr().out and not (tmp_path / "un").exists()


def test_grant_cli_from_folder_then_unlock(protected, keys, tmp_path):
    _, out = protected
    folder, _, _ = keys
    grant = tmp_path / "all.grant"
    assert main(["grant", "--key", str(folder / "owner.key"), "--images", str(out), "--out", str(grant)]) == 0
    assert main(["unlock", str(out), str(tmp_path / "un"), "--grant", str(grant), "--quiet"]) == 0
    assert len(list((tmp_path / "un").glob("*.png"))) == 2 and len(list((tmp_path / "un").glob("*.dcm"))) == 2


def test_wrong_key_fails_and_writes_nothing(protected, keys, tmp_path, capsys):
    _, out = protected
    folder, _, other = keys
    assert main(["unlock", str(out), str(tmp_path / "un"), "--key", str(folder / "other.key"), "--quiet"]) == 1
    printed = capsys.readouterr().out
    assert "foreign owner" in printed and other.key_id in printed and not (tmp_path / "un").exists()
    code, report = _verify(out, folder / "other.pub", capsys)
    assert code == 1 and report["verdicts"] == {"foreign owner": 4}


@pytest.mark.parametrize("tamper,verdict,unlock_error", [
    ("pixel", "watermark present, pixels modified", "do not match the certified original"),
    ("parameter", "invalid signature", "invalid signature"),
    ("signature", "invalid signature", "invalid signature"),
    ("payload", RESTORE_DAMAGED, "wrong key, or the payload or its certificate was altered"),
    ("sealed", RESTORE_DAMAGED, "sealed record"),
])
def test_png_tampering_is_detected(protected, keys, tmp_path, capsys, tamper, verdict, unlock_error):
    _, out = protected
    folder, _, _ = keys
    target = _copy(out, tmp_path, ["fundus_c.png"]) / "fundus_c.png"
    if tamper == "pixel":
        _rewrite_png(target, change_pixels=lambda a: a.__setitem__((3, 3, 0), a[3, 3, 0] ^ 1))  # far from any logo box
    elif tamper == "parameter":
        def edit(text):
            cert = json.loads(text[PNG_CERTIFICATE])
            cert["params"]["marks"][0]["scale"] = round(cert["params"]["marks"][0]["scale"] - 0.01, 6)
            text[PNG_CERTIFICATE] = json.dumps(cert)
        _rewrite_png(target, change_text=edit)
    elif tamper == "signature":
        def edit(text):
            sig = bytearray(base64.b64decode(text[PNG_SIGNATURE]))
            sig[10] ^= 0x01
            text[PNG_SIGNATURE] = base64.b64encode(bytes(sig)).decode()
        _rewrite_png(target, change_text=edit)
    else:
        chunk = PNG_PAYLOAD if tamper == "payload" else PNG_SEALED

        def edit(text):
            blob = bytearray(base64.b64decode(text[chunk]))
            blob[len(blob) // 2] ^= 0x01
            text[chunk] = base64.b64encode(bytes(blob)).decode()
        _rewrite_png(target, change_text=edit)
    code, report = _verify(target, folder / "owner.pub", capsys)
    assert report["results"][0]["verdict"] == verdict, report
    assert code == (3 if verdict == RESTORE_DAMAGED else 1)
    assert main(["unlock", str(target), str(tmp_path / "un"), "--key", str(folder / "owner.key"), "--quiet"]) == 1
    assert unlock_error in capsys.readouterr().out
    assert not (tmp_path / "un").exists()


def _blob_edit(kind: str, other: bytes):
    """A change to an encrypted blob: flip a bit, truncate, drop it, or splice in another image's."""
    def edit(blob: bytes | None) -> bytes | None:
        if kind == "flip":
            return blob[:-7] + bytes([blob[-7] ^ 0x10]) + blob[-6:]
        if kind == "truncate":
            return blob[: len(blob) - 32]
        if kind == "drop":
            return None
        return other  # splice: a whole valid blob from another protected image
    return edit


@pytest.mark.parametrize("chunk", [PNG_PAYLOAD, PNG_SEALED])
@pytest.mark.parametrize("kind", ["flip", "truncate", "drop", "splice"])
def test_png_restore_data_damage_is_not_authentic(protected, keys, tmp_path, capsys, chunk, kind):
    """Issue 18 item 8: the blobs as published are signed, so verify tells damaged restore data apart."""
    _, out = protected
    folder, _, _ = keys
    target = _copy(out, tmp_path, ["fundus_c.png"]) / "fundus_c.png"
    with Image.open(out / "fundus_m.png") as img:
        other = base64.b64decode(img.text[chunk])
    edit = _blob_edit(kind, other)

    def change(text):
        blob = edit(base64.b64decode(text[chunk]))
        if blob is None:
            del text[chunk]
        else:
            text[chunk] = base64.b64encode(blob).decode()
    _rewrite_png(target, change_text=change)
    code, report = _verify(target, folder / "owner.pub", capsys)
    row = report["results"][0]
    assert row["verdict"] == RESTORE_DAMAGED and code == 3, report
    assert ("restore payload" if chunk == PNG_PAYLOAD else "sealed record") in row["detail"]
    assert main(["unlock", str(target), str(tmp_path / "un"), "--key", str(folder / "owner.key"), "--quiet"]) == 1
    assert not (tmp_path / "un").exists()


def test_png_public_chunk_edit_and_truncated_sidecar_are_not_authentic(protected, keys, tmp_path, capsys):
    _, out = protected
    folder, _, _ = keys
    target = _copy(out, tmp_path, ["fundus_c.png"]) / "fundus_c.png"

    def move_mark(text):
        public = json.loads(text["medlocker:public"])
        public["marks"][0]["x0"] += 40
        text["medlocker:public"] = json.dumps(public)
    _rewrite_png(target, change_text=move_mark)
    code, report = _verify(target, folder / "owner.pub", capsys)
    assert code == 3 and report["results"][0]["verdict"] == RESTORE_DAMAGED, report
    assert "public record" in report["results"][0]["detail"]
    # A copy that lost its chunks (pixels intact) and travels with a sidecar whose payload was cut short.
    bare = tmp_path / "bare"
    bare.mkdir()
    Image.open(out / "fundus_m.png").save(bare / "fundus_m.png")
    sidecar = json.loads((out / f"fundus_m{SIDECAR_SUFFIX}").read_text())
    sidecar["restore_payload"] = sidecar["restore_payload"][:-400]
    (bare / f"fundus_m{SIDECAR_SUFFIX}").write_text(json.dumps(sidecar))
    code, report = _verify(bare, folder / "owner.pub", capsys)
    assert code == 3 and report["results"][0]["verdict"] == RESTORE_DAMAGED, report
    assert report["results"][0]["certificate_in"] == "sidecar"
    assert main(["unlock", str(bare), str(tmp_path / "un"), "--key", str(folder / "owner.key"), "--quiet"]) == 1


@pytest.mark.parametrize("element", [0x12, 0x14])
@pytest.mark.parametrize("kind", ["flip", "truncate", "truncate-value-only", "drop", "splice"])
def test_dicom_restore_data_damage_is_not_authentic(protected, keys, tmp_path, capsys, element, kind):
    """Issue 18 item 8 on DICOM: the private block's payload (0x12) or sealed record (0x14) damaged."""
    _, out = protected
    folder, _, _ = keys
    copy = _copy(out, tmp_path, ["colour.dcm"])
    (copy / ("colour" + SIDECAR_SUFFIX)).unlink()
    other = pydicom.dcmread(out / "redfree.dcm").private_block(0x0011, "MEDLOCKER 1")
    ds = pydicom.dcmread(copy / "colour.dcm")
    block = ds.private_block(0x0011, "MEDLOCKER 1")
    blob = _blob_edit(kind.split("-")[0], bytes(other[element].value)[: other[element + 1].value])(
        bytes(block[element].value)[: block[element + 1].value])
    if blob is None:
        del ds[block.get_tag(element)], ds[block.get_tag(element + 1)]
    elif kind == "truncate-value-only":  # its length element still says the old length
        block[element].value = blob
    else:
        block[element].value, block[element + 1].value = blob, len(blob)
    ds.save_as(copy / "colour.dcm")
    code, report = _verify(copy / "colour.dcm", folder / "owner.pub", capsys)
    assert code == 3 and report["results"][0]["verdict"] == RESTORE_DAMAGED, report
    assert report["results"][0]["restorable"] is False
    assert main(["unlock", str(copy / "colour.dcm"), str(tmp_path / "un"), "--key", str(folder / "owner.key"),
                 "--quiet"]) == 1
    assert not (tmp_path / "un").exists()


@pytest.mark.parametrize("name,damage", [("fundus_m.png", "payload"), ("fundus_m.png", "certificate"),
                                         ("colour.dcm", "payload"), ("colour.dcm", "sealed")])
def test_an_intact_sidecar_stands_in_for_a_damaged_embedded_copy(protected, keys, tmp_path, capsys, name, damage):
    """Issue 18 item 11: verify and unlock fall back on the sidecar beside the image."""
    src, out = protected
    folder, _, _ = keys
    target = _copy(out, tmp_path, [name]) / name
    sidecar = target.with_name(target.stem + SIDECAR_SUFFIX).read_bytes()
    if name.endswith(".png"):
        def change(text):
            if damage == "certificate":
                text[PNG_CERTIFICATE] = text[PNG_CERTIFICATE][:-9]  # no longer JSON
            else:
                del text[PNG_PAYLOAD]
        _rewrite_png(target, change_text=change)  # it removes the sidecar: put it back
        target.with_name(target.stem + SIDECAR_SUFFIX).write_bytes(sidecar)
    else:
        ds = pydicom.dcmread(target)
        block = ds.private_block(0x0011, "MEDLOCKER 1")
        element = 0x12 if damage == "payload" else 0x14
        block[element].value = bytes(block[element].value)[:-40] + bytes(40)
        ds.save_as(target)
    code, report = _verify(target, folder / "owner.pub", capsys)
    row = report["results"][0]
    assert code == 0 and row["verdict"] == "authentic" and row["certificate_in"] == "sidecar", report
    assert "embedded copy is damaged" in row["detail"]
    assert main(["unlock", str(target), str(tmp_path / "un"), "--key", str(folder / "owner.key"), "--quiet"]) == 0
    if name.endswith(".png"):
        assert np.array_equal(load_rgb(tmp_path / "un" / name), load_rgb(src / name))
    else:
        assert np.array_equal(read_fundus_dicom(tmp_path / "un" / name).pixels, read_fundus_dicom(src / name).pixels)
    # Without the sidecar, the damage shows.
    target.with_name(target.stem + SIDECAR_SUFFIX).unlink()
    code, report = _verify(target, folder / "owner.pub", capsys)
    assert code != 0 and report["results"][0]["verdict"] != "authentic"


def _edited_dicom_copy(out: Path, tmp_path: Path, *edits) -> Path:
    """A copy of ``colour.dcm`` (its sidecar beside it) with each of ``edits`` applied to its dataset."""
    target = _copy(out, tmp_path, ["colour.dcm"]) / "colour.dcm"
    ds = pydicom.dcmread(target)
    for edit in edits:
        edit(ds)
    ds.save_as(target)
    return target


def _strip_medlocker_block(ds: pydicom.Dataset) -> None:
    for elem in list(ds.group_dataset(0x0011)):
        del ds[elem.tag]


def _garble_certificate(ds: pydicom.Dataset) -> None:
    block = ds.private_block(0x0011, "MEDLOCKER 1")
    block[0x10].value = str(block[0x10].value)[:-9]  # no longer JSON: the whole block is unreadable


@pytest.mark.parametrize("damage", [_strip_medlocker_block, _garble_certificate])
def test_a_dicom_sidecar_stands_in_for_a_stripped_or_unreadable_block(protected, keys, tmp_path, capsys, damage):
    """Issue 18 item 11 on DICOM: a PACS stripped the private block, or its certificate is garbled."""
    src, out = protected
    folder, _, _ = keys
    target = _edited_dicom_copy(out, tmp_path, damage)
    code, report = _verify(target, folder / "owner.pub", capsys)
    row = report["results"][0]
    assert code == 0 and row["verdict"] == "authentic" and row["certificate_in"] == "sidecar", report
    assert "sidecar" in row["detail"] and "header_changes" not in row
    assert main(["unlock", str(target), str(tmp_path / "un"), "--key", str(folder / "owner.key"), "--quiet"]) == 0
    assert (tmp_path / "un" / "colour.dcm").read_bytes() == (src / "colour.dcm").read_bytes()


@pytest.mark.parametrize("edit", ["header", "pixels"])
def test_a_dicom_sidecar_does_not_let_an_altered_instance_pass(protected, keys, tmp_path, capsys, edit):
    """With the block stripped, the sidecar's certificate still checks the signed header digest and the pixels."""
    _, out = protected
    folder, _, _ = keys

    def alter(ds):
        if edit == "header":
            ds.ImageLaterality = "L"
        else:
            ds.PixelData = bytes([255 - ds.PixelData[0]]) + ds.PixelData[1:]
    target = _edited_dicom_copy(out, tmp_path, _strip_medlocker_block, alter)
    code, report = _verify(target, folder / "owner.pub", capsys)
    row = report["results"][0]
    assert code == 1 and row["certificate_in"] == "sidecar", report
    if edit == "header":
        assert row["verdict"] == "DICOM header modified" and row["header_changes"] == ["ImageLaterality changed"]
    else:
        assert row["verdict"].startswith("pixels modified") or row["verdict"].startswith("watermark present"), row
    assert main(["unlock", str(target), str(tmp_path / "un"), "--key", str(folder / "owner.key"), "--quiet"]) == 1
    assert not (tmp_path / "un").exists()


def test_format_1_certificates_still_verify_and_unlock(protected, keys, tmp_path, capsys):
    """Outputs of the previous version sign no hashes of their blobs: still authentic when they are present."""
    from monai_medlocker.certify.certificate import certificate_digest, sign_certificate
    from monai_medlocker.certify.payload import decrypt_payload, derive_image_key, encrypt_payload
    from monai_medlocker.certify.seal import _record_key

    src, out = protected
    folder, owner, _ = keys
    target = _copy(out, tmp_path, ["fundus_c.png"]) / "fundus_c.png"

    def to_format_1(text):
        cert = json.loads(text[PNG_CERTIFICATE])
        image_key = derive_image_key(owner.master_secret, owner.key_id, cert["image_id"])
        blobs = {PNG_PAYLOAD: image_key, PNG_SEALED: _record_key(image_key)}
        plain = {c: decrypt_payload(base64.b64decode(text[c]), k, certificate_digest(cert)) for c, k in blobs.items()}
        del cert["published"]
        cert["format"] = "medlocker-certificate/1"
        for c, k in blobs.items():  # sealed under the format 1 certificate, as the previous version did
            text[c] = base64.b64encode(encrypt_payload(plain[c], k, certificate_digest(cert))).decode()
        signed = sign_certificate(cert, owner)
        text[PNG_CERTIFICATE] = json.dumps(signed.certificate)
        text[PNG_SIGNATURE] = base64.b64encode(signed.signature).decode()
    _rewrite_png(target, change_text=to_format_1)
    code, report = _verify(target, folder / "owner.pub", capsys)
    assert code == 0 and report["results"][0]["verdict"] == "authentic", report
    assert main(["unlock", str(target), str(tmp_path / "un"), "--key", str(folder / "owner.key"), "--quiet"]) == 0
    assert np.array_equal(load_rgb(tmp_path / "un" / "fundus_c.png"), load_rgb(src / "fundus_c.png"))


def test_dicom_tampering_is_detected(protected, keys, tmp_path, capsys):
    _, out = protected
    folder, _, _ = keys
    copy = _copy(out, tmp_path, ["colour.dcm"])
    (copy / ("colour" + SIDECAR_SUFFIX)).unlink()
    ds = pydicom.dcmread(copy / "colour.dcm")
    block = ds.private_block(0x0011, "MEDLOCKER 1")
    payload = bytearray(block[0x12].value)
    payload[-5] ^= 0x80
    block[0x12].value = bytes(payload)
    ds.save_as(copy / "colour.dcm")
    assert main(["unlock", str(copy / "colour.dcm"), str(tmp_path / "un"), "--key", str(folder / "owner.key"), "--quiet"]) == 1
    assert "payload or its certificate was altered" in capsys.readouterr().out
    cert = json.loads(block[0x10].value)
    assert "seed" not in cert["params"] and "alpha" not in cert["params"]["marks"][0]  # the public record only
    cert["params"]["marks"][0]["x0"] += 1
    block[0x10].value = json.dumps(cert)
    ds.save_as(copy / "colour.dcm")
    code, report = _verify(copy / "colour.dcm", folder / "owner.pub", capsys)
    assert code == 1 and report["results"][0]["verdict"] == "invalid signature"


def test_dicom_header_swap_is_detected(protected, keys, tmp_path, capsys):
    _, out = protected
    folder, _, _ = keys
    copy = _copy(out, tmp_path, ["colour.dcm"])
    ds = pydicom.dcmread(copy / "colour.dcm")
    ds.PatientID = "SOMEONE-ELSE"
    ds.save_as(copy / "colour.dcm")
    code, report = _verify(copy / "colour.dcm", folder / "owner.pub", capsys)
    row = report["results"][0]
    assert code == 1 and row["verdict"] == "DICOM header modified", report
    # Issue 18 item 9: what changed is named for the patient/study attributes too (the name, not the value).
    assert row["header_changes"] == ["PatientID changed"] and "PatientID changed" in row["detail"], row
    assert "SOMEONE" not in json.dumps(report)
    assert main(["unlock", str(copy / "colour.dcm"), str(tmp_path / "un"), "--key", str(folder / "owner.key"),
                 "--quiet"]) == 1
    assert "patient/study attributes are not the certified ones (PatientID changed)" in capsys.readouterr().out


@pytest.mark.parametrize("edit", ["laterality_and_modality", "image_type", "removed", "added_in_sequence"])
def test_dicom_header_edits_are_named_and_refused(protected, keys, tmp_path, capsys, edit):
    """Issue 18 item 9: the header as written is signed; verify names the changed attributes, unlock refuses."""
    _, out = protected
    folder, _, _ = keys
    copy = _copy(out, tmp_path, ["colour.dcm"])
    ds = pydicom.dcmread(copy / "colour.dcm")
    assert ds.ImageLaterality == "R"
    if edit == "laterality_and_modality":
        ds.ImageLaterality, ds.Modality = "L", "CT"
        named = ["Modality changed", "ImageLaterality changed"]  # in tag order
    elif edit == "image_type":
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        named = ["ImageType changed"]
    elif edit == "removed":
        del ds.ImageLaterality
        named = ["ImageLaterality removed"]
    else:
        ds.SourceImageSequence[0].ReferencedSOPInstanceUID = "1.2.3.4"
        named = ["SourceImageSequence changed"]
    ds.save_as(copy / "colour.dcm")
    code, report = _verify(copy, folder / "owner.pub", capsys)
    row = report["results"][0]
    assert code == 1 and row["verdict"] == "DICOM header modified", report
    assert row["header_changes"] == named and all(n in row["detail"] for n in named)
    assert main(["unlock", str(copy), str(tmp_path / "un"), "--key", str(folder / "owner.key"), "--quiet"]) == 1
    assert "DICOM header modified" in capsys.readouterr().out and not (tmp_path / "un").exists()  # FAILED lines: stdout


def test_dicom_lossless_transcode_by_dcmtk_stays_authentic(protected, keys, tmp_path, capsys):
    """dcmtk's RLE transcode (a PACS may do this) changes the pixel encoding, not the signed header or pixels."""
    if not shutil.which("dcmcrle"):
        if os.environ.get("MEDLOCKER_REQUIRE_DCIODVFY") == "1":
            pytest.fail("dcmtk (dcmcrle) is required here but not installed")
        pytest.skip("dcmtk is not installed (apt-get install dcmtk); .ci/run installs it")
    _, out = protected
    folder, _, _ = keys
    subprocess.run(["dcmcrle", str(out / "colour.dcm"), str(tmp_path / "colour.dcm")], check=True)
    assert pydicom.dcmread(tmp_path / "colour.dcm").file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
    code, report = _verify(tmp_path / "colour.dcm", folder / "owner.pub", capsys)
    assert code == 0 and report["results"][0]["verdict"] == "authentic", report


def _jpeg_with_sidecar(image: Path, sidecar_folder: Path, dst: Path) -> None:
    """A JPEG (q80) copy of ``image`` in ``dst``, with the protected copy's sidecar of the same stem beside it."""
    Image.open(image).convert("RGB").save(dst / f"{image.stem}.jpg", quality=80)
    shutil.copy(sidecar_folder / f"{image.stem}{SIDECAR_SUFFIX}", dst / f"{image.stem}{SIDECAR_SUFFIX}")


def test_lossy_reencoding_is_watermark_present_pixels_modified(protected, keys, tmp_path, capsys):
    src, out = protected
    folder, _, _ = keys
    copy = tmp_path / "shared"
    copy.mkdir()
    _jpeg_with_sidecar(out / "fundus_m.png", out, copy)
    half = Image.open(out / "fundus_c.png").convert("RGB").resize((256, 256), Image.Resampling.BILINEAR)
    half.save(copy / "fundus_c.png")
    shutil.copy(out / f"fundus_c{SIDECAR_SUFFIX}", copy / f"fundus_c{SIDECAR_SUFFIX}")
    shutil.copy(src / "fundus_c.png", copy / "unprotected.png")
    code, report = _verify(copy, folder / "owner.pub", capsys)
    verdicts = {Path(r["image"]).name: r["verdict"] for r in report["results"]}
    assert verdicts == {"fundus_m.jpg": "watermark present, pixels modified",
                        "fundus_c.png": "watermark present, pixels modified",
                        "unprotected.png": "no certificate"}, report
    assert code == 1


def test_logo_moved_elsewhere_is_not_reported_present(protected, keys, tmp_path, capsys):
    """The negative case of the detector: the original (no logo) with the protected copy's sidecar."""
    src, out = protected
    folder, _, _ = keys
    copy = tmp_path / "c"
    copy.mkdir()
    _jpeg_with_sidecar(src / "fundus_m.png", out, copy)
    _, report = _verify(copy, folder / "owner.pub", capsys)
    assert report["results"][0]["verdict"] == "pixels modified, watermark not found"


def _bundle_run(config: str, **settings) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(ROOT / "bundle" / "configs" / config),
           "--progress", "False"]
    for key, value in settings.items():
        cmd += [f"--{key}", str(value)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_unlock_and_verify_bundle_configs_through_monai_bundle(protected, keys, tmp_path):
    src, out = protected
    folder, _, _ = keys
    result = _bundle_run("unlock.json", dataset_dir=out, output_dir=tmp_path / "un", owner_key=folder / "owner.key")
    assert result.returncode == 0, result.stderr[-2000:]
    assert np.array_equal(load_rgb(tmp_path / "un" / "fundus_m.png"), load_rgb(src / "fundus_m.png"))
    result = _bundle_run("verify.json", dataset_dir=out, public_key=folder / "owner.pub", report=tmp_path / "verify.json")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "verify.json").read_text())["verdicts"] == {"authentic": 4}


def test_dicom_transcoded_lossy_by_dcmtk_is_watermark_present(protected, keys, tmp_path, capsys):
    """A PACS-style lossy transcode (dcmtk's dcmcjpeg, JPEG Baseline): the mark is still found, unlock refuses."""
    if not shutil.which("dcmcjpeg"):
        if os.environ.get("MEDLOCKER_REQUIRE_DCIODVFY") == "1":
            pytest.fail("dcmtk (dcmcjpeg) is required here but not installed")
        pytest.skip("dcmtk is not installed (apt-get install dcmtk); .ci/run installs it")
    _, out = protected
    folder, _, _ = keys
    subprocess.run(["dcmcjpeg", "+eb", str(out / "colour.dcm"), str(tmp_path / "colour.dcm")], check=True)
    assert pydicom.dcmread(tmp_path / "colour.dcm").file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
    code, report = _verify(tmp_path / "colour.dcm", folder / "owner.pub", capsys)
    assert code == 1 and report["results"][0]["verdict"] == "watermark present, pixels modified", report
    assert main(["unlock", str(tmp_path / "colour.dcm"), str(tmp_path / "un"), "--key", str(folder / "owner.key"),
                 "--quiet"]) == 1
    assert not (tmp_path / "un").exists()


def test_dicom_source_without_study_uid_verifies_and_unlocks(keys, tmp_path, capsys, tiny_surrogate):
    """pydicom's JPEG-LS file has no Study/Series Instance UID: the derived study must not break verify."""
    folder, _, _ = keys
    corpus = Path(pydicom.__file__).parent / "data" / "test_files"
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(corpus / "SC_rgb_jls_lossy_line.dcm", src / "nostudy.dcm")
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(src / "nostudy_lesions.png")
    DatasetProtector(src, tmp_path / "out", tiny_surrogate, watermark={"max_queries": 4}, lesion_segmenter="masks",
                     owner_key=folder / "owner.key", progress=False).run()
    code, report = _verify(public_dir(tmp_path / "out"), folder / "owner.pub", capsys)
    assert code == 0 and report["verdicts"] == {"authentic": 1}, report
    assert main(["unlock", str(public_dir(tmp_path / "out")), str(tmp_path / "un"), "--key", str(folder / "owner.key"),
                 "--quiet"]) == 0
    back = read_fundus_dicom(tmp_path / "un" / "nostudy.dcm")
    assert np.array_equal(back.pixels, read_fundus_dicom(src / "nostudy.dcm").pixels)
    assert "StudyInstanceUID" not in back.dataset  # the original had none


def test_images_sharing_a_sop_instance_uid_get_their_own_keys_and_are_flagged(keys, tmp_path, capsys, tiny_surrogate):
    """Issue 18 item 10: the DICOM image id binds the pixels' hash, and a shared UID is reported (a warning)."""
    folder, owner, _ = keys
    src = tmp_path / "in"
    src.mkdir()
    uid = "1.2.826.0.1.3680043.8.498.77"
    for i, stem in enumerate(("left", "right", "later")):
        ds = fundus_dataset(synthesize_fundus(128, seed=40 + i, grade=1).image, iod="op8")
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.save_as((src if stem != "later" else tmp_path) / f"{stem}.dcm", enforce_file_format=True)
        Image.fromarray(np.zeros((128, 128), np.uint8)).save((src if stem != "later" else tmp_path) / f"{stem}_lesions.png")
    out = tmp_path / "out"
    summary = DatasetProtector(src, out, tiny_surrogate, watermark={"max_queries": 4}, lesion_segmenter="masks",
                               owner_key=folder / "owner.key", progress=False).run()
    assert summary["protected"] == 2 and summary["exit_code"] == 0, summary
    assert summary["duplicate_sop_instance_uids"] == [{"sop_instance_uid": uid, "images": ["left.dcm", "right.dcm"]}]
    assert f"DUPLICATE SOP INSTANCE UID {uid}: left.dcm, right.dcm" in capsys.readouterr().out
    ids = {stem: json.loads((public_dir(out) / f"{stem}{SIDECAR_SUFFIX}").read_text())["certificate"]["image_id"]
           for stem in ("left", "right")}
    assert ids["left"] != ids["right"] and all(i.startswith(uid + "#") for i in ids.values())
    save_grant(tmp_path / "left.grant", make_grant(owner, [ids["left"]]))
    grant = ["--grant", str(tmp_path / "left.grant"), "--quiet"]
    assert main(["unlock", str(public_dir(out) / "right.dcm"), str(tmp_path / "no"), *grant]) == 1
    assert main(["unlock", str(public_dir(out) / "left.dcm"), str(tmp_path / "ok"), *grant]) == 0
    assert np.array_equal(read_fundus_dicom(tmp_path / "ok" / "left.dcm").pixels, read_fundus_dicom(src / "left.dcm").pixels)
    # A later run into the same folder: its image is flagged against the earlier records.
    later = tmp_path / "in2"
    later.mkdir()
    for name in ("later.dcm", "later_lesions.png"):
        shutil.move(tmp_path / name, later / name)
    summary = DatasetProtector(later, out, tiny_surrogate, watermark={"max_queries": 4}, lesion_segmenter="masks",
                               owner_key=folder / "owner.key", progress=False).run()
    assert summary["duplicate_sop_instance_uids"] == [{"sop_instance_uid": uid, "images": ["later.dcm", "left.dcm",
                                                                                           "right.dcm"]}], summary


def test_unlock_resume_takes_a_dicom_target_only_when_it_is_the_original_file(protected, keys, tmp_path, capsys):
    """A rerun skips an unlocked DICOM that is the original file byte for byte; one with the same pixels under
    another header is not the original (unlock gives back the file, not only its pixels), and stays untouched."""
    src, out = protected
    folder, _, _ = keys
    copy = _copy(out, tmp_path, ["colour.dcm"])
    target_dir = tmp_path / "un"
    args = ["unlock", str(copy), str(target_dir), "--key", str(folder / "owner.key"), "--quiet", "--json"]
    assert main(args) == 0
    [target] = list(target_dir.rglob("colour.dcm"))
    assert target.read_bytes() == (src / "colour.dcm").read_bytes()
    capsys.readouterr()
    assert main(args) == 0
    assert [r["status"] for r in json.loads(capsys.readouterr().out)["results"]] == ["already-restored"]
    ds = pydicom.dcmread(target)
    ds.PatientName = "Someone^Else"  # same pixels, another header
    ds.save_as(target)
    edited = target.read_bytes()
    capsys.readouterr()
    assert main(args) == 1
    assert "not the certified original" in capsys.readouterr().out and target.read_bytes() == edited
