"""Property-based tests (hypothesis): the blend and its inverse, and parsers that must never crash
on arbitrary input but raise the project's own error (certificates, the DICOM private block,
datalists)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image, PngImagePlugin
from pydicom.dataset import Dataset

from monai_medlocker.certify.certificate import CertificateError, SignedCertificate, verify_certificate
from monai_medlocker.certify.keys import generate_owner_key
from monai_medlocker.certify.seal import (
    PNG_CERTIFICATE,
    PNG_LEGACY_PARAMS,
    PNG_PAYLOAD,
    PNG_PUBLIC,
    PNG_SEALED,
    PNG_SIGNATURE,
    read_protected,
)
from monai_medlocker.data.datalist import datalist_item_problem, load_datalist
from monai_medlocker.io.private_tags import (
    PRIVATE_CREATOR,
    PRIVATE_FORMAT,
    PRIVATE_GROUP,
    PrivateTagError,
    read_medlocker_tags,
)
from monai_medlocker.watermark.blend import Placement, composite, invert_composite, mark_opacity
from monai_medlocker.watermark.logo import load_logo

FAST = settings(max_examples=int(os.environ.get("MEDLOCKER_HYPOTHESIS_EXAMPLES", "60")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
LOGO = load_logo(None)
KEY = generate_owner_key()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


# The blend and its inverse.

@st.composite
def blend_cases(draw):
    h, w = draw(st.integers(24, 64)), draw(st.integers(24, 64))
    image = draw(arrays(np.uint8, (h, w, 3)))
    bw, bh = draw(st.integers(8, w)), draw(st.integers(8, h))
    placement = Placement(draw(st.integers(0, w - bw)), draw(st.integers(0, h - bh)), bw, bh,
                          alpha=draw(st.floats(0.05, 0.95)), rotation=draw(st.sampled_from([0.0, 15.0, 90.0])))
    return image, placement


@FAST
@given(blend_cases())
def test_inverse_blend_recovers_the_image_within_rounding(case):
    image, placement = case
    out = composite(image, LOGO, [placement])
    assert out.dtype == np.uint8
    _, opacity = mark_opacity(LOGO, placement)
    x0, y0, x1, y1 = placement.box_xyxy
    a = np.zeros(image.shape[:2], np.float32)
    a[y0:y1, x0:x1] = opacity
    # Outside the footprint nothing changes, exactly.
    assert np.array_equal(out[a == 0], image[a == 0])
    back = invert_composite(out, LOGO, [placement])
    bound = 0.5 / (1.0 - a[..., None]) + 1e-3
    assert np.all(np.abs(back - image.astype(np.float32)) <= bound)


@FAST
@given(blend_cases())
def test_float_blend_inverts_exactly(case):
    image, placement = case
    original = image.astype(np.float32)
    back = invert_composite(composite(original, LOGO, [placement]), LOGO, [placement])
    assert np.allclose(back, original, atol=1e-2)


# Certificates: from a sidecar mapping, and from a PNG's text chunks.

@FAST
@given(st.dictionaries(st.sampled_from(["certificate", "signature", "restore_payload", "x"]), json_values, max_size=4)
       | json_values)
def test_certificate_mapping_parser_raises_only_its_own_error(data):
    try:
        signed = SignedCertificate.from_dict(data, source="sidecar.json")
    except CertificateError:
        return
    assert isinstance(signed.certificate, dict)
    assert verify_certificate(signed, KEY.public) in ("valid", "foreign owner", "invalid signature")


text_values = st.one_of(st.text(max_size=40), json_values.map(json.dumps),
                        st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()))


@FAST
@given(st.dictionaries(st.sampled_from([PNG_PUBLIC, PNG_LEGACY_PARAMS, PNG_CERTIFICATE, PNG_SIGNATURE, PNG_PAYLOAD,
                                        PNG_SEALED]), text_values,
                       min_size=1, max_size=4))
def test_png_certificate_chunks_never_crash_the_reader(tmp_path_factory, chunks):
    path = tmp_path_factory.mktemp("png") / "img.png"
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_itxt(key, value)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(path, pnginfo=info)
    pf = read_protected(path)  # never raises for a readable image: a bad certificate becomes pf.problem
    assert pf.problem is None or str(path) in pf.problem
    assert pf.signed is None or isinstance(pf.signed.certificate, dict)
    assert pf.sealed_record is None or isinstance(pf.sealed_record, bytes)


# The DICOM private block.

_VALUES = {
    "LO": st.text(max_size=20), "UT": st.one_of(st.text(max_size=60), json_values.map(json.dumps)),
    "UL": st.one_of(st.integers(0, 2**32 - 1), st.lists(st.integers(0, 2**32 - 1), max_size=9)),
    "UI": st.from_regex(r"[0-9.]{1,20}", fullmatch=True), "OB": st.binary(max_size=40),
    "UN": st.binary(max_size=40),
}


@st.composite
def private_blocks(draw):
    elements = {}
    for offset in draw(st.lists(st.sampled_from([0x01, 0x02, 0x03, 0x04, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15]), unique=True)):
        vr = draw(st.sampled_from(sorted(_VALUES)))
        elements[offset] = (vr, draw(_VALUES[vr]))
    # a real format (the current one, or format 1 that earlier versions wrote), or whatever was drawn
    keep_format = draw(st.sampled_from([None, "medlocker-dicom/1", PRIVATE_FORMAT]))
    return elements, keep_format


@FAST
@given(private_blocks())
# Found by Hypothesis: text where the WSM boxes, the signature or a length belong.
@example(({3: ("LO", ""), 17: ("LO", ""), 2: ("LO", "{}")}, True))
@example(({3: ("LO", ":"), 4: ("LO", ""), 2: ("LO", "{}")}, True))
@example(({2: ("LO", "{}"), 20: ("OB", b"ab"), 21: ("LO", "x")}, True))
def test_private_block_parser_raises_only_its_own_error(block):
    elements, keep_format = block
    ds = Dataset()
    pb = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    if keep_format:
        pb.add_new(0x01, "LO", keep_format)
    for offset, (vr, value) in elements.items():
        if keep_format and offset == 0x01:
            continue
        pb.add_new(offset, vr, value)
    try:
        tags = read_medlocker_tags(ds, "block.dcm")
    except PrivateTagError as err:
        assert "block.dcm" in str(err)
        return
    assert isinstance(tags.params, dict) and (tags.certificate is None or isinstance(tags.certificate, dict))
    assert all(len(box) == 4 for box in tags.wsm_boxes)
    assert tags.sealed_record is None or isinstance(tags.sealed_record, bytes)


# Datalists.

@FAST
@given(json_values)
def test_datalist_item_check_never_raises(item):
    problem = datalist_item_problem(item)
    assert problem is None or isinstance(problem, str)
    if problem is None:
        assert isinstance(item, dict) and isinstance(item["image"], str) and item["image"].strip()


datalists = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from(["test", "training", "num_classes"]),
                    st.lists(json_values | st.fixed_dictionaries({"image": json_values}, optional={"label": json_values}),
                             max_size=4) | json_values, max_size=3),
)


@FAST
@given(datalists, st.booleans())
def test_datalist_reader_raises_only_value_or_file_errors(tmp_path_factory, data, as_text):
    folder = tmp_path_factory.mktemp("dl")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / "a.png")
    text = json.dumps(data) if not as_text else json.dumps(data)[:-1]  # also truncated JSON
    (folder / "datalist.json").write_text(text)
    try:
        items = load_datalist(folder, "test", require_label=False)
    except (ValueError, FileNotFoundError) as err:
        assert "datalist" in str(err)
        return
    assert all(Path(item["image"]).is_file() for item in items)


@FAST
@given(datalists)
def test_protect_datalist_reader_reports_every_bad_item(tmp_path_factory, data):
    from monai_medlocker.workflows.protect import find_protect_items

    folder = tmp_path_factory.mktemp("pdl")
    (folder / "datalist.json").write_text(json.dumps(data))
    try:
        items = find_protect_items(folder / "datalist.json")
    except ValueError as err:
        assert "datalist.json" in str(err) or "no PNG" in str(err)
        return
    for item in items:
        assert item.problem is None or str(folder / "datalist.json") in item.problem
        assert item.label is None or isinstance(item.label, int)


def test_strategies_reach_both_outcomes():
    """The properties above are not vacuous: valid inputs parse, invalid ones raise the project's error."""
    with pytest.raises(CertificateError):
        SignedCertificate.from_dict({"certificate": [1], "signature": ""})
    assert SignedCertificate.from_dict({"certificate": {}, "signature": ""}).certificate == {}
    ds = Dataset()
    pb = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    pb.add_new(0x01, "LO", PRIVATE_FORMAT)
    pb.add_new(0x02, "UT", "[]")
    with pytest.raises(PrivateTagError):
        read_medlocker_tags(ds)
