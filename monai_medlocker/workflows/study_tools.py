"""Pieces the threat study and its unauthorised-training step share: protect tools, WSMs, predictions, render keys.

Both :mod:`~monai_medlocker.workflows.threat_study` and :mod:`~monai_medlocker.workflows.unauthorised`
import this module; it imports neither.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from monai_medlocker.networks import Surrogate, preprocess_for_model

__all__ = ["protect_tools", "study_wsm", "predict", "study_render_key"]


def protect_tools(settings: dict, optimizer_name: str | None = None) -> tuple:
    """The (optimizer, search space, logo) of a protect-settings dict, as ``inference.json`` builds them.

    ``optimizer_name`` (a study row) defaults to the settings' optimizer; another optimizer (the bhe and
    random rows) gets its own defaults, since the settings' optimizer_kwargs and max_queries belong to
    the configured one.
    """
    from monai_medlocker.watermark import SearchSpace, load_logo
    from monai_medlocker.watermark.optimizers import protect_optimizer

    name = optimizer_name or settings.get("optimizer", "medlocker")
    kwargs = {}
    if name == settings.get("optimizer", "medlocker"):
        kwargs = dict(settings.get("optimizer_kwargs") or {})
        if settings.get("max_queries") is not None:
            kwargs["max_queries"] = settings["max_queries"]
    space = SearchSpace.from_config(settings.get("search_space", "full"))
    return protect_optimizer(name, **kwargs), space, load_logo(settings.get("logo"))


def study_wsm(image: np.ndarray, masks: np.ndarray, optic_disc: dict | None = None, fovea: dict | None = None,
              anatomy: dict | None = None, name: str = "image", margin: int = 2) -> tuple[np.ndarray, list[dict]]:
    """The WSM that protect's chain builds for one image: lesion boxes plus the anatomy's no-go zones.

    It runs protect's own steps (``protect_chain``): :class:`~monai_medlocker.transforms.protect_steps.AnatomyZonesd`
    (the given ``optic_disc`` / ``fovea``, ``{"x", "y", "r"}`` in pixels, win; otherwise the built-in locator), then
    :class:`~monai_medlocker.transforms.array.LesionBBoxMask` (threshold 0.5, ``margin`` px: protect's defaults)
    with the zones' boxes joined.

    Args:
        image: H x W x 3 uint8 image.
        masks: C x H x W lesion masks (bool) or probability maps.
        optic_disc, fovea: the datalist's anatomy, or ``None`` to locate it.
        anatomy: :class:`AnatomyZonesd` settings (``None``: protect's defaults, zones on).
        name: the image's name, for error messages.
        margin: the lesion boxes' margin in pixels (``wsm_margin``).

    Returns:
        the H x W bool WSM and the zones (``anatomy_zones``'s form; empty when the zones are off).

    Raises:
        ValueError: a malformed given position, or (``on_missing="refuse"``) anatomy that cannot be found.
    """
    from monai_medlocker.lesions import wsm_from_boxes
    from monai_medlocker.transforms.array import LesionBBoxMask
    from monai_medlocker.transforms.protect_steps import AnatomyZonesd

    d = AnatomyZonesd(**(anatomy or {}))({"original": np.asarray(image).transpose(2, 0, 1), "image_path": name,
                                          "optic_disc": optic_disc, "fovea": fovea})
    boxes, _ = LesionBBoxMask(margin=margin).boxes(np.asarray(masks), d["anatomy_boxes"])
    return wsm_from_boxes(boxes, np.shape(image)[:2]), list(d["anatomy"].get("zones", []))


def predict(models: dict[str, Surrogate], images: Sequence[np.ndarray], batch_size: int = 16) -> dict[str, np.ndarray]:
    """Each model's predicted grade per image, through the model's own ``preprocess_for_model``.

    Images of different sizes are fine (each batch holds images of one size).
    """
    preds = {name: np.zeros(len(images), dtype=np.int64) for name in models}
    by_shape: dict[tuple, list[int]] = {}
    for i, img in enumerate(images):
        by_shape.setdefault(img.shape, []).append(i)
    with torch.no_grad():
        for idx in by_shape.values():
            for start in range(0, len(idx), batch_size):
                chunk = idx[start:start + batch_size]
                t = torch.from_numpy(np.stack([images[i] for i in chunk]).transpose(0, 3, 1, 2).copy())
                for name, model in models.items():
                    logits = model.network(preprocess_for_model(t, model.spec))
                    preds[name][chunk] = logits.argmax(dim=1).numpy()
    return preds


def study_render_key(image_id: str, index: int) -> bytes:
    """The study's per-image rendering secret: as protect's, never known to the thief's attacks."""
    import hashlib

    return hashlib.sha256(f"medlocker-study-render\x00{index}\x00{image_id}".encode()).digest()
