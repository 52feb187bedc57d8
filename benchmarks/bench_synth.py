"""Synthetic fundus lab throughput on one CPU core, per lab version.

    python benchmarks/bench_synth.py --size 512 --n 50 --lab-version 1 2 --out benchmarks/results/synth.json

Times ``synthesize_fundus`` (image, masks and grade in memory; grades cycle 0..4) single-threaded and
pinned to one core (the versions take turns image by image, so that both see the same machine load), and,
unless ``--no-io``, ``generate_dataset`` end to end (PNG encoding included) into a temporary folder, once per
lab version. Writes a JSON record with one row per version and prints the
images/s figures.
"""

from __future__ import annotations

import os

# One core, one thread: set before numpy (and its BLAS/OpenMP pools) is imported.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from monai_medlocker.data.synthetic import generate_dataset, synthesize_fundus  # noqa: E402


def pin_to_one_core() -> int | None:
    """Restrict this process to a single CPU (Linux); returns the CPU id, or None where unsupported."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


def bench_memory(size: int, n: int, seed: int, lab_versions: list[int]) -> dict[int, list[float]]:
    """Seconds per image per lab version; the versions take turns image by image, so that on a shared machine
    both see the same load and their ratio stays meaningful."""
    for v in lab_versions:
        synthesize_fundus(size, seed=seed + 10_000, grade=3, lab_version=v)  # warm-up: caches, lazy imports
    times: dict[int, list[float]] = {v: [] for v in lab_versions}
    for i in range(n):
        for v in lab_versions:
            t0 = time.perf_counter()
            synthesize_fundus(size, seed=seed + i, grade=i % 5, lab_version=v)
            times[v].append(time.perf_counter() - t0)
    return times


def bench_dataset(size: int, n: int, seed: int, lab_version: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        generate_dataset(Path(tmp) / "lab", n=n, size=size, seed=seed, progress=False, lab_version=lab_version)
        return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lab-version", dest="lab_versions", type=int, nargs="+", choices=(1, 2), default=[1, 2],
                        help="lab versions to time, one row each (default: 1 2)")
    parser.add_argument("--no-io", action="store_true", help="skip the generate_dataset (PNG writing) figure")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "synth.json")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"--n must be >= 1, got {args.n}")

    cpu = pin_to_one_core()
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # other processes share the machine
    rows = []
    per_version = bench_memory(args.size, args.n, args.seed, args.lab_versions)
    for lab_version in args.lab_versions:
        times = per_version[lab_version]
        row = {
            "lab_version": lab_version,
            "images_per_s": round(args.n / sum(times), 2),
            "median_s_per_image": round(statistics.median(times), 4),
            "p90_s_per_image": round(float(np.percentile(times, 90)), 4),
        }
        if not args.no_io:
            elapsed = bench_dataset(args.size, args.n, args.seed, lab_version)
            row["dataset_images_per_s"] = round(args.n / elapsed, 2)  # with PNG image + 4 mask files per image
        rows.append(row)
        line = (f"lab v{lab_version}: synthesize_fundus @ {args.size} px, 1 core: {row['images_per_s']} images/s "
                f"(median {row['median_s_per_image'] * 1000:.1f} ms/image, n={args.n})")
        if "dataset_images_per_s" in row:
            line += f"; generate_dataset with PNG writing: {row['dataset_images_per_s']} images/s"
        print(line)
    record = {
        "benchmark": "synthetic fundus lab throughput (synthesize_fundus, grades 0..4 in turn), per lab version",
        "size": args.size,
        "n": args.n,
        "seed": args.seed,
        "rows": rows,
        "threads": 1,
        "pinned_cpu": cpu,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cpu_count": os.cpu_count(),
            "load_average_1min": [load_before, os.getloadavg()[0] if load_before is not None else None],
        },
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
