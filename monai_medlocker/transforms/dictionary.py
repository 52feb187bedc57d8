"""Dictionary wrappers of the MedLocker transforms, with MONAI's ``D``/``Dict`` aliases."""

from __future__ import annotations

import hashlib
from typing import Hashable, Mapping

from monai.config import KeysCollection
from monai.transforms import MapTransform

from monai_medlocker.transforms.array import AdversarialWatermark, LesionBBoxMask

__all__ = [
    "LesionBBoxMaskd",
    "LesionBBoxMaskD",
    "LesionBBoxMaskDict",
    "AdversarialWatermarkd",
    "AdversarialWatermarkD",
    "AdversarialWatermarkDict",
]


class LesionBBoxMaskd(MapTransform):
    """Dictionary wrapper of :class:`LesionBBoxMask`: reads each key's lesion mask, writes the WSM.

    Args:
        keys: keys of the C x H x W lesion masks.
        wsm_key: where to write the WSM; ``None`` replaces the mask in place.
        boxes_key: where to write the WSM's boxes (xyxy, end-exclusive) as a list; ``None``: nowhere.
        zones_key: a key holding the anatomy's no-go boxes (:class:`~monai_medlocker.transforms.protect_steps.AnatomyZonesd`),
            joined to the WSM; missing or ``None``: lesion boxes only.
        other arguments: as :class:`LesionBBoxMask`.
    """

    backend = LesionBBoxMask.backend

    def __init__(
        self,
        keys: KeysCollection,
        wsm_key: str | None = "wsm",
        threshold: float = 0.5,
        min_size: int = 1,
        margin: int = 0,
        margin_fraction: float = 0.0,
        boxes_key: str | None = None,
        allow_missing_keys: bool = False,
        zones_key: str | None = None,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.wsm_key = wsm_key
        self.boxes_key = boxes_key
        self.zones_key = zones_key
        self.transform = LesionBBoxMask(threshold, min_size, margin, margin_fraction)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        zones = d.get(self.zones_key) if self.zones_key else None
        for key in self.key_iterator(d):
            if self.boxes_key:
                d[self.boxes_key] = self.transform.boxes(d[key], zones)[0].tolist()
            d[self.wsm_key or key] = self.transform(d[key], zones)
        return d


class AdversarialWatermarkd(MapTransform):
    """Dictionary wrapper of :class:`AdversarialWatermark`.

    Args:
        keys: image key(s) to watermark.
        wsm_key: key of the WSM.
        label_key: key of the grade to move away from; missing or ``None`` uses the clean prediction.
        record_key: where the parameter record is also stored (for plain-array pipelines).
        seed_from: a key whose value (e.g. the file name) seeds the search per image, so each image
            gets its own parameters; ``None`` uses the transform's seed for every image.
        seed_key: a key holding the image's search seed itself (wins over ``seed_from`` when present).
        render_key_key: a key holding the image's 32-byte secret render key (the keyed, non-invertible
            mark); missing, ``None`` or a missing value renders the plain mark.
        kwargs: as :class:`AdversarialWatermark`.
    """

    backend = AdversarialWatermark.backend

    def __init__(
        self,
        keys: KeysCollection,
        wsm_key: str = "wsm",
        label_key: str | None = "label",
        record_key: str = "medlocker",
        seed_from: str | None = None,
        seed_key: str | None = None,
        render_key_key: str | None = "render_key",
        allow_missing_keys: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.seed_key = seed_key
        self.wsm_key = wsm_key
        self.label_key = label_key
        self.record_key = record_key
        self.seed_from = seed_from
        self.render_key_key = render_key_key
        self.transform = AdversarialWatermark(**kwargs)

    def _seed(self, d: dict) -> int | None:
        if self.seed_key is not None and d.get(self.seed_key) is not None:
            return int(d[self.seed_key])
        if self.seed_from is None or self.seed_from not in d:
            return None
        digest = hashlib.sha256(f"{self.transform.seed}:{d[self.seed_from]}".encode()).digest()
        return int.from_bytes(digest[:4], "little")

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        label = d.get(self.label_key) if self.label_key else None
        render_key = d.get(self.render_key_key) if self.render_key_key else None
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key], d[self.wsm_key], label=label, seed=self._seed(d), render_key=render_key)
            d[self.record_key] = self.transform.last_record
        return d


LesionBBoxMaskD = LesionBBoxMaskDict = LesionBBoxMaskd
AdversarialWatermarkD = AdversarialWatermarkDict = AdversarialWatermarkd
