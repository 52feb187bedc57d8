"""Where a logo box may go: every placement whose box touches the WSM is infeasible."""

from __future__ import annotations

import numpy as np

__all__ = ["NoFeasiblePlacementError", "feasible_top_left", "box_is_feasible", "summed_area_table"]


class NoFeasiblePlacementError(ValueError):
    """Every placement of the logo would touch a lesion box (the WSM) or leave the image."""


def summed_area_table(wsm: np.ndarray) -> np.ndarray:
    """The (H+1) x (W+1) summed-area table of a WSM (int32: exact up to 2**31 forbidden pixels, half the cost)."""
    forbidden = np.asarray(wsm, dtype=bool)
    sat = np.zeros((forbidden.shape[0] + 1, forbidden.shape[1] + 1), dtype=np.int32)
    sat[1:, 1:] = forbidden.cumsum(0, dtype=np.int32).cumsum(1, dtype=np.int32)
    return sat


def feasible_top_left(wsm: np.ndarray, box_h: int, box_w: int, sat: np.ndarray | None = None) -> np.ndarray:
    """Boolean map over top-left corners (rows 0..H-box_h, cols 0..W-box_w): True where the box is lesion-free.

    Uses a summed-area table, so it costs O(H x W) for any box size; pass ``sat``
    (:func:`summed_area_table` of ``wsm``) to share one table between box sizes.
    """
    height, width = np.shape(wsm)
    if box_h > height or box_w > width or box_h < 1 or box_w < 1:
        return np.zeros((max(height - box_h + 1, 0), max(width - box_w + 1, 0)), dtype=bool)
    sat = summed_area_table(wsm) if sat is None else sat
    inside = sat[box_h:, box_w:] - sat[:-box_h, box_w:] - sat[box_h:, :-box_w] + sat[:-box_h, :-box_w]
    return inside == 0


def box_is_feasible(wsm: np.ndarray, box_xyxy: tuple[int, int, int, int]) -> bool:
    """True when the box lies inside the image and contains no WSM pixel."""
    x0, y0, x1, y1 = box_xyxy
    height, width = wsm.shape
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height or x1 <= x0 or y1 <= y0:
        return False
    return not bool(np.asarray(wsm[y0:y1, x0:x1]).any())
