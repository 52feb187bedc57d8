"""``medlocker zoo``: train and report the threat study's model zoo (``configs/zoo.json``).

``zoo train`` generates the zoo's seeded lab (reused when present), trains each member through the
bundle's ``train.json`` with the member's seed and scores it on the lab's held-out test split
through ``evaluate.json`` (eval mode), as ``train-demo`` does for the demo surrogate. ``zoo report``
gathers the members' evaluation reports into one table. Neither writes into the shipped zoo (the zoo config's
``checkpoint_dir``, ``bundle/models/zoo``) without ``--replace-shipped-model``: ``train`` writes to ``--out`` or a
new folder under ``runs/``, and ``report`` on the shipped zoo writes its table to a new folder under ``runs/``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from monai_medlocker.bundle_config import (
    bundle_root, check_model_output, in_shipped_models, new_run_dir, parse_bundle_config, run_workflow,
)

REPORT_KEYS = ("accuracy", "quadratic_weighted_kappa", "auc_macro", "eval_mode")


def add_subparser(subparsers) -> None:
    p = subparsers.add_parser(
        "zoo", help="train / report the threat study's model zoo",
        description="Train the zoo's members (configs/zoo.json) on the seeded synthetic lab with bundle/configs/train.json "
        "and evaluate each on the held-out test split (eval mode) with bundle/configs/evaluate.json.",
    )
    p.add_argument("action", choices=("train", "report"))
    p.add_argument("--zoo", default=None, help="zoo config (default: configs/zoo.json)")
    p.add_argument("--members", default=None, help="comma-separated member names (default: all)")
    p.add_argument("--data", default=None, help="lab folder (default: the config's data_dir); generated when absent")
    p.add_argument("--out", default=None, help="train: where the checkpoints, evaluations and report go (default: a "
                   "new folder under runs/); report: the trained zoo to report on (default: the config's checkpoint_dir)")
    p.add_argument("--replace-shipped-model", action="store_true", help="train into the config's checkpoint_dir "
                   "(bundle/models/zoo for configs/zoo.json), or write the report there, replacing what ships (needed "
                   "for any --out inside BUNDLE/models)")
    p.add_argument("--epochs", type=int, default=None, help="override every member's epochs (quick runs)")
    p.add_argument("--lab-n", type=int, default=None, help="override the lab's image count (quick runs)")
    p.add_argument("--lab-size", type=int, default=None, help="override the lab's image side (quick runs)")
    p.add_argument("--skip-existing", action="store_true", help="do not retrain members whose checkpoint exists")
    p.add_argument("--device", default=None, help="torch device for training and evaluation, e.g. cuda:0 (default: cpu)")
    p.add_argument("--bundle-root", default=None)
    p.set_defaults(func=run)


def _zoo(args, checkpoint_dir=None):
    from monai_medlocker.networks.zoo import load_zoo_config

    return load_zoo_config(args.zoo, checkpoint_dir=checkpoint_dir)


def ensure_lab(zoo, data: Path, n: int | None = None, size: int | None = None) -> Path:
    """Generate the zoo's lab into ``data`` unless a datalist is already there."""
    from monai_medlocker.data.synthetic import generate_dataset

    if not (data / "datalist.json").is_file():
        lab = dict(zoo.lab)
        lab.update({k: v for k, v in (("n", n), ("size", size)) if v is not None})
        generate_dataset(data, **lab)
    return data


def run(args: argparse.Namespace) -> int:
    root = bundle_root(args.bundle_root)
    names = args.members.split(",") if args.members else None
    if args.action == "report":
        zoo = _zoo(args, args.out)
        members = zoo.select(names)
        keep = in_shipped_models(zoo.checkpoint_dir, root) and not args.replace_shipped_model
        return _report(zoo, members, Path(new_run_dir("zoo-report")) if keep else zoo.checkpoint_dir)
    shipped = _zoo(args)
    shipped.select(names)  # an unknown member fails before any work
    if args.device is not None:
        import torch

        try:
            torch.device(args.device)  # a malformed name fails here, before any work
        except RuntimeError as err:
            raise ValueError(f"--device {args.device!r} is not a torch device: {str(err).splitlines()[0]}") from err
    out = args.out or (shipped.checkpoint_dir if args.replace_shipped_model else new_run_dir("zoo"))
    zoo = _zoo(args, check_model_output(out, root, args.replace_shipped_model))
    members = zoo.select(names)
    data = ensure_lab(zoo, Path(args.data) if args.data else zoo.data_dir, args.lab_n, args.lab_size)
    zoo.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    for member in members:
        if args.skip_existing and member.checkpoint.is_file():
            print(f"zoo: {member.name}: checkpoint exists, skipped ({member.checkpoint})")
            continue
        train_member(member, root, data, zoo.num_classes, epochs=args.epochs, device=args.device)
    return _report(zoo, members, zoo.checkpoint_dir)


def train_member(member, root: Path, data: Path, num_classes: int = 5, epochs: int | None = None,
                 device: str | None = None) -> dict:
    """Train one zoo member with ``train.json`` and evaluate it with ``evaluate.json``; returns its eval report."""
    out = member.checkpoint.parent
    common = {"dataset_dir": str(data.resolve()), "network_name": member.network, "input_size": member.input_size,
              "num_classes": num_classes, "device": device and f"$torch.device({device!r})"}
    start = time.perf_counter()
    train = parse_bundle_config("train.json", root, {
        **common, "output_dir": str(out.resolve()), "ckpt_name": member.checkpoint.name,
        "epochs": epochs if epochs is not None else member.train.get("epochs"),
        "batch_size": member.train.get("batch_size"), "learning_rate": member.train.get("learning_rate"),
        "seed": member.seed, "adversarial_epsilon": member.train.get("adversarial_epsilon", 0),
        "replace_shipped_model": True,  # run() has checked the folder (check_model_output)
    })
    run_workflow(train)
    train_seconds = time.perf_counter() - start
    report_dir = out / "eval" / member.name
    evaluate = parse_bundle_config("evaluate.json", root, {
        **common, "ckpt_path": str(member.checkpoint.resolve()), "output_dir": str(report_dir.resolve()),
    })
    run_workflow(evaluate)
    report_path = report_dir / "eval_report.json"
    report = json.loads(report_path.read_text())
    report["zoo"] = {"member": member.name, "role": member.role, "seed": member.seed,
                     "epochs": epochs if epochs is not None else member.train.get("epochs"),
                     "train_seconds": round(train_seconds, 1), "lab": str(data),
                     "adversarial_epsilon": member.train.get("adversarial_epsilon", 0)}
    report_path.write_text(json.dumps(report, indent=2))
    return report


def _report(zoo, members, dest: Path) -> int:
    """Write the zoo's report into ``dest`` (every member with an evaluation, so that training a few members keeps
    the others' rows) and print it; exit 1 when one of ``members`` has no evaluation."""
    def eval_report(m):
        return m.checkpoint.parent / "eval" / m.name / "eval_report.json"

    rows = []
    missing = [m.name for m in members if not eval_report(m).is_file()]
    for m in zoo.members.values():
        path = eval_report(m)
        if not path.is_file():
            continue
        rep = json.loads(path.read_text())
        rows.append({"member": m.name, "network": m.network, "input_size": m.input_size, "role": m.role,
                     "seed": m.seed, **{k: rep.get(k) for k in REPORT_KEYS},
                     "train_seconds": rep.get("zoo", {}).get("train_seconds"),
                     "epochs": rep.get("zoo", {}).get("epochs"),
                     "checkpoint_mb": round(m.checkpoint.stat().st_size / 1e6, 2) if m.checkpoint.is_file() else None})
    lines = ["| member | network | input | role | eval-mode accuracy | quadratic kappa | macro AUC | epochs | train s | MB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['member']} | {r['network']} | {r['input_size']} | {r['role']} | {r['accuracy']:.3f} | "
                     f"{r['quadratic_weighted_kappa']:.3f} | {r['auc_macro']:.3f} | {r['epochs']} | {r['train_seconds']} | "
                     f"{r['checkpoint_mb']} |")
    table = "\n".join(lines) + "\n"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "zoo_report.json").write_text(json.dumps({"members": rows, "missing": missing}, indent=2))
    (dest / "zoo_report.md").write_text(table)
    print(table, end="")
    if missing:
        print(f"zoo: no evaluation report in {zoo.checkpoint_dir} for: {', '.join(missing)} (run `medlocker zoo train`)")
        return 1
    return 0
