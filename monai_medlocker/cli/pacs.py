"""``medlocker pacs protect --url URL --study STUDY_UID``: protect a PACS study into a derived series.

Runs the bundle's ``inference.json`` merged with ``pacs_protect.json``, so the protect settings
are the same as for ``medlocker protect``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from monai_medlocker.bundle_config import bundle_root, parse_bundle_config
from monai_medlocker.cli._output import results_to_stderr
from monai_medlocker.cli.protect import add_protect_options, protect_overrides

__all__ = ["add_subparser", "run_protect"]


def add_subparser(subparsers) -> None:
    p = subparsers.add_parser("pacs", help="protect studies held by a PACS (DICOMweb)",
                              description="Round trips with a clinic's PACS over DICOMweb.")
    actions = p.add_subparsers(dest="pacs_command", metavar="ACTION")
    pp = actions.add_parser(
        "protect", help="pull a study, protect each fundus instance, store a new derived series back",
        description="Pull STUDY over DICOMweb (QIDO-RS/WADO-RS), protect each fundus photograph instance and store the "
        "protected instances back as a new derived series (STOW-RS). The original series are never changed. A study "
        "that already has a MedLocker series is reported and left alone unless --force is given.",
    )
    pp.add_argument("--url", required=True, help="DICOMweb root of the PACS, e.g. http://127.0.0.1:8042/dicom-web")
    pp.add_argument("--study", required=True, help="Study Instance UID")
    pp.add_argument("--force", action="store_true", help="protect again even if the study already has a MedLocker series")
    pp.add_argument("--work-dir", dest="work_dir",
                    help="folder for the pulled and protected copies and pacs_summary.json, kept after the run (default: a new "
                    "temporary folder, removed after the run, also after an error)")
    pp.add_argument("--retries", dest="pacs_retries", type=int, help="attempts per PACS request (default: 3)")
    pp.add_argument("--timeout", dest="pacs_timeout", type=float, help="seconds per PACS request (default: 30)")
    pp.add_argument("--auth-env", dest="pacs_auth_env", metavar="VAR",
                    help="environment variable holding the PACS credentials: 'user:password' (HTTP Basic) or "
                    "'Bearer <token>'")
    pp.add_argument("--dimse", metavar="HOST:PORT",
                    help="store the derived instances by C-STORE to this DICOM port instead of STOW-RS")
    pp.add_argument("--called-aet", dest="dimse_called_aet", help="the PACS's AE title for --dimse (default: ANY-SCP)")
    pp.add_argument("--calling-aet", dest="dimse_calling_aet", help="our AE title for --dimse (default: MEDLOCKER)")
    pp.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    add_protect_options(pp)
    pp.set_defaults(func=run_protect)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_protect(args: argparse.Namespace) -> int:
    root = bundle_root(args.bundle_root)
    overrides = {"pacs_url": args.url, "study_uid": args.study, "force": bool(args.force),
                 "pacs_retries": args.pacs_retries, "pacs_timeout": args.pacs_timeout, "pacs_auth_env": args.pacs_auth_env,
                 **protect_overrides(args)}
    if args.dimse:
        host, _, port = args.dimse.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--dimse must be HOST:PORT, got {args.dimse!r}")
        overrides.update(dimse_host=host, dimse_port=int(port), dimse_called_aet=args.dimse_called_aet,
                         dimse_calling_aet=args.dimse_calling_aet)
    if args.work_dir:
        overrides["work_dir"] = str(Path(args.work_dir).resolve())  # StudyProtector refuses a non-empty one
    parser = parse_bundle_config(["inference.json", "pacs_protect.json"], root, overrides)
    with results_to_stderr(args.json):  # --json: stdout holds the JSON summary alone
        summary = parser.get_parsed_content("study_protector").run()
    if args.json:
        print(json.dumps(summary, indent=2), file=sys.stdout)
    return int(summary["exit_code"])
