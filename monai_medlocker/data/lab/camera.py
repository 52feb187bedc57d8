"""Camera of the synthetic fundus lab: non-lesion findings of the capture and the finishing of the photograph.

See :mod:`monai_medlocker.data.synthetic` for the whole lab.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageFilter

from monai_medlocker.data.lab.anatomy import _Geometry
from monai_medlocker.data.lab.raster import _TWO_PI, _bilinear, _patch, _upsample

__all__: list[str] = []  # internal to the lab; the public API is monai_medlocker.data.synthetic


def _distractors(rng: np.random.Generator, img: np.ndarray, illum: np.ndarray, g: _Geometry, size: int) -> None:
    """Non-lesion findings every grade may show: lens dust and faint drusen (neither is masked)."""
    s = float(size)
    if rng.random() < 0.3:
        for _ in range(int(rng.integers(1, 5))):
            phi, rad = rng.uniform(0, _TWO_PI), rng.uniform(0.0, 0.9) * g.r
            x, y = g.cx + rad * math.cos(phi), g.cy + rad * math.sin(phi)
            sig = rng.uniform(0.006, 0.018) * s
            win = _patch(x * s - 0.5, y * s - 0.5, 3 * sig, size)
            if win is None:
                continue
            sl, xx, yy = win
            ring = np.exp(-((np.sqrt(xx * xx + yy * yy) - sig) ** 2) / (2 * (0.5 * sig) ** 2))
            img[sl] *= (1.0 - rng.uniform(0.03, 0.09) * ring)[..., None]
    if rng.random() < 0.15:
        for _ in range(int(rng.integers(3, 15))):
            x, y = g.from_polar(rng.uniform(0, _TWO_PI), rng.uniform(0.3, 1.8) * g.dd)
            r = max(0.8, rng.uniform(0.0015, 0.003) * s)
            win = _patch(x * s - 0.5, y * s - 0.5, 2.5 * r, size)
            if win is None:
                continue
            sl, xx, yy = win
            soft = np.exp(-(xx * xx + yy * yy) / (2 * r * r)) * rng.uniform(0.15, 0.3)
            colour = np.array([0.95, 0.75, 0.45], dtype=np.float32) * _bilinear(illum, x, y)
            img[sl] += soft[..., None] * (colour - img[sl])


def _finish(rng: np.random.Generator, img: np.ndarray, g: _Geometry, size: int, noise_range=(0.004, 0.014),
            quality_range=(75, 97), jpeg_rate: float = 0.85, defocus: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Rim, sensor noise, tone curve and colour cast, optics blur, JPEG; returns (uint8 image, FOV mask).

    The defaults are lab v1's finishing; lab v2 passes wider noise and JPEG quality ranges (``_FINISH_V2``) and a
    ``defocus`` Gaussian sigma in 512-px pixels (0 = in focus) from :func:`_plan_camera`.
    """
    s = float(size)
    coords = (np.arange(size, dtype=np.float32) + 0.5) / np.float32(s)
    dist = np.sqrt((coords[None, :] - np.float32(g.cx)) ** 2 + (coords[:, None] - np.float32(g.cy)) ** 2)
    fov = (dist <= g.r) & (np.abs(coords - g.cy) <= g.hh)[:, None]
    rim_w = rng.uniform(0.006, 0.02)
    # The fundus fades to black over the last ~1-2 % of the radius; reflectance 1 maps to 255 (brighter
    # parts of the disc saturate, as they often do in real photographs).
    rim = np.clip((np.float32(g.r) - dist) * np.float32(1.0 / rim_w), 0.0, 1.0)
    rim *= np.clip((g.hh - np.abs(coords - g.cy)) / (0.4 * rim_w), 0.0, 1.0).astype(np.float32)[:, None]
    rim *= rim * np.float32(255.0)
    sigma = np.float32(rng.uniform(*noise_range) * math.sqrt(12.0))
    noise = rng.random((size, size), dtype=np.float32)
    noise -= np.float32(0.5)
    img += noise[..., None] * (sigma * np.array([1.0, 1.15, 1.4], dtype=np.float32))
    img *= rim[..., None]
    np.clip(img, 0.0, 255.0, out=img)
    pil = Image.fromarray(img.astype(np.uint8))
    # Colour cast (channel gains) and tone (gamma) in one lookup table per channel.
    gains = (rng.uniform(0.92, 1.08), rng.uniform(0.85, 1.12), rng.uniform(0.8, 1.1))
    gamma = rng.uniform(0.8, 1.2)
    curve = [min(255, int(255.0 * min(1.0, k * gain / 255.0) ** gamma + 0.5)) for gain in gains
             for k in range(256)]
    pil = pil.point(curve)
    pil = pil.filter(ImageFilter.BoxBlur(rng.uniform(0.3, 1.0) * s / 512.0))  # defocus / optics
    if defocus > 0:
        pil = pil.filter(ImageFilter.GaussianBlur(defocus * s / 512.0))
    quality = int(rng.integers(*quality_range))
    if rng.random() < jpeg_rate:
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        pil = Image.open(buf).convert("RGB")
    out = np.array(pil, dtype=np.uint8)
    out *= fov[..., None]
    return out, fov


# --------------------------------------------------------------------------------------------------
# Lab v2: capture artefacts of real fundus photographs
# --------------------------------------------------------------------------------------------------

#: Per-image probability of each lab-v2 capture artefact. Each is drawn independently per image (under- and
#: over-exposure exclude each other), so most images have none or one and a few have several; they come on top
#: of the variation every image has (brightness, uneven illumination, vignetting, colour cast, mild blur, noise,
#: JPEG). Rates are rough figures for screening photographs taken through a dilated or undilated pupil.
CAMERA_ARTEFACT_RATES: dict[str, float] = {
    "defocus": 0.18,  # Gaussian blur of sigma 0.9..2.2 px at 512 px (MAs soften but stay visible)
    "underexposure": 0.12,  # exposure x 0.5..0.75 (darker, noisier after the tone curve)
    "overexposure": 0.08,  # exposure x 1.25..1.6 (washed out, the disc and bright areas clip)
    "crescent": 0.15,  # a bright (55 %) or dark (45 %) illumination crescent along part of the rim
    "rim_flare": 0.12,  # a thin bright bluish-white arc right at the edge of the field of view
    "small_pupil": 0.12,  # darkened periphery: a soft vignetting ring from 50..75 % of the radius outwards
    "eyelashes": 0.06,  # 1..3 dark, out-of-focus curved streaks entering from the top or bottom of the field
    "dust": 0.25,  # 1..6 dark soft specks on the optics (a quarter of them thin streaks: fibres)
}
_FINISH_V2 = {"noise_range": (0.004, 0.02), "quality_range": (60, 96), "jpeg_rate": 0.9}


def _plan_camera(rng: np.random.Generator) -> dict:
    """Draw which capture artefacts one lab-v2 image shows and their parameters (geometry in units of ``S``,
    relative to the FOV radius where it says so); a pure function of ``rng``, independent of the image size."""
    rates = CAMERA_ARTEFACT_RATES
    u = rng.random(7)
    plan: dict = {"defocus": float(rng.uniform(0.9, 2.2)) if u[0] < rates["defocus"] else 0.0}
    if u[1] < rates["underexposure"]:
        plan["exposure"] = float(rng.uniform(0.5, 0.75))
    elif u[1] < rates["underexposure"] + rates["overexposure"]:
        plan["exposure"] = float(rng.uniform(1.25, 1.6))
    else:
        plan["exposure"] = 1.0
    plan["crescent"] = None
    if u[2] < rates["crescent"]:
        bright = bool(rng.random() < 0.55)
        plan["crescent"] = {"bright": bright, "phi": float(rng.uniform(0, _TWO_PI)),
                            "depth": float(rng.uniform(0.1, 0.25)),
                            "strength": float(rng.uniform(0.3, 0.6) if bright else rng.uniform(0.5, 0.85))}
    plan["rim_flare"] = None
    if u[3] < rates["rim_flare"]:
        plan["rim_flare"] = {"phi": float(rng.uniform(0, _TWO_PI)), "power": float(rng.uniform(2.0, 10.0)),
                             "width": float(rng.uniform(0.025, 0.07)), "strength": float(rng.uniform(0.3, 0.7))}
    plan["small_pupil"] = None
    if u[4] < rates["small_pupil"]:
        plan["small_pupil"] = {"r0": float(rng.uniform(0.5, 0.75)), "strength": float(rng.uniform(0.45, 0.8)),
                               "dx": float(rng.normal(0, 0.04)), "dy": float(rng.normal(0, 0.04))}
    plan["eyelashes"] = []
    if u[5] < rates["eyelashes"]:
        top = rng.random() < 0.7  # the upper lid's lashes are the usual culprits
        for _ in range(int(rng.integers(1, 4))):
            phi = (math.pi / 2 if top else -math.pi / 2) + rng.normal(0, 0.5)
            plan["eyelashes"].append({
                "phi": float(phi), "reach": float(rng.uniform(0.15, 0.45)), "bend": float(rng.normal(0, 0.25)),
                "width": float(rng.uniform(0.012, 0.03)), "strength": float(rng.uniform(0.3, 0.6))})
    plan["dust"] = []
    if u[6] < rates["dust"]:
        for _ in range(int(rng.integers(1, 7))):
            streak = rng.random() < 0.25
            plan["dust"].append({
                "phi": float(rng.uniform(0, _TWO_PI)), "rad": float(math.sqrt(rng.random()) * 0.92),
                "sigma": float(rng.uniform(0.003, 0.008) if streak else rng.uniform(0.003, 0.012)),
                "aspect": float(rng.uniform(3.0, 8.0)) if streak else float(rng.uniform(1.0, 1.4)),
                "angle": float(rng.uniform(0, math.pi)), "strength": float(rng.uniform(0.12, 0.35))})
    return plan


def _camera_summary(plan: dict) -> dict:
    """The artefacts of a camera plan as plain JSON values, for ``FundusSample.meta["artefacts"]``."""
    exposure = plan["exposure"]
    return {
        "defocus_sigma_512px": round(plan["defocus"], 3),
        "exposure": round(exposure, 3),
        "underexposed": exposure < 1.0,
        "overexposed": exposure > 1.0,
        "crescent": None if plan["crescent"] is None else ("bright" if plan["crescent"]["bright"] else "dark"),
        "rim_flare": plan["rim_flare"] is not None,
        "small_pupil": plan["small_pupil"] is not None,
        "eyelashes": len(plan["eyelashes"]),
        "dust": len(plan["dust"]),
    }


def _apply_camera(plan: dict, img: np.ndarray, g: _Geometry, size: int) -> None:
    """Apply a :func:`_plan_camera` plan to the linear float image ``img`` in place (before sensor noise, tone
    curve and JPEG, which :func:`_finish` adds)."""
    s = float(size)
    if plan["exposure"] != 1.0:
        img *= np.float32(plan["exposure"])
    needs_radius = plan["crescent"] or plan["rim_flare"] or plan["small_pupil"]
    if needs_radius:
        coords = (np.arange(size, dtype=np.float32) + 0.5) / np.float32(s)
        ox, oy = coords[None, :] - np.float32(g.cx), coords[:, None] - np.float32(g.cy)
        rr = np.sqrt(ox * ox + oy * oy) / np.float32(g.r)  # 1 at the FOV rim
    if plan["crescent"]:
        c = plan["crescent"]
        # The part of the FOV outside a circle of the same radius shifted away from the crescent's side.
        d = c["depth"]
        sx, sy = -d * math.cos(c["phi"]), -d * math.sin(c["phi"])
        q = np.sqrt((ox / g.r - sx) ** 2 + (oy / g.r - sy) ** 2)
        w = (np.clip((q - 1.0) / d, 0.0, 1.0) ** 1.2 * c["strength"]).astype(np.float32)
        if c["bright"]:  # a yellowish haze of light scattered from the iris margin
            img += w[..., None] * np.array([0.75, 0.62, 0.42], dtype=np.float32)
        else:
            img *= 1.0 - w[..., None]
    if plan["rim_flare"]:
        f = plan["rim_flare"]
        theta = np.arctan2(oy, ox)
        lobe = np.clip(np.cos(theta - f["phi"]), 0.0, 1.0) ** f["power"]
        # Peaks just inside the rim (the outer 1-2 % fade to black) and reaches ``width`` inwards.
        w = (f["strength"] * lobe * np.exp(-(((1.0 - f["width"] - rr) / f["width"]) ** 2))).astype(np.float32)
        img += w[..., None] * np.array([0.8, 0.85, 1.0], dtype=np.float32)
    if plan["small_pupil"]:
        p = plan["small_pupil"]
        rp = np.sqrt((ox / g.r - p["dx"]) ** 2 + (oy / g.r - p["dy"]) ** 2)
        x = np.clip((rp - p["r0"]) / (1.05 - p["r0"]), 0.0, 1.0)
        img *= (1.0 - p["strength"] * x * x * (3.0 - 2.0 * x))[..., None].astype(np.float32)
    if plan["eyelashes"]:
        img *= _eyelash_shade(plan["eyelashes"], g, size)[..., None]
    for speck in plan["dust"]:
        x = g.cx + speck["rad"] * g.r * math.cos(speck["phi"])
        y = g.cy + speck["rad"] * g.r * math.sin(speck["phi"])
        sig = max(speck["sigma"] * s, 0.6)
        long = sig * math.sqrt(speck["aspect"])
        win = _patch(x * s - 0.5, y * s - 0.5, 3.0 * long, size)
        if win is None:
            continue
        sl, xx, yy = win
        ca, sa = math.cos(speck["angle"]), math.sin(speck["angle"])
        u = (xx * ca + yy * sa) / long
        v = (yy * ca - xx * sa) / (sig / math.sqrt(speck["aspect"]))
        img[sl] *= (1.0 - speck["strength"] * np.exp(-0.5 * (u * u + v * v)))[..., None].astype(np.float32)


def _eyelash_shade(lashes: list[dict], g: _Geometry, size: int) -> np.ndarray:
    """Multiplicative ``(size, size)`` shade of out-of-focus eyelashes: soft dark curved bands from the rim inwards,
    drawn on a coarse grid (they are blurred anyway) and upsampled."""
    n = min(size, 256)
    coords = (np.arange(n, dtype=np.float32) + 0.5) / np.float32(n)
    gx, gy = coords[None, :], coords[:, None]
    dark = np.zeros((n, n), dtype=np.float32)
    for lash in lashes:
        # A quadratic curve from just outside the rim towards the centre, bent sideways by ``bend``.
        ux, uy = math.cos(lash["phi"]), -math.sin(lash["phi"])
        start = np.array([g.cx + 1.05 * g.r * ux, g.cy + 1.05 * g.r * uy])
        end = np.array([g.cx + (1.0 - lash["reach"]) * g.r * ux, g.cy + (1.0 - lash["reach"]) * g.r * uy])
        mid = 0.5 * (start + end) + lash["bend"] * lash["reach"] * g.r * np.array([-uy, ux])
        tt = np.linspace(0.0, 1.0, 40)[:, None]
        pts = (1 - tt) ** 2 * start + 2 * (1 - tt) * tt * mid + tt**2 * end
        d2 = np.min((gx[None] - pts[:, 0, None, None]) ** 2 + (gy[None] - pts[:, 1, None, None]) ** 2, axis=0)
        # A Gaussian profile: the lash is far out of focus.
        dark = np.maximum(dark, lash["strength"] * np.exp(-d2 / (2.0 * lash["width"] ** 2)))
    return 1.0 - (_upsample(dark, size) if n != size else dark)
