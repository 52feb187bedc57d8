"""Does the visible placement of the marks tell the grade? The thief's reading of the public record.

The optimizer chooses each mark from the image and its true grade, and where a mark lies, how big
it is and how it is turned are visible to anyone (and are in the public record). A thief with a
few labelled protected images of their own could learn the grade from that geometry alone,
without any look at the retina. :func:`placement_leak` measures it: leave-one-out accuracy of two
small classifiers (k nearest neighbours and nearest centroid on the geometry as fractions of the image) against
the majority-class rate. These are small, untuned classifiers, so the figure is a lower bound
on the leak: accuracy well above the majority rate proves a leak; accuracy near it does not prove
there is none.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["placement_features", "placement_leak", "feature_leak"]

_MAX_MARKS = 3


def placement_features(record: dict) -> np.ndarray:
    """Visible geometry of a record's marks: centre, size, rotation (largest mark first, zero-padded), and the count."""
    height, width = (float(v) for v in record["image_size"])
    marks = sorted(record.get("marks", []), key=lambda m: -m["width"] * m["height"])[:_MAX_MARKS]
    feats = []
    for m in marks:
        feats += [(m["x0"] + m["width"] / 2) / width, (m["y0"] + m["height"] / 2) / height,
                  m["width"] / width, m["height"] / height, float(m.get("rotation", 0.0)) / 180.0]
    feats += [0.0] * (5 * _MAX_MARKS - len(feats))
    return np.asarray(feats + [len(marks)], dtype=np.float64)


def _loo_predictions(x: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-out predictions of k-NN (majority of the k nearest) and nearest centroid."""
    n = len(y)
    classes = np.unique(y)
    dist = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    knn, centroid = np.empty(n, dtype=y.dtype), np.empty(n, dtype=y.dtype)
    for i in range(n):
        nearest = y[np.argsort(dist[i])[:k]]
        votes = np.array([(nearest == c).sum() for c in classes])
        knn[i] = classes[int(np.argmax(votes))]
        others = np.arange(n) != i
        centres = [x[others & (y == c)].mean(0) if (others & (y == c)).any() else np.full(x.shape[1], np.inf)
                   for c in classes]
        centroid[i] = classes[int(np.argmin([((x[i] - c) ** 2).sum() for c in centres]))]
    return knn, centroid


def placement_leak(records: Sequence[dict], grades: Sequence[int], k: int = 5) -> dict:
    """How well the marks' visible geometry predicts the grade (and the referable decision, grade >= 2).

    Args:
        records: the protected images' records (public records suffice: only ``image_size`` and the
            marks' boxes and rotations are read); unprotected images are left out.
        grades: their true grades, in the same order.
        k: neighbours of the k-NN classifier.

    Returns:
        ``images``, and per target (``grade``, ``referable``): ``majority_rate``, ``knn_accuracy``,
        ``centroid_accuracy`` (leave-one-out), or ``None`` values with fewer than ``k + 2`` images.
    """
    keep = [i for i, r in enumerate(records) if r.get("protected") and r.get("marks")]
    if len(keep) < k + 2:
        return {"images": len(keep), "grade": None, "referable": None}
    # Features are already fractions of the image (rotation of a half turn): no rescaling, which would
    # blow a feature that barely varies (pure noise) up to the weight of one that carries the grade.
    x = np.stack([placement_features(records[i]) for i in keep])
    return feature_leak(x, [int(grades[i]) for i in keep], k)


def feature_leak(x: np.ndarray, grades: Sequence[int], k: int = 5) -> dict:
    """:func:`placement_leak` on any N x F feature matrix (e.g. one feature of :func:`placement_features` alone)."""
    x = np.asarray(x, dtype=np.float64).reshape(len(grades), -1)
    out: dict = {"images": len(grades)}
    if len(grades) < k + 2:
        return {**out, "grade": None, "referable": None}
    g = np.asarray([int(v) for v in grades])
    for name, y in (("grade", g), ("referable", (g >= 2).astype(int))):
        knn, centroid = _loo_predictions(x, y, k)
        majority = max(np.mean(y == c) for c in np.unique(y))
        out[name] = {"majority_rate": round(float(majority), 4), "knn_accuracy": round(float(np.mean(knn == y)), 4),
                     "centroid_accuracy": round(float(np.mean(centroid == y)), 4)}
    return out
