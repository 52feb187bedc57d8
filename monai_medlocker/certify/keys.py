"""Owner keys: an Ed25519 signing key plus a 32-byte master secret for unlock keys.

An owner key signs certificates (who watermarked which image, with which parameters) and derives
the per-image keys that decrypt restore payloads (see :mod:`monai_medlocker.certify.payload`).
It lives in two JSON files:

* ``PREFIX.key`` (private, mode 0600): format ``medlocker-owner-key/1``, the key id, the raw public
  key, the signing key as PKCS#8 PEM and the master secret. With a passphrase the PEM is encrypted
  by ``cryptography``'s best available PKCS#8 encryption and the master secret by AES-256-GCM under a
  Scrypt-derived key (random salt; the format and key id are the associated data, so the secret
  cannot be moved into another key file).
* ``PREFIX.pub`` (shareable): format ``medlocker-owner-pub/1``, the key id and the raw public key.

The key id is ``"ed25519:"`` plus the first 32 hex digits of SHA-256 over the raw 32-byte public key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

__all__ = [
    "KEY_FORMAT",
    "PUB_FORMAT",
    "MASTER_SECRET_BYTES",
    "KeyFileError",
    "OwnerKey",
    "OwnerPublicKey",
    "generate_owner_key",
    "save_owner_key",
    "load_owner_key",
    "load_public_key",
    "key_id_for",
]

KEY_FORMAT = "medlocker-owner-key/1"
PUB_FORMAT = "medlocker-owner-pub/1"
MASTER_SECRET_BYTES = 32

# Scrypt cost for passphrase-protected master secrets: 2**15 * 8 * 128 B = 32 MiB and about 0.1 s,
# the interactive-login setting recommended by the scrypt paper; stored per file so it can grow.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**15, 8, 1
_SCRYPT_MAX_MEMORY = 2**30  # bytes; refuse files that would make loading take minutes or gigabytes


class KeyFileError(ValueError):
    """A key file that is missing, malformed, locked by a passphrase, or inconsistent."""


def key_id_for(public_key: Ed25519PublicKey) -> str:
    """The key id of an Ed25519 public key: ``"ed25519:"`` + 32 hex digits of SHA-256(raw key)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:32]


@dataclass(frozen=True)
class OwnerPublicKey:
    """The public half of an owner key: verifies certificates.

    Attributes:
        verify_key: the Ed25519 public key.
    """

    verify_key: Ed25519PublicKey

    @property
    def key_id(self) -> str:
        return key_id_for(self.verify_key)

    @property
    def raw(self) -> bytes:
        """The raw 32-byte public key."""
        return self.verify_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class OwnerKey:
    """A private owner key.

    Attributes:
        signing_key: the Ed25519 private key that signs certificates.
        master_secret: 32 random bytes from which every image's unlock key is derived.
    """

    signing_key: Ed25519PrivateKey
    master_secret: bytes = field(repr=False)  # never printed in tracebacks or logs

    def __post_init__(self) -> None:
        if not isinstance(self.master_secret, bytes) or len(self.master_secret) != MASTER_SECRET_BYTES:
            raise ValueError(f"the master secret must be {MASTER_SECRET_BYTES} bytes")

    @property
    def public(self) -> OwnerPublicKey:
        return OwnerPublicKey(self.signing_key.public_key())

    @property
    def key_id(self) -> str:
        return key_id_for(self.signing_key.public_key())


def generate_owner_key() -> OwnerKey:
    """A fresh owner key from the operating system's CSPRNG."""
    return OwnerKey(Ed25519PrivateKey.generate(), secrets.token_bytes(MASTER_SECRET_BYTES))


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, path: Path, what: str) -> bytes:
    if not isinstance(text, str):
        raise KeyFileError(f"{path}: {what} is missing or not a string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise KeyFileError(f"{path}: {what} is not valid base64") from err


def write_new_file(path: str | os.PathLike, data: bytes, private: bool = True) -> Path:
    """Write ``data`` to a new file atomically; never replaces an existing file.

    The bytes go to a temporary file in the same folder (mode 0600 from its creation, before any
    byte is written), which is flushed to disk and then linked to ``path``, so a reader never sees a
    half-written file and a concurrent writer of the same name loses with ``FileExistsError``.

    Args:
        path: the file to create.
        data: its content.
        private: keep mode 0600; otherwise the file gets 0644 masked by the umask.

    Raises:
        FileExistsError: ``path`` already exists.
    """
    path = Path(path)
    if path.exists() or path.is_symlink():
        raise FileExistsError(f"{path} already exists; refusing to overwrite it")
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, 0o600)  # mkstemp already uses 0600; make it explicit before the first secret byte
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if not private:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o644 & ~umask)
        try:
            os.link(tmp, path)  # atomic and fails if path exists, unlike os.replace
        except FileExistsError:
            raise FileExistsError(f"{path} already exists; refusing to overwrite it") from None
        except OSError:
            # A filesystem without hard links: fall back to rename after the existence check above.
            if path.exists():
                raise FileExistsError(f"{path} already exists; refusing to overwrite it") from None
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _key_paths(prefix: str | os.PathLike) -> tuple[Path, Path]:
    text = os.fspath(prefix)
    for suffix in (".key", ".pub"):
        if text.endswith(suffix):  # "owner.key" means the prefix "owner", not "owner.key.key"
            text = text[: -len(suffix)]
    if not text or text.endswith(("/", os.sep)):
        raise ValueError(f"key prefix {os.fspath(prefix)!r} has no file name")
    return Path(text + ".key"), Path(text + ".pub")


def _scrypt_key(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode("utf-8"))


def _secret_aad(key_id: str) -> bytes:
    return f"{KEY_FORMAT}\x00master_secret\x00{key_id}".encode("utf-8")


def save_owner_key(prefix: str | os.PathLike, key: OwnerKey, passphrase: str | None = None) -> tuple[Path, Path]:
    """Write ``PREFIX.key`` (private, 0600) and ``PREFIX.pub``.

    Args:
        prefix: path prefix; a trailing ``.key`` or ``.pub`` is dropped.
        key: the owner key.
        passphrase: encrypts the signing key and the master secret when given (must not be empty).

    Returns:
        The paths of the private and the public key file.

    Raises:
        FileExistsError: either file exists already (neither is written then).
        ValueError: an empty passphrase.
    """
    key_path, pub_path = _key_paths(prefix)
    for path in (key_path, pub_path):
        if path.exists() or path.is_symlink():
            raise FileExistsError(f"{path} already exists; refusing to overwrite it")
    if passphrase is not None and not passphrase:
        raise ValueError("the passphrase is empty; give a non-empty one or none")
    key_id, raw_pub = key.key_id, key.public.raw
    if passphrase is None:
        encryption: serialization.KeySerializationEncryption = serialization.NoEncryption()
        secret: dict[str, Any] = {"encoding": "base64", "value": _b64(key.master_secret)}
    else:
        encryption = serialization.BestAvailableEncryption(passphrase.encode("utf-8"))
        salt, nonce = secrets.token_bytes(16), secrets.token_bytes(12)
        kek = _scrypt_key(passphrase, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)
        secret = {
            "encoding": "aes-256-gcm",
            "kdf": {"name": "scrypt", "salt": _b64(salt), "n": _SCRYPT_N, "r": _SCRYPT_R, "p": _SCRYPT_P},
            "nonce": _b64(nonce),
            "value": _b64(AESGCM(kek).encrypt(nonce, key.master_secret, _secret_aad(key_id))),
        }
    pem = key.signing_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    private = {
        "format": KEY_FORMAT,
        "key_id": key_id,
        "public_key": _b64(raw_pub),
        "encrypted": passphrase is not None,
        "signing_key_pem": pem.decode("ascii"),
        "master_secret": secret,
    }
    public = {"format": PUB_FORMAT, "key_id": key_id, "public_key": _b64(raw_pub)}
    write_new_file(key_path, (json.dumps(private, indent=2) + "\n").encode("utf-8"), private=True)
    try:
        write_new_file(pub_path, (json.dumps(public, indent=2) + "\n").encode("utf-8"), private=False)
    except BaseException:
        key_path.unlink()  # leave no half key pair behind
        raise
    return key_path, pub_path


def read_json_file(path: str | os.PathLike, kind: str, error: type[ValueError] = KeyFileError) -> tuple[Path, dict]:
    """A MedLocker JSON file (key, public key, grant) with a ``format`` field; ``error`` names what went wrong."""
    if path is None:  # a bundle config's null setting: one line, not a TypeError from Path(None)
        raise error(f"no {kind} file given")
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {kind} file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise error(f"{path}: not a MedLocker {kind} file (not JSON: {err})") from err
    if not isinstance(data, dict) or not isinstance(data.get("format"), str):
        raise error(f"{path}: not a MedLocker {kind} file (no format field)")
    return path, data


def _check_format(path: Path, data: dict, accepted: tuple[str, ...], kind: str) -> str:
    fmt = data["format"]
    if fmt in accepted:
        return fmt
    family = {f.rsplit("/", 1)[0] for f in accepted}
    if fmt.rsplit("/", 1)[0] in family:
        raise KeyFileError(f"{path}: unsupported {kind} format version {fmt!r} (this version reads {', '.join(accepted)})")
    raise KeyFileError(f"{path}: not a MedLocker {kind} file (format {fmt!r})")


def _public_from(path: Path, data: dict) -> OwnerPublicKey:
    raw = _unb64(data.get("public_key"), path, "public_key")
    if len(raw) != 32:
        raise KeyFileError(f"{path}: public_key must be 32 bytes, got {len(raw)}")
    pub = OwnerPublicKey(Ed25519PublicKey.from_public_bytes(raw))
    if data.get("key_id") != pub.key_id:
        raise KeyFileError(f"{path}: key_id {data.get('key_id')!r} does not match the public key ({pub.key_id})")
    return pub


def load_public_key(path: str | os.PathLike) -> OwnerPublicKey:
    """Read the public key from a ``.pub`` file, or the public part of a ``.key`` file (no passphrase needed).

    Raises:
        KeyFileError: a missing or malformed file, or a key id that does not match the key.
    """
    path, data = read_json_file(path, "public key")
    _check_format(path, data, (PUB_FORMAT, KEY_FORMAT), "key")
    return _public_from(path, data)


def _decrypt_secret(path: Path, secret: Any, key_id: str, passphrase: str | None) -> bytes:
    if not isinstance(secret, dict):
        raise KeyFileError(f"{path}: master_secret is missing")
    encoding = secret.get("encoding")
    if encoding == "base64":
        return _unb64(secret.get("value"), path, "master_secret")
    if encoding != "aes-256-gcm":
        raise KeyFileError(f"{path}: unknown master_secret encoding {encoding!r}")
    if passphrase is None:
        raise KeyFileError(f"{path}: the key is protected by a passphrase; none was given")
    kdf = secret.get("kdf")
    if not isinstance(kdf, dict) or kdf.get("name") != "scrypt":
        raise KeyFileError(f"{path}: master_secret has no scrypt parameters")
    n, r, p = kdf.get("n"), kdf.get("r"), kdf.get("p")
    sane = all(type(v) is int and v > 0 for v in (n, r, p))
    if not sane or n < 2 or n & (n - 1) or 128 * n * r > _SCRYPT_MAX_MEMORY or p > 16:
        raise KeyFileError(f"{path}: master_secret has unacceptable scrypt parameters n={n} r={r} p={p}")
    kek = _scrypt_key(passphrase, _unb64(kdf.get("salt"), path, "scrypt salt"), n, r, p)
    nonce = _unb64(secret.get("nonce"), path, "master_secret nonce")
    try:
        return AESGCM(kek).decrypt(nonce, _unb64(secret.get("value"), path, "master_secret"), _secret_aad(key_id))
    except (InvalidTag, ValueError) as err:
        raise KeyFileError(f"{path}: wrong passphrase (or the master secret was altered)") from err


def load_owner_key(path: str | os.PathLike, passphrase: str | None = None) -> OwnerKey:
    """Read a private ``.key`` file.

    Args:
        path: the ``.key`` file.
        passphrase: needed when the file was saved with one; ignored for an unencrypted file.

    Raises:
        KeyFileError: a missing or malformed file, a wrong format version, a passphrase needed but not
            given, a wrong passphrase, or a key id or public key that does not match the signing key.
    """
    path, data = read_json_file(path, "owner key")
    if data.get("format") == PUB_FORMAT:
        raise KeyFileError(f"{path}: this is a public key file; the private .key file is needed")
    _check_format(path, data, (KEY_FORMAT,), "owner key")
    stored_pub = _public_from(path, data)
    pem = data.get("signing_key_pem")
    if not isinstance(pem, str):
        raise KeyFileError(f"{path}: signing_key_pem is missing")
    encrypted = bool(data.get("encrypted"))
    if encrypted and passphrase is None:
        raise KeyFileError(f"{path}: the key is protected by a passphrase; none was given")
    password = passphrase.encode("utf-8") if encrypted and passphrase is not None else None
    try:
        signing = serialization.load_pem_private_key(pem.encode("ascii"), password=password)
    except TypeError as err:  # encrypted PEM without a password or the reverse: the flag lies
        raise KeyFileError(f"{path}: the 'encrypted' flag does not match the signing key ({err})") from err
    except ValueError as err:
        if encrypted:
            raise KeyFileError(f"{path}: wrong passphrase") from err
        raise KeyFileError(f"{path}: signing_key_pem is not a readable PKCS#8 key ({err})") from err
    if not isinstance(signing, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: the signing key is not an Ed25519 key")
    if key_id_for(signing.public_key()) != stored_pub.key_id:
        raise KeyFileError(f"{path}: key_id {stored_pub.key_id} does not match the signing key")
    secret = _decrypt_secret(path, data.get("master_secret"), stored_pub.key_id, passphrase if encrypted else None)
    if len(secret) != MASTER_SECRET_BYTES:
        raise KeyFileError(f"{path}: the master secret must be {MASTER_SECRET_BYTES} bytes, got {len(secret)}")
    return OwnerKey(signing, secret)
