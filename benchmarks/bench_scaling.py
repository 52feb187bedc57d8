"""Protect cost against image size, throughput with 1 and 2 processes and Ray, and where each image's time goes.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_scaling.py --n 10 --throughput-n 20 \
        --out benchmarks/results/scaling.json

* ``sizes``: ``watermark_image`` (medlocker, paper space) on the same synthetic scenes drawn at each
  size: the search runs at the model's input size, so a 2048 px image should cost about what a
  512 px one does, plus compositing and the final full-size check.
* ``throughput`` (issue 13 A3): ``medlocker protect`` (the demo model, the built-in lesion detector:
  no mask files) on ``--throughput-n`` lab images at 512 px, with 1 process, ``--workers 2`` and
  ``--ray local --ray-actors 2``, one thread each. Images per hour from the run's own seconds
  (``private/summary.json``: from the listing of the images to the manifest) and from the whole command
  (interpreter and model start-up included); whether the three output folders are identical
  (images and records, timings left out; the 2-process and Ray folders start with the 1-process
  folder's ``private/render_secret``, as a keyless run continued elsewhere does).
* ``per_image_cost``: one process over the same images: seconds in the lesion detector, in the
  watermark search (its model calls included) and in the model's forward passes alone, and the
  fraction of the protect time spent in the model.

The load average is recorded at the start and end: figures from a loaded machine are slower.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
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
    p.add_argument("--throughput-n", type=int, default=20, help="images for the throughput and cost rows (0: skip)")
    p.add_argument("--throughput-max-queries", type=int, default=None,
                   help="query budget of the throughput and cost rows (default: inference.json's, as a user runs it)")
    p.add_argument("--skip-sizes", action="store_true", help="only the throughput and per-image cost rows")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/scaling.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    white = load_surrogate(args.model)
    logo = load_logo()
    space = SearchSpace.paper()
    results = {"config": vars(args), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                           "loadavg_start": load_start}, "sizes": {}}
    for size in ([] if args.skip_sizes else [int(s) for s in args.sizes.split(",")]):
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
    if args.throughput_n:
        with tempfile.TemporaryDirectory(prefix="bench_scaling_") as tmp:
            src = _lab_folder(Path(tmp) / "in", args.throughput_n, args.lab_version)
            results["per_image_cost"] = per_image_cost(src, Path(tmp) / "cost", args.throughput_max_queries)
            results["throughput"] = throughput(src, Path(tmp), args.throughput_max_queries)
    results["machine"]["loadavg_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


def _lab_folder(folder: Path, n: int, lab_version: int) -> Path:
    """``n`` lab images at 512 px, no mask files (the built-in detector finds the lesions, as for a user's photographs)."""
    from PIL import Image

    folder.mkdir(parents=True)
    for i in range(n):
        sample = synthesize_fundus(512, seed=41_000 + i, grade=i % 5, lab_version=lab_version)
        Image.fromarray(sample.image).save(folder / f"lab_{i:03d}.png")
    return folder


def per_image_cost(src: Path, out: Path, max_queries: int | None) -> dict:
    """Seconds per image in the detector, the search and the model (one process, this one)."""
    from monai_medlocker.bundle_config import bundle_root, parse_bundle_config
    from monai_medlocker.workflows.protect import find_protect_items

    overrides = {"dataset_dir": str(src), "output_dir": str(out), "max_queries": max_queries, "progress": False}
    protector = parse_bundle_config("inference.json", bundle_root(), overrides).get_parsed_content("protector")
    spent = {"detector": 0.0, "search": 0.0, "model": 0.0}

    class Timed:
        """A callable step with its seconds added to ``spent[name]``; its other attributes pass through."""

        def __init__(self, name, step):
            self.name, self.step = name, step

        def __call__(self, *a, **k):
            t0 = time.perf_counter()
            try:
                return self.step(*a, **k)
            finally:
                spent[self.name] += time.perf_counter() - t0

        def __getattr__(self, attr):
            return getattr(self.step, attr)

    from monai_medlocker.transforms.dictionary import AdversarialWatermarkd
    from monai_medlocker.transforms.protect_steps import LesionMapsd

    surrogates = protector.watermark.surrogates
    lesion_step, watermark_step = protector.step(LesionMapsd), protector.step(AdversarialWatermarkd)
    lesion_step.source = Timed("detector", lesion_step.source)
    watermark_step.transform = Timed("search", watermark_step.transform)
    starts: dict[int, float] = {}

    def before(module, inputs):
        starts[id(module)] = time.perf_counter()

    def after(module, inputs, output):
        spent["model"] += time.perf_counter() - starts[id(module)]

    for surrogate in surrogates:
        surrogate.network.register_forward_pre_hook(before)
        surrogate.network.register_forward_hook(after)
    items = find_protect_items(src)
    out.mkdir(parents=True)
    total, failed = 0.0, 0
    for item in items:  # as the batch does it: a failed image (e.g. no feasible placement) still costs its time
        outcome = protector.protect_timed(item, out / f"{item.relative.stem}.png")
        total += outcome["seconds"]
        failed += "error" in outcome
    n = len(items)
    per = {k: round(v / n, 4) for k, v in spent.items()}
    per["total"] = round(total / n, 4)
    per["other"] = round(per["total"] - per["detector"] - per["search"], 4)  # load, WSM, certify, write
    per["search_without_model"] = round(per["search"] - per["model"], 4)
    print("per-image cost", per, file=sys.stderr, flush=True)
    return {"images": n, "failed": failed, "seconds_per_image": per,
            "model_fraction_of_protect_time": round(per["model"] / per["total"], 4),
            "note": "model = the surrogate's forward passes, inside the search; other = loading, WSM, writing"}


def _outputs(out: Path) -> dict:
    """Every output file (records and manifest rows without timings; the lock file left out)."""
    found = {}
    for p in sorted(out.rglob("*")):
        if not p.is_file() or p.name.startswith(".medlocker.lock"):
            continue
        if p.suffix in (".json", ".jsonl"):
            text = p.read_text()
            rows = [json.loads(line) for line in text.splitlines() if line.strip()] if p.suffix == ".jsonl" \
                else [json.loads(text)]
            for row in rows:
                for key in ("seconds", "certify_seconds", "total_seconds", "median_seconds_per_image", "output_dir"):
                    row.pop(key, None)
                (row.get("lesion_report") or {}).pop("seconds", None)
            found[str(p.relative_to(out))] = rows
        else:
            found[str(p.relative_to(out))] = p.read_bytes()
    return found


def throughput(src: Path, tmp: Path, max_queries: int | None) -> dict:
    """Images per hour of ``medlocker protect`` with 1 process, 2 processes and 2 Ray actors."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "RAY_TMPDIR": str(tmp / "r")}
    modes = {"1 process": [], "2 processes": ["--workers", "2"], "ray, 2 actors": ["--ray", "local", "--ray-actors", "2"]}
    rows, outputs = {}, {}
    first_out = None
    for name, extra in modes.items():
        out = tmp / name.replace(" ", "_").replace(",", "")
        if first_out is None:
            first_out = out
        else:  # keyless renderings depend on the folder's secret: the same one, so that the outputs can be compared
            (out / "private").mkdir(parents=True)
            shutil.copy(first_out / "private" / "render_secret", out / "private" / "render_secret")
        budget = [] if max_queries is None else ["--max-queries", str(max_queries)]
        cmd = [sys.executable, "-m", "monai_medlocker.cli", "protect", str(src), str(out), *budget, "--quiet", *extra]
        load = os.getloadavg()
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        if done.returncode not in (0, 1):
            raise RuntimeError(f"{name}: {' '.join(cmd)} failed ({done.returncode}): {done.stderr[-2000:]}")
        summary = json.loads((out / "private" / "summary.json").read_text())
        n = summary["images"]
        rows[name] = {"images": n, "protected": summary["protected"], "run_seconds": summary["total_seconds"],
                      "command_seconds": round(wall, 2),
                      "images_per_hour": round(3600 * n / summary["total_seconds"], 1),
                      "images_per_hour_whole_command": round(3600 * n / wall, 1), "loadavg_start": load}
        outputs[name] = _outputs(out)
        print(name, rows[name], file=sys.stderr, flush=True)
        if name != "1 process":
            shutil.rmtree(tmp / "r", ignore_errors=True)
    base = rows["1 process"]["images_per_hour"]
    first = outputs["1 process"]
    return {"rows": rows,
            "speedup_2_processes": round(rows["2 processes"]["images_per_hour"] / base, 3),
            "speedup_ray_2_actors": round(rows["ray, 2 actors"]["images_per_hour"] / base, 3),
            "target_speedup_2_processes": 1.7,
            "outputs_identical": {name: outputs[name] == first for name in modes if name != "1 process"},
            "output_files_compared": len(first)}


if __name__ == "__main__":
    sys.exit(main())
