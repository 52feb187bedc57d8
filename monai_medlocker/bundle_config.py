"""Find the MONAI Bundle and run its configs (the CLI, the workflows and the apps all go through here).

It lies below ``cli/`` and ``workflows/`` so that both may import it; it imports nothing of the package."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from monai.bundle import ConfigParser

__all__ = ["bundle_root", "parse_bundle_config", "run_workflow", "build_workflow"]


def bundle_root(explicit: str | None = None) -> Path:
    """The bundle folder: ``explicit``, ``$MEDLOCKER_BUNDLE``, or ``bundle/`` beside the package source."""
    candidates = [explicit, os.environ.get("MEDLOCKER_BUNDLE"), Path(__file__).resolve().parents[1] / "bundle"]
    for c in candidates:
        if c and (Path(c) / "configs").is_dir():
            return Path(c).resolve()
    raise FileNotFoundError(
        "MedLocker bundle not found: pass --bundle-root or set MEDLOCKER_BUNDLE to the folder holding configs/ and models/"
    )


def parse_bundle_config(config_name: str | list[str], root: Path, overrides: dict) -> ConfigParser:
    """Read ``root/configs/<config_name>`` (a list is merged in order, as ``monai.bundle run`` does) with
    ``bundle_root`` set and the given overrides (``None`` values skipped)."""
    from monai.bundle import ConfigParser  # imports all of MONAI (seconds): only commands that run a config pay it

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


def build_workflow(config_name: str, component: str, explicit_root: str | None, overrides: dict, exact: dict | None = None):
    """Instantiate ``component`` of the bundle config ``config_name`` with the given overrides.

    ``monai.bundle`` imports all of MONAI and torch (seconds), which the key, verify and unlock commands
    do not need. When the component is a plain ``_target_`` under ``monai_medlocker`` whose arguments are
    JSON values or ``@name`` references to plain top-level settings, it is built here directly, exactly
    as the config parser would build it; anything else (expressions, macros, nested references) goes
    through :func:`parse_bundle_config`.

    Args:
        config_name: the config file under ``configs/``.
        component: the top-level id of the object to build (e.g. ``"verifier"``).
        explicit_root: the ``--bundle-root`` option (``None``: the default bundle).
        overrides: settings replacing the config's (``None`` values keep the config's).
        exact: settings replacing the config's even when ``None``.
    """
    root = bundle_root(explicit_root)
    path = root / "configs" / config_name
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    given = {k: v for k, v in overrides.items() if v is not None} | dict(exact or {})
    settings = {**config, "bundle_root": str(root), **given}
    kwargs = _plain_arguments(config.get(component), settings)
    if kwargs is None:
        parser = parse_bundle_config(config_name, root, overrides)
        for key, value in (exact or {}).items():
            parser[key] = value
        return parser.get_parsed_content(component)
    module, _, name = config[component]["_target_"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**kwargs)


def _is_plain(value) -> bool:
    """A JSON value the config parser passes through unchanged (no expression, reference or macro)."""
    if isinstance(value, str):
        return not value.startswith(("$", "@", "%"))
    if isinstance(value, list):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(not str(k).startswith("_") and _is_plain(v) for k, v in value.items())
    return value is None or isinstance(value, (bool, int, float))


def _plain_arguments(spec, settings: dict) -> dict | None:
    """The keyword arguments of a plain ``_target_`` component, or ``None`` when the config parser is needed."""
    if not isinstance(spec, dict) or not str(spec.get("_target_", "")).startswith("monai_medlocker."):
        return None
    kwargs = {}
    for key, value in spec.items():
        if key == "_target_":
            continue
        if key.startswith("_"):  # _disabled_, _requires_, _mode_: the parser's business
            return None
        if isinstance(value, str) and value.startswith("@") and value[1:] in settings:
            value = settings[value[1:]]
        if not _is_plain(value):
            return None
        kwargs[key] = value
    return kwargs
