"""Ignite/MONAI handlers that turn an evaluator's predictions into a DR grading report."""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.metrics import EpochMetric
from monai.handlers import from_engine

from monai_medlocker.io.image import atomic_write_bytes
from monai_medlocker.workflows.metrics import classification_report, quadratic_weighted_kappa

__all__ = ["ClassificationReportHandler", "EpochCheckpoint", "QuadraticKappa", "format_report", "write_json_atomic"]


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write strict JSON to a temporary file in the target folder, then ``os.replace`` it into place."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode("utf-8"))


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def format_report(report: dict) -> str:
    """One short human-readable block with the key numbers of a :func:`classification_report`."""
    lines = [
        f"samples={report['num_samples']} accuracy={_fmt(report['accuracy'])} "
        f"kappa={_fmt(report['quadratic_weighted_kappa'])} auc_macro={_fmt(report['auc_macro'])}",
        "per-grade accuracy: "
        + " ".join(f"{g}:{_fmt(v['accuracy'])}(n={v['count']})" for g, v in report["per_grade"].items()),
    ]
    ref = report.get("referable")
    if ref:
        lines.append(
            f"referable (grade>={ref['referable_grade']}): accuracy={_fmt(ref['accuracy'])} "
            f"sensitivity={_fmt(ref['sensitivity'])} specificity={_fmt(ref['specificity'])} auc={_fmt(ref['auc'])}"
        )
    return "\n".join(lines)


def _stack(values: Any, what: str) -> torch.Tensor:
    """A batch tensor, or a list of per-sample tensors/numbers after MONAI's decollate, as one tensor."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu()
    if isinstance(values, np.ndarray):
        return torch.as_tensor(values)
    if isinstance(values, Sequence) and len(values) > 0:
        return torch.stack([torch.as_tensor(v).detach().cpu() for v in values])
    raise TypeError(f"cannot read {what} from engine output of type {type(values).__name__}.")


class ClassificationReportHandler:
    """Collect an evaluator's class scores and labels and write a :func:`classification_report` per run.

    Attach it to a MONAI ``SupervisedEvaluator`` (e.g. in ``val_handlers``). Each iteration it takes
    ``output_transform(engine.state.output)`` -> ``(preds, labels)``; at ``EPOCH_COMPLETED`` it
    computes the report, logs the key numbers, keeps it as ``self.report`` and
    ``engine.state.classification_report``, and writes it atomically to ``output_path``.

    The report records ``"eval_mode"``: whether the network was in eval mode (``not
    network.training``) during every forward pass of the run. This is checked inside the forward
    (a pre-hook), because ``SupervisedEvaluator`` switches to eval mode only around its forward pass
    and restores the previous mode before iteration events fire.

    Args:
        output_path: JSON file to write (parent folders are created); ``None`` writes nothing.
        num_classes: number of classes the network predicts.
        output_transform: maps ``engine.state.output`` to ``(preds, labels)``; preds are N x C.
        softmax: apply softmax to the preds (they are logits). Set ``False`` when the evaluator's
            postprocessing already applies ``Activationsd(softmax=True)``; the preds are then checked
            to be probabilities.
        referable_grade: lowest referable grade for the binary block of the report.
        extra: JSON-serialisable items added to the report (e.g. network name, checkpoint, data section).
        require_eval_mode: raise ``RuntimeError`` at the end of the run if any forward pass ran in
            training mode (batch-norm/dropout would make the report meaningless).
        name: logger name.
    """

    def __init__(
        self,
        output_path: str | os.PathLike | None,
        num_classes: int = 5,
        output_transform: Callable = from_engine(["pred", "label"]),
        softmax: bool = True,
        referable_grade: int = 2,
        extra: dict | None = None,
        require_eval_mode: bool = True,
        name: str | None = "ClassificationReportHandler",
    ) -> None:
        self.output_path = None if output_path is None else Path(output_path)
        self.num_classes = int(num_classes)
        self.output_transform = output_transform
        self.softmax = softmax
        self.referable_grade = referable_grade
        self.extra = dict(extra or {})
        self.require_eval_mode = require_eval_mode
        self.logger = logging.getLogger(name)
        self.report: dict | None = None
        self._probs: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        self._forward_modes: list[bool] = []
        self._hook: Any = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._complete)
        engine.add_event_handler(Events.COMPLETED, self._remove_hook)

    # -- events -------------------------------------------------------------------------------

    def _reset(self, engine: Engine) -> None:
        self._probs, self._labels, self._forward_modes = [], [], []
        self._remove_hook(engine)
        network = getattr(engine, "network", None)
        if isinstance(network, torch.nn.Module):
            # Only during this engine's epoch: a shared network also runs forwards in the trainer.
            self._hook = network.register_forward_pre_hook(self._record_mode)

    def _record_mode(self, module: torch.nn.Module, args: Any) -> None:
        self._forward_modes.append(not module.training)

    def _remove_hook(self, engine: Engine | None = None) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _collect(self, engine: Engine) -> None:
        preds, labels = self.output_transform(engine.state.output)
        preds = _stack(preds, "predictions").float()
        labels = _stack(labels, "labels")
        if preds.ndim != 2 or preds.shape[1] != self.num_classes:
            raise ValueError(
                f"expected predictions shaped N x {self.num_classes}, got {tuple(preds.shape)}; "
                "check num_classes and the evaluator's postprocessing (no argmax before this handler)."
            )
        labels = labels.reshape(-1) if labels.numel() == preds.shape[0] else labels.argmax(dim=-1)
        if self.softmax:
            probs = torch.softmax(preds, dim=1)
        else:
            probs = preds
            if (probs < -1e-6).any() or not torch.allclose(probs.sum(dim=1), torch.ones(len(probs)), atol=1e-3):
                raise ValueError(
                    "ClassificationReportHandler(softmax=False) got predictions that are not probabilities; "
                    "apply Activationsd(softmax=True) in postprocessing or set softmax=True."
                )
        self._probs.append(probs)
        self._labels.append(labels.long())

    def _complete(self, engine: Engine) -> None:
        self._remove_hook(engine)
        if not self._probs:
            warnings.warn("ClassificationReportHandler: the evaluator produced no predictions; no report written.")
            return
        eval_mode = all(self._forward_modes) if self._forward_modes else None
        if eval_mode is False and self.require_eval_mode:
            raise RuntimeError(
                "ClassificationReportHandler: the network ran in training mode during evaluation "
                "(batch-norm/dropout active); evaluate with SupervisedEvaluator or call network.eval()."
            )
        probs = torch.cat(self._probs).numpy()
        labels = torch.cat(self._labels).numpy()
        report = classification_report(labels, probs, self.num_classes, self.referable_grade)
        report["eval_mode"] = eval_mode
        report["epoch"] = int(engine.state.epoch)
        report.update(self.extra)
        self.report = report
        engine.state.classification_report = report
        self.logger.info("classification report:\n%s", format_report(report))
        if self.output_path is not None:
            write_json_atomic(self.output_path, report)
            self.logger.info("classification report written to %s", self.output_path)


class QuadraticKappa(EpochMetric):
    """Ignite metric: quadratic weighted kappa of the argmax predictions over a whole epoch.

    Args:
        num_classes: number of ordered classes.
        output_transform: maps ``engine.state.output`` to ``(preds, labels)``; preds are N x C
            scores (logits or probabilities), labels N class indices.
    """

    def __init__(self, num_classes: int = 5, output_transform: Callable = lambda x: x, device: Any = "cpu") -> None:
        self.num_classes = int(num_classes)
        super().__init__(self._kappa, output_transform=output_transform, check_compute_fn=False, device=device)

    def _kappa(self, y_preds: torch.Tensor, y_targets: torch.Tensor) -> float:
        pred = y_preds.argmax(dim=1) if y_preds.ndim == 2 else y_preds
        target = y_targets.argmax(dim=1) if y_targets.ndim == 2 else y_targets
        return quadratic_weighted_kappa(target.cpu().numpy(), pred.cpu().numpy(), self.num_classes)


class EpochCheckpoint:
    """Save the network's plain state_dict after every training epoch (``epoch_001.pt``, ...).

    The threat study scores every epoch of a thief's training run, to report the peak over training
    as well as the last epoch (early stopping defeats many data poisons).
    """

    def __init__(self, network: torch.nn.Module, save_dir: str | os.PathLike) -> None:
        self.network = network
        self.save_dir = Path(save_dir)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        self.save_dir.mkdir(parents=True, exist_ok=True)
        torch.save(self.network.state_dict(), self.save_dir / f"epoch_{engine.state.epoch:03d}.pt")
