"""Placement optimizers, by name: ``random`` (control), ``bhe`` (baseline) and ``medlocker`` (ours)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from monai_medlocker._lazy import lazy_exports

if TYPE_CHECKING:
    from monai_medlocker.watermark.optimizers.base import WatermarkOptimizer

__all__ = ["OPTIMIZERS", "PROTECT_DEFAULTS", "WatermarkOptimizer", "MedLockerOptimizer", "RandomPlacement", "get_optimizer",
           "protect_optimizer"]

# The classes need torch: imported on first use, so that the CLI can offer the names without it.
__getattr__, __dir__ = lazy_exports(__name__, {
    "base": ("WatermarkOptimizer",), "medlocker": ("MedLockerOptimizer",), "random": ("RandomPlacement",),
})

OPTIMIZERS = ("random", "bhe", "medlocker")

# Protect's settings where they differ from the class defaults (which the paper/bhe goldens pin): medlocker checks
# its ranked candidates 3 at a time, later marks reuse the first mark's gradients, and a mark whose margin falls too
# slowly to reach the target within twice the budget left stops early (issue 19: benchmarks/results/cost). Marks go
# only where a keyed, image-blind draw of 16 sites allows, so that where they sit does not tell the grade (issue 17
# item 5: benchmarks/results/placement; it costs about 0.07 held-out accuracy, a price the threat model requires).
PROTECT_DEFAULTS: dict[str, dict] = {"medlocker": {"verify_chunk": 3, "reuse_linearization": True, "give_up": 2.0,
                                                   "keyed_sites": 16}}


def _registry() -> dict[str, type[WatermarkOptimizer]]:
    from monai_medlocker.watermark.optimizers.bhe import BasinHoppingEvolution
    from monai_medlocker.watermark.optimizers.medlocker import MedLockerOptimizer
    from monai_medlocker.watermark.optimizers.random import RandomPlacement

    return {"random": RandomPlacement, "bhe": BasinHoppingEvolution, "medlocker": MedLockerOptimizer}


def get_optimizer(name: str | WatermarkOptimizer = "medlocker", **kwargs) -> WatermarkOptimizer:
    """Build a named optimizer (a ``WatermarkOptimizer`` is returned as is) with its settings (``max_queries``, ...)."""
    from monai_medlocker.watermark.optimizers.base import WatermarkOptimizer  # noqa: F811

    if isinstance(name, WatermarkOptimizer):
        return name
    registry = _registry()
    if name not in registry:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}.")
    return registry[name](**kwargs)


def protect_optimizer(name: str | WatermarkOptimizer = "medlocker", **kwargs) -> WatermarkOptimizer:
    """:func:`get_optimizer` with protect's defaults (:data:`PROTECT_DEFAULTS`) under the given settings."""
    if isinstance(name, str):
        kwargs = {**PROTECT_DEFAULTS.get(name, {}), **kwargs}
    return get_optimizer(name, **kwargs)
