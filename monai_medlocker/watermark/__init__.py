"""The watermark engine: logo, blending, feasibility, the attack problem and its optimizers."""

from monai_medlocker.watermark.blend import Placement, composite, invert_composite
from monai_medlocker.watermark.engine import RECORD_FORMAT, WatermarkInvariantError, judge, watermark_image
from monai_medlocker.watermark.feasibility import NoFeasiblePlacementError, box_is_feasible, feasible_top_left
from monai_medlocker.watermark.logo import load_logo, logo_sha256, render_logo
from monai_medlocker.watermark.optimizers import OPTIMIZERS, get_optimizer
from monai_medlocker.watermark.problem import AttackProblem, SearchSpace

__all__ = [
    "AttackProblem",
    "NoFeasiblePlacementError",
    "OPTIMIZERS",
    "Placement",
    "RECORD_FORMAT",
    "SearchSpace",
    "WatermarkInvariantError",
    "box_is_feasible",
    "composite",
    "invert_composite",
    "feasible_top_left",
    "get_optimizer",
    "judge",
    "load_logo",
    "logo_sha256",
    "render_logo",
    "watermark_image",
]
