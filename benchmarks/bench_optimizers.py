"""Optimizer benchmark: random vs bhe vs medlocker, side by side on the same held-out images.

White-box: the demo surrogate the optimizers attack. Transfer: a second surrogate of another
architecture that the optimizers never query. Success is judged on the final uint8 artefact.

    python benchmarks/bench_optimizers.py --n 50 --size 512 --out benchmarks/results/optimizers

writes ``optimizers.json`` (per-image rows and aggregates), ``optimizers.md`` (tables) and
``montage.png`` (before/after examples) into the output folder.
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
from monai_medlocker.workflows.metrics import protection_metrics  # noqa: E402
from monai_medlocker.watermark import SearchSpace, get_optimizer, judge, load_logo, watermark_image  # noqa: E402



def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, channel_axis=2, data_range=255))


def held_out_images(n: int, size: int, seed: int, lab_version: int = 1):
    """Fresh synthetic test images (a seed range the demo model never trained on), grades balanced."""
    for i in range(n):
        sample = synthesize_fundus(size, seed=seed * 100_003 + i, grade=i % 5, lab_version=lab_version)
        masks = np.stack([sample.masks[t] for t in LESION_TYPES])
        yield f"img{i:03d}", sample.image, masks, sample.grade


def percentile(values, q):
    return float(np.percentile(values, q)) if values else None


def aggregate(rows: list[dict], model: str) -> dict:
    """Accuracy, ASR (over images the model got right before) and referable decisions, for one model."""
    return protection_metrics([r["grade"] for r in rows], [r[f"{model}_clean"] for r in rows],
                              [r[f"{model}_final"] for r in rows])


def variants(args) -> dict:
    """Benchmark rows: label -> (optimizer name, its settings, search space)."""
    space = SearchSpace.from_config(args.space)
    budget = {"max_queries": args.max_queries, "confidence": args.confidence}
    return {
        "random": ("random", {}, space),
        "bhe": ("bhe", {}, space),
        "medlocker": ("medlocker", budget, space),
        "medlocker-free": ("medlocker", {**budget, "gradient": False}, space),
        "medlocker-full": ("medlocker", budget, SearchSpace.from_config("full")),
    }


def run_optimizer(optimizer_name, opt_kwargs, space, images, white, transfer, logo, batch_size):
    rows, examples = [], []
    optimizer = get_optimizer(optimizer_name, **opt_kwargs)
    for idx, (image_id, image, masks, grade) in enumerate(images):
        boxes, _ = lesion_bboxes(masks, margin=2)
        wsm = wsm_from_boxes(boxes, image.shape[:2])
        t0 = time.perf_counter()
        out, rec = watermark_image(image, wsm, [white], logo, optimizer, space, label=grade, seed=idx,
                                   batch_size=batch_size)
        seconds = time.perf_counter() - t0
        changed = np.any(out != image, axis=-1)
        t_clean = judge(image, [transfer], grade)
        t_final = judge(out, [transfer], grade)
        rows.append({
            "image": image_id, "grade": grade,
            "white_clean": rec["clean"]["preds"][0], "white_final": rec["final"]["preds"][0],
            "transfer_clean": t_clean["preds"][0], "transfer_final": t_final["preds"][0],
            "queries": rec["queries"], "seconds": round(seconds, 4),
            "box_area_fraction": rec["box_area_fraction"],
            "wsm_pixels_changed": int((changed & wsm).sum()),
            "psnr": round(psnr(image, out), 3), "ssim": round(ssim(image, out), 5),
            "alpha": rec["marks"][0]["alpha"], "scale": rec["marks"][0]["scale"],
        })
        if idx < 4:
            examples.append((image, out))
    return rows, examples


def summarise(rows):
    q = [r["queries"] for r in rows]
    s = [r["seconds"] for r in rows]
    return {
        "white_box": aggregate(rows, "white"),
        "transfer": aggregate(rows, "transfer"),
        "queries_median": statistics.median(q), "queries_p90": percentile(q, 90), "queries_max": max(q),
        "seconds_median": round(statistics.median(s), 4), "seconds_p90": round(percentile(s, 90), 4),
        "box_area_fraction_median": statistics.median(r["box_area_fraction"] for r in rows),
        "wsm_pixels_changed_total": sum(r["wsm_pixels_changed"] for r in rows),
        "psnr_median": round(statistics.median(r["psnr"] for r in rows), 3),
        "ssim_median": round(statistics.median(r["ssim"] for r in rows), 5),
    }


def markdown(results: dict) -> str:
    lines = ["| optimizer | white acc (clean -> wm) | white ASR | transfer acc (clean -> wm) | transfer ASR | "
             "referable flips (white/transfer) | median / p90 queries | median / p90 s | box area | WSM px changed "
             "| PSNR | SSIM |", "|" + "---|" * 12]
    for name, r in results["optimizers"].items():
        w, t = r["white_box"], r["transfer"]
        lines.append(
            f"| {name} | {w['clean_accuracy']:.2f} -> {w['watermarked_accuracy']:.2f} | {w['asr']:.2f} | "
            f"{t['clean_accuracy']:.2f} -> {t['watermarked_accuracy']:.2f} | {t['asr']:.2f} | "
            f"{w['referable_flip_rate']:.2f} / {t['referable_flip_rate']:.2f} | "
            f"{r['queries_median']:.0f} / {r['queries_p90']:.0f} | {r['seconds_median']:.3f} / {r['seconds_p90']:.3f} | "
            f"{r['box_area_fraction_median']:.3f} | {r['wsm_pixels_changed_total']} | {r['psnr_median']:.1f} | "
            f"{r['ssim_median']:.3f} |")
    if "ratios_medlocker_vs_bhe" in results:
        lines += ["", "medlocker vs bhe: " + ", ".join(f"{k} {v}" for k, v in results["ratios_medlocker_vs_bhe"].items())]
    lines += ["", "Per true grade, white-box ASR:", "", "| optimizer | " + " | ".join(f"grade {g}" for g in range(5)) + " |",
              "|---|" + "---|" * 5]
    for name, r in results["optimizers"].items():
        pg = r["white_box"]["per_grade"]
        cells = [f"{pg[str(g)]['asr']:.2f}" if str(g) in pg and pg[str(g)]["asr"] is not None else "-" for g in range(5)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def save_montage(examples_by_opt: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(examples_by_opt)
    n = len(next(iter(examples_by_opt.values())))
    fig, axes = plt.subplots(n, len(names) + 1, figsize=(2.6 * (len(names) + 1), 2.6 * n))
    for i in range(n):
        axes[i, 0].imshow(examples_by_opt[names[0]][i][0])
        axes[i, 0].set_title("original" if i == 0 else "")
        for j, name in enumerate(names, start=1):
            axes[i, j].imshow(examples_by_opt[name][i][1])
            if i == 0:
                axes[i, j].set_title(name)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs/benchmarks/optimizers.json"),
                   help="JSON of defaults for the options below")
    p.add_argument("--n", type=int)
    p.add_argument("--size", type=int)
    p.add_argument("--seed", type=int, help="held-out image seed (training used 2026)")
    p.add_argument("--lab-version", type=int, choices=(1, 2),
                   help="lab version of the synthetic images "
                        "(config default 1: the committed results were made on lab v1; 2 = the realistic lab)")
    p.add_argument("--optimizers", help="comma-separated: random, bhe, medlocker, medlocker-free, medlocker-full")
    p.add_argument("--space", help="paper (position + alpha, as BHE) or full")
    p.add_argument("--max-queries", type=int, help="medlocker budget")
    p.add_argument("--confidence", type=float, help="medlocker margin target")
    p.add_argument("--white")
    p.add_argument("--white-network")
    p.add_argument("--transfer")
    p.add_argument("--transfer-network")
    p.add_argument("--threads", type=int)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/optimizers"))
    known, _ = p.parse_known_args(argv)
    defaults = {k: v for k, v in json.loads(Path(known.config).read_text()).items() if not k.startswith("_")}
    for key in ("white", "transfer"):
        defaults[key] = str(ROOT / defaults[key])
    p.set_defaults(**defaults)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    white = load_surrogate(args.white, args.white_network)
    transfer = load_surrogate(args.transfer, args.transfer_network)
    logo = load_logo()
    images = list(held_out_images(args.n, args.size, args.seed, args.lab_version))
    results = {"config": vars(args), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "machine": {"platform": platform.platform(), "processor": platform.machine(),
                           "torch_threads": torch.get_num_threads()},
               "optimizers": {}, "rows": {}}
    examples = {}
    table = variants(args)
    for name in args.optimizers.split(","):
        if name not in table:
            raise SystemExit(f"unknown optimizer row {name!r}; expected one of {', '.join(table)}")
        optimizer_name, kwargs, row_space = table[name]
        print(f"[bench] {name} on {len(images)} images ...", file=sys.stderr, flush=True)
        rows, ex = run_optimizer(optimizer_name, kwargs, row_space, images, white, transfer, logo, batch_size=32)
        results["rows"][name] = rows
        results["optimizers"][name] = summarise(rows)
        examples[name] = ex
        print(json.dumps({name: {k: v for k, v in results["optimizers"][name].items() if not isinstance(v, dict)}}),
              file=sys.stderr, flush=True)
    opt = results["optimizers"]
    if "bhe" in opt and "medlocker" in opt:
        m, b = opt["medlocker"], opt["bhe"]
        results["ratios_medlocker_vs_bhe"] = {
            "median_queries_bhe_over_medlocker": round(b["queries_median"] / max(m["queries_median"], 1), 2),
            "median_seconds_bhe_over_medlocker": round(b["seconds_median"] / max(m["seconds_median"], 1e-9), 2),
            "white_asr_medlocker_minus_bhe": round(m["white_box"]["asr"] - b["white_box"]["asr"], 4),
            "transfer_asr_medlocker_minus_bhe": round(m["transfer"]["asr"] - b["transfer"]["asr"], 4),
        }
    (out / "optimizers.json").write_text(json.dumps(results, indent=2))
    (out / "optimizers.md").write_text(markdown(results))
    save_montage(examples, out / "montage.png")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
