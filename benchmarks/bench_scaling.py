"""Protect cost against image size: the search runs at the model's input size, so a 2048 px image
should cost about what a 512 px one does, plus compositing and the final full-size check.

    python benchmarks/bench_scaling.py --n 10 --out benchmarks/results/scaling.json

Runs ``watermark_image`` (medlocker, paper space) on the same synthetic scenes drawn at each size.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monai_medlocker.data.synthetic import LESION_TYPES, synthesize_fundus  # noqa: E402
from monai_medlocker.lesions import lesion_bboxes, wsm_from_boxes  # noqa: E402
from monai_medlocker.networks import load_surrogate  # noqa: E402
from monai_medlocker.watermark import (  # noqa: E402
    Placement, SearchSpace, composite, get_optimizer, load_logo, watermark_image,
)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--sizes", default="512,2048")
    p.add_argument("--lab-version", type=int, default=1, choices=(1, 2),
                   help="lab version of the synthetic images "
                        "(default 1: the committed results were made on lab v1; 2 = the realistic lab)")
    p.add_argument("--max-queries", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model", default=str(ROOT / "bundle/models/model.pt"))
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/scaling.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    white = load_surrogate(args.model)
    logo = load_logo()
    space = SearchSpace.paper()
    results = {"config": vars(args), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads()}, "sizes": {}}
    for size in [int(s) for s in args.sizes.split(",")]:
        seconds, composite_s, queries, successes = [], [], [], 0
        for i in range(args.n):
            sample = synthesize_fundus(size, seed=31_000 + i, grade=i % 5, lab_version=args.lab_version)
            wsm = wsm_from_boxes(lesion_bboxes(np.stack([sample.masks[t] for t in LESION_TYPES]), margin=2)[0],
                                 sample.image.shape[:2])
            t0 = time.perf_counter()
            out, rec = watermark_image(sample.image, wsm, [white], logo, get_optimizer("medlocker", max_queries=args.max_queries),
                                       space, label=sample.grade, seed=i)
            seconds.append(time.perf_counter() - t0)
            t1 = time.perf_counter()
            composite(sample.image, logo, [Placement.from_record(m) for m in rec["marks"]])
            composite_s.append(time.perf_counter() - t1)
            queries.append(rec["queries"])
            successes += rec["success"]
        results["sizes"][str(size)] = {
            "images": args.n, "seconds_median": round(statistics.median(seconds), 4),
            "seconds_p90": round(float(np.percentile(seconds, 90)), 4),
            "composite_seconds_median": round(statistics.median(composite_s), 4),
            "queries_median": statistics.median(queries), "successes": successes,
        }
        print(size, results["sizes"][str(size)], file=sys.stderr, flush=True)
    sizes = list(results["sizes"].values())
    if len(sizes) == 2:
        results["ratio_seconds_large_over_small"] = round(sizes[1]["seconds_median"] / sizes[0]["seconds_median"], 3)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
