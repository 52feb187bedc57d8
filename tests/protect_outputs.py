"""Where the tests find a protect run's outputs (DESIGN invariant 6), written out here once.

``OUT/public``: the protected images and, with an owner key, their public sidecars;
``OUT/private``: the whole records (``records/<relative input path>.record.json``), the manifest,
the summary, the run settings and a keyless run's render secret. The paths are spelled out here
rather than taken from :mod:`monai_medlocker.workflows.protect`, so that a changed layout fails.
"""

from __future__ import annotations

import json
from pathlib import Path

# What a public record (PNG ``medlocker:public``, the DICOM block's params, the certificate's params) may hold.
PUBLIC_RECORD_FIELDS = {"format", "software", "protected", "image_size", "logo_sha256", "logo_rendering", "marks"}
# What a mark shows only to the owner: its opacity.
PRIVATE_MARK_FIELDS = ("alpha", "alpha_255")


def public_dir(out: str | Path) -> Path:
    return Path(out) / "public"


def private_dir(out: str | Path) -> Path:
    return Path(out) / "private"


def manifest_rows(out: str | Path) -> list[dict]:
    return [json.loads(line) for line in (private_dir(out) / "manifest.jsonl").read_text().splitlines()]


def read_summary(out: str | Path) -> dict:
    return json.loads((private_dir(out) / "summary.json").read_text())


def record_file(out: str | Path, relative: str | Path) -> Path:
    """The whole record of the input at ``relative`` (its own suffix kept: ``a.png`` -> ``a.png.record.json``)."""
    relative = Path(relative)
    return private_dir(out) / "records" / relative.parent / (relative.name + ".record.json")


def read_record(out: str | Path, relative: str | Path) -> dict:
    return json.loads(record_file(out, relative).read_text())


def sidecar_file(out: str | Path, relative_stem: str | Path) -> Path:
    """The public sidecar of the protected image ``public/<relative_stem>.png|.dcm`` (written with an owner key)."""
    return public_dir(out) / f"{Path(relative_stem).as_posix()}.medlocker.json"


def visible_marks(record: dict) -> list[dict]:
    """The record's marks as published: everything but the opacity."""
    return [{k: v for k, v in m.items() if k not in PRIVATE_MARK_FIELDS} for m in record["marks"]]


def assert_public_record_of(public: dict, record: dict) -> None:
    """``public`` is the published form of ``record``: its visible marks, and none of its private fields."""
    assert public["format"] == "medlocker-public/1"
    assert set(public) <= PUBLIC_RECORD_FIELDS, f"private fields published: {sorted(set(public) - PUBLIC_RECORD_FIELDS)}"
    assert public["marks"] == visible_marks(record)
    assert public["image_size"] == record["image_size"] and public["logo_sha256"] == record["logo_sha256"]
