"""Cost benchmark: the default protect against ``bhe``, end to end, on the same lab-v2 images (issue 19, item 5).

N lab-v2 images (512 px, lab seed 31: the threat study's test seed) are written as PNGs without mask
files, so protect runs its whole chain: load, built-in lesion detector, WSM, search, render, certify,
PNG write. Each optimizer protects them twice in one process on one thread: once plain (the wall
times: median and p90 per image, from the manifest) and once under cProfile (the per-stage shares,
the model's forward and backward share included). The held-out zoo members then read the originals
and the published PNGs (``study_tools.predict`` and ``metrics.protection_metrics``, as the threat
study does; held-out ASR and accuracy are their means over the held-out members).

    OMP_NUM_THREADS=1 python benchmarks/bench_cost.py --n 20     # -> benchmarks/results/cost/cost.json

The machine may be shared: compare the ratios (bhe / default), measured in the same run, and the per-image CPU
seconds (process time of the one-thread protect step), which the neighbours' load moves far less than wall time.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import os
import platform
import pstats
import shutil
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monai_medlocker.cli import main as medlocker  # noqa: E402
from monai_medlocker.networks.zoo import load_zoo_config  # noqa: E402
from monai_medlocker.workflows.metrics import protection_metrics  # noqa: E402
from monai_medlocker.workflows.study_tools import predict  # noqa: E402
from monai_medlocker.workflows.threat_study import lab_study_images  # noqa: E402

# Stage -> (file suffix, function name) whose cumulative time is the stage's (pstats counts a recursive or
# nested call once, at its outermost frame).
STAGES = {
    "load": ("transforms/protect_steps.py", "__call__", "LoadFundusd"),
    "lesions": ("transforms/protect_steps.py", "__call__", "LesionMapsd"),
    "anatomy": ("transforms/protect_steps.py", "__call__", "AnatomyZonesd"),
    "wsm": ("transforms/dictionary.py", "__call__", "LesionBBoxMaskd"),
    "render_key": ("transforms/protect_steps.py", "__call__", "RenderKeyd"),
    "watermark": ("watermark/engine.py", "watermark_image", None),
    "optimize": ("watermark/optimizers/*", "search", None),
    "render": ("watermark/blend.py", "composite", None),
    "final_judge": ("watermark/engine.py", "judge", None),
    "invariants": ("watermark/engine.py", "_check_invariants", None),
    "certify": ("transforms/protect_steps.py", "__call__", "Certifyd"),
    "write": ("transforms/protect_steps.py", "__call__", "SaveProtectedd"),
    "model_forward": ("torch/nn/modules/module.py", "_call_impl", None),
    "model_backward": ("torch/autograd/__init__.py", "*", None),
}


def _first_lines(path: str) -> dict[str, int]:
    """Line numbers of each class's ``__call__`` in a source file (to tell the chain's steps apart)."""
    out, current = {}, None
    for i, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if line.startswith("class "):
            current = line[6:].split("(")[0].split(":")[0]
        elif line.strip().startswith("def __call__") and current:
            out[current] = i
    return out


def stage_seconds(stats: pstats.Stats) -> dict[str, float]:
    """Cumulative seconds per stage of a profile (see ``STAGES``)."""
    calls = {}
    for (filename, line, func), (_, _, _, cum, _) in stats.stats.items():
        calls.setdefault((filename.replace(os.sep, "/"), func), []).append((line, cum))
    lines = {}
    out = {}
    for stage, (suffix, func, cls) in STAGES.items():
        total = 0.0
        for (filename, f), entries in calls.items():
            if suffix.endswith("/*"):
                if suffix[:-1] not in filename:
                    continue
            elif not filename.endswith(suffix):
                continue
            if func != "*" and f != func:
                continue
            for line, cum in entries:
                if cls is not None:
                    lines.setdefault(filename, _first_lines(filename))
                    if lines[filename].get(cls) != line:
                        continue
                total += cum
        if suffix == "torch/autograd/__init__.py":  # backward() and grad(): take the outermost, not both
            total = max((cum for (filename, f), entries in calls.items() if filename.endswith(suffix)
                         and f in ("backward", "grad") for _, cum in entries), default=0.0)
        out[stage] = round(total, 3)
    return out


CPU_SECONDS: dict[str, float] = {}  # image stem -> CPU seconds of its protect step, the last run's


def _count_cpu_seconds() -> None:
    """Record each image's process CPU time beside the manifest's wall time: on a machine shared with other
    work the wall time follows the neighbours' load, the CPU time of this one-thread process much less."""
    from monai_medlocker.workflows.protect import DatasetProtector

    timed = DatasetProtector.protect_timed

    def protect_timed(self, item, out_path):
        start = time.process_time()
        outcome = timed(self, item, out_path)
        CPU_SECONDS[Path(str(item.relative)).stem] = time.process_time() - start
        return outcome

    DatasetProtector.protect_timed = protect_timed


def protect_run(in_dir: Path, out_dir: Path, optimizer: str, profile: bool, secret: Path) -> tuple[dict, pstats.Stats | None, float]:
    """``medlocker protect`` with ``optimizer`` (``name`` or ``name@Q``: ``--max-queries Q``); manifest rows by image stem.

    Every run uses the render secret ``secret``: a keyless run otherwise draws a new one, and the keyed rendering
    (hence the outcomes) would differ from run to run and between the optimizers.
    """
    from monai_medlocker.watermark.optimizers import PROTECT_DEFAULTS

    shutil.rmtree(out_dir, ignore_errors=True)
    CPU_SECONDS.clear()
    optimizer, *changes = optimizer.split(":")
    name, _, budget = optimizer.partition("@")
    cli = ["protect", str(in_dir), str(out_dir), "--quiet", "--optimizer", name, "--render-secret", str(secret)] + (
        ["--max-queries", budget] if budget else [])
    saved = dict(PROTECT_DEFAULTS.get(name, {}))
    # NAME:key=value (JSON value) changes one of protect's optimizer defaults for this run, e.g. medlocker:give_up=null
    if changes:
        PROTECT_DEFAULTS[name] = {**saved, **{k: json.loads(v) for k, _, v in (c.partition("=") for c in changes)}}
    prof = cProfile.Profile() if profile else None
    start = time.perf_counter()
    try:
        code = prof.runcall(medlocker, cli) if prof else medlocker(cli)
    finally:
        if changes:
            PROTECT_DEFAULTS[name] = saved
    wall = time.perf_counter() - start
    if code not in (0, 1) or not (out_dir / "private" / "manifest.jsonl").is_file():
        raise SystemExit(f"bench_cost: protect --optimizer {optimizer} exited {code}")
    # exit code 1: some images failed (e.g. bhe found no feasible box); they are listed under "failed", and the
    # held-out models read their originals (no protection)
    rows = [json.loads(line) for line in (out_dir / "private" / "manifest.jsonl").read_text().splitlines() if line.strip()]
    return {Path(r["image"]).stem: r for r in rows}, (pstats.Stats(prof) if prof else None), wall


def _pct(values, q):
    return round(float(np.percentile(values, q)), 4) if values else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--seed", type=int, default=31)
    p.add_argument("--optimizers", default="medlocker,bhe",
                   help="the first is the default protect; NAME@Q runs NAME with --max-queries Q, NAME:key=value with one of "
                   "protect's optimizer defaults changed (JSON value, e.g. medlocker:give_up=null); those are not profiled")
    p.add_argument("--work", default="/tmp/medlocker_bench_cost")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/cost/cost.json"))
    p.add_argument("--no-profile", action="store_true", help="skip the profiled pass (of the first optimizer only)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    _count_cpu_seconds()
    from PIL import Image

    work = Path(args.work)
    in_dir = work / "in"
    shutil.rmtree(in_dir, ignore_errors=True)
    in_dir.mkdir(parents=True)
    images = lab_study_images(args.n, args.size, args.seed, lab_version=2)
    for s in images:
        Image.fromarray(s.original).save(in_dir / f"{s.image_id}.png")
    secret = work / "render_secret"  # one render secret for every run, from the seed (see protect_run)
    secret.write_bytes(hashlib.sha256(f"bench_cost:{args.seed}".encode()).digest())
    zoo = load_zoo_config(None)
    held_out = {m.name: m.load(zoo.num_classes) for m in zoo.by_role("held_out")}
    grades = np.array([s.grade for s in images])
    clean_preds = predict(held_out, [s.original for s in images])

    results = {}
    for name in args.optimizers.split(","):
        rows, _, wall = protect_run(in_dir, work / name, name, profile=False, secret=secret)
        seconds = [r["seconds"] for r in rows.values()]
        cpu = [CPU_SECONDS[stem] for stem in rows if stem in CPU_SECONDS]
        queries = [r.get("queries") or 0 for r in rows.values()]
        protected = []
        for s in images:
            r = rows.get(s.image_id)
            path = work / name / r["output"] if r and r.get("output") else None
            protected.append(np.asarray(Image.open(path).convert("RGB")) if path else s.original)
        preds = predict(held_out, protected)
        metrics = {m: protection_metrics(grades, clean_preds[m], preds[m]) for m in held_out}
        entry = {
            "wall_seconds": round(wall, 2),
            "seconds_per_image": {"median": _pct(seconds, 50), "p90": _pct(seconds, 90), "mean": round(statistics.mean(seconds), 4)},
            "cpu_seconds_per_image": {"median": _pct(cpu, 50), "p90": _pct(cpu, 90), "mean": round(statistics.mean(cpu), 4)},
            "queries": {"median": _pct(queries, 50), "p90": _pct(queries, 90), "mean": round(statistics.mean(queries), 1)},
            "fooled_ensemble": sum(bool(r.get("success")) for r in rows.values()),
            "failed": [r.get("error") for r in rows.values() if r.get("status") == "failed"],
            "held_out_clean_accuracy": round(statistics.mean(m["clean_accuracy"] for m in metrics.values()), 4),
            "held_out_accuracy": round(statistics.mean(m["watermarked_accuracy"] for m in metrics.values()), 4),
            "held_out_asr": round(statistics.mean(m["asr"] for m in metrics.values() if m["asr"] is not None), 4),
            "held_out": {m: {k: v[k] for k in ("clean_accuracy", "watermarked_accuracy", "asr")} for m, v in metrics.items()},
        }
        if not args.no_profile and name == args.optimizers.split(",")[0] and "@" not in name and ":" not in name:
            _, stats, pwall = protect_run(in_dir, work / f"{name}-profiled", name, profile=True, secret=secret)
            stages = stage_seconds(stats)
            chain = sum(stages[k] for k in ("load", "lesions", "anatomy", "wsm", "render_key", "watermark", "certify", "write"))
            model = stages["model_forward"] + stages["model_backward"]
            entry["profile"] = {"wall_seconds": round(pwall, 2),
                                # the surrogates' forward and backward passes over the per-image protect chain
                                # (the stages above, under cProfile, which inflates Python-heavy code the most)
                                "model_share_of_chain": round(model / chain, 3) if chain else None,
                                "model_share_of_watermark": round(model / stages["watermark"], 3) if stages["watermark"] else None,
                                "stage_seconds_per_image": {k: round(v / args.n, 4) for k, v in stages.items()},
                                "stage_share_of_wall": {k: round(v / pwall, 3) for k, v in stages.items()},
                                "top_functions_tottime": _top(stats)}
        results[name] = entry
        print(f"{name:>10}: {entry['seconds_per_image']} s/img, CPU {entry['cpu_seconds_per_image']} s/img, queries {entry['queries']}, held-out acc "
              f"{entry['held_out_clean_accuracy']} -> {entry['held_out_accuracy']} (ASR {entry['held_out_asr']})", flush=True)
        _write_summary(args, argv, results, held_out)
        if "profile" in entry:
            print(f"{'':>10}  stage s/img {entry['profile']['stage_seconds_per_image']}; model share of the chain "
                  f"{entry['profile']['model_share_of_chain']}, of the watermark step {entry['profile']['model_share_of_watermark']}",
                  flush=True)

    _write_summary(args, argv, results, held_out, final=True)
    return 0


def _write_summary(args, argv, results: dict, held_out: dict, final: bool = False) -> None:
    """Write the JSON (after each optimizer, so that a run cut short keeps what it measured)."""
    names = list(results)
    base = names[0]
    ratios = {other: {f"{kind}_{stat}": round(results[other][kind][stat] / results[base][kind][stat], 2)
                      for kind in ("seconds_per_image", "cpu_seconds_per_image", "queries") for stat in ("median", "mean")}
              for other in names[1:]}
    summary = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "OMP_NUM_THREADS=1 python benchmarks/bench_cost.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "images": {"n": args.n, "size": args.size, "lab_seed": args.seed, "lab_version": 2},
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "cpus": os.cpu_count()},
        "held_out_members": list(held_out),
        "render_secret": "sha256('bench_cost:<seed>'), the same for every optimizer",
        "optimizers": results,
        f"cost_ratio_vs_{base}": ratios,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    if final:
        print(f"cost ratio (x / {base}): {ratios}; results in {out}")


def _top(stats: pstats.Stats, k: int = 15) -> list[dict]:
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:k]
    return [{"function": f"{Path(fn).name}:{line}:{func}", "tottime": round(tt, 3), "cumtime": round(ct, 3)}
            for (fn, line, func), (_, _, tt, ct, _) in rows]


if __name__ == "__main__":
    sys.exit(main())
