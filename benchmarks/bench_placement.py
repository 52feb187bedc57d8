"""Placement leak against protection: does the keyed layout hide the grade, and what does it cost?

Issue 17 item 5. The threat study's placement-leak measure (:mod:`monai_medlocker.threats.placement`: leave-one-out
k-NN and nearest-centroid accuracy of the grade, and of the referable decision, from the marks' visible boxes
alone) and its held-out accuracy (the mean over the zoo's held-out models, the study's headline), on the same lab
images, for the ``medlocker`` row with the keyed layout off (``keyed_sites`` None: the search may use every
lesion-free box) and with several numbers of keyed sites, and for the ``random`` row (a plain mark uniform over
the lesion-free boxes: the floor of what the WSM alone leaks). Everything else is the protect default
(``bundle/configs/inference.json``: the zoo resnet + densenet ensemble, 200 queries, its search space) and the
study's WSM (lesion boxes + the optic disc and macula zones). Besides the study's features together, the leak of
each feature alone: the marks' count, their total area, the largest mark's centre and size.

    python benchmarks/bench_placement.py                      # 80 lab-v2 images at 512 px, seed 57
    python benchmarks/bench_placement.py --n 40 --size 256 --sites none,8

Seed 31 is the final study's and is refused here (never tune on it). Writes ``placement.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monai_medlocker.networks import load_protect_surrogates  # noqa: E402
from monai_medlocker.threats.placement import feature_leak, placement_features  # noqa: E402
from monai_medlocker.workflows.threat_study import ThreatStudy, lab_study_images  # noqa: E402

RESERVED_SEED = 31


def _features(records: list[dict]) -> dict[str, np.ndarray]:
    """The study's features together, and each one alone (protected images only)."""
    recs = [r for r in records if r and r.get("protected") and r.get("marks")]
    full = np.stack([placement_features(r) for r in recs])
    area = [sum(m["width"] * m["height"] for m in r["marks"]) / float(np.prod(r["image_size"])) for r in recs]
    return {"all": full, "count": full[:, -1:], "total_area": np.asarray(area)[:, None],
            "largest_centre": full[:, 0:2], "largest_size": full[:, 2:4]}


def _commit() -> str | None:
    """The commit the benchmark ran on (``+dirty`` with uncommitted changes), for the figures' provenance."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                               text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=80)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--seed", type=int, default=57)
    p.add_argument("--sites", default="none,4,8,16", help="keyed_sites values of the medlocker rows ('none': off)")
    p.add_argument("--no-random", action="store_true", help="leave out the random row (the WSM's own leak)")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/placement"))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.seed == RESERVED_SEED:
        p.error(f"seed {RESERVED_SEED} is reserved for the final threat study; tune on another")
    torch.set_num_threads(args.threads)
    cfg = json.loads((ROOT / "bundle/configs/inference.json").read_text())
    members = json.loads((ROOT / "bundle/configs/evaluate_protection.json").read_text())["surrogate"]["members"]
    surrogates = load_protect_surrogates(members, checkpoint_dir=ROOT / "bundle/models/zoo")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    images = lab_study_images(args.n, args.size, args.seed)
    grades = [s.grade for s in images]
    variants: dict[str, dict] = {}
    plan = ([] if args.no_random else [("random", "random", None)]) + [(f"medlocker sites={v}", "medlocker", None if v == "none" else int(v))
                                           for v in args.sites.split(",")]
    for label, row, sites in plan:
        t0 = time.perf_counter()
        kwargs = {**cfg["optimizer_kwargs"], "keyed_sites": sites} if row == "medlocker" else {}
        study = ThreatStudy(Path(tempfile.mkdtemp(prefix="bench_placement_")), surrogates, zoo=ROOT / "configs/zoo.json", images=images, rows=["none", row],
                            preprocessing=["none"], attacks=[], transfer_matrix=False, unauthorised_training=None,
                            optimizer="medlocker", optimizer_kwargs=kwargs, max_queries=cfg["max_queries"],
                            search_space=cfg["search_space"], progress=False)
        with contextlib.redirect_stdout(io.StringIO()):
            results = study.run()
        head = results["headline"][row]
        records = study.protected_rows[row].records
        kept = [g for g, r in zip(grades, records) if r and r.get("protected") and r.get("marks")]
        variants[label] = {
            "row": row, "keyed_sites": sites,
            "held_out_clean_accuracy": head["held_out_clean_accuracy"], "held_out_accuracy": head["held_out_accuracy"],
            "white_box_accuracy": head["white_box_accuracy"], "queries_median": head["queries_median"],
            "seconds_per_image_median": head["seconds_per_image_median"],
            "box_area_fraction_median": head["box_area_fraction_median"],
            "surrogates_fooled": round(float(np.mean([bool(r and r.get("success")) for r in records])), 4),
            "marks_median": float(np.median([len(r["marks"]) for r in records if r])),
            "placement_leak": head["placement_leak"],
            "leak_per_feature": {k: feature_leak(x, kept) for k, x in _features(records).items()},
            "wall_seconds": round(time.perf_counter() - t0, 1),
        }
        v = variants[label]
        leak = v["placement_leak"]
        print(f"{label:22s} held-out {v['held_out_accuracy']:.3f} (clean {v['held_out_clean_accuracy']:.3f}) "
              f"fooled {v['surrogates_fooled']:.2f} q {v['queries_median']} | grade knn {leak['grade']['knn_accuracy']:.3f} "
              f"centroid {leak['grade']['centroid_accuracy']:.3f} | referable knn {leak['referable']['knn_accuracy']:.3f} "
              f"centroid {leak['referable']['centroid_accuracy']:.3f} (majority {leak['referable']['majority_rate']})",
              flush=True)
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/bench_placement.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {"n": args.n, "size": args.size, "seed": args.seed, "surrogates": members,
                     "max_queries": cfg["max_queries"], "search_space": cfg["search_space"],
                     "grades": {str(g): grades.count(g) for g in range(5)}, "wsm": "lesion boxes + anatomy zones"},
        "targets": {"grade": "<= chance (0.20) + 0.05, k-NN and centroid", "referable": "<= majority + 0.05"},
        "variants": variants,
        "machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads()},
        "code": _commit(),
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    name = f"placement_n{args.n}_s{args.size}_seed{args.seed}_sites-{args.sites.replace(',', '-')}.json"
    (out / name).write_text(json.dumps(result, indent=2) + "\n")
    print(f"bench_placement: {result['wall_seconds']:.0f} s; {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
