"""Start-up cost: the commands that need no model never import torch or MONAI (issue 13 A5).

Wall-clock figures are in benchmarks/bench_startup.py (a timed test would be noise on a shared machine);
here each command runs in a fresh interpreter and reports which heavy modules it loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "monai", "ignite", "scipy")

_PROBE = """
import json, sys
from monai_medlocker.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as stop:  # --help
    code = stop.code
print(json.dumps({"code": code, "heavy": sorted(m for m in %r if m in sys.modules)}))
""" % (HEAVY,)


def _probe(*argv: str, env: dict | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    done = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [["--help"], ["verify", "--help"], ["unlock", "--help"], ["keygen", "--help"],
                                  ["grant", "--help"], ["protect", "--help"]])
def test_help_imports_no_heavy_module(argv):
    result = _probe(*argv)
    assert result == {"code": 0, "heavy": []}, (argv, result)


@pytest.fixture(scope="module")
def protected(tmp_path_factory):
    """One PNG protected with an owner key made by ``medlocker keygen`` (empty mask: fast); the published part."""
    from conftest import TinyConv
    from monai_medlocker.networks import Surrogate, model_spec
    from monai_medlocker.workflows.protect import DatasetProtector

    base = tmp_path_factory.mktemp("startup")
    keygen = _probe("keygen", str(base / "owner"))
    assert keygen == {"code": 0, "heavy": []}, keygen
    src = base / "src"
    src.mkdir()
    shutil.copy(ROOT / "bundle" / "samples" / "fundus_c.png", src / "a.png")
    Image.fromarray(np.zeros((512, 512), np.uint8)).save(src / "a_lesions.png")
    out = base / "out"
    surrogate = Surrogate(TinyConv(), model_spec("resnet-tiny", 64))
    summary = DatasetProtector(src, out, surrogate, watermark={"max_queries": 4}, lesion_segmenter="masks",
                               owner_key=base / "owner.key", progress=False).run()
    assert summary["protected"] == 1, summary
    return base, src, out / "public"


def test_verify_grant_unlock_run_without_heavy_modules(protected):
    base, src, out = protected
    verify = _probe("verify", str(out), "--pub", str(base / "owner.pub"), "--quiet")
    assert verify == {"code": 0, "heavy": []}, verify
    grant = _probe("grant", "--key", str(base / "owner.key"), "--images", str(out), "--out", str(base / "g.grant"))
    assert grant["heavy"] == [] and grant["code"] == 0, grant
    unlock = _probe("unlock", str(out), str(base / "unlocked"), "--key", str(base / "owner.key"), "--quiet")
    assert unlock == {"code": 0, "heavy": []}, unlock
    assert np.array_equal(np.asarray(Image.open(base / "unlocked" / "a.png")), np.asarray(Image.open(src / "a.png")))


def test_fast_path_builds_what_the_config_parser_builds(protected):
    """verify.json's verifier built without monai.bundle has the settings the ConfigParser gives it."""
    from monai_medlocker.bundle_config import build_workflow, bundle_root, parse_bundle_config

    base, _, out = protected
    overrides = {"dataset_dir": str(out), "public_key": str(base / "owner.pub"), "progress": False}
    fast = build_workflow("verify.json", "verifier", None, overrides)
    slow = parse_bundle_config("verify.json", bundle_root(), overrides).get_parsed_content("verifier")
    assert type(fast) is type(slow)
    assert (fast.input_path, fast.public_key.key_id, fast.progress, fast.report) == \
        (slow.input_path, slow.public_key.key_id, slow.progress, slow.report)
    fast_rows, slow_rows = fast.run()["results"], slow.run()["results"]
    assert [r["verdict"] for r in fast_rows] == [r["verdict"] for r in slow_rows] == ["authentic"]
