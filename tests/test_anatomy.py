"""The optic disc and the macula are no-go zones of the WSM (DESIGN invariant 1): located, or given in the datalist."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_medlocker.data.datalist import datalist_sections
from monai_medlocker.data.lab.dataset import generate_dataset
from monai_medlocker.lesions.anatomy import AnatomyNotFoundError, anatomy_zones, locate_anatomy, zone_boxes
from monai_medlocker.networks import Surrogate, model_spec
from monai_medlocker.workflows.protect import DatasetProtector

ROOT = Path(__file__).resolve().parents[1]
RETINA = ROOT / "monai_medlocker" / "assets" / "retina_skimage.png"
# The CC0 photograph's anatomy, read off by eye (pixels of the 1024 px image): a left eye, disc on the left.
RETINA_DISC = (175.0, 475.0, 62.0)
RETINA_FOVEA = (512.0, 508.0)
FAST = {"max_queries": 8}


def _items(datalist: Path) -> list[dict]:
    return [it for section in datalist_sections(json.loads(datalist.read_text())).values() for it in section]


def _tiny() -> Surrogate:
    from tests.conftest import TinyConv

    return Surrogate(TinyConv(), model_spec("resnet-tiny", 64))


def _box_meets_circle(box, x, y, r) -> bool:
    x0, y0, x1, y1 = box  # end-exclusive: the last pixel is x1 - 1
    nx, ny = min(max(x, x0), x1 - 1), min(max(y, y0), y1 - 1)
    return math.hypot(nx - x, ny - y) < r


def _grader_zones(disc, fovea) -> list[tuple[float, float, float]]:
    """The zones the docs promise: 1.5 disc radii around the disc, one disc diameter around the fovea."""
    (dx, dy, rd), (fx, fy) = disc, fovea
    return [(dx, dy, 1.5 * rd), (fx, fy, 2.0 * rd)]


def _records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "private" / "records").rglob("*.record.json"))]


def _marks_clear(record: dict, zones) -> list[str]:
    hits = []
    for m in record.get("marks", []):
        for z in zones:
            if _box_meets_circle(m["box_xyxy"], *z):
                hits.append(f"{record['source']['file']}: mark {m['box_xyxy']} meets zone {z}")
    for z in record["anatomy"]["zones"]:  # the WSM holds the recorded zones themselves, exactly
        for m in record.get("marks", []):
            zb = zone_boxes([z], tuple(record["image_size"]))[0]
            x0, y0, x1, y1 = m["box_xyxy"]
            assert x1 <= zb[0] or zb[2] <= x0 or y1 <= zb[1] or zb[3] <= y0, (m, z)
    return hits


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lab")
    generate_dataset(root, n=4, size=256, seed=11, progress=False, lab_version=2)
    return root / "datalist.json"


def test_synth_datalist_items_say_where_the_disc_and_fovea_are(lab):
    from monai_medlocker.data.synthetic import synthesize_fundus

    items = _items(lab)
    assert len(items) == 4
    for it in items:
        meta = synthesize_fundus(256, it["seed"], it["label"], lab_version=2).meta
        assert it["optic_disc"] == pytest.approx({"x": meta["disc_center"][0], "y": meta["disc_center"][1],
                                                  "r": meta["disc_radius"]}, abs=0.06)
        assert it["fovea"] == pytest.approx({"x": meta["fovea_center"][0], "y": meta["fovea_center"][1],
                                             "r": 2 * meta["disc_radius"]}, abs=0.11)


def _without_anatomy(datalist: Path, dest: Path) -> Path:
    data = json.loads(datalist.read_text())
    for section in datalist_sections(data).values():
        for it in section:
            it.pop("optic_disc", None)
            it.pop("fovea", None)
    shutil.copytree(datalist.parent, dest)
    (dest / "datalist.json").write_text(json.dumps(data))
    return dest / "datalist.json"


def test_no_mark_meets_the_disc_or_macula_on_lab_images_located_or_given(lab, tmp_path):
    truth = {Path(it["image"]).name: _grader_zones((it["optic_disc"]["x"], it["optic_disc"]["y"], it["optic_disc"]["r"]),
                                                   (it["fovea"]["x"], it["fovea"]["y"]))
             for it in _items(lab)}
    located = _without_anatomy(lab, tmp_path / "located")
    for name, source, datalist in (("given", "given", lab), ("located", "located", located)):
        out = tmp_path / f"out_{name}"
        summary = DatasetProtector(datalist, out, _tiny(), FAST, lesion_segmenter="masks", progress=False).run()
        records = _records(out)
        assert summary["protected"] == 4 and len(records) == 4
        hits, sources = [], set()
        for rec in records:
            sources |= {z["source"] for z in rec["anatomy"]["zones"]}
            # Located, or (said in the record) a conservative zone where the locator found nothing.
            assert {z["source"] for z in rec["anatomy"]["zones"]} <= {source, "fallback"}, rec["anatomy"]
            fell_back = {z["name"] for z in rec["anatomy"]["zones"] if z["source"] == "fallback"}
            assert fell_back == {"macula" if m == "fovea" else m for m in rec["anatomy"]["missing"]}
            assert rec["marks"]
            hits += _marks_clear(rec, truth[rec["source"]["file"].split("/")[-1]])
        assert not hits, hits
        assert source in sources if source == "located" else sources == {"given"}


def test_without_zones_marks_do_land_on_the_anatomy(lab, tmp_path):
    """The zone test above can trip: with the zones off, the lab's marks meet the disc or the macula."""
    truth = {it["image"]: _grader_zones((it["optic_disc"]["x"], it["optic_disc"]["y"], it["optic_disc"]["r"]),
                                        (it["fovea"]["x"], it["fovea"]["y"])) for it in _items(lab)}
    out = tmp_path / "out"
    protector = DatasetProtector(lab, out, _tiny(), FAST, lesion_segmenter="masks", progress=False,
                                 anatomy={"enabled": False})
    # A fixed render secret (what protect --render-secret gives): a keyless run draws its own, and the keyed
    # sites it opens then decide, run by run, whether any mark meets the disc or the macula.
    secret = tmp_path / "render_secret"
    secret.write_bytes(hashlib.sha256(b"test_without_zones").digest())
    protector.keyring.secret_from = secret
    protector.run()
    met = 0
    for rec in _records(out):
        met += any(_box_meets_circle(m["box_xyxy"], *z) for m in rec["marks"] for z in truth[rec["source"]["file"]])
    assert met >= 1


def test_no_mark_meets_the_disc_or_macula_on_the_real_photograph(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(RETINA, src / "retina.png")
    out = tmp_path / "out"
    summary = DatasetProtector(src, out, _tiny(), FAST, progress=False).run()
    assert summary["protected"] == 1 and not summary["anatomy_not_found"]
    (rec,) = _records(out)
    assert rec["marks"]
    assert not _marks_clear(rec, _grader_zones(RETINA_DISC, RETINA_FOVEA))


def test_the_locator_finds_the_real_photographs_disc_and_fovea():
    image = np.asarray(Image.open(RETINA).convert("RGB"))
    found = locate_anatomy(image)
    disc, fovea = found["optic_disc"], found["fovea"]
    rd = RETINA_DISC[2]
    assert math.hypot(disc["x"] - RETINA_DISC[0], disc["y"] - RETINA_DISC[1]) < rd
    assert math.hypot(fovea["x"] - RETINA_FOVEA[0], fovea["y"] - RETINA_FOVEA[1]) < rd
    assert 0.6 * rd < disc["r"] < 1.5 * rd


def test_a_datalist_given_zone_is_honoured(tmp_path):
    """A user-given disc and fovea (here, deliberately not where the image has them) are the zones that count."""
    src = tmp_path / "in"
    src.mkdir()
    for f in (ROOT / "bundle" / "samples").glob("fundus_c*.png"):
        shutil.copy(f, src / f.name)
    disc, fovea = {"x": 60, "y": 60, "r": 20}, {"x": 190, "y": 200, "r": 50}
    (src / "datalist.json").write_text(json.dumps({"test": [{
        "image": "fundus_c.png", "optic_disc": disc, "fovea": fovea,
        **{f"mask_{t}": f"fundus_c_{t}.png" for t in ("MA", "HE", "EX", "SE")}}]}))
    out = tmp_path / "out"
    DatasetProtector(src / "datalist.json", out, _tiny(), FAST, lesion_segmenter="masks", progress=False).run()
    (rec,) = _records(out)
    zones = {z["name"]: z for z in rec["anatomy"]["zones"]}
    assert zones["optic_disc"] == {"name": "optic_disc", "source": "given", "x": 60.0, "y": 60.0, "r": 30.0}
    assert zones["macula"] == {"name": "macula", "source": "given", "x": 190.0, "y": 200.0, "r": 50.0}
    assert [30, 30, 91, 91] in rec["wsm_boxes"] and [140, 150, 241, 251] in rec["wsm_boxes"]
    assert not _marks_clear(rec, [(60, 60, 30), (190, 200, 50)])


def _blank_fundus(size: int = 256) -> np.ndarray:
    """A flat orange field of view on black: no disc, no fovea to find."""
    yy, xx = np.mgrid[0:size, 0:size]
    fov = np.hypot(xx - size / 2, yy - size / 2) < 0.45 * size
    img = np.zeros((size, size, 3), np.uint8)
    img[fov] = (180, 90, 40)
    return img


def test_missing_anatomy_falls_back_to_a_central_zone_or_refuses():
    img = _blank_fundus()
    zones, record = anatomy_zones(img)
    assert record["missing"] == ["optic_disc", "fovea"] and record["notes"]
    assert {z["source"] for z in zones} == {"fallback"}
    boxes = zone_boxes(zones, img.shape[:2])
    centre = np.zeros(img.shape[:2], bool)
    for x0, y0, x1, y1 in boxes:
        centre[y0:y1, x0:x1] = True
    assert centre[128, 128] and centre[128, 128 - 80] and centre[128, 128 + 80]  # both possible disc sides, the centre
    with pytest.raises(AnatomyNotFoundError, match="optic_disc and fovea not found"):
        anatomy_zones(img, on_missing="refuse")
    # Given positions need no locator, so nothing is missing even on a blank image.
    zones, record = anatomy_zones(img, {"x": 50, "y": 128, "r": 12}, {"x": 128, "y": 128}, on_missing="refuse")
    assert not record["missing"] and [z["r"] for z in zones] == [18.0, 24.0]


@pytest.mark.parametrize("on_missing", ["fallback", "refuse"])
def test_missing_anatomy_in_a_batch_is_reported(tmp_path, on_missing):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_blank_fundus()).save(src / "blank.png")
    for t in ("MA", "HE", "EX", "SE"):
        Image.fromarray(np.zeros((256, 256), np.uint8)).save(src / f"blank_{t}.png")
    out = tmp_path / "out"
    summary = DatasetProtector(src, out, _tiny(), FAST, lesion_segmenter="masks", progress=False,
                               anatomy={"on_missing": on_missing}).run()
    if on_missing == "fallback":
        assert summary["protected"] == 1 and summary["exit_code"] == 0
        assert summary["anatomy_not_found"] == [{"image": "blank.png", "missing": ["optic_disc", "fovea"]}]
        (rec,) = _records(out)
        assert rec["anatomy"]["missing"] == ["optic_disc", "fovea"]
    else:
        assert summary["protected"] == 0 and summary["exit_code"] == 1
        (failure,) = summary["failures"]
        assert failure["image"] == "blank.png" and "blank.png" in failure["error"] and "not found" in failure["error"]
        assert not (out / "public" / "blank.png").exists()
