"""A montage of lab-v2 synthetic fundus photographs that show its capture artefacts and DR look-alikes.

    python benchmarks/lab_montage.py --out benchmarks/results/lab_v2_montage.png

Picks, in seed order, the first images whose artefact plan shows each artefact and look-alike not yet shown
(grades 0-4 in turn), renders them at ``--size`` px with ``synthesize_fundus(..., lab_version=2)`` and tiles
them with a caption (seed, grade, what the image shows, from ``FundusSample.meta``). The real CC0 photograph
``monai_medlocker/assets/retina_skimage.png`` is added as the last tile for comparison.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from monai_medlocker.data.synthetic import load_real_sample, synthesize_fundus  # noqa: E402

_WANTED = ("defocus", "underexposed", "overexposed", "crescent", "rim_flare", "small_pupil", "eyelashes", "dust",
           "drusen", "pigment_clumps", "vessel_reflex")


def _shows(meta: dict) -> list[str]:
    art, looks = meta["artefacts"], meta["lookalikes"]
    shown = [k for k in ("underexposed", "overexposed", "rim_flare", "small_pupil") if art[k]]
    if art["defocus_sigma_512px"] > 0:
        shown.append("defocus")
    if art["crescent"]:
        shown.append("crescent")
    shown += [k for k in ("eyelashes", "dust") if art[k]]
    shown += [k for k in ("drusen", "pigment_clumps", "vessel_reflex") if looks[k]]
    return shown


def _caption(meta: dict, grade: int) -> str:
    art = meta["artefacts"]
    words = []
    for k in _shows(meta):
        if k == "crescent":
            words.append(f"{art['crescent']} crescent")
        elif k == "defocus":
            words.append(f"defocus {art['defocus_sigma_512px']:.1f}px")
        else:
            words.append(k.replace("_", " "))
    return f"grade {grade}: " + (", ".join(words) or "no artefact")


def pick(n_images: int, probe_size: int = 128, max_seed: int = 400) -> list[tuple[int, int]]:
    """(seed, grade) pairs, grades 0-4 in turn: first images that add an artefact not yet shown, then images that
    show at least two (probed at a small size: the plans do not depend on the size)."""
    chosen, covered = [], set()
    for seed in range(max_seed):
        grade = len(chosen) % 5
        shown = set(_shows(synthesize_fundus(probe_size, seed, grade, lab_version=2).meta))
        wanted = bool(shown - covered) if not covered >= set(_WANTED) else len(shown) >= 2
        if wanted:
            chosen.append((seed, grade))
            covered |= shown
        if len(chosen) == n_images:
            break
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8, help="synthetic images (default: 8)")
    parser.add_argument("--size", type=int, default=512, help="rendered image side in px (default: 512)")
    parser.add_argument("--tile", type=int, default=384, help="tile side in the montage (default: 384)")
    parser.add_argument("--columns", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "lab_v2_montage.png")
    args = parser.parse_args(argv)
    tiles = []
    for seed, grade in pick(args.n):
        sample = synthesize_fundus(args.size, seed, grade, lab_version=2)
        tiles.append((Image.fromarray(sample.image), f"seed {seed}, {_caption(sample.meta, sample.grade)}"))
        print(f"seed {seed}: {_caption(sample.meta, sample.grade)}")
    tiles.append((Image.fromarray(load_real_sample()), "real photograph (skimage retina, CC0)"))
    caption_h = 34
    rows = -(-len(tiles) // args.columns)
    sheet = Image.new("RGB", (args.columns * args.tile, rows * (args.tile + caption_h)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, (image, text) in enumerate(tiles):
        x, y = (k % args.columns) * args.tile, (k // args.columns) * (args.tile + caption_h)
        sheet.paste(image.resize((args.tile, args.tile), Image.LANCZOS), (x, y))
        # Two short lines under each tile.
        words, lines = text.split(" "), [""]
        for word in words:
            if len(lines[-1]) + len(word) > 60 and lines[-1]:
                lines.append("")
            lines[-1] += ("" if not lines[-1] else " ") + word
        draw.multiline_text((x + 4, y + args.tile + 2), "\n".join(lines[:2]), fill=(0, 0, 0))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, optimize=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
