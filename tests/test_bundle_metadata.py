"""The bundle's metadata follows the model-zoo conventions (checked offline against the vendored schema)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import monai
import numpy
import pytest
import torch

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
REQUIRED = ("version", "changelog", "monai_version", "pytorch_version", "numpy_version", "required_packages_version",
            "task", "description", "authors", "copyright", "network_data_format")


def test_metadata_has_required_keys_and_semver():
    meta = json.loads((BUNDLE / "configs/metadata.json").read_text())
    missing = [k for k in REQUIRED if k not in meta]
    assert not missing, f"metadata.json lacks {missing}"
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["version"])
    assert meta["version"] in meta["changelog"]
    fmt = meta["network_data_format"]
    assert fmt["inputs"]["image"]["num_channels"] == 3
    assert fmt["outputs"]["pred"]["num_channels"] == 5


def test_metadata_versions_match_the_environment():
    meta = json.loads((BUNDLE / "configs/metadata.json").read_text())
    assert meta["monai_version"] == monai.__version__
    assert torch.__version__.startswith(meta["pytorch_version"])
    # numpy is not pinned: the metadata records the version the demo model was made with.
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["numpy_version"])
    assert int(meta["numpy_version"].split(".")[0]) == int(numpy.__version__.split(".")[0])


def test_bundle_layout_and_docs_sections_in_model_zoo_order():
    for rel in ("LICENSE", "docs/README.md", "configs/train.json", "configs/evaluate.json", "configs/inference.json",
                "models/model.pt"):
        assert (BUNDLE / rel).is_file(), rel
    text = (BUNDLE / "docs/README.md").read_text()
    sections = ["Overview", "Data", "Inputs and Outputs", "Performance", "Commands", "References", "License"]
    positions = [text.find(f"## {s}") for s in sections]
    assert all(p >= 0 for p in positions), dict(zip(sections, positions))
    assert positions == sorted(positions)


# ------------------------------------------------------------------- the metadata tells the truth (issue 20 item 9)

SCHEMA = Path(__file__).resolve().parent / "schemas" / "meta_schema_20240725.json"


@pytest.mark.slow
def test_metadata_verifies_offline_against_the_vendored_schema(tmp_path):
    """``monai.bundle verify_metadata`` reads the vendored schema (the file exists: nothing is downloaded)."""
    meta = json.loads((BUNDLE / "configs/metadata.json").read_text())
    assert meta["schema"].endswith("/" + SCHEMA.name)
    schema = tmp_path / SCHEMA.name
    shutil.copy(SCHEMA, schema)
    env = dict(os.environ, PYTHONPATH=str(BUNDLE.parent))
    cmd = [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", str(BUNDLE / "configs/metadata.json"),
           "--filepath", str(schema)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "metadata is verified with no error" in proc.stdout + proc.stderr
    assert schema.read_bytes() == SCHEMA.read_bytes()

    # The same command refuses metadata that breaks the schema.
    broken = {k: v for k, v in meta.items() if k != "network_data_format"}
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    cmd[cmd.index("--meta_file") + 1] = str(tmp_path / "broken.json")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode != 0 and "network_data_format" in proc.stderr


def test_metadata_describes_the_default_protect_surrogates():
    """network_data_format (+ <member>_data_format) describe inference.json's default ensemble, as configs/zoo.json
    builds it; the input formats protect reads are named."""
    meta = json.loads((BUNDLE / "configs/metadata.json").read_text())
    inference = json.loads((BUNDLE / "configs/inference.json").read_text())
    zoo = json.loads((BUNDLE.parent / "configs/zoo.json").read_text())
    assert inference["ckpt_path"] is None  # the default is the zoo ensemble, not network_name / input_size
    members = inference["surrogate"]["members"]
    formats = ["network_data_format"] + [f"{m}_data_format" for m in members[1:]]
    assert sorted(k for k in meta if k.endswith("_data_format")) == sorted(formats)
    for member, key in zip(members, formats):
        spec = zoo["members"][member]
        image = meta[key]["inputs"]["image"]
        assert image["spatial_shape"] == [spec["input_size"]] * 2, key
        assert f"{spec['input_size']} x {spec['input_size']}" in image["preprocessing"]
        assert meta[key]["outputs"]["pred"]["num_channels"] == zoo["defaults"]["num_classes"]
        assert f"models/zoo/{member}.pt" in meta["description"] and spec["network"] in meta["description"]
    for kind in ("png", "jpeg", "dicom"):
        assert kind in meta["data_type"]


def test_model_file_hashes_match_the_shipped_files():
    meta = json.loads((BUNDLE / "configs/metadata.json").read_text())
    listed = {e["path"]: e for e in meta["model_files"]}
    shipped = {p.relative_to(BUNDLE).as_posix() for p in (BUNDLE / "models").rglob("*.pt")}
    assert set(listed) == shipped
    for path, entry in listed.items():
        assert entry["hash_type"] == "sha256"
        actual = hashlib.sha256((BUNDLE / path).read_bytes()).hexdigest()
        assert actual == entry["hash_val"], f"{path}: sha256 {actual}, metadata.json says {entry['hash_val']}"


def test_protect_help_names_the_default_surrogates(capsys):
    from monai_medlocker.cli import main

    with pytest.raises(SystemExit):
        main(["protect", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "demo model" not in text
    assert "resnet + densenet ensemble at 128 px" in text
