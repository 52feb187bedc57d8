"""Per-image protect times in one batch while a CPU-heavy neighbour runs: the new thread defaults against torch's.

    .venv/bin/python benchmarks/bench_threads.py --n 40 --out benchmarks/results/threads/threads.json

(no ``OMP_NUM_THREADS`` in the environment: the point is what protect does on its own.)

* ``--n`` lab v2 images at 512 px, no mask files (the built-in detector finds the lesions), the bundle's
  default settings (inference.json: the zoo ensemble, medlocker optimizer, no shield).
* A neighbour process (a numpy matrix-product loop on one thread: one core busy) runs for the whole
  benchmark; ``--pin-neighbour CPU`` pins it to that CPU (default: the scheduler places it).
* Each mode runs in its own fresh Python process (OpenMP reads its settings when torch loads), which
  builds the protector from inference.json and protects the images one by one in a batch
  (``DatasetProtector.protect_timed``, as ``medlocker protect`` does), printing each image's seconds:
  - ``new``: as ``medlocker protect`` starts now (``monai_medlocker.runtime``): the CLI package loaded first
    (``OMP_WAIT_POLICY=PASSIVE`` before torch), threads from the default rule.
  - ``old``: the behaviour before: torch loaded first with its own default thread count and OpenMP's
    default wait policy (idle threads spin before sleeping).
  - ``new:N``: the new start with ``--threads N`` (e.g. to compare the default rule with other counts).
  A failed image (e.g. no feasible placement) counts with its time, as in a batch.
* Per mode: the per-image seconds, median, p90, p90/median (target with the new defaults: <= 2), images
  done before ``--timeout-s`` (a mode cut off by it says so), and the same for the process CPU seconds of each
  image (all its threads: the images' own spread of work, apart from waiting for a core). The load average is recorded: the machine is
  shared, figures from a loaded machine are slower.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# The child of one mode: protect every image of IN into OUT, one JSON line per image on stdout.
CHILD = r"""
import json, os, sys, time
mode, src, out = sys.argv[1:4]
policy = os.environ.get("OMP_WAIT_POLICY")
if mode == "old":
    import torch  # first, as before: torch's default threads and OpenMP's default wait policy
    threads = torch.get_num_threads()
else:
    import monai_medlocker.cli  # noqa: F401  (what `medlocker protect` loads first: the wait policy before torch)
    policy = os.environ.get("OMP_WAIT_POLICY")
    threads = int(mode.split(":")[1]) if ":" in mode else None  # new:N = --threads N; new: the default rule
from monai_medlocker.bundle_config import bundle_root, parse_bundle_config
from monai_medlocker.workflows.protect import find_protect_items
import torch
t0 = time.perf_counter()
overrides = {"dataset_dir": src, "output_dir": out, "progress": False, "threads": threads}
protector = parse_bundle_config("inference.json", bundle_root(), overrides).get_parsed_content("protector")
print(json.dumps({"threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
                  "omp_wait_policy_at_torch_load": policy, "setup_seconds": round(time.perf_counter() - t0, 3)}),
      flush=True)
os.makedirs(out, exist_ok=True)
for item in find_protect_items(src):
    t, cpu = time.perf_counter(), time.process_time()
    outcome = protector.protect_timed(item, protector.paths(item)[0])
    print(json.dumps({"image": item.relative.name, "seconds": round(time.perf_counter() - t, 4),
                      "cpu_seconds": round(time.process_time() - cpu, 4), "error": outcome.get("error")}), flush=True)
"""

NEIGHBOUR = r"""
import numpy as np
a = np.random.default_rng(0).random((256, 256))
while True:
    a = a @ a
    a /= np.abs(a).max()
"""


def _lab_folder(folder: Path, n: int) -> Path:
    from PIL import Image

    sys.path.insert(0, str(ROOT))
    from monai_medlocker.data.synthetic import synthesize_fundus

    folder.mkdir(parents=True)
    for i in range(n):
        sample = synthesize_fundus(512, seed=52_000 + i, grade=i % 5, lab_version=2)
        Image.fromarray(sample.image).save(folder / f"lab_{i:03d}.png")
    return folder


def _stats(seconds: list[float]) -> dict:
    if not seconds:
        return {"images": 0}
    med, p90 = float(np.median(seconds)), float(np.percentile(seconds, 90))
    return {"images": len(seconds), "median_s": round(med, 4), "p90_s": round(p90, 4),
            "p90_over_median": round(p90 / med, 3), "min_s": round(min(seconds), 4), "max_s": round(max(seconds), 4),
            "mean_s": round(float(np.mean(seconds)), 4)}


def run_mode(mode: str, src: Path, out: Path, timeout_s: float) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "OPENBLAS_NUM_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, mode, str(src), str(out)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    start, info, rows, cut_off = time.monotonic(), {}, [], False
    try:
        for line in proc.stdout:
            row = json.loads(line)
            if "threads" in row:
                info = row
            else:
                rows.append(row)
                print(mode, len(rows), row["seconds"], file=sys.stderr, flush=True)
            if time.monotonic() - start > timeout_s:
                cut_off = True
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    if not rows and proc.returncode:
        raise RuntimeError(f"mode {mode} failed: {proc.stderr.read()[-2000:]}")
    seconds = [r["seconds"] for r in rows]
    cpu = _stats([r["cpu_seconds"] for r in rows])  # the work itself: how much of the spread the images make
    return {**info, **_stats(seconds), "cpu": {k: v for k, v in cpu.items() if k != "images"}, "cut_off_by_timeout": cut_off, "wall_seconds": round(time.monotonic() - start, 1),
            "failed_images": sum(bool(r.get("error")) for r in rows), "per_image_seconds": seconds,
            "per_image_cpu_seconds": [r["cpu_seconds"] for r in rows],
            "errors": sorted({str(r["error"])[:200] for r in rows if r.get("error")})}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=40, help="images in the batch")
    p.add_argument("--modes", default="new,old", help="comma-separated, run in this order: new, old, or new:N (the new "
                   "start with --threads N)")
    p.add_argument("--timeout-s", type=float, default=600.0, help="stop a mode after this many seconds (figures "
                   "then cover the images done)")
    p.add_argument("--pin-neighbour", type=int, default=None, metavar="CPU", help="pin the neighbour to this CPU")
    p.add_argument("--no-neighbour", action="store_true", help="no neighbour process (for comparison)")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/threads/threads.json"))
    args = p.parse_args(argv)
    results = {"config": vars(args), "command": " ".join([".venv/bin/python", "benchmarks/bench_threads.py", *sys.argv[1:]]),
               "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                           "affinity_cpus": len(os.sched_getaffinity(0)), "loadavg_start": os.getloadavg()},
               "modes": {}}
    neighbour = None
    if not args.no_neighbour:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        neighbour = subprocess.Popen([sys.executable, "-c", NEIGHBOUR], env=env)
        if args.pin_neighbour is not None:
            os.sched_setaffinity(neighbour.pid, {args.pin_neighbour})
    try:
        with tempfile.TemporaryDirectory(prefix="bench_threads_") as tmp:
            src = _lab_folder(Path(tmp) / "in", args.n)
            for mode in args.modes.split(","):
                results["modes"][mode] = run_mode(mode, src, Path(tmp) / f"out_{mode}", args.timeout_s)
                shown = {k: v for k, v in results["modes"][mode].items() if not k.startswith("per_image")}
                print(mode, json.dumps(shown), file=sys.stderr, flush=True)
    finally:
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()
    results["machine"]["loadavg_end"] = os.getloadavg()
    modes = results["modes"]
    if "new" in modes and "old" in modes and modes["new"].get("images") and modes["old"].get("images"):
        results["old_median_over_new_median"] = round(modes["old"]["median_s"] / modes["new"]["median_s"], 3)
        results["old_p90_over_new_p90"] = round(modes["old"]["p90_s"] / modes["new"]["p90_s"], 3)
    if modes.get("new", {}).get("images"):
        results["target_p90_within_2x_median_new"] = modes["new"]["p90_over_median"] <= 2.0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "modes"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
