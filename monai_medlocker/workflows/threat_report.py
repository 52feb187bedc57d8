"""The threat study's report: Markdown tables, a console summary and PNG plots from its results dict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["markdown", "summary", "plots", "montage"]


def _f(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _held_out(results: dict) -> list[str]:
    return [m for m, v in results["models"].items() if v["role"] == "held_out"]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def markdown(results: dict) -> str:
    """The whole report as Markdown."""
    held = _held_out(results)
    models = list(results["models"])
    head = results["headline"]
    s = results["settings"]
    lines = [
        "# Threat study", "",
        f"{s['images']} test images ({', '.join(f'grade {g}: {n}' for g, n in results['grades'].items())}); "
        f"protect settings {s['protect']}; white-box surrogate `{s['surrogate']}`; zoo `{s['zoo']}`; quick={s['quick']}.",
        f"Held-out models (never queried by the optimizer): {', '.join(held)}. "
        f"Accuracy is eval-mode top-1 over the 5 grades; ASR is over images the model got right on the originals "
        "(with the same preprocessing).", "",
        "## Headline (no thief preprocessing)", "",
    ]
    lines += _table(
        ["row", "held-out acc (clean -> protected)", "held-out ASR", "held-out referable flips",
         "worst over preprocessing", "white-box acc (clean -> protected)", "median s/image", "median queries",
         "box area"],
        [[r, f"{_f(h['held_out_clean_accuracy'])} -> {_f(h['held_out_accuracy'])}", _f(h["held_out_asr"]),
          _f(h["held_out_referable_flip_rate"]), _f(h["held_out_accuracy_worst_preprocessing"]),
          f"{_f(h['white_box_clean_accuracy'])} -> {_f(h['white_box_accuracy'])}", _f(h["seconds_per_image_median"], 3),
          _f(h["queries_median"], 0), _f(h["box_area_fraction_median"], 3)] for r, h in head.items()])
    leaks = {r: h.get("placement_leak") for r, h in head.items() if (h.get("placement_leak") or {}).get("grade")}
    if leaks:
        lines += ["", "## Does the visible placement tell the grade? (leave-one-out on the marks' boxes and rotations)", ""]
        lines += _table(["row", "images", "grade: majority rate", "grade: k-NN", "grade: centroid",
                         "referable: majority rate", "referable: k-NN", "referable: centroid"],
                        [[r, str(v["images"])] + [_f(v[t][k]) for t in ("grade", "referable")
                                                  for k in ("majority_rate", "knn_accuracy", "centroid_accuracy")]
                         for r, v in leaks.items()])
    lines += ["", "## Accuracy per model (no preprocessing)", ""]
    none = results["preprocessing"]["none"]
    lines += _table(["row"] + [f"{m} ({results['models'][m]['role']})" for m in models],
                    [[r] + [_f(none[r][m]["watermarked_accuracy"]) for m in models] for r in none])
    lines += ["", "## Held-out mean accuracy per thief preprocessing", ""]
    preps = list(results["preprocessing"])
    lines += _table(["row"] + preps, [[r] + [_f(h["held_out_accuracy_per_preprocessing"][p]) for p in preps]
                                      for r, h in head.items()])
    lines += ["", "Per model and preprocessing, protected rows (accuracy):", ""]
    rows_out = []
    for p in preps:
        for r in results["preprocessing"][p]:
            if r == "none":
                continue
            rows_out.append([p, r] + [_f(results["preprocessing"][p][r][m]["watermarked_accuracy"]) for m in models])
    lines += _table(["preprocessing", "row"] + models, rows_out)
    if results.get("transfer_matrix"):
        tm = results["transfer_matrix"]
        lines += ["", "## Source x target accuracy (the optimizer attacks the source alone; `clean` = originals)", ""]
        lines += _table(["source \\ target"] + models, [[src] + [_f(v.get(m)) for m in models] for src, v in tm.items()])
    if results.get("removal_summary"):
        lines += ["", "## Removal attacks (held-out mean accuracy after removal; PSNR/SSIM of the logo boxes "
                  "against the originals)", ""]
        rows_out = []
        for attack, by_row in results["removal_summary"].items():
            for r, v in by_row.items():
                if v is None:
                    rows_out.append([attack, r, "failed (see Problems)", "-", "-", "-", "-"])
                    continue
                rows_out.append([attack, r, f"{_f(head[r]['held_out_accuracy'])} -> {_f(v['held_out_accuracy'])}",
                                 f"{_f(head[r]['white_box_accuracy'])} -> {_f(v['white_box_accuracy'])}",
                                 f"{_f(v['protected_box_psnr_median'], 1)} -> {_f(v['box_psnr_median'], 1)}",
                                 _f(v["box_ssim_median"], 3), _f(v["seconds_per_image_median"], 3)])
        lines += _table(["attack", "row", "held-out acc (protected -> removed)", "white-box acc (protected -> removed)",
                         "box PSNR dB (protected -> removed; 99 = exact)", "box SSIM", "s/image"], rows_out)
        lines += ["", "Threat models: `informed_inverse` knows the logo, box and opacity (the upper bound); `blind_inverse` "
                  "knows only the public logo and search space; the inpaintings fill the logo's footprint as traced by "
                  "hand; `learned_remover` is a UNet the thief trained on pairs made with this code and logo on its own "
                  "images; `collection` estimates the watermark from the whole release (Dekel et al. 2017)."]
        rt = s.get("remover_training") or {}
        pairs = (rt.get("report") or {}).get("held_out") or {}
        if pairs:
            lines += ["", f"Learned remover: {json.dumps(rt.get('settings'))}; on its own held-out pairs: "
                      + ", ".join(f"{k} {v}" for k, v in pairs.items() if isinstance(v, (int, float)))]
    main = "medlocker" if "medlocker" in none else None
    if main:
        lines += ["", f"## Per true grade, `{main}` row, held-out models (accuracy clean -> protected)", ""]
        grades = sorted({g for m in held for g in none[main][m]["per_grade"]}, key=int)
        lines += _table(["model"] + [f"grade {g}" for g in grades] + ["referable acc (clean -> protected)"],
                        [[m] + [f"{_f(none[main][m]['per_grade'][g]['clean_accuracy'])} -> "
                                f"{_f(none[main][m]['per_grade'][g]['watermarked_accuracy'])}"
                                if g in none[main][m]["per_grade"] else "-" for g in grades]
                         + [f"{_f(none[main][m]['referable_clean_accuracy'])} -> "
                            f"{_f(none[main][m]['referable_watermarked_accuracy'])}"] for m in held])
    training = results.get("unauthorised_training")
    if training:
        lines += ["", "## Unauthorised training (the thief trains on the protected training split, true labels)", "",
                  training.get("description", ""), ""]
        lines += _table(["family", "trained on", "clean test acc (peak / last)", "protected test acc (peak / last)",
                         "epochs"],
                        [[r["family"], r["trained_on"], f"{_f(r['clean_peak'])} / {_f(r['clean_last'])}",
                          f"{_f(r.get('protected_peak'))} / {_f(r.get('protected_last'))}", str(r["epochs"])]
                         for r in training["rows"]])
        ratios = training.get("ratios") or {}
        if ratios:
            lines += ["", "Clean-test accuracy (last epoch) of each thief over the same recipe trained on clean "
                      "images (target for the cleaned release: <= 0.6):", ""]
            kinds = sorted({k for v in ratios.values() for k in v})
            lines += _table(["family"] + [f"trained on {k}" for k in kinds],
                            [[fam] + [_f(v.get(k)) for k in kinds] for fam, v in ratios.items()])
    lines += ["", "## Cost (seconds on this machine)", ""]
    lines += _table(["stage", "seconds"], [[k, _f(v, 1)] for k, v in results["timings_seconds"].items()])
    if results["errors"]:
        lines += ["", "## Problems", ""] + [f"- {e['file']}: {e['error']}" for e in results["errors"]]
    return "\n".join(lines) + "\n"


def summary(results: dict) -> str:
    """A short console summary."""
    out = [f"threat study: {results['settings']['images']} images, held-out models: {', '.join(_held_out(results))}"]
    for r, h in results["headline"].items():
        out.append(f"  {r:10s} held-out acc {_f(h['held_out_clean_accuracy'])} -> {_f(h['held_out_accuracy'])} "
                   f"(worst preprocessing {_f(h['held_out_accuracy_worst_preprocessing'])}), "
                   f"white-box {_f(h['white_box_clean_accuracy'])} -> {_f(h['white_box_accuracy'])}")
    if results.get("removal_summary"):
        for attack, by_row in results["removal_summary"].items():
            v = by_row.get("medlocker")
            if v and v["held_out_accuracy"] is not None:
                out.append(f"  after {attack:22s} medlocker held-out acc {_f(v['held_out_accuracy'])}, "
                           f"box PSNR {_f(v['box_psnr_median'], 1)} dB")
    if results["errors"]:
        out.append(f"  {len(results['errors'])} problem(s): see threats.md")
    out.append(f"  total {results['timings_seconds'].get('total')} s")
    return "\n".join(out)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plots(results: dict, out_dir: Path) -> None:
    """``transfer_matrix.png``, ``preprocessing.png`` and ``removal.png`` (when the study has them)."""
    plt = _plt()
    models = list(results["models"])
    if results.get("transfer_matrix"):
        tm = results["transfer_matrix"]
        data = np.array([[np.nan if tm[s].get(t) is None else tm[s][t] for t in models] for s in tm])
        fig, ax = plt.subplots(figsize=(1.1 * len(models) + 2, 0.6 * len(tm) + 1.8))
        im = ax.imshow(data, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(models)), [f"{m}\n({results['models'][m]['role']})" for m in models], fontsize=7)
        ax.set_yticks(range(len(tm)), list(tm), fontsize=8)
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                if not np.isnan(data[i, j]):
                    ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if data[i, j] < 0.5 else "black")
        ax.set_xlabel("target model")
        ax.set_ylabel("source model attacked")
        ax.set_title("accuracy on protected images")
        fig.colorbar(im, ax=ax, fraction=0.03)
        fig.tight_layout()
        fig.savefig(out_dir / "transfer_matrix.png", dpi=110)
        plt.close(fig)
    head = results["headline"]
    preps = list(results["preprocessing"])
    _grouped_bars(plt, preps, {r: [h["held_out_accuracy_per_preprocessing"][p] for p in preps] for r, h in head.items()},
                  "held-out mean accuracy", "accuracy per thief preprocessing", out_dir / "preprocessing.png")
    if results.get("removal_summary"):
        rs = results["removal_summary"]
        attacks = list(rs)
        series = {r: [(rs[a].get(r) or {}).get("held_out_accuracy") for a in attacks] for r in head if r != "none"}
        _grouped_bars(plt, attacks, series, "held-out mean accuracy after removal", "accuracy per removal attack",
                      out_dir / "removal.png", baseline=("originals", head["none"]["held_out_accuracy"]))


def _grouped_bars(plt, categories: list[str], series: dict[str, list], ylabel: str, title: str, path: Path,
                  baseline: tuple[str, float | None] | None = None) -> None:
    """One bar per series in each category (``None`` values drawn as 0), accuracy axis 0-1."""
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(categories)), 3.6))
    width = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        ax.bar(np.arange(len(categories)) + k * width, [v or 0 for v in values], width, label=name)
    if baseline is not None:
        ax.axhline(baseline[1] or 0, color="k", ls="--", lw=1, label=baseline[0])
    ax.set_xticks(np.arange(len(categories)) + 0.4 - width / 2, categories, rotation=30, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def montage(images, rows, examples: dict, path: Path, n: int = 3) -> None:
    """Before / protected (per row) / after removal (first image, per attack) montage."""
    plt = _plt()
    protected = [r for r in rows if r != "none"]
    n = min(n, len(images))
    cols = 1 + len(protected)
    fig, axes = plt.subplots(n, cols, figsize=(2.4 * cols, 2.4 * n), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(images[i].original)
        axes[i, 0].set_title(f"original, grade {images[i].grade}" if i == 0 else f"grade {images[i].grade}", fontsize=8)
        for j, r in enumerate(protected, start=1):
            axes[i, j].imshow(rows[r].images[i])
            if i == 0:
                axes[i, j].set_title(r, fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    ex = examples.get("medlocker")
    if ex:
        fig, axes = plt.subplots(1, len(ex) + 2, figsize=(2.4 * (len(ex) + 2), 2.6), squeeze=False)
        axes[0, 0].imshow(images[0].original)
        axes[0, 0].set_title("original", fontsize=8)
        axes[0, 1].imshow(rows["medlocker"].images[0])
        axes[0, 1].set_title("medlocker", fontsize=8)
        for j, (attack, img) in enumerate(ex.items(), start=2):
            axes[0, j].imshow(img)
            axes[0, j].set_title(attack, fontsize=7)
        for ax in axes.ravel():
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(path.with_name("removal_montage.png"), dpi=80)
        plt.close(fig)
