"""Keyed vs plain rendering of the logo mark: how recognisable, how invertible, how costly.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_keyed.py --n 40 --size 512 --seed 31 \
        --out benchmarks/results/keyed/keyed.json

N lab images (:func:`~monai_medlocker.workflows.threat_study.lab_study_images`, grades balanced) are
protected twice with the default protect settings (medlocker optimizer, full search space, the demo
surrogate ``bundle/models/model.pt``, label = true grade, seed = image index): once plain, once with a
32-byte render key per image (a BLAKE2b hash of the benchmark seed and the image index, standing in
for the per-image key the protect workflow passes). Per image and rendering:

* ``footprint_ssim``: SSIM of the keyed composite against the plain mark rendered at the same
  placement, over the logo's footprint (:func:`~monai_medlocker.watermark.keyed.footprint_ssim`);
* the box PSNR (against the original) of the informed inverse blend (the thief knows the logo, the box
  and the nominal opacity cap: the owner's record) and of the blind inverse blend (public logo and
  search space only), from :mod:`monai_medlocker.threats.removal`;
* for context, the box PSNR of biharmonic inpainting of the traced footprint (the keyed rendering keeps
  the plain footprint, so it cannot change this attack: the optional shield is for that) and of a
  scheme-aware thief who knows the keyed fields are smooth and replaces the low frequencies (Gaussian,
  sigma 2 px) of the informed inverse by those of the inpainting;
* accuracy (prediction == true grade) of the white-box surrogate and of the zoo's held-out models on
  the originals, the protected images and the informed-inverted images: what inverting gains the thief;
* protect seconds per image.

It also writes ``montage.png`` beside the JSON: for the first 4 images, the logo box of the original,
the plain mark, the keyed mark and the informed inverse of the keyed mark.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from monai_medlocker.networks import load_surrogate  # noqa: E402
from monai_medlocker.networks.zoo import load_zoo_config  # noqa: E402
from monai_medlocker.threats import removal as rm  # noqa: E402
from monai_medlocker.watermark import Placement, composite, watermark_image  # noqa: E402
from monai_medlocker.watermark.keyed import footprint_ssim, rendering_record  # noqa: E402
from monai_medlocker.watermark.logo import logo_for_image  # noqa: E402
from monai_medlocker.workflows.threat_study import lab_study_images, predict, protect_tools  # noqa: E402

RENDERINGS = ("plain", "keyed")
ATTACKS = ("protected", "informed", "blind", "inpaint", "hybrid")
# The scheme-aware thief's low-pass width, px: the best of 2, 4 and 8 on 10 lab images.
HYBRID_SIGMA = 2.0


def bench_render_key(seed: int, index: int) -> bytes:
    """The benchmark's per-image render key (deterministic, so the run can be repeated)."""
    return hashlib.blake2b(f"bench_keyed:{seed}:{index}".encode(), digest_size=32).digest()


def hybrid_inverse(inverted: np.ndarray, inpainted: np.ndarray, sigma: float = HYBRID_SIGMA) -> np.ndarray:
    """The informed inverse with its low frequencies taken from the inpainting (where the keyed error lives)."""
    inv = inverted.astype(np.float32)
    out = inv - gaussian_filter(inv - inpainted.astype(np.float32), (sigma, sigma, 0))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _stats(values: list[float]) -> dict:
    v = np.asarray([99.0 if not np.isfinite(x) else x for x in values], dtype=float)
    return {"median": round(float(np.median(v)), 3), "mean": round(float(v.mean()), 3),
            "min": round(float(v.min()), 3), "p90": round(float(np.quantile(v, 0.9)), 3),
            "max": round(float(v.max()), 3)}


def run(n: int = 40, size: int = 512, seed: int = 31, held_out: bool = True) -> dict:
    """Protect ``n`` lab images plain and keyed and attack both; returns the JSON-ready result."""
    surrogate = load_surrogate(ROOT / "bundle/models/model.pt", "resnet-tiny", 5, 224)
    optimizer, space, logo = protect_tools({"optimizer": "medlocker", "search_space": "full", "logo": None})
    models = {"white_box": surrogate}
    if held_out:
        zoo = load_zoo_config(ROOT / "configs/zoo.json")
        models.update({m.name: m.load(zoo.num_classes) for m in zoo.members.values() if m.role == "held_out"})
    images = lab_study_images(n, size, seed)
    grades = np.array([s.grade for s in images])
    rows, montage = [], []
    outputs = {r: {a: [] for a in ATTACKS} for r in RENDERINGS}
    for i, s in enumerate(images):
        row = {"image_id": s.image_id, "grade": int(s.grade)}
        stamped = logo_for_image(logo, s.original)[0]
        for rendering in RENDERINGS:
            key = bench_render_key(seed, i) if rendering == "keyed" else None
            start = time.perf_counter()
            out, rec = watermark_image(s.original, s.wsm, [surrogate], logo, optimizer, space, label=s.grade, seed=i,
                                       render_key=key)
            seconds = time.perf_counter() - start
            marks = [Placement.from_record(m) for m in rec["marks"]]
            informed = rm.informed_inverse_blend(out, logo, marks)
            blind = rm.blind_inverse_blend(out, logo, space=space, max_marks=space.n_marks)
            inpaint = rm.inpaint_biharmonic(out, logo, placements=marks)
            restored = {"protected": out, "informed": informed, "blind": blind, "inpaint": inpaint,
                        "hybrid": hybrid_inverse(informed, inpaint)}
            entry = {
                "seconds": round(seconds, 4), "queries": rec["queries"], "success": rec["success"],
                "alpha": [m.alpha for m in marks],
                **{f"{a}_box_psnr": rm.box_fidelity(img, s.original, marks)["psnr"] for a, img in restored.items()},
            }
            if key is not None:
                entry["footprint_ssim"] = round(footprint_ssim(out, composite(s.original, stamped, marks), stamped, marks), 6)
            row[rendering] = entry
            if key is not None and i < 4:
                montage.append(_montage_row(s.original, composite(s.original, stamped, marks), out, informed, marks[0]))
            for name, img in restored.items():
                outputs[rendering][name].append(img)
        rows.append(row)
        print(f"[bench_keyed] {i + 1}/{n} {s.image_id}: keyed ssim {row['keyed']['footprint_ssim']:.3f}, informed "
              f"psnr plain {row['plain']['informed_box_psnr']:.1f} keyed {row['keyed']['informed_box_psnr']:.1f}",
              file=sys.stderr, flush=True)
    clean = predict(models, [s.original for s in images])
    accuracy = {"original": {m: round(float((clean[m] == grades).mean()), 4) for m in models}}
    for rendering in RENDERINGS:
        accuracy[rendering] = {}
        for name, imgs in outputs[rendering].items():
            p = predict(models, imgs)
            accuracy[rendering][name] = {m: round(float((p[m] == grades).mean()), 4) for m in models}
        for attack in ATTACKS[1:]:
            accuracy[rendering][f"{attack}_gain"] = {
                m: round(accuracy[rendering][attack][m] - accuracy[rendering]["protected"][m], 4) for m in models}
    summary = {"footprint_ssim": _stats([r["keyed"]["footprint_ssim"] for r in rows])}
    for rendering in RENDERINGS:
        for field in [f"{a}_box_psnr" for a in ATTACKS] + ["seconds"]:
            summary[f"{rendering}_{field}"] = _stats([r[rendering][field] for r in rows])
        summary[f"{rendering}_white_box_success"] = round(float(np.mean([r[rendering]["success"] for r in rows])), 4)
    # Paired per image (plain and keyed run back to back), so the shared machine's load cancels out.
    summary["keyed_over_plain_seconds"] = _stats([r["keyed"]["seconds"] / max(r["plain"]["seconds"], 1e-9) for r in rows])
    return {
        "n": n, "size": size, "seed": seed, "rendering": rendering_record(bench_render_key(seed, 0)),
        "protect": {"optimizer": optimizer.name, "settings": optimizer.settings(), "search_space": space.to_record(),
                    "surrogate": "bundle/models/model.pt (resnet-tiny, 224)"},
        "models": list(models), "summary": summary, "accuracy": accuracy, "rows": rows,
        "montage": np.concatenate(montage, axis=0),
    }


def _montage_row(original, plain, keyed, inverted, p: Placement, side: int = 160) -> np.ndarray:
    x0, y0, x1, y1 = p.box_xyxy
    crops = [np.asarray(Image.fromarray(img[y0:y1, x0:x1]).resize((side, side), Image.Resampling.LANCZOS))
             for img in (original, plain, keyed, inverted)]
    return np.concatenate(crops, axis=1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--seed", type=int, default=31)
    p.add_argument("--no-held-out", action="store_true", help="only the white-box surrogate's accuracy")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/keyed/keyed.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run(args.n, args.size, args.seed, held_out=not args.no_held_out)
    result["command"] = "benchmarks/bench_keyed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result["machine"] = {"platform": platform.platform(), "torch_threads": torch.get_num_threads()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(result.pop("montage")).save(out.parent / "montage.png")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["summary"], indent=1))
    print(json.dumps(result["accuracy"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
