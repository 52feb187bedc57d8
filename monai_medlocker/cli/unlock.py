"""``medlocker unlock FILE_OR_DIR OUT --key OWNER_KEY | --grant GRANT``: the bundle's unlock.json."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from monai_medlocker.bundle_config import build_workflow
from monai_medlocker.cli.keygen import add_passphrase_options, read_passphrase

__all__ = ["add_subparser", "run"]


def add_subparser(subparsers) -> None:
    p = subparsers.add_parser(
        "unlock", help="restore the bit-exact originals of protected images (owner key or grant)",
        description="Remove the logo from each protected image with the owner key or a grant and write the original, "
        "checked bit for bit against the certified hash, to OUT. DICOM images get their original UIDs back. An image "
        "that does not unlock (wrong key, not covered by the grant, tampered) is reported and nothing is written for it.",
    )
    p.add_argument("input", metavar="FILE_OR_DIR", help="a protected image or a folder of them")
    p.add_argument("output", metavar="OUT", help="output folder (not inside the input folder)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--key", help="the owner key file (OWNER.key)")
    who.add_argument("--grant", help="a grant file from medlocker grant")
    p.add_argument("--pub", help="the owner's public key, to check signatures when unlocking with a grant")
    add_passphrase_options(p, "protects the --key file")
    p.add_argument("--json", action="store_true", help="print one machine-readable summary (JSON) on stdout, with each "
                   "image's path, image id, status and error")
    p.add_argument("--bundle-root", help="the MedLocker bundle folder (default: the one beside the package)")
    p.add_argument("--wait", action="store_true", default=None,
                   help="if another run is writing to OUT, wait for it instead of refusing")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from monai_medlocker.cli._output import json_summary, print_json, print_result
    from monai_medlocker.workflows.unlock import format_unlock_summary

    resolve = lambda p: p and str(Path(p).resolve())  # noqa: E731
    overrides = {"dataset_dir": resolve(args.input), "output_dir": resolve(args.output), "owner_key": resolve(args.key),
                 "grant": resolve(args.grant), "public_key": resolve(args.pub),
                 "progress": False if args.quiet else None, "wait": args.wait}
    # unlock.json's default passphrase is $MEDLOCKER_KEY_PASSPHRASE: given as a value, so that no config expression is needed.
    passphrase = read_passphrase(args) or os.environ.get("MEDLOCKER_KEY_PASSPHRASE")
    summary = build_workflow("unlock.json", "unlocker", args.bundle_root, overrides,
                             exact={"owner_key_passphrase": passphrase}).run()
    print_result(format_unlock_summary(summary), args.json)
    if args.json:
        print_json(json_summary("unlock", summary, summary["results"]))
    return int(summary["exit_code"])
