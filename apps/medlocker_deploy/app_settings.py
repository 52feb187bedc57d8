"""The Deploy app's MedLocker settings: the options of ``medlocker protect``, from arguments or environment.

Every option of ``medlocker protect`` that sets how an image is protected (``--key``, ``--seed``,
``--model``, ``--optimizer``, ``--max-queries``, ...; :func:`monai_medlocker.cli.protect.add_protect_options`)
is taken here too, and each can also come from an environment variable ``MEDLOCKER_<OPTION>``
(``--key`` -> ``MEDLOCKER_KEY``, ``--max-queries`` -> ``MEDLOCKER_MAX_QUERIES``, a flag such as
``--quiet`` -> ``MEDLOCKER_QUIET=1``), which is how a packaged app (MAP) is usually configured. An
argument wins over its variable. The SDK's own arguments (``-i``, ``-o``, ``-m``, ``-w``, ``-l``)
and the ``HOLOSCAN_INPUT_PATH`` / ``HOLOSCAN_OUTPUT_PATH`` variables are passed on to the SDK.
"""

from __future__ import annotations

import argparse
import os
from typing import Mapping, Sequence

from monai_medlocker.cli.protect import add_protect_options, protect_overrides

__all__ = ["ENV_PREFIX", "AppSettings", "parse_app_settings"]

ENV_PREFIX = "MEDLOCKER_"
# Options of `medlocker protect` that have no meaning here: the app writes each run's outputs afresh.
_UNSUPPORTED = {"redo": "--redo"}


class AppSettings:
    """The parsed settings: ``overrides`` for ``inference.json``, the bundle folder, and the SDK's arguments.

    ``input`` and ``output`` are the ``-i``/``-o`` arguments (``None``: the SDK's default applies); they are
    also in ``sdk_argv``.
    """

    def __init__(self, args: argparse.Namespace, sdk_argv: list[str]):
        self.args = args
        self.input: str | None = args.input
        self.output: str | None = args.output
        self.bundle_root: str | None = args.bundle_root
        self.wait = bool(args.wait)
        overrides = protect_overrides(args)
        overrides["progress"] = False  # the app logs per instance; no progress bar
        for key in ("redo", "wait"):  # handled by the app, not by the protector
            overrides.pop(key, None)
        self.overrides = overrides
        self.sdk_argv = sdk_argv


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medlocker_deploy", allow_abbrev=False,
        description="MedLocker MONAI Deploy app: protect the fundus photographs of a DICOM folder (-i, or "
        "HOLOSCAN_INPUT_PATH) into derived instances with the MedLocker private block (-o, or HOLOSCAN_OUTPUT_PATH). "
        f"Each option below can also be set by an environment variable {ENV_PREFIX}<OPTION> "
        f"(e.g. {ENV_PREFIX}SEED=3, {ENV_PREFIX}KEY=owner.key).")
    # The SDK's own -i/-o, read here too so that the app checks them before the SDK creates the output folder.
    parser.add_argument("-i", "--input", help="input DICOM folder (default: HOLOSCAN_INPUT_PATH, else ./input)")
    parser.add_argument("-o", "--output", help="output folder (default: HOLOSCAN_OUTPUT_PATH, else ./output)")
    add_protect_options(parser)
    return parser


def _env_name(option: str) -> str:
    return ENV_PREFIX + option.lstrip("-").replace("-", "_").upper()


def _env_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> list[str]:
    """The options set by ``MEDLOCKER_<OPTION>`` variables, as command-line arguments."""
    out: list[str] = []
    for action in parser._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if not longs or action.dest == "help":
            continue
        value = environ.get(_env_name(longs[0]))
        if value is None or value == "":
            continue
        if action.nargs == 0:  # a flag: on for 1/true/yes
            if value.strip().lower() in ("1", "true", "yes", "on"):
                out.append(longs[0])
        else:
            out.append(f"{longs[0]}={value}")
    return out


def parse_app_settings(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> AppSettings:
    """Split ``argv`` (``argv[0]`` is the program) into MedLocker settings and the SDK's arguments.

    Raises:
        SystemExit: an invalid option value (argparse's message names it), or an option the app does not support.
    """
    parser = build_parser()
    environ = os.environ if environ is None else environ
    args, rest = parser.parse_known_args(_env_arguments(parser, environ) + list(argv[1:]))
    for dest, option in _UNSUPPORTED.items():
        if getattr(args, dest, None):
            parser.error(f"{option} is not supported by the Deploy app: it protects every selected instance on each "
                         "run and replaces its own earlier outputs")
    given = [arg for option, value in (("-i", args.input), ("-o", args.output)) if value for arg in (option, value)]
    return AppSettings(args, [argv[0], *given, *rest])
