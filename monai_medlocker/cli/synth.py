"""``medlocker synth OUT_DIR``: write a synthetic fundus lab (images, lesion masks, MONAI datalist)."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

__all__ = ["add_subparser", "run"]


def add_subparser(subparsers) -> None:
    """Register the ``synth`` subcommand."""
    p = subparsers.add_parser(
        "synth", help="generate a synthetic fundus dataset with lesion masks and DR grades",
        description="Write N procedural colour fundus photographs with IDRiD-style lesion masks (MA, HE, EX, SE), "
        "ICDR grades computed from the lesions, and a MONAI datalist.json with training/validation/test splits. "
        "The dataset is a pure function of its arguments.",
    )
    p.add_argument("out_dir", metavar="OUT_DIR", help="output folder (refused if it already holds a dataset)")
    p.add_argument("--n", type=int, default=100, help="number of images (default: 100)")
    p.add_argument("--size", type=int, default=256, help="image side in px, 128..2048 (default: 256)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed, >= 0 (default: 0)")
    p.add_argument("--split", type=float, nargs=3, default=(0.7, 0.15, 0.15), metavar=("TRAIN", "VAL", "TEST"),
                   help="split fractions summing to 1 (default: 0.7 0.15 0.15)")
    p.add_argument("--grade-weights", dest="grade_weights", type=float, nargs=5, default=None,
                   metavar=("G0", "G1", "G2", "G3", "G4"), help="relative frequency of grades 0..4 (default: uniform)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (0 = one per CPU; default: 1)")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset previously written to OUT_DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Generate the dataset and print a one-line summary; invalid arguments raise ``ValueError``."""
    from monai_medlocker.data.synthetic import generate_dataset

    path = generate_dataset(
        args.out_dir, n=args.n, size=args.size, seed=args.seed, split=tuple(args.split),
        grade_weights=args.grade_weights, progress=not args.quiet, overwrite=args.overwrite, workers=args.workers,
    )
    datalist = json.loads(Path(path).read_text(encoding="utf-8"))
    splits = {name: len(datalist.get(name, [])) for name in ("training", "validation", "test")}
    grades = Counter(item["label"] for name in splits for item in datalist.get(name, []))
    print(
        f"medlocker synth: wrote {sum(splits.values())} images of {args.size}x{args.size} px to {path}; "
        + ", ".join(f"{name} {count}" for name, count in splits.items())
        + "; grades " + " ".join(f"{g}:{grades.get(g, 0)}" for g in range(5))
    )
    return 0
