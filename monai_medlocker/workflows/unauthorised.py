"""Unauthorised training: the thief trains a model on the protected release with the true labels.

The question (Huang et al., ICLR 2021; APBench) is whether a model trained on protected images still
learns to grade clean images. The thief's lab is a seeded synthetic dataset of its own; its training
and validation images are protected with the owner's protect settings, and each zoo family named is
trained twice with one recipe and seed through ``bundle/configs/train.json``: once on the clean split
and once on the protected split. Every epoch's weights are scored on the study's clean and protected
test images, so the report gives the peak over training as well as the last epoch.

A third training set is the **cleaned release** (issue 17 item 6): the thief inpaints every mark of the
protected split (OpenCV Telea over the marks' footprints, which a thief traces by template matching; the
true footprints are used, the thief's best case) and trains on that. What is left of the protection
there is the part that survives removal: the shield, where the protect settings have one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from monai_medlocker.networks import Surrogate, load_classifier, model_spec

__all__ = ["protect_lab_split", "unauthorised_training"]


def protect_lab_split(clean_dir: Path, out_dir: Path, surrogate: Surrogate | list[Surrogate], protect_settings: dict,
                      sections: Sequence[str] = ("training", "validation"), progress: bool = True,
                      cleaned_dir: Path | None = None) -> Path:
    """Copy a lab dataset with the images of ``sections`` protected (same names, labels and masks).

    An image where no placement avoids the lesions is kept unprotected and counted in the datalist's
    ``unprotected`` field, as a release would ship it. The shield of ``protect_settings`` (its ``shield``:
    a protection level's settings) is applied, as protect applies it. With ``cleaned_dir``, a second copy
    has every protected image's marks inpainted (Telea over their footprints): the thief's cleaned release.
    """
    from monai_medlocker.data.datalist import load_datalist
    from monai_medlocker.io.image import load_mask, load_rgb, save_png
    from monai_medlocker.threats.removal import inpaint_telea
    from monai_medlocker.watermark import ShieldSettings, watermark_image
    from monai_medlocker.watermark.blend import Placement
    from monai_medlocker.watermark.feasibility import NoFeasiblePlacementError
    from monai_medlocker.workflows.study_tools import protect_tools, study_render_key, study_wsm

    data = json.loads((clean_dir / "datalist.json").read_text())
    surrogates = list(surrogate) if isinstance(surrogate, (list, tuple)) else [surrogate]
    optimizer, space, logo = protect_tools(protect_settings)
    shield = ShieldSettings.from_config(protect_settings.get("shield"))
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    if cleaned_dir is not None:
        (cleaned_dir / "images").mkdir(parents=True, exist_ok=True)
    unprotected = 0
    items = [(section, i, item) for section in sections
             for i, item in enumerate(load_datalist(clean_dir, section))]
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, desc="thief: protect training split", leave=False)
    for section, i, item in items:
        image = load_rgb(item["image"])
        masks = np.stack([load_mask(item[k], image.shape[:2]) for k in sorted(item) if k.startswith("mask_") and item[k]])
        rel = data[section][i]["image"]
        try:
            # protect's WSM: the lesion boxes and the zones of the lab's optic disc and fovea
            wsm, _ = study_wsm(image, masks, item.get("optic_disc"), item.get("fovea"), name=str(item["image"]))
            out, record = watermark_image(image, wsm, surrogates, logo, optimizer, space,
                                          label=int(item["label"]), seed=i, render_key=study_render_key(rel, i),
                                          shield=shield)
        except NoFeasiblePlacementError:
            out, record, unprotected = image, None, unprotected + 1
        save_png(out_dir / rel, out)
        if cleaned_dir is not None:
            placements = [Placement.from_record(m) for m in record["marks"]] if record else []
            save_png(cleaned_dir / rel, inpaint_telea(out, logo, placements=placements) if placements else out)
    data["unprotected"] = unprotected
    for folder, what in ((out_dir, "protected by MedLocker"), (cleaned_dir, "protected, then every mark inpainted (Telea)")):
        if folder is None:
            continue
        described = {**data, "description": f"{data.get('description', '')} (training/validation images {what})"}
        (folder / "datalist.json").write_text(json.dumps(described, indent=2))
        for rel in {Path(it["image"]).parent for it in data.get("test", [])}:
            shutil.copytree(clean_dir / rel, folder / rel, dirs_exist_ok=True)
    return out_dir


def _accuracy_curve(ckpt_dir: Path, network: str, input_size: int, test_images: dict, grades: np.ndarray,
                    num_classes: int) -> dict[str, list[float]]:
    from monai_medlocker.workflows.study_tools import predict

    curves: dict[str, list[float]] = {name: [] for name in test_images}
    for ckpt in sorted(ckpt_dir.glob("epoch_*.pt")):
        model = Surrogate(load_classifier(ckpt, network, num_classes, input_size), model_spec(network, input_size))
        for name, imgs in test_images.items():
            preds = predict({"m": model}, imgs)["m"]
            curves[name].append(round(float((preds == grades).mean()), 4))
    return curves


def _ratios(rows: list[dict]) -> dict[str, dict[str, float | None]]:
    """Per family: clean-test accuracy (last epoch) of each protected recipe over the clean-trained one's.

    The issue's target reads on these: a thief who trains on the (cleaned) release should reach at most
    0.6 of what the same recipe reaches on clean images.
    """
    base = {r["family"]: r["clean_last"] for r in rows if r["trained_on"] == "clean"}
    out: dict[str, dict[str, float | None]] = {}
    for r in rows:
        if r["trained_on"] != "clean" and base.get(r["family"]):
            out.setdefault(r["family"], {})[r["trained_on"]] = round(r["clean_last"] / base[r["family"]], 3)
    return out


def unauthorised_training(work_dir: str | Path, zoo, surrogate: Surrogate | list[Surrogate], protect_settings: dict,
                          test_images: dict[str, list[np.ndarray]], test_grades: Sequence[int],
                          families: Sequence[str] = ("resnet", "vgg"), n_train: int = 600, size: int = 256,
                          seed: int = 4242, epochs: int = 12, lab_version: int | None = None,
                          bundle_root: str | None = None, progress: bool = True, cleaned: bool = True,
                          marked: bool = True) -> dict:
    """Run the unauthorised-training experiment; returns the report's rows (see the module docstring).

    Args:
        work_dir: the thief's folder (labs, checkpoints); reused when a step's outputs are there.
        zoo: the loaded zoo; ``families`` name its members (their network, input size, seed, recipe).
        surrogate, protect_settings: what the owner protects the release with.
        test_images: named sets of test images (``clean``, ``protected``), all with ``test_grades``.
        n_train, size, seed, lab_version: the thief's lab (training and validation splits are used).
        epochs: training epochs per model.
        cleaned: also train on the cleaned release (every mark of the protected split inpainted).
        marked: also train on the release as published (marks in place); ``False`` keeps only the clean
            and cleaned runs (the cleaned release is the thief's best case).
    """
    from monai.utils import set_determinism

    from monai_medlocker.bundle_config import bundle_root as find_bundle, parse_bundle_config, run_workflow
    from monai_medlocker.data.synthetic import generate_dataset

    work = Path(work_dir)
    clean_dir, protected_dir, cleaned_dir = work / "clean_lab", work / "protected_lab", work / "cleaned_lab"
    if not (clean_dir / "datalist.json").is_file():
        kwargs = {"lab_version": lab_version} if lab_version is not None else {}
        generate_dataset(clean_dir, n=n_train, size=size, seed=seed, split=(0.8, 0.2, 0.0), progress=progress,
                         **kwargs)
    if not (protected_dir / "datalist.json").is_file() or (cleaned and not (cleaned_dir / "datalist.json").is_file()):
        protect_lab_split(clean_dir, protected_dir, surrogate, protect_settings, progress=progress,
                          cleaned_dir=cleaned_dir if cleaned else None)
    training_sets = ([("clean", clean_dir)] + ([("protected", protected_dir)] if marked else [])
                     + ([("cleaned", cleaned_dir)] if cleaned else []))
    root = find_bundle(bundle_root)
    grades = np.asarray(test_grades)
    rows = []
    for member in zoo.select(list(families)):
        for trained_on, data_dir in training_sets:
            out = work / "models" / f"{member.name}_{trained_on}"
            if len(list(out.glob("epoch_*.pt"))) != epochs:  # absent, or an interrupted run: train afresh
                shutil.rmtree(out.resolve(), ignore_errors=True)  # a linked folder (a shared baseline): its target
                parser = parse_bundle_config("train.json", root, {
                    "dataset_dir": str(data_dir.resolve()), "output_dir": str(out.resolve()),
                    "network_name": member.network, "input_size": member.input_size, "epochs": epochs,
                    "batch_size": member.train.get("batch_size"), "learning_rate": member.train.get("learning_rate"),
                    "seed": member.seed, "num_classes": zoo.num_classes,
                    "adversarial_epsilon": member.train.get("adversarial_epsilon", 0),
                })
                handlers = parser.get("train#handlers")
                parser["train#handlers"] = list(handlers) + [{
                    "_target_": "monai_medlocker.workflows.EpochCheckpoint", "network": "@network",
                    "save_dir": str(out.resolve()),
                }]
                run_workflow(parser)
                set_determinism(seed=None)
            curves = _accuracy_curve(out, member.network, member.input_size, test_images, grades, zoo.num_classes)
            row = {"family": member.name, "network": member.network, "trained_on": trained_on,
                   "epochs": len(curves["clean"]), "curves": curves}
            for name, curve in curves.items():
                row[f"{name}_peak"] = max(curve) if curve else None
                row[f"{name}_last"] = curve[-1] if curve else None
            rows.append(row)
    info = json.loads((protected_dir / "datalist.json").read_text())
    return {
        "ratios": _ratios(rows),
        "description": (f"Thief lab: {n_train} images at {size} px (seed {seed}), training/validation 80/20; "
                        f"{info.get('unprotected', 0)} of its images had no lesion-free placement and stayed clean. "
                        f"{epochs} epochs per model, same recipe and seed for the "
                        f"{', '.join(name for name, _ in training_sets)} runs (cleaned: every mark inpainted by "
                        "Telea); accuracy on "
                        "the study's clean and protected test images after every epoch (peak / last)."),
        "rows": rows,
    }
