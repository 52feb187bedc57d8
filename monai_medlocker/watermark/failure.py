"""What to publish when protection fails: the optimizer did not fool every surrogate on the final artefact.

The optimizer's best failed attempt is usually its most opaque (it lowers the opacity only once it
has won), so publishing it as it is hides the most of the image for no protection. ``on_failure``:

- ``"cap"`` (default): publish the best attempt with each mark's opacity capped at ``failure_opacity``
  (default 0.5): the image stays marked, certified and unlockable, and the grader sees through the marks;
- ``"mark"``: publish the mark only, a plain visible watermark: the first mark's place, at
  ``failure_opacity``, the other marks dropped (no adversarial claim is made for it);
- ``"withhold"``: publish nothing for the image (``public/`` does not get it); it is reported;
- ``"best"``: publish the best attempt as it is (the behaviour before this setting).

A shielded attempt keeps its shield: it never touches a mark's box, so only the boxes are rendered again
(a dropped mark's box gets its original pixels back).
Every case is named in the record (``on_failure``) and the summary lists the images that were not fooled.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from monai_medlocker.networks import Surrogate
from monai_medlocker.watermark.blend import Placement, composite
from monai_medlocker.watermark.logo import logo_for_image

__all__ = ["ON_FAILURE", "check_failure_policy", "apply_failure_policy"]

ON_FAILURE = ("cap", "mark", "withhold", "best")


def check_failure_policy(on_failure: str, failure_opacity: float) -> None:
    """Raise ``ValueError`` for an unknown policy or an opacity outside (0, 1]."""
    if on_failure not in ON_FAILURE:
        raise ValueError(f"on_failure must be one of {ON_FAILURE}, got {on_failure!r}")
    if not 0.0 < float(failure_opacity) <= 1.0:
        raise ValueError(f"failure_opacity must be in (0, 1], got {failure_opacity!r}")


def apply_failure_policy(
    image: np.ndarray, out: np.ndarray, record: dict, wsm: np.ndarray, owner_logo: np.ndarray,
    surrogates: list[Surrogate], on_failure: str, failure_opacity: float, render_key: bytes | None = None,
) -> tuple[np.ndarray, dict]:
    """The image to publish and its record, for a protected image that was not fooled (else both unchanged).

    Args:
        image: the original H x W x 3 image; ``out`` the best attempt and ``record`` its record
            (:func:`~monai_medlocker.watermark.engine.watermark_image`).
        wsm: the H x W forbidden mask (checked again: a capped mark changes a subset of the attempt's pixels).
        owner_logo, render_key: as the attempt used them.
        on_failure, failure_opacity: the policy (module docstring).
    """
    from monai_medlocker.watermark.engine import _check_invariants, judge

    check_failure_policy(on_failure, failure_opacity)
    if not record.get("protected") or record.get("success") or on_failure == "best":
        if record.get("protected") and not record.get("success"):
            record = {**record, "on_failure": {"policy": "best"}}
        return out, record
    attempt = {"marks": record.get("marks", []), "final": record.get("final")}
    if on_failure == "withhold":
        record = {**record, "protected": False, "withheld": True,
                  "reason": "not fooled: withheld from public/ (on_failure 'withhold')",
                  "on_failure": {"policy": "withhold", "attempt": attempt}}
        return image, record
    marks = [Placement.from_record(m) for m in record["marks"]]
    if on_failure == "mark":
        marks = [replace(marks[0], alpha=float(failure_opacity))]
    else:
        marks = [replace(m, alpha=min(m.alpha, float(failure_opacity))) for m in marks]
    value_max = 255.0 if image.dtype == np.uint8 or float(np.max(image)) > 1.0 else 1.0
    logo, _ = logo_for_image(owner_logo, image)
    remarked = composite(image, logo, marks, value_max, render_key)
    # Outside the attempt's boxes the attempt stands (the shield, if any); inside them, the new marks or the original.
    published = np.array(out, copy=True)
    for m in record["marks"]:
        x0, y0, x1, y1 = m["box_xyxy"]
        published[y0:y1, x0:x1] = remarked[y0:y1, x0:x1]
    wsm = np.asarray(wsm, dtype=bool)
    _check_invariants(out, published, wsm, [Placement.from_record(m) for m in record["marks"]])
    if "shield" not in record:
        _check_invariants(image, published, wsm, marks)
    changed = int(np.any(published != image, axis=-1).sum())
    final = judge(published, surrogates, int(record["label"]), value_max)
    height, width = image.shape[:2]
    facts = {"policy": on_failure, "opacity": float(failure_opacity), "attempt": attempt}
    dropped = [k for k in ("eot",) if k in record]  # the thief views judged the attempt, not this
    if dropped:
        facts["dropped"] = dropped
    record = {k: v for k, v in record.items() if k not in dropped}
    record.update(success=bool(final["success"]), marks=[m.to_record() for m in marks], changed_pixels=changed,
                  box_area_fraction=round(sum(m.width * m.height for m in marks) / (height * width), 6),
                  final={"preds": final["preds"], "margin": final["margin"]}, on_failure=facts)
    return published, record
