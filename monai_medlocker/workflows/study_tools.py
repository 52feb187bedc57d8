"""Pieces the threat study and its unauthorised-training step share: protect tools, WSMs, predictions, render keys.

Both :mod:`~monai_medlocker.workflows.threat_study` and :mod:`~monai_medlocker.workflows.unauthorised`
import this module; it imports neither.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from monai_medlocker.networks import Surrogate, preprocess_for_model

__all__ = ["protect_tools", "wsm_from_masks", "predict", "study_render_key"]


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


def wsm_from_masks(masks: np.ndarray, shape: tuple[int, int], margin: int = 2) -> np.ndarray:
    """The WSM of lesion masks (C x H x W bool): their bounding boxes grown by ``margin`` px, as protect builds it."""
    from monai_medlocker.lesions import lesion_bboxes, wsm_from_boxes

    boxes, _ = lesion_bboxes(masks, margin=margin)
    return wsm_from_boxes(boxes, shape)


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
