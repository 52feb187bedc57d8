"""``medlocker protect IN OUT``: the bundle's inference.json (protect workflow) from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from monai_medlocker.cli._bundle import bundle_root, parse_bundle_config
from monai_medlocker.cli.keygen import add_passphrase_options, read_passphrase
from monai_medlocker.watermark.optimizers import OPTIMIZERS


def add_subparser(subparsers) -> None:
    p = subparsers.add_parser(
        "protect", help="watermark a folder or datalist of fundus images",
        description="Protect every PNG/JPEG/DICOM fundus image in IN (a folder or a datalist .json) and write lossless "
        "PNGs (derived DICOM instances for DICOM inputs), per-image parameter records, manifest.jsonl and summary.json "
        "to OUT. Inputs are never modified.",
    )
    p.add_argument("input", help="folder of images (masks beside them) or a datalist JSON")
    p.add_argument("output", help="output folder (must not be inside the input folder)")
    add_protect_options(p)
    p.set_defaults(func=run)


def add_protect_options(p: argparse.ArgumentParser) -> None:
    """The protect settings shared by ``protect`` and ``pacs protect`` (each maps to an inference.json key)."""
    p.add_argument("--bundle-root", help="the MedLocker bundle folder (default: the one beside the package)")
    p.add_argument("--model", dest="ckpt_path", help="surrogate checkpoint (plain state_dict); default: the demo model")
    p.add_argument("--network", dest="network_name", help="network name of --model (e.g. resnet-tiny)")
    p.add_argument("--num-classes", dest="num_classes", type=int)
    p.add_argument("--input-size", dest="input_size", type=int)
    p.add_argument("--optimizer", choices=OPTIMIZERS)
    p.add_argument("--max-queries", dest="max_queries", type=int, help="query budget per mark")
    p.add_argument("--space", dest="search_space", help="'paper', 'full', or a JSON object of SearchSpace fields")
    p.add_argument("--logo", help="RGBA logo PNG (default: the shipped owner logo)")
    p.add_argument("--seed", type=int)
    p.add_argument("--on-infeasible", dest="on_infeasible", choices=("raise", "skip"))
    p.add_argument("--wsm-margin", dest="wsm_margin", type=int, help="pixels added around each lesion box")
    p.add_argument("--lesion-segmenter", dest="lesion_segmenter", choices=("builtin", "masks", "network"),
                   help="lesion source for images without mask files: the built-in detector (default), a trained "
                   "segmenter (--segmenter-checkpoint), or 'masks' to require masks")
    p.add_argument("--segmenter-checkpoint", dest="segmenter_checkpoint",
                   help="trained lesion segmenter state_dict for --lesion-segmenter network")
    p.add_argument("--dicom-encoding", dest="dicom_encoding", choices=("explicit", "rle", "jpeg-ls"),
                   help="transfer syntax of derived DICOM instances (lossless only; default: explicit, uncompressed)")
    p.add_argument("--key", dest="owner_key", help="owner key (from medlocker keygen): sign a certificate and seal a "
                   "restore payload into each protected image")
    add_passphrase_options(p, "protects the --key file")
    p.add_argument("--redo", action="store_true", default=None,
                   help="resuming into an output folder made with other output-changing settings (key, optimizer, "
                   "search space, model, logo, seed): protect its images again with these settings instead of refusing")
    p.add_argument("--wait", action="store_true", default=None,
                   help="if another run is writing to the output folder, wait for it instead of refusing")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def protect_overrides(args: argparse.Namespace) -> dict:
    """inference.json overrides from the shared protect options (``None`` = keep the config's value)."""
    return {
        "ckpt_path": args.ckpt_path and str(Path(args.ckpt_path).resolve()),
        "network_name": args.network_name,
        "num_classes": args.num_classes,
        "input_size": args.input_size,
        "optimizer": args.optimizer,
        "max_queries": args.max_queries,
        "search_space": search_space_option(args.search_space),
        "logo": args.logo and str(Path(args.logo).resolve()),
        "seed": args.seed,
        "on_infeasible": args.on_infeasible,
        "wsm_margin": args.wsm_margin,
        "lesion_segmenter": args.lesion_segmenter,
        "segmenter_checkpoint": args.segmenter_checkpoint and str(Path(args.segmenter_checkpoint).resolve()),
        "progress": False if args.quiet else None,
        "dicom_encoding": args.dicom_encoding,
        "owner_key": args.owner_key and str(Path(args.owner_key).resolve()),
        "owner_key_passphrase": read_passphrase(args),
        "redo": args.redo,
        "wait": args.wait,
    }


def search_space_option(value: str | None):
    """The ``--space`` value as the config takes it (``None``, a name, or a dict), checked now.

    Raises:
        ValueError: not JSON, or not a search space (the message names ``--space``).
    """
    from monai_medlocker.watermark.problem import SearchSpace

    if value is None:
        return None
    space = value
    if value.lstrip().startswith("{"):
        try:
            space = json.loads(value)
        except ValueError as err:
            raise ValueError(f"--space: {value!r} is not valid JSON ({err})") from err
    try:
        SearchSpace.from_config(space)
    except (TypeError, ValueError) as err:
        raise ValueError(f"--space: {err}") from err
    return space


def run(args: argparse.Namespace) -> int:
    root = bundle_root(args.bundle_root)
    overrides = {"dataset_dir": str(Path(args.input).resolve()), "output_dir": str(Path(args.output).resolve()),
                 **protect_overrides(args)}
    parser = parse_bundle_config("inference.json", root, overrides)
    summary = parser.get_parsed_content("protector").run()
    return int(summary["exit_code"])
