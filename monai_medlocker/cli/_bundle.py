"""Find the MONAI Bundle and run its configs: the CLI is a thin shell over the bundle configs."""

from __future__ import annotations

import os
from pathlib import Path

from monai.bundle import ConfigParser

__all__ = ["bundle_root", "parse_bundle_config", "run_workflow"]


def bundle_root(explicit: str | None = None) -> Path:
    """The bundle folder: ``explicit``, ``$MEDLOCKER_BUNDLE``, or ``bundle/`` beside the package source."""
    candidates = [explicit, os.environ.get("MEDLOCKER_BUNDLE"), Path(__file__).resolve().parents[2] / "bundle"]
    for c in candidates:
        if c and (Path(c) / "configs").is_dir():
            return Path(c).resolve()
    raise FileNotFoundError(
        "MedLocker bundle not found: pass --bundle-root or set MEDLOCKER_BUNDLE to the folder holding configs/ and models/"
    )


def parse_bundle_config(config_name: str | list[str], root: Path, overrides: dict) -> ConfigParser:
    """Read ``root/configs/<config_name>`` (a list is merged in order, as ``monai.bundle run`` does) with
    ``bundle_root`` set and the given overrides (``None`` values skipped)."""
    names = [config_name] if isinstance(config_name, str) else list(config_name)
    parser = ConfigParser()
    parser.read_config([str(root / "configs" / name) for name in names])
    parser["bundle_root"] = str(root)
    for key, value in overrides.items():
        if value is not None:
            parser[key] = value
    return parser


def run_workflow(parser: ConfigParser) -> None:
    """Run a parsed bundle config's ``initialize``, ``run`` and ``finalize`` sections, as ``monai.bundle run`` does."""
    for section in ("initialize", "run", "finalize"):
        if section in parser.config:
            parser.get_parsed_content(section, lazy=False)
