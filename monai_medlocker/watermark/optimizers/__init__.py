"""Placement optimizers, by name: ``random`` (control), ``bhe`` (baseline) and ``medlocker`` (ours)."""

from __future__ import annotations

from monai_medlocker.watermark.optimizers.base import WatermarkOptimizer
from monai_medlocker.watermark.optimizers.medlocker import MedLockerOptimizer
from monai_medlocker.watermark.optimizers.random import RandomPlacement

__all__ = ["OPTIMIZERS", "WatermarkOptimizer", "MedLockerOptimizer", "RandomPlacement", "get_optimizer"]


def _registry() -> dict[str, type[WatermarkOptimizer]]:
    from monai_medlocker.watermark.optimizers.bhe import BasinHoppingEvolution

    return {"random": RandomPlacement, "bhe": BasinHoppingEvolution, "medlocker": MedLockerOptimizer}


OPTIMIZERS = ("random", "bhe", "medlocker")


def get_optimizer(name: str | WatermarkOptimizer = "medlocker", **kwargs) -> WatermarkOptimizer:
    """Build a named optimizer with its settings (``max_queries``, ``confidence``, ...)."""
    if isinstance(name, WatermarkOptimizer):
        return name
    registry = _registry()
    if name not in registry:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}.")
    return registry[name](**kwargs)
