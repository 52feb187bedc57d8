"""Protect a folder or datalist of PNG/JPEG/DICOM fundus images: the protect workflow.

For each image: load, read its lesion masks, build the WSM (``LesionBBoxMask``), watermark it
(``AdversarialWatermark``, with the image's keyed rendering secret), certify it, and write a
lossless PNG (a derived DICOM instance with the MedLocker private block for a DICOM input, see
:mod:`monai_medlocker.io.dicom`). All protected instances of one source series go into one new
derived series. Inputs are only read. Outputs are written atomically, and an interrupted run
started again skips the images already done. A bad image is reported and the batch goes on.

The output folder has two parts (DESIGN invariant 6), and ``PUBLISH.txt`` in it says so:

* ``public/``: what may be published: the protected images and, with an owner key, their public
  sidecars ``<stem>.medlocker.json`` (certificate, signature, encrypted restore payload, sealed
  record). Nothing in it tells the grade, the predictions, the opacities, the lesion boxes or the
  rendering secret in clear (:func:`monai_medlocker.certify.seal.public_record`).
* ``private/``: the owner's: each image's whole record in clear (``records/<stem>.record.json``),
  ``manifest.jsonl`` (one line per image, with its status), ``summary.json``,
  ``run_settings.json``, ``montage.png`` (originals beside their protected copies), ``names.json``
  (with opaque public names) and, for a run without an owner key, ``render_secret`` (the secret of
  that folder's keyed renderings; with a key, each image's secret is derived from the key). The
  folder is 0700 and its files 0600.

One run at a time holds the output folder (:class:`~monai_medlocker.io.outdir.OutputLock`). The
settings that change an output (owner key, optimizer and its settings, search space, model, logo,
seed) are kept in ``run_settings.json`` and in each image's record: a run started again with other
settings refuses and names them, unless ``redo`` asks to protect those images again.

Lesion masks come from the datalist (``mask_*`` keys) or, for a plain folder, from files beside
each image ``<stem>.png``: ``<stem>_MA.png``, ``<stem>_HE.png``, ``<stem>_EX.png``,
``<stem>_SE.png`` (IDRiD-style, one file per lesion type) and/or ``<stem>_lesions.png`` (all
types in one), in the image's folder or in a ``masks/`` folder beside it. Non-zero = lesion. A
present but empty mask states that the image has no lesions.

``lesion_segmenter`` says what happens for an image without mask files: ``"builtin"`` (default)
runs the weight-free classical detector (:mod:`monai_medlocker.lesions.builtin`), ``"network"``
runs a trained segmenter checkpoint (:mod:`monai_medlocker.lesions.network`), ``"masks"``
requires masks (the image fails with :class:`MissingMaskError`). Given masks always win. The
per-image record says which source built the WSM (``lesion_source``: ``masks``, ``builtin`` or
``network``) and, for a detector, its report (``lesion_report``: confidence and warnings).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import json
import re
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from monai.transforms import Compose
from tqdm import tqdm

from monai_medlocker.certify.seal import SIDECAR_SUFFIX, Keyring
from monai_medlocker.data.datalist import datalist_item_problem, datalist_sections, read_datalist
from monai_medlocker.io.deidentify import DicomPrivacy
from monai_medlocker.io.dicom import is_dicom_file
from monai_medlocker.io.files import name_too_long
from monai_medlocker.io.image import SUPPORTED_SUFFIXES, ImageReadError, atomic_write_bytes, is_temporary_file, portable_name
from monai_medlocker.io.outdir import OutputError, OutputLock, clean_temporaries, inside_output, output_name, prepare_output_dir
from monai_medlocker.lesions.masks import MASK_SUFFIXES, find_mask_files, is_mask_file
from monai_medlocker.lesions.source import LESION_SEGMENTERS, MissingMaskError
from monai_medlocker.networks import Surrogate
from monai_medlocker.transforms.dictionary import AdversarialWatermarkd, LesionBBoxMaskd
from monai_medlocker.transforms.protect_steps import AnatomyZonesd, Certifyd, LesionMapsd, LoadFundusd, RenderKeyd, SaveProtectedd
from monai_medlocker.watermark.logo import logo_sha256

__all__ = ["MASK_SUFFIXES", "LESION_SEGMENTERS", "PUBLIC_DIR", "PRIVATE_DIR", "PUBLISH_NOTE", "PUBLISH_TEXT",
           "RECORD_SUFFIX", "RUN_SETTINGS", "NAMES_FILE", "PUBLIC_NAMES", "GRADE_WORDS", "label_like_name",
           "MissingMaskError", "ProtectItem", "find_protect_items", "record_path_for", "DatasetProtector",
           "image_failure", "private_folder", "protect_chain", "protect_dataset", "write_private"]

PUBLIC_DIR = "public"
PRIVATE_DIR = "private"
RECORD_SUFFIX = ".record.json"
RUN_SETTINGS = "run_settings.json"
RENDER_SECRET = "render_secret"
NAMES_FILE = "names.json"
PUBLIC_NAMES = ("keep", "opaque")
# Words and folders that give a grade away in a published name (ICDR grades, referable, class folders 0/ .. 4/).
GRADE_WORDS = ("grade", "dr", "npdr", "pdr", "normal", "mild", "moderate", "severe", "proliferative", "referable")
_GRADE_WORD = re.compile(r"(?<![a-z])(" + "|".join(GRADE_WORDS) + r")(?![a-z])")
_NAME_TOKENS = re.compile(r"[a-z]+|[0-9]+")
PUBLISH_NOTE = "PUBLISH.txt"
PUBLISH_TEXT = """MedLocker output folder

public/   Publish this folder, and nothing else. It holds the protected images and, when an owner
          key was used, their public sidecars (*.medlocker.json: the signed certificate and the
          encrypted restore payload and record). Nothing in it reveals the grade, the predictions,
          the opacities, the lesion boxes or the rendering secret. Its DICOM instances are
          de-identified by DICOM PS3.15 Annex E (Basic Application Level Confidentiality Profile with
          the Retain UIDs Option; dates removed unless --retain-dates), with no private data of other
          vendors and no free-text comments, unless protect ran with --keep-identity (free text:
          --keep-identity --keep-free-text). The encrypted restore payload keeps the original file, so unlock gives
          it back byte for byte.
private/  Keep this folder. It holds each image's whole record in clear (records/), the manifest,
          the summary, the run settings, a montage of originals beside their protected copies
          (montage.png), with opaque public names the original names (names.json) and, for a run
          without an owner key, the rendering secret.
"""


@dataclass
class ProtectItem:
    """One image to protect: its path, where its output goes, its masks and optional grade.

    ``problem`` says why a datalist entry cannot be protected (it is reported, and the batch goes on).
    """

    image: Path
    relative: Path
    masks: list[Path] = field(default_factory=list)
    label: int | None = None
    problem: str | None = None
    anatomy: dict = field(default_factory=dict)  # the datalist's optic_disc / fovea, when given


def record_path_for(output_dir: str | Path, relative: str | Path) -> Path:
    """The owner's whole record of the input at ``relative``: ``private/records/<relative stem>.record.json``."""
    relative = Path(relative)
    return Path(output_dir) / PRIVATE_DIR / "records" / relative.parent / (relative.name + RECORD_SUFFIX)


def duplicate_sop_instance_uids(output_dir: str | Path) -> list[dict]:
    """DICOM inputs of the output folder's records (this run's and earlier runs') that share a SOP Instance UID.

    Each image's key is bound to its pixels' hash, so such images never share a key; but a UID names
    one instance, so their unlocked originals would claim one identity (a PACS merges or refuses
    them). They are reported as a warning: ``[{"sop_instance_uid", "images": [source files]}]``.
    """
    files: dict[str, set[str]] = {}
    for path in sorted((Path(output_dir) / PRIVATE_DIR / "records").rglob("*" + RECORD_SUFFIX)):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            uid = record["dicom"]["source"]["sop_instance"]
            files.setdefault(uid, set()).add(str(record["source"]["file"]))
        except (OSError, ValueError, KeyError, TypeError):  # not a DICOM record (or unreadable: reported elsewhere)
            continue
    return [{"sop_instance_uid": uid, "images": sorted(names)} for uid, names in sorted(files.items()) if len(names) > 1]


def private_folder(output_dir: str | Path) -> Path:
    """``OUT/private``, made (or tightened) to 0700: it holds every image's grade in clear (issue 18)."""
    folder = Path(output_dir) / PRIVATE_DIR
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    return folder


def write_private(output_dir: str | Path, path: str | Path, data: bytes) -> None:
    """Write a file of ``OUT/private`` atomically, 0600, its folders below ``private/`` 0700 (as keys are)."""
    root, path = private_folder(output_dir), Path(path)
    folder = root
    for part in path.parent.relative_to(root).parts:
        folder = folder / part
        folder.mkdir(mode=0o700, exist_ok=True)
    atomic_write_bytes(path, data, mode=0o600)


def label_like_name(relative: str | Path, label: int | None = None) -> str | None:
    """Why an input's relative path looks like it tells its grade (then publishing it would), or ``None``.

    A class folder (``0/`` .. ``4/``), a grade word (:data:`GRADE_WORDS`) in a folder or file name, or
    a number in the name equal to the image's datalist label (zero-padded too: ``eye_02.png`` for label 2).
    """
    parts = [p.lower() for p in Path(relative).parts]
    if not parts:
        return None
    names = parts[:-1] + [Path(parts[-1]).stem]
    for folder in parts[:-1]:
        if folder in ("0", "1", "2", "3", "4"):
            return f"class folder {folder}/"
    for name in names:
        found = _GRADE_WORD.search(name)
        if found:
            return f"grade word {found.group(1)!r}"
    if label is not None and any(t.isdigit() and int(t) == int(label) for name in names for t in _NAME_TOKENS.findall(name)):
        return f"its label {label}"
    return None


def _sidecar_path(out_path: Path) -> Path:
    """The public sidecar beside a protected image (what :func:`~monai_medlocker.certify.seal.read_protected` reads)."""
    return out_path.with_name(out_path.stem + SIDECAR_SUFFIX)


def _is_image_file(path: Path) -> bool:
    if is_temporary_file(path):
        return False  # a write an interrupted run left behind, DICM preamble or not
    if path.suffix.lower() in SUPPORTED_SUFFIXES:
        return True
    # PACS exports name files by UID ("1.2.840...123") or give them no suffix: look for the DICM preamble.
    # A DICOMDIR (the media index of an export) is not an image.
    return (path.is_file() and path.suffix.lower() not in (".json", ".jsonl") and path.name.upper() != "DICOMDIR"
            and is_dicom_file(path))


def find_protect_items(source: str | Path) -> list[ProtectItem]:
    """Images to protect in a folder (recursively) or a datalist JSON (all of its sections).

    Raises:
        FileNotFoundError: the folder or datalist does not exist.
        ValueError: no images were found.
    """
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"input not found: {source}")
    items: list[ProtectItem] = []
    if source.is_file() and source.suffix.lower() == ".json":
        data = read_datalist(source)
        base = source.parent
        for section, entries in datalist_sections(data).items():
            for index, entry in enumerate(entries):
                problem = datalist_item_problem(entry)
                if problem is not None:
                    name = entry.get("image") if isinstance(entry, dict) else None
                    where = f"{section}[{index}]" + (f" ({name!r})" if name is not None else "")
                    items.append(ProtectItem(source, Path(where), problem=f"datalist {source}: item {where}: {problem}"))
                    continue
                image = base / entry["image"]
                masks = [base / v for k, v in entry.items() if k.startswith("mask_") and isinstance(v, str)]
                label = entry.get("label")
                relative = Path(entry["image"])
                if relative.is_absolute() or ".." in relative.parts:
                    relative = Path(relative.name)  # keep outputs inside the output folder
                items.append(ProtectItem(image, relative, masks or find_mask_files(image),
                                         None if label is None else int(label),
                                         anatomy={k: entry[k] for k in ("optic_disc", "fovea") if entry.get(k) is not None}))
    elif source.is_dir():
        for image in sorted(p for p in source.rglob("*") if _is_image_file(p)):
            if is_mask_file(image) or "masks" in image.relative_to(source).parts[:-1]:
                continue
            items.append(ProtectItem(image, image.relative_to(source), find_mask_files(image)))
    else:
        raise ValueError(f"input must be a folder of images or a datalist .json file, got {source}")
    if not items:
        raise ValueError(f"no PNG/JPEG/TIFF/DICOM images found in {source}")
    return items


class DatasetProtector:
    """Run the protect chain over a folder or datalist: the orchestration (image list, resume, manifest, report).

    Each image goes through one protect chain, a MONAI ``Compose`` of the steps in
    :mod:`monai_medlocker.transforms.protect_steps` (load, lesion maps, ``LesionBBoxMaskd``,
    render key, ``AdversarialWatermarkd``, certify, save). ``bundle/configs/inference.json`` builds
    that chain in the config and passes it as ``chain``; without one, :func:`protect_chain` builds
    the same chain from the settings below.

    Args:
        input_path: folder of images or datalist JSON.
        output_dir: where ``public/`` and ``private/`` go (never inside the input folder).
        surrogates: the surrogate classifier(s) (only without ``chain``).
        watermark: settings passed to :class:`AdversarialWatermark` (logo, optimizer, search_space, ...).
        lesion_threshold, lesion_min_size, wsm_margin, wsm_margin_fraction: :class:`LesionBBoxMask` settings.
        lesion_segmenter: lesion source for images without masks: ``"builtin"``, ``"network"`` or ``"masks"``.
        segmenter_checkpoint: the trained segmenter's ``state_dict`` (needed for ``"network"``).
        seed: base seed; each image's search seed is derived from it and the image's relative path.
        progress: show a progress bar.
        dicom_encoding: transfer syntax of derived DICOM instances: ``"explicit"`` (uncompressed,
            default), ``"rle"`` or ``"jpeg-ls"`` (lossless). Lossy output is refused.
        keep_identity: publish DICOM sources' patient, study and equipment identity (a clinic's own PACS
            round trip); default: de-identify by DICOM PS3.15 Annex E (:mod:`monai_medlocker.io.deidentify`).
        keep_free_text, retain_dates, retain_uids, keep_private: the other DICOM privacy settings (bundle keys
            of the same names; see :class:`~monai_medlocker.transforms.protect_steps.LoadFundusd`).
        owner_key: the owner's ``.key`` file (or an ``OwnerKey``): when given, each protected image
            gets a signed certificate, a sealed record and an encrypted restore payload
            (:mod:`monai_medlocker.certify`), and its keyed rendering secret is derived from it.
        owner_key_passphrase: the key file's passphrase, when it has one.
        redo: protect again the images an earlier run into ``output_dir`` made with other
            output-changing settings (default: refuse, naming the settings that differ).
        wait: wait for another run that holds ``output_dir`` instead of refusing.
        distributed: split the images across the ranks of the initialised ``torch.distributed``
            process group (``torchrun``, ``medlocker protect --workers N``; see :meth:`run`).
        anatomy: settings of :class:`~monai_medlocker.transforms.protect_steps.AnatomyZonesd` (only without ``chain``).
        chain: the protect chain (a ``Compose`` holding one each of ``AdversarialWatermarkd``,
            ``Certifyd`` and ``SaveProtectedd``); the settings above that build a chain are then unused.
        public_names: ``"keep"`` (default): public files keep the input's relative paths (a warning names
            those that look like labels); ``"opaque"``: each public file is named by a keyed hash of its
            relative path (20 hex digits, no folders), the original names are kept in
            ``private/names.json`` and in the sealed record, and unlock gives them back.
    """

    def __init__(
        self,
        input_path: str | Path,
        output_dir: str | Path,
        surrogates: Surrogate | Sequence[Surrogate] | None = None,
        watermark: dict | None = None,
        lesion_threshold: float = 0.5,
        lesion_min_size: int = 1,
        wsm_margin: int = 2,
        wsm_margin_fraction: float = 0.0,
        seed: int = 0,
        progress: bool = True,
        lesion_segmenter: str = "builtin",
        segmenter_checkpoint: str | None = None,
        dicom_encoding: str = "explicit",
        keep_identity: bool = False,
        keep_free_text: bool = False,
        retain_dates: bool = False,
        retain_uids: bool = True,
        keep_private: bool = False,
        owner_key=None,
        owner_key_passphrase: str | None = None,
        redo: bool = False,
        wait: bool = False,
        distributed: bool = False,
        chain: Compose | None = None,
        public_names: str = "keep",
        anatomy: dict | None = None,
    ) -> None:
        if public_names not in PUBLIC_NAMES:
            raise ValueError(f"public_names must be one of {', '.join(PUBLIC_NAMES)}, got {public_names!r}")
        self.public_names = public_names
        self._names_key: bytes | None = None
        self.distributed = bool(distributed)
        self.input_path = Path(input_path)
        self.output_dir = Path(output_dir)
        is_datalist = self.input_path.suffix.lower() == ".json" and not self.input_path.is_dir()
        in_root = (self.input_path.parent if is_datalist else self.input_path).resolve()
        self._in_root = in_root
        out_root = self.output_dir.resolve()
        if out_root == in_root or in_root in out_root.parents:
            raise ValueError(
                f"output folder {self.output_dir} is the input folder or inside it; choose a separate folder "
                "so that originals are never mixed with or overwritten by protected copies"
            )
        if chain is None:
            if surrogates is None:
                raise ValueError("DatasetProtector needs the surrogate model(s), or a protect chain that holds them")
            chain = protect_chain(
                self.output_dir, surrogates, watermark, lesion_threshold=lesion_threshold, lesion_min_size=lesion_min_size,
                wsm_margin=wsm_margin, wsm_margin_fraction=wsm_margin_fraction, seed=seed,
                lesion_segmenter=lesion_segmenter, segmenter_checkpoint=segmenter_checkpoint, dicom_encoding=dicom_encoding,
                anatomy=anatomy, privacy={"keep_identity": keep_identity, "keep_free_text": keep_free_text,
                                          "retain_dates": retain_dates, "retain_uids": retain_uids,
                                          "keep_private": keep_private},
                keyring=Keyring(owner_key, owner_key_passphrase, self.output_dir / PRIVATE_DIR / RENDER_SECRET))
        self.chain = chain
        self.watermark = self.step(AdversarialWatermarkd).transform
        self.keyring = self.step(Certifyd).keyring
        self.certifier = self.keyring.certifier
        self.saver = self.step(SaveProtectedd)
        if self.saver.output_dir.resolve() != out_root:
            raise ValueError(f"the protect chain saves into {self.saver.output_dir}, not into the output folder {self.output_dir}")
        self.seed = int(seed)
        self.progress = progress
        self.redo, self.wait = bool(redo), bool(wait)
        self._settings: dict | None = None
        self.summary: dict | None = None

    def step(self, kind: type):
        """The chain's one step of class ``kind`` (e.g. ``AdversarialWatermarkd``).

        Raises:
            ValueError: the chain has none, or more than one.
        """
        found = [t for t in self.chain.transforms if isinstance(t, kind)]
        if len(found) != 1:
            raise ValueError(f"the protect chain must hold exactly one {kind.__name__} step, found {len(found)}")
        return found[0]

    @property
    def series_overrides(self) -> dict[str, str]:
        """Source series -> derived series to add to (e.g. a PACS study protected in part earlier)."""
        return self.saver.series_overrides

    def run_settings(self) -> dict:
        """The settings that change what an image's output is, as plain JSON (compared on a resumed run)."""
        wm = self.watermark
        models = []
        for s in wm.surrogates:
            h = hashlib.sha256()
            for name, tensor in sorted(s.network.state_dict().items()):
                h.update(name.encode())
                h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            models.append({"name": s.spec.name, "input_size": s.spec.input_size, "sha256": h.hexdigest()})
        settings = {"key_id": self.certifier.key_id if self.certifier else None, "optimizer": wm.optimizer.name,
                    "optimizer_settings": wm.optimizer.settings(), "search_space": wm.search_space.to_record(),
                    "model": models, "logo_sha256": logo_sha256(wm.logo), "seed": self.seed}
        settings["on_failure"] = {"policy": wm.on_failure, "opacity": wm.failure_opacity}
        if wm.shield is not None:  # only then: the settings of a run without a shield stay as they were
            settings["shield"] = wm.shield.to_record()
            settings["level"] = wm.level
        zones = [t for t in self.chain.transforms if isinstance(t, AnatomyZonesd)]
        if zones:
            settings["anatomy"] = zones[0].to_record()
        loads = [t for t in self.chain.transforms if isinstance(t, LoadFundusd)]
        if loads and loads[0].privacy != DicomPrivacy():  # only then, as for the shield
            settings["dicom_privacy"] = loads[0].privacy.to_record()
        if self.public_names != "keep":  # as the shield: a default run's settings stay as they were
            settings["public_names"] = self.public_names
        return json.loads(json.dumps(settings, sort_keys=True))

    @staticmethod
    def _settings_changes(earlier: dict, now: dict) -> list[str]:
        return [f"{k} (earlier run: {earlier.get(k)!r}, this run: {now.get(k)!r})"
                for k in sorted(set(earlier) | set(now)) if earlier.get(k) != now.get(k)]

    def _check_resume(self, settings: dict) -> None:
        """Refuse to add to an output folder made with other settings (unless ``redo``); then record ours."""
        legacy = [name for name in ("manifest.jsonl", RUN_SETTINGS) if (self.output_dir / name).is_file()]
        if legacy:
            raise OutputError(
                f"output folder {self.output_dir} holds the outputs of an earlier MedLocker version ({', '.join(legacy)} at "
                "its top), whose published files carry the grade and the watermark parameters in clear; choose a new "
                "output folder (and do not publish the old one)")
        path = self.output_dir / PRIVATE_DIR / RUN_SETTINGS
        if path.is_file():
            try:
                earlier = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(earlier, dict):
                    raise ValueError(f"expected a JSON object, got {type(earlier).__name__}")
            except (OSError, ValueError) as err:
                raise OutputError(f"{path}: unreadable settings of an earlier run ({err}); remove it or choose "
                                  "another output folder") from err
            changes = self._settings_changes(earlier, settings)
            if changes and not self.redo:
                raise OutputError(
                    f"output folder {self.output_dir} holds the outputs of an earlier run with other settings: "
                    + "; ".join(changes) + ". Use the earlier settings to resume, pass --redo to protect its images "
                    "again with these settings, or choose another output folder")
        write_private(self.output_dir, path, json.dumps(settings, indent=2, sort_keys=True).encode())

    def _image_seed(self, relative: Path) -> int:
        digest = hashlib.sha256(f"{self.seed}:{portable_name(relative)}".encode()).digest()
        return int.from_bytes(digest[:4], "little")

    def public_relative(self, item: ProtectItem) -> Path:
        """``item``'s name in ``public/`` before its output suffix: its relative path, or an opaque name."""
        if self.public_names == "keep":
            return item.relative
        if self._names_key is None:
            # A keyed hash (the run's own secret, apart from any image's render key): stable across resumed
            # runs, and no one without the key can test a guessed name against it.
            self._names_key = self.keyring.render_key("\x00medlocker-public-names")
        digest = hmac.new(self._names_key, portable_name(item.relative).encode("utf-8"), hashlib.sha256).hexdigest()
        return Path(digest[:20])

    def paths(self, item: ProtectItem) -> tuple[Path, Path]:
        """Where ``item``'s protected image (in ``public/``) and its whole record (in ``private/``) go."""
        out_path = self.output_dir / PUBLIC_DIR / output_name(self.public_relative(item), is_dicom_file(item.image))
        return out_path, record_path_for(self.output_dir, item.relative)

    def warn_label_like_names(self, items: list[ProtectItem]) -> list[str]:
        """Warn once, naming them, about inputs whose names would publish their label; returns them."""
        found = [f"{portable_name(item.relative)} ({why})" for item in items if item.problem is None
                 for why in [label_like_name(item.relative, item.label)] if why]
        if found and self.public_names == "keep":
            shown = ", ".join(found[:10]) + (f" and {len(found) - 10} more" if len(found) > 10 else "")
            warnings.warn(f"{len(found)} input name(s) look like labels and would be published as they are: {shown}; "
                          "rename them or protect with --public-names opaque (bundle: public_names)", UserWarning,
                          stacklevel=3)
        return found

    def _claimed_paths(self, out_path: Path, record_path: Path) -> list[Path]:
        """The files an item writes, which no other item may share: with an owner key, also its public sidecar
        (``a.png`` and ``a.dcm`` have their own records, but one ``public/a.medlocker.json``)."""
        paths = [out_path, record_path] + ([_sidecar_path(out_path)] if self.certifier is not None else [])
        return [p.resolve() for p in paths]

    def run_chain(self, item: ProtectItem, out_path: Path, chain: Callable[[dict], dict] | None = None) -> dict:
        """Run ``chain`` (default: the whole protect chain) on one image; the chain's output dictionary.

        Another caller may run part of the chain, e.g. the MONAI Deploy app, whose writer operator
        runs the save step (``self.saver``) apart from the steps before it.

        Raises:
            the error the failing step raised (its message names the file), not MONAI's wrapper.
        """
        data = {"image_path": item.image, "relative": item.relative, "mask_paths": list(item.masks), "label": item.label,
                "seed": self._image_seed(item.relative), "out_path": out_path, **item.anatomy}
        if self.public_names != "keep":  # the image id and the sealed record use the public name
            data["public_name"] = portable_name(out_path.relative_to(self.output_dir / PUBLIC_DIR))
        try:
            return (chain or self.chain)(data)
        except RuntimeError as err:
            raise _step_error(err) from None

    def protect_one(self, item: ProtectItem, out_path: Path) -> dict:
        """Run the protect chain on one image and write its private record; returns the record."""
        record = self.run_chain(item, out_path)["record"]
        self.write_record(item, record)
        return record

    def write_record(self, item: ProtectItem, record: dict) -> None:
        """Write ``item``'s whole record, with this run's settings, into ``private/records``."""
        if self._settings is None:  # protect_one called outside run()
            self._settings = self.run_settings()
        record = {**record, "run_settings": self._settings}
        write_private(self.output_dir, self.paths(item)[1], json.dumps(record, indent=2).encode())

    def run(self, protect_many: Callable[[list[tuple[ProtectItem, Path]]], list[dict]] | None = None) -> dict:
        """Protect every image (one run at a time per output folder); returns the summary.

        ``protect_many`` runs the per-image step elsewhere (e.g. :class:`~monai_medlocker.workflows.ray_protect.RayProtect`
        on a Ray cluster): it takes the (item, output path) pairs this process decided to protect and
        returns (or yields as they finish, which moves the progress bar), in order, what :meth:`protect_timed`
        returns for each. Everything else (the lock,
        resume checks, name clashes, the manifest) stays here.

        With ``distributed``, every rank lists the same images and protects its share
        (``monai.data.partition_dataset``, ``even_divisible=False``: no image twice; inputs that would
        share an output name stay on one rank, so that the clash is reported as in one process).
        Rank 0 holds the output lock, checks the earlier run's settings and, after gathering every
        rank's rows, writes the one manifest and summary; every rank returns that summary.

        Raises:
            OutputError: an unusable output folder, another run holding it, or (without ``redo``)
                an earlier run's outputs made with other settings.
        """
        items = find_protect_items(self.input_path)
        rank, world = _rank_and_world() if self.distributed else (0, 1)
        if rank == 0:
            self.warn_label_like_names(items)
        if world > 1:
            return self._run_distributed(items, rank, world)
        prepare_output_dir(self.output_dir)
        with OutputLock(self.output_dir, wait=self.wait, command="medlocker protect"):
            clean_temporaries(self.output_dir)  # what a killed run left; no other run is writing here now
            private_folder(self.output_dir)
            self._settings = self.run_settings()
            start = time.perf_counter()
            try:
                self._check_resume(self._settings)
                self.keyring.render_key("")  # a keyless run's secret exists before any image (and any Ray actor) needs it
                atomic_write_bytes(self.output_dir / PUBLISH_NOTE, PUBLISH_TEXT.encode())  # before public/ gets anything
            except OSError as err:
                if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                # A disk full from the start: no image is tried; each is listed as not protected, with the file named.
                return self._finish([{"image": portable_name(item.relative), "output": None, "status": "failed",
                                      "error": item.problem or f"not protected: {err}"} for item in items], start)
            rows = self._protect_items(list(enumerate(items)), items, protect_many=protect_many)
            return self._finish([row for _, row in rows], start)

    def _run_distributed(self, items: list[ProtectItem], rank: int, world: int) -> dict:
        import torch.distributed as dist

        with contextlib.ExitStack() as stack:
            failure = None
            if rank == 0:
                try:
                    prepare_output_dir(self.output_dir)
                    stack.enter_context(OutputLock(self.output_dir, wait=self.wait, command="medlocker protect"))
                    clean_temporaries(self.output_dir)  # before any rank writes
                    private_folder(self.output_dir)
                    self._settings = self.run_settings()
                    self._check_resume(self._settings)
                    self.keyring.render_key("")  # before any rank reads it
                    atomic_write_bytes(self.output_dir / PUBLISH_NOTE, PUBLISH_TEXT.encode())
                except (OutputError, OSError, ValueError) as err:
                    failure = err
            status = [None if failure is None else str(failure)]
            dist.broadcast_object_list(status, src=0)  # also the barrier: no rank writes before rank 0's checks
            if failure is not None:
                raise failure
            if status[0] is not None:
                raise OutputError(status[0])
            start = time.perf_counter()  # every rank is ready: as a one-process run starts after its checks
            if rank != 0:
                self._settings = self.run_settings()
            mine = _partition(self._output_groups(items), rank, world)
            # One bar per rank, each over its own share: rank 0 alone cannot see the others' progress.
            desc = f"protect, worker {rank + 1} of {world} ({len(mine)} of the {len(items)} images)"
            rows = self._protect_items([(i, items[i]) for i in mine], items, progress=self.progress, desc=desc, position=rank)
            gathered: list = [None] * world
            dist.all_gather_object(gathered, rows)
            merged = [row for _, row in sorted((r for part in gathered for r in part), key=lambda r: r[0])]
            return self._finish(merged, start, write=rank == 0)

    def _output_groups(self, items: list[ProtectItem]) -> list[list[int]]:
        """Item indices grouped so that inputs sharing an output or record path fall in one group (in order)."""
        group_of: dict[Path, int] = {}
        groups: list[list[int]] = []
        for i, item in enumerate(items):
            keys = []
            if item.problem is None:
                keys = self._claimed_paths(*self.paths(item))
            hit = sorted({group_of[k] for k in keys if k in group_of})
            if not hit:
                groups.append([i])
                g = len(groups) - 1
            else:
                g = hit[0]
                for other in hit[1:]:  # this item joins two groups: one group
                    groups[g].extend(groups[other])
                    groups[other] = []
                    group_of.update({k: g for k, v in group_of.items() if v == other})
                groups[g].append(i)
            group_of.update({k: g for k in keys})
        return [sorted(g) for g in groups if g]

    def _output_problem(self, item: ProtectItem, out_path: Path, record_path: Path, inputs: set[Path]) -> str | None:
        """Why writing ``item``'s outputs would leave the output folder or replace an input; ``None`` when safe."""
        out_root = self.output_dir.resolve()
        if out_root in item.image.resolve().parents:
            return f"{item.image}: the input lies inside the output folder {self.output_dir}; move it out first"
        for path in (out_path, record_path):
            try:
                inside_output(self.output_dir, path)
            except OutputError as err:
                return f"{item.image}: {err}"
            target = path.resolve()
            # Never onto an input, and never among the inputs, where a later run would read it back.
            if target in inputs or self._in_root in target.parents:
                return f"{item.image}: its output {path} would replace or lie among the inputs; choose another output folder"
        # Every name this item writes, checked before its first write: a too-long one fails it alone.
        for path in (out_path, record_path) + ((_sidecar_path(out_path),) if self.certifier is not None else ()):
            too_long = name_too_long(path)
            if too_long:
                return f"{item.image}: its output {too_long}"
        return None

    def _protect_items(self, indexed: list[tuple[int, ProtectItem]], all_items: list[ProtectItem],
                       progress: bool | None = None, protect_many=None, desc: str = "protect",
                       position: int | None = None) -> list[tuple[int, dict]]:
        """Protect ``indexed`` (index, item) pairs in order; the manifest rows, each with its item's index."""
        out_rows: list[tuple[int, dict]] = []
        pending: list[tuple[dict, ProtectItem, Path]] = []
        inputs = {p.resolve() for item in all_items if item.problem is None for p in (item.image, *item.masks)}
        claimed: dict[Path, str] = {}
        show = self.progress if progress is None else progress
        # The bar counts finished images (not checked ones): an image sent to protect_many counts when it comes back.
        with tqdm(total=len(indexed), desc=desc, unit="img", disable=not show, file=sys.stderr, position=position) as bar:
            for index, item in indexed:
                row, out_path = self._check_item(item, inputs, claimed)
                if out_path is not None and protect_many is not None:
                    pending.append((row, item, out_path))
                else:
                    if out_path is not None:
                        self._complete_row(row, out_path, self.protect_timed(item, out_path))
                    bar.update()
                out_rows.append((index, row))
            if pending:
                outcomes = protect_many([(item, out_path) for _, item, out_path in pending])
                try:
                    found = iter(outcomes)
                    for row, _, out_path in pending:  # outcomes may arrive one by one (a generator), in order
                        self._complete_row(row, out_path, next(found))
                        bar.update()
                    next(found, None)  # a generator runs to its end (and cleans up)
                finally:
                    getattr(outcomes, "close", lambda: None)()
        return out_rows

    def protect_timed(self, item: ProtectItem, out_path: Path) -> dict:
        """:meth:`protect_one` as one batch step: ``{"record": ...}`` or ``{"error": ...}``, and ``"seconds"``.

        A bad image or a model failure is an error for this image only: the batch goes on.
        """
        t0 = time.perf_counter()
        try:
            outcome = {"record": self.protect_one(item, out_path)}
        except Exception as err:  # a bad image, or a model or library failure on one image, must not stop the batch
            outcome = {"error": image_failure(item, err)}
        outcome["seconds"] = round(time.perf_counter() - t0, 3)
        return outcome

    def _complete_row(self, row: dict, out_path: Path, outcome: dict) -> None:
        """Fill a manifest row from what :meth:`protect_timed` returned."""
        if "error" in outcome:
            row.update(status="failed", error=outcome["error"])
        else:
            record = outcome["record"]
            protected = bool(record.get("protected"))
            row.update(
                status="protected" if protected else "not-protected",
                output=portable_name(out_path.relative_to(self.output_dir)) if protected else None,
                protected=protected, success=record.get("success"), queries=record.get("queries"),
                reason=record.get("reason"), lesion_source=record.get("lesion_source"), image_id=record.get("image_id"),
            )
            lesion_report = record.get("lesion_report") or {}
            if record.get("on_failure"):
                row["on_failure"] = record["on_failure"]["policy"]
            missing = (record.get("anatomy") or {}).get("missing")
            if missing:
                row["anatomy_missing"] = missing
            if lesion_report.get("warnings"):
                row["lesion_warnings"] = lesion_report["warnings"]
                row["lesion_confidence"] = lesion_report.get("confidence")
        row["seconds"] = outcome["seconds"]

    def _check_item(self, item: ProtectItem, inputs: set[Path], claimed: dict[Path, str]) -> tuple[dict, Path | None]:
        """An item's manifest row and, when it is to be protected now, its output path (``None``: it failed, is
        already done, or has an unsafe or clashing output, as the row says)."""
        row = {"image": portable_name(item.relative), "output": None, "status": None}
        if item.problem is not None:
            row.update(status="failed", error=item.problem)
            return row, None
        out_path, record_path = self.paths(item)
        problem = self._output_problem(item, out_path, record_path, inputs)
        if problem:
            row.update(status="failed", error=problem)
            return row, None
        # Never let two inputs (a.jpg and a.png) share one output.
        keys = self._claimed_paths(out_path, record_path)
        other = next((claimed[k] for k in keys if k in claimed), None)
        if other is not None:
            row.update(status="failed", error=f"{item.image}: same output or record name as {other}; rename one")
            return row, None
        sidecar = _sidecar_path(out_path)
        # The image is written before its sidecar: a sidecar without it is another image's, from an earlier run.
        if self.certifier is not None and sidecar.is_file() and not out_path.is_file():
            row.update(status="failed", error=f"{item.image}: {sidecar} is the public sidecar of another image from an "
                       "earlier run (same name); rename one")
            return row, None
        claimed.update({k: str(item.image) for k in keys})
        if record_path.is_file():
            try:
                previous = json.loads(record_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                row.update(status="failed", error=f"{record_path}: unreadable record from an earlier run ({err})")
                return row, None
            earlier = (previous.get("source") or {}).get("file")
            if earlier != portable_name(item.relative) or (previous.get("protected") and not out_path.is_file()):
                for k in keys:  # the record's own image may still come later in this run
                    claimed.pop(k, None)
                row.update(status="failed", error=f"{item.image}: {record_path} is the record of {earlier or 'another image'} "
                           f"from an earlier run (same record name); rename one")
                return row, None
            changes = self._settings_changes(previous.get("run_settings") or {}, self._settings) \
                if "run_settings" in previous else []
            if changes and not self.redo:
                row.update(status="failed", error=f"{item.image}: its output in {self.output_dir} was made with other "
                           f"settings: {'; '.join(changes)}; pass --redo to protect it again")
                return row, None
            if not changes:
                row.update(status="already-done")
                if previous.get("protected", True):  # a withheld image has no public output
                    row["output"] = portable_name(out_path.relative_to(self.output_dir))
                row.update({k: previous.get(k) for k in ("success", "queries", "seconds", "protected", "reason", "image_id")})
                if previous.get("on_failure"):
                    row["on_failure"] = previous["on_failure"]["policy"]
                return row, None
        return row, out_path

    def _finish(self, rows: list[dict], start: float, write: bool = True) -> dict:
        """The summary of ``rows``; with ``write``, the manifest and summary files too."""
        self.summary = self._summarise(rows, time.perf_counter() - start)
        if write:
            manifest = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
            private = self.output_dir / PRIVATE_DIR
            self.summary["montage"] = _montage(self.output_dir, self._in_root, rows)
            # A full disk must not hide the summary: each file that cannot be written is named, and the run fails.
            not_written = []
            for write_one in (lambda: atomic_write_bytes(self.output_dir / PUBLISH_NOTE, PUBLISH_TEXT.encode()),
                              lambda: write_private(self.output_dir, private / "manifest.jsonl", manifest.encode()),
                              lambda: self.public_names != "keep" and self._write_names(rows),
                              lambda: write_private(self.output_dir, private / "summary.json",
                                                    json.dumps(self.summary, indent=2).encode())):
                try:
                    write_one()
                except OSError as err:
                    not_written.append(str(err))
                    self.summary.update(not_written=not_written, exit_code=1)
            print(format_summary(self.summary))  # the run's result: stdout (progress and warnings: stderr)
        return self.summary

    def _write_names(self, rows: list[dict]) -> None:
        """``private/names.json``: public name -> original relative path, this run's added to earlier runs'."""
        path = self.output_dir / PRIVATE_DIR / NAMES_FILE
        names = {}
        if path.is_file():
            try:
                names = dict(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError, TypeError) as err:
                print(f"medlocker protect: {path}: unreadable names of an earlier run ({err}); written anew", file=sys.stderr)
        prefix = PUBLIC_DIR + "/"
        names.update({r["output"][len(prefix):]: r["image"] for r in rows if (r.get("output") or "").startswith(prefix)})
        write_private(self.output_dir, path, json.dumps(names, indent=2, sort_keys=True).encode())

    def _summarise(self, rows: list[dict], seconds: float) -> dict:
        done = [r for r in rows if r["status"] in ("protected", "already-done") and r.get("protected", True)]
        new = [r for r in rows if r["status"] == "protected"]
        queries = [r["queries"] for r in done if r.get("queries") is not None]
        per_image = [r["seconds"] for r in new]
        failures = [{"image": r["image"], "error": r.get("error") or r.get("reason")}
                    for r in rows if r["status"] in ("failed", "not-protected")
                    or (r["status"] == "already-done" and r.get("protected") is False)]
        return {
            "input": str(self.input_path),
            "output_dir": str(self.output_dir),
            "images": len(rows),
            "protected": len(done),
            "newly_protected": len(new),
            "successes": sum(bool(r.get("success")) for r in done),
            "success_rate": round(sum(bool(r.get("success")) for r in done) / len(done), 4) if done else None,
            "median_queries": statistics.median(queries) if queries else None,
            "median_seconds_per_image": round(statistics.median(per_image), 3) if per_image else None,
            "total_seconds": round(seconds, 2),
            "failures": failures,
            "lesion_sources": {src: sum(r.get("lesion_source") == src for r in rows)
                               for src in sorted({r["lesion_source"] for r in rows if r.get("lesion_source")})},
            # Detector results it doubts (odd field of view, disc not found, noisy image): check these WSMs.
            "low_confidence_lesions": [{"image": r["image"], "confidence": r.get("lesion_confidence"),
                                        "warnings": r["lesion_warnings"]} for r in rows if r.get("lesion_warnings")],
            # Images the surrogates were not fooled on, and what was published for each (on_failure).
            "not_fooled": [{"image": r["image"], "action": r["on_failure"]} for r in rows if r.get("on_failure")
                           and not r.get("success")],
            # Disc or fovea not found: a conservative central zone stands in for it (on_missing_anatomy: fallback).
            "anatomy_not_found": [{"image": r["image"], "missing": r["anatomy_missing"]}
                                  for r in rows if r.get("anatomy_missing")],
            "optimizer": self.watermark.optimizer.name,
            "certified_by": self.certifier.key_id if self.certifier else None,
            # Keyless: the marks' placements and the outcomes depend on this secret (reuse it to reproduce them).
            "render_secret": None if self.certifier else _relative_to(self.keyring.secret_path, self.output_dir),
            "render_secret_from": None if self.certifier or not self.keyring.secret_from else str(self.keyring.secret_from),
            "duplicate_sop_instance_uids": duplicate_sop_instance_uids(self.output_dir),
            "exit_code": 1 if failures else 0,
        }


def format_summary(summary: dict) -> str:
    lines = [
        f"MedLocker protect: {summary['protected']}/{summary['images']} images protected "
        f"({summary['newly_protected']} in this run) -> {summary['output_dir']}",
        f"  surrogate fooled: {summary['successes']}/{summary['protected']}  "
        f"median queries: {_shown(summary['median_queries'], summary)}  "
        f"median s/image: {_shown(summary['median_seconds_per_image'], summary)}",
    ]
    if summary.get("certified_by"):
        lines.append(f"  signed and sealed with owner key {summary['certified_by']} (medlocker verify / unlock)")
    elif summary.get("render_secret"):
        given = f" (a copy of {summary['render_secret_from']})" if summary.get("render_secret_from") else ""
        lines.append(f"  keyless: the marks and outcomes depend on the render secret {summary['render_secret']}{given}; "
                     "protect --render-secret FILE reuses it")
    if summary.get("montage"):
        lines.append(f"  look before publishing: {summary['montage']} (originals beside their protected copies)")
    for a in summary.get("anatomy_not_found") or []:
        lines.append(f"  {a['image']}: {' and '.join(a['missing'])} not found; a conservative central zone kept clear instead")
    if summary.get("not_fooled"):
        lines.append(f"  not fooled ({len(summary['not_fooled'])}): " + ", ".join(
            f"{n['image']} ({n['action']})" for n in summary["not_fooled"]))
    for f in summary["failures"]:
        lines.append(f"  FAILED {f['image']}: {f['error']}")
    for f in summary.get("low_confidence_lesions", []):
        lines.append(f"  LOW-CONFIDENCE LESIONS {f['image']}: {'; '.join(f['warnings'])}")
    for message in summary.get("not_written", []):
        lines.append(f"  NOT WRITTEN: {message}")
    for d in summary.get("duplicate_sop_instance_uids", []):
        lines.append(f"  DUPLICATE SOP INSTANCE UID {d['sop_instance_uid']}: {', '.join(d['images'])} (each has its own "
                     "key, but their unlocked originals would share the UID)")
    return "\n".join(lines)


def _shown(value, summary: dict) -> str:
    """A median for the summary line; ``n/a`` (and why) when no image gave one."""
    if value is not None:
        return str(value)
    return "n/a (all skipped)" if summary["images"] and summary["protected"] and not summary["newly_protected"] else "n/a"


def _montage(output_dir: Path, input_root: Path, rows: list[dict]) -> str | None:
    """``private/montage.png`` for the owner (:mod:`~monai_medlocker.workflows.montage`); a failure is only a warning."""
    from monai_medlocker.workflows.montage import protect_montage

    try:
        return protect_montage(output_dir, input_root, rows)
    except (OSError, ValueError) as err:
        print(f"medlocker protect: warning: no montage ({err})", file=sys.stderr)
        return None


def _relative_to(path: Path, folder: Path) -> str:
    """``path`` relative to ``folder`` when it lies inside it (so that a summary does not name the folder), else whole."""
    try:
        return portable_name(Path(path).relative_to(folder))
    except ValueError:
        return str(path)


def protect_dataset(input_path: str | Path, output_dir: str | Path, surrogates, **kwargs) -> dict:
    """Functional entry point: build a :class:`DatasetProtector` and run it; returns the summary."""
    return DatasetProtector(input_path, output_dir, surrogates, **kwargs).run()


def protect_chain(output_dir: str | Path, surrogates: Surrogate | Sequence[Surrogate], watermark: dict | None = None, *,
                  keyring: Keyring, lesion_threshold: float = 0.5, lesion_min_size: int = 1, wsm_margin: int = 2,
                  wsm_margin_fraction: float = 0.0, seed: int = 0, lesion_segmenter: str = "builtin",
                  segmenter_checkpoint: str | None = None, dicom_encoding: str = "explicit",
                  privacy: dict | None = None, anatomy: dict | None = None) -> Compose:
    """The protect chain that ``bundle/configs/inference.json`` builds, from Python settings.

    ``privacy``: :class:`LoadFundusd`'s DICOM privacy settings (``keep_identity``, ``keep_free_text``, ...).
    """
    return Compose([
        LoadFundusd(**(privacy or {}), keyring=keyring),
        LesionMapsd(lesion_segmenter, segmenter_checkpoint),
        AnatomyZonesd(**(anatomy or {})),
        LesionBBoxMaskd("lesion_maps", wsm_key="wsm", boxes_key="wsm_boxes", zones_key="anatomy_boxes", threshold=lesion_threshold,
                        min_size=lesion_min_size, margin=wsm_margin, margin_fraction=wsm_margin_fraction),
        RenderKeyd(keyring),
        AdversarialWatermarkd("image", wsm_key="wsm", label_key="label", record_key="medlocker", seed_key="seed",
                              render_key_key="render_key", surrogates=surrogates, seed=seed, **(watermark or {})),
        Certifyd(keyring),
        SaveProtectedd(output_dir, dicom_encoding),
    ])


def image_failure(item: ProtectItem, err: Exception) -> str:
    """The message of one image's failure, naming its file: a bad input says what is wrong, anything else its type."""
    if isinstance(err, (ImageReadError, ValueError, OSError)):
        message = str(err)
        return message if str(item.image) in message else f"{item.image}: {message}"
    return f"{item.image}: {type(err).__name__}: {err}"


def _step_error(err: RuntimeError) -> BaseException:
    """The error a chain step raised, out of MONAI's "applying transform" wrappers (its message names the file)."""
    cause: BaseException = err
    while isinstance(cause, RuntimeError) and str(cause).startswith("applying transform") and cause.__cause__ is not None:
        cause = cause.__cause__
    return cause


def _rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size of the initialised ``torch.distributed`` group.

    Raises:
        RuntimeError: ``distributed`` was asked for without an initialised process group.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("distributed protect needs an initialised torch.distributed process group (run it under "
                           "torchrun with bundle/configs/multi_process_inference.json, or medlocker protect --workers N)")
    return dist.get_rank(), dist.get_world_size()


def _partition(groups: list[list[int]], rank: int, world: int) -> list[int]:
    """Rank ``rank``'s item indices: the groups dealt round robin by ``monai.data.partition_dataset``."""
    from monai.data import partition_dataset

    if len(groups) < world:  # partition_dataset needs at least one element per partition
        shares = [groups[r:r + 1] for r in range(world)]
    else:
        shares = partition_dataset(groups, num_partitions=world, even_divisible=False, shuffle=False)
    return sorted(i for group in shares[rank] for i in group)
