"""Nothing in ``public/`` tells the grade through a side channel (issue 18, DESIGN invariant 6).

A labelled, grade-balanced lab batch is protected with an owner key, as PNG and as DICOM (JPEG Baseline
sources); then, from ``public/`` alone, as a thief sees it, every length (files, PNG chunks, the DICOM's
MedLocker block, sidecar fields, the encrypted blobs) and every time stamp (certificate ``created``, file
times) must be constant, or at chance: |Spearman rho| <= 0.2 with the grade and referable (grade >= 2) AUC
within 0.5 +/- 0.1. Every DICOM header field must be the same for the whole batch (one exception, named in
its test). No public name may carry a label.

Left out: the pixel data (PNG IDAT, DICOM Pixel Data), the published image itself, whose lesions any grader
sees, the encoding of the marks' public geometry and DICOM UID values (see :func:`public_features`); what
is tested is every other byte MedLocker adds beside the pixels.
"""

from __future__ import annotations

import base64
import calendar
import copy
import datetime
import functools
import io
import json
import os
import stat
import struct
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from PIL import Image
from pydicom.uid import PYDICOM_ROOT_UID
from scipy.stats import spearmanr

from monai_medlocker.certify.certificate import canonical_bytes
from monai_medlocker.certify.keys import OwnerKey
from monai_medlocker.data.lab.lesions import LESION_TYPES
from monai_medlocker.data.lab.render import synthesize_fundus
from monai_medlocker.io.dicom_build import fundus_dataset
from monai_medlocker.networks import Surrogate, model_spec
from monai_medlocker.workflows.protect import DatasetProtector
from monai_medlocker.workflows.unlock import Unlocker
from protect_outputs import private_dir, public_dir

PER_GRADE = 3
SIZE = 128
_ACQUIRED = datetime.datetime(2024, 5, 6, 7, 8, 9)
LOSSY_RATIO = 0x00282112  # LossyImageCompressionRatio
FAST = dict(lesion_segmenter="masks", progress=False, watermark={"max_queries": 4})


def _owner() -> OwnerKey:
    """A fixed owner key: the batch's public bytes (but for nonces and salts) are the same on every run."""
    return OwnerKey(Ed25519PrivateKey.from_private_bytes(bytes(range(32))), bytes(range(32, 64)))


def _surrogate() -> Surrogate:
    from conftest import TinyConv

    return Surrogate(TinyConv(), model_spec("resnet-tiny", 64))


def _lab_batch(folder: Path, layout: str = "flat", per_grade: int = PER_GRADE, size: int = SIZE,
               names: list[str] | None = None, dicom: bool = False) -> list[dict]:
    """``per_grade`` lab images per grade (with their lesion masks), grades interleaved; a datalist beside them.

    ``layout``: ``"flat"`` (names that tell nothing: ``eye_XX``) or ``"classes"`` (EyePACS-style class
    folders ``0/`` .. ``4/``, names that do); ``names``: the images' names instead. ``dicom``: Ophthalmic
    Photography instances, JPEG Baseline as cameras send them, with UIDs of one length (the published SOP
    Instance UID is in the certificate's image id; a source's UID lengths are the camera's, not the grade's).
    """
    items = []
    for i in range(per_grade * 5):
        grade = (i * 2) % 5  # grades not in file order
        sample = synthesize_fundus(size, seed=700 + i, grade=grade)
        # Flat names count from 10: no number in them can equal a grade (eye_00 with grade 0 would be flagged).
        rel = Path(f"eye_{i + 10:02d}.png") if layout == "flat" else Path(str(grade)) / f"grade{grade}_{i:02d}.png"
        rel = Path(names[i]) if names else rel.with_suffix(".dcm" if dicom else ".png")
        (folder / rel.parent).mkdir(parents=True, exist_ok=True)
        if dicom:
            uids = {k: f"{PYDICOM_ROOT_UID}{n}{i:03d}" for n, k in enumerate(("study_uid", "series_uid", "sop_instance_uid",
                                                                              "frame_of_reference_uid"), 1)}
            fundus_dataset(sample.image, iod="op8", transfer_syntax="jpeg-baseline", acquisition_datetime=_ACQUIRED,
                           **uids).save_as(folder / rel, enforce_file_format=True)
        else:
            Image.fromarray(sample.image).save(folder / rel)
        item = {"image": rel.as_posix(), "label": grade}
        for t in LESION_TYPES:
            mask = folder / rel.parent / f"{rel.stem}_{t}.png"
            Image.fromarray(sample.masks[t].astype(np.uint8) * 255).save(mask)
            item[f"mask_{t}"] = mask.relative_to(folder).as_posix()
        items.append(item)
    (folder / "datalist.json").write_text(json.dumps({"test": items}))
    return items


def _png_chunks(path: Path) -> list[tuple[str, int]]:
    """(name, data length) of each chunk; an iTXt/tEXt chunk is named by its keyword."""
    data = path.read_bytes()
    pos, out = 8, []
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        name = kind.decode("ascii")
        if name in ("iTXt", "tEXt", "zTXt"):
            name += ":" + body.split(b"\x00", 1)[0].decode("latin-1")
        out.append((name, length))
        pos += 12 + length
    return out


def _without_geometry(obj):
    """A copy of a public record, certificate or sidecar with its marks' geometry emptied."""
    obj = copy.deepcopy(obj)
    for holder in (obj, obj.get("params"), (obj.get("certificate") or {}).get("params")):
        if isinstance(holder, dict) and "marks" in holder:
            holder["marks"] = []
    return obj


def _geometry_bytes(text: str, serialise) -> int:
    """How many bytes of ``text`` (JSON written by ``serialise``) are the marks' geometry."""
    obj = json.loads(text)
    assert serialise(obj) == text  # the writer is reproduced exactly, so the difference is exact
    return len(text) - len(serialise(_without_geometry(obj)))


def _payload_bucket():
    try:
        from monai_medlocker.certify.seal import payload_bucket
    except ImportError:  # a version without padding: no bucket, the whole payload is measured
        def payload_bucket(shape, params, source_file=False):
            return -29
    return payload_bucket


def _encrypted_bytes(bucket: int) -> int:
    """An encrypted blob's length when its plaintext is padded to ``bucket``: version, nonce, plaintext, tag."""
    return 1 + 12 + bucket + 16


def public_features(public: Path) -> dict[str, dict[str, float]]:
    """Every length and time feature of each protected image, read from ``public`` alone: stem -> feature -> value.

    The marks' geometry (where the logo is, how big) is published in clear on purpose, and is visible in
    the pixels: what it tells is the placement channel (:mod:`monai_medlocker.threats.placement`). Its
    encoding (more digits for a mark further right) is taken out of every length here, exactly, by
    re-serialising each JSON text without it, so that what is measured is everything else. So is the
    restore payload's padding bucket, a function of the public mark boxes alone
    (:func:`~monai_medlocker.certify.seal.payload_bucket`): the payload is measured by what it holds
    beyond that bucket, and the lengths that contain it without it. A DICOM's UID values are left out of
    its lengths too (:func:`_dicom_features`).
    """
    sidecar_json = functools.partial(json.dumps, indent=2)
    features: dict[str, dict[str, float]] = {}
    for image in sorted(p for p in public.rglob("*") if p.suffix in (".png", ".dcm")):
        stem = image.relative_to(public).with_suffix("").as_posix()
        f = features.setdefault(stem, {})
        bucket = (_dicom_features if image.suffix == ".dcm" else _png_features)(image, f)
        # The encrypted payload as its public bucket makes it, in base64.
        bucket_b64 = 4 * -(-_encrypted_bytes(bucket) // 3)
        sidecar = image.with_name(image.stem + ".medlocker.json")
        raw = sidecar.read_text()
        f["sidecar bytes"] = len(raw) - _geometry_bytes(raw, sidecar_json) - bucket_b64
        f["sidecar mtime"] = sidecar.stat().st_mtime
        fields = _without_geometry(json.loads(raw))
        for key, value in fields.items():
            f[f"sidecar {key}"] = len(json.dumps(value)) - (bucket_b64 if key == "restore_payload" else 0)
        f["sealed record bytes"] = len(base64.b64decode(fields["sealed_record"]))
        f["restore payload bytes beyond its public bucket"] = len(fields["restore_payload"]) - bucket_b64
        created = fields["certificate"]["created"]
        f["certificate created"] = calendar.timegm(time.strptime(created, "%Y-%m-%dT%H:%M:%SZ"))
    return features


def _png_features(image: Path, f: dict) -> int:
    """The PNG's lengths (chunks, bytes beside the pixel data) and time into ``f``; returns its payload bucket."""
    with Image.open(image) as img:
        img.load()
        text = dict(img.text)
    bucket = _payload_bucket()((0, 0, 3), json.loads(text["medlocker:public"]))
    geometry = {"iTXt:medlocker:public": _geometry_bytes(text["medlocker:public"], functools.partial(json.dumps, sort_keys=True)),
                "iTXt:medlocker:certificate": _geometry_bytes(text["medlocker:certificate"],
                                                              lambda o: canonical_bytes(o).decode("ascii")),
                "iTXt:medlocker:payload": 4 * -(-_encrypted_bytes(bucket) // 3)}
    chunks = _png_chunks(image)
    idat = sum(12 + n for name, n in chunks if name == "IDAT")  # the pixels, split in chunks by their size
    f["png bytes beside the pixel data"] = image.stat().st_size - idat - sum(geometry.values())
    for name, n in chunks:
        if name != "IDAT":
            f[f"png chunk {name}"] = f.get(f"png chunk {name}", 0) + n - geometry.get(name, 0)
    f["png mtime"] = image.stat().st_mtime
    return bucket


def _stored(raw: pydicom.Dataset, tag) -> int:
    """An element's value length as stored in the file (even-padded); ``raw``: a dataset as read, elements unread."""
    item = raw.get_item(tag)
    if hasattr(item, "length"):
        return item.length
    value = str(item.value)  # the file meta group is read in full (UIDs there): its text padded to even
    return len(value) + len(value) % 2


def _uid_bytes(raw: pydicom.Dataset) -> int:
    """The stored bytes of every UID value in ``raw`` (as read, elements unread), at any depth."""
    total = 0
    for tag in raw.keys():
        vr = raw.get_item(tag).VR
        if vr == "UI":
            total += _stored(raw, tag)
        elif vr == "SQ":
            total += sum(_uid_bytes(item) for item in raw[tag].value)
    return total


def _dicom_features(image: Path, f: dict) -> int:
    """The DICOM's lengths (file, MedLocker block, file meta) and time into ``f``; returns its payload bucket.

    UID values are left out of every length: a derived SOP Instance UID is random (its length varies by
    chance, 62 to 64 characters) and the others are the source's own. So is the pixel data, as the PNG's.
    """
    ds, raw = pydicom.dcmread(image), pydicom.dcmread(image)  # raw: for stored lengths, its elements left unread
    block = ds.private_block(0x0011, "MEDLOCKER 1")
    dicom_json = functools.partial(json.dumps, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    public, certificate = (str(block[k].value) for k in (0x02, 0x10))
    bucket = _payload_bucket()((0, 0, 3), json.loads(public), source_file=True)
    f["dicom block public record"] = len(public) - _geometry_bytes(public, dicom_json)
    f["dicom block certificate"] = len(certificate) - _geometry_bytes(certificate, dicom_json)
    f["dicom block signature"] = _stored(raw, block.get_tag(0x11))
    f["dicom block restore payload beyond its public bucket"] = int(block[0x13].value) - _encrypted_bytes(bucket)
    f["dicom block payload element beyond its public bucket"] = _stored(raw, block.get_tag(0x12)) - _encrypted_bytes(bucket)
    f["dicom block sealed record"] = int(block[0x15].value)
    f["dicom block sealed record element"] = _stored(raw, block.get_tag(0x14))
    texts = sum(_stored(raw, block.get_tag(k)) for k in (0x02, 0x10))  # measured above without their geometry
    ratio = _stored(raw, LOSSY_RATIO) if LOSSY_RATIO in raw else 0  # a header field: see the DICOM test
    f["dcm bytes beside the pixels, UIDs and MedLocker texts"] = (image.stat().st_size - _stored(raw, 0x7FE00010)
                                                                    - _uid_bytes(raw) - _uid_bytes(raw.file_meta) - texts
                                                                    - _encrypted_bytes(bucket) - ratio)
    f["dcm file meta group length beside its UIDs"] = ds.file_meta.FileMetaInformationGroupLength - _uid_bytes(raw.file_meta)
    f["dcm mtime"] = image.stat().st_mtime
    return bucket


def dicom_header_values(ds: pydicom.Dataset, where: str = "") -> dict[str, str]:
    """Every header field of a published instance but its UIDs, pixels and MedLocker block: path -> value."""
    base = ds.private_block(0x0011, "MEDLOCKER 1").get_tag(0) if where == "" else -1
    out = {}
    for tag in ds.keys():
        elem = ds[tag]
        if elem.VR == "UI" or tag == 0x7FE00010 or base <= tag < base + 0x100:
            continue
        path = f"{where}{elem.keyword or tag}"
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value):
                out.update(dicom_header_values(item, f"{path}[{i}]."))
        else:
            out[path] = str(elem.value)
    return out


def _auc(values: np.ndarray, positive: np.ndarray) -> float:
    """Referable AUC of a feature (Mann-Whitney, ties count one half)."""
    pos, neg = values[positive], values[~positive]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


def feature_table(features: dict[str, dict[str, float]], grades: dict[str, int]) -> dict[str, str]:
    """Each feature's figures: ``constant``, ``missing for some images``, or its rho, referable AUC and range."""
    stems = sorted(grades)
    grade = np.array([grades[s] for s in stems])
    table = {}
    for name in sorted({k for f in features.values() for k in f}):
        values = np.array([features[s].get(name, np.nan) for s in stems], dtype=float)
        if np.isnan(values).any():
            table[name] = "missing for some images"
        elif np.all(values == values[0]):
            table[name] = "constant"
        else:
            table[name] = (f"rho {float(spearmanr(values, grade)[0]):+.2f}, referable AUC {_auc(values, grade >= 2):.2f} "
                           f"(range {values.min():g}-{values.max():g})")
    return table


def leaks(features: dict[str, dict[str, float]], grades: dict[str, int]) -> list[str]:
    """The features that are neither constant nor at chance (|rho| <= 0.2, AUC 0.5 +/- 0.1), with their figures."""
    found = []
    for name, figures in feature_table(features, grades).items():
        if figures == "constant":
            continue
        if figures.startswith("rho "):
            rho, auc = float(figures.split()[1].rstrip(",")), float(figures.split()[4])
            if abs(rho) <= 0.2 and abs(auc - 0.5) <= 0.1:
                continue
        found.append(f"{name}: {figures}")
    return found


def _protected_batch(tmp_path_factory, dicom: bool = False) -> tuple[Path, Path, list[dict]]:
    """A grade-balanced lab batch protected with the owner key: (input folder, output folder, datalist items)."""
    src, out = tmp_path_factory.mktemp("lab"), tmp_path_factory.mktemp("release")
    items = _lab_batch(src, dicom=dicom)
    summary = DatasetProtector(src / "datalist.json", out, _surrogate(), owner_key=_owner(), **FAST).run()
    assert summary["protected"] == len(items) and summary["exit_code"] == 0, summary
    return src, out, items


@pytest.fixture(scope="module")
def flat_batch(tmp_path_factory):
    return _protected_batch(tmp_path_factory)


@pytest.fixture(scope="module")
def dicom_batch(tmp_path_factory):
    return _protected_batch(tmp_path_factory, dicom=True)


def _check_batch_features(out: Path, items: list[dict], kind: str, named: set[str]) -> None:
    """No length or time feature of ``public/`` tells the grade; times are the day alone. ``kind``: png or dcm."""
    grades = {str(Path(i["image"]).with_suffix("")): i["label"] for i in items}
    assert sorted(np.bincount(list(grades.values()))) == [PER_GRADE] * 5  # grade-balanced
    features = public_features(public_dir(out))
    assert sorted(features) == sorted(grades)
    assert named | {"sealed record bytes", "restore payload bytes beyond its public bucket", "certificate created",
                    "sidecar sealed_record"} <= set(features[next(iter(features))])
    assert leaks(features, grades) == []
    # A batch on a fast machine fits in one second, so time stamps must also be the day alone to pass here.
    for f in features.values():
        assert f["certificate created"] % 86400 == f[f"{kind} mtime"] % 86400 == f["sidecar mtime"] % 86400 == 0


def test_no_public_length_or_time_tells_the_grade(flat_batch):
    _, out, items = flat_batch
    _check_batch_features(out, items, "png", {"png chunk iTXt:medlocker:sealed"})


def test_no_public_dicom_length_time_or_header_field_tells_the_grade(dicom_batch):
    """The done-when test's DICOM part: file and block lengths, the blobs, the sidecar, times and header fields."""
    _, out, items = dicom_batch
    _check_batch_features(out, items, "dcm", {"dcm bytes beside the pixels, UIDs and MedLocker texts",
                                              "dicom block certificate", "dicom block sealed record",
                                              "dicom block restore payload beyond its public bucket"})
    # Every header field but the UIDs is the same for the whole batch, but one: the source's lossy compression
    # ratio, which the OP IOD requires of a lossy source (Type 1C). It tells what the published pixels tell:
    # the ratio of a JPEG a thief makes of them follows it (rho >= 0.9; here its referable AUC is 0.37, the
    # header's 0.35).
    values: dict[str, set[str]] = {}
    ratios = []
    for path in sorted(public_dir(out).glob("*.dcm")):
        ds = pydicom.dcmread(path)
        for key, value in dicom_header_values(ds).items():
            values.setdefault(key, set()).add(value)
        jpeg = io.BytesIO()
        Image.fromarray(ds.pixel_array).save(jpeg, "JPEG", quality=90)
        ratios.append((float(ds.LossyImageCompressionRatio), ds.pixel_array.nbytes / len(jpeg.getvalue())))
    assert len(values) > 40 and {"ContentDate", "InstanceCreationTime", "ImageLaterality"} <= set(values)
    assert [k for k, v in values.items() if len(v) > 1] == ["LossyImageCompressionRatio"]
    assert spearmanr(*zip(*ratios))[0] >= 0.9


def test_the_leak_test_can_fail():
    """A feature that follows the grade (as the unpadded sealed record did: rho +0.77) is caught."""
    grades = {f"e{i}": i % 5 for i in range(15)}
    features = {s: {"sealed record bytes": 2000 + 97 * g + (s == "e3"), "constant": 7} for s, g in grades.items()}
    assert [leak.split(":")[0] for leak in leaks(features, grades)] == ["sealed record bytes"]


def test_no_public_name_carries_a_label(flat_batch):
    from monai_medlocker.workflows.protect import label_like_name

    _, out, items = flat_batch
    labels = {str(Path(i["image"]).with_suffix("")): i["label"] for i in items}
    for path in public_dir(out).rglob("*"):
        rel = path.relative_to(public_dir(out))
        stem = str(rel).split(".")[0]
        assert label_like_name(rel, labels.get(stem)) is None, rel


@pytest.mark.parametrize("relative, label, why", [
    ("eye_02.png", 2, "its label 2"),  # zero-padded
    ("eye_2.png", 2, "its label 2"),
    ("scans/img_004.dcm", 4, "its label 4"),
    ("eye_02.png", 3, None),
    ("eye_12.png", 2, None),
    ("eye_02.png", None, None),
    ("moderate/eye_17.png", None, "grade word 'moderate'"),
    ("eye_17_NPDR.png", 1, "grade word 'npdr'"),
    ("3/eye_17.png", None, "class folder 3/"),
    ("mildred_17.png", 1, None),  # a word that only starts like a grade word
])
def test_label_like_names(relative, label, why):
    from monai_medlocker.workflows.protect import label_like_name

    assert label_like_name(relative, label) == why


def test_grade_words_and_datalist_labels_in_names_are_warned(tmp_path):
    """Issue 18 item 3: a protect run names the inputs whose names would publish their label."""
    src = tmp_path / "lab"
    # Grades 0, 2, 4, 1, 3: a grade word, label 2 zero-padded, label 4, and two names that tell nothing.
    items = _lab_batch(src, per_grade=1, names=["severe_a.png", "eye_02.png", "eye_4.png", "eye_17.png", "eye_21.png"])
    assert [i["label"] for i in items] == [0, 2, 4, 1, 3]
    with pytest.warns(UserWarning, match=r"3 input name\(s\) look like labels") as caught:
        DatasetProtector(src / "datalist.json", tmp_path / "out", _surrogate(), owner_key=_owner(), **FAST).run()
    message = str(next(w.message for w in caught if "look like labels" in str(w.message)))
    for part in ("severe_a.png (grade word 'severe')", "eye_02.png (its label 2)", "eye_4.png (its label 4)"):
        assert part in message, message
    assert "eye_17" not in message and "eye_21" not in message


def test_shipped_samples_carry_no_label_in_their_names():
    """Issue 18 item 3: bundle/samples are named so that no name tells any grade (the published names would)."""
    from monai_medlocker.workflows.protect import label_like_name

    samples = Path(__file__).resolve().parents[1] / "bundle" / "samples"
    names = sorted(p.relative_to(samples) for p in samples.rglob("*") if p.is_file())
    assert any(n.suffix == ".dcm" for n in names) and any(n.suffix == ".png" for n in names)
    flagged = {str(n): why for n in names for label in range(5) for why in [label_like_name(n, label)] if why}
    assert flagged == {}


def test_dicom_creation_time_is_the_day_only(tmp_path):
    from monai_medlocker.io.dicom import derive_protected_dataset
    from monai_medlocker.io.dicom_build import fundus_dataset
    from monai_medlocker.io.private_tags import MedlockerTags

    rgb = synthesize_fundus(SIZE, seed=3, grade=1).image
    derived = derive_protected_dataset(fundus_dataset(rgb, iod="op8"), rgb, MedlockerTags(params={}))
    assert derived.InstanceCreationTime == derived.ContentTime == "000000"


def test_private_folder_is_the_owners_alone(flat_batch):
    """Issue 18 item 6: every local user could read the grades in private/ (755, records 644)."""
    _, out, _ = flat_batch
    private = private_dir(out)
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o700
    files = [p for p in private.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"manifest.jsonl", "summary.json", "run_settings.json"}
    assert any(p.name.endswith(".record.json") for p in files)
    for p in private.rglob("*"):
        assert stat.S_IMODE(os.stat(p).st_mode) == (0o700 if p.is_dir() else 0o600), p


def test_class_folders_warn_and_opaque_names_hide_them_until_unlock(tmp_path):
    src, keep, opaque = tmp_path / "lab", tmp_path / "keep", tmp_path / "opaque"
    items = _lab_batch(src, layout="classes")[:5]
    (src / "datalist.json").write_text(json.dumps({"test": items}))
    with pytest.warns(UserWarning, match=r"5 input name\(s\) look like labels.*0/grade0_00\.png \(class folder 0/\)"):
        DatasetProtector(src / "datalist.json", keep, _surrogate(), owner_key=_owner(), **FAST).run()
    assert (public_dir(keep) / "2" / "grade2_01.png").is_file()  # kept, as warned

    key = _owner()
    summary = DatasetProtector(src / "datalist.json", opaque, _surrogate(), owner_key=key, public_names="opaque",
                               **FAST).run()
    assert summary["protected"] == 5, summary
    public = sorted(p.relative_to(public_dir(opaque)).as_posix() for p in public_dir(opaque).iterdir())
    stems = sorted({p.split(".")[0] for p in public})
    assert len(stems) == 5 and all(len(s) == 20 and int(s, 16) >= 0 for s in stems)
    assert sorted(public) == sorted([f"{s}.png" for s in stems] + [f"{s}.medlocker.json" for s in stems])
    for path in public_dir(opaque).iterdir():  # nothing public names the original
        assert not any(word in path.read_bytes() for word in (b"grade", b"eye_"))
    names = json.loads((private_dir(opaque) / "names.json").read_text())
    assert sorted(names.values()) == sorted(i["image"] for i in items)
    assert stat.S_IMODE(os.stat(private_dir(opaque) / "names.json").st_mode) == 0o600

    restored = tmp_path / "restored"
    assert Unlocker(public_dir(opaque), restored, key=key, progress=False).run()["exit_code"] == 0
    for item in items:
        assert np.array_equal(np.asarray(Image.open(restored / item["image"])), np.asarray(Image.open(src / item["image"])))


def test_cli_public_names_opaque_goes_through_the_bundle_config(tmp_path):
    """``--public-names opaque`` sets the bundle's ``public_names``: the same code as above, via inference.json."""
    from monai_medlocker.certify import save_owner_key
    from monai_medlocker.cli import main

    src, out, restored = tmp_path / "lab", tmp_path / "out", tmp_path / "restored"
    items = _lab_batch(src, layout="classes")[:2]
    (src / "datalist.json").unlink()
    for p in src.rglob("*.png"):  # keep only the two images and their masks
        if not any(p.relative_to(src).as_posix().startswith(i["image"][:-4]) for i in items):
            p.unlink()
    save_owner_key(tmp_path / "owner", _owner())
    key = str(tmp_path / "owner.key")
    assert main(["protect", str(src), str(out), "--quiet", "--max-queries", "4", "--lesion-segmenter", "masks",
                 "--key", key, "--public-names", "opaque"]) == 0
    published = sorted(p.name for p in public_dir(out).iterdir())
    assert len(published) == 4 and not any("grade" in n or "/" in n for n in published)
    assert sorted(json.loads((private_dir(out) / "names.json").read_text()).values()) == sorted(i["image"] for i in items)
    assert main(["unlock", str(public_dir(out)), str(restored), "--key", key]) == 0
    for item in items:
        assert np.array_equal(np.asarray(Image.open(restored / item["image"])), np.asarray(Image.open(src / item["image"])))
