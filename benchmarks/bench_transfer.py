"""Transfer benchmark: protect settings side by side on held-out zoo models (issue 11, item 3).

Each variant of ``configs/benchmarks/transfer.json`` (surrogate = one zoo source or an ensemble of
them, optimizer settings such as EOT views, search space) protects the same lab images; the threat
study (``workflows.threat_study.ThreatStudy``, rows ``none`` + the variant's rows, no transfer matrix
and no unauthorised training) measures every zoo model under the thief's preprocessing and the
configured removal attacks. One summary JSON per run:

    python benchmarks/bench_transfer.py --set tune          # lab seed 77: choose the defaults here
    python benchmarks/bench_transfer.py --set check         # lab seed 31, n=40 at 512 px: the mid-size check

Tune on seed 77 only; seed 31 is the study's test set.
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

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monai_medlocker.networks import load_zoo_surrogates  # noqa: E402
from monai_medlocker.workflows.threat_study import ThreatStudy, lab_study_images  # noqa: E402

HEADLINE_KEYS = ("held_out_clean_accuracy", "held_out_accuracy", "held_out_asr", "held_out_accuracy_worst_preprocessing",
                 "held_out_accuracy_per_preprocessing", "white_box_clean_accuracy", "white_box_accuracy",
                 "seconds_per_image_median", "queries_median", "box_area_fraction_median")


def cpu_seconds(variant: dict, images: list, surrogates: list) -> dict:
    """Process (CPU) seconds per image of the variant's protect search on ``images``, one thread.

    The wall seconds of a shared machine move with the neighbours' load; the process time of a one-thread
    search moves far less, so variants are compared on it (median and the per-image list).
    """
    from monai_medlocker.watermark import watermark_image
    from monai_medlocker.workflows.study_tools import protect_tools, study_render_key

    settings = {"optimizer": variant.get("optimizer", "medlocker"), "optimizer_kwargs": variant.get("optimizer_kwargs", {}),
                "max_queries": variant.get("max_queries"), "search_space": variant.get("search_space", "full")}
    optimizer, space, logo = protect_tools(settings)
    seconds, queries = [], []
    for i, s in enumerate(images):
        start = time.process_time()
        _, rec = watermark_image(s.original, s.wsm, surrogates, logo, optimizer, space, label=s.grade, seed=i,
                                 render_key=study_render_key(s.image_id, i))
        seconds.append(round(time.process_time() - start, 3))
        queries.append(rec["queries"])
    return {"n": len(images), "cpu_seconds_per_image_median": round(statistics.median(seconds), 3),
            "cpu_seconds_per_image": seconds, "queries": queries}


def run_variant(variant: dict, images: list, work: Path, attacks: list[str], cost_n: int = 0) -> dict:
    surrogates = load_zoo_surrogates(variant["surrogate"])
    rows = variant.get("rows", ["medlocker"])
    study = ThreatStudy(
        work / variant["name"], surrogates, images=images, rows=["none", *rows], attacks=attacks,
        optimizer=variant.get("optimizer", "medlocker"), optimizer_kwargs=variant.get("optimizer_kwargs", {}),
        max_queries=variant.get("max_queries"), search_space=variant.get("search_space", "full"),
        transfer_matrix=False, unauthorised_training=None, progress=False,
    )
    start = time.perf_counter()
    results = study.run()
    out = {"variant": variant, "wall_seconds": round(time.perf_counter() - start, 1), "rows": {}}
    for row in rows:
        h = results["headline"][row]
        removal = {a: by_row.get(row) for a, by_row in (results.get("removal_summary") or {}).items()}
        out["rows"][row] = {**{k: h[k] for k in HEADLINE_KEYS},
                            "removal_held_out_accuracy": {a: v and v["held_out_accuracy"] for a, v in removal.items()},
                            "removal_white_box_accuracy": {a: v and v["white_box_accuracy"] for a, v in removal.items()},
                            # every zoo model on the plain protected images, by role (held-out families one by one)
                            "per_model": {m: {"role": results["models"][m]["role"],
                                              "clean_accuracy": v["clean_accuracy"],
                                              "accuracy": v["watermarked_accuracy"]}
                                          for m, v in results["preprocessing"]["none"][row].items()}}
    out["errors"] = results["errors"]
    if cost_n:
        out["cost"] = cpu_seconds(variant, images[:cost_n], surrogates)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs/benchmarks/transfer.json"))
    p.add_argument("--set", dest="run_set", default="tune", help="a run set of the config (tune, check, ...)")
    p.add_argument("--variants", default=None, help="comma-separated variant names (default: the set's list)")
    p.add_argument("--out", default=None, help="summary JSON (default: benchmarks/results/transfer/<set>.json)")
    p.add_argument("--cost-only", type=int, default=0, metavar="N",
                   help="only time the variants' searches (CPU s/image, one thread) on the set's first N images, side by "
                        "side in this one process; stored under each variant's 'cost'")
    p.add_argument("--work", default="/tmp/medlocker_bench_transfer", help="scratch folder for the study outputs")
    args = p.parse_args(argv)
    cfg = json.loads(Path(args.config).read_text())
    run = cfg["sets"][args.run_set]
    torch.set_num_threads(cfg.get("threads", 1))
    names = args.variants.split(",") if args.variants else run["variants"]
    unknown = [n for n in names if n not in cfg["variants"]]
    if unknown:
        raise SystemExit(f"{args.config}: unknown variant(s) {unknown}; known: {', '.join(cfg['variants'])}")
    images = lab_study_images(run["n"], run["size"], run["seed"])
    out_path = Path(args.out or ROOT / "benchmarks/results/transfer" / f"{args.run_set}.json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    summary = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "command": "python benchmarks/bench_transfer.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "set": {"name": args.run_set, **run}, "machine": {"platform": platform.platform(),
               "torch": torch.__version__, "threads": torch.get_num_threads()}, "variants": {}}
    if out_path.is_file():  # a partial re-run (--variants) keeps the other variants' results
        summary["variants"] = json.loads(out_path.read_text()).get("variants", {})
    if args.cost_only:
        for name in names:
            variant = {"name": name, **cfg["variants"][name]}
            cost = cpu_seconds(variant, images[: args.cost_only], load_zoo_surrogates(variant["surrogate"]))
            summary["variants"].setdefault(name, {"variant": variant})["cost"] = {**cost, "command": summary["command"]}
            print(f"{name:>24} cost: {cost['cpu_seconds_per_image_median']} CPU s/image (median of {cost['n']}, "
                  f"one thread), queries {cost['queries']}", flush=True)
            out_path.write_text(json.dumps(summary, indent=2) + "\n")
        return 0
    for name in names:
        result = run_variant({"name": name, **cfg["variants"][name]}, images, Path(args.work) / args.run_set, run["attacks"],
                             run.get("cost_n", 0))
        result["command"] = summary["command"]  # a file filled by several partial runs keeps each one's command
        if "cost" in summary["variants"].get(name, {}):
            result.setdefault("cost", summary["variants"][name]["cost"])
        summary["variants"][name] = result
        for row, r in result["rows"].items():
            held = {m: v["accuracy"] for m, v in r["per_model"].items() if v["role"] == "held_out"}
            print(f"{name:>24} {row:>9}: held-out per family " + ", ".join(f"{m} {a:.3f}" for m, a in held.items()))
            print(f"{name:>24} {row:>9}: held-out {r['held_out_clean_accuracy']:.3f} -> {r['held_out_accuracy']:.3f}"
                  f" (worst prep {r['held_out_accuracy_worst_preprocessing']:.3f}), white-box "
                  f"{r['white_box_clean_accuracy']:.3f} -> {r['white_box_accuracy']:.3f}, "
                  f"{r['seconds_per_image_median']} s/img, {r['queries_median']} queries, "
                  f"area {r['box_area_fraction_median']}, removal {r['removal_held_out_accuracy']}", flush=True)
        if "cost" in result:
            print(f"{name:>24} cost: {result['cost']['cpu_seconds_per_image_median']} CPU s/image (median of "
                  f"{result['cost']['n']}, one thread)", flush=True)
        out_path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"bench_transfer: results in {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
