"""``medlocker datalist --layout idrid|aptos|eyepacs SRC OUT.json``: a MONAI datalist from a public DR dataset."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_subparser", "run"]


def add_subparser(subparsers) -> None:
    """Register the ``datalist`` subcommand."""
    p = subparsers.add_parser(
        "datalist", help="convert IDRiD / APTOS 2019 / EyePACS folders to a MONAI datalist",
        description="Read a public diabetic-retinopathy dataset in its downloaded folder and CSV layout and write a "
        "MONAI datalist JSON (training/validation/test; paths relative to the JSON) for the train, evaluate and "
        "protect workflows.",
    )
    p.add_argument("--layout", required=True, choices=("idrid", "aptos", "eyepacs"), help="the dataset's layout")
    p.add_argument("src", metavar="SRC", help="the dataset's root folder")
    p.add_argument("out", metavar="OUT.json", help="datalist file to write")
    p.add_argument("--part", choices=("grading", "segmentation"), default="grading",
                   help="IDRiD only: grades (default) or lesion masks (mask_* keys)")
    p.add_argument("--val-fraction", dest="val_fraction", type=float, default=0.15,
                   help="fraction of the training set held out for validation (default: 0.15)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (default: 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Convert and print a one-line summary; bad layouts raise ``ValueError``/``FileNotFoundError``."""
    from monai_medlocker.data.layouts import convert_layout

    kwargs = {"val_fraction": args.val_fraction, "seed": args.seed}
    if args.layout == "idrid":
        kwargs["part"] = args.part
    datalist = convert_layout(args.layout, args.src, args.out, **kwargs)
    counts = ", ".join(f"{s} {len(datalist.get(s, []))}" for s in ("training", "validation", "test"))
    print(f"medlocker datalist: {datalist['name']} -> {args.out}; {counts}; missing images {len(datalist['missing'])}",
          file=sys.stderr)
    for name in datalist["missing"][:10]:
        print(f"  MISSING {name}", file=sys.stderr)
    return 0
