"""Certificates and keys: owner keys, signatures, restore payloads, grants, logo detection and the CLI."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import io
import json
import stat

import numpy as np
import pytest
from PIL import Image

from monai_medlocker.certify import (
    CERT_FORMAT,
    CertificateError,
    GrantError,
    KeyFileError,
    PayloadError,
    SignedCertificate,
    apply_restore_payload,
    build_certificate,
    canonical_bytes,
    certificate_digest,
    decrypt_payload,
    derive_image_key,
    detect_logo,
    encrypt_payload,
    footprint_bytes,
    generate_owner_key,
    load_grant,
    load_owner_key,
    load_public_key,
    make_grant,
    pack_restore_payload,
    pixel_sha256,
    save_grant,
    save_owner_key,
    sign_certificate,
    verify_certificate,
)
from monai_medlocker.certify.seal import public_record
from monai_medlocker.cli import main
from monai_medlocker.data.synthetic import synthesize_fundus
from monai_medlocker.watermark.blend import Placement, composite
from monai_medlocker.watermark.logo import load_logo

PASS = "correct horse battery staple"


@pytest.fixture(scope="module")
def owner():
    return generate_owner_key()


@pytest.fixture(scope="module")
def other_owner():
    return generate_owner_key()


@pytest.fixture(scope="module")
def logo():
    return load_logo()


@pytest.fixture(scope="module")
def marked(logo):
    """A 256 px synthetic fundus with two faint marks (the weakest opacity the engine allows)."""
    original = synthesize_fundus(256, 11).image
    marks = [Placement(130, 60, 64, 64, 100 / 255, 0.0, 0.25), Placement(40, 140, 52, 52, 0.6, 15.0, 0.2)]
    watermarked = composite(original, logo, marks)
    params = {"format": "test-record", "image_size": [256, 256], "marks": [m.to_record() for m in marks]}
    return original, watermarked, params, marks


def _raw_public(key) -> bytes:
    return key.public.raw


def _signing_raw(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.signing_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                         serialization.NoEncryption())


def _secret_spellings(secret: bytes) -> list[bytes]:
    return [secret, base64.b64encode(secret), secret.hex().encode(), base64.urlsafe_b64encode(secret)]


# --------------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------------


def test_key_id_format(owner):
    raw = _raw_public(owner)
    assert owner.key_id == owner.public.key_id == "ed25519:" + hashlib.sha256(raw).hexdigest()[:32]


def test_key_round_trip_without_passphrase(tmp_path, owner):
    key_path, pub_path = save_owner_key(tmp_path / "owner", owner)
    assert (key_path.name, pub_path.name) == ("owner.key", "owner.pub")
    loaded = load_owner_key(key_path)
    assert loaded.master_secret == owner.master_secret
    assert _signing_raw(loaded) == _signing_raw(owner)
    assert loaded.key_id == owner.key_id
    assert json.loads(key_path.read_text())["format"] == "medlocker-owner-key/1"
    assert json.loads(pub_path.read_text())["format"] == "medlocker-owner-pub/1"
    for path in (pub_path, key_path):  # the .key file's public part is readable without a passphrase
        pub = load_public_key(path)
        assert pub.key_id == owner.key_id and pub.raw == _raw_public(owner)
    assert owner.master_secret not in pub_path.read_bytes()
    assert base64.b64encode(owner.master_secret) not in pub_path.read_bytes()


def test_key_round_trip_with_passphrase(tmp_path, owner):
    key_path, _ = save_owner_key(tmp_path / "owner", owner, passphrase=PASS)
    text = key_path.read_bytes()
    for spelling in _secret_spellings(owner.master_secret):
        assert spelling not in text
    assert b"ENCRYPTED PRIVATE KEY" in text
    loaded = load_owner_key(key_path, passphrase=PASS)
    assert loaded.master_secret == owner.master_secret and _signing_raw(loaded) == _signing_raw(owner)
    assert load_public_key(key_path).key_id == owner.key_id
    with pytest.raises(KeyFileError, match="passphrase"):
        load_owner_key(key_path)


def test_wrong_passphrase(tmp_path, owner):
    key_path, _ = save_owner_key(tmp_path / "owner", owner, passphrase=PASS)
    with pytest.raises(KeyFileError, match=r"owner\.key.*wrong passphrase"):
        load_owner_key(key_path, passphrase=PASS + "!")


def test_wrong_passphrase_for_master_secret_alone(tmp_path, owner):
    """The master secret is sealed on its own: a file whose PEM opens but whose secret does not is refused."""
    key_path, _ = save_owner_key(tmp_path / "a", owner, passphrase=PASS)
    other_path, _ = save_owner_key(tmp_path / "b", owner, passphrase="another passphrase")
    data = json.loads(key_path.read_text())
    data["master_secret"] = json.loads(other_path.read_text())["master_secret"]
    key_path.chmod(0o600)
    key_path.write_text(json.dumps(data))
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        load_owner_key(key_path, passphrase=PASS)


def test_private_key_file_is_0600_and_never_overwritten(tmp_path, owner, other_owner):
    key_path, pub_path = save_owner_key(tmp_path / "owner", owner)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    before = key_path.read_bytes(), pub_path.read_bytes()
    with pytest.raises(FileExistsError, match=r"owner\.key"):
        save_owner_key(tmp_path / "owner", other_owner)
    assert (key_path.read_bytes(), pub_path.read_bytes()) == before
    # An existing .pub alone also blocks the pair, and nothing is written.
    (tmp_path / "lonely.pub").write_text("{}")
    with pytest.raises(FileExistsError, match=r"lonely\.pub"):
        save_owner_key(tmp_path / "lonely", other_owner)
    assert not (tmp_path / "lonely.key").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_bad_key_files(tmp_path, owner, other_owner):
    key_path, pub_path = save_owner_key(tmp_path / "owner", owner)
    with pytest.raises(KeyFileError, match="not found"):
        load_owner_key(tmp_path / "missing.key")
    junk = tmp_path / "junk.key"
    junk.write_text("hello")
    with pytest.raises(KeyFileError, match=r"junk\.key.*not a MedLocker"):
        load_owner_key(junk)
    with pytest.raises(KeyFileError, match="public key file"):
        load_owner_key(pub_path)
    data = json.loads(key_path.read_text())
    future = tmp_path / "future.key"
    future.write_text(json.dumps({**data, "format": "medlocker-owner-key/9"}))
    with pytest.raises(KeyFileError, match="format version"):
        load_owner_key(future)
    # key_id (and public key) of another owner next to this owner's signing key
    swapped = tmp_path / "swapped.key"
    other_pub = base64.b64encode(_raw_public(other_owner)).decode()
    swapped.write_text(json.dumps({**data, "key_id": other_owner.key_id, "public_key": other_pub}))
    with pytest.raises(KeyFileError, match=r"swapped\.key.*does not match"):
        load_owner_key(swapped)
    bad_id = tmp_path / "bad_id.pub"
    bad_id.write_text(json.dumps({**json.loads(pub_path.read_text()), "key_id": other_owner.key_id}))
    with pytest.raises(KeyFileError, match="does not match"):
        load_public_key(bad_id)


# --------------------------------------------------------------------------------------------------
# Certificates
# --------------------------------------------------------------------------------------------------


def _certificate(owner, params, image_id="img-001"):
    return build_certificate(owner.key_id, image_id, params, "sha256:" + "a" * 64, "sha256:" + "b" * 64,
                             payload_sha256="sha256:" + "c" * 64, created="2024-01-02T03:04:05Z",
                             extra={"StudyInstanceUID": "1.2.3"})


def test_canonical_bytes_stable_under_key_order():
    a = {"b": 1, "a": {"y": [1, 2.5, "é"], "x": None}, "c": True}
    b = {"c": True, "a": {"x": None, "y": [1, 2.5, "é"]}, "b": 1}
    assert list(a) != list(b)
    assert canonical_bytes(a) == canonical_bytes(b) == b'{"a":{"x":null,"y":[1,2.5,"\\u00e9"]},"b":1,"c":true}'
    assert canonical_bytes({"v": np.int64(3)}) == canonical_bytes({"v": 3})
    with pytest.raises(CertificateError, match="canonical"):
        canonical_bytes({"v": float("nan")})
    with pytest.raises(CertificateError):
        canonical_bytes({"v": float("inf")})


def test_pixel_sha256_covers_shape_and_dtype():
    img = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    h = pixel_sha256(img)
    assert h.startswith("sha256:") and len(h) == 7 + 64
    assert pixel_sha256(img.copy()) == h
    assert pixel_sha256(np.asfortranarray(img)) == h  # hashed as C-contiguous
    assert pixel_sha256(img.reshape(4, 2, 3)) != h
    assert pixel_sha256(img.view(np.int8)) != h
    changed = img.copy()
    changed[1, 2, 0] ^= 1
    assert pixel_sha256(changed) != h


def test_build_certificate_fields(owner, marked):
    _, _, params, _ = marked
    cert = _certificate(owner, params)
    assert cert["format"] == CERT_FORMAT
    assert set(cert) == {"format", "key_id", "image_id", "params", "watermarked_sha256", "original_sha256",
                         "payload_sha256", "created", "software", "extra"}
    assert cert["software"].startswith("monai-medlocker ")
    assert cert["extra"] == {"StudyInstanceUID": "1.2.3"}
    assert build_certificate(owner.key_id, "x", {}, "h1", "h2")["created"].endswith("T00:00:00Z")  # the day only (issue 18)


def test_signature_valid_and_tamper_evident(owner, other_owner, marked):
    _, _, params, _ = marked
    signed = sign_certificate(_certificate(owner, params), owner)
    assert len(signed.signature) == 64
    assert verify_certificate(signed, owner.public) == "valid"
    # survives a JSON round trip with another key order, as a sidecar would
    reread = SignedCertificate.from_dict(json.loads(json.dumps(signed.to_dict(), sort_keys=False, indent=1)))
    assert verify_certificate(reread, owner.public) == "valid"
    # one changed parameter
    changed = copy.deepcopy(signed.certificate)
    changed["params"]["marks"][0]["x0"] += 1
    assert verify_certificate(SignedCertificate(changed, signed.signature), owner.public) == "invalid signature"
    # one flipped signature byte
    sig = bytearray(signed.signature)
    sig[10] ^= 0x01
    assert verify_certificate(SignedCertificate(signed.certificate, bytes(sig)), owner.public) == "invalid signature"
    assert verify_certificate(SignedCertificate(signed.certificate, b"short"), owner.public) == "invalid signature"
    # another owner's public key
    assert verify_certificate(signed, other_owner.public) == "foreign owner"
    with pytest.raises(CertificateError, match="not the signing key"):
        sign_certificate(_certificate(owner, params), other_owner)


# --------------------------------------------------------------------------------------------------
# Restore payloads
# --------------------------------------------------------------------------------------------------


def test_payload_round_trip_is_exact_and_small(marked):
    original, watermarked, _, marks = marked
    boxes = [m.box_xyxy for m in marks]
    assert not np.array_equal(original, watermarked)
    packed = pack_restore_payload(original, boxes)
    restored = apply_restore_payload(watermarked, packed)
    assert restored.dtype == np.uint8 and restored.shape == original.shape
    assert np.array_equal(restored, original)
    assert pixel_sha256(restored) == pixel_sha256(original)
    assert not np.array_equal(watermarked, original)  # a copy: the input is untouched
    footprint = footprint_bytes(original.shape, boxes)
    assert footprint == sum((x1 - x0) * (y1 - y0) * 3 for x0, y0, x1, y1 in boxes)
    assert len(packed) <= footprint
    # noise cannot be compressed: stored raw, still exact and not much above the footprint
    noise = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    packed_noise = pack_restore_payload(noise, [(0, 0, 20, 20)])
    assert np.array_equal(apply_restore_payload(np.zeros_like(noise), packed_noise)[:20, :20], noise[:20, :20])
    assert len(packed_noise) <= 20 * 20 * 3 + 64


def test_payload_rejects_misfits(marked):
    original, watermarked, _, marks = marked
    packed = pack_restore_payload(original, [m.box_xyxy for m in marks])
    with pytest.raises(PayloadError, match="image"):
        apply_restore_payload(watermarked[:200], packed)
    with pytest.raises(PayloadError, match="overlap"):
        pack_restore_payload(original, [(0, 0, 10, 10), (5, 5, 15, 15)])
    with pytest.raises(PayloadError, match="outside"):
        pack_restore_payload(original, [(250, 250, 260, 260)])
    with pytest.raises(PayloadError, match="truncated|unreadable"):
        apply_restore_payload(watermarked, packed[:-10])
    with pytest.raises(PayloadError, match="not a MedLocker"):
        apply_restore_payload(watermarked, b"XXXX" + packed[4:])


def test_encrypt_decrypt(owner, other_owner, marked):
    original, _, params, marks = marked
    packed = pack_restore_payload(original, [m.box_xyxy for m in marks])
    cert = _certificate(owner, params)
    aad = certificate_digest(cert)
    key = derive_image_key(owner.master_secret, owner.key_id, cert["image_id"])
    blob = encrypt_payload(packed, key, aad)
    assert blob[0] == 1 and len(blob) == 1 + 12 + len(packed) + 16
    assert encrypt_payload(packed, key, aad) != blob  # fresh random nonce each time
    assert decrypt_payload(blob, key, aad) == packed

    wrong_key = derive_image_key(other_owner.master_secret, other_owner.key_id, cert["image_id"])
    flipped = bytearray(blob)
    flipped[40] ^= 0x01
    tampered = copy.deepcopy(cert)
    tampered["params"]["marks"][0]["alpha"] = 1.0
    for args in ((blob, wrong_key, aad), (bytes(flipped), key, aad), (blob, key, certificate_digest(tampered))):
        with pytest.raises(PayloadError, match=r"sidecar\.json: cannot decrypt.*wrong key.*altered"):
            decrypt_payload(*args, source="sidecar.json")
    with pytest.raises(PayloadError, match="version"):
        decrypt_payload(b"\x03" + blob[1:], key, aad)


def _hkdf_reference(secret: bytes, salt: bytes, info: bytes) -> bytes:
    """RFC 5869 for one 32-byte block, written out with hmac to pin the derivation's salt and info."""
    prk = hmac.new(salt, secret, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def test_image_keys_differ_per_image_and_owner(owner, other_owner):
    k1 = derive_image_key(owner.master_secret, owner.key_id, "img-1")
    assert len(k1) == 32
    assert k1 == derive_image_key(owner.master_secret, owner.key_id, "img-1")
    assert k1 != derive_image_key(owner.master_secret, owner.key_id, "img-2")
    assert k1 != derive_image_key(other_owner.master_secret, other_owner.key_id, "img-1")
    assert k1 == _hkdf_reference(owner.master_secret, owner.key_id.encode(), b"medlocker-restore/1\x00img-1")


# --------------------------------------------------------------------------------------------------
# Grants
# --------------------------------------------------------------------------------------------------


def test_grant_covers_exactly_the_chosen_images(tmp_path, owner):
    grant = make_grant(owner, ["a", "b", "a"])
    assert sorted(grant.image_keys) == ["a", "b"] and grant.key_id == owner.key_id
    assert grant.key_for("a") == derive_image_key(owner.master_secret, owner.key_id, "a")
    path = save_grant(tmp_path / "g.grant", grant)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_bytes()
    for spelling in _secret_spellings(owner.master_secret):
        assert spelling not in text
    loaded = load_grant(path)
    assert loaded.image_keys == grant.image_keys and loaded.key_id == owner.key_id
    with pytest.raises(GrantError, match=r"grant .*g\.grant does not cover image c"):
        loaded.key_for("c")
    with pytest.raises(FileExistsError):
        save_grant(path, make_grant(owner, ["z"]))
    assert load_grant(path).image_keys == grant.image_keys
    bad = tmp_path / "bad.grant"
    bad.write_text(json.dumps({"format": "medlocker-grant/1", "key_id": owner.key_id, "image_keys": {"a": "AAAA"}}))
    with pytest.raises(GrantError, match=r"bad\.grant"):
        load_grant(bad)
    with pytest.raises(GrantError, match="not found"):
        load_grant(tmp_path / "none.grant")


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def _write_sidecar(folder, stem, key, params, image_id):
    """A public sidecar as protect writes it: the signed certificate (over the public record) and the two blobs."""
    cert = build_certificate(key.key_id, image_id, public_record(params), "sha256:" + "0" * 64, "sha256:" + "1" * 64)
    sidecar = {**sign_certificate(cert, key).to_dict(), "restore_payload": "", "sealed_record": ""}
    (folder / f"{stem}.medlocker.json").write_text(json.dumps(sidecar))


def test_cli_keygen_and_grant(tmp_path, capsys, monkeypatch, owner, marked):
    _, _, params, _ = marked
    monkeypatch.setenv("ML_TEST_PASS", PASS)
    assert main(["keygen", str(tmp_path / "keys" / "me"), "--passphrase-env", "ML_TEST_PASS"]) == 0
    out = capsys.readouterr().out
    key = load_owner_key(tmp_path / "keys" / "me.key", passphrase=PASS)
    assert key.key_id in out and "me.key" in out and "me.pub" in out
    assert stat.S_IMODE((tmp_path / "keys" / "me.key").stat().st_mode) == 0o600
    assert main(["keygen", str(tmp_path / "keys" / "me")]) == 2  # never overwritten
    assert "already exists" in capsys.readouterr().err

    # a list file
    ids = tmp_path / "ids.txt"
    ids.write_text("# chosen images\nimg-1\n\n  img-2  \nimg-1\n")
    pw = tmp_path / "pass.txt"
    pw.write_text(PASS + "\n")
    args = ["grant", "--key", str(tmp_path / "keys" / "me.key"), "--passphrase-file", str(pw)]
    assert main(args + ["--images", str(ids), "--out", str(tmp_path / "list.grant")]) == 0
    assert "covers 2 images" in capsys.readouterr().out
    grant = load_grant(tmp_path / "list.grant")
    assert sorted(grant.image_keys) == ["img-1", "img-2"]
    assert grant.key_for("img-2") == derive_image_key(key.master_secret, key.key_id, "img-2")
    # no passphrase for an encrypted key: a clean error, exit 2
    assert main(["grant", "--key", str(tmp_path / "keys" / "me.key"), "--images", str(ids), "--out", str(tmp_path / "x.grant")]) == 2
    assert "passphrase" in capsys.readouterr().err

    # a folder of protected outputs: two certified, one without a certificate
    out_dir = tmp_path / "protected" / "sub"
    out_dir.mkdir(parents=True)
    _write_sidecar(out_dir, "a", key, params, "id-a")
    _write_sidecar(out_dir.parent, "b", key, params, "id-b")
    (out_dir / "c.medlocker.json").write_text(json.dumps(params))
    assert main(args + ["--images", str(tmp_path / "protected"), "--out", str(tmp_path / "dir.grant")]) == 0
    printed = capsys.readouterr().out
    assert "covers 2 images" in printed and "skipped 1 sidecar" in printed
    assert sorted(load_grant(tmp_path / "dir.grant").image_keys) == ["id-a", "id-b"]

    # another owner's certificate in the folder is an error naming the file
    _write_sidecar(out_dir, "foreign", owner, params, "id-f")
    assert main(args + ["--images", str(tmp_path / "protected"), "--out", str(tmp_path / "bad.grant")]) == 2
    assert "foreign.medlocker.json" in capsys.readouterr().err
    assert not (tmp_path / "bad.grant").exists()


# --------------------------------------------------------------------------------------------------
# Logo detection
# --------------------------------------------------------------------------------------------------


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


def _half(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    return np.asarray(Image.fromarray(img).resize((w // 2, h // 2), Image.Resampling.LANCZOS))


def test_detect_logo_present_after_jpeg_and_resize(marked, logo):
    _, watermarked, params, _ = marked
    for img in (watermarked, _jpeg(watermarked, 75), _half(watermarked)):
        # verify has only the public record (no opacities) of a published image; the owner has the whole one
        for record in (params, public_record(params)):
            result = detect_logo(img, record, logo)
            assert result["present"], result
            assert len(result["marks"]) == 2 and min(result["marks"]) >= 0.5


def test_detect_logo_absent_on_original_and_moved_boxes(marked, logo):
    original, watermarked, params, _ = marked
    result = detect_logo(original, params, logo)
    assert not result["present"] and max(result["marks"]) < 0.15, result
    moved = copy.deepcopy(params)
    for rec, (x0, y0) in zip(moved["marks"], [(40, 40), (150, 170)]):
        rec["x0"], rec["y0"] = x0, y0
        rec["box_xyxy"] = [x0, y0, x0 + rec["width"], y0 + rec["height"]]
    result = detect_logo(watermarked, moved, logo)
    assert not result["present"] and max(result["marks"]) < 0.15, result
    assert not detect_logo(_jpeg(original, 75), params, logo)["present"]


def test_padded_blobs_hide_the_content_length_and_old_blobs_still_open(owner, marked):
    """Issue 18 item 1: a blob's length is public; padded (version 2) it is the bucket's, not the content's."""
    from monai_medlocker.certify.payload import padded_length

    key, aad = derive_image_key(owner.master_secret, owner.key_id, "x"), b"digest"
    for size in (0, 1, 100, 4094, 4095):
        blob = encrypt_payload(bytes(range(256)) * (size // 256) + bytes(size % 256), key, aad, pad_bucket=4096)
        assert blob[0] == 2 and len(blob) == 1 + 12 + 4096 + 16
        assert decrypt_payload(blob, key, aad) == bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert padded_length(4096, 4096) == 8192 and padded_length(9000, 4096) == 16384
    old = encrypt_payload(b"packed\x80\x00", key, aad)  # version 1 (before padding): opens as it was written
    assert old[0] == 1 and decrypt_payload(old, key, aad) == b"packed\x80\x00"
    unpadded = bytearray(encrypt_payload(b"x", key, aad))
    unpadded[0] = 2  # a version 2 blob must end in its padding (the version byte is not authenticated)
    with pytest.raises(PayloadError, match="padding|cannot decrypt"):
        decrypt_payload(bytes(unpadded), key, aad)


def test_sealed_lengths_do_not_follow_the_lesion_boxes(owner, marked):
    """The sealed record of an image with many lesion boxes is as long as one with none (it grew with the grade)."""
    from monai_medlocker.certify.seal import Certifier, open_sealed_record

    original, watermarked, params, _ = marked
    certifier = Certifier(owner)
    sealed = [certifier.seal("img#1", original, watermarked, {**params, "grade": g, "wsm_boxes": [[3, 3, 12, 12]] * (40 * g)})
              for g in range(5)]
    assert len({len(s.record) for s in sealed}) == 1 and len({len(s.payload) for s in sealed}) == 1
    image_key = derive_image_key(owner.master_secret, owner.key_id, "img#1")
    assert [open_sealed_record(s.signed, s.record, image_key, "t")["grade"] for s in sealed] == list(range(5))


def test_payload_length_does_not_follow_a_dicom_header_or_the_shield_extent(owner, marked):
    """A DICOM source's archive (its header, with the removed identity and free text) and a shield's residual
    (whose extent follows the WSM) travel in the restore payload: neither may set its public length."""
    from monai_medlocker.certify.seal import SOURCE_ARCHIVE_ALLOWANCE, Certifier, payload_bucket

    original, watermarked, params, _ = marked
    certifier = Certifier(owner)
    rng = np.random.default_rng(0)
    headers = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in (300, 4000, SOURCE_ARCHIVE_ALLOWANCE // 2)]
    sealed = [certifier.seal("img#1", original, watermarked, params, source_file=h) for h in headers]
    assert len({len(s.payload) for s in sealed}) == 1
    plain = payload_bucket(original.shape, params)
    assert payload_bucket(original.shape, params, source_file=True) > plain
    # A shield's residual: its room is set by the image shape alone, whatever the shield covered.
    shielded = {**params, "shield": {"kind": "perceptual"}}
    assert payload_bucket(original.shape, shielded) >= plain + int(np.prod(original.shape)) // 4
