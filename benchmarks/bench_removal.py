"""How well each removal attack restores the logo box, and what it costs per image.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_removal.py --n 10 --size 512 \
        --out benchmarks/results/removal.json

N lab images (owner seed ``--seed``) are protected with one plain random mark each (the control of
the threat study: uniform position, the engine's scales 0.2/0.25/0.3 of the shorter side, opacity
cap 100/255-1, no model). Each attack of :mod:`monai_medlocker.threats.removal` restores them; per
attack: the mean and minimum box PSNR and the mean box SSIM against the original
(:func:`~monai_medlocker.threats.removal.box_fidelity`, over the true logo box) and the seconds per
image. The learned remover is trained first by the thief on their own lab seed (``--remover`` loads
a checkpoint instead; ``--quick`` uses the CI setting); its training time and held-out report are
recorded. The collection attack is fitted on the N protected images themselves (the release) and
its fit time is reported apart. :func:`run` is the same measurement as a function.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monai_medlocker.threats import removal as rm  # noqa: E402
from monai_medlocker.watermark.logo import load_logo  # noqa: E402


PRESETS = {"quick": rm.QUICK_REMOVER, "thief": rm.THIEF_REMOVER, "default": {}}


def run(n: int = 10, size: int = 512, seed: int = 2026, remover: str | None = None, quick: bool = False,
        remover_out: str | None = None, preset: str | None = None, remover_seed: int = rm.THIEF_LAB_SEED,
        attack_names: list[str] | None = None) -> dict:
    """Measure every removal attack on ``n`` protected lab images; returns the JSON-ready result."""
    logo = load_logo()
    pairs = rm.make_lab_pairs(n, size, seed, logo, continuous=False)
    result: dict = {"n": n, "size": size, "owner_seed": seed, "thief_seed": remover_seed}
    if remover:
        learned = rm.LearnedRemover.from_checkpoint(remover)
        result["remover"] = {"checkpoint": remover, **learned.report}
    else:
        if preset is not None:  # the preset's recipe at the images' size, as the threat study trains it
            settings = {**PRESETS[preset], "size": size}
        else:
            settings = dict(rm.QUICK_REMOVER) if quick else {}
        learned, report = rm.train_remover(remover_out, seed=remover_seed, progress=True, **settings)
        result["remover"] = {"preset": preset or ("quick" if quick else "default"), **report}
    collection = None
    if not attack_names or "collection" in attack_names:
        start = time.perf_counter()
        collection = rm.CollectionAttack().fit([m for _, m, _ in pairs], logo)
        result["collection_fit_seconds"] = round(time.perf_counter() - start, 3)
        result["collection_images_used"] = collection.n_used
    attacks = {
        "none": lambda y, lg, p: y,
        "informed_inverse": rm.informed_inverse_blend,
        "blind_inverse": rm.blind_inverse_blend,
        "inpaint_telea (traced)": rm.inpaint_telea,
        "inpaint_ns (traced)": rm.inpaint_navier_stokes,
        "inpaint_biharmonic (traced)": rm.inpaint_biharmonic,
        "inpaint_telea (located)": lambda y, lg, p: rm.inpaint_telea(y, lg, None),
        "learned_remover": learned,
        "collection": collection,
    }
    if attack_names:
        attacks = {k: v for k, v in attacks.items() if k in attack_names}
    rows = {}
    for name, attack in attacks.items():
        psnr, ssim, secs = [], [], []
        for clean, marked, p in pairs:
            t0 = time.perf_counter()
            out = attack(marked, logo, [p])
            secs.append(time.perf_counter() - t0)
            f = rm.box_fidelity(out, clean, [p])
            psnr.append(f["psnr"])
            ssim.append(f["ssim"])
        rows[name] = {"psnr_mean": round(float(np.mean(psnr)), 2), "psnr_min": round(float(np.min(psnr)), 2),
                      "ssim_mean": round(float(np.mean(ssim)), 4), "seconds_per_image": round(float(np.mean(secs)), 4)}
    result["attacks"] = rows
    result["alphas"] = [round(p.alpha, 3) for _, _, p in pairs]
    return result


def markdown(result: dict) -> str:
    lines = [f"Box fidelity of each removal attack on {result['n']} lab images of {result['size']} px "
             f"(one plain random mark each):", "",
             "| attack | box PSNR mean (dB) | min | box SSIM mean | s / image |", "|---|---|---|---|---|"]
    for name, r in result["attacks"].items():
        lines.append(f"| {name} | {r['psnr_mean']} | {r['psnr_min']} | {r['ssim_mean']} | {r['seconds_per_image']} |")
    rem = result["remover"]
    if "held_out" in rem:
        lines += ["", f"Learned remover ({rem.get('preset', 'checkpoint')}, thief seed {rem['config']['seed']}): "
                      f"trained in {rem['train_seconds']} s; on its own held-out pairs, box PSNR "
                      f"{rem['held_out']['protected_psnr']} -> {rem['held_out']['restored_psnr']} dB."]
    if "learned_remover" in result["attacks"] and "none" in result["attacks"]:
        gain = result["attacks"]["learned_remover"]["psnr_mean"] - result["attacks"]["none"]["psnr_mean"]
        lines += [f"Learned remover on the owner's {result['n']} held-out images: box PSNR gain {gain:.2f} dB over the marked image."]
    if "collection_images_used" in result:
        lines += [f"Collection attack: fitted on {result['collection_images_used']} images in "
                  f"{result['collection_fit_seconds']} s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=2026, help="the owner's lab seed (the thief trains on another)")
    ap.add_argument("--remover", help="a learned-remover checkpoint to use instead of training one")
    ap.add_argument("--remover-out", help="where to save the remover trained here")
    ap.add_argument("--quick", action="store_true", help="train the remover at the CI setting")
    ap.add_argument("--preset", choices=sorted(PRESETS), help="train the remover with this recipe at --size "
                    "(quick: the study's quick thief; thief: THIEF_REMOVER)")
    ap.add_argument("--remover-seed", type=int, default=rm.THIEF_LAB_SEED,
                    help="lab seed of the remover's training images (the owner's objective remover uses OWNER_REMOVER_SEED)")
    ap.add_argument("--attacks", default=None, help="comma-separated attack rows to run (default all)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "removal.json"))
    args = ap.parse_args(argv)
    start = time.perf_counter()
    import torch

    torch.set_num_threads(1)
    result = run(args.n, args.size, args.seed, args.remover, args.quick, args.remover_out, args.preset,
                 args.remover_seed, args.attacks.split(",") if args.attacks else None)
    result["command"] = " ".join(sys.argv)
    result["total_seconds"] = round(time.perf_counter() - start, 1)
    result["machine"] = {"python": platform.python_version(), "processor": platform.processor() or platform.machine()}
    result["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
