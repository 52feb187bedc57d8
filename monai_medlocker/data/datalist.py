"""Read and validate a fundus datalist JSON (MONAI decathlon-style sections).

Format (paths relative to the datalist's folder)::

    {"num_classes": 5,
     "training":   [{"image": "images/a.png", "label": 2, "referable": 1, "mask_MA": "masks/a_MA.png"}, ...],
     "validation": [...],
     "test":       [...]}

A dataset folder holding ``datalist.json`` can be given instead of the file itself.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = [
    "DATALIST_NAME",
    "DEFAULT_NUM_CLASSES",
    "resolve_datalist",
    "datalist_num_classes",
    "check_num_classes",
    "load_datalist",
    "read_datalist",
    "datalist_item_problem",
    "datalist_sections",
]

DATALIST_NAME = "datalist.json"
DEFAULT_NUM_CLASSES = 5  # ICDR grades 0-4, when a datalist does not say


def resolve_datalist(path_or_dir: str | os.PathLike) -> Path:
    """The datalist file: ``path_or_dir`` itself, or ``path_or_dir/datalist.json`` for a folder.

    Raises:
        FileNotFoundError: the path, or the folder's ``datalist.json``, does not exist.
    """
    path = Path(path_or_dir).expanduser()
    if path.is_dir():
        path = path / DATALIST_NAME
        if not path.is_file():
            raise FileNotFoundError(f"dataset folder {path.parent} has no {DATALIST_NAME} (looked for {path})")
    elif not path.is_file():
        raise FileNotFoundError(f"dataset folder or datalist not found: {path}")
    return path.resolve()


def read_datalist(path: str | os.PathLike) -> dict:
    """The datalist file's JSON object (sections and settings), not yet validated item by item.

    Raises:
        ValueError: unreadable, not UTF-8, not valid JSON, or not a JSON object (the message names the file).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"datalist {path} is not UTF-8 text: {err}") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"datalist {path} is not valid JSON: {err}") from err
    except OSError as err:
        raise ValueError(f"datalist {path} cannot be read: {err.strerror or err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"datalist {path} must be a JSON object with sections "
                         f'(e.g. {{"test": [{{"image": "a.png"}}]}}), got a JSON {type(data).__name__}')
    return data


def datalist_sections(data: dict) -> dict[str, list]:
    """The datalist's sections: its lists that hold image objects (a JSON object with an ``image`` key).

    Other lists are settings (``medlocker synth`` writes ``lesion_types``, ``quadrants``, ``split``,
    ``grade_weights``), never items. A section's other entries stay in it, to be reported as bad items.
    """
    return {name: value for name, value in data.items()
            if isinstance(value, list) and any(isinstance(v, dict) and "image" in v for v in value)}


def datalist_item_problem(item: Any) -> str | None:
    """What is wrong with one datalist item's form, or ``None``: an object whose ``image`` is a
    non-empty path string, whose ``mask_*`` values are path strings (or ``null``), and whose
    ``label``, when present, is an integer (not a boolean, NaN or fraction). Grade ranges and
    file existence are checked by the readers that know them."""
    if not isinstance(item, dict):
        return f"must be an object with an 'image' key, got a JSON {type(item).__name__}"
    if "image" not in item:
        return "has no 'image' key"
    image = item["image"]
    if not isinstance(image, str) or not image.strip():
        return f"'image' must be a non-empty path string, got {image!r}"
    for key, value in item.items():
        if isinstance(key, str) and key.startswith("mask_") and value is not None and (not isinstance(value, str) or not value):
            return f"{key!r} must be a path string or null, got {value!r}"
    label = item.get("label")
    if label is not None and (isinstance(label, bool) or not isinstance(label, int)):
        return f"label {label!r} is not an integer grade"
    return None


def datalist_num_classes(path_or_dir: str | os.PathLike) -> int:
    """The datalist's ``num_classes`` (``DEFAULT_NUM_CLASSES`` when absent)."""
    path = resolve_datalist(path_or_dir)
    value = read_datalist(path).get("num_classes", DEFAULT_NUM_CLASSES)
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise ValueError(f"datalist {path}: num_classes must be an integer >= 2, got {value!r}")
    return value


def check_num_classes(path_or_dir: str | os.PathLike, num_classes: int) -> int:
    """Fail early when a config's ``num_classes`` disagrees with the datalist's.

    Returns:
        ``num_classes``, so it can be used inside a config expression.

    Raises:
        FileNotFoundError: no datalist at ``path_or_dir``.
        ValueError: the two numbers differ (the message names both).
    """
    found = datalist_num_classes(path_or_dir)
    if int(num_classes) != found:
        raise ValueError(
            f"num_classes mismatch: the config sets num_classes={num_classes} but datalist "
            f"{resolve_datalist(path_or_dir)} has num_classes={found}; override --num_classes {found} "
            "or use a matching dataset."
        )
    return int(num_classes)


def _is_path_key(key: Any) -> bool:
    return key == "image" or (isinstance(key, str) and key.startswith("mask_"))


def load_datalist(
    path_or_dir: str | os.PathLike,
    section: str,
    num_classes: int | None = None,
    require_label: bool = True,
    check_masks: bool = False,
) -> list[dict]:
    """Load one section of a datalist with absolute paths, validating labels and files.

    Args:
        path_or_dir: a datalist JSON file, or a dataset folder containing ``datalist.json``.
        section: e.g. ``"training"``, ``"validation"``, ``"test"``.
        num_classes: when given, must equal the datalist's ``num_classes`` (see :func:`check_num_classes`).
        require_label: every item must have an integer ``label`` (set ``False`` for unlabelled inference lists).
        check_masks: also require the ``mask_*`` files to exist (classification does not read them).

    Returns:
        list of item dicts (copies); ``image`` and ``mask_*`` values are absolute path strings
        (``None`` mask values stay ``None``).

    Raises:
        FileNotFoundError: missing dataset folder/datalist, image file (or mask file with ``check_masks``).
        ValueError: unknown section, malformed item, or a label outside ``0..num_classes-1``.
    """
    path = resolve_datalist(path_or_dir)
    data = read_datalist(path)
    found = datalist_num_classes(path)
    if num_classes is not None:
        check_num_classes(path, num_classes)
    sections = [k for k, v in data.items() if isinstance(v, list)]
    if section not in sections:
        present = ", ".join(sections) or "none"
        raise ValueError(f"datalist {path} has no section {section!r}; sections present: {present}")
    root = path.parent
    items = []
    for index, raw in enumerate(data[section]):
        problem = datalist_item_problem(raw)
        if problem is not None:
            raise ValueError(f"datalist {path}: item {index} of {section!r} {problem}")
        item = dict(raw)
        for key, value in raw.items():
            if _is_path_key(key) and value is not None:
                item[key] = os.path.normpath(os.path.join(root, os.fspath(value)))
        image = item["image"]
        if "label" in item:
            label = item["label"]
            if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < found:
                raise ValueError(
                    f"datalist {path}: item {image} in {section!r} has label {label!r}, "
                    f"outside the grades 0..{found - 1} (num_classes={found})"
                )
        elif require_label:
            raise ValueError(f"datalist {path}: item {image} in {section!r} has no 'label'")
        if not os.path.isfile(image):
            raise FileNotFoundError(f"datalist {path}: image file not found: {image}")
        if check_masks:
            for key, value in item.items():
                if key.startswith("mask_") and value is not None and not os.path.isfile(value):
                    raise FileNotFoundError(f"datalist {path}: {key} file not found: {value}")
        items.append(item)
    if not items:
        raise ValueError(f"datalist {path}: section {section!r} is empty")
    return items
