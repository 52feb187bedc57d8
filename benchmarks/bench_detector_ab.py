"""The built-in lesion detector of two commits, back to back on the same images: seconds and agreement.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_detector_ab.py --before bd7c281 --after 46bb99c \
        --out benchmarks/results/lesions/detector_ab.json

``lesions/builtin.py`` is taken from each commit (``git show``; ``--after`` defaults to the working tree)
and both run alternately on ``--n`` lab images, so that machine load hits both alike. Reported: the
median seconds per image of each and the median ratio after / before, and how far their outputs differ:
pixels whose 0.5-level mask differs, the largest probability change, and whether the reports match.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from bench_common import result_header  # noqa: E402
from monai_medlocker.data.synthetic import sample_seed, synthesize_fundus  # noqa: E402

DETECTOR = "monai_medlocker/lesions/builtin.py"


def load_detector(commit: str | None, folder: Path, name: str):
    """``detect_lesions`` of ``DETECTOR`` at ``commit`` (``None``: the working tree)."""
    path = ROOT / DETECTOR
    if commit is not None:
        path = folder / f"{name}.py"
        path.write_bytes(subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:{DETECTOR}"],
                                        check=True, capture_output=True).stdout)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.detect_lesions


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", required=True, help="a commit")
    p.add_argument("--after", default=None, help="a commit (default: the working tree)")
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--seed", type=int, default=4242)
    p.add_argument("--lab-version", type=int, default=2, choices=(1, 2))
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        before = load_detector(args.before, Path(tmp), "detector_before")
        after = load_detector(args.after, Path(tmp), "detector_after")
    images = [synthesize_fundus(args.size, sample_seed(args.seed, i), grade=i % 5, lab_version=args.lab_version).image
              for i in range(args.n)]
    before(images[0]), after(images[0])  # warm-up: imports and caches
    rows = []
    for i, image in enumerate(images):
        t0 = time.perf_counter()
        p0, r0 = before(image)
        t1 = time.perf_counter()
        p1, r1 = after(image)
        t2 = time.perf_counter()
        r0.pop("seconds"), r1.pop("seconds")
        rows.append({"before_s": round(t1 - t0, 4), "after_s": round(t2 - t1, 4),
                     "mask_pixels_differing": int(((p0 >= 0.5) != (p1 >= 0.5)).sum()),
                     "max_probability_change": float(np.abs(p0 - p1).max()), "reports_equal": r0 == r1})
        print(f"{i + 1}/{args.n}: {rows[-1]}", file=sys.stderr, flush=True)
    b = np.array([r["before_s"] for r in rows])
    a = np.array([r["after_s"] for r in rows])
    result = {
        **result_header("built-in lesion detector, two commits back to back", __file__, argv),
        "images": {"n": args.n, "size": args.size, "seed": args.seed, "lab_version": args.lab_version},
        "before": args.before, "after": args.after or "working tree",
        "seconds_median": {"before": round(float(np.median(b)), 3), "after": round(float(np.median(a)), 3)},
        "ratio_after_over_before_median": round(float(np.median(a / b)), 3),
        "images_with_a_differing_mask": sum(r["mask_pixels_differing"] > 0 for r in rows),
        "max_probability_change": max(r["max_probability_change"] for r in rows),
        "reports_equal": all(r["reports_equal"] for r in rows),
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"median s per image: {args.before} {result['seconds_median']['before']}, {result['after']} "
          f"{result['seconds_median']['after']} (ratio {result['ratio_after_over_before_median']}); images with a "
          f"differing 0.5 mask: {result['images_with_a_differing_mask']}; largest probability change "
          f"{result['max_probability_change']:.2g}; reports equal: {result['reports_equal']}; -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
