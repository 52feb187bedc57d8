"""Find the MONAI Bundle and run its configs (the CLI, the workflows and the apps all go through here).

It lies below ``cli/`` and ``workflows/`` so that both may import it; it imports nothing of the package."""

from __future__ import annotations

import atexit
import contextlib
import importlib
import itertools
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from monai.bundle import ConfigParser

__all__ = [
    "bundle_root", "parse_bundle_config", "run_workflow", "build_workflow", "config_bundle_root", "user_error",
    "one_line_errors", "check_argument_types", "new_run_dir", "in_shipped_models", "check_model_output",
]


def bundle_root(explicit: str | None = None) -> Path:
    """The bundle folder: ``explicit``, ``$MEDLOCKER_BUNDLE``, or ``bundle/`` beside the package source."""
    candidates = [explicit, os.environ.get("MEDLOCKER_BUNDLE"), Path(__file__).resolve().parents[1] / "bundle"]
    for c in candidates:
        if c and (Path(c) / "configs").is_dir():
            return Path(c).resolve()
    raise FileNotFoundError(
        "MedLocker bundle not found: pass --bundle-root or set MEDLOCKER_BUNDLE to the folder holding configs/ and models/"
    )


def config_bundle_root() -> str:
    """The ``bundle_root`` of a config run by ``monai.bundle``: the folder of the config file, not the working directory.

    ``ConfigWorkflow`` knows the first config file's folder (``config_root_path``); as its ``run`` does for
    ``sys.path``, the bundle is that folder's parent when it is named ``configs``. A config parsed without a
    ``ConfigWorkflow`` (and without ``bundle_root`` set) gets the default bundle (:func:`bundle_root`).
    """
    workflows = sys.modules.get("monai.bundle.workflows")
    for frame in _callers():
        owner = frame.f_locals.get("self")
        if workflows is not None and isinstance(owner, workflows.ConfigWorkflow):
            path = Path(owner.config_root_path).resolve()
            return str(path.parent if path.name == "configs" else path)
    return str(bundle_root())


def _callers():
    """The frames of the current call stack, innermost first."""
    frame = sys._getframe(1)
    while frame is not None:
        yield frame
        frame = frame.f_back


def user_error(err: BaseException) -> BaseException | None:
    """The user-facing error behind ``err`` (``None`` for a bug): MONAI's config parser wraps the real one in a
    RuntimeError. An OSError names its file and the problem ("Permission denied: 'x'"): one line, not a traceback."""
    seen = err
    while seen is not None:
        if isinstance(seen, (ValueError, OSError)) or getattr(seen, "user_facing", False):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def one_line_errors() -> None:
    """Under ``python -m monai.bundle``, print a user error as one line (as the CLI does), not a traceback.

    Every config calls this first in ``initialize``. It then checks the arguments given on the command line
    (:func:`check_argument_types`), so that a wrongly typed one fails in one line before any of it is used.
    Elsewhere (the CLI, the apps, tests) it does nothing: those callers handle errors themselves. A bug (no
    user-facing error in the chain) keeps its traceback.
    """
    main = sys.modules.get("__main__")
    if getattr(getattr(main, "__spec__", None), "name", None) != "monai.bundle.__main__":
        return
    default = sys.excepthook

    def hook(kind, err, tb):
        cause = user_error(err) if isinstance(err, Exception) else None
        if cause is None:
            default(kind, err, tb)
        else:
            print(f"monai.bundle run: error: {cause}", file=sys.stderr)

    sys.excepthook = hook
    for frame in _callers():  # monai.bundle's create_workflow holds the config files and the user's arguments
        if frame.f_code.co_name == "create_workflow" and frame.f_globals.get("__name__") == "monai.bundle.scripts":
            check_argument_types(frame.f_locals.get("config_file"), frame.f_locals.get("_args") or {})
            return


def check_argument_types(config_file, given: dict) -> None:
    """Refuse an argument whose type is not that of the config's default, where the default is a bool, an int or
    a float. ``python -m monai.bundle run --max_queries abc`` passes the string ``'abc'``, which would otherwise
    fail deep inside the code with a TypeError that cannot be told from a bug. ``None`` and ``$``/``@``/``%``
    expressions pass; so does an int for a float.

    Args:
        config_file: the config file(s) as ``monai.bundle run`` got them (a list is merged in order).
        given: the arguments given, by config id (``#`` paths included); ids the configs lack are not checked.

    Raises:
        ValueError: naming the first wrongly typed argument, its value and the type expected.
    """
    from monai.bundle import ConfigParser

    defaults = ConfigParser(ConfigParser.load_config_files(config_file))
    for key, value in given.items():
        default = defaults.get(key)
        if value is None or (isinstance(value, str) and value.startswith(("$", "@", "%"))):
            continue
        if isinstance(default, bool):
            ok, expected = isinstance(value, bool), "True or False"
        elif isinstance(default, int):
            ok, expected = isinstance(value, int) and not isinstance(value, bool), "an integer"
        elif isinstance(default, float):
            ok, expected = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        else:
            continue
        if not ok:
            raise ValueError(f"--{key} {value!r}: expected {expected} (the config's default is {default!r})")


def new_run_dir(kind: str, parent: str | Path = "runs") -> str:
    """A new folder name ``runs/<kind>-<UTC time>-<random>`` for a run's default outputs (not created here).

    Default outputs never go into the bundle: shipped models and reports stay as they are. A run that fails
    before writing anything leaves no empty folder: at exit, the folder (and the parents it created) are removed
    if empty."""
    while True:
        path = Path(parent, f"{kind}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}").resolve()
        if not path.exists():
            print(f"{kind}: outputs go to {path}", file=sys.stderr)
            atexit.register(_remove_empty, [path, *itertools.takewhile(lambda p: not p.exists(), path.parents)])
            return str(path)


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # innermost first; a folder that is not empty (or is gone) stays as it is
        with contextlib.suppress(OSError):
            folder.rmdir()


def in_shipped_models(path: str | Path, root: str | Path) -> bool:
    """Whether ``path`` is the bundle's ``models/`` folder or lies inside it."""
    path, models = Path(path).resolve(), (Path(root) / "models").resolve()
    return path == models or models in path.parents


def check_model_output(output_dir: str | Path, root: str | Path, replace_shipped_model: bool = False) -> str:
    """``output_dir``, unless it lies in the bundle's ``models/`` folder and replacing shipped models was not asked for.

    Raises:
        ValueError: ``output_dir`` is inside ``<root>/models`` and ``replace_shipped_model`` is false.
    """
    out, models = Path(output_dir).resolve(), (Path(root) / "models").resolve()
    if not replace_shipped_model and in_shipped_models(out, root):
        raise ValueError(f"output_dir {out} is inside the bundle's shipped models ({models}): choose another "
                         "output_dir, or set replace_shipped_model (train-demo, zoo: --replace-shipped-model) to replace them")
    return str(out)


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
