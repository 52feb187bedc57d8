"""The ``medlocker`` command line: one module per subcommand, each testable in-process.

Each subcommand module defines ``add_subparser(subparsers)``, which registers its parser and
sets ``func`` to a callable taking the parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from monai_medlocker import __version__
from monai_medlocker.bundle_config import user_error as _user_error
from monai_medlocker.runtime import prepare_environment

# Before any subcommand imports torch: OpenMP reads its wait policy once, when it loads (monai_medlocker.runtime).
prepare_environment()

__all__ = ["main", "SUBCOMMANDS"]

# Module names under monai_medlocker.cli, in the order shown by --help.
SUBCOMMANDS = (
    "synth", "train_demo", "zoo", "evaluate", "protect", "pacs", "keygen", "grant", "verify", "unlock", "lesions", "datalist",
)


class CLIError(Exception):
    """A user-facing error: printed without a traceback, exit code 2."""

    user_facing = True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medlocker", description="MedLocker for MONAI: protect fundus photographs against unauthorised AI analysis "
        "with a lesion-aware adversarial logo; certify, verify and unlock them; round trips with a PACS.")
    parser.add_argument("--version", action="version", version=f"medlocker {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"monai_medlocker.cli.{name}").add_subparser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (CLIError, ValueError, OSError, RuntimeError) as err:
        cause = _user_error(err)
        if cause is None:
            raise
        print(f"medlocker {args.command}: error: {cause}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
