"""The watermark engine: logo, blending, feasibility, the attack problem and its optimizers."""

from monai_medlocker._lazy import lazy_exports

# Imported on first use (PEP 562), so that the light commands do not load torch or MONAI.
__getattr__, __dir__ = lazy_exports(__name__, {
    "blend": ("Placement", "composite", "invert_composite"),
    "engine": ("RECORD_FORMAT", "WatermarkInvariantError", "judge", "watermark_image"),
    "feasibility": ("NoFeasiblePlacementError", "box_is_feasible", "feasible_top_left"),
    "keyed": ("KEYED_SCHEME", "RENDER_KEY_BYTES", "footprint_ssim"),
    "logo": ("load_logo", "logo_sha256", "render_logo"),
    "optimizers": ("OPTIMIZERS", "get_optimizer"),
    "problem": ("AttackProblem", "SearchSpace"),
    "shield": ("ShieldSettings", "shield_image"),
})

__all__ = [
    "AttackProblem",
    "KEYED_SCHEME",
    "NoFeasiblePlacementError",
    "OPTIMIZERS",
    "Placement",
    "RECORD_FORMAT",
    "RENDER_KEY_BYTES",
    "SearchSpace",
    "ShieldSettings",
    "WatermarkInvariantError",
    "box_is_feasible",
    "composite",
    "invert_composite",
    "feasible_top_left",
    "footprint_ssim",
    "get_optimizer",
    "judge",
    "load_logo",
    "logo_sha256",
    "render_logo",
    "shield_image",
    "watermark_image",
]
