"""The anatomy a grader reads, kept out of the watermark: the optic disc and the macula.

:func:`locate_anatomy` finds both by classical image processing (no model):

- the optic disc is the brightest disc-sized blob of the smoothed red + green signal, against its
  surround (a difference of Gaussians inside the field of view);
- the fovea is the darkest macula-sized region of the smoothed green channel 1.8-3.3 disc
  diameters (DD) from the disc, on the side of the field's centre (the disc is nasal, the fovea
  about 2.5 DD temporal to it, near the centre of a macula-centred photograph).

:func:`anatomy_zones` turns the located (or user-given) positions into no-go zones, which the WSM
holds as boxes like every lesion box:

- the disc zone: a circle of ``disc_scale`` (default 1.5) disc radii around the disc's centre: the
  disc with its rim and the peripapillary ring where disc new vessels (NVD) and glaucomatous
  changes are read;
- the macular zone: a circle of radius ``macula_radius_dd`` (default 1 DD, about 1.5 mm) around the
  fovea. Why 1 DD and not the ETDRS central subfield (500 um radius, about 1/3 DD): clinically
  significant macular oedema is graded from thickening and hard exudates *within 1 DD of the
  centre*, and the ETDRS inner ring (3 mm across) reaches as far; the central subfield alone would
  leave most of what a macular-oedema grader reads open to a mark.

A located zone grows by the locator's error, 1 disc radius for the disc and 1.5 for the macula (the lab's
fovea error p90 is about 1 disc radius); a user-given zone is used as given.

Where either cannot be found, ``on_missing`` chooses: ``"fallback"`` (default) keeps a conservative
central zone instead (see :func:`anatomy_zones`) and says so in the record; ``"refuse"`` raises
:class:`AnatomyNotFoundError`, so that the image is reported and not published.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
from scipy import ndimage

__all__ = ["AnatomyNotFoundError", "ON_MISSING_ANATOMY", "locate_anatomy", "anatomy_zones", "zone_boxes"]

ON_MISSING_ANATOMY = ("fallback", "refuse")
_WORK_SIDE = 256  # the locator runs on a copy about this many pixels across: the structures are large
_DISC_Z = 4.0  # a disc peak must stand this many robust SDs above the field (lab and real photos: > 6)
_VESSEL_WEIGHT = 1.0  # the disc score: brightness plus this much vessel density (both robust z)
_FOVEA_Z = 0.1  # a fovea must be this much darker than its search region (robust SDs of the field)


class AnatomyNotFoundError(ValueError):
    """The optic disc or the fovea could not be located, and the settings refuse such an image."""


def _robust(v: np.ndarray) -> tuple[float, float]:
    med = float(np.median(v))
    return med, max(1.4826 * float(np.median(np.abs(v - med))), 1e-6)


def _norm_blur(values: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of ``values`` inside ``mask`` only (normalised convolution: no dark rim at the FOV edge)."""
    m = mask.astype(np.float32)
    f = max(1, int(sigma // 3))  # wide blurs run on a coarser grid (smooth at that scale anyway): 5-10x faster
    if f == 1:
        return ndimage.gaussian_filter(values * m, sigma) / np.maximum(ndimage.gaussian_filter(m, sigma), 1e-6)
    h, w = (mask.shape[0] // f) * f, (mask.shape[1] // f) * f
    vm = (values * m)[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))
    mm = m[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))
    coarse = ndimage.gaussian_filter(vm, sigma / f) / np.maximum(ndimage.gaussian_filter(mm, sigma / f), 1e-6)
    fine = ndimage.zoom(coarse, (h / coarse.shape[0], w / coarse.shape[1]), order=1, grid_mode=True, mode="nearest")
    return np.pad(fine, ((0, mask.shape[0] - h), (0, mask.shape[1] - w)), mode="edge")


def locate_anatomy(image: np.ndarray) -> dict[str, Any]:
    """The optic disc and the fovea of an H x W x 3 uint8 fundus photograph, in native pixels.

    Returns:
        ``{"optic_disc": {"x", "y", "r", "score"} or None, "fovea": {"x", "y", "score"} or None,
        "fov": {"x", "y", "r"} or None, "notes": [why something was not found]}``. ``r`` of the disc
        is its radius in pixels (measured, clipped to 0.08-0.18 of the field's radius).
    """
    from monai_medlocker.lesions.builtin import LesionDetectionError, detect_fov

    rgb = np.asarray(image)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=-1)
    height, width = rgb.shape[:2]
    out: dict[str, Any] = {"optic_disc": None, "fovea": None, "fov": None, "notes": []}
    k = max(1, int(round(max(height, width) / _WORK_SIDE)))
    small = rgb[::k, ::k].astype(np.float32)
    try:
        fov = detect_fov(rgb[::k, ::k])[0]
    except LesionDetectionError as err:
        out["notes"].append(f"no field of view: {err}")
        return out
    ys, xs = np.nonzero(fov)
    fcx, fcy = float(xs.mean()), float(ys.mean())
    fr = 0.5 * float(max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1))
    out["fov"] = {"x": _native(fcx, k), "y": _native(fcy, k), "r": round(fr * k, 1)}
    rd = 0.12 * fr  # the expected disc radius: about 1/8 of a 45-degree field's radius
    # The disc lies 2-3 DD nasal to a fovea near the field's centre: well inside the field (away from rim
    # flare) and near its horizontal midline.
    yy, xx = np.mgrid[0 : fov.shape[0], 0 : fov.shape[1]].astype(np.float32)
    inner = (ndimage.distance_transform_edt(fov) >= 0.25 * fr) & (np.abs(yy - fcy) <= 0.5 * fr)
    if not inner.any():
        inner = fov
    # Disc: a disc-sized average of green + blue against its surround: the disc is the whitest large
    # structure (red saturates on many cameras; exudates and haemorrhages are yellow or red).
    signal = small[..., 1] + small[..., 2]
    bright = _norm_blur(signal, fov, 0.5 * rd) - _norm_blur(signal, fov, 3.0 * rd)
    med, sd = _robust(bright[inner])
    level = float(np.median(signal[fov]))
    sd = max(sd, 0.01 * level)  # a flat field has no disc, however small its noise
    # Where the large vessels converge: cotton-wool spots and exudate clusters are bright too, but no vessel
    # tree leaves them. Vessels: thin dark lines of the green channel (a black top-hat narrower than a blob).
    width = max(3, int(round(0.35 * rd)) | 1)
    vessels = ndimage.grey_closing(small[..., 1], size=(width, width)) - small[..., 1]
    density = _norm_blur(vessels, fov, 1.0 * rd)
    dmed, dsd = _robust(density[inner])
    dsd = max(dsd, 0.002 * level)
    z = np.where(inner, (bright - med) / sd + _VESSEL_WEIGHT * (density - dmed) / dsd, -np.inf)
    iy, ix = np.unravel_index(int(np.argmax(z)), z.shape)
    disc = None
    if z[iy, ix] >= _DISC_Z:
        # Its radius: the part of the peak's blob above half its height, as an equivalent circle.
        half = (bright > med + 0.5 * (bright[iy, ix] - med)) & fov  # brightness alone: the blob's extent
        labels, _ = ndimage.label(half)
        area = float((labels == labels[iy, ix]).sum())
        r = float(np.clip(math.sqrt(area / math.pi), 0.08 * fr, 0.18 * fr))
        disc = (float(ix), float(iy), r)
        out["optic_disc"] = {"x": _native(ix, k), "y": _native(iy, k), "r": round(r * k, 1), "score": round(float(z[iy, ix]), 2)}
    else:
        out["notes"].append(f"optic disc not found: no bright disc-sized blob (best {z[iy, ix]:.1f} robust SD, "
                            f"needs {_DISC_Z})")
    # Fovea: the darkest macula-sized region of the green channel, where it must lie.
    dd = 2.0 * (disc[2] if disc else rd)
    # Green + blue: the macular pigment absorbs both; a wide blur sees the macula, not vessels or small lesions.
    green = small[..., 1] + small[..., 2]
    dark = _norm_blur(green, fov, 0.5 * dd) - _norm_blur(green, fov, 3.0 * dd)
    if disc is not None:
        side = 1.0 if fcx >= disc[0] else -1.0  # the fovea is on the field centre's side of the disc
        dist = np.hypot(xx - disc[0], yy - disc[1])
        region = inner & (dist >= 1.8 * dd) & (dist <= 3.3 * dd) & ((xx - disc[0]) * side > 0) & (np.abs(yy - disc[1]) <= 1.2 * dd)
    else:
        region = inner & (np.hypot(xx - fcx, yy - fcy) <= 0.35 * fr)  # a macula-centred photograph
    if region.sum() < 4:
        out["notes"].append("fovea not found: its search region lies outside the field of view")
        return out
    med, sd = _robust(dark[region])
    # The field's spread (the macula fills much of its own search region), floored: a flat field has no fovea.
    sd = max(_robust(dark[fov])[1], 0.005 * float(np.median(green[fov])))
    score = (med - dark) / sd
    if disc is not None:  # a weak prior on where it lies (about 2.5 DD temporal, level with the disc) breaks ties
        dist = np.hypot(xx - disc[0], yy - disc[1])
        score = score - 0.3 * ((dist - 2.5 * dd) / (0.5 * dd)) ** 2 - 0.3 * ((yy - disc[1]) / (0.6 * dd)) ** 2
    score = np.where(region, score, -np.inf)
    iy, ix = np.unravel_index(int(np.argmax(score)), score.shape)
    if score[iy, ix] >= _FOVEA_Z:
        out["fovea"] = {"x": _native(ix, k), "y": _native(iy, k), "score": round(float(score[iy, ix]), 2)}
    else:
        out["notes"].append(f"fovea not found: no dark region where it should lie (best {score[iy, ix]:.1f} robust SD, "
                            f"needs {_FOVEA_Z})")
    return out


def _native(v: float, k: int) -> float:
    return round(float(v) * k + (k - 1) / 2.0, 1)


def _given(value: Any, name: str, need_r: bool) -> dict | None:
    """A user-given ``{"x", "y", "r"}`` (pixels), checked; ``None`` when not given."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or any(not isinstance(value.get(c), (int, float)) or isinstance(value.get(c), bool)
                                             for c in (("x", "y", "r") if need_r else ("x", "y"))):
        raise ValueError(f"{name} must be {{'x': .., 'y': .., 'r': ..}} in pixels, got {value!r}")
    if value.get("r") is not None and float(value["r"]) <= 0:
        raise ValueError(f"{name}: its radius r must be > 0 pixels, got {value['r']!r}")
    return {k: float(value[k]) for k in ("x", "y", "r") if value.get(k) is not None}


def anatomy_zones(
    image: np.ndarray,
    optic_disc: Mapping | None = None,
    fovea: Mapping | None = None,
    disc_scale: float = 1.5,
    macula_radius_dd: float = 1.0,
    on_missing: str = "fallback",
    disc_margin: float = 1.0,
    macula_margin: float = 1.5,
) -> tuple[list[dict], dict]:
    """The no-go zones of one image: circles ``{"name", "x", "y", "r"}`` (pixels) and the anatomy record.

    Args:
        image: H x W x 3 uint8 photograph (located only when something is not given).
        optic_disc: the user's disc ``{"x", "y", "r"}`` (centre and disc radius, pixels), or ``None``: locate it.
        fovea: the user's fovea ``{"x", "y", "r"}`` (``r``: the macular zone's radius), or ``None``: locate it.
        disc_scale: the disc zone's radius in disc radii.
        macula_radius_dd: the macular zone's radius in disc diameters (for a located fovea, or a given one without ``r``).
        on_missing: ``"fallback"``: a missing disc or fovea gets a conservative zone (a missing fovea: a circle
            of 2 DD around where it should be, 2.5 DD temporal to the disc, or of 0.4 field radii around the field's
            centre; a missing disc: a central band across the field, 0.75 field radii either side of its centre and
            0.3 high, which holds a disc on either side); ``"refuse"``: raise.
        disc_margin, macula_margin: a located (not given) zone grows by this many disc radii, for the locator's
            error (``benchmarks/bench_anatomy.py``: disc centre p90 about 0.25, fovea p90 about 1 disc radius).

    Raises:
        AnatomyNotFoundError: with ``on_missing="refuse"``, when the disc or the fovea was not found.
        ValueError: a malformed user-given position.
    """
    if on_missing not in ON_MISSING_ANATOMY:
        raise ValueError(f"on_missing must be one of {ON_MISSING_ANATOMY}, got {on_missing!r}")
    height, width = np.asarray(image).shape[:2]
    disc, fov_pt = _given(optic_disc, "optic_disc", True), _given(fovea, "fovea", False)
    record: dict[str, Any] = {"zones": [], "missing": [], "notes": []}
    located = locate_anatomy(image) if disc is None or fov_pt is None else None
    fov = (located or {}).get("fov") or {"x": (width - 1) / 2, "y": (height - 1) / 2, "r": min(height, width) / 2}
    sources = {}
    if disc is not None:
        sources["optic_disc"] = "given"
    elif located["optic_disc"] is not None:
        disc, sources["optic_disc"] = located["optic_disc"], "located"
    if fov_pt is not None:
        sources["fovea"] = "given"
    elif located["fovea"] is not None:
        fov_pt, sources["fovea"] = located["fovea"], "located"
    if located is not None:
        record["notes"] = list(located["notes"])
    record["missing"] = [n for n in ("optic_disc", "fovea") if n not in sources]
    if record["missing"] and on_missing == "refuse":
        raise AnatomyNotFoundError(f"{' and '.join(record['missing'])} not found ({'; '.join(record['notes'])}); "
                                   "on_missing_anatomy 'refuse' withholds such images (use 'fallback' to protect them "
                                   "with a conservative central zone, or give optic_disc and fovea in the datalist)")
    if disc is not None and sources["optic_disc"] == "located":
        # The half-maximum blob runs small on faint discs: never below a typical disc (0.11 field radii).
        disc = {**disc, "r": max(disc["r"], 0.11 * fov["r"])}
    rd = disc["r"] if disc is not None else 0.12 * fov["r"]
    zones = []
    if disc is not None:
        grow = disc_margin * rd if sources["optic_disc"] == "located" else 0.0
        zones.append({"name": "optic_disc", "source": sources["optic_disc"], "x": disc["x"], "y": disc["y"],
                      "r": disc_scale * disc["r"] + grow})
    else:  # either side: without the disc the eye's side is unknown
        zones.append({"name": "optic_disc", "source": "fallback", "x": fov["x"], "y": fov["y"], "r": None,
                      "box": [fov["x"] - 0.75 * fov["r"], fov["y"] - 0.3 * fov["r"],
                              fov["x"] + 0.75 * fov["r"], fov["y"] + 0.3 * fov["r"]]})
    if fov_pt is not None:
        if sources["fovea"] == "given":
            r = fov_pt.get("r") or macula_radius_dd * 2.0 * rd
        else:
            r = macula_radius_dd * 2.0 * rd + macula_margin * rd
        zones.append({"name": "macula", "source": sources["fovea"], "x": fov_pt["x"], "y": fov_pt["y"], "r": r})
    elif disc is not None:
        side = 1.0 if fov["x"] >= disc["x"] else -1.0
        zones.append({"name": "macula", "source": "fallback", "x": disc["x"] + side * 5.0 * rd, "y": disc["y"],
                      "r": max(macula_radius_dd, 2.0) * 2.0 * rd})
    else:
        zones.append({"name": "macula", "source": "fallback", "x": fov["x"], "y": fov["y"], "r": 0.4 * fov["r"]})
    for z in zones:
        for c in ("x", "y", "r"):
            if z[c] is not None:
                z[c] = round(float(z[c]), 1)
    record["zones"] = zones
    record["disc_radius"] = round(float(rd), 1)
    return zones, record


def zone_boxes(zones: list[dict], shape: tuple[int, int]) -> np.ndarray:
    """N x 4 int64 xyxy (end-exclusive) boxes holding each zone, clipped to the image (the WSM's form)."""
    height, width = shape
    boxes = []
    for z in zones:
        if z.get("box") is not None:
            x0, y0, x1, y1 = z["box"]
        else:
            x0, y0, x1, y1 = z["x"] - z["r"], z["y"] - z["r"], z["x"] + z["r"], z["y"] + z["r"]
        box = (max(int(math.floor(x0)), 0), max(int(math.floor(y0)), 0),
               min(int(math.ceil(x1)) + 1, width), min(int(math.ceil(y1)) + 1, height))
        if box[2] > box[0] and box[3] > box[1]:
            boxes.append(box)
    return np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
