"""The optimizer interface: search an ``AttackProblem`` and return one placement."""

from __future__ import annotations

from abc import ABC, abstractmethod

from monai_medlocker.watermark.blend import Placement
from monai_medlocker.watermark.problem import AttackProblem

__all__ = ["WatermarkOptimizer"]


class WatermarkOptimizer(ABC):
    """Base class. Subclasses set ``name`` and implement :meth:`search`.

    Args:
        max_queries: query budget (one image through one model = one query); ``None`` = no cap.
        confidence: stop early once the combined margin is below ``-confidence``.
    """

    name = "base"

    def __init__(self, max_queries: int | None = None, confidence: float = 0.0) -> None:
        if max_queries is not None and max_queries < 1:
            raise ValueError(f"max_queries must be >= 1 or None, got {max_queries}.")
        if confidence < 0:
            raise ValueError(f"confidence must be >= 0, got {confidence}.")
        self.max_queries = max_queries
        self.confidence = float(confidence)

    def done(self, problem: AttackProblem) -> bool:
        """The early stop: a placement already beats the confidence margin."""
        return problem.best[1] is not None and problem.best[0] < -self.confidence

    @abstractmethod
    def search(self, problem: AttackProblem) -> Placement:
        """Return the placement to composite."""

    def settings(self) -> dict:
        return {"max_queries": self.max_queries, "confidence": self.confidence}
