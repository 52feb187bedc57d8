"""The built-in lesion detector before and after issue 13 A4: seconds per image and recall on the held-out seeds.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_lesions_speed.py --n 40 \
        --out benchmarks/results/lesions_speed.json

Runs ``bench_lesions.py`` (``--watermark 0``, lab v1, no network row) for each seed (31337, 9001),
image size (512, 1024) and detector grid: 640 px (the grid before A4) and the detector's default
(512 px). Recall is per lesion object (wholly inside the WSM), as in ``bench_lesions.py``; the
seconds are one thread's wall time, with the load average at the start of each row.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_lesions  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--seeds", default="31337,9001")
    p.add_argument("--sizes", default="512,1024")
    p.add_argument("--grids", default="640,512", help="detector working sizes: before (640) and after")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/lesions_speed.json"))
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in [int(s) for s in args.seeds.split(",")]:
            for size in [int(s) for s in args.sizes.split(",")]:
                for grid in [int(g) for g in args.grids.split(",")]:
                    out = Path(tmp) / f"{seed}_{size}_{grid}.json"
                    load = os.getloadavg()
                    bench_lesions.main(["--n", str(args.n), "--size", str(size), "--seed", str(seed), "--watermark", "0",
                                        "--lab-version", "1", "--working-size", str(grid), "--checkpoint", "/nonexistent",
                                        "--out", str(out), "--overlay", str(Path(tmp) / "overlay.png")])
                    b = json.loads(out.read_text())["sources"]["builtin"]
                    rows.append({
                        "seed": seed, "size": size, "working_size": grid, "loadavg_start": load,
                        "object_recall": b["object_recall"], "objects": b["objects"],
                        "missed": {t: v["objects"] - v["found"] for t, v in b["per_type"].items()},
                        "recall_by_type": {t: v["object_recall"] for t, v in b["per_type"].items()},
                        "wsm_area_fraction_mean": b["wsm_area_fraction_mean"],
                        "seconds_per_image_median": b["seconds_per_image_median"],
                        "seconds_per_image_p90": b["seconds_per_image_p90"],
                    })
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    result = {"benchmark": "built-in lesion detector: 640 px grid (before issue 13 A4) vs the default grid",
              "command": "python benchmarks/bench_lesions_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
              "target": "<= 0.3 s per 512 px image, same recall", "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
