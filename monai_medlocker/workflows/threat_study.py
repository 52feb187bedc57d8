"""The threat study: how well does a protected release hold against a thief?

A data owner runs it before publishing (``medlocker evaluate``, ``bundle/configs/evaluate_protection.json``).
The thief of ``shared/reference/threats.md`` holds the protected images and this project's public code:

1. **Transfer.** Every zoo model (``configs/zoo.json``) classifies every row of images: ``none`` (the
   originals), ``random`` (a plain visible logo at a random feasible place: the control), ``bhe``
   (Adv-watermark's optimizer) and ``medlocker`` (ours), each made with the current protect defaults
   against the default surrogate. Held-out models were never queried by the optimizer; only they
   count as evidence of transfer. A source x target matrix protects the images once per source model.
2. **The thief's preprocessing** (``monai_medlocker.threats.preprocessing``) before each model.
3. **Removal** (``monai_medlocker.threats.removal``): informed and blind inverse blends, three
   inpaintings, a learned remover the thief trains on their own images, and a collection attack.
4. **Unauthorised training**: the thief trains models on a protected training split with the true
   labels; their accuracy on clean and protected test images is compared with the same models trained
   on the clean split (peak over epochs and last epoch).

Outputs (``output_dir``): ``threats.json`` (every aggregate and the settings), ``per_image.jsonl``,
``threats.md`` (the report), and PNG plots (``transfer_matrix.png``, ``preprocessing.png``,
``removal.png``, ``montage.png``).
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from monai_medlocker.networks import Surrogate
from monai_medlocker.threats.placement import placement_leak
from monai_medlocker.workflows.handlers import write_json_atomic
from monai_medlocker.workflows.metrics import protection_metrics
from monai_medlocker.workflows.study_tools import predict, protect_tools, study_render_key, study_wsm

__all__ = ["ROWS", "StudyImage", "ThreatStudy", "lab_study_images", "datalist_study_images", "release_study_images",
           "predict", "protect_tools"]

# "medlocker" is the default level ("mark"); "medlocker@<level>" rows are the other protection levels
# (shield.LEVELS); "medlocker+shield" is the block shield of before issue 17 (4/255 L-inf boxes).
LEVEL_ROWS = ("medlocker@shield", "medlocker@strong")
ROWS = ("none", "random", "bhe", "medlocker", *LEVEL_ROWS, "medlocker+shield", "medlocker-v1")
PROTECTED_ROWS = ROWS[1:]
# The protect default before issue 11 (one surrogate, one mark in the full space, plain rendering): the
# "old default" row, measured in the same run as the new one.
V1_SETTINGS = {"optimizer": "medlocker",
               "optimizer_kwargs": {"verify_chunk": None, "reuse_linearization": False, "keyed_sites": None,
                                    "give_up": None},
               "max_queries": None, "search_space": "full"}
WHITE_BOX = "white-box"
# Removal attacks that must first be fitted (trained / estimated) before they can be applied.
FITTED_ATTACKS = ("learned_remover", "collection")


@dataclass
class StudyImage:
    """One test image: the original pixels, its WSM (forbidden boxes), its true grade and the anatomy's no-go zones.

    The WSM is protect's (:func:`~monai_medlocker.workflows.study_tools.study_wsm`): the lesion boxes and the
    ``zones`` (optic disc and macula, ``anatomy_zones``'s form).
    """

    image_id: str
    original: np.ndarray
    wsm: np.ndarray
    grade: int
    zones: list = field(default_factory=list)


@dataclass
class _Row:
    """One protection row: the images the thief gets and the owner's records of how they were made."""

    name: str
    images: list[np.ndarray]
    records: list[dict | None]
    seconds: list[float] = field(default_factory=list)
    queries: list[int] = field(default_factory=list)

    def placements(self, i: int) -> list:
        from monai_medlocker.watermark.blend import Placement

        rec = self.records[i]
        return [Placement.from_record(m) for m in rec["marks"]] if rec else []


def lab_study_images(n: int, size: int = 512, seed: int = 31, lab_version: int | None = None,
                     grade_weights: Sequence[float] | None = None, anatomy: dict | None = None) -> list[StudyImage]:
    """Fresh synthetic test images (seeds far from any training lab), grades balanced unless weights are given.

    The WSM is protect's on a lab datalist: the lab's exact lesion masks (margin 2 px) and the no-go zones of
    the lab's own optic disc and fovea (``anatomy``: ``AnatomyZonesd`` settings, ``None`` for protect's).
    """
    from monai_medlocker.data.lab.dataset import lab_anatomy
    from monai_medlocker.data.synthetic import LESION_TYPES, synthesize_fundus

    if n < 1:
        raise ValueError(f"the study needs at least 1 image, got n={n}.")
    rng = np.random.default_rng(seed)
    if grade_weights is None:
        grades = [i % 5 for i in range(n)]
    else:
        w = np.asarray(grade_weights, dtype=float)
        grades = rng.choice(5, size=n, p=w / w.sum()).tolist()
    kwargs = {"lab_version": lab_version} if lab_version is not None else {}
    out = []
    for i, grade in enumerate(grades):
        sample = synthesize_fundus(size, seed=seed * 100_003 + i, grade=int(grade), **kwargs)
        masks = np.stack([sample.masks[t] for t in LESION_TYPES])
        where = lab_anatomy(sample)
        wsm, zones = study_wsm(sample.image, masks, where["optic_disc"], where["fovea"], anatomy, f"lab{i:04d}")
        out.append(StudyImage(f"lab{i:04d}", sample.image, wsm, sample.grade, zones))
    return out


def datalist_study_images(path: str | Path, section: str = "test", num_classes: int = 5,
                          errors: list[dict] | None = None, anatomy: dict | None = None) -> list[StudyImage]:
    """A user's labelled images from a MONAI datalist (``image``, ``label``, optional ``mask_*``, ``optic_disc``
    and ``fovea`` keys).

    The WSM is protect's: without masks the built-in lesion detector finds the lesions, without ``optic_disc`` /
    ``fovea`` the locator finds the anatomy (``anatomy``: ``AnatomyZonesd`` settings). Unreadable items are
    appended to ``errors`` (file and reason) and skipped.
    """
    from monai_medlocker.data.datalist import load_datalist
    from monai_medlocker.io.image import load_rgb
    from monai_medlocker.lesions.source import LesionSource

    errors = errors if errors is not None else []
    lesions = LesionSource("builtin")
    out = []
    for item in load_datalist(path, section, num_classes=num_classes):
        try:
            image = load_rgb(item["image"])
            mask_paths = [Path(v) for k, v in item.items() if k.startswith("mask_") and v]
            maps, _, _ = lesions(Path(item["image"]), image, mask_paths)
            wsm, zones = study_wsm(image, maps, item.get("optic_disc"), item.get("fovea"), anatomy, str(item["image"]))
            out.append(StudyImage(Path(item["image"]).name, image, wsm, int(item["label"]), zones))
        except (OSError, ValueError) as err:
            errors.append({"file": str(item.get("image")), "error": str(err)})
    return out


def release_study_images(release_dir: str | Path, originals_dir: str | Path,
                         errors: list[dict] | None = None, anatomy: dict | None = None) -> tuple[list[StudyImage], _Row]:
    """An existing protected release and its originals: the owner checks what they are about to publish.

    ``release_dir`` is a protect output folder. Each of its owner's records (``private/records``) is matched
    to its protected PNG (``public/``) and to the original of the same name in ``originals_dir``; its grade
    is the record's ``label``. A protected image without
    its original, or without a record, is reported in ``errors`` and skipped.

    Raises:
        FileNotFoundError: either folder does not exist.
    """
    from monai_medlocker.io.image import load_rgb
    from monai_medlocker.workflows.protect import PRIVATE_DIR, PUBLIC_DIR, RECORD_SUFFIX
    from monai_medlocker.lesions.source import LesionSource

    lesions = LesionSource("builtin")
    release_dir, originals_dir = Path(release_dir), Path(originals_dir)
    for label, folder in (("release", release_dir), ("originals", originals_dir)):
        if not folder.is_dir():
            raise FileNotFoundError(f"{label} folder not found: {folder}")
    errors = errors if errors is not None else []
    images, row = [], _Row("release", [], [])
    records_dir = release_dir / PRIVATE_DIR / "records"
    for sidecar in sorted(records_dir.rglob(f"*{RECORD_SUFFIX}")):
        rel = sidecar.relative_to(records_dir)
        stem = Path(sidecar.name[: -len(RECORD_SUFFIX)]).stem
        protected = release_dir / PUBLIC_DIR / rel.parent / (stem + ".png")
        candidates = sorted((originals_dir / rel.parent).glob(stem + ".*"))
        candidates = [c for c in candidates if c.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff")]
        try:
            record = json.loads(sidecar.read_text())
            if not protected.is_file():
                raise ValueError(f"protected image not found beside its record: {protected}")
            if not candidates:
                raise ValueError(f"no original for {protected.name} in {originals_dir / rel.parent}")
            if "label" not in record or "marks" not in record:
                raise ValueError(f"{sidecar}: the record has no label or marks (not a MedLocker parameter record)")
            if record.get("label_source", "given") != "given":
                raise ValueError(f"{sidecar}: the image was protected without a true grade (label_source "
                                 f"{record.get('label_source')!r}); protect with a labelled datalist to study it")
            original = load_rgb(candidates[0])
            wm = load_rgb(protected)
            if original.shape != wm.shape:
                raise ValueError(f"{protected.name} is {wm.shape[1]}x{wm.shape[0]} but its original "
                                 f"{candidates[0].name} is {original.shape[1]}x{original.shape[0]}")
        except (OSError, ValueError) as err:
            errors.append({"file": str(protected), "error": str(err)})
            continue
        # The rows made afresh from the originals obey protect's WSM (built-in detector and anatomy locator).
        maps, _, _ = lesions(candidates[0], original, [])
        try:
            wsm, zones = study_wsm(original, maps, anatomy=anatomy, name=str(candidates[0]))
        except ValueError as err:
            errors.append({"file": str(protected), "error": str(err)})
            continue
        images.append(StudyImage(str(rel.parent / stem), original, wsm, int(record["label"]), zones))
        row.images.append(wm)
        row.records.append(record)
    if not images:
        raise ValueError(f"no protected image in {release_dir} could be matched to an original in {originals_dir}"
                         + (f": {errors[0]['error']}" if errors else ""))
    return images, row


def _thief_view(fn: Callable, image: np.ndarray, index: int) -> np.ndarray:
    """The thief's preprocessing of one image; a random one (colour jitter) draws by image index, so that the
    original and every protected copy of an image get the same draw and only the protection differs."""
    return fn(image, seed=index) if "seed" in getattr(fn, "keywords", {}) else fn(image)


def _psnr_capped(value: float, cap: float = 99.0) -> float:
    """A perfect restoration has infinite PSNR: count it at ``cap`` dB rather than dropping it."""
    return cap if not np.isfinite(value) else float(value)


def _same_weights(a: Surrogate, b: Surrogate) -> bool:
    """Whether two surrogates are the same trained model (the white-box row already covers it)."""
    if type(a.network) is not type(b.network) or a.spec.input_size != b.spec.input_size:
        return False
    sa, sb = a.network.state_dict(), b.network.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _weights_hash(model: Surrogate) -> str:
    import hashlib

    digest = hashlib.sha256(model.spec.name.encode() + str(model.spec.input_size).encode())
    for tensor in model.network.state_dict().values():
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _settings_hash(settings: dict) -> str:
    """A short digest of a thief step's settings: its cached outputs are reused only for the same settings."""
    import hashlib

    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _median(values: Sequence[float]) -> float | None:
    return round(float(statistics.median(values)), 4) if values else None


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(float(np.mean(vals)), 4) if vals else None


class ThreatStudy:
    """Run the threat study on a test set and write its report (see the module docstring).

    Args:
        output_dir: where the report, plots and the thief's working files go (created).
        surrogate: the default protect surrogate (what ``medlocker protect`` attacks): the white-box model.
        zoo: a zoo config path (``configs/zoo.json``) or a loaded ``Zoo``; its checkpoints must exist.
        images: the test set; or give ``n``/``size``/``seed`` for a lab test set, ``datalist`` for a user's
            labelled images, or ``release_dir`` + ``originals_dir`` to study an existing release.
        rows: protection rows (subset of ``ROWS``).
        preprocessing: thief preprocessing names (``monai_medlocker.threats.THIEF_PREPROCESSING``).
        attacks: removal attack names (``REMOVAL_ATTACKS`` plus ``learned_remover`` and ``collection``).
        optimizer, optimizer_kwargs, max_queries, search_space, logo, shield: the protect settings (defaults
            of ``bundle/configs/inference.json``), used for every protected row; the ``medlocker+shield``
            row adds the shield (with ``shield``'s settings, or the defaults when the protect default has
            none), the ``medlocker@shield`` / ``medlocker@strong`` rows are those protection levels, and
            ``medlocker-v1`` is the protect default before issue 11 (:data:`V1_SETTINGS`).
        transfer_matrix: also protect with each source model alone (source x target matrix).
        remover: settings of the thief's learned remover (``train_remover`` keyword arguments).
        unauthorised_training: ``None`` to skip, or a dict with ``families`` (zoo member names),
            ``n_train``, ``size``, ``seed``, ``epochs``.
        quick: a small, fast configuration (CI); the settings above still apply where given.
        progress: tqdm progress bars.
        anatomy: settings of the anatomy's no-go zones in the WSM (``AnatomyZonesd``'s; ``None``: protect's defaults).
    """

    def __init__(
        self,
        output_dir: str | Path,
        surrogate: Surrogate,
        zoo: Any = None,
        images: list[StudyImage] | None = None,
        n: int = 60,
        size: int = 512,
        seed: int = 31,
        lab_version: int | None = None,
        datalist: str | None = None,
        release_dir: str | None = None,
        originals_dir: str | None = None,
        rows: Sequence[str] = ROWS,
        preprocessing: Sequence[str] | None = None,
        attacks: Sequence[str] | None = None,
        optimizer: str = "medlocker",
        optimizer_kwargs: dict | None = None,
        max_queries: int | None = None,
        search_space: Any = "full",
        logo: str | None = None,
        shield: dict | None = None,
        transfer_matrix: bool = True,
        remover: dict | None = None,
        unauthorised_training: dict | None = None,
        bundle_root: str | None = None,
        quick: bool = False,
        progress: bool = True,
        num_classes: int = 5,
        anatomy: dict | None = None,
    ) -> None:
        from monai_medlocker.networks.zoo import Zoo, load_zoo_config
        from monai_medlocker.threats import THIEF_PREPROCESSING
        from monai_medlocker.threats.removal import REMOVAL_ATTACKS

        self.output_dir = Path(output_dir)
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise ValueError(f"output path is not a folder: {self.output_dir}")
        # An ensemble protects as a whole; its first member is the "white-box" model of the report, and
        # the zoo copies of the others are marked white-box duplicates (never counted as held out).
        self.surrogates = list(surrogate) if isinstance(surrogate, (list, tuple)) else [surrogate]
        if not self.surrogates or not all(isinstance(s, Surrogate) for s in self.surrogates):
            raise TypeError(f"surrogate must be a Surrogate or a non-empty list of them, got {surrogate!r}.")
        self.surrogate = self.surrogates[0]
        self.zoo = zoo if isinstance(zoo, Zoo) else load_zoo_config(zoo)
        unknown = [r for r in rows if r not in ROWS]
        if unknown:
            raise ValueError(f"unknown study row(s) {unknown}; expected among {ROWS}.")
        # The originals are always a row: every accuracy drop and ASR is measured against them.
        self.rows = ["none"] + [r for r in rows if r != "none"]
        self.preprocessing = list(preprocessing) if preprocessing is not None else list(THIEF_PREPROCESSING)
        bad = [p for p in self.preprocessing if p not in THIEF_PREPROCESSING]
        if bad:
            raise ValueError(f"unknown thief preprocessing {bad}; expected among {', '.join(THIEF_PREPROCESSING)}.")
        all_attacks = list(REMOVAL_ATTACKS) + list(FITTED_ATTACKS)
        self.attacks = list(attacks) if attacks is not None else all_attacks
        bad = [a for a in self.attacks if a not in all_attacks]
        if bad:
            raise ValueError(f"unknown removal attack(s) {bad}; expected among {', '.join(all_attacks)}.")
        from monai_medlocker.watermark import SearchSpace

        self.space = SearchSpace.from_config(search_space)
        self.protect_settings = {"optimizer": optimizer, "optimizer_kwargs": dict(optimizer_kwargs or {}),
                                 "max_queries": max_queries, "search_space": search_space, "logo": logo,
                                 "shield": shield}
        self.shield = dict(shield) if isinstance(shield, dict) else {}
        self.transfer_matrix = transfer_matrix
        self.quick = quick
        if remover is None and quick:
            from monai_medlocker.threats.removal import QUICK_REMOVER

            remover = {k: v for k, v in QUICK_REMOVER.items() if k != "size"}
        self.remover = dict(remover or {})
        self.unauthorised_training = unauthorised_training
        self.bundle_root = bundle_root
        self.progress = progress
        self.num_classes = num_classes
        self.anatomy = dict(anatomy or {})
        self.errors: list[dict] = []
        self.timings: dict[str, float] = {}
        self._source = {"n": n, "size": size, "seed": seed, "lab_version": lab_version, "datalist": datalist,
                        "release_dir": release_dir, "originals_dir": originals_dir}
        self._images = images
        self.release_row: _Row | None = None
        self.remover_stats: dict | None = None
        self.results: dict | None = None
        self.protected_rows: dict[str, _Row] | None = None  # set by run(): the images and records of every row

    # -- set-up ---------------------------------------------------------------------------------------
    def _load_images(self) -> list[StudyImage]:
        src = self._source
        if self._images is not None:
            return self._images
        if src["release_dir"] or src["originals_dir"]:
            if not (src["release_dir"] and src["originals_dir"]):
                raise ValueError("studying a release needs both release_dir and originals_dir.")
            images, self.release_row = release_study_images(src["release_dir"], src["originals_dir"], self.errors,
                                                            self.anatomy)
            return images
        if src["datalist"]:
            return datalist_study_images(src["datalist"], errors=self.errors, num_classes=self.num_classes,
                                         anatomy=self.anatomy)
        return lab_study_images(src["n"], src["size"], src["seed"], src["lab_version"], anatomy=self.anatomy)

    def _load_models(self) -> tuple[dict[str, Surrogate], dict[str, str]]:
        models, roles = {WHITE_BOX: self.surrogate}, {WHITE_BOX: "white_box"}
        for member in self.zoo.members.values():
            if member.role == "candidate":  # sources under trial: neither evidence nor part of any default
                continue
            try:
                models[member.name] = member.load(self.zoo.num_classes)
            except (FileNotFoundError, ValueError) as err:
                self.errors.append({"file": str(member.checkpoint), "error": str(err)})
                continue
            roles[member.name] = member.role
            if any(_same_weights(models[member.name], s) for s in self.surrogates):
                # the optimizer queries it: it is the white-box model, whatever its zoo role says
                roles[member.name] = "white_box_duplicate"
        if not any(r == "held_out" for r in roles.values()):
            raise ValueError(f"no held-out zoo model could be loaded from {self.zoo.path}: "
                             + "; ".join(e["error"] for e in self.errors[-3:]))
        return models, roles

    def _bar(self, iterable, desc: str, total: int | None = None):
        if not self.progress:
            return iterable
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, leave=False)

    # -- protection -------------------------------------------------------------------------------------
    def _protect_row(self, name: str, images: list[StudyImage], surrogates: list[Surrogate]) -> _Row:
        from monai_medlocker.watermark import ShieldSettings, watermark_image
        from monai_medlocker.watermark.shield import level_settings
        from monai_medlocker.watermark.feasibility import NoFeasiblePlacementError

        if name == "none":
            return _Row(name, [s.original for s in images], [None] * len(images))
        shield, keyed = None, True
        if name == "medlocker-v1":  # the old default: its single surrogate (the ensemble's first), plain marks
            optimizer, space, logo = protect_tools({**V1_SETTINGS, "logo": self.protect_settings["logo"]})
            surrogates, keyed = surrogates[:1], False
        elif name == "medlocker+shield":
            optimizer, space, logo = protect_tools(self.protect_settings, "medlocker")
            shield = ShieldSettings.from_config(self.shield or True)
        elif name in LEVEL_ROWS:
            optimizer, space, logo = protect_tools(self.protect_settings, "medlocker")
            shield = level_settings(name.split("@", 1)[1])[1]
        else:
            optimizer, space, logo = protect_tools(self.protect_settings, name)
            shield = ShieldSettings.from_config(self.protect_settings.get("shield")) \
                if name == self.protect_settings["optimizer"] else None
        row = _Row(name, [], [])
        for i, s in enumerate(self._bar(images, f"protect {name}")):
            start = time.perf_counter()
            try:
                out, rec = watermark_image(s.original, s.wsm, surrogates, logo, optimizer, space, label=s.grade, seed=i,
                                           render_key=study_render_key(s.image_id, i) if keyed else None, shield=shield)
            except NoFeasiblePlacementError as err:
                self.errors.append({"file": s.image_id, "error": f"{name}: {err}"})
                out, rec = s.original, None
            row.images.append(out)
            row.records.append(rec)
            row.seconds.append(time.perf_counter() - start)
            row.queries.append(rec["queries"] if rec else 0)
        return row

    # -- evaluation -------------------------------------------------------------------------------------
    def _evaluate(self, models, images: list[StudyImage], rows: dict[str, _Row]) -> dict:
        from monai_medlocker.threats import get_thief_preprocessing

        grades = np.array([s.grade for s in images])
        preds: dict[str, dict[str, dict[str, np.ndarray]]] = {}  # preprocessing -> row -> model -> preds
        for prep in self._bar(self.preprocessing, "thief preprocessing"):
            fn = get_thief_preprocessing(prep)
            preds[prep] = {name: predict(models, [_thief_view(fn, img, i) for i, img in enumerate(row.images)])
                           for name, row in rows.items()}
        table = {prep: {row: {m: protection_metrics(grades, by_row["none"][m], p[m]) for m in models}
                         for row, p in by_row.items()} for prep, by_row in preds.items()}
        return {"metrics": table, "preds": preds}

    def _removal(self, models, images: list[StudyImage], rows: dict[str, _Row], clean_preds) -> dict:
        from monai_medlocker.threats.removal import box_fidelity, get_removal_attack
        from monai_medlocker.watermark import load_logo

        logo = load_logo(self.protect_settings["logo"])
        grades = np.array([s.grade for s in images])
        out: dict[str, dict[str, dict]] = {}
        examples: dict[str, dict[str, np.ndarray]] = {}
        for attack in self.attacks:
            fitted = self._fitted_attack(attack, logo, rows) if attack in FITTED_ATTACKS else None
            out[attack] = {}
            for row_name, row in rows.items():
                if row_name == "none":
                    continue
                try:
                    fit = fitted(row) if fitted else None
                except ValueError as err:  # e.g. too few marks located to estimate the watermark
                    self.errors.append({"file": f"{attack} on {row_name}", "error": str(err)})
                    out[attack][row_name] = None
                    continue
                restored, seconds, fidelity, baseline = [], [], [], []
                for i, img in enumerate(self._bar(row.images, f"{attack} on {row_name}")):
                    placements = row.placements(i)
                    start = time.perf_counter()
                    if not placements:
                        restored.append(img)
                        continue
                    if fit is not None:
                        res = fit(img)
                    elif attack == "blind_inverse":  # knows only the public logo and the public search space
                        res = get_removal_attack(attack)(img, logo, space=self.space, max_marks=self.space.n_marks)
                    else:  # informed, or inpainting of the footprint the thief traced by hand
                        res = get_removal_attack(attack)(img, logo, placements=placements)
                    seconds.append(time.perf_counter() - start)
                    restored.append(res)
                    fidelity.append(box_fidelity(res, images[i].original, placements))
                    baseline.append(box_fidelity(img, images[i].original, placements))
                    if i == 0:
                        examples.setdefault(row_name, {})[attack] = res
                p = predict(models, restored)
                out[attack][row_name] = {
                    "models": {m: protection_metrics(grades, clean_preds[m], p[m]) for m in models},
                    "box_psnr_median": _median([_psnr_capped(f["psnr"]) for f in fidelity]),
                    "box_ssim_median": _median([f["ssim"] for f in fidelity]),
                    "protected_box_psnr_median": _median([_psnr_capped(f["psnr"]) for f in baseline]),
                    "protected_box_ssim_median": _median([f["ssim"] for f in baseline]),
                    "seconds_per_image_median": _median(seconds),
                    "images_attacked": len(seconds),
                }
        return {"metrics": out, "examples": examples}

    def _fitted_attack(self, attack: str, logo: np.ndarray, rows: dict[str, _Row]) -> Callable[[_Row], Callable]:
        """A factory: row -> (image -> restored image) for attacks that must be trained or fitted first."""
        if attack == "learned_remover":
            from monai_medlocker.threats import LearnedRemover, train_remover
            from monai_medlocker.watermark import logo_sha256

            settings = {"size": min(rows["none"].images[0].shape[:2]), **self.remover}
            key = {**settings, "logo": logo_sha256(logo), "space": self.space.to_record(), "pairs": "keyed/1"}
            path = self.output_dir / "thief" / f"learned_remover_{_settings_hash(key)}.pt"
            if not path.is_file():
                start = time.perf_counter()
                path.parent.mkdir(parents=True, exist_ok=True)
                train_remover(str(path), progress=self.progress, logo=logo, space=self.space, **settings)
                self.timings["train_learned_remover"] = round(time.perf_counter() - start, 1)
            remover = LearnedRemover.from_checkpoint(path)
            self.remover_stats = {"settings": settings, "checkpoint": str(path), "report": remover.report}
            return lambda row: (lambda img: remover(img, logo))
        from monai_medlocker.threats import CollectionAttack

        def fit(row: _Row):
            marked = [img for i, img in enumerate(row.images) if row.records[i]]
            estimate = CollectionAttack(space=self.space).fit(marked, logo=logo)
            return estimate.remove

        return fit

    # -- unauthorised training --------------------------------------------------------------------------
    def _unauthorised_training(self, models, images: list[StudyImage], rows: dict[str, _Row]) -> dict:
        from monai_medlocker.workflows.unauthorised import unauthorised_training

        cfg = dict(self.unauthorised_training)
        test_sets = {"clean": [s.original for s in images]}
        if "medlocker" in rows:
            test_sets["protected"] = rows["medlocker"].images
        members = [vars(m) for m in self.zoo.select(list(cfg.get("families", ())))]
        hashes = [_weights_hash(s) for s in self.surrogates]
        key = {**cfg, **self.protect_settings, "surrogate": hashes if len(hashes) > 1 else hashes[0], "members": members}
        work = self.output_dir / "thief" / f"training_{_settings_hash(key)}"
        return unauthorised_training(
            work, zoo=self.zoo, surrogate=self.surrogates if len(self.surrogates) > 1 else self.surrogate,
            protect_settings=self.protect_settings, test_images=test_sets, test_grades=[s.grade for s in images],
            bundle_root=self.bundle_root, progress=self.progress, **cfg,
        )

    # -- the run ----------------------------------------------------------------------------------------
    def run(self) -> dict:
        """Run every stage, write the outputs and print a summary; returns the results dict."""
        total_start = time.perf_counter()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        stage = time.perf_counter()
        images = self._load_images()
        models, roles = self._load_models()
        self.timings["load"] = round(time.perf_counter() - stage, 1)
        rows: dict[str, _Row] = {}
        for name in self.rows:
            stage = time.perf_counter()
            rows[name] = self._protect_row(name, images, self.surrogates)
            self.timings[f"protect_{name}"] = round(time.perf_counter() - stage, 1)
        if self.release_row is not None:
            rows["release"] = self.release_row
        self.protected_rows = rows
        stage = time.perf_counter()
        evaluation = self._evaluate(models, images, rows)
        self.timings["evaluate_preprocessing"] = round(time.perf_counter() - stage, 1)
        matrix = None
        if self.transfer_matrix:
            stage = time.perf_counter()
            matrix = self._transfer_matrix(models, images, evaluation["preds"]["none"]["none"])
            self.timings["transfer_matrix"] = round(time.perf_counter() - stage, 1)
        stage = time.perf_counter()
        removal = self._removal(models, images, rows, evaluation["preds"]["none"]["none"]) if self.attacks else None
        self.timings["removal"] = round(time.perf_counter() - stage, 1)
        training = None
        if self.unauthorised_training:
            stage = time.perf_counter()
            training = self._unauthorised_training(models, images, rows)
            self.timings["unauthorised_training"] = round(time.perf_counter() - stage, 1)
        self.timings["total"] = round(time.perf_counter() - total_start, 1)
        self.results = self._results(images, rows, roles, evaluation, matrix, removal, training)
        self._write(images, rows, evaluation, removal)
        print(self.summary_text())
        return self.results

    def _transfer_matrix(self, models, images, clean_preds) -> dict:
        """Accuracy of every target when the optimizer attacks each zoo source model alone (no preprocessing).

        The white-box source's row is the main protected row (added in ``_results``).
        """
        grades = np.array([s.grade for s in images])
        matrix = {}
        for member in self.zoo.by_role("source"):
            if member.name not in models or _same_weights(models[member.name], self.surrogate):
                continue
            row = self._protect_row(self.protect_settings["optimizer"], images, [models[member.name]])
            p = predict(models, row.images)
            matrix[member.name] = {t: protection_metrics(grades, clean_preds[t], p[t])["watermarked_accuracy"]
                                   for t in models}
        return matrix

    # -- results ----------------------------------------------------------------------------------------
    def _results(self, images, rows, roles, evaluation, matrix, removal, training) -> dict:
        metrics = evaluation["metrics"]
        held_out = [m for m, r in roles.items() if r == "held_out"]
        if matrix is not None and self.protect_settings["optimizer"] in rows:
            none = metrics["none"][self.protect_settings["optimizer"]]
            matrix = {WHITE_BOX: {t: v["watermarked_accuracy"] for t, v in none.items()}, **matrix}
            matrix = {"clean": {t: v["clean_accuracy"] for t, v in none.items()}, **matrix}
        headline = {}
        for row in rows:
            m = metrics["none"][row]
            per_prep = {p: _mean([metrics[p][row][h]["watermarked_accuracy"] for h in held_out]) for p in metrics}
            headline[row] = {
                "held_out_clean_accuracy": _mean([m[h]["clean_accuracy"] for h in held_out]),
                "held_out_accuracy": _mean([m[h]["watermarked_accuracy"] for h in held_out]),
                "held_out_asr": _mean([m[h]["asr"] for h in held_out]),
                "held_out_referable_flip_rate": _mean([m[h]["referable_flip_rate"] for h in held_out]),
                "held_out_accuracy_worst_preprocessing": max(v for v in per_prep.values() if v is not None),
                "held_out_accuracy_per_preprocessing": per_prep,
                "white_box_clean_accuracy": m[WHITE_BOX]["clean_accuracy"],
                "white_box_accuracy": m[WHITE_BOX]["watermarked_accuracy"],
                "seconds_per_image_median": _median(rows[row].seconds),
                "queries_median": _median(rows[row].queries),
                "box_area_fraction_median": _median([r["box_area_fraction"] for r in rows[row].records if r]),
                # The thief's reading of the visible geometry alone (monai_medlocker.threats.placement).
                "placement_leak": placement_leak([r or {} for r in rows[row].records], [s.grade for s in images]),
            }
        removal_summary = None
        if removal:
            removal_summary = {a: {row: None if v is None else {
                "held_out_accuracy": _mean([v["models"][h]["watermarked_accuracy"] for h in held_out]),
                "white_box_accuracy": v["models"][WHITE_BOX]["watermarked_accuracy"],
                "box_psnr_median": v["box_psnr_median"], "box_ssim_median": v["box_ssim_median"],
                "protected_box_psnr_median": v["protected_box_psnr_median"],
                "seconds_per_image_median": v["seconds_per_image_median"]} for row, v in by_row.items()}
                for a, by_row in removal["metrics"].items()}
        return {
            "format": "medlocker-threat-study/1",
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads()},
            "settings": {"images": len(images), "source": {k: v for k, v in self._source.items() if v is not None},
                         "rows": list(rows), "preprocessing": self.preprocessing, "attacks": self.attacks,
                         "protect": self.protect_settings, "anatomy": self.anatomy, "quick": self.quick, "remover": self.remover,
                         "remover_training": self.remover_stats,
                         "unauthorised_training": self.unauthorised_training,
                         "zoo": str(self.zoo.path), "surrogate": self.surrogate.spec.name,
                         "surrogates": [s.spec.name for s in self.surrogates]},
            "models": {m: {"role": r} for m, r in roles.items()},
            "headline": headline,
            "transfer_matrix": matrix,
            "preprocessing": metrics,
            "removal": removal["metrics"] if removal else None,
            "removal_summary": removal_summary,
            "unauthorised_training": training,
            "grades": {str(g): sum(s.grade == g for s in images) for g in range(self.num_classes)},
            "errors": self.errors,
            "timings_seconds": self.timings,
        }

    def _write(self, images, rows, evaluation, removal) -> None:
        from monai_medlocker.workflows import threat_report

        write_json_atomic(self.output_dir / "threats.json", self.results)
        with open(self.output_dir / "per_image.jsonl", "w") as fh:
            for i, s in enumerate(images):
                rec = {"image": s.image_id, "grade": s.grade}
                for row in rows:
                    rec[row] = {m: int(p[i]) for m, p in evaluation["preds"]["none"][row].items()}
                fh.write(json.dumps(rec) + "\n")
        (self.output_dir / "threats.md").write_text(threat_report.markdown(self.results))
        threat_report.plots(self.results, self.output_dir)
        threat_report.montage(images, rows, removal["examples"] if removal else {}, self.output_dir / "montage.png")

    def summary_text(self) -> str:
        from monai_medlocker.workflows import threat_report

        return threat_report.summary(self.results)
