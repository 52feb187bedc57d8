"""The learned remover's network (a small MONAI UNet predicting the logo's residual) and its use on known boxes.

The thief trains and applies it blind (``monai_medlocker.threats.removal``: ``train_remover``,
``LearnedRemover``, which locates the logo first). The owner uses the same kind of network, trained on
another seed, on the boxes of its own marks: the shield's objective (``watermark.shield``) optimises
against it. This module holds what both share, below the threats layer that the watermark layer may not import.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

from monai_medlocker.watermark.blend import Placement
from monai_medlocker.watermark.inpaint import as_placements, check_rgb_image, opencv

__all__ = ["RemoverNetwork"]


def _unet(channels: Sequence[int], num_res_units: int = 1):
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=3, out_channels=3, channels=tuple(channels),
                strides=(2,) * (len(channels) - 1), num_res_units=num_res_units)


def _to_tensor(images: list[np.ndarray]):
    import torch

    return torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0)


class RemoverNetwork:
    """A trained logo remover's network, its checkpoint, and its use on given boxes (:meth:`remove_at`).

    Args:
        network: the trained UNet (predicting the residual on [-1, 1] images).
        config: the training settings (``channels``, ``size``, the public search space).
        region: ``"located"`` (only the marks' boxes change) or ``"full"`` (the whole image; thief's use).
        report: the training report (kept in the checkpoint).
    """

    def __init__(self, network, config: dict, region: str = "located", report: dict | None = None) -> None:
        if region not in ("located", "full"):
            raise ValueError(f"{type(self).__name__}: region must be 'located' or 'full', got {region!r}.")
        self.network = network.eval()
        self.config = dict(config)
        self.region = region
        self.report = dict(report or {})

    @classmethod
    def from_checkpoint(cls, path, region: str = "located") -> "RemoverNetwork":
        """Load a checkpoint written by :func:`train_remover`.

        Raises:
            ValueError: a missing or unreadable file, or one that is not a remover checkpoint.
        """
        import torch

        try:
            ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
            config = ckpt["config"]
            net = _unet(config["channels"], config.get("num_res_units", 1))
            net.load_state_dict(ckpt["state_dict"])
        except FileNotFoundError:
            raise ValueError(f"{path}: remover checkpoint not found") from None
        except Exception as err:  # torch raises many types for a file that is not this checkpoint
            raise ValueError(f"{path}: not a learned-remover checkpoint ({type(err).__name__}: {err})") from err
        return cls(net, config, region, ckpt.get("report"))

    def save(self, path, report: dict | None = None) -> None:
        """Write the checkpoint atomically (temporary file, then rename)."""
        import io

        import torch

        from monai_medlocker.io.image import atomic_write_bytes

        buf = io.BytesIO()
        torch.save({"format": "medlocker-remover/1", "config": self.config, "report": report or self.report,
                    "state_dict": self.network.state_dict()}, buf)
        atomic_write_bytes(path, buf.getvalue())

    def predict(self, image: np.ndarray) -> np.ndarray:
        """The network's clean estimate of a whole H x W x 3 uint8 image (reflect-padded to its stride)."""
        import torch

        step = 2 ** (len(self.config["channels"]) - 1)
        h, w = image.shape[:2]
        ph, pw = (-h) % step, (-w) % step
        padded = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="reflect") if ph or pw else image
        x = _to_tensor([padded])
        with torch.no_grad():
            y = (x + self.network(x))[0, :, :h, :w]
        return np.clip(np.rint((y.numpy().transpose(1, 2, 0) + 1.0) * 127.5), 0, 255).astype(np.uint8)

    def remove_at(self, protected: np.ndarray, placements: Iterable[Placement | Mapping]) -> np.ndarray:
        """Run the network on the given marks' boxes (not located): only those boxes change.

        The owner's use (the shield's objective, which knows its own marks); a thief has only
        :meth:`__call__`.
        """
        protected = check_rgb_image(protected, f"{type(self).__name__}.remove_at")
        work, f = self._at_training_scale(protected)
        return self._boxes(protected, work, f, as_placements(placements))

    def _at_training_scale(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """(``image`` resized so that its shorter side is the training size, the factor); the image itself at 1."""
        cv2 = opencv()
        height, width = image.shape[:2]
        f = self.config["size"] / min(height, width)
        if abs(f - 1) < 1e-6:
            return image, f
        size = (round(width * f), round(height * f))
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_CUBIC), f

    def _boxes(self, protected: np.ndarray, work: np.ndarray, f: float, marks: list[Placement]) -> np.ndarray:
        """``protected`` with each mark's box replaced by the network's estimate (run at the training scale)."""
        cv2 = opencv()
        height, width = protected.shape[:2]
        out = protected.copy()
        for p in marks:
            m = 16  # context around the box: the network saw the mark's surround in training
            x0, y0, x1, y1 = p.box_xyxy
            wx0, wy0 = max(0, int((x0 - m) * f)), max(0, int((y0 - m) * f))
            wx1, wy1 = min(work.shape[1], int(np.ceil((x1 + m) * f))), min(work.shape[0], int(np.ceil((y1 + m) * f)))
            pred = self.predict(work[wy0:wy1, wx0:wx1])
            if work is not protected:
                nx0, ny0 = int(round(wx0 / f)), int(round(wy0 / f))
                nx1, ny1 = min(width, int(round(wx1 / f))), min(height, int(round(wy1 / f)))
                pred = cv2.resize(pred, (nx1 - nx0, ny1 - ny0), interpolation=cv2.INTER_CUBIC)
                wx0, wy0 = nx0, ny0
            out[y0:y1, x0:x1] = pred[y0 - wy0:y1 - wy0, x0 - wx0:x1 - wx0]
        return out
