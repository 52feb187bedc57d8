"""The anatomy locator (optic disc, fovea) against the synthetic lab's truth and a real photograph.

    python benchmarks/bench_anatomy.py --n 40 --size 512 --out benchmarks/results/anatomy/anatomy.json

Held-out images are ``synthesize_fundus(size, sample_seed(seed, i), grade=i % 5, lab_version=v)`` for lab
v2 and v1 (seed 4242 was not looked at while the locator was tuned; seeds 1000-1019 and 2000-2029 were).
Per lab version:

* detection rate of the disc and the fovea (the locator says it found them);
* centre error of each found one, in true disc radii: median, p90, max;
* the found disc radius over the true one (median);
* zone cover: the share of images whose true no-go zones (1.5 disc radii around the disc, one disc
  diameter around the fovea, as the README promises) lie wholly inside the WSM boxes that protect adds
  (:func:`~monai_medlocker.lesions.anatomy.anatomy_zones` with its defaults, fallbacks included), and
  the area those boxes take (fraction of the image);
* seconds per image (one thread).

The real CC0 photograph (``monai_medlocker/assets/retina_skimage.png``) has no truth: its disc and fovea were
read off by eye (disc centre about (175, 475), radius about 62 px; fovea about (512, 508)).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monai_medlocker.data.lab.dataset import sample_seed  # noqa: E402
from monai_medlocker.data.synthetic import synthesize_fundus  # noqa: E402
from monai_medlocker.lesions.anatomy import anatomy_zones, zone_boxes  # noqa: E402

RETINA = ROOT / "monai_medlocker" / "assets" / "retina_skimage.png"
RETINA_DISC = (175.0, 475.0, 62.0)  # by eye
RETINA_FOVEA = (512.0, 508.0)


def _circle_inside(mask: np.ndarray, x: float, y: float, r: float) -> bool:
    yy, xx = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]]
    circle = np.hypot(xx - x, yy - y) < r
    return bool(mask[circle].all())


def _stats(values: list[float]) -> dict:
    if not values:
        return {"median": None, "p90": None, "max": None}
    a = np.asarray(values)
    return {"median": round(float(np.median(a)), 3), "p90": round(float(np.percentile(a, 90)), 3),
            "max": round(float(a.max()), 3)}


def _one(image: np.ndarray, disc: tuple[float, float, float], fovea: tuple[float, float]) -> dict:
    t0 = time.perf_counter()
    zones, record = anatomy_zones(image)
    seconds = time.perf_counter() - t0
    boxes = zone_boxes(zones, image.shape[:2])
    mask = np.zeros(image.shape[:2], bool)
    for x0, y0, x1, y1 in boxes:
        mask[y0:y1, x0:x1] = True
    dx, dy, rd = disc
    fx, fy = fovea
    found = {z["name"]: z for z in zones if z["source"] == "located"}
    out = {"seconds": seconds, "zone_area": float(mask.mean()), "missing": record["missing"],
           "covered": _circle_inside(mask, dx, dy, 1.5 * rd) and _circle_inside(mask, fx, fy, 2.0 * rd)}
    if "optic_disc" in found:
        z = found["optic_disc"]
        out["disc_error"] = math.hypot(z["x"] - dx, z["y"] - dy) / rd
        out["disc_radius_ratio"] = record["disc_radius"] / rd
    if "macula" in found:
        z = found["macula"]
        out["fovea_error"] = math.hypot(z["x"] - fx, z["y"] - fy) / rd
    return out


def _summarise(rows: list[dict]) -> dict:
    n = len(rows)
    return {
        "images": n,
        "disc_detection_rate": round(sum("disc_error" in r for r in rows) / n, 4),
        "fovea_detection_rate": round(sum("fovea_error" in r for r in rows) / n, 4),
        "disc_centre_error_disc_radii": _stats([r["disc_error"] for r in rows if "disc_error" in r]),
        "fovea_centre_error_disc_radii": _stats([r["fovea_error"] for r in rows if "fovea_error" in r]),
        "disc_radius_ratio_median": round(float(np.median([r["disc_radius_ratio"] for r in rows if "disc_radius_ratio" in r]
                                                          or [float("nan")])), 3),
        "true_zones_covered_rate": round(sum(r["covered"] for r in rows) / n, 4),
        "zone_area_fraction": _stats([r["zone_area"] for r in rows]),
        "seconds_per_image": _stats([r["seconds"] for r in rows]),
        "uncovered_images": [r["index"] for r in rows if not r["covered"]],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--seed", type=int, default=4242)
    p.add_argument("--labs", default="2,1", help="lab versions, comma-separated")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "anatomy" / "anatomy.json"))
    args = p.parse_args(argv)
    result = {"command": "python benchmarks/bench_anatomy.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.platform(),
              "n": args.n, "size": args.size, "seed": args.seed, "labs": {}}
    for v in (int(x) for x in args.labs.split(",")):
        rows = []
        for i in range(args.n):
            sample = synthesize_fundus(args.size, sample_seed(args.seed, i), i % 5, lab_version=v)
            m = sample.meta
            row = _one(sample.image, (*m["disc_center"], m["disc_radius"]), tuple(m["fovea_center"]))
            row["index"] = i
            rows.append(row)
        result["labs"][f"v{v}"] = _summarise(rows)
        print(f"lab v{v}: {json.dumps(result['labs'][f'v{v}'])}")
    from PIL import Image

    image = np.asarray(Image.open(RETINA).convert("RGB"))
    real = _one(image, RETINA_DISC, RETINA_FOVEA)
    result["real_photograph"] = {"file": str(RETINA.relative_to(ROOT)), "truth": "by eye",
                                 **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in real.items()}}
    print(f"real photograph: {json.dumps(result['real_photograph'])}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
