"""A trainable lesion segmenter: a 2-D MONAI UNet with 4 sigmoid outputs (MA, HE, EX, SE).

Trained by ``bundle/configs/train_lesions.json`` on any datalist with ``mask_*`` keys (the
synthetic lab, or IDRiD-style data converted by :mod:`monai_medlocker.data.layouts`); the
checkpoint is a plain ``state_dict``. :class:`NetworkLesionDetector` runs it on an image of any
size: the image is resized to ``input_size`` x ``input_size``, the 4 probability maps are
resized back to the native grid. Training labels are downsampled with an "any pixel" rule (max
pooling), so a 1-px microaneurysm stays in the label at the network's resolution.
"""

from __future__ import annotations

from pathlib import Path
from typing import Hashable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.networks.nets import UNet
from monai.transforms import MapTransform

from monai_medlocker.io.image import load_rgb
from monai_medlocker.lesions.builtin import LESION_CHANNELS
from monai_medlocker.lesions.masks import load_lesion_masks

__all__ = ["network_confidence", "get_lesion_network", "LoadLesionPaird", "NetworkLesionDetector"]


def get_lesion_network(channels: tuple[int, ...] = (16, 32, 64, 128), num_res_units: int = 1) -> torch.nn.Module:
    """The lesion segmenter: MONAI ``UNet``, 2-D, RGB in, one logit per lesion type out, no pretrained weights."""
    return UNet(spatial_dims=2, in_channels=3, out_channels=len(LESION_CHANNELS), channels=tuple(channels),
                strides=(2,) * (len(channels) - 1), num_res_units=num_res_units)


def _resize_image(chw: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(chw[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]


def _resize_label(chw: torch.Tensor, size: int) -> torch.Tensor:
    """Downsample masks with an any-pixel rule, so that sub-pixel lesions are kept."""
    h, w = chw.shape[-2:]
    if h >= size and w >= size:
        return F.adaptive_max_pool2d(chw[None].float(), (size, size))[0]
    return F.interpolate(chw[None].float(), size=(size, size), mode="nearest")[0]


def network_confidence(probs: np.ndarray, threshold: float = 0.5) -> tuple[float, list[str]]:
    """How much to trust a segmenter's maps for the WSM; the warnings reach the protect report.

    A missed lesion is the harm to avoid, so a lot of sub-threshold response (lesions the WSM
    may leave uncovered) lowers the confidence, as does an implausibly large lesion area (likely
    not a fundus photograph, or one unlike the training data).
    """
    warnings, confidence = [], 1.0
    above = (probs >= threshold).any(0)
    area = float(above.mean())
    if area > 0.25:
        warnings.append(f"the segmenter marks {100 * area:.0f}% of the image as lesion; is this a fundus photograph "
                        "like its training data?")
        confidence *= 0.5
    unsure = float((((probs > 0.1) & (probs < threshold)).any(0) & ~above).mean())
    if unsure > max(area, 0.002):
        warnings.append(f"{100 * unsure:.1f}% of the image has a lesion probability between 0.1 and {threshold}: lesions "
                        "may lie outside the WSM (lower lesion_threshold, or use the built-in detector)")
        confidence *= 0.7
    return round(confidence, 3), warnings


class LoadLesionPaird(MapTransform):
    """Load an image and its ``mask_*`` files as a training pair at ``input_size``.

    Reads ``data["image"]`` (path) and ``data["mask_MA"]``... (paths, or ``None``/absent for a
    lesion type the dataset does not annotate: all zeros), and writes ``image`` (3 x S x S float32
    in [0, 1]) and ``label`` (4 x S x S float32 in {0, 1}). A mask of another size than its image
    is an error (:class:`~monai_medlocker.lesions.masks.MaskFormatError`).
    """

    def __init__(self, keys: KeysCollection = "image", input_size: int = 256, label_key: str = "label") -> None:
        super().__init__(keys)
        self.input_size = int(input_size)
        self.label_key = label_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            rgb = load_rgb(str(d[key]))
            label = np.zeros((len(LESION_CHANNELS),) + rgb.shape[:2], dtype=bool)
            for c, t in enumerate(LESION_CHANNELS):
                path = d.get(f"mask_{t}")
                if path:
                    label[c] = load_lesion_masks([path], rgb.shape[:2], channels=[t])[0]
            img = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float() / 255.0
            d[key] = _resize_image(img, self.input_size)
            d[self.label_key] = _resize_label(torch.from_numpy(label), self.input_size)
        return d


class NetworkLesionDetector:
    """Run a trained lesion segmenter on a fundus image of any size.

    Args:
        checkpoint: plain ``state_dict`` of :func:`get_lesion_network` (as ``train_lesions.json`` writes).
        input_size: the side the network was trained at.
        device: torch device.

    Call with an H x W x 3 uint8 image; returns (4 x H x W float32 probabilities, report).
    """

    def __init__(self, checkpoint: str | Path, input_size: int = 256, device: str | torch.device = "cpu",
                 channels: tuple[int, ...] = (16, 32, 64, 128)) -> None:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"lesion segmenter checkpoint not found: {path} (train one with "
                                    "bundle/configs/train_lesions.json, or use lesion_segmenter='builtin')")
        self.network = get_lesion_network(channels)
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        try:
            self.network.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"{path}: not a lesion segmenter checkpoint for a UNet with channels {channels} "
                             f"({str(err).splitlines()[0]})") from err
        self.device = torch.device(device)
        self.network.to(self.device).eval()
        self.input_size = int(input_size)
        self.checkpoint = str(path)
        self.last_report: dict | None = None

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, dict]:
        rgb = np.asarray(image)
        if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an H x W x 3 uint8 RGB image, got shape {rgb.shape} dtype {rgb.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float().div_(255.0)
        x = _resize_image(x, self.input_size)[None].to(self.device)
        probs = torch.sigmoid(self.network(x))
        # Max-pool-style upsampling would shift boxes; bilinear keeps the 0.5 boundary where the network put it.
        probs = F.interpolate(probs, size=rgb.shape[:2], mode="bilinear", align_corners=False)[0]
        out = probs.clamp_(0, 1).cpu().numpy().astype(np.float32)
        confidence, warnings = network_confidence(out)
        self.last_report = {"segmenter": "network", "checkpoint": self.checkpoint, "input_size": self.input_size,
                            "components": {t: int((out[c] >= 0.5).any()) for c, t in enumerate(LESION_CHANNELS)},
                            "confidence": confidence, "warnings": warnings}
        return out, self.last_report
