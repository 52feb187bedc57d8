"""``watermark_image``: the one implementation of "find a placement, composite, verify".

The transforms, the protect workflow and the benchmark all call it.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch

from monai_medlocker import __version__
from monai_medlocker.networks import Surrogate, preprocess_for_model
from monai_medlocker.watermark.blend import Placement, composite
from monai_medlocker.watermark.feasibility import NoFeasiblePlacementError
from monai_medlocker.watermark.keyed import check_render_key, rendering_record
from monai_medlocker.watermark.logo import logo_for_image, logo_sha256
from monai_medlocker.watermark.optimizers import WatermarkOptimizer
from monai_medlocker.watermark.problem import AttackProblem, SearchSpace, label_margins
from monai_medlocker.watermark.shield import (
    ShieldSettings, field_of_view, offmark_fidelity, psnr, removal_images, screen_geometry, settings_views, shield_bound_map,
    shield_image, shield_region,
)

__all__ = ["RECORD_FORMAT", "WatermarkInvariantError", "watermark_image", "judge", "judge_views"]

RECORD_FORMAT = "medlocker-params/1"


class WatermarkInvariantError(RuntimeError):
    """A composite changed a pixel it must not change (inside the WSM or outside the logo)."""


def judge(image: np.ndarray, surrogates: list[Surrogate], label: int, value_max: float = 255.0) -> dict:
    """Predictions and margins of the final artefact, through each model's own preprocessing.

    This is the success test of DESIGN invariant 2: the full-resolution image (uint8 when the
    output is uint8) goes through ``preprocess_for_model``, never a float intermediate.
    """
    t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
    if t.dtype != torch.uint8:
        t = t.float() / value_max
    preds, margins = [], []
    with torch.no_grad():
        for s in surrogates:
            logits = s.network(preprocess_for_model(t.to(s.device), s.spec)).cpu()
            preds.append(int(logits[0].argmax()))
            margins.append(float(label_margins(logits, label)[0]))
    return {"preds": preds, "margin": max(margins), "model_margins": margins, "success": max(margins) < 0}


def _check_invariants(before: np.ndarray, after: np.ndarray, wsm: np.ndarray, marks: list[Placement],
                      shield_bound: int | np.ndarray | None = None, shield_allowed: np.ndarray | None = None) -> int:
    """Count the changed pixels; raise if one changed that must not (DESIGN invariant 1).

    Without a shield only the logo boxes may change. In shield mode pixels of ``shield_allowed`` (the FOV
    outside the WSM and the boxes) may also change, each channel by at most ``shield_bound`` grey levels
    (one bound, or an H x W map of per-pixel bounds: the perceptual shield's).
    """
    changed = np.any(before != after, axis=-1)
    if (changed & wsm).any():
        raise WatermarkInvariantError(f"{int((changed & wsm).sum())} pixels inside the WSM changed")
    footprint = np.zeros_like(changed)
    for p in marks:
        x0, y0, x1, y1 = p.box_xyxy
        footprint[y0:y1, x0:x1] = True
    outside = changed & ~footprint
    if shield_bound is not None and shield_allowed is not None:
        if (outside & ~shield_allowed).any():
            raise WatermarkInvariantError(
                f"{int((outside & ~shield_allowed).sum())} pixels outside the shield region (FOV minus WSM and boxes) changed")
        step = np.abs(before.astype(np.int16) - after.astype(np.int16)).max(axis=-1)
        over = outside & (step > np.broadcast_to(np.asarray(shield_bound), step.shape))
        if over.any():
            y, x = np.argwhere(over)[0]
            bound = int(np.broadcast_to(np.asarray(shield_bound), step.shape)[y, x])
            raise WatermarkInvariantError(f"the shield changed a pixel by {int(step[y, x])} grey levels, over its bound {bound}")
    elif outside.any():
        raise WatermarkInvariantError(f"{int(outside.sum())} pixels outside the logo boxes changed")
    return int(changed.sum())


def _apply_shield(image: np.ndarray, marked: np.ndarray, wsm: np.ndarray, surrogates: list[Surrogate], label: int,
                  logo: np.ndarray, marks: list[Placement], settings: ShieldSettings, views) -> tuple:
    """(shielded image, allowed-change mask, record facts) of the shield step of :func:`watermark_image`."""
    from monai_medlocker.lesions.builtin import LesionDetectionError

    start = time.perf_counter()
    facts = {"settings": settings.to_record(), "linf_bound": settings.linf,
             "views": views.to_record() if hasattr(views, "to_record") else None}
    try:
        fov = field_of_view(image)
    except LesionDetectionError as err:  # no round field on black: nothing the shield may touch
        return marked, None, {**facts, "applied": False, "reason": f"no field of view: {err}"}
    boxes = [p.box_xyxy for p in marks]
    # The thief's ways to erase a mark: an inverse blend recovers the original boxes; inpainting (Telea,
    # biharmonic) or a learned remover fills them. The objective covers each (settings.removals).
    view_size = screen_geometry(settings, image.shape, surrogates)[0]
    removed, fills = removal_images(image, marked, logo, marks, settings, min(image.shape[:2]) / view_size)
    out = shield_image(marked, wsm, fov, surrogates, label, boxes, views=views, settings=settings, removed=removed,
                       reference=image, fills=fills)
    allowed = shield_region(wsm, fov, boxes)
    cell = screen_geometry(settings, image.shape, surrogates)[1]
    bound = shield_bound_map(image, wsm, fov, boxes, settings, cell)[1]  # what _check_invariants enforces
    diff = np.abs(out.astype(np.int16) - marked.astype(np.int16))
    fidelity = offmark_fidelity(image, out, allowed)  # DESIGN invariant 1: the off-mark fidelity is stated
    facts.update({"offmark_ssim_luma": fidelity["ssim_luma"],
                  "offmark_psnr": fidelity["psnr"] if np.isfinite(fidelity["psnr"]) else None,
                  "applied": True, "region_pixels": int(allowed.sum()),
                  "changed_pixels": int(np.any(diff > 0, axis=-1).sum()), "linf": int(diff.max(initial=0)),
                  "block": cell, "bound_max": int(bound.max(initial=0)),
                  "bound_mean": round(float(bound[allowed].mean()), 3) if allowed.any() else 0.0,
                  "psnr_vs_marked": round(psnr(out, marked), 3), "psnr_whole_image": round(psnr(out, image), 3),
                  "seconds": round(time.perf_counter() - start, 4)})
    return out, (allowed, bound), facts


def watermark_image(
    image: np.ndarray,
    wsm: np.ndarray,
    surrogates: list[Surrogate],
    logo: np.ndarray,
    optimizer: WatermarkOptimizer,
    space: SearchSpace,
    label: int | None = None,
    seed: int = 0,
    batch_size: int = 32,
    value_max: float | None = None,
    shield: ShieldSettings | dict | bool | None = None,
    shield_views=None,
    render_key: bytes | None = None,
) -> tuple[np.ndarray, dict]:
    """Protect one H x W x 3 image: search placements, composite at native size, verify.

    Args:
        image: H x W x 3 uint8 or float image (floats in 0-1 or 0-255; see ``value_max``).
        wsm: H x W bool forbidden mask.
        surrogates: the model(s) to mislead; success means every one mispredicts.
        logo: RGBA uint8 logo.
        optimizer: a configured optimizer (its ``max_queries`` is the budget per mark).
        space: the search space.
        label: the grade to move away from; ``None`` uses the first surrogate's clean prediction.
        seed: seed of the search.
        batch_size: candidates per forward pass.
        value_max: the image's white level; ``None`` infers 255 for uint8 and for floats above 1.
        shield: the optional imperceptible shield (:class:`~monai_medlocker.watermark.shield.ShieldSettings`
            or a dict of its fields; ``None``: none): after the marks are placed, the FOV outside the WSM
            and the boxes is perturbed by at most its bound, before the final judge. uint8 images only.
        shield_views: the EOT views the shield optimises through (``None``: built from the settings' ``views``).
        render_key: 32-byte secret of the keyed rendering (searched and composited keyed, so the
            optimizer scores what is written); ``None``: the plain mark, bit for bit as before.

    Returns:
        The watermarked image (same dtype and size) and its parameter record.

    Raises:
        NoFeasiblePlacementError: every placement would touch a lesion box.
        WatermarkInvariantError: a violated pixel invariant (a bug, never expected).
    """
    if value_max is None:
        value_max = 255.0 if image.dtype == np.uint8 or float(np.max(image)) > 1.0 else 1.0
    wsm = np.asarray(wsm, dtype=bool)
    render_key = check_render_key(render_key)
    shield = ShieldSettings.from_config(shield)  # bad settings fail before the search, not after it
    if shield is not None:
        if image.dtype != np.uint8:
            raise ValueError(f"the shield needs a uint8 image, got {image.dtype}.")
        shield_views = shield_views if shield_views is not None else settings_views(shield, image.shape)
    start = time.perf_counter()
    owner_logo = logo
    logo, logo_rendering = logo_for_image(owner_logo, image)
    current, marks, forbidden = image, [], wsm.copy()
    queries, problem_label, clean = 0, label, None
    height, width = image.shape[:2]
    views = optimizer.thief_views(min(height, width))
    grad_views = optimizer.diversity_views() if hasattr(optimizer, "diversity_views") else None
    inherited = None  # the first mark's linearisation, which later marks may reuse (the optimizer decides)
    for mark in range(space.n_marks):
        mark_space = _space_left(space, marks, height * width)
        if mark_space is None:
            break  # the earlier marks used the total area
        problem = AttackProblem(
            current, forbidden, surrogates, logo, mark_space, label=problem_label, value_max=value_max,
            seed=seed + 7919 * mark, batch_size=batch_size, max_queries=optimizer.max_queries,
            render_key=render_key, views=views, view_fraction=optimizer.eot_fraction, inherited=inherited,
            sites=getattr(optimizer, "keyed_sites", None),
            grad_views=grad_views, grad_sigma=getattr(optimizer, "grad_sigma", 0.0),
        )
        if clean is None:
            clean = {"preds": problem.clean_preds, "margin": float(problem.clean_eval.margins[0])}
            problem_label = problem.label
        try:
            problem.configs  # raises NoFeasiblePlacementError when no lesion-free box fits
        except NoFeasiblePlacementError:
            if mark == 0:
                raise
            break  # later marks are optional: keep the ones placed
        placement = optimizer.search(problem)
        queries += problem.queries
        inherited = inherited or problem.clean_linearization
        if not problem.is_feasible(placement):
            raise WatermarkInvariantError(f"optimizer {optimizer.name} returned an infeasible placement {placement}")
        marks.append(placement)
        current = composite(current, logo, [placement], value_max, render_key)
        x0, y0, x1, y1 = placement.box_xyxy
        forbidden[y0:y1, x0:x1] = True  # marks never overlap each other
    shield_facts, shield_allowed, shield_bound = None, None, None
    if shield is not None:
        current, allowed_and_bound, shield_facts = _apply_shield(
            image, current, wsm, surrogates, problem_label, logo, marks, shield, shield_views)
        if allowed_and_bound is not None:
            shield_allowed, shield_bound = allowed_and_bound
    changed = _check_invariants(image, current, wsm, marks, shield_bound, shield_allowed)
    final = judge(current, surrogates, problem_label, value_max)
    record = {
        "format": RECORD_FORMAT,
        "software": f"monai-medlocker {__version__}",
        "protected": True,
        "success": bool(final["success"]),
        "image_size": [int(height), int(width)],
        "dtype": str(image.dtype),
        "logo_sha256": logo_sha256(owner_logo),
        "logo_rendering": logo_rendering,
        "rendering": rendering_record(render_key),
        "marks": [p.to_record() for p in marks],
        "box_area_fraction": round(sum(p.width * p.height for p in marks) / (height * width), 6),
        "changed_pixels": changed,
        "wsm_pixels": int(wsm.sum()),
        "optimizer": optimizer.name,
        "optimizer_settings": optimizer.settings(),
        "search_space": space.to_record(),
        "seed": int(seed),
        "queries": int(queries),
        "verification_queries": len(surrogates),
        "models": [{"name": s.spec.name, "input_size": s.spec.input_size} for s in surrogates],
        "label": int(problem_label),
        "label_source": "given" if label is not None else "clean_prediction",
        "clean": clean,
        "final": {"preds": final["preds"], "margin": final["margin"]},
        "seconds": round(time.perf_counter() - start, 4),
    }
    if shield_facts is not None:
        record["shield"] = shield_facts
    if views is not None:
        record["eot"] = judge_views(current, surrogates, problem_label, views, value_max)
        record["verification_queries"] += len(surrogates) * len(views)
    return current, record


def _space_left(space: SearchSpace, marks: list[Placement], image_area: int) -> SearchSpace | None:
    """The space for the next mark: its box may use only the total area the earlier marks left."""
    if space.max_total_area_fraction is None:
        return space
    left = space.max_total_area_fraction - sum(p.width * p.height for p in marks) / image_area
    if left <= 1e-9:
        return None
    return replace(space, max_area_fraction=min(space.max_area_fraction, left))


def judge_views(image: np.ndarray, surrogates: list[Surrogate], label: int, views, value_max: float = 255.0) -> dict:
    """How many of the thief views of the final artefact every surrogate mispredicts (the EOT record).

    The artefact goes through the first surrogate's resize (as the search's screen frame does), then the
    views, then each surrogate's own preprocessing.
    """
    white = 255.0 if image.dtype == np.uint8 else value_max
    t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))[None] / white
    size = surrogates[0].spec.input_size
    screen = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        batch = views(screen)
        margins = torch.stack([
            label_margins(s.network(preprocess_for_model(batch.to(s.device), s.spec)).cpu(), label) for s in surrogates
        ], dim=1).max(dim=1).values
    fooled = (margins < 0).numpy()
    return {"views": list(views.names), "fooled": [bool(f) for f in fooled], "fooled_fraction": round(float(fooled.mean()), 4)}
