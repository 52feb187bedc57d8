"""Restore payloads: the original pixels under the marks, compressed losslessly and encrypted per image.

Only the pixels inside the mark boxes change when an image is watermarked, so the original image is
the watermarked one with those boxes put back. :func:`pack_restore_payload` stores each box's
original pixels; :func:`encrypt_payload` seals them with AES-256-GCM under an image key that
:func:`derive_image_key` derives from the owner's master secret (HKDF-SHA256), with the certificate
digest as associated data, so a payload only opens for the certificate it was made with.

Packed format (version 1, big-endian)::

    b"MLRP" | version u8 | ndim u8 | height u32 | width u32 | channels u32 | n_boxes u32
    n_boxes x (x0 u32 | y0 u32 | x1 u32 | y1 u32 | codec u8 | length u32)
    the boxes' encoded pixels, concatenated in the same order

Version 2 (the imperceptible shield, :mod:`monai_medlocker.watermark.shield`, also changes pixels
outside the boxes) appends the residual ``original - protected`` outside the boxes::

    ... version 1 layout with version 2 ... | codec u8 | length u32 | the encoded residual

The residual is stored offset by 128 as an H x W x C uint8 image (zero inside the boxes; the shield's
values are within [-4, 4], any within [-128, 127] are accepted), encoded by the smaller of WebP
lossless (as the boxes) and LZMA (preset 6) of its raw bytes. A payload without a residual (no
shield) is written as version 1, byte for byte as before, and version 1 payloads stay readable.

Version 3 (a DICOM source) always has the residual header (length 0: no residual) and then the
original file's record, so that unlock gives back the original file content, not only its pixels::

    ... version 2 layout with version 3 ... | length u32 | the record (:func:`~monai_medlocker.io.dicom.source_archive`)
Measured by ``benchmarks/bench_shield.py`` (``payload_bytes`` in benchmarks/results/shield/).

Codec choice, measured ad hoc during development (no benchmark in the repo repeats it) on
128-307 px crops of synthetic fundus photographs (256-1024 px) and of the shipped real retina
sample, as compressed size / raw size: WebP lossless (Pillow, effort 4)
0.15-0.29, PNG (Pillow, optimize) 0.22-0.39, LZMA on a LOCO-I (MED) prediction residual
0.17-0.36, LZMA on a left-neighbour delta 0.22-0.44, zlib on that delta 0.35-0.48. WebP lossless is
the smallest, so it is the codec for RGB boxes, at method 1 / quality 50: on a 256 px box of a 1024 px
synthetic image that is 15 ms for 31 KB, against 52 ms for 30 KB at method 4 / quality 75 (the
certify step must stay a few percent of the protect time; benchmarks/bench_certify.py). PNG serves other channel
counts and Pillow builds without WebP; a box that would not shrink is stored raw. Every encoded box
is decoded again at packing time and checked bit for bit before it is accepted.

Encrypted blob: version u8 | 12-byte nonce | AES-256-GCM ciphertext and tag. Version 1 encrypts the
plaintext as it is; version 2 (written since issue 18) first pads it with 0x80 and zeros to
:func:`padded_length`, because a blob's length is public and would otherwise follow its content.
Both versions are read.
"""

from __future__ import annotations

import io
import lzma
import secrets
import struct
from typing import Sequence

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from PIL import Image, features

__all__ = [
    "PayloadError",
    "derive_image_key",
    "derive_subkey",
    "pack_restore_payload",
    "apply_restore_payload",
    "restore_payload_source_file",
    "footprint_bytes",
    "encrypt_payload",
    "decrypt_payload",
    "padded_length",
]

_MAGIC = b"MLRP"
_PACK_VERSION = 1
_PACK_VERSION_RESIDUAL = 2  # version 1 plus the residual outside the boxes (shield mode)
_PACK_VERSION_SOURCE = 3  # version 2 (residual length 0: none) plus the original file (a DICOM source)
_READ_VERSIONS = (_PACK_VERSION, _PACK_VERSION_RESIDUAL, _PACK_VERSION_SOURCE)
_HEADER = struct.Struct(">4sBBIIII")
_BOX = struct.Struct(">IIIIBI")
_RESIDUAL = struct.Struct(">BI")
_SOURCE_LENGTH = struct.Struct(">I")
_RESIDUAL_OFFSET = 128
_CODEC_RAW, _CODEC_PNG, _CODEC_WEBP, _CODEC_LZMA = 0, 1, 2, 3
_CODEC_FORMATS = {_CODEC_PNG: "PNG", _CODEC_WEBP: "WEBP"}
_WEBP_MAX_SIDE = 16383  # the WebP format's limit

_BLOB_VERSION = 1
# Version 2: the plaintext is padded (0x80 then zeros) to a bucket, so the blob's public length does
# not follow its content (a sealed record grows with the lesion boxes, i.e. with the grade).
_BLOB_VERSION_PADDED = 2
_NONCE_BYTES = 12
_TAG_BYTES = 16
_HKDF_INFO = b"medlocker-restore/1\x00"


class PayloadError(ValueError):
    """A restore payload that does not fit its image, is malformed, or fails authentication."""


def derive_image_key(master_secret: bytes, key_id: str, image_id: str) -> bytes:
    """The 32-byte unlock key of one image: HKDF-SHA256(master_secret, salt=key_id, info=tag + image_id).

    Grants hand out these keys, never the master secret; one image's key reveals nothing about another's.
    """
    if not isinstance(master_secret, bytes) or len(master_secret) != 32:
        raise ValueError("the master secret must be 32 bytes")
    if not isinstance(image_id, str) or not image_id:
        raise ValueError(f"image id must be a non-empty string, got {image_id!r}")
    return derive_subkey(master_secret, key_id.encode("utf-8"), _HKDF_INFO + image_id.encode("utf-8"))


def derive_subkey(secret: bytes, salt: bytes, info: bytes) -> bytes:
    """32 bytes of HKDF-SHA256 from a 32-byte secret: one purpose (``info``) per derived key."""
    if not isinstance(secret, bytes) or len(secret) != 32:
        raise ValueError("the secret must be 32 bytes")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt or None, info=info).derive(secret)


# --------------------------------------------------------------------------------------------------
# Packing
# --------------------------------------------------------------------------------------------------


def _layout(shape: tuple[int, ...], source: str) -> tuple[int, int, int]:
    if len(shape) == 2:
        return shape[0], shape[1], 1
    if len(shape) == 3 and shape[2] in (1, 3, 4):
        return shape[0], shape[1], shape[2]
    raise PayloadError(f"{source}: expected an H x W x C image with C in 1, 3, 4, got shape {tuple(shape)}")


def _check_boxes(boxes: Sequence[Sequence[int]], height: int, width: int, source: str) -> list[tuple[int, int, int, int]]:
    out: list[tuple[int, int, int, int]] = []
    for box in boxes:
        try:
            x0, y0, x1, y1 = (int(v) for v in box)
        except (TypeError, ValueError) as err:
            raise PayloadError(f"{source}: a box must be four integers (x0, y0, x1, y1), got {box!r}") from err
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise PayloadError(f"{source}: box {(x0, y0, x1, y1)} is empty or outside the {width}x{height} image")
        for other in out:
            if x0 < other[2] and other[0] < x1 and y0 < other[3] and other[1] < y1:
                raise PayloadError(f"{source}: boxes {other} and {(x0, y0, x1, y1)} overlap")
        out.append((x0, y0, x1, y1))
    return out


def footprint_bytes(shape: Sequence[int], boxes: Sequence[Sequence[int]]) -> int:
    """The raw size of the boxes' pixels (sum of w * h * C bytes): the yardstick for the payload size."""
    channels = shape[2] if len(shape) == 3 else 1
    return sum((int(b[2]) - int(b[0])) * (int(b[3]) - int(b[1])) * channels for b in boxes)


def _pil_image(crop: np.ndarray) -> Image.Image:
    if crop.ndim == 2 or crop.shape[2] == 1:
        return Image.fromarray(crop.reshape(crop.shape[:2]), "L")
    return Image.fromarray(crop, "RGB" if crop.shape[2] == 3 else "RGBA")


def _decode(data: bytes, codec: int, shape: tuple[int, ...], source: str) -> np.ndarray:
    if codec == _CODEC_RAW:
        if len(data) != int(np.prod(shape)):
            raise PayloadError(f"{source}: a raw box holds {len(data)} bytes, expected {int(np.prod(shape))}")
        return np.frombuffer(data, dtype=np.uint8).reshape(shape)
    if codec == _CODEC_LZMA:
        expected = int(np.prod(shape))
        try:
            raw = lzma.LZMADecompressor().decompress(data, max_length=expected + 1)  # no decompression bombs
        except lzma.LZMAError as err:
            raise PayloadError(f"{source}: LZMA data is unreadable ({err})") from err
        if len(raw) != expected:
            raise PayloadError(f"{source}: LZMA data holds {len(raw)} bytes, expected {expected}")
        return np.frombuffer(raw, dtype=np.uint8).reshape(shape)
    if codec not in _CODEC_FORMATS:
        raise PayloadError(f"{source}: unknown box codec {codec}")
    try:
        img = Image.open(io.BytesIO(data), formats=[_CODEC_FORMATS[codec]])
        if img.size != (shape[1], shape[0]):  # checked before decoding: no decompression bombs
            raise PayloadError(f"{source}: a box image is {img.size[0]}x{img.size[1]}, expected {shape[1]}x{shape[0]}")
        img.load()
    except PayloadError:
        raise
    except Exception as err:  # Pillow raises many types for corrupt streams
        raise PayloadError(f"{source}: a box's {_CODEC_FORMATS[codec]} data is unreadable ({err})") from err
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape != shape:
        raise PayloadError(f"{source}: a box decodes to shape {arr.shape}, expected {shape}")
    return arr


def _encode(crop: np.ndarray, try_lzma: bool = False) -> tuple[int, bytes]:
    """The smallest verified encoding of one box: WebP lossless for RGB, else PNG, else raw.

    ``try_lzma`` (the shield's residual, noise-like) also tries LZMA and keeps the smaller.
    """
    raw = crop.tobytes()
    if try_lzma:
        best = _encode(crop)
        data = lzma.compress(raw, preset=6)
        if len(data) < len(best[1]) and np.array_equal(_decode(data, _CODEC_LZMA, crop.shape, "packing"), crop):
            return _CODEC_LZMA, data
        return best
    attempts = []
    if crop.shape[2] == 3 and max(crop.shape[:2]) <= _WEBP_MAX_SIDE and features.check("webp"):
        attempts.append((_CODEC_WEBP, {"lossless": True, "quality": 50, "method": 1, "exact": True}))
    attempts.append((_CODEC_PNG, {"optimize": True}))
    for codec, options in attempts:
        buf = io.BytesIO()
        _pil_image(crop).save(buf, _CODEC_FORMATS[codec], **options)
        data = buf.getvalue()
        # Lossless by contract, but verified: a payload that restores wrong pixels is worse than a big one.
        if len(data) < len(raw) and np.array_equal(_decode(data, codec, crop.shape, "packing"), crop):
            return codec, data
    return _CODEC_RAW, raw


def _residual(original: np.ndarray, protected: np.ndarray, boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    """``original - protected`` (int16) outside the boxes, zero inside them."""
    residual = original.astype(np.int16) - protected.astype(np.int16)
    for x0, y0, x1, y1 in boxes:
        residual[y0:y1, x0:x1] = 0
    return residual


def pack_restore_payload(original: np.ndarray, boxes: Sequence[Sequence[int]],
                         protected: np.ndarray | None = None, source_file: bytes | None = None) -> bytes:
    """Pack the original pixels inside each mark box, losslessly compressed, and any change outside them.

    Args:
        original: the unwatermarked H x W x C (or H x W) uint8 image.
        boxes: non-overlapping xyxy boxes (end-exclusive) inside the image.
        protected: the protected image. Where it differs from ``original`` outside the boxes (the
            shield), the residual is stored too (version 2); ``None`` or no difference: version 1.
        source_file: the original file's record (a DICOM source's, see
            :func:`~monai_medlocker.io.dicom.source_archive`), stored as it is (version 3), so that unlock
            gives back the original file content; :func:`restore_payload_source_file` reads it back.

    Raises:
        PayloadError: a non-uint8 image, an unsupported shape, boxes outside the image or overlapping,
            or a protected image of another shape or differing by more than 127 grey levels outside the boxes.
    """
    original = np.asarray(original)
    if original.dtype != np.uint8:
        raise PayloadError(f"restore payload: the original image must be uint8, got {original.dtype}")
    height, width, channels = _layout(original.shape, "restore payload")
    checked = _check_boxes(boxes, height, width, "restore payload")
    img = original.reshape(height, width, channels)
    residual = None
    if protected is not None:
        protected = np.asarray(protected)
        if protected.shape != original.shape or protected.dtype != np.uint8:
            raise PayloadError(f"restore payload: the protected image is {protected.shape} {protected.dtype}, "
                               f"expected {original.shape} uint8 like the original")
        residual = _residual(img, protected.reshape(height, width, channels), checked)
        if not residual.any():
            residual = None
        elif np.abs(residual).max() > _RESIDUAL_OFFSET - 1:
            raise PayloadError(f"restore payload: the protected image differs from the original by "
                               f"{int(np.abs(residual).max())} grey levels outside the logo boxes (at most "
                               f"{_RESIDUAL_OFFSET - 1} can be stored)")
    entries, blobs = [], []
    for x0, y0, x1, y1 in checked:
        codec, data = _encode(np.ascontiguousarray(img[y0:y1, x0:x1]))
        entries.append(_BOX.pack(x0, y0, x1, y1, codec, len(data)))
        blobs.append(data)
    version = _PACK_VERSION if residual is None else _PACK_VERSION_RESIDUAL
    if source_file is not None:
        version = _PACK_VERSION_SOURCE
    header = _HEADER.pack(_MAGIC, version, original.ndim, height, width, channels, len(checked))
    packed = header + b"".join(entries) + b"".join(blobs)
    if residual is not None:
        codec, data = _encode((residual + _RESIDUAL_OFFSET).astype(np.uint8), try_lzma=True)
        packed += _RESIDUAL.pack(codec, len(data)) + data
    elif version == _PACK_VERSION_SOURCE:
        packed += _RESIDUAL.pack(_CODEC_RAW, 0)
    if source_file is not None:
        packed += _SOURCE_LENGTH.pack(len(source_file)) + bytes(source_file)
    return packed


def restore_payload_source_file(packed: bytes, source: str = "restore payload") -> bytes | None:
    """The original file's record a version 3 payload carries, or ``None`` (versions 1 and 2).

    Raises:
        PayloadError: a malformed payload.
    """
    packed = bytes(packed)
    if len(packed) < _HEADER.size or _HEADER.unpack_from(packed)[0] != _MAGIC:
        raise PayloadError(f"{source}: not a MedLocker restore payload")
    _, version, _, _, _, _, n_boxes = _HEADER.unpack_from(packed)
    if version != _PACK_VERSION_SOURCE:
        return None
    return _sections(packed, n_boxes, version, source)[2]


def _sections(packed: bytes, n_boxes: int, version: int, source: str) -> tuple[int, tuple[int, int, int] | None, bytes | None]:
    """Where the boxes' data end, the residual (codec, offset, length) and the original file's record."""
    offset = _HEADER.size + n_boxes * _BOX.size
    if len(packed) < offset:
        raise PayloadError(f"{source}: truncated box table ({n_boxes} boxes)")
    for i in range(n_boxes):
        offset += _BOX.unpack_from(packed, _HEADER.size + i * _BOX.size)[5]
    if offset > len(packed):
        raise PayloadError(f"{source}: truncated pixel data")
    residual = source_file = None
    if version in (_PACK_VERSION_RESIDUAL, _PACK_VERSION_SOURCE):
        if offset + _RESIDUAL.size > len(packed):
            raise PayloadError(f"{source}: truncated residual header")
        codec, length = _RESIDUAL.unpack_from(packed, offset)
        offset += _RESIDUAL.size
        if offset + length > len(packed):
            raise PayloadError(f"{source}: truncated residual data")
        if length or version == _PACK_VERSION_RESIDUAL:
            residual = (codec, offset, length)
        offset += length
    if version == _PACK_VERSION_SOURCE:
        if offset + _SOURCE_LENGTH.size > len(packed):
            raise PayloadError(f"{source}: truncated original-file header")
        (length,) = _SOURCE_LENGTH.unpack_from(packed, offset)
        offset += _SOURCE_LENGTH.size
        if offset + length != len(packed):
            raise PayloadError(f"{source}: the original-file record does not end the payload")
        source_file = packed[offset:offset + length]
        offset += length
    if offset != len(packed):
        raise PayloadError(f"{source}: {len(packed) - offset} unexpected bytes after the pixel data")
    return offset, residual, source_file


def apply_restore_payload(watermarked: np.ndarray, packed: bytes, source: str = "restore payload") -> np.ndarray:
    """A copy of the watermarked image with the payload's original pixels put back.

    Args:
        watermarked: the watermarked image, same shape as the original.
        packed: output of :func:`pack_restore_payload` (after decryption).
        source: names the payload (e.g. its sidecar file) in error messages.

    Raises:
        PayloadError: a malformed payload, or one whose image shape or boxes do not fit ``watermarked``.
    """
    watermarked = np.asarray(watermarked)
    packed = bytes(packed)
    if len(packed) < _HEADER.size:
        raise PayloadError(f"{source}: too short to be a restore payload ({len(packed)} bytes)")
    magic, version, ndim, height, width, channels, n_boxes = _HEADER.unpack_from(packed)
    if magic != _MAGIC:
        raise PayloadError(f"{source}: not a MedLocker restore payload")
    if version not in _READ_VERSIONS:
        raise PayloadError(f"{source}: unsupported restore payload version {version} (this version reads "
                           f"{', '.join(map(str, _READ_VERSIONS))})")
    expected = (height, width) if ndim == 2 else (height, width, channels)
    if watermarked.shape != expected:
        raise PayloadError(f"{source}: the payload is for a {expected} image, got {watermarked.shape}")
    if watermarked.dtype != np.uint8:
        raise PayloadError(f"{source}: the image must be uint8, got {watermarked.dtype}")
    offset = _HEADER.size + n_boxes * _BOX.size
    if len(packed) < offset:
        raise PayloadError(f"{source}: truncated box table ({n_boxes} boxes)")
    table = [_BOX.unpack_from(packed, _HEADER.size + i * _BOX.size) for i in range(n_boxes)]
    checked = _check_boxes([entry[:4] for entry in table], height, width, source)
    out = np.array(watermarked, copy=True).reshape(height, width, channels)
    crops = []
    for x0, y0, x1, y1, codec, length in table:
        if offset + length > len(packed):
            raise PayloadError(f"{source}: truncated pixel data")
        crops.append(_decode(packed[offset:offset + length], codec, (y1 - y0, x1 - x0, channels), source))
        offset += length
    _, found, _ = _sections(packed, n_boxes, version, source)
    if found is not None:
        codec, at, length = found
        coded = _decode(packed[at:at + length], codec, (height, width, channels), source)
        residual = coded.astype(np.int16) - _RESIDUAL_OFFSET
        restored = out.astype(np.int16) + residual
        if restored.min() < 0 or restored.max() > 255:
            raise PayloadError(f"{source}: the residual does not fit this image (values leave 0-255)")
        out = restored.astype(np.uint8)
    for (x0, y0, x1, y1), crop in zip(checked, crops):
        out[y0:y1, x0:x1] = crop
    return out.reshape(watermarked.shape)


# --------------------------------------------------------------------------------------------------
# Encryption
# --------------------------------------------------------------------------------------------------


def padded_length(length: int, bucket: int) -> int:
    """The padded plaintext length of ``length`` bytes: the smallest ``bucket * 2**k`` above it.

    Every plaintext up to ``bucket - 1`` bytes pads to ``bucket``; longer ones to coarse powers of two,
    so the length tells at most which doubling the content falls in.
    """
    if bucket < 1:
        raise ValueError(f"the padding bucket must be at least 1 byte, got {bucket}")
    size = bucket
    while size <= length:  # at least one padding byte (the 0x80 marker)
        size *= 2
    return size


def encrypt_payload(packed: bytes, image_key: bytes, aad: bytes, pad_bucket: int | None = None) -> bytes:
    """Seal a packed payload: version byte | 12-byte random nonce | AES-256-GCM ciphertext and tag.

    Args:
        packed: the packed payload.
        image_key: the image's 32-byte key from :func:`derive_image_key`.
        aad: associated data, normally :func:`~monai_medlocker.certify.certificate.certificate_digest`.
        pad_bucket: pad the plaintext to :func:`padded_length` (version 2 blob); ``None``: no padding (version 1).
    """
    if len(image_key) != 32:
        raise ValueError(f"the image key must be 32 bytes, got {len(image_key)}")
    version, plain = _BLOB_VERSION, bytes(packed)
    if pad_bucket is not None:
        version = _BLOB_VERSION_PADDED
        plain += b"\x80" + bytes(padded_length(len(plain), pad_bucket) - len(plain) - 1)
    nonce = secrets.token_bytes(_NONCE_BYTES)  # random 96-bit nonces: safe for far more payloads per key than exist
    return bytes([version]) + nonce + AESGCM(image_key).encrypt(nonce, plain, bytes(aad))


def decrypt_payload(blob: bytes, image_key: bytes, aad: bytes, source: str = "restore payload") -> bytes:
    """Open a sealed payload.

    Args:
        blob: output of :func:`encrypt_payload`.
        image_key: the image's 32-byte key.
        aad: the associated data used when sealing (the certificate digest).
        source: names the payload (e.g. its sidecar file) in error messages.

    Raises:
        PayloadError: a malformed blob, or failed authentication: a wrong key, an altered payload or
            an altered certificate (AES-GCM cannot tell these apart).
    """
    blob = bytes(blob)
    if len(blob) < 1 + _NONCE_BYTES + _TAG_BYTES:
        raise PayloadError(f"{source}: too short to be an encrypted restore payload ({len(blob)} bytes)")
    if blob[0] not in (_BLOB_VERSION, _BLOB_VERSION_PADDED):
        raise PayloadError(f"{source}: unsupported encrypted payload version {blob[0]} (this version reads "
                           f"{_BLOB_VERSION} and {_BLOB_VERSION_PADDED})")
    if len(image_key) != 32:
        raise PayloadError(f"{source}: the image key must be 32 bytes, got {len(image_key)}")
    nonce, body = blob[1:1 + _NONCE_BYTES], blob[1 + _NONCE_BYTES:]
    try:
        plain = AESGCM(bytes(image_key)).decrypt(nonce, body, bytes(aad))
    except InvalidTag:
        raise PayloadError(
            f"{source}: cannot decrypt the restore payload: wrong key, or the payload or its certificate was "
            "altered (AES-GCM authentication failed; these cases cannot be told apart)"
        ) from None
    if blob[0] == _BLOB_VERSION_PADDED:
        end = len(plain.rstrip(b"\x00"))
        if end == 0 or plain[end - 1] != 0x80:
            raise PayloadError(f"{source}: the decrypted data has no valid padding")
        plain = plain[:end - 1]
    return plain
