"""``medlocker train-demo``: reproduce the shipped demo surrogates from a seeded synthetic lab.

It generates the lab with ``generate_dataset``, trains through the bundle's ``train.json`` and
scores the held-out test split through ``evaluate.json``: the same configs a user runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from monai_medlocker.bundle_config import bundle_root, check_model_output, new_run_dir, parse_bundle_config, run_workflow

RECIPE_PATH = Path(__file__).resolve().parents[2] / "configs" / "datasets" / "demo_lab.json"
RECIPE_KEYS = ("n", "size", "seed", "lab_version", "epochs", "batch_size", "learning_rate")


def _recipe(network: str) -> tuple[dict, str | None]:
    """The shipped models' recipe (configs/datasets/demo_lab.json) for one network, and its checkpoint name."""
    if not RECIPE_PATH.is_file():
        raise FileNotFoundError(f"demo recipe not found: {RECIPE_PATH} (train-demo runs from a source checkout)")
    data = json.loads(RECIPE_PATH.read_text())
    per_network = data.get("networks", {}).get(network, {})
    recipe = {k: per_network.get(k, data[k]) for k in RECIPE_KEYS}
    return recipe, per_network.get("checkpoint")


def add_subparser(subparsers) -> None:
    p = subparsers.add_parser(
        "train-demo", help="reproduce the demo surrogate(s) on the synthetic lab",
        description="Generate the seeded synthetic lab, train a surrogate with bundle/configs/train.json and "
        "evaluate it on the held-out test split with bundle/configs/evaluate.json.",
    )
    p.add_argument("--run-dir", default=None, help="run folder for the lab, checkpoint and reports (default: a new "
                   "folder under runs/)")
    p.add_argument("--data", default=None, help="where the synthetic lab is generated (reused if present; default: "
                   "RUN_DIR/lab)")
    p.add_argument("--out", default=None, help="checkpoint folder (default: RUN_DIR/models)")
    p.add_argument("--replace-shipped-model", action="store_true", help="write the checkpoint into BUNDLE/models, "
                   "replacing the shipped model of that name (needed for any --out inside BUNDLE/models)")
    p.add_argument("--network", default="resnet-tiny", help="network to train")
    p.add_argument("--ckpt-name", default=None, help="checkpoint file name (default: from the recipe, else <network>.pt)")
    p.add_argument("--bundle-root", default=None)
    for key, kind in zip(RECIPE_KEYS, (int, int, int, int, int, int, float)):
        p.add_argument(f"--{key.replace('_', '-')}", dest=key, type=kind, default=None,
                       help="default: configs/datasets/demo_lab.json")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from monai_medlocker.data.synthetic import generate_dataset

    recipe, recipe_ckpt = _recipe(args.network)
    for key, value in recipe.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    root = bundle_root(args.bundle_root)
    run_dir = Path(args.run_dir) if args.run_dir else Path(new_run_dir("train-demo"))
    data = Path(args.data) if args.data else run_dir / "lab"
    out = Path(args.out) if args.out else root / "models" if args.replace_shipped_model else run_dir / "models"
    check_model_output(out, root, args.replace_shipped_model)  # before the lab is drawn (minutes)
    if not (data / "datalist.json").is_file():
        generate_dataset(data, n=args.n, size=args.size, seed=args.seed, lab_version=args.lab_version)
    else:  # reused: it must be the lab asked for (datalists written before lab versions existed are v1)
        found = json.loads((data / "datalist.json").read_text()).get("lab_version", 1)
        if found != args.lab_version:
            raise ValueError(f"{data / 'datalist.json'} holds lab version {found}, but lab version "
                             f"{args.lab_version} was asked for; use another --data folder")
    ckpt_name = args.ckpt_name or recipe_ckpt or f"{args.network}.pt"
    common = {"dataset_dir": str(data.resolve()), "network_name": args.network}
    train = parse_bundle_config("train.json", root, {
        **common, "output_dir": str(out.resolve()), "ckpt_name": ckpt_name, "epochs": args.epochs,
        "batch_size": args.batch_size, "learning_rate": args.learning_rate, "seed": args.seed,
        "replace_shipped_model": args.replace_shipped_model,
    })
    run_workflow(train)
    report_dir = run_dir / "eval" / Path(ckpt_name).stem
    evaluate = parse_bundle_config("evaluate.json", root, {
        **common, "ckpt_path": str((out / ckpt_name).resolve()), "output_dir": str(report_dir.resolve()),
    })
    run_workflow(evaluate)
    report = json.loads((report_dir / "eval_report.json").read_text())
    print(json.dumps({k: report.get(k) for k in ("accuracy", "quadratic_weighted_kappa", "auc_macro", "eval_mode")}, indent=2))
    return 0

