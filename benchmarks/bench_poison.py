"""Poison benchmark: does a protection variant's shield spoil a thief who trains on its cleaned release?

Issue 17 item 6. For each variant of ``configs/benchmarks/poison.json`` (a shield setting, or none for
the mark alone), the thief's lab is protected with the protect defaults plus that shield, every mark is
inpainted (Telea over the true footprints: the thief's best case), and each thief family is trained on
it with the true labels (``workflows.unauthorised.unauthorised_training``; the clean-trained baseline is
trained once and shared by the variants). Reported: each family's clean-test accuracy, last epoch and
peak, as a ratio of the clean-trained recipe's (the issue's target: <= 0.6).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_poison.py --out benchmarks/results/poison/poison.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from bench_common import result_header  # noqa: E402
from monai_medlocker.networks import load_protect_surrogates  # noqa: E402
from monai_medlocker.networks.zoo import load_zoo_config  # noqa: E402
from monai_medlocker.workflows.threat_study import lab_study_images  # noqa: E402
from monai_medlocker.workflows.unauthorised import unauthorised_training  # noqa: E402


def settings_key(settings: dict) -> str:
    """A short hash of JSON settings (a folder name's suffix)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def table(results: dict) -> str:
    lines = ["| variant | family | clean-trained acc | cleaned-release acc (last / peak) | ratio (last) | variant wall s (the first includes the shared baseline) |",
             "|---|---|---|---|---|---|"]
    for name, v in results.items():
        by = {(r["family"], r["trained_on"]): r for r in v["rows"]}
        for family in sorted({f for f, _ in by}):
            clean, cleaned = by.get((family, "clean")), by.get((family, "cleaned"))
            if not (clean and cleaned):
                continue
            lines.append(f"| {name} | {family} | {clean['clean_last']:.3f} | {cleaned['clean_last']:.3f} / "
                         f"{cleaned['clean_peak']:.3f} | {v['ratios'][family]['cleaned']:.2f} | {v['wall_seconds']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs/benchmarks/poison.json"))
    p.add_argument("--variants", default=None, help="comma-separated variant names (default: all of the config's)")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/poison/poison.json"))
    p.add_argument("--work", default="/tmp/medlocker_bench_poison", help="the thief's folder (labs, checkpoints)")
    args = p.parse_args(argv)
    cfg = json.loads(Path(args.config).read_text())
    torch.set_num_threads(cfg.get("threads", 1))
    names = args.variants.split(",") if args.variants else list(cfg["variants"])
    unknown = [n for n in names if n not in cfg["variants"]]
    if unknown:
        raise SystemExit(f"{args.config}: unknown variant(s) {unknown}; known: {', '.join(cfg['variants'])}")
    thief, test = cfg["thief"], cfg["test"]
    images = lab_study_images(test["n"], test["size"], test["seed"])
    test_images, grades = {"clean": [s.original for s in images]}, [s.grade for s in images]
    members = json.loads((ROOT / "bundle/configs/evaluate_protection.json").read_text())["surrogate"]["members"]
    zoo, surrogates = load_zoo_config(), load_protect_surrogates(members, checkpoint_dir=ROOT / "bundle/models/zoo")
    # folders keyed by what made them, so that a changed thief recipe or shield never reuses old labs or models
    work = Path(args.work)
    shared = work / f"shared-{settings_key({'thief': thief, 'members': members})}"
    (shared / "models").mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = json.loads(out.read_text()) if out.is_file() else {}
    summary.update({**result_header("the thief trains on a cleaned release: shield variants", __file__, argv),
                    "config": cfg, "machine": {"platform": platform.platform(), "torch": torch.__version__,
                                               "threads": torch.get_num_threads()}})
    results = summary.setdefault("variants", {})
    for name in names:
        folder = work / f"{name}-{settings_key({'thief': thief, 'members': members, 'shield': cfg['variants'][name]})}"
        (folder / "models").mkdir(parents=True, exist_ok=True)
        # one clean lab and one clean-trained model per family, shared by every variant
        links = [(folder / "clean_lab", shared / "clean_lab")] + [
            (folder / "models" / f"{f}_clean", shared / "models" / f"{f}_clean") for f in thief["families"]]
        for link, target in links:  # the first variant fills the targets through its links
            target.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(target, target_is_directory=True)
        settings = {"optimizer": "medlocker", "shield": cfg["variants"][name]}
        start = time.perf_counter()
        report = unauthorised_training(folder, zoo, surrogates, settings, test_images, grades, marked=False,
                                       progress=True, **thief)
        results[name] = {"shield": cfg["variants"][name], "ratios": report["ratios"], "description": report["description"],
                         "wall_seconds": round(time.perf_counter() - start, 1),
                         "rows": report["rows"]}
        out.write_text(json.dumps(summary, indent=2) + "\n")
        print(table({name: results[name]}), end="", flush=True)
    out.with_suffix(".md").write_text(table(results))
    print(table(results), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
