"""The bundle's metadata follows the model-zoo conventions (checked offline: the schema URL is unreachable)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import monai
import numpy
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
