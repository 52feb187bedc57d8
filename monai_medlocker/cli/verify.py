"""``medlocker verify FILE_OR_DIR --pub OWNER_PUB``: the bundle's verify.json from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from monai_medlocker.bundle_config import build_workflow

__all__ = ["add_subparser", "run"]


def add_subparser(subparsers) -> None:
    p = subparsers.add_parser(
        "verify", help="check protected images' certificates against the owner's public key",
        description="Print one verdict per image: AUTHENTIC (restorable); pixels authentic, restore data damaged; "
        "DICOM header modified; watermark present, pixels modified; pixels modified, watermark not found; invalid "
        "signature; foreign owner; no certificate. Exit code 0 when every image is authentic, 3 when the others only "
        "have damaged restore data, 1 otherwise.",
    )
    p.add_argument("input", metavar="FILE_OR_DIR", help="a protected image (PNG/DICOM, or a copy with its sidecar) or a folder")
    p.add_argument("--pub", required=True, help="the owner's public key file (OWNER.pub)")
    p.add_argument("--logo", help="the owner's logo, to look for it in modified images (default: the shipped logo)")
    p.add_argument("--json", action="store_true", help="print one machine-readable summary (JSON) on stdout, with each "
                   "image's path, image id, verdict, restorable and detail (the verdict lines then go to stderr)")
    p.add_argument("--report", help="also write the JSON report to this file")
    p.add_argument("--bundle-root", help="the MedLocker bundle folder (default: the one beside the package)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from monai_medlocker.cli._output import json_summary, print_json, print_result
    from monai_medlocker.workflows.verify import format_verify_summary

    overrides = {"dataset_dir": str(Path(args.input).resolve()), "public_key": str(Path(args.pub).resolve()),
                 "logo": args.logo and str(Path(args.logo).resolve()), "report": args.report and str(Path(args.report).resolve()),
                 "progress": False if args.quiet else None}
    summary = build_workflow("verify.json", "verifier", args.bundle_root, overrides).run()
    print_result(format_verify_summary(summary), args.json)  # the verdicts are the result: stdout
    if args.json:
        print_json(json_summary("verify", summary, summary["results"], status_key="verdict"))
    return int(summary["exit_code"])
