"""Diabetic-retinopathy grading metrics, as pure numpy functions.

Grades follow the ICDR scale 0-4; "referable" DR is grade >= 2 (moderate or worse). Every
function takes integer labels and, where scores are needed, an N x C array of class
probabilities (softmax outputs). Quantities that are undefined on the given data (the AUC of a
class that never occurs, the sensitivity without positive cases) are ``nan`` rather than a
made-up number; :func:`classification_report` turns them into ``None`` so the report is valid JSON.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_roc_auc

__all__ = [
    "REFERABLE_GRADE",
    "confusion_matrix",
    "quadratic_weighted_kappa",
    "per_class_accuracy",
    "referable_metrics",
    "multiclass_auc",
    "classification_report",
    "protection_metrics",
]

REFERABLE_GRADE = 2


def _labels(y: Any, num_classes: int, name: str = "y_true") -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class indices, got shape {arr.shape}.")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}.")
    arr = arr.astype(np.int64)
    bad = arr[(arr < 0) | (arr >= num_classes)]
    if bad.size:
        raise ValueError(f"{name} holds {bad[0]}, outside the classes 0..{num_classes - 1}.")
    return arr


def _probs(probs: Any, num_classes: int, n: int) -> np.ndarray:
    arr = np.asarray(probs, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != num_classes:
        raise ValueError(f"probs must be N x {num_classes} class probabilities, got shape {arr.shape}.")
    if arr.shape[0] != n:
        raise ValueError(f"probs has {arr.shape[0]} rows but there are {n} labels.")
    if not np.all(np.isfinite(arr)):
        raise ValueError("probs contains NaN or infinite values.")
    return arr


def _safe_div(num: float, den: float) -> float:
    return float(num) / float(den) if den else float("nan")


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """Counts with rows = true class and columns = predicted class (``num_classes`` x ``num_classes``)."""
    t = _labels(y_true, num_classes, "y_true")
    p = _labels(y_pred, num_classes, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.size} vs {p.size}.")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def quadratic_weighted_kappa(y_true: Any, y_pred: Any, num_classes: int) -> float:
    """Cohen's kappa with quadratic weights ``(i - j)^2 / (K - 1)^2``, the standard DR grading score.

    1 is perfect agreement, 0 is chance level, negative is worse than chance. The value is ``nan``
    when chance disagreement is zero (all labels and predictions are one and the same class), where
    the chance-corrected agreement is undefined (as in scikit-learn).

    Args:
        y_true: N true class indices.
        y_pred: N predicted class indices.
        num_classes: K, the number of ordered classes.
    """
    observed = confusion_matrix(y_true, y_pred, num_classes).astype(np.float64)
    n = observed.sum()
    if n == 0:
        return float("nan")
    idx = np.arange(num_classes)
    weights = (idx[:, None] - idx[None, :]) ** 2 / float((num_classes - 1) ** 2)
    # Expected counts if truth and prediction were independent with the same marginals.
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / n
    chance = float((weights * expected).sum())
    if chance == 0.0:
        return float("nan")
    return 1.0 - float((weights * observed).sum()) / chance


def per_class_accuracy(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """Fraction of each true class predicted correctly (per-class recall); ``nan`` for absent classes."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    support = cm.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def _binary_auc(y: np.ndarray, score: np.ndarray) -> float:
    """AUC through MONAI's ``compute_roc_auc``; ``nan`` when only one class is present."""
    if y.size == 0 or y.min() == y.max():
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(compute_roc_auc(torch.as_tensor(score), torch.as_tensor(y)))


def referable_metrics(y_true: Any, probs: Any, num_classes: int = 5, referable_grade: int = REFERABLE_GRADE) -> dict:
    """Binary referable-DR metrics (grade >= ``referable_grade``).

    The referable decision is the argmax grade being >= ``referable_grade``, so it agrees with the
    grading; the AUC ranks cases by the summed probability of the referable grades.

    Args:
        y_true: N true grades.
        probs: N x C class probabilities.
        num_classes: C.
        referable_grade: the lowest referable grade (2 = moderate NPDR on the ICDR scale).

    Returns:
        dict with ``accuracy``, ``sensitivity``, ``specificity``, ``auc`` and the counts
        ``tp``, ``tn``, ``fp``, ``fn``, ``num_referable``, ``num_non_referable``.
    """
    if not 0 < referable_grade < num_classes:
        raise ValueError(f"referable_grade must be in 1..{num_classes - 1}, got {referable_grade}.")
    t = _labels(y_true, num_classes)
    p = _probs(probs, num_classes, t.size)
    truth = t >= referable_grade
    pred = p.argmax(axis=1) >= referable_grade
    score = p[:, referable_grade:].sum(axis=1)
    tp = int(np.sum(truth & pred))
    tn = int(np.sum(~truth & ~pred))
    fp = int(np.sum(~truth & pred))
    fn = int(np.sum(truth & ~pred))
    return {
        "referable_grade": referable_grade,
        "accuracy": _safe_div(tp + tn, t.size),
        "sensitivity": _safe_div(tp, tp + fn),
        "specificity": _safe_div(tn, tn + fp),
        "auc": _binary_auc(truth.astype(np.int64), score),
        "tp": tp,
        "tn": tn,
        "fp": fp,
        "fn": fn,
        "num_referable": int(truth.sum()),
        "num_non_referable": int((~truth).sum()),
    }


def multiclass_auc(y_true: Any, probs: Any, num_classes: int, average: str = "macro") -> float | np.ndarray:
    """One-vs-rest ROC AUC computed with ``monai.metrics.compute_roc_auc``.

    Args:
        y_true: N true class indices.
        probs: N x C class probabilities.
        num_classes: C.
        average: ``"macro"`` for the mean over the classes whose AUC is defined (the class occurs
            and does not make up every sample), or ``"none"`` for the per-class array
            (``nan`` where undefined).
    """
    t = _labels(y_true, num_classes)
    p = _probs(probs, num_classes, t.size)
    onehot = np.eye(num_classes, dtype=np.int64)[t]
    per_class = np.array([_binary_auc(onehot[:, c], p[:, c]) for c in range(num_classes)], dtype=np.float64)
    if average == "none":
        return per_class
    if average != "macro":
        raise ValueError(f"average must be 'macro' or 'none', got {average!r}.")
    defined = per_class[~np.isnan(per_class)]
    return float(defined.mean()) if defined.size else float("nan")


def _jsonable(value: Any) -> Any:
    """Numpy scalars/arrays to Python; nan/inf to None (strict JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def classification_report(
    y_true: Any, probs: Any, num_classes: int = 5, referable_grade: int = REFERABLE_GRADE
) -> dict:
    """Every grading metric in one JSON-ready dict.

    Args:
        y_true: N true grades.
        probs: N x C class probabilities (softmax outputs, not logits).
        num_classes: C.
        referable_grade: lowest referable grade; the ``referable`` block is ``None`` when
            ``num_classes <= referable_grade``.

    Returns:
        ``num_samples``, ``num_classes``, ``accuracy``, ``quadratic_weighted_kappa``,
        ``auc_macro``, ``per_grade`` (``{grade: {"count", "predicted", "accuracy", "auc"}}``),
        ``referable`` and ``confusion_matrix`` (rows = true grade, columns = predicted grade).
        Undefined values are ``None``.
    """
    t = _labels(y_true, num_classes)
    p = _probs(probs, num_classes, t.size)
    if t.size == 0:
        raise ValueError("classification_report needs at least one sample.")
    pred = p.argmax(axis=1)
    cm = confusion_matrix(t, pred, num_classes)
    recall = per_class_accuracy(t, pred, num_classes)
    auc_per_class = multiclass_auc(t, p, num_classes, average="none")
    defined = auc_per_class[~np.isnan(auc_per_class)]
    report = {
        "num_samples": int(t.size),
        "num_classes": int(num_classes),
        "accuracy": float(np.mean(pred == t)),
        "quadratic_weighted_kappa": quadratic_weighted_kappa(t, pred, num_classes),
        "auc_macro": float(defined.mean()) if defined.size else float("nan"),
        "per_grade": {
            str(c): {
                "count": int(cm[c].sum()),
                "predicted": int(cm[:, c].sum()),
                "accuracy": recall[c],
                "auc": auc_per_class[c],
            }
            for c in range(num_classes)
        },
        "referable": (
            referable_metrics(t, p, num_classes, referable_grade) if num_classes > referable_grade else None
        ),
        "confusion_matrix": cm,
    }
    return _jsonable(report)


def _rate(hits: np.ndarray) -> float | None:
    return round(float(hits.mean()), 4) if hits.size else None


def protection_metrics(grades: Any, clean_preds: Any, preds: Any, referable_grade: int = REFERABLE_GRADE) -> dict:
    """How much a protection (or an attack on it) costs one model, per image set.

    Args:
        grades: true grades of the images.
        clean_preds: the model's predictions on the unprotected images (same preprocessing).
        preds: its predictions on the protected (or attacked) images.

    Returns:
        ``clean_accuracy``, ``watermarked_accuracy``, ``asr`` (attack success rate: the share of images the
        model got right before that it now gets wrong), the referable decision's clean and watermarked
        accuracy and ``referable_flip_rate`` (over images whose referable decision was right before), and
        the same per true grade. Rates over an empty set are ``None``.
    """
    g, c, p = (np.asarray(a, dtype=np.int64) for a in (grades, clean_preds, preds))
    if not g.shape == c.shape == p.shape or g.ndim != 1:
        raise ValueError(f"grades, clean_preds and preds must be 1-D of one length, got {g.shape}, {c.shape}, {p.shape}.")
    ok = c == g
    ref_true, ref_clean, ref_wm = g >= referable_grade, c >= referable_grade, p >= referable_grade
    ref_ok = ref_clean == ref_true
    out = {
        "images": int(g.size),
        "clean_accuracy": _rate(ok),
        "watermarked_accuracy": _rate(p == g),
        "asr": _rate(p[ok] != g[ok]),
        "referable_clean_accuracy": _rate(ref_ok),
        "referable_watermarked_accuracy": _rate(ref_wm == ref_true),
        "referable_flip_rate": _rate(ref_wm[ref_ok] != ref_true[ref_ok]),
    }
    per_grade = {}
    for grade in sorted(set(g.tolist())):
        sel = g == grade
        per_grade[str(grade)] = {
            "images": int(sel.sum()),
            "clean_accuracy": _rate(ok[sel]),
            "watermarked_accuracy": _rate(p[sel] == grade),
            "asr": _rate(p[sel & ok] != grade),
        }
    out["per_grade"] = per_grade
    return out
