"""Grants: the unlock keys of chosen images, handed to someone allowed to restore them.

A grant file (JSON, format ``medlocker-grant/1``, mode 0600) holds the owner's key id and public
key (so that the holder always checks certificate signatures) and one HKDF-derived key per image
id. It never holds the master secret, so a grant for some images gives no way to unlock any other
image.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from monai_medlocker.certify.keys import KeyFileError, OwnerKey, OwnerPublicKey, _public_from, read_json_file, write_new_file
from monai_medlocker.certify.payload import derive_image_key

__all__ = ["GRANT_FORMAT", "GrantError", "Grant", "make_grant", "save_grant", "load_grant"]

GRANT_FORMAT = "medlocker-grant/1"


class GrantError(ValueError):
    """A grant file that is missing or malformed, or a grant that does not cover an image."""


@dataclass
class Grant:
    """Per-image unlock keys from one owner.

    Attributes:
        key_id: the owner's key id.
        image_keys: image id -> 32-byte key from :func:`~monai_medlocker.certify.payload.derive_image_key`.
        path: the file the grant was loaded from or saved to, for messages.
        public_key: the owner's public key (checks the certificates of the granted images).
    """

    key_id: str
    image_keys: dict[str, bytes] = field(repr=False)
    path: Path | None = None
    public_key: OwnerPublicKey | None = None

    def key_for(self, image_id: str) -> bytes:
        """The unlock key of ``image_id``.

        Raises:
            GrantError: the grant does not cover the image.
        """
        try:
            return self.image_keys[image_id]
        except KeyError:
            where = self.path if self.path is not None else "(not saved)"
            raise GrantError(f"grant {where} does not cover image {image_id}") from None

    def __contains__(self, image_id: object) -> bool:
        return image_id in self.image_keys

    def __len__(self) -> int:
        return len(self.image_keys)


def make_grant(key: OwnerKey, image_ids: Iterable[str]) -> Grant:
    """A grant covering exactly ``image_ids`` (duplicates collapse).

    Raises:
        ValueError: an image id that is not a non-empty string.
    """
    keys: dict[str, bytes] = {}
    for image_id in image_ids:
        if not isinstance(image_id, str) or not image_id:
            raise GrantError(f"image ids must be non-empty strings, got {image_id!r}")
        keys[image_id] = derive_image_key(key.master_secret, key.key_id, image_id)
    return Grant(key.key_id, keys, public_key=key.public)


def save_grant(path: str | os.PathLike, grant: Grant) -> Path:
    """Write a grant file (mode 0600, atomic); refuses to overwrite.

    Raises:
        FileExistsError: the file exists.
    """
    data = {
        "format": GRANT_FORMAT,
        "key_id": grant.key_id,
        **({"public_key": base64.b64encode(grant.public_key.raw).decode("ascii")} if grant.public_key else {}),
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "image_keys": {image_id: base64.b64encode(k).decode("ascii") for image_id, k in sorted(grant.image_keys.items())},
    }
    path = write_new_file(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"), private=True)
    grant.path = path
    return path


def load_grant(path: str | os.PathLike) -> Grant:
    """Read a grant file.

    Raises:
        GrantError: a missing file, not a grant, a wrong format version, or malformed keys.
    """
    path, data = read_json_file(path, "grant", GrantError)
    fmt = data["format"]
    if not fmt.startswith("medlocker-grant/"):
        raise GrantError(f"{path}: not a MedLocker grant file")
    if fmt != GRANT_FORMAT:
        raise GrantError(f"{path}: unsupported grant format version {fmt!r} (this version reads {GRANT_FORMAT})")
    key_id, entries = data.get("key_id"), data.get("image_keys")
    if not isinstance(key_id, str) or not key_id:
        raise GrantError(f"{path}: no key_id")
    if not isinstance(entries, dict):
        raise GrantError(f"{path}: no image_keys object")
    keys: dict[str, bytes] = {}
    for image_id, text in entries.items():
        try:
            raw = base64.b64decode(text, validate=True) if isinstance(text, str) else b""
        except (binascii.Error, ValueError):
            raw = b""
        if not image_id or len(raw) != 32:
            raise GrantError(f"{path}: the key for image {image_id!r} is not 32 bytes of base64")
        keys[image_id] = raw
    public_key = None
    if "public_key" in data:
        try:
            public_key = _public_from(path, data)
        except KeyFileError as err:
            raise GrantError(str(err)) from err
    return Grant(key_id, keys, path, public_key)
