"""Where a logo box may go: every placement whose box touches the WSM is infeasible."""

from __future__ import annotations

import numpy as np

__all__ = ["NoFeasiblePlacementError", "feasible_top_left", "box_is_feasible"]


class NoFeasiblePlacementError(ValueError):
    """Every placement of the logo would touch a lesion box (the WSM) or leave the image."""


def feasible_top_left(wsm: np.ndarray, box_h: int, box_w: int) -> np.ndarray:
    """Boolean map over top-left corners (rows 0..H-box_h, cols 0..W-box_w): True where the box is lesion-free.

    Uses a summed-area table, so it costs O(H x W) for any box size.
    """
    forbidden = np.asarray(wsm, dtype=bool)
    height, width = forbidden.shape
    if box_h > height or box_w > width or box_h < 1 or box_w < 1:
        return np.zeros((max(height - box_h + 1, 0), max(width - box_w + 1, 0)), dtype=bool)
    # int32 is exact up to 2**31 forbidden pixels and halves the cost of the cumulative sums.
    sat = np.zeros((height + 1, width + 1), dtype=np.int32)
    sat[1:, 1:] = forbidden.cumsum(0, dtype=np.int32).cumsum(1, dtype=np.int32)
    inside = sat[box_h:, box_w:] - sat[:-box_h, box_w:] - sat[box_h:, :-box_w] + sat[:-box_h, :-box_w]
    return inside == 0


def box_is_feasible(wsm: np.ndarray, box_xyxy: tuple[int, int, int, int]) -> bool:
    """True when the box lies inside the image and contains no WSM pixel."""
    x0, y0, x1, y1 = box_xyxy
    height, width = wsm.shape
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height or x1 <= x0 or y1 <= y0:
        return False
    return not bool(np.asarray(wsm[y0:y1, x0:x1]).any())
