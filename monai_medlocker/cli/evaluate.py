"""``medlocker evaluate OUT``: the threat study (``bundle/configs/evaluate_protection.json``) from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from monai_medlocker.bundle_config import bundle_root, parse_bundle_config, run_workflow


def _names(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def add_subparser(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="threat study: how well does protection hold against a thief's models, preprocessing, "
        "removal and training",
        description="Protect a test set with the current protect defaults (rows: none, random control, bhe, medlocker), "
        "then measure every zoo model (configs/zoo.json; held-out models count) under the thief's preprocessing, removal "
        "attacks and unauthorised training. Writes threats.json, threats.md and PNG plots into OUT.",
    )
    p.add_argument("output", help="report folder")
    p.add_argument("--quick", action="store_true", help="a few small images and tiny thief runs (minutes; what CI runs)")
    p.add_argument("--zoo", dest="zoo_config", help="zoo config (default: configs/zoo.json)")
    p.add_argument("--n", type=int, help="number of lab test images")
    p.add_argument("--size", type=int, help="side of the lab test images in px")
    p.add_argument("--seed", type=int, help="seed of the lab test images")
    p.add_argument("--lab-version", dest="lab_version", type=int, help="synthetic lab version of the test images")
    p.add_argument("--datalist", help="a labelled datalist (its 'test' section) instead of lab images")
    p.add_argument("--release", dest="release_dir", help="an existing protected release (medlocker protect output)")
    p.add_argument("--originals", dest="originals_dir", help="the originals of --release")
    p.add_argument("--rows", help="comma-separated rows among none, random, bhe, medlocker (the default "
                   "level), medlocker@shield, medlocker@strong (the other levels), medlocker+shield (the block "
                   "shield before issue 17), medlocker-v1 (the default before issue 11)")
    p.add_argument("--preprocessing", help="comma-separated thief preprocessing names (default: all)")
    p.add_argument("--attacks", help="comma-separated removal attacks (default: all; 'none' for no removal)")
    p.add_argument("--no-training", action="store_true", help="skip the unauthorised-training experiment")
    p.add_argument("--no-matrix", action="store_true", help="skip the source x target transfer matrix")
    p.add_argument("--model", dest="ckpt_path", help="protect against this one surrogate checkpoint (default: the zoo ensemble of the protect default)")
    p.add_argument("--zoo-members", dest="zoo_members", help="comma-separated zoo source members protecting as an "
                   "ensemble (default: the protect default's); ignored with --model")
    p.add_argument("--network", dest="network_name", help="network name of --model")
    p.add_argument("--input-size", dest="input_size", type=int)
    p.add_argument("--bundle-root", help="the MedLocker bundle folder (default: the one beside the package)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    root = bundle_root(args.bundle_root)
    configs = ["evaluate_protection.json"] + (["evaluate_protection_quick.json"] if args.quick else [])
    attacks = _names(args.attacks)
    overrides = {
        "output_dir": str(Path(args.output).resolve()),
        "zoo_config": args.zoo_config and str(Path(args.zoo_config).resolve()),
        "n": args.n, "size": args.size, "seed": args.seed, "lab_version": args.lab_version,
        "datalist": args.datalist and str(Path(args.datalist).resolve()),
        "release_dir": args.release_dir and str(Path(args.release_dir).resolve()),
        "originals_dir": args.originals_dir and str(Path(args.originals_dir).resolve()),
        "rows": _names(args.rows), "preprocessing": _names(args.preprocessing),
        "attacks": [] if attacks == ["none"] else attacks,
        "transfer_matrix": False if args.no_matrix else None,
        "ckpt_path": args.ckpt_path and str(Path(args.ckpt_path).resolve()),
        "surrogate#members": _names(args.zoo_members),
        "network_name": args.network_name, "input_size": args.input_size,
        "progress": False if args.quiet else None,
    }
    parser = parse_bundle_config(configs, root, overrides)
    if args.no_training:
        parser["unauthorised_training"] = None
    run_workflow(parser)
    # The parsed study object is not kept by the parser; the written results say whether anything failed.
    results = json.loads((Path(args.output) / "threats.json").read_text())
    return 1 if results["errors"] else 0
