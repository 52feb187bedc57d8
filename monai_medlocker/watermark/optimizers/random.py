"""``random``: one random feasible placement, the plain visible watermark (our control)."""

from __future__ import annotations

from monai_medlocker.watermark.blend import Placement
from monai_medlocker.watermark.optimizers.base import WatermarkOptimizer
from monai_medlocker.watermark.problem import AttackProblem

__all__ = ["RandomPlacement"]


class RandomPlacement(WatermarkOptimizer):
    """Uniform over feasible (scale, rotation, position, alpha); makes no model query."""

    name = "random"

    def search(self, problem: AttackProblem) -> Placement:
        return problem.random_placement()
