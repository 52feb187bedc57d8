"""Datasets of the synthetic fundus lab: :func:`generate_dataset` (grade quotas, stratified splits, writing).

Also the real CC0 fundus photograph shipped with the package (:func:`load_real_sample`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from monai_medlocker.data.lab.lesions import GRADE_NAMES, LESION_NAMES, LESION_TYPES, MASK_ALPHA_THRESHOLD, QUADRANTS
from monai_medlocker.data.lab.render import DEFAULT_LAB_VERSION, _check_lab_version, _check_seed, _check_size, \
    synthesize_fundus

__all__ = ["REAL_SAMPLE_PATH", "GRADE_WEIGHT_PRESETS", "sample_seed", "generate_dataset", "lab_anatomy", "write_real_sample",
           "load_real_sample"]

#: Named grade mixes for :func:`generate_dataset`: balanced, or the real-world imbalance of EyePACS
#: (Kaggle DR 2015 training set: about 73 % grade 0, 7 % grade 1, 15 % grade 2, 2.5 % grade 3, 2.5 % grade 4).
GRADE_WEIGHT_PRESETS: dict[str, tuple[float, ...]] = {
    "uniform": (1.0, 1.0, 1.0, 1.0, 1.0),  # relative weights
    "eyepacs": (0.73, 0.07, 0.15, 0.025, 0.025),
}

REAL_SAMPLE_PATH = Path(__file__).resolve().parents[2] / "assets" / "retina_skimage.png"
_DATALIST_NAME = "datalist.json"
_SPLITS = ("training", "validation", "test")
_OWN_FILE = re.compile(r"^synth_\d{5,}(_(MA|HE|EX|SE))?\.png$")


def sample_seed(seed: int, index: int) -> int:
    """The image seed used by :func:`generate_dataset` for image ``index`` of a dataset with ``seed``.

    ``synthesize_fundus(size, sample_seed(seed, i), label_i)`` regenerates image ``i`` alone.
    """
    _check_seed(seed)
    _check_seed(index, "index")
    hi, lo = np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint32)
    return (int(hi) << 31) ^ int(lo)


def _apportion(total: int, weights: np.ndarray) -> np.ndarray:
    """Split ``total`` into integers proportional to ``weights`` (largest remainder, ties to the lower index)."""
    w = np.asarray(weights, dtype=np.float64)
    share = w / w.sum() * total
    counts = np.floor(share).astype(np.int64)
    rest = total - int(counts.sum())
    order = sorted(range(len(w)), key=lambda k: (-(share[k] - counts[k]), k))
    for k in order[:rest]:
        counts[k] += 1
    return counts


def _assign(n: int, seed: int, split: np.ndarray, weights: np.ndarray) -> tuple[list[int], list[int]]:
    """Target grade and split index per image: grade quotas, then stratified, globally balanced splits."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0x5EED,)))
    quota = _apportion(n, weights)
    grades = rng.permutation(np.repeat(np.arange(5), quota)).tolist()
    which = [0] * n
    assigned = np.zeros(len(split))
    seen = 0
    active = split > 0
    for grade in range(5):
        members = [i for i in range(n) if grades[i] == grade]
        if not members:
            continue
        members = [members[k] for k in rng.permutation(len(members))]
        seen += len(members)
        want = np.clip(split * seen - assigned, 0, None)
        counts = _apportion(len(members), want if want.sum() > 0 else split)
        if len(members) >= int(active.sum()):  # every split gets this grade when there are enough images
            for k in np.flatnonzero(active & (counts == 0)):
                counts[int(np.argmax(counts))] -= 1
                counts[k] += 1
        assigned += counts
        pos = 0
        for k, c in enumerate(counts):
            for i in members[pos : pos + int(c)]:
                which[i] = k
            pos += int(c)
    return grades, which


def lab_anatomy(sample) -> dict[str, dict[str, float]]:
    """Where the anatomy a grader reads lies in a lab sample (pixels): ``{"optic_disc", "fovea"}``, each ``{"x", "y", "r"}``.

    Protect keeps both clear (:mod:`monai_medlocker.lesions.anatomy`). ``optic_disc`` r: the disc's radius;
    ``fovea`` r: the macular zone's, one disc diameter. The datalist items and the threat study's lab images
    carry the same values.
    """
    (dx, dy), rd, (fx, fy) = sample.meta["disc_center"], sample.meta["disc_radius"], sample.meta["fovea_center"]
    return {"optic_disc": {"x": round(float(dx), 1), "y": round(float(dy), 1), "r": round(float(rd), 1)},
            "fovea": {"x": round(float(fx), 1), "y": round(float(fy), 1), "r": round(2.0 * float(rd), 1)}}


def _write_one(task: tuple[str, int, int, int, int, int]) -> dict[str, Any]:
    """Generate and save image ``i`` (worker function; top level so that it pickles)."""
    out_dir, i, size, seed_i, grade, lab_version = task
    sample = synthesize_fundus(size, seed_i, grade, lab_version=lab_version)
    stem = f"synth_{i:05d}"
    root = Path(out_dir)
    Image.fromarray(sample.image).save(root / "images" / f"{stem}.png", compress_level=3)
    item: dict[str, Any] = {"image": f"images/{stem}.png", "label": int(sample.grade),
                            "referable": int(sample.referable)}
    for t in LESION_TYPES:
        mask = Image.fromarray(sample.masks[t].astype(np.uint8) * 255)
        mask.save(root / "masks" / f"{stem}_{t}.png", compress_level=3)
        item[f"mask_{t}"] = f"masks/{stem}_{t}.png"
    item["seed"] = int(seed_i)
    item["eye"] = sample.meta["eye"]
    item.update(lab_anatomy(sample))
    item["counts"] = {k: (list(v) if isinstance(v, list) else int(v)) for k, v in sample.counts.items()}
    return item


def generate_dataset(
    out_dir: str | os.PathLike,
    n: int,
    size: int = 256,
    seed: int = 0,
    split: Sequence[float] = (0.7, 0.15, 0.15),
    grade_weights: Sequence[float] | str | None = None,
    progress: bool = True,
    overwrite: bool = False,
    workers: int = 1,
    lab_version: int = DEFAULT_LAB_VERSION,
) -> Path:
    """Write ``n`` synthetic fundus images, their lesion masks and a MONAI datalist.

    Layout (paths in the datalist are relative to ``out_dir``)::

        out_dir/images/synth_00000.png          RGB uint8
        out_dir/masks/synth_00000_{MA,HE,EX,SE}.png   uint8 0/255
        out_dir/datalist.json                   {"training": [...], "validation": [...], "test": [...], ...}

    Each item is ``{"image", "label" (grade), "referable" (0/1), "mask_MA", "mask_HE", "mask_EX", "mask_SE",
    "seed", "eye", "counts", "optic_disc", "fovea"}`` (the last two ``{"x", "y", "r"}`` in pixels: the disc's centre and
    radius, the fovea and the macular zone's radius, one disc diameter). Grades are allotted by quota (largest remainder of ``n * grade_weights``) and
    shuffled; splits are stratified by grade so that every split gets every grade when there are enough
    images. Image ``i`` is ``synthesize_fundus(size, sample_seed(seed, i), label, lab_version)``; the whole dataset
    is a pure function of ``(n, size, seed, split, grade_weights, lab_version)``. The datalist records
    ``lab_version``, ``grade_weights`` and ``grade_weights_name`` (the preset's name, if one was used).

    Args:
        out_dir: output folder (created if needed).
        n: number of images, >= 1.
        size: image side in px, 128..2048.
        seed: non-negative dataset seed.
        split: fractions for training, validation, test; non-negative, summing to 1.
        grade_weights: five non-negative weights for grades 0..4 (not all zero), or the name of a preset in
            ``GRADE_WEIGHT_PRESETS``: ``"uniform"`` (the default, also ``None``: balanced classes) or
            ``"eyepacs"`` (the real-world imbalance of EyePACS, 73/7/15/2.5/2.5 % for grades 0..4).
        progress: show a tqdm progress bar.
        overwrite: allow replacing an earlier dataset in ``out_dir``; its ``synth_*`` images and masks are
            deleted first (no other file is touched).
        workers: processes to use (1 = in-process; 0 = one per CPU).
        lab_version: lab version of every image (``LAB_VERSIONS``): 1 the original lab, 2 (default) the
            realistic one (see :func:`~monai_medlocker.data.synthetic.synthesize_fundus`).

    Returns:
        Path of the written ``datalist.json``.

    Raises:
        ValueError: an invalid argument (the message states the value and what is expected), or ``out_dir``
            already holding a dataset (``datalist.json`` or ``synth_*`` files) without ``overwrite=True``.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1 (number of images), got {n!r}")
    n = int(n)
    size = _check_size(size)
    seed = _check_seed(seed)
    try:
        fractions = np.asarray([float(f) for f in split], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"split must be three fractions (training, validation, test), got {split!r}") from err
    if fractions.shape != (3,) or (fractions < 0).any() or not np.isfinite(fractions).all() \
            or abs(fractions.sum() - 1.0) > 1e-6:
        raise ValueError(f"split must be three non-negative fractions (training, validation, test) summing to 1, "
                         f"got {tuple(split)!r}")
    lab_version = _check_lab_version(lab_version)
    weights_name = None
    if grade_weights is None:
        grade_weights = "uniform"
    if isinstance(grade_weights, str):
        if grade_weights.lower() not in GRADE_WEIGHT_PRESETS:
            raise ValueError(f"grade_weights must be 5 non-negative numbers or a preset name "
                             f"({', '.join(sorted(GRADE_WEIGHT_PRESETS))}), got {grade_weights!r}")
        weights_name = grade_weights.lower()
        weights = np.asarray(GRADE_WEIGHT_PRESETS[weights_name], dtype=np.float64)
    else:
        try:
            weights = np.asarray([float(w) for w in grade_weights], dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"grade_weights must be 5 non-negative numbers (grades 0..4), got {grade_weights!r}") from err
        if weights.shape != (5,) or (weights < 0).any() or not np.isfinite(weights).all() or weights.sum() <= 0:
            raise ValueError(f"grade_weights must be 5 non-negative numbers (grades 0..4), not all zero, "
                             f"got {tuple(grade_weights)!r}")
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 0:
        raise ValueError(f"workers must be an integer >= 0 (0 = one per CPU), got {workers!r}")
    workers = int(workers) or (os.cpu_count() or 1)

    root = Path(out_dir).expanduser()
    if root.exists() and not root.is_dir():
        raise ValueError(f"out_dir {root} exists and is not a folder")
    datalist_path = root / _DATALIST_NAME
    own = [p for sub in ("images", "masks") if (root / sub).is_dir()
           for p in (root / sub).iterdir() if _OWN_FILE.match(p.name)]
    if (datalist_path.exists() or own) and not overwrite:
        what = datalist_path if datalist_path.exists() else root / "images"
        raise ValueError(f"{what} already holds a dataset; refusing to overwrite it (pass overwrite=True, "
                         f"or --overwrite on the command line, or choose another folder)")
    for p in own:
        p.unlink()
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)

    grades, which = _assign(n, seed, fractions, weights)
    tasks = [(str(root), i, size, sample_seed(seed, i), grades[i], lab_version) for i in range(n)]
    from tqdm import tqdm

    items: list[dict[str, Any]] = []
    bar = tqdm(total=n, desc="synth fundus", unit="img", disable=not progress)
    try:
        if workers > 1 and n > 1:
            import multiprocessing

            with multiprocessing.get_context().Pool(min(workers, n)) as pool:
                for item in pool.imap(_write_one, tasks, chunksize=max(1, min(16, n // (4 * workers)))):
                    items.append(item)
                    bar.update(1)
        else:
            for task in tasks:
                items.append(_write_one(task))
                bar.update(1)
    finally:
        bar.close()
    for i, item in enumerate(items):
        if item["label"] != grades[i]:  # the rules and the sampler disagree: never write a wrong label
            raise RuntimeError(f"image {i}: drawn lesions grade {item['label']}, requested {grades[i]}")

    datalist = {
        "name": "MedLocker synthetic fundus",
        "description": (f"{n} procedural colour fundus photographs ({size}x{size} px, seed {seed}) with IDRiD-style "
                        "lesion masks (MA, HE, EX, SE) and ICDR grades computed from the lesions; "
                        f"generated by monai_medlocker.data.synthetic, lab version {lab_version}"),
        "reference": "monai_medlocker.data.synthetic.generate_dataset",
        "licence": "CC0-1.0 (synthetic)",
        "num_classes": 5,
        "labels": {str(k): v for k, v in GRADE_NAMES.items()},
        "lesion_types": list(LESION_TYPES),
        "lesion_names": dict(LESION_NAMES),
        "mask_rule": f"lesion coverage alpha > {MASK_ALPHA_THRESHOLD}",
        "quadrants": list(QUADRANTS),
        "size": size,
        "seed": seed,
        "split": [float(f) for f in fractions],
        "grade_weights": [float(w) for w in weights],
        "grade_weights_name": weights_name,
        "lab_version": lab_version,
        "numTraining": sum(1 for k in which if k == 0),
    }
    for k, name in enumerate(_SPLITS):
        datalist[name] = [items[i] for i in range(n) if which[i] == k]
    tmp = root / f".{_DATALIST_NAME}.tmp"
    tmp.write_text(json.dumps(datalist, indent=1), encoding="utf-8")
    os.replace(tmp, datalist_path)  # atomic: a datalist only ever lists files that exist
    return datalist_path



# --------------------------------------------------------------------------------------------------
# The real sample shipped with the package
# --------------------------------------------------------------------------------------------------


def write_real_sample(path: str | os.PathLike = REAL_SAMPLE_PATH, max_side: int = 1024) -> Path:
    """Save scikit-image's ``data.retina()`` photograph (CC0, no DR grade) as a PNG, downscaled to ``max_side``.

    Args:
        path: destination PNG.
        max_side: longest side of the saved image in px (never upscaled).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    from skimage import data

    image = Image.fromarray(np.asarray(data.retina(), dtype=np.uint8))
    scale = min(1.0, max_side / max(image.size))
    if scale < 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, optimize=True)
    return path


def load_real_sample() -> np.ndarray:
    """The shipped real fundus photograph (``assets/retina_skimage.png``) as an ``(H, W, 3)`` uint8 array."""
    if not REAL_SAMPLE_PATH.is_file():
        raise FileNotFoundError(f"real sample image missing: {REAL_SAMPLE_PATH} (see write_real_sample)")
    return np.asarray(Image.open(REAL_SAMPLE_PATH).convert("RGB"))
