"""Stage the MedLocker Deploy app as a folder that ``monai-deploy package`` turns into a MAP.

    python3 scripts/stage_deploy_map.py [--out build/medlocker_deploy_map]

The packager copies one application folder into the image (``/opt/holoscan/app``) and pip-installs
its ``requirements.txt`` there. The app imports the ``monai_medlocker`` package and reads the
bundle's ``configs/inference.json`` and ``models/``, neither of which is on PyPI, so the staged
folder holds, beside the app's ``__main__.py``: the package (importable from the app folder, which
Python puts first on ``sys.path``), the bundle (``bundle/``, where ``monai_medlocker`` looks for it
beside the package), and a ``requirements.txt`` made of the app's own pins followed by the project's
runtime dependencies from ``pyproject.toml`` (its ``dependencies`` and the ``dicom`` extra).
Nothing here needs Docker; ``monai-deploy package`` does (see bundle/docs/deploy.md).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "apps" / "medlocker_deploy"
BUNDLE_PARTS = ("configs", "models", "LICENSE")
MARKER = ".medlocker-deploy-map"
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "eval")  # models/zoo/eval: evaluation outputs, not models


def requirements_text() -> str:
    """The staged ``requirements.txt``: the app's pins, then the project's runtime dependencies."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    runtime = list(project["dependencies"]) + list(project["optional-dependencies"]["dicom"])
    return ((APP / "requirements.txt").read_text(encoding="utf-8").rstrip("\n")
            + "\n# The MedLocker package's runtime dependencies (pyproject.toml: dependencies and the dicom extra).\n"
            + "\n".join(runtime) + "\n")


def stage(out: Path) -> Path:
    """Make ``out`` (replacing an earlier staging there) and return it."""
    if out.exists():
        if not (out / MARKER).is_file():  # never delete a folder this script did not make
            raise ValueError(f"{out} exists and is not a staged MAP folder; remove it or choose another --out")
        shutil.rmtree(out)
    shutil.copytree(APP, out, ignore=_IGNORE)
    (out / MARKER).write_text("made by scripts/stage_deploy_map.py; replaced on the next staging\n", encoding="utf-8")
    shutil.copytree(ROOT / "monai_medlocker", out / "monai_medlocker", ignore=_IGNORE)
    for part in BUNDLE_PARTS:
        src = ROOT / "bundle" / part
        if src.is_dir():
            shutil.copytree(src, out / "bundle" / part, ignore=_IGNORE)
        else:
            (out / "bundle").mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, out / "bundle" / part)
    # The protect default is the zoo's source ensemble: the package reads the zoo's description from
    # configs/zoo.json beside it (the checkpoints come from the bundle's models/zoo).
    (out / "configs").mkdir()
    shutil.copy2(ROOT / "configs" / "zoo.json", out / "configs" / "zoo.json")
    (out / "requirements.txt").write_text(requirements_text(), encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "build" / "medlocker_deploy_map"), help="the folder to make")
    args = parser.parse_args(argv)
    try:
        out = stage(Path(args.out))
    except (ValueError, OSError) as err:
        print(f"stage_deploy_map: error: {err}", file=sys.stderr)
        return 2
    print(f"staged {out}; package it with:\n  monai-deploy package {out} -c {out / 'app.yaml'} "
          f"-t medlocker-deploy:0.1.0 --platform x86_64")
    return 0


if __name__ == "__main__":
    sys.exit(main())
