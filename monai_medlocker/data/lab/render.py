"""One synthetic fundus photograph: :class:`FundusSample` and :func:`synthesize_fundus`.

See :mod:`monai_medlocker.data.synthetic` for the whole lab.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from monai_medlocker.data.lab.anatomy import _background, _draw_disc, _draw_macula, _draw_vessels, _grow_vessels, \
    _sample_geometry
from monai_medlocker.data.lab.camera import _FINISH_V2, _apply_camera, _camera_summary, _distractors, _finish, \
    _plan_camera
from monai_medlocker.data.lab.lesions import LESION_TYPES, MASK_ALPHA_THRESHOLD, QUADRANTS, _draw_lesion, _layout, \
    _lesion_keepout, _neovascular_tufts, _plan, grade_from_lesions
from monai_medlocker.data.lab.lookalikes import _draw_lookalikes, _plan_lookalikes

__all__ = ["MIN_SIZE", "MAX_SIZE", "LAB_VERSIONS", "DEFAULT_LAB_VERSION", "FundusSample", "synthesize_fundus"]

MIN_SIZE = 128
MAX_SIZE = 2048
LAB_VERSIONS: tuple[int, ...] = (1, 2)
DEFAULT_LAB_VERSION = 2



@dataclass
class FundusSample:
    """One synthetic fundus photograph with its lesion masks and grade.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB image, black outside the field of view.
        masks: lesion type (``LESION_TYPES``) -> ``(H, W)`` bool mask, ``alpha > 0.5`` of the drawn lesions.
        grade: ICDR grade 0-4 computed by :func:`grade_from_lesions` from ``counts``.
        referable: ``grade >= 2``.
        counts: lesion counts: ``MA``, ``HE`` (intraretinal haemorrhages), ``EX`` (exudate spots), ``SE``,
            ``PRH`` (preretinal haemorrhages) and ``HE_quadrants`` (haemorrhages per ``QUADRANTS`` entry).
        meta: generation details: ``seed``, ``size``, ``requested_grade``, ``eye`` ("OD" right / "OS" left),
            ``disc_center`` / ``fovea_center`` / ``fov_center`` as ``(x, y)`` pixels, ``disc_radius``,
            ``fov_radius`` and ``fov_half_height`` (less than the radius where flat chords cut the FOV) in
            pixels, ``severe_rule`` ("haemorrhages", "soft_exudates" or None),
            ``neovascularisation``, ``pigment`` (fundus pigmentation 0..1), ``lesions`` (one dict per lesion:
            type, kind, centre, radius, quadrant) and ``lab_version``; lab v2 adds ``artefacts`` (the capture
            artefacts drawn: defocus sigma, exposure, crescent, rim flare, small pupil, eyelash and dust counts)
            and ``lookalikes`` (drusen and pigment clumps drawn, vessel reflex strength), none of them lesions.
    """

    image: np.ndarray
    masks: dict[str, np.ndarray]
    grade: int
    referable: bool
    counts: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)



def _check_size(size: Any) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be an integer from {MIN_SIZE} to {MAX_SIZE} px inclusive, got {size!r}")
    return int(size)


def _check_seed(seed: Any, name: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {seed!r}")
    return int(seed)


def _check_grade(grade: Any) -> int | None:
    if grade is None:
        return None
    if isinstance(grade, bool) or not isinstance(grade, (int, np.integer)) or not 0 <= grade <= 4:
        raise ValueError(f"grade must be None or an integer ICDR grade 0..4, got {grade!r}")
    return int(grade)


def _check_lab_version(lab_version: Any) -> int:
    if isinstance(lab_version, bool) or not isinstance(lab_version, (int, np.integer)) \
            or int(lab_version) not in LAB_VERSIONS:
        raise ValueError(f"lab_version must be one of {LAB_VERSIONS}, got {lab_version!r}")
    return int(lab_version)


def _synthesize(size: int, seed: int, grade: int | None, draw_lesions: bool = True,
                lab_version: int = DEFAULT_LAB_VERSION, draw_lookalikes: bool = True) -> FundusSample:
    """:func:`synthesize_fundus` with switches to leave the lesions or (v2) the look-alikes out.

    Everything else, camera artefacts included, is unchanged by either switch: the random streams are drawn
    the same way whether or not a part is drawn.
    """
    size = _check_size(size)
    seed = _check_seed(seed)
    grade = _check_grade(grade)
    lab_version = _check_lab_version(lab_version)
    # v2 spawns two more streams; SeedSequence children do not depend on how many are spawned, so the first five
    # (grade, anatomy, texture, lesions, finishing) are v1's: a v2 image shares v1's eye, vessels and lesions.
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5 if lab_version == 1 else 7)]
    rng_grade, rng_anat, rng_tex, rng_les, rng_cam = streams[:5]
    requested = int(rng_grade.integers(0, 5)) if grade is None else grade
    eye, g = _sample_geometry(rng_anat)
    trees = _grow_vessels(rng_anat, g)
    img, illum, look = _background(rng_tex, g, size)
    _draw_disc(rng_anat, img, illum, g, size)
    _draw_macula(rng_anat, img, g, size)
    plan = _plan(rng_les, requested)
    lesions = _layout(rng_les, g, plan)
    nv = _neovascular_tufts(rng_les, g) if plan["NV"] else []
    vessel_contrast = rng_tex.uniform(0.75, 1.05)
    reflex = rng_tex.uniform(0.2, 0.5) if rng_tex.random() < 0.6 else 0.0
    if lab_version == 1:
        _draw_vessels(img, trees + (nv if draw_lesions else []), size, vessel_contrast, reflex)
        _distractors(rng_tex, img, illum, g, size)
    else:
        # v2 replaces v1's faint drusen and dust rings (_distractors) by its look-alikes and camera artefacts,
        # all kept off the lesions' windows.
        rng_look, rng_art = streams[5:]
        looks = _plan_lookalikes(rng_look, g)
        camera = _plan_camera(rng_art)
        keepout = _lesion_keepout(lesions, size)
        stripe = looks["vessel_reflex"] if draw_lookalikes else 0.0
        _draw_vessels(img, trees + (nv if draw_lesions else []), size, vessel_contrast, reflex, stripe, keepout)
        spots = _draw_lookalikes(looks["spots"], img, illum, g, size, keepout) if draw_lookalikes \
            else {"drusen": 0, "pigment": 0}
    drawn = []
    windows = []
    if draw_lesions:
        for les in lesions:
            res = _draw_lesion(les, img, illum, size)
            windows.append(res)
    if lab_version == 1:
        image, fov = _finish(rng_cam, img, g, size)
    else:
        _apply_camera(camera, img, g, size)
        image, fov = _finish(rng_cam, img, g, size, defocus=camera["defocus"], **_FINISH_V2)

    masks = {t: np.zeros((size, size), dtype=bool) for t in LESION_TYPES}
    counts: dict[str, Any] = {"MA": 0, "HE": 0, "EX": 0, "SE": 0, "PRH": 0, "HE_quadrants": [0, 0, 0, 0]}
    for les, res in zip(lesions, windows):
        if res is None:
            continue
        sl, alpha = res
        visible = (alpha > MASK_ALPHA_THRESHOLD) & fov[sl]
        if not visible.any():
            continue  # not drawn where it counts: it does not enter the grade either
        masks[les["type"]][sl] |= visible
        if les["kind"] == "preretinal":
            counts["PRH"] += 1
        else:
            counts[les["type"]] += 1
            if les["type"] == "HE":
                counts["HE_quadrants"][g.quadrant(les["x"], les["y"])] += 1
        drawn.append({"type": les["type"], "kind": les["kind"],
                      "center": (round(les["x"] * size - 0.5, 2), round(les["y"] * size - 0.5, 2)),
                      "radius": round(max(les["r"] * size, 1.0), 2),
                      "quadrant": QUADRANTS[g.quadrant(les["x"], les["y"])]})
    label = grade_from_lesions(counts)
    meta = {
        "seed": seed,
        "size": size,
        "requested_grade": requested,
        "eye": eye,
        "disc_center": (g.dx * size - 0.5, g.dy * size - 0.5),
        "disc_radius": g.rd * size,
        "fovea_center": (g.fx * size - 0.5, g.fy * size - 0.5),
        "fov_center": (g.cx * size - 0.5, g.cy * size - 0.5),
        "fov_radius": g.r * size,
        "fov_half_height": min(g.hh, g.r) * size,
        "severe_rule": plan["severe_rule"] if label == 3 else None,
        "neovascularisation": bool(plan["NV"] and draw_lesions),
        "pigment": round(float(look["pigment"]), 3),
        "lesions": drawn,
        "lab_version": lab_version,
    }
    if lab_version >= 2:
        meta["artefacts"] = _camera_summary(camera)
        meta["lookalikes"] = {"drusen": spots["drusen"], "pigment_clumps": spots["pigment"],
                              "vessel_reflex": round(float(stripe), 3)}
    return FundusSample(image=image, masks=masks, grade=label, referable=label >= 2, counts=counts, meta=meta)


def synthesize_fundus(size: int, seed: int, grade: int | None = None,
                      lab_version: int = DEFAULT_LAB_VERSION) -> FundusSample:
    """Draw one synthetic fundus photograph with lesion masks and its ICDR grade.

    Args:
        size: side ``S`` of the square image in pixels, ``MIN_SIZE`` (128) to ``MAX_SIZE`` (2048).
        seed: non-negative integer; the result is a pure function of ``(size, seed, grade, lab_version)``
            (only ``numpy.random.default_rng`` streams derived from ``seed`` are used, no global state).
        grade: target ICDR grade 0-4, or ``None`` to draw one uniformly from the seed.
        lab_version: 1, the original lab (kept bit for bit: earlier benchmark results and the shipped demo
            models were made with it), or 2 (default), the realistic lab: v1 plus capture artefacts
            (``CAMERA_ARTEFACT_RATES``) and DR look-alikes (``LOOKALIKE_RATES``). For the same seed both
            versions share the eye, vessels, lesions, masks and grade; only the look of the photograph differs.

    Returns:
        A :class:`FundusSample`; its ``grade`` is computed from the drawn lesions by
        :func:`grade_from_lesions` and equals the target grade.

    Raises:
        ValueError: ``size`` outside 128..2048, a negative ``seed``, ``grade`` outside 0..4, or ``lab_version``
            not in ``LAB_VERSIONS``.
    """
    return _synthesize(size, seed, grade, draw_lesions=True, lab_version=lab_version)
