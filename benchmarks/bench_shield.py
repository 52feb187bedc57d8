"""The imperceptible shield against logo removal: accuracy of held-out models, cost and payload, with and without it.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_shield.py --n 40 --size 512 --seed 31 \
        --out benchmarks/results/shield/shield_seed31.json

N lab test images (``lab_study_images``, grades balanced, WSM from the exact lesion masks) are
protected by ``medlocker`` (the protect defaults of ``bundle/configs/inference.json``) against the
ensemble of the zoo's source models (resnet, densenet, efficientnet: ``configs/zoo.json``), once per
row: ``medlocker`` (no shield) and each ``--shield NAME=JSON`` row (the same marks, the same seeds,
plus the shield with those :class:`~monai_medlocker.watermark.shield.ShieldSettings`). The zoo's
held-out members (seresnet, vit, vgg, resnet-indep) are never queried by the optimisation; only they
count as transfer. Each row is then attacked by every removal attack of
:mod:`monai_medlocker.threats.removal` that needs no training (informed and blind inverse blends,
Telea, Navier-Stokes and biharmonic inpainting of the traced footprint) and by the collection attack
fitted on the row's own release. The learned remover needs a training run: ``--remover PT`` adds it with the
thief's checkpoint (``benchmarks/bench_removal.py --preset thief --remover-out PT``, the thief's lab seed), applied
blind (it locates the mark itself). Issue 17 item 4 (removal in the objective, before and after):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_shield.py --n 20 --size 384 --seed 7 \
        --shield 'shield_before={"kind": "perceptual", "removals": ["inverse", "telea"]}' \
        --shield 'shield={"kind": "perceptual"}' --attacks inpaint_telea,inpaint_biharmonic \
        --remover runs/removers/thief_384.pt --no-collection \
        --out benchmarks/results/shield/removal_objective_seed7.json

Per row: accuracy of each model (and the held-out and source means) on the protected images and after
each attack, the median and p90 seconds per image, the packed restore payload (bytes, median and mean,
and its version), the whole-image PSNR against the original, the shield's largest change and changed
pixels. Tune on a seed other than 31; report on 31.

Per shield row also (issue 17 item 1): the off-mark fidelity, SSIM on luminance and PSNR over the
lesion-free field of view outside the marks (``shield_region``), median over images, and the block-edge
ratio of the change (``shield.block_edge_ratio``: about 1 for a smooth field, far above 1 for blocks).
``--attacks`` picks the removal attacks (e.g. only ``inpaint_telea``); ``--montage PNG`` writes a zoomed
before/after montage of the first two shield rows (original crop, each row's crop, each row's change
amplified).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_shield.py --n 20 --size 384 --seed 31 \
        --shield 'block={}' --shield 'perceptual={"kind": "perceptual"}' --attacks inpaint_telea \
        --no-collection --montage benchmarks/results/shield/montage_zoom.png \
        --out benchmarks/results/shield/perceptual_seed31.json
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

from monai_medlocker.certify.payload import pack_restore_payload  # noqa: E402
from monai_medlocker.networks.zoo import load_zoo_config  # noqa: E402
from monai_medlocker.threats import removal as rm  # noqa: E402
from monai_medlocker.watermark import watermark_image  # noqa: E402
from monai_medlocker.watermark.blend import Placement  # noqa: E402
from monai_medlocker.watermark.shield import (  # noqa: E402
    block_edge_ratio, field_of_view, offmark_fidelity, psnr, shield_region,
)
from monai_medlocker.workflows.metrics import protection_metrics  # noqa: E402
from monai_medlocker.workflows.threat_study import lab_study_images, predict, protect_tools  # noqa: E402

ATTACKS = ("informed_inverse", "blind_inverse", "inpaint_telea", "inpaint_ns", "inpaint_biharmonic")


def _median(values):
    return round(float(statistics.median(values)), 4) if values else None


def _p90(values):
    return round(float(np.percentile(values, 90)), 4) if values else None


def _crop(original: np.ndarray, region: np.ndarray, side: int = 64) -> tuple[int, int]:
    """Top-left of the flattest side x side window inside the region (flat retina shows blocking best)."""
    luma = original.astype(np.float64).mean(axis=-1)
    best, at = None, (0, 0)
    for y in range(0, original.shape[0] - side, 8):
        for x in range(0, original.shape[1] - side, 8):
            if region[y:y + side, x:x + side].all():
                std = float(luma[y:y + side, x:x + side].std())
                if best is None or std < best:
                    best, at = std, (y, x)
    return at


def write_montage(path: Path, original: np.ndarray, rows: dict, region: np.ndarray, side: int = 64,
                  zoom: int = 6, gain: int = 10) -> dict:
    """Original crop, each row's crop, then each row's change x ``gain`` around grey 128, zoomed ``zoom`` x."""
    from PIL import Image, ImageDraw

    y, x = _crop(original, region, side)
    tiles = [("original", original[y:y + side, x:x + side])]
    tiles += [(name, img[y:y + side, x:x + side]) for name, img in rows.items()]
    for name, img in rows.items():
        d = img[y:y + side, x:x + side].astype(np.int16) - original[y:y + side, x:x + side]
        tiles.append((f"{name} change x{gain}", np.clip(128 + gain * d, 0, 255).astype(np.uint8)))
    big = side * zoom
    canvas = Image.new("RGB", (len(tiles) * (big + 8), big + 22), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (label, tile) in enumerate(tiles):
        canvas.paste(Image.fromarray(tile).resize((big, big), Image.NEAREST), (i * (big + 8), 20))
        draw.text((i * (big + 8) + 2, 4), label, fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return {"crop_yx": [int(y), int(x)], "side": side, "zoom": zoom, "gain": gain, "tiles": [t[0] for t in tiles]}


def _protect(images, surrogates, settings: dict, shield: dict | None) -> dict:
    optimizer, space, logo = protect_tools(settings)
    out = {"images": [], "records": [], "seconds": [], "cpu_seconds": [], "payload_bytes": [], "payload_version": [], "psnr": [],
           "fidelity": [], "block_edge": []}
    for i, s in enumerate(images):
        start, cpu = time.perf_counter(), time.process_time()
        img, rec = watermark_image(s.original, s.wsm, surrogates, logo, optimizer, space, label=s.grade, seed=i,
                                   shield=shield)
        out["seconds"].append(time.perf_counter() - start)
        out["cpu_seconds"].append(time.process_time() - cpu)  # one thread: the wall time of an idle machine
        packed = pack_restore_payload(s.original, [m["box_xyxy"] for m in rec["marks"]], img)
        out["payload_bytes"].append(len(packed))
        out["payload_version"].append(packed[4])
        out["psnr"].append(psnr(img, s.original))
        region = shield_region(s.wsm, field_of_view(s.original), [m["box_xyxy"] for m in rec["marks"]])
        out["fidelity"].append(offmark_fidelity(s.original, img, region))
        out["block_edge"].append(block_edge_ratio(s.original, img, region) if shield is not None else None)
        out["images"].append(img)
        out["records"].append(rec)
    return out


def _accuracy(models, roles, grades, clean, images) -> dict:
    preds = predict(models, images)
    per_model = {m: protection_metrics(grades, clean[m], preds[m])["watermarked_accuracy"] for m in models}
    mean = lambda role: round(float(np.mean([per_model[m] for m in models if roles[m] == role])), 4)  # noqa: E731
    return {"held_out_accuracy": mean("held_out"), "source_accuracy": mean("source"),
            "models": {m: round(v, 4) for m, v in per_model.items()}}


def run(n: int = 40, size: int = 512, seed: int = 31, shields: dict | None = None, collection: bool = True,
        zoo_path: str | None = None, attacks=ATTACKS, montage: str | None = None, remover: str | None = None,
        rows: list[str] | None = None) -> dict:
    shields = shields if shields is not None else {"medlocker+shield": {}}
    zoo = load_zoo_config(zoo_path)
    members = {name: member for name, member in zoo.members.items() if member.role != "candidate"}
    models = {name: member.load(zoo.num_classes) for name, member in members.items()}
    roles = {name: member.role for name, member in members.items()}
    surrogates = [models[name] for name in models if roles[name] == "source"]
    images = lab_study_images(n, size, seed)
    grades = np.array([s.grade for s in images])
    clean = predict(models, [s.original for s in images])
    settings = {"optimizer": "medlocker"}
    _, space, logo = protect_tools(settings)
    result = {
        "format": "medlocker-bench-shield/1",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads()},
        "command": " ".join(sys.argv),
        "settings": {"n": n, "size": size, "seed": seed, "protect": settings, "zoo": str(zoo.path),
                     "surrogates": [m for m in models if roles[m] == "source"],
                     "held_out": [m for m in models if roles[m] == "held_out"], "shields": shields,
                     "attacks": list(attacks) + (["collection"] if collection else [])},
        "clean": _accuracy(models, roles, grades, clean, [s.original for s in images]),
        "rows": {},
    }
    thief = None
    if remover:  # the thief's learned remover (trained on the thief's lab seed, never the objective's)
        thief = rm.LearnedRemover.from_checkpoint(remover)
        result["settings"]["attacks"].append("learned_remover")
        result["settings"]["remover"] = {"checkpoint": remover, "config": thief.config,
                                         "held_out": thief.report.get("held_out")}
    first_images = {}
    for name, shield in {"medlocker": None, **shields}.items():
        if rows is not None and name not in rows:
            continue
        start = time.perf_counter()
        row = _protect(images, surrogates, settings, shield)
        if shield is not None:
            first_images[name] = row["images"][0]
            first_marks = [m["box_xyxy"] for m in row["records"][0]["marks"]]  # the same marks in every row
        facts = [r.get("shield") for r in row["records"]]
        entry = {
            "shield": shield,
            "protect_seconds_median": _median(row["seconds"]), "protect_seconds_p90": _p90(row["seconds"]),
            "protect_cpu_seconds_median": _median(row["cpu_seconds"]), "protect_cpu_seconds_p90": _p90(row["cpu_seconds"]),
            "payload_bytes_median": _median(row["payload_bytes"]),
            "payload_bytes_mean": round(float(np.mean(row["payload_bytes"])), 1),
            "payload_versions": sorted(set(row["payload_version"])),
            "psnr_whole_image_median": _median(row["psnr"]),
            "offmark_ssim_luma_median": _median([f["ssim_luma"] for f in row["fidelity"]]),
            "offmark_psnr_median": _median([f["psnr"] for f in row["fidelity"]]),
            "offmark_ssim_luma_min": round(min(f["ssim_luma"] for f in row["fidelity"]), 4),
            "offmark_psnr_min": round(min(f["psnr"] for f in row["fidelity"]), 4),
            "block_edge_ratio_median": _median([b for b in row["block_edge"] if b is not None]),
            "box_area_fraction_median": _median([r["box_area_fraction"] for r in row["records"]]),
            "white_box_success_rate": round(float(np.mean([r["success"] for r in row["records"]])), 4),
            "protected": _accuracy(models, roles, grades, clean, row["images"]),
            "removal": {},
        }
        if shield is not None:
            applied = [f for f in facts if f and f.get("applied")]
            entry["shield_facts"] = {
                "settings": applied[0]["settings"] if applied else None,
                "applied": len(applied), "linf_max": max(f["linf"] for f in applied) if applied else None,
                "linf_bound": applied[0]["linf_bound"] if applied else None,
                "bound_mean_median": _median([f["bound_mean"] for f in applied]),
                "changed_pixels_median": _median([f["changed_pixels"] for f in applied]),
                "changed_fraction_median": _median([f["changed_pixels"] / (size * size) for f in applied]),
                "psnr_vs_marked_median": _median([f["psnr_vs_marked"] for f in applied]),
                "shield_seconds_median": _median([f["seconds"] for f in applied]),
            }
        for attack in attacks:
            fn, restored, seconds = rm.get_removal_attack(attack), [], []
            for i, img in enumerate(row["images"]):
                marks = [Placement.from_record(m) for m in row["records"][i]["marks"]]
                t0 = time.perf_counter()
                if attack == "blind_inverse":  # the public logo and the public search space only
                    restored.append(fn(img, logo, space=space, max_marks=space.n_marks))
                else:  # informed, or the footprint traced by hand
                    restored.append(fn(img, logo, placements=marks))
                seconds.append(time.perf_counter() - t0)
            entry["removal"][attack] = {**_accuracy(models, roles, grades, clean, restored),
                                        "seconds_per_image_median": _median(seconds)}
        if thief is not None:  # blind: the remover locates the mark itself
            restored, seconds = [], []
            for img in row["images"]:
                t0 = time.perf_counter()
                restored.append(thief(img, logo))
                seconds.append(time.perf_counter() - t0)
            entry["removal"]["learned_remover"] = {**_accuracy(models, roles, grades, clean, restored),
                                                   "seconds_per_image_median": _median(seconds)}
        if collection:
            t0 = time.perf_counter()
            try:
                attack = rm.CollectionAttack(space=space).fit(row["images"], logo=logo)
                restored = [attack.remove(img) for img in row["images"]]
                entry["removal"]["collection"] = {**_accuracy(models, roles, grades, clean, restored),
                                                  "seconds_total": round(time.perf_counter() - t0, 2)}
            except ValueError as err:  # too few marks located to estimate the watermark
                entry["removal"]["collection"] = {"error": str(err)}
        entry["row_seconds"] = round(time.perf_counter() - start, 1)
        result["rows"][name] = entry
        print(f"{name}: protected held-out {entry['protected']['held_out_accuracy']}, after removal "
              + ", ".join(f"{a} {v.get('held_out_accuracy')}" for a, v in entry["removal"].items())
              + f"; {entry['protect_seconds_median']} s/image ({entry['protect_cpu_seconds_median']} CPU s), payload {entry['payload_bytes_median']} B, "
              f"PSNR {entry['psnr_whole_image_median']} dB; off-mark SSIM {entry['offmark_ssim_luma_median']}, "
              f"PSNR {entry['offmark_psnr_median']} dB, block-edge ratio {entry['block_edge_ratio_median']}", flush=True)
    if montage and first_images:
        s = images[0]
        region = shield_region(s.wsm, field_of_view(s.original), first_marks)
        result["montage"] = {"path": montage, "image": 0,
                             **write_montage(Path(montage), s.original, dict(list(first_images.items())[:2]), region)}
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--seed", type=int, default=31)
    p.add_argument("--shield", action="append", default=None, metavar="NAME=JSON",
                   help="a shield row: its name and its ShieldSettings as JSON (repeatable); default one row "
                        "'medlocker+shield' with the default settings")
    p.add_argument("--no-collection", action="store_true", help="leave out the collection attack")
    p.add_argument("--attacks", default=",".join(ATTACKS), help=f"comma-separated removal attacks (default {','.join(ATTACKS)})")
    p.add_argument("--montage", default=None, metavar="PNG", help="write a zoomed montage of the first two shield rows")
    p.add_argument("--zoo", default=None, help="zoo config (default configs/zoo.json)")
    p.add_argument("--remover", default=None, metavar="PT", help="the thief's learned-remover checkpoint "
                   "(benchmarks/bench_removal.py --remover-out): adds the learned_remover attack (blind, located)")
    p.add_argument("--rows", default=None, help="comma-separated rows to run (default all; 'medlocker' is the mark alone)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    shields = None
    if args.shield:
        shields = {}
        for item in args.shield:
            name, _, text = item.partition("=")
            shields[name] = json.loads(text or "{}")
    torch.set_num_threads(1)
    attacks = [a for a in args.attacks.split(",") if a]
    unknown = sorted(set(attacks) - set(ATTACKS))
    if unknown:
        p.error(f"--attacks: unknown {unknown}; expected among {list(ATTACKS)}")
    result = run(args.n, args.size, args.seed, shields, not args.no_collection, args.zoo, attacks, args.montage,
                 args.remover, args.rows.split(",") if args.rows else None)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
