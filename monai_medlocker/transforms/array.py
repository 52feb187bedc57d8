"""Array transforms: ``LesionBBoxMask`` (lesion masks -> WSM) and ``AdversarialWatermark``.

Both take channel-first images like MONAI (C x H x W), accept numpy arrays, torch tensors and
MetaTensors, and keep MetaTensor meta. ``AdversarialWatermark`` writes its parameter record to
``meta["medlocker"]`` (and keeps the last one on ``last_record`` for plain arrays).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import Transform
from monai.utils import TransformBackends
from monai.utils.type_conversion import convert_to_dst_type, convert_to_numpy

from monai_medlocker.lesions import lesion_bboxes, wsm_from_boxes
from monai_medlocker.networks import Surrogate
from monai_medlocker.watermark.engine import watermark_image
from monai_medlocker.watermark.failure import apply_failure_policy, check_failure_policy
from monai_medlocker.watermark.feasibility import NoFeasiblePlacementError
from monai_medlocker.watermark.logo import load_logo, logo_sha256
from monai_medlocker.watermark.optimizers import WatermarkOptimizer, protect_optimizer
from monai_medlocker.watermark.problem import SearchSpace
from monai_medlocker.watermark.shield import ShieldSettings, level_settings

__all__ = ["LesionBBoxMask", "AdversarialWatermark"]


def _with_meta(out: NdarrayOrTensor, src: NdarrayOrTensor, extra: dict) -> NdarrayOrTensor:
    """Return ``out`` in the type of ``src``; a MetaTensor keeps the source meta plus ``extra``."""
    if isinstance(src, MetaTensor):
        meta = dict(src.meta)
        meta.update(extra)
        return MetaTensor(torch.as_tensor(out), meta=meta, applied_operations=list(src.applied_operations))
    return convert_to_dst_type(out, src)[0]


class LesionBBoxMask(Transform):
    """Turn lesion masks or probability maps into the WSM, the forbidden region of the watermark.

    The WSM is the union of the bounding boxes of the lesion components (8-connected, per
    channel), each grown by a margin. Boxes go into the meta as ``wsm_boxes`` (MONAI xyxy,
    end-exclusive) with ``wsm_box_channels``. ``zone_boxes`` (the anatomy's no-go zones, see
    :mod:`monai_medlocker.lesions.anatomy`) join the WSM as they are, with channel -1.

    Args:
        threshold: probability threshold for float maps (bool/integer masks use non-zero).
        min_size: drop components smaller than this many pixels.
        margin: margin in pixels added on every side of each box.
        margin_fraction: extra margin as a fraction of the image's shorter side.

    Returns:
        a 1 x H x W boolean mask (True = forbidden), same container type as the input.
    """

    backend = [TransformBackends.NUMPY, TransformBackends.TORCH]

    def __init__(self, threshold: float = 0.5, min_size: int = 1, margin: int = 0, margin_fraction: float = 0.0) -> None:
        lesion_bboxes(np.zeros((1, 1, 1), bool), threshold, min_size, margin, margin_fraction)  # validates
        self.threshold = threshold
        self.min_size = min_size
        self.margin = margin
        self.margin_fraction = margin_fraction

    def boxes(self, mask: NdarrayOrTensor, zone_boxes=None) -> tuple[np.ndarray, np.ndarray]:
        boxes, channels = lesion_bboxes(convert_to_numpy(mask), self.threshold, self.min_size, self.margin, self.margin_fraction)
        zones = np.asarray(zone_boxes if zone_boxes is not None else [], dtype=np.int64).reshape(-1, 4)
        return np.concatenate([boxes, zones]), np.concatenate([channels, np.full(len(zones), -1, np.int64)])

    def __call__(self, mask: NdarrayOrTensor, zone_boxes=None) -> NdarrayOrTensor:
        boxes, channels = self.boxes(mask, zone_boxes)
        wsm = wsm_from_boxes(boxes, tuple(mask.shape[1:]))[None]
        extra = {"wsm_boxes": boxes.tolist(), "wsm_box_channels": channels.tolist()}
        if isinstance(mask, torch.Tensor) and not isinstance(mask, MetaTensor):
            return torch.as_tensor(wsm, device=mask.device)
        return _with_meta(wsm, mask, extra)


class AdversarialWatermark(Transform):
    """Stamp the owner's logo where it makes the surrogate classifier(s) mispredict, off the WSM.

    Args:
        surrogates: a :class:`~monai_medlocker.networks.Surrogate` or a list of them (an ensemble:
            success then means every one mispredicts).
        logo: RGBA logo array or path; ``None`` uses the shipped owner logo.
        optimizer: ``"medlocker"`` (default), ``"bhe"``, ``"random"`` or an optimizer instance.
        optimizer_kwargs: settings for a named optimizer (e.g. ``confidence``), over protect's defaults
            (:data:`~monai_medlocker.watermark.optimizers.PROTECT_DEFAULTS`).
        search_space: a :class:`SearchSpace`, a dict of its fields, ``"paper"`` (position and
            alpha only, as in MedLocker) or ``"full"``/``None`` (default space).
        max_queries: query budget per mark; ``None`` keeps the optimizer's default.
        seed: seed of the search; ``__call__`` may override it per image.
        on_infeasible: ``"raise"`` (``NoFeasiblePlacementError``) or ``"skip"`` (return the image
            unchanged with ``protected: False`` and the reason in the record).
        batch_size: candidates per forward pass.
        shield: the optional imperceptible shield: ``None`` (off), ``True`` (default settings), a dict
            of :class:`~monai_medlocker.watermark.shield.ShieldSettings` fields or the settings; it
            perturbs the field of view outside the WSM and the logo (uint8 images); it overrides ``level``.
        level: the protection level (``shield.LEVELS``: ``"mark"``, ``"shield"``, ``"strong"``; ``None``: the
            default, ``"mark"``); written in each image's record.
        on_failure: what an image the surrogates were not fooled on gets: ``"cap"`` (default: the best
            attempt, its marks' opacity capped at ``failure_opacity``), ``"mark"`` (a plain visible mark at
            ``failure_opacity``), ``"withhold"`` (not protected, not published; reported) or ``"best"`` (the best
            attempt as it is); see :mod:`monai_medlocker.watermark.failure`.
        failure_opacity: the cap or the plain mark's opacity, in (0, 1] (default 0.5).
    """

    backend = [TransformBackends.NUMPY, TransformBackends.TORCH]

    def __init__(
        self,
        surrogates: Surrogate | Sequence[Surrogate],
        logo: np.ndarray | str | Path | None = None,
        optimizer: str | WatermarkOptimizer = "medlocker",
        optimizer_kwargs: dict | None = None,
        search_space: SearchSpace | dict | str | None = None,
        max_queries: int | None = None,
        seed: int = 0,
        on_infeasible: str = "raise",
        batch_size: int = 32,
        shield: ShieldSettings | dict | bool | None = None,
        level: str | None = None,
        on_failure: str = "cap",
        failure_opacity: float = 0.5,
    ) -> None:
        self.surrogates = [surrogates] if isinstance(surrogates, Surrogate) else list(surrogates)
        if not self.surrogates or not all(isinstance(s, Surrogate) for s in self.surrogates):
            raise TypeError("surrogates must be a Surrogate or a non-empty list of Surrogate objects.")
        self.logo = logo if isinstance(logo, np.ndarray) else load_logo(logo)
        if self.logo.ndim != 3 or self.logo.shape[2] != 4 or self.logo.dtype != np.uint8:
            raise ValueError(f"logo must be an h x w x 4 uint8 RGBA array, got {self.logo.shape} {self.logo.dtype}.")
        kwargs = dict(optimizer_kwargs or {})
        if max_queries is not None:
            kwargs["max_queries"] = max_queries
        self.optimizer = protect_optimizer(optimizer, **kwargs)
        least = self.optimizer.min_queries(len(self.surrogates))
        if self.optimizer.max_queries is not None and self.optimizer.max_queries < least:
            raise ValueError(f"max_queries {self.optimizer.max_queries} is below {least}, the least that works with "
                             f"{len(self.surrogates)} surrogate model(s): checking the clean image costs one query per "
                             "model, so every image would fail")
        self.search_space = SearchSpace.from_config(search_space)
        if on_infeasible not in ("raise", "skip"):
            raise ValueError(f"on_infeasible must be 'raise' or 'skip', got {on_infeasible!r}.")
        self.on_infeasible = on_infeasible
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.level, self.shield = level_settings(level, shield)
        check_failure_policy(on_failure, failure_opacity)
        self.on_failure, self.failure_opacity = on_failure, float(failure_opacity)
        self.last_record: dict | None = None

    def __call__(
        self, img: NdarrayOrTensor, wsm: NdarrayOrTensor, label: int | None = None, seed: int | None = None,
        render_key: bytes | None = None,
    ) -> NdarrayOrTensor:
        """Watermark one image; ``render_key`` (32 bytes, per image, secret) renders the mark keyed."""
        arr = convert_to_numpy(img)
        if arr.ndim != 3 or arr.shape[0] != 3:
            raise ValueError(f"AdversarialWatermark expects a 3 x H x W RGB image, got shape {arr.shape}.")
        forbidden = convert_to_numpy(wsm).astype(bool)
        if forbidden.ndim == 3:
            forbidden = forbidden.any(0)
        if forbidden.shape != arr.shape[1:]:
            raise ValueError(f"WSM of shape {forbidden.shape} does not match the image's {arr.shape[1:]}.")
        hwc = np.ascontiguousarray(arr.transpose(1, 2, 0))
        if label is not None:
            label = int(convert_to_numpy(label).reshape(-1)[0]) if not isinstance(label, int) else label
        try:
            out, record = watermark_image(
                hwc, forbidden, self.surrogates, self.logo, self.optimizer, self.search_space,
                label=label, seed=self.seed if seed is None else int(seed), batch_size=self.batch_size,
                shield=self.shield,
                render_key=render_key,
            )
            out, record = apply_failure_policy(hwc, out, record, forbidden, self.logo, self.surrogates, self.on_failure,
                                               self.failure_opacity, render_key)
        except NoFeasiblePlacementError as err:
            if self.on_infeasible == "raise":
                raise
            out, record = hwc, {
                "protected": False, "success": False, "reason": str(err), "logo_sha256": logo_sha256(self.logo),
                "optimizer": self.optimizer.name, "image_size": list(hwc.shape[:2]),
            }
        record["level"] = self.level
        self.last_record = record
        return _with_meta(np.ascontiguousarray(out.transpose(2, 0, 1)), img, {"medlocker": record})
