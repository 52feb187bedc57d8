"""What signing, sealing and embedding cost, and how big the restore payload is.

    python benchmarks/bench_certify.py --n 10 --out benchmarks/results/certify.json

For each size, N synthetic scenes (ground-truth lesion masks beside each image, so the lesion
step is the same cheap one in both runs) are protected twice with the demo surrogate and the
default settings: once without a key and once with an owner key. Reported per size:

* ``certify_seconds``: the sign + seal step as timed inside the protect run (``certify_seconds``
  in each image's private record), and ``embed_extra_seconds``: the extra time to write the PNG with
  the certificate, payload and sealed-record chunks and the public sidecar (a keyless run writes
  neither), timed on the same outputs;
* ``overhead_fraction``: (certify + embed extra) / protect time per image without a key
  (the target at 1024 px: at most 0.05). The two whole runs are also compared (``ab_fraction``),
  but on a shared 2-core machine that difference is mostly noise;
* ``payload_bytes`` vs ``footprint_bytes`` (the raw logo boxes, w x h x 3): the target is
  payload <= footprint.
"""

from __future__ import annotations

import argparse
import base64
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monai_medlocker.certify import footprint_bytes, generate_owner_key, save_owner_key  # noqa: E402
from monai_medlocker.certify.seal import PNG_PUBLIC, SIDECAR_SUFFIX, mark_boxes  # noqa: E402
from monai_medlocker.data.synthetic import LESION_TYPES, synthesize_fundus  # noqa: E402
from monai_medlocker.io.image import save_png  # noqa: E402
from monai_medlocker.networks import load_surrogate  # noqa: E402
from monai_medlocker.workflows.protect import DatasetProtector, record_path_for  # noqa: E402


def _scenes(folder: Path, size: int, n: int, seed: int, lab_version: int = 1) -> None:
    folder.mkdir(parents=True)
    for i in range(n):
        s = synthesize_fundus(size, seed=seed + i, grade=i % 5, lab_version=lab_version)
        Image.fromarray(s.image).save(folder / f"img{i:03d}.png")
        lesions = np.any(np.stack([s.masks[t] for t in LESION_TYPES]), axis=0)
        Image.fromarray((lesions * 255).astype(np.uint8)).save(folder / f"img{i:03d}_lesions.png")


def _protect(src: Path, out: Path, model, key: Path | None) -> list[dict]:
    DatasetProtector(src, out, model, lesion_segmenter="masks", owner_key=key, progress=False).run()
    rows = [json.loads(line) for line in (out / "private" / "manifest.jsonl").read_text().splitlines()]
    return [r for r in rows if r["status"] == "protected"]


def _sidecar(png: Path) -> dict:
    return json.loads(png.with_name(png.stem + SIDECAR_SUFFIX).read_text())


def _embed_extra(png: Path) -> float:
    """Extra seconds to write the certified PNG + public sidecar vs the keyless PNG (public record only, no
    sidecar; same pixels), best of 3."""
    with Image.open(png) as img:
        text, pixels = dict(img.text), np.asarray(img.convert("RGB"))
    sidecar = _sidecar(png)
    plain_text = {PNG_PUBLIC: text[PNG_PUBLIC]}
    with tempfile.TemporaryDirectory() as tmp:
        def timed(chunks, side):
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                save_png(Path(tmp) / "x.png", pixels, text=chunks)
                if side is not None:
                    (Path(tmp) / "x.json").write_bytes(json.dumps(side, indent=2).encode())
                best = min(best, time.perf_counter() - t0)
            return best
        return max(0.0, timed(text, sidecar) - timed(plain_text, None))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--sizes", default="512,1024,2048")
    p.add_argument("--seed", type=int, default=52_000)
    p.add_argument("--lab-version", type=int, default=1, choices=(1, 2),
                   help="lab version of the synthetic images "
                        "(default 1: the committed results were made on lab v1; 2 = the realistic lab)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model", default=str(ROOT / "bundle/models/model.pt"))
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/certify.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_surrogate(args.model)
    results = {"config": vars(args), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads()}, "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        key_path = save_owner_key(tmp / "owner", generate_owner_key())[0]
        for size in [int(s) for s in args.sizes.split(",")]:
            src = tmp / f"src{size}"
            _scenes(src, size, args.n, args.seed, args.lab_version)
            plain = _protect(src, tmp / f"plain{size}", model, None)
            keyed = _protect(src, tmp / f"keyed{size}", model, key_path)
            out = tmp / f"keyed{size}"
            certify, embed, payload, footprint = [], [], [], []
            for row in keyed:
                png = out / row["output"]  # public/<name>.png
                record = json.loads(record_path_for(out, row["image"]).read_text())  # the owner's whole record
                certify.append(record["certify_seconds"])
                embed.append(_embed_extra(png))
                payload.append(len(base64.b64decode(_sidecar(png)["restore_payload"])))
                footprint.append(footprint_bytes((size, size, 3), mark_boxes(record)))
            base = statistics.median(r["seconds"] for r in plain)
            keyed_s = statistics.median(r["seconds"] for r in keyed)
            added = statistics.median(c + e for c, e in zip(certify, embed))
            results["sizes"][str(size)] = {
                "images": len(keyed),
                "protect_seconds_median_no_key": round(base, 4),
                "protect_seconds_median_with_key": round(keyed_s, 4),
                "certify_seconds_median": round(statistics.median(certify), 4),
                "embed_extra_seconds_median": round(statistics.median(embed), 4),
                "overhead_fraction": round(added / base, 4),
                "ab_fraction": round(keyed_s / base - 1.0, 4),
                "payload_bytes_median": int(statistics.median(payload)),
                "payload_bytes_max": max(payload),
                "footprint_bytes_median": int(statistics.median(footprint)),
                "payload_over_footprint_max": round(max(p / f for p, f in zip(payload, footprint)), 4),
            }
            print(size, json.dumps(results["sizes"][str(size)]), file=sys.stderr)
    r1024 = results["sizes"].get("1024")
    results["targets"] = {
        "overhead_at_1024_le_0.05": None if r1024 is None else r1024["overhead_fraction"] <= 0.05,
        "payload_le_footprint": all(r["payload_over_footprint_max"] <= 1.0 for r in results["sizes"].values()),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results["targets"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
