"""Keyed, non-invertible rendering of the logo mark (issue 11, item 2).

Each test can fail: the bit-for-bit test compares against the plain blend formula written out here,
the key tests against another key and the plain mark, the bound tests against the stated depths, and
the inversion test checks that the same informed inverse that fails on the keyed mark recovers the
plain one.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from monai_medlocker.certify import detect_logo
from monai_medlocker.certify.payload import apply_restore_payload, pack_restore_payload
from monai_medlocker.threats.removal import box_fidelity, informed_inverse_blend, random_placement
from monai_medlocker.transforms import AdversarialWatermark, AdversarialWatermarkd, LesionBBoxMask
from monai_medlocker.watermark import AttackProblem, Placement, SearchSpace, composite, load_logo, render_logo
from monai_medlocker.watermark.blend import mark_opacity
from monai_medlocker.watermark.engine import watermark_image
from monai_medlocker.watermark.keyed import (
    COLOUR_DEPTH,
    KEYED_SCHEME,
    MIN_FOOTPRINT_SSIM,
    OPACITY_DEPTH,
    OPACITY_FLOOR,
    footprint_ssim,
)
from monai_medlocker.watermark.optimizers import RandomPlacement

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))
# The informed inverse of a keyed mark, with the nominal logo, box and opacity, stays at or below this
# box PSNR (issue 11's target; benchmarks/bench_keyed.py measures the distribution on 40 lab images).
MAX_INVERSE_PSNR = 25.0


@pytest.fixture(scope="module")
def logo() -> np.ndarray:
    return load_logo()


@pytest.fixture(scope="module")
def lab_images() -> list[np.ndarray]:
    from monai_medlocker.workflows.threat_study import lab_study_images

    return [s.original for s in lab_study_images(3, 256, seed=31)]


def _marks(image: np.ndarray, logo: np.ndarray, seed: int) -> list[Placement]:
    """Random placements over the default space, plus the lowest opacity cap (the inversion's easiest case)."""
    rng = np.random.default_rng(seed)
    p = random_placement(image.shape, logo, rng)
    low = Placement(p.x0, p.y0, p.width, p.height, 100 / 255, p.rotation, p.scale)
    return [p, low]


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


def test_no_key_is_the_plain_blend_bit_for_bit(lab_images, logo):
    image = lab_images[0]
    for p in _marks(image, logo, 0):
        rgb, cov = render_logo(logo, p.width, p.height, p.rotation)
        a = np.minimum(cov, np.float32(p.alpha))[..., None]
        x0, y0, x1, y1 = p.box_xyxy
        region = image[y0:y1, x0:x1].astype(np.float32)
        expected = image.copy()
        blended = np.clip(np.rint(region * (1 - a) + rgb * a), 0, 255)
        expected[y0:y1, x0:x1] = np.where(a > 0, blended, region).astype(np.uint8)
        assert np.array_equal(composite(image, logo, [p], render_key=None), expected)
        assert np.array_equal(composite(image, logo, [p]), expected)


def test_same_key_same_pixels_other_key_other_pixels(lab_images, logo):
    image = lab_images[1]
    p = _marks(image, logo, 1)[0]
    a1 = composite(image, logo, [p], render_key=KEY_A)
    assert np.array_equal(a1, composite(image, logo, [p], render_key=bytearray(KEY_A)))
    b = composite(image, logo, [p], render_key=KEY_B)
    plain = composite(image, logo, [p])
    changed = lambda u, v: float(np.any(u != v, axis=-1).mean())  # noqa: E731
    box_fraction = p.width * p.height / image.shape[0] / image.shape[1]
    # a different key (and the plain mark) differ on most of the box, not on a few pixels
    assert changed(a1, b) > 0.5 * box_fraction
    assert changed(a1, plain) > 0.5 * box_fraction
    # the field also depends on the box: the same key at another position is another pattern
    moved = Placement(p.x0 + 1, p.y0, p.width, p.height, p.alpha, p.rotation, p.scale)
    _, op_here = mark_opacity(logo, p, KEY_A)
    _, op_moved = mark_opacity(logo, moved, KEY_A)
    assert not np.array_equal(op_here, op_moved)


def test_keyed_mark_changes_only_the_footprint(lab_images, logo):
    image = lab_images[0]
    for p in _marks(image, logo, 2):
        out = composite(image, logo, [p], render_key=KEY_A)
        _, cov = render_logo(logo, p.width, p.height, p.rotation)
        footprint = np.zeros(image.shape[:2], bool)
        footprint[p.y0:p.y0 + p.height, p.x0:p.x0 + p.width] = cov > 0
        changed = np.any(out != image, axis=-1)
        assert changed.any() and not (changed & ~footprint).any()


def test_bound_holds_opacity_pixels_and_ssim(lab_images, logo):
    for i, image in enumerate(lab_images):
        for p in _marks(image, logo, 10 + i):
            rgb, opacity = mark_opacity(logo, p)
            _, kop = mark_opacity(logo, p, KEY_A)
            room = (1 - opacity) * np.minimum(1, opacity / OPACITY_FLOOR)
            assert np.all(kop[opacity == 0] == 0) and np.all((kop >= 0) & (kop <= 1))
            assert np.all(np.abs(kop - opacity) <= OPACITY_DEPTH * room + 1e-6)
            keyed = composite(image, logo, [p], render_key=KEY_A)
            plain = composite(image, logo, [p])
            x0, y0, x1, y1 = p.box_xyxy
            region = image[y0:y1, x0:x1].astype(np.float32)
            deviation = np.abs(keyed[y0:y1, x0:x1].astype(np.float32) - plain[y0:y1, x0:x1])
            bound = room[..., None] * (OPACITY_DEPTH * np.abs(rgb - region) + COLOUR_DEPTH) + 1.0
            assert np.all(deviation <= bound + 1e-3)
            # the fields use most of their range (a bound that is never approached would be vacuous)
            assert np.quantile(deviation / bound, 0.99) > 0.3
            ssim = footprint_ssim(keyed, plain, logo, [p])
            assert MIN_FOOTPRINT_SSIM <= ssim < 0.999, (p, ssim)


def test_informed_inverse_fails_on_keyed_marks_only(lab_images, logo):
    for i, image in enumerate(lab_images):
        for p in _marks(image, logo, 20 + i):
            plain = composite(image, logo, [p])
            keyed = composite(image, logo, [p], render_key=bytes([i + 7]) * 32)
            plain_psnr = box_fidelity(informed_inverse_blend(plain, logo, [p]), image, [p])["psnr"]
            keyed_psnr = box_fidelity(informed_inverse_blend(keyed, logo, [p]), image, [p])["psnr"]
            if p.alpha < 0.9:  # below that the plain inverse is near exact (an opacity of 1 holds nothing)
                assert plain_psnr > 40, (p, plain_psnr)
            assert keyed_psnr <= MAX_INVERSE_PSNR, (p, keyed_psnr)


def test_verify_detects_a_keyed_mark_after_jpeg(lab_images, logo):
    for i, image in enumerate(lab_images):
        p = _marks(image, logo, 30 + i)[1]  # the faintest opacity: the hardest to detect
        params = {"image_size": list(image.shape[:2]), "marks": [p.to_record()]}
        keyed = composite(image, logo, [p], render_key=KEY_B)
        for img in (keyed, _jpeg(keyed, 75)):
            result = detect_logo(img, params, logo)
            assert result["present"], result
        assert not detect_logo(_jpeg(image, 75), params, logo)["present"]


def test_unlock_is_bit_exact_on_a_keyed_mark(lab_images, logo):
    image = lab_images[2]
    p = _marks(image, logo, 40)[0]
    keyed = composite(image, logo, [p], render_key=KEY_A)
    restored = apply_restore_payload(keyed, pack_restore_payload(image, [list(p.box_xyxy)]))
    assert np.array_equal(restored, image) and not np.array_equal(keyed, image)


def test_candidates_are_scored_as_the_keyed_artefact(tiny_surrogate):
    rng = np.random.default_rng(3)
    image = (rng.random((301, 457, 3)) * 255).astype(np.uint8)
    problem = AttackProblem(image, np.zeros(image.shape[:2], bool), [tiny_surrogate], load_logo(), SearchSpace(),
                            render_key=KEY_A)
    size = tiny_surrogate.spec.input_size
    for _ in range(3):
        p = problem.random_placement()
        native = composite(image, problem.logo, [p], render_key=KEY_A)
        t = torch.from_numpy(native.transpose(2, 0, 1).astype(np.float32) / 255)
        ref = torch.nn.functional.interpolate(t[None], size=(size, size), mode="bilinear", align_corners=False,
                                              antialias=True)[0]
        assert torch.allclose(problem.screen_image([p]), ref, atol=1e-4)
        plain = problem.screen_image([]).clone()
        assert not torch.allclose(problem.screen_image([p]), plain, atol=1e-4)


def test_engine_and_transforms_thread_the_key(tiny_surrogate, dark_image, lesion_masks):
    wsm = LesionBBoxMask()(lesion_masks)[0]
    space = SearchSpace(alpha_range=(0.5, 0.5))
    kwargs = dict(optimizer=RandomPlacement(max_queries=8), space=space, seed=4)
    plain, plain_rec = watermark_image(dark_image, wsm, [tiny_surrogate], load_logo(), **kwargs)
    keyed, rec = watermark_image(dark_image, wsm, [tiny_surrogate], load_logo(), render_key=KEY_A, **kwargs)
    assert plain_rec["rendering"] == {"scheme": "plain"}
    assert rec["rendering"]["scheme"] == KEYED_SCHEME and rec["marks"] == plain_rec["marks"]
    assert not np.any((keyed != dark_image).any(-1) & wsm)
    assert not np.array_equal(keyed, plain)
    p = Placement.from_record(rec["marks"][0])
    assert np.array_equal(keyed, composite(dark_image, load_logo(), [p], render_key=KEY_A))
    assert KEY_A.hex() not in repr(rec) and repr(KEY_A) not in repr(rec)

    t = AdversarialWatermark(tiny_surrogate, optimizer="random", max_queries=8, search_space=space, seed=4)
    chw = dark_image.transpose(2, 0, 1)
    out = t(chw, wsm[None], render_key=KEY_A)
    assert np.array_equal(np.asarray(out).transpose(1, 2, 0), keyed)
    d = AdversarialWatermarkd(keys="image", surrogates=tiny_surrogate, optimizer="random", max_queries=8,
                              search_space=space, seed=4)
    res = d({"image": chw, "wsm": wsm[None], "render_key": KEY_A})
    assert np.array_equal(np.asarray(res["image"]), np.asarray(out))
    assert res["medlocker"]["rendering"]["scheme"] == KEYED_SCHEME
    res = d({"image": chw, "wsm": wsm[None]})
    assert np.array_equal(np.asarray(res["image"]).transpose(1, 2, 0), plain)


@pytest.mark.parametrize("bad", [b"short", bytes(33), "a" * 32, 123])
def test_a_bad_render_key_is_refused(bad, lab_images, logo):
    p = _marks(lab_images[0], logo, 50)[0]
    with pytest.raises(ValueError, match="render_key must be 32 bytes"):
        composite(lab_images[0], logo, [p], render_key=bad)
