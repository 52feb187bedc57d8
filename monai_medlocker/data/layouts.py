"""Public DR dataset layouts -> MONAI datalists, so real data runs through the same workflows.

Supported layouts (as downloaded; folder names are matched loosely, files by name):

* **IDRiD** (Indian Diabetic Retinopathy Image Dataset):
  ``B. Disease Grading/1. Original Images/{a. Training Set,b. Testing Set}/IDRiD_001.jpg`` with
  ``B. Disease Grading/2. Groundtruths/{a. IDRiD_Disease Grading_Training Labels.csv,
  b. IDRiD_Disease Grading_Testing Labels.csv}`` (columns ``Image name``, ``Retinopathy grade``,
  ``Risk of macular edema``); and ``A. Segmentation/1. Original Images/<set>/IDRiD_01.jpg`` with
  ``A. Segmentation/2. All Segmentation Groundtruths/<set>/{1. Microaneurysms,2. Haemorrhages,
  3. Hard Exudates,4. Soft Exudates}/IDRiD_01_{MA,HE,EX,SE}.tif``. ``part="grading"`` gives a
  classification datalist (labels), ``part="segmentation"`` a lesion datalist (``mask_*`` keys; a
  lesion type IDRiD does not annotate for an image is left out of the item).
* **APTOS 2019**: ``train.csv`` (``id_code,diagnosis``) with ``train_images/<id_code>.png``, and
  optionally ``test.csv`` (``id_code``) with ``test_images/`` (unlabelled test items).
* **EyePACS / Kaggle DR**: ``trainLabels.csv`` (``image,level``) with ``<image>.jpeg`` in any
  folder under the root (``train/`` as downloaded).

The training set is split into ``training`` and ``validation`` by ``val_fraction``, stratified by
grade and seeded; the datalist's test section is the dataset's own test set when it has one.
Paths are relative to the datalist file's folder. Missing images are reported in ``missing``
(the converter fails when none is found at all).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["LAYOUTS", "idrid_datalist", "aptos_datalist", "eyepacs_datalist", "convert_layout", "write_datalist"]

LAYOUTS = ("idrid", "aptos", "eyepacs")
_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
_LESIONS = ("MA", "HE", "EX", "SE")
_GRADES = {"0": "no DR", "1": "mild NPDR", "2": "moderate NPDR", "3": "severe NPDR", "4": "proliferative DR"}


def _index_images(root: Path, exts: tuple[str, ...] = _IMAGE_EXT) -> dict[str, list[Path]]:
    index: dict[str, list[Path]] = {}
    for path in root.rglob("*"):
        if path.is_file() and path.suffix.lower() in exts:
            index.setdefault(path.stem, []).append(path)
    return index


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = {(f or "").strip(): f for f in reader.fieldnames or []}
        missing = [c for c in required if c not in fields]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; found {sorted(fields)} (expected {list(required)})")
        return [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]


def _grade(value: str, where: str) -> int:
    try:
        grade = int(float(value))
    except ValueError as err:
        raise ValueError(f"{where}: grade {value!r} is not a number (expected an ICDR grade 0-4)") from err
    if not 0 <= grade <= 4:
        raise ValueError(f"{where}: grade {grade} is outside the ICDR grades 0-4")
    return grade


def _split(items: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Seeded split into training and validation, stratified by label.

    ``round(val_fraction * n)`` items go to validation, spread over the grades in proportion: each
    grade's items are shuffled and given evenly spaced ranks in [0, 1), and the lowest ranks win.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    groups: dict[Any, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(item.get("label"), []).append(i)
    rank = np.zeros(len(items))
    for key in sorted(groups, key=lambda k: (k is None, k)):
        members = groups[key]
        order = rng.permutation(len(members))
        offset = rng.random()
        for r, j in enumerate(order):
            rank[members[j]] = ((r + offset) / len(members)) % 1.0
    n_val = int(round(val_fraction * len(items)))
    chosen = set(np.argsort(rank, kind="stable")[:n_val].tolist())
    return ([it for i, it in enumerate(items) if i not in chosen], [it for i, it in enumerate(items) if i in chosen])


def _rel(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path.resolve(), base.resolve())).as_posix()


def _pick(index: dict[str, list[Path]], stem: str, prefer: str | None = None, root: Path | None = None) -> Path | None:
    found = index.get(stem) or []
    if prefer:
        # Match folder names below the dataset root only (the root's own path may say "test").
        preferred = [p for p in found if prefer.lower() in (p.relative_to(root) if root else p).as_posix().lower()]
        found = preferred or found
    return sorted(found)[0] if found else None


def _datalist(name: str, description: str, base: Path, sections: dict[str, list[dict]], missing: list[str]) -> dict:
    out: dict[str, Any] = {"name": name, "description": description, "num_classes": 5, "labels": dict(_GRADES)}
    for section, items in sections.items():
        out[section] = [{k: (_rel(v, base) if isinstance(v, Path) else v) for k, v in item.items()} for item in items]
    out["numTraining"] = len(out.get("training", []))
    out["missing"] = missing
    if not any(out.get(s) for s in sections):
        raise ValueError(f"{name}: no images found for any entry (missing {len(missing)}, e.g. {missing[:3]})")
    return out


def idrid_datalist(src: str | os.PathLike, base: str | os.PathLike, part: str = "grading",
                   val_fraction: float = 0.15, seed: int = 0) -> dict:
    """IDRiD -> datalist dict; ``part`` is ``"grading"`` (labels) or ``"segmentation"`` (``mask_*`` keys)."""
    src, base = Path(src), Path(base)
    if part not in ("grading", "segmentation"):
        raise ValueError(f"part must be 'grading' or 'segmentation', got {part!r}")
    index = _index_images(src)
    missing: list[str] = []
    if part == "grading":
        csvs = sorted(p for p in src.rglob("*.csv") if "grading" in p.name.lower() or "labels" in p.name.lower())
        if not csvs:
            raise ValueError(f"{src}: no IDRiD grading CSV found (expected '... Disease Grading_Training Labels.csv')")
        sections: dict[str, list[dict]] = {"training": [], "test": []}
        for path in csvs:
            section = "test" if "test" in path.name.lower() else "training"
            for row in _read_csv(path, ("Image name", "Retinopathy grade")):
                stem = row["Image name"]
                if not stem:
                    continue
                image = _pick(index, Path(stem).stem, "Training" if section == "training" else "Testing", src)
                if image is None:
                    missing.append(stem)
                    continue
                grade = _grade(row["Retinopathy grade"], f"{path} row {stem}")
                item = {"image": image, "label": grade, "referable": int(grade >= 2)}
                if row.get("Risk of macular edema"):
                    item["dme_risk"] = int(float(row["Risk of macular edema"]))
                sections[section].append(item)
        train, val = _split(sections["training"], val_fraction, seed)
        return _datalist("IDRiD disease grading", f"IDRiD grading from {src}", base,
                         {"training": train, "validation": val, "test": sections["test"]}, missing)
    # Segmentation: images that have at least one lesion mask.
    masks: dict[str, dict[str, Path]] = {}
    for path in src.rglob("*"):
        if path.is_file() and path.suffix.lower() in (".tif", ".tiff", ".png"):
            stem, _, kind = path.stem.rpartition("_")
            if kind in _LESIONS and stem:
                masks.setdefault(stem, {})[kind] = path
    if not masks:
        raise ValueError(f"{src}: no IDRiD lesion masks found (expected files like IDRiD_01_MA.tif)")
    sections = {"training": [], "test": []}
    for stem in sorted(masks):
        kinds = masks[stem]
        image = next((p for p in sorted(index.get(stem, [])) if p.suffix.lower() in (".jpg", ".jpeg", ".png")), None)
        if image is None:
            missing.append(stem)
            continue
        section = "test" if "test" in image.relative_to(src).as_posix().lower() else "training"
        item: dict[str, Any] = {"image": image}
        item.update({f"mask_{k}": kinds[k] for k in _LESIONS if k in kinds})
        sections[section].append(item)
    train, val = _split(sections["training"], val_fraction, seed)
    return _datalist("IDRiD lesion segmentation", f"IDRiD segmentation from {src}", base,
                     {"training": train, "validation": val, "test": sections["test"]}, missing)


def aptos_datalist(src: str | os.PathLike, base: str | os.PathLike, val_fraction: float = 0.15, seed: int = 0) -> dict:
    """APTOS 2019 (``train.csv`` + ``train_images/``; optional ``test.csv`` + ``test_images/``) -> datalist dict."""
    src, base = Path(src), Path(base)
    train_csv = src / "train.csv"
    if not train_csv.is_file():
        raise ValueError(f"{src}: no train.csv (APTOS 2019 layout: train.csv with id_code,diagnosis and train_images/)")
    index = _index_images(src)
    missing: list[str] = []
    labelled = []
    for row in _read_csv(train_csv, ("id_code", "diagnosis")):
        image = _pick(index, row["id_code"], "train", src)
        if image is None:
            missing.append(row["id_code"])
            continue
        grade = _grade(row["diagnosis"], f"{train_csv} row {row['id_code']}")
        labelled.append({"image": image, "label": grade, "referable": int(grade >= 2)})
    test = []
    if (src / "test.csv").is_file():
        for row in _read_csv(src / "test.csv", ("id_code",)):
            image = _pick(index, row["id_code"], "test", src)
            if image is None:
                missing.append(row["id_code"])
            else:
                test.append({"image": image})
    train, val = _split(labelled, val_fraction, seed)
    return _datalist("APTOS 2019", f"APTOS 2019 blindness detection from {src}", base,
                     {"training": train, "validation": val, "test": test}, missing)


def eyepacs_datalist(src: str | os.PathLike, base: str | os.PathLike, val_fraction: float = 0.15, seed: int = 0) -> dict:
    """EyePACS / Kaggle DR (``trainLabels.csv`` image,level + jpeg folder) -> datalist dict."""
    src, base = Path(src), Path(base)
    labels_csv = next((p for p in sorted(src.rglob("*.csv")) if p.name.lower() == "trainlabels.csv"), None)
    if labels_csv is None:
        raise ValueError(f"{src}: no trainLabels.csv (EyePACS/Kaggle DR layout: trainLabels.csv with image,level)")
    index = _index_images(src)
    missing: list[str] = []
    labelled = []
    for row in _read_csv(labels_csv, ("image", "level")):
        image = _pick(index, row["image"])
        if image is None:
            missing.append(row["image"])
            continue
        grade = _grade(row["level"], f"{labels_csv} row {row['image']}")
        labelled.append({"image": image, "label": grade, "referable": int(grade >= 2)})
    train, val = _split(labelled, val_fraction, seed)
    # Kaggle's test labels (retinopathy_solution.csv) are separate; a held-out split is carved from training.
    train, test = _split(train, val_fraction, seed + 1) if len(train) > 2 else (train, [])
    return _datalist("EyePACS / Kaggle DR", f"Kaggle diabetic retinopathy detection from {src}", base,
                     {"training": train, "validation": val, "test": test}, missing)


def convert_layout(layout: str, src: str | os.PathLike, out_json: str | os.PathLike, **kwargs) -> dict:
    """Convert ``src`` in ``layout`` (``idrid``/``aptos``/``eyepacs``) and write ``out_json``; returns the datalist."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {src}")
    out_json = Path(out_json)
    base = out_json.parent
    fn = {"idrid": idrid_datalist, "aptos": aptos_datalist, "eyepacs": eyepacs_datalist}[layout]
    datalist = fn(src, base, **kwargs)
    write_datalist(datalist, out_json)
    return datalist


def write_datalist(datalist: dict, path: str | os.PathLike) -> Path:
    """Write a datalist atomically (a datalist only ever lists files that exist)."""
    from monai_medlocker.io.image import atomic_write_bytes

    path = Path(path)
    atomic_write_bytes(path, json.dumps(datalist, indent=1).encode())
    return path
