"""The MedLocker side of the MONAI Label app: the protect workflow's own objects, nothing re-implemented.

:class:`MedLockerSteps` builds the :class:`~monai_medlocker.workflows.protect.DatasetProtector` from the
bundle's ``inference.json`` exactly as ``medlocker protect STUDIES OUTPUT`` does (same settings, read
with the CLI's own option parser), and holds the output folder's lock for as long as the app runs.
:meth:`MedLockerSteps.protect` is the one place that calls the protect step for one image, and
:meth:`MedLockerSteps.lesion_boxes` the one place that calls its lesion and WSM steps; the infer tasks
only adapt their results to MONAI Label. This module does not import monailabel.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from monai_medlocker.certify.certificate import pixel_sha256
from monai_medlocker.certify.seal import public_record as published_record
from monai_medlocker.bundle_config import bundle_root, parse_bundle_config
from monai_medlocker.cli.protect import add_protect_options, protect_overrides
from monai_medlocker.io.image import load_fundus, load_rgb, portable_name
from monai_medlocker.io.outdir import OutputLock, clean_temporaries, prepare_output_dir
from monai_medlocker.lesions.masks import MASK_CHANNELS, find_mask_files, is_mask_file
from monai_medlocker.transforms.dictionary import LesionBBoxMaskd
from monai_medlocker.transforms.protect_steps import AnatomyZonesd, LesionMapsd
from monai_medlocker.workflows.protect import ProtectItem

__all__ = ["OUTPUT_CONF", "WSM_LABEL", "LESION_LABELS", "MedLockerSteps", "RefusedImage", "protect_overrides_from_conf",
           "public_record"]

OUTPUT_CONF = "output"  # the one app setting that is not a `medlocker protect` option
# Label values of the lesion-box map: the WSM boxes, then each lesion type drawn on top of them.
WSM_LABEL = 1
LESION_LABELS = {name: WSM_LABEL + 1 + i for i, name in enumerate(MASK_CHANNELS)}


class RefusedImage(ValueError):
    """A request for an image the app will not process (the message names it and says why)."""


def _protect_option_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="monailabel start_server ... --conf", add_help=False, exit_on_error=False)
    add_protect_options(parser)
    return parser


def protect_overrides_from_conf(conf: dict) -> dict:
    """``inference.json`` overrides from the app's ``--conf KEY VALUE`` pairs, read by ``medlocker protect``'s parser.

    A key is a protect option's name without the dashes (``max_queries`` or ``max-queries`` for
    ``--max-queries``); a flag (``redo``, ``wait``) takes ``true`` or ``false``.

    Raises:
        ValueError: an unknown key or a value the option does not take (the message names the key).
    """
    parser = _protect_option_parser()
    options = {a.option_strings[0][2:]: a for a in parser._actions if a.option_strings}
    argv: list[str] = []
    for key, value in conf.items():
        if key == OUTPUT_CONF:
            continue
        name = key.replace("_", "-")
        action = options.get(name)
        if action is None:
            raise ValueError(f"--conf {key}: not a MedLocker app setting; expected {OUTPUT_CONF!r} or one of "
                             f"{', '.join(sorted(options))}")
        if action.nargs == 0:  # a flag
            text = str(value).strip().lower()
            if text not in ("true", "false"):
                raise ValueError(f"--conf {key}: expected true or false, got {value!r}")
            argv += [f"--{name}"] if text == "true" else []
        else:
            argv += [f"--{name}", str(value)]
    try:
        args = parser.parse_args(argv)
    except argparse.ArgumentError as err:
        raise ValueError(f"--conf: {err}") from err
    overrides = protect_overrides(args)
    overrides["bundle_root"] = args.bundle_root
    return overrides


def public_record(record: dict, protected: np.ndarray | None, output: Path | None) -> dict:
    """The part of an image's protect record that may be shown to anyone who gets the protected image.

    The protect workflow's own public record (:func:`monai_medlocker.certify.seal.public_record`: DESIGN
    invariant 6, never the grade, predictions, lesion boxes, opacities or seed), plus where the output
    is. The whole record stays in the owner's output folder (``private/records``).
    """
    public = published_record(record)
    public["image"] = (record.get("source") or {}).get("file")
    public["certified_by"] = (record.get("run_settings") or {}).get("key_id")
    public["output"] = output.name if output is not None else None
    public["protected_sha256"] = pixel_sha256(protected) if protected is not None else None
    return public


class MedLockerSteps:
    """The protect workflow's objects for one app: built once, used by every request.

    Args:
        studies: the app's studies folder (the datastore's images), or a URL for a remote datastore.
        output_dir: where protected images and their records go (as ``medlocker protect``'s OUT);
            never inside the studies folder.
        conf: the app's ``--conf`` pairs (see :func:`protect_overrides_from_conf`).

    Raises:
        ValueError: bad settings; OutputError: an unusable or busy output folder, or one holding an
        earlier run's outputs made with other settings (unless ``redo``).
    """

    def __init__(self, studies: str | Path, output_dir: str | Path, conf: dict | None = None) -> None:
        overrides = protect_overrides_from_conf(dict(conf or {}))
        root = bundle_root(overrides.pop("bundle_root"))
        local = not str(studies).startswith(("http://", "https://"))
        self.studies = Path(studies).resolve() if local else None
        self.output_dir = Path(output_dir).resolve()
        overrides.update(dataset_dir=str(self.studies or self.output_dir.parent / "remote-studies"),
                         output_dir=str(self.output_dir), progress=False)
        self.protector = parse_bundle_config("inference.json", root, overrides).get_parsed_content("protector")
        prepare_output_dir(self.output_dir)
        # Held while the app runs: no `medlocker protect` (or second app) writes into this folder meanwhile.
        self._lock = OutputLock(self.output_dir, wait=self.protector.wait, command="MedLocker MONAI Label app").acquire()
        clean_temporaries(self.output_dir)
        self.protector._settings = self.protector.run_settings()
        self.protector._check_resume(self.protector._settings)  # as a `medlocker protect` run into this folder

    def close(self) -> None:
        self._lock.release()

    def item(self, image: str | Path) -> ProtectItem:
        """The protect item of one datastore image, named as ``medlocker protect STUDIES`` names it.

        Raises:
            RefusedImage: a missing file, a lesion-mask file, or a file outside the studies folder.
        """
        path = Path(image)
        if not path.is_file():
            raise RefusedImage(f"{image}: no such image file")
        if is_mask_file(path):
            raise RefusedImage(f"{image}: a lesion mask (named by the _MA/_HE/_EX/_SE/_lesions rule), not a fundus image")
        if self.studies is None:  # a remote datastore's local copy: named by its file name
            return ProtectItem(path, Path(path.name), find_mask_files(path))
        resolved = path.resolve()
        if self.studies not in resolved.parents:
            raise RefusedImage(f"{image}: not inside the studies folder {self.studies}")
        return ProtectItem(resolved, resolved.relative_to(self.studies), find_mask_files(resolved))

    def protect(self, image: str | Path) -> tuple[Path | None, dict, float]:
        """Protect one image with the protect workflow's per-image step.

        The output and its full record are written to the output folder, as ``medlocker protect`` writes
        them. Returns the protected file (``None`` when the image was not protected), the public record,
        and the step's own seconds (as ``medlocker protect``'s manifest counts them).

        Raises:
            RefusedImage: see :meth:`item`; ValueError: the protect step failed (the message names the image).
        """
        item = self.item(image)
        out_path = self.protector.paths(item)[0]
        outcome = self.protector.protect_timed(item, out_path)
        if "error" in outcome:
            raise ValueError(outcome["error"])
        record = {**outcome["record"], "run_settings": self.protector._settings}
        if not record.get("protected"):
            return None, public_record(record, None, None), outcome["seconds"]
        return out_path, public_record(record, load_fundus(out_path)[0], out_path), outcome["seconds"]

    def lesion_boxes(self, image: str | Path) -> tuple[np.ndarray, dict]:
        """The lesion maps and WSM boxes protect uses for one image: (H x W uint8 label map, boxes and source).

        Label values: :data:`WSM_LABEL` inside a WSM box (forbidden to the logo), then
        :data:`LESION_LABELS` for the lesion pixels of each type. Owner-only information (DESIGN
        invariant 6): the lesion boxes are never published with a protected image.
        """
        item = self.item(image)
        pixels = load_rgb(item.image)
        wsm_step = self.protector.step(LesionBBoxMaskd).transform
        maps, source, report = self.protector.step(LesionMapsd).source(item.image, pixels, item.masks)
        # The disc and macula zones, as protect adds them.
        anatomy = self.protector.step(AnatomyZonesd)({"image_path": item.image, "original": pixels.transpose(2, 0, 1),
                                                      **item.anatomy})
        wsm = np.asarray(wsm_step(maps, anatomy["anatomy_boxes"]))[0] > 0
        boxes, channels = wsm_step.boxes(maps, anatomy["anatomy_boxes"])
        label = np.where(wsm, WSM_LABEL, 0).astype(np.uint8)
        for channel, value in enumerate(LESION_LABELS.values()):
            lesion = maps[channel]  # as lesion_bboxes reads a map: float maps above the threshold, else non-zero
            label[lesion > wsm_step.threshold if np.issubdtype(lesion.dtype, np.floating) else lesion != 0] = value
        info = {"image": portable_name(item.relative), "lesion_source": source,
                "wsm_boxes": np.asarray(boxes).tolist(),
                "wsm_box_types": [MASK_CHANNELS[int(c)] if c >= 0 else "anatomy" for c in np.asarray(channels)],
                "anatomy": anatomy["anatomy"],
                "wsm_pixels": int(wsm.sum()), "labels": {"wsm_box": WSM_LABEL, **LESION_LABELS}}
        if report is not None:
            info["lesion_report"] = json.loads(json.dumps(report, default=str))
        return label, info
