"""What a user hits in their first hour (issue 20): no lost pixel, one bad item never stops the batch,
and every error is one line naming the file."""

from __future__ import annotations

import errno
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_medlocker.certify import generate_owner_key, save_owner_key
from monai_medlocker.data.synthetic import synthesize_fundus
from monai_medlocker.io.image import ImageReadError, load_rgb, round_trip_mode
from monai_medlocker.workflows.protect import DatasetProtector
from protect_outputs import manifest_rows, public_dir, read_summary, record_file, sidecar_file

FAST = dict(lesion_segmenter="masks", progress=False, watermark={"max_queries": 4})


def _fundus(folder: Path, name: str, seed: int = 0, mask: bool = True) -> Path:
    """A small fundus PNG, with an empty lesion mask beside it (``mask``)."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(synthesize_fundus(128, seed=seed, grade=1).image).save(folder / name)
    if mask:
        Image.fromarray(np.zeros((128, 128), np.uint8)).save(folder / f"{Path(name).stem}_lesions.png")
    return folder / name


@pytest.fixture(scope="module")
def owner_key(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("keys")
    save_owner_key(folder / "owner", generate_owner_key())
    return folder / "owner.key"


def _name_max(folder: Path) -> int:
    limit = os.pathconf(folder, "PC_NAME_MAX")
    if limit != 255:
        pytest.skip(f"the lengths below are for a 255-byte NAME_MAX, this file system has {limit}")
    return limit


# Item 3: long names fail their own item, before anything of it is written.
def test_long_name_whose_mask_name_cannot_exist_does_not_abort_the_run(tmp_path, tiny_surrogate):
    src = tmp_path / "src"
    _fundus(src, "ok.png")
    long = _fundus(src, "a" * (_name_max(tmp_path) - 11) + ".png", seed=1, mask=False)  # <stem>_lesions.png: 256 bytes
    out = tmp_path / "out"
    summary = DatasetProtector(src, out, tiny_surrogate, **FAST).run()
    assert summary["protected"] == 1 and summary["images"] == 2
    [failure] = summary["failures"]
    assert failure["image"] == long.name and str(long) in failure["error"]


@pytest.mark.parametrize("with_key", [False, True])
def test_244_character_name_fails_alone_and_writes_nothing(tmp_path, tiny_surrogate, owner_key, with_key):
    src = tmp_path / "src"
    _fundus(src, "ok.png")
    long = _fundus(src, "b" * (_name_max(tmp_path) - 15) + ".png", seed=1)  # its record name is 256 bytes
    out = tmp_path / "out"
    summary = DatasetProtector(src, out, tiny_surrogate, owner_key=owner_key if with_key else None, **FAST).run()
    assert summary["protected"] == 1
    [failure] = summary["failures"]
    assert failure["image"] == long.name
    assert str(long) in failure["error"] and "longer than the 255 bytes" in failure["error"]
    assert "\n" not in failure["error"]
    assert sorted(p.name for p in public_dir(out).iterdir()) == (["ok.medlocker.json", "ok.png"] if with_key else ["ok.png"])
    assert sorted(p.name for p in record_file(out, "ok.png").parent.iterdir()) == ["ok.png.record.json"]


@pytest.mark.parametrize("with_key", [False, True])
def test_236_character_name_is_protected_whole(tmp_path, tiny_surrogate, owner_key, with_key):
    """Its final names fit; only the temporaries' names (``.<name>.<random>.part``) did not, and they are cut short."""
    src = tmp_path / "src"
    long = _fundus(src, "c" * (_name_max(tmp_path) - 23) + ".png", seed=1)
    out = tmp_path / "out"
    summary = DatasetProtector(src, out, tiny_surrogate, owner_key=owner_key if with_key else None, **FAST).run()
    assert summary["failures"] == [] and summary["protected"] == 1
    assert (public_dir(out) / long.name).is_file() and record_file(out, long.name).is_file()
    assert sidecar_file(out, long.stem).is_file() == with_key
    assert [r["status"] for r in manifest_rows(out)] == ["protected"]
    assert read_summary(out)["exit_code"] == 0


def test_lesions_command_fails_a_too_long_name_alone_before_writing_it(tmp_path, capsys):
    from monai_medlocker.cli import main

    src = tmp_path / "src"
    _fundus(src, "ok.png")
    long = _fundus(src, "d" * (_name_max(tmp_path) - 12) + ".png", seed=1)  # <stem>_lesions.json: 256 bytes
    out = tmp_path / "out"
    assert main(["lesions", str(src), str(out), "--quiet", "--lesion-segmenter", "masks"]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    [line] = [line for line in captured.out.splitlines() if line.startswith("  FAILED")]
    assert str(long) in line and "longer than the 255 bytes" in line
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "lesions_summary.json", "ok_EX.png", "ok_HE.png", "ok_MA.png", "ok_SE.png", "ok_lesions.json", "ok_wsm.png"]


def _png16(path: Path, rgb16: np.ndarray, colour_type: int = 2) -> Path:
    """A 16-bit-per-sample PNG (colour type 2 = RGB, 6 = RGBA), which Pillow cannot write."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    h, w = rgb16.shape[:2]
    rows = b"".join(b"\0" + rgb16[y].astype(">u2").tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


def _tiff16_rgb(path: Path, rgb16: np.ndarray) -> Path:
    """An uncompressed 48-bit RGB TIFF (little-endian), which Pillow cannot write."""
    h, w = rgb16.shape[:2]
    data = rgb16.astype("<u2").tobytes()
    n = 10
    data_offset = 8 + 6 + 2 + n * 12 + 4

    def entry(tag: int, kind: int, value: int) -> bytes:  # kind 3: SHORT, 4: LONG; one value
        return struct.pack("<HHI", tag, kind, 1) + (struct.pack("<I", value) if kind == 4 else struct.pack("<HH", value, 0))

    ifd = struct.pack("<H", n) + b"".join([
        entry(256, 4, w), entry(257, 4, h), struct.pack("<HHII", 258, 3, 3, 8), entry(259, 3, 1), entry(262, 3, 2),
        entry(273, 4, data_offset), entry(277, 3, 3), entry(278, 4, h), entry(279, 4, len(data)), entry(284, 3, 1)])
    path.write_bytes(b"II*\x00" + struct.pack("<I", 14) + struct.pack("<HHH", 16, 16, 16) + ifd + b"\0\0\0\0" + data)
    return path


def _frames(path: Path, n: int = 2) -> Path:
    frames = [Image.fromarray(synthesize_fundus(128, seed=i, grade=1).image) for i in range(n)]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    return path


# Items 1 and 2: what Pillow would decode with pixels lost is refused up front.
@pytest.mark.parametrize("make", ["png-rgb16", "png-rgba16", "tiff-rgb16", "tiff-2-pages", "apng", "gif"])
def test_lossy_decodes_are_refused_naming_the_file(tmp_path, make):
    rgb16 = np.random.default_rng(0).integers(0, 65536, (32, 32, 3), dtype=np.uint16)
    path, needle = {
        "png-rgb16": lambda: (_png16(tmp_path / "a.png", rgb16), "16-bit colour"),
        "png-rgba16": lambda: (_png16(tmp_path / "a.png", np.dstack([rgb16, rgb16[..., :1]]), 6), "16-bit colour"),
        "tiff-rgb16": lambda: (_tiff16_rgb(tmp_path / "a.tif", rgb16), "16-bit colour"),
        "tiff-2-pages": lambda: (_frames(tmp_path / "a.tif"), "2 frames"),
        "apng": lambda: (_frames(tmp_path / "a.png"), "2 frames"),
        "gif": lambda: (_frames(tmp_path / "a.gif", 3), "3 frames"),
    }[make]()
    for read in (load_rgb, round_trip_mode):
        with pytest.raises(ImageReadError) as err:
            read(path)
        assert str(err.value).startswith(f"{path}: ") and needle in str(err.value) and "\n" not in str(err.value)


def test_16_bit_png_and_two_page_tiff_fail_alone_in_a_batch(tmp_path, tiny_surrogate):
    src = tmp_path / "src"
    _fundus(src, "ok.png")
    rgb16 = (synthesize_fundus(128, seed=2, grade=1).image.astype(np.uint16) << 8) | 0x5A  # a low byte to lose
    deep = _png16(src / "deep.png", rgb16)
    pages = _frames(src / "pages.tif")
    for p in (deep, pages):
        Image.fromarray(np.zeros((128, 128), np.uint8)).save(src / f"{p.stem}_lesions.png")
    out = tmp_path / "out"
    summary = DatasetProtector(src, out, tiny_surrogate, **FAST).run()
    assert summary["protected"] == 1 and summary["exit_code"] == 1
    errors = {f["image"]: f["error"] for f in summary["failures"]}
    assert sorted(errors) == ["deep.png", "pages.tif"]
    assert errors["deep.png"].startswith(f"{deep}: 16-bit colour image")
    assert errors["pages.tif"].startswith(f"{pages}: image with 2 frames")
    assert sorted(p.name for p in public_dir(out).iterdir()) == ["ok.png"]


# Item 4: only lists of image objects are datalist sections.
@pytest.fixture(scope="module")
def synth_lab(tmp_path_factory) -> Path:
    """What ``medlocker synth`` writes: images, masks and a datalist with settings lists beside the sections."""
    from monai_medlocker.data.lab.dataset import generate_dataset

    out = tmp_path_factory.mktemp("lab")
    generate_dataset(out, 3, size=128, seed=0)
    return out


def test_protect_on_synths_datalist_reports_no_settings_as_items(synth_lab, tmp_path, tiny_surrogate):
    data = json.loads((synth_lab / "datalist.json").read_text())
    assert {"lesion_types", "quadrants", "split", "grade_weights"} <= {k for k, v in data.items() if isinstance(v, list)}
    summary = DatasetProtector(synth_lab / "datalist.json", tmp_path / "out", tiny_surrogate, **FAST).run()
    assert summary["failures"] == [] and summary["exit_code"] == 0
    assert summary["images"] == summary["protected"] == 3


def test_upper_case_json_suffix_is_a_datalist(synth_lab, tmp_path):
    from monai_medlocker.workflows.protect import find_protect_items

    upper = synth_lab / "LIST.JSON"
    upper.write_text((synth_lab / "datalist.json").read_text())
    items = find_protect_items(upper)
    assert len(items) == 3 and all(item.problem is None and item.masks for item in items)


def test_a_section_keeps_reporting_its_bad_entries(tmp_path):
    from monai_medlocker.data.datalist import datalist_sections

    data = {"test": [{"image": "a.png"}, "junk"], "quadrants": ["a", "b"], "weights": [1.0], "empty": [],
            "objects": [{"name": "x"}]}
    assert datalist_sections(data) == {"test": [{"image": "a.png"}, "junk"]}


# Item 5: an unlock started again skips what it restored, and never overwrites what differs.
def test_unlock_resume_skips_restored_targets_and_fails_only_a_differing_one(tmp_path, tiny_surrogate, owner_key):
    from monai_medlocker.workflows.unlock import Unlocker, format_unlock_summary

    src = tmp_path / "src"
    for i in range(3):
        _fundus(src, f"img{i}.png", seed=i)
    Image.open(src / "img2.png").convert("L").save(src / "img2.png")  # a greyscale original comes back grey
    prot = tmp_path / "prot"
    assert DatasetProtector(src, prot, tiny_surrogate, owner_key=owner_key, **FAST).run()["protected"] == 3
    un = tmp_path / "un"

    def unlock() -> dict:
        return Unlocker(public_dir(prot), un, key=owner_key, progress=False).run()

    assert unlock()["unlocked"] == 3
    # A finished unlock, run again: every image already restored, a success.
    again = unlock()
    assert again["unlocked"] == 3 and again["exit_code"] == 0, again["failures"]
    assert (again["unlocked"], again["already_restored"], again["exit_code"]) == (3, 3, 0)
    assert "3/3 image(s) restored" in format_unlock_summary(again) and "3 already restored" in format_unlock_summary(again)
    # After a kill: one target missing, one replaced by other pixels (never overwritten).
    (un / "img0.png").unlink()
    other = np.asarray(Image.open(un / "img1.png")).copy()
    other[0, 0] ^= 1
    Image.fromarray(other).save(un / "img1.png")
    before = (un / "img1.png").read_bytes()
    resumed = unlock()
    assert (resumed["unlocked"], resumed["already_restored"], resumed["exit_code"]) == (2, 1, 1)
    [failure] = resumed["failures"]
    assert failure["image"].endswith("img1.png") and "is not the certified original; not overwritten" in failure["error"]
    assert (un / "img1.png").read_bytes() == before
    assert np.array_equal(np.asarray(Image.open(un / "img0.png")), np.asarray(Image.open(src / "img0.png")))
    assert Image.open(un / "img2.png").mode == "L"


def test_dicom_unlock_resume_skips_restored_files_and_fails_only_a_changed_one(tmp_path, tiny_surrogate, owner_key):
    import shutil

    import pydicom

    from monai_medlocker.workflows.unlock import Unlocker

    src, prot, un = tmp_path / "src", tmp_path / "prot", tmp_path / "un"
    src.mkdir()
    for f in Path(__file__).resolve().parents[1].joinpath("bundle", "samples").glob("op8_*"):
        shutil.copy(f, src / f.name)  # two DICOM files and their lesion masks
    assert DatasetProtector(src, prot, tiny_surrogate, owner_key=owner_key, **FAST).run()["protected"] == 2
    runs = [Unlocker(public_dir(prot), un, key=owner_key, progress=False).run() for _ in range(2)]
    assert [(r["unlocked"], r["already_restored"], r["exit_code"]) for r in runs] == [(2, 0, 0), (2, 2, 0)]
    # After a kill: one target missing, one changed (a header attribute): only the changed one fails.
    (un / "op8_redfree.dcm").unlink()
    changed = pydicom.dcmread(un / "op8_colour.dcm")
    changed.InstitutionName = "elsewhere"
    changed.save_as(un / "op8_colour.dcm")
    before = (un / "op8_colour.dcm").read_bytes()
    resumed = Unlocker(public_dir(prot), un, key=owner_key, progress=False).run()
    assert (resumed["unlocked"], resumed["already_restored"], resumed["exit_code"]) == (1, 0, 1)
    [failure] = resumed["failures"]
    assert failure["image"].endswith("op8_colour.dcm") and "is not the certified original; not overwritten" in failure["error"]
    assert (un / "op8_colour.dcm").read_bytes() == before
    assert (un / "op8_redfree.dcm").read_bytes() == (src / "op8_redfree.dcm").read_bytes()


# Item 7: small ones.
def test_max_queries_below_the_working_minimum_is_refused_up_front(tmp_path, capsys):
    from monai_medlocker.cli import main

    src = tmp_path / "src"
    _fundus(src, "a.png")
    # The default surrogate is a two-model ensemble: the clean check alone costs 2 queries.
    assert main(["protect", str(src), str(tmp_path / "out"), "--quiet", "--max-queries", "1",
                 "--lesion-segmenter", "masks"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [line] = [line for line in err.splitlines() if line.startswith("medlocker protect: error:")]
    assert "max_queries 1 is below 2" in line
    assert not (tmp_path / "out").exists()


def test_working_minimum_follows_the_ensemble(tiny_surrogate):
    from monai_medlocker.transforms.array import AdversarialWatermark

    assert AdversarialWatermark(tiny_surrogate, max_queries=1).optimizer.max_queries == 1
    with pytest.raises(ValueError, match="max_queries 2 is below 3, the least that works with 3 surrogate"):
        AdversarialWatermark([tiny_surrogate] * 3, max_queries=2)


class _FullDisk:
    """``os`` for :mod:`monai_medlocker.io.files` once the disk is full: every write() fails with ENOSPC."""

    def __init__(self, real):
        self.real, self.full = real, False

    def __getattr__(self, name):
        return getattr(self.real, name)

    def fdopen(self, fd, *args, **kwargs):
        fh = self.real.fdopen(fd, *args, **kwargs)
        if not self.full:
            return fh

        class Full:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                fh.close()

            def write(self, data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return Full()


@pytest.mark.parametrize("from_start", [False, True])
def test_full_disk_names_the_file_prints_the_summary_and_fails(tmp_path, tiny_surrogate, monkeypatch, capsys, from_start):
    import monai_medlocker.io.files as files
    from monai_medlocker.cli import main

    src = tmp_path / "src"
    for i in range(2):
        _fundus(src, f"img{i}.png", seed=i)
    out = tmp_path / "out"
    protector = DatasetProtector(src, out, tiny_surrogate, **FAST)
    disk = _FullDisk(os)
    disk.full = from_start  # full before the run's first write (its settings), or once the images are being protected
    monkeypatch.setattr(files, "os", disk)
    protect_items = protector._protect_items

    def fill_then_protect(*args, **kwargs):
        disk.full = True
        return protect_items(*args, **kwargs)

    monkeypatch.setattr(protector, "_protect_items", fill_then_protect)
    summary = protector.run()
    captured = capsys.readouterr()
    err = captured.out  # the summary is the run's result: stdout
    assert summary["exit_code"] == 1 and summary["protected"] == 0
    assert "Traceback" not in captured.err and "MedLocker protect: 0/2 images protected" in err
    named = out / "private" / "run_settings.json" if from_start else public_dir(out)
    for failure in summary["failures"]:
        assert "No space left on device" in failure["error"] and str(named) in failure["error"]
    [manifest_line] = [line for line in err.splitlines() if "manifest.jsonl" in line]
    assert manifest_line.startswith("  NOT WRITTEN: [Errno 28] No space left on device; ") and str(out) in manifest_line
    assert (out / "PUBLISH.txt").is_file() != from_start  # written before any image, when there is room
    assert not list(out.rglob("*.part"))
    if from_start:  # the command line: the summary, and exit code 1 (not 2, "could not start")
        assert main(["protect", str(src), str(tmp_path / "out2"), "--quiet", "--lesion-segmenter", "masks"]) == 1
        assert "MedLocker protect: 0/2 images protected" in capsys.readouterr().out


def test_resume_summary_says_why_there_is_no_median(tmp_path, tiny_surrogate, capsys):
    src = tmp_path / "src"
    _fundus(src, "a.png")
    DatasetProtector(src, tmp_path / "out", tiny_surrogate, **FAST).run()
    capsys.readouterr()
    DatasetProtector(src, tmp_path / "out", tiny_surrogate, **FAST).run()
    err = capsys.readouterr().out
    assert "median s/image: n/a (all skipped)" in err and "None" not in err


class _Bars:
    """Stands in for tqdm in the protect workflow: records each bar's settings and its count at each update."""

    made: list = []

    def __init__(self, iterable=None, total=None, desc=None, disable=False, position=None, **kwargs):
        self.iterable = iterable
        self.total = len(iterable) if total is None and iterable is not None else total
        self.desc, self.position, self.n, self.updates = desc, position, 0, []
        _Bars.made.append(self)

    def __iter__(self):  # as tqdm: one update per item handed out
        for x in self.iterable:
            yield x
            self.update()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        self.n += n
        self.updates.append(self.n)


def test_progress_counts_finished_images_with_protect_many(tmp_path, tiny_surrogate, monkeypatch):
    import monai_medlocker.workflows.protect as protect_module

    src = tmp_path / "src"
    for i in range(3):
        _fundus(src, f"img{i}.png", seed=i)
    monkeypatch.setattr(protect_module, "tqdm", _Bars)
    _Bars.made = []
    protector = DatasetProtector(src, tmp_path / "out", tiny_surrogate, **FAST)
    seen = []

    def one_by_one(jobs):  # as RayProtect yields: each outcome when its image is done
        for item, out_path in jobs:
            seen.append(_Bars.made[0].n)  # the bar before this image's work
            yield protector.protect_timed(item, out_path)

    assert protector.run(protect_many=one_by_one)["protected"] == 3
    [bar] = _Bars.made
    assert bar.total == 3 and seen == [0, 1, 2] and bar.updates == [1, 2, 3]


def test_each_worker_bar_counts_its_own_share_of_all_images(tmp_path, tiny_surrogate, monkeypatch):
    import torch.distributed as dist

    import monai_medlocker.workflows.protect as protect_module

    src = tmp_path / "src"
    for i in range(3):
        _fundus(src, f"img{i}.png", seed=i)
    monkeypatch.setattr(protect_module, "tqdm", _Bars)
    monkeypatch.setattr(protect_module, "_rank_and_world", lambda: (0, 2))  # rank 0 of two workers
    monkeypatch.setattr(dist, "broadcast_object_list", lambda objects, src=0: None)
    monkeypatch.setattr(dist, "all_gather_object", lambda out, rows: out.__setitem__(slice(None), [rows, []]))
    _Bars.made = []
    DatasetProtector(src, tmp_path / "out", tiny_surrogate, distributed=True, **FAST).run()
    [bar] = _Bars.made
    assert bar.total == 2 and bar.updates == [1, 2] and bar.position == 0
    assert bar.desc == "protect, worker 1 of 2 (2 of the 3 images)"  # no "1/2" beside the bar's own "1/2"
