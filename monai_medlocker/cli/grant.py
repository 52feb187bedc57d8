"""``medlocker grant --key OWNER_KEY --images LIST_OR_DIR... --out GRANT``: unlock keys for chosen images."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from monai_medlocker.certify.seal import SIDECAR_SUFFIX
from monai_medlocker.cli.keygen import add_passphrase_options, read_passphrase

__all__ = ["add_subparser", "run", "image_ids_from"]


def add_subparser(subparsers) -> None:
    """Register the ``grant`` subcommand."""
    p = subparsers.add_parser(
        "grant", help="write a grant file with the unlock keys of chosen protected images",
        description="Derive the unlock key of each chosen image from the owner key and write them to GRANT (mode "
        "0600). A grant never holds the master secret: it opens exactly the images it lists. Each LIST_OR_DIR is "
        f"a folder of protected outputs (every *{SIDECAR_SUFFIX} sidecar below it that holds a signed certificate; "
        "sidecars without one are skipped), a protected image or its sidecar (the image id is read from its "
        "certificate), or a text file with one image id per line (blank lines and lines starting with '#' are "
        "ignored). Image ids are in 'medlocker verify --json' and in the protect run's private/manifest.jsonl.",
    )
    p.add_argument("--key", required=True, metavar="OWNER_KEY", help="the owner's private .key file")
    p.add_argument("--images", required=True, nargs="+", metavar="LIST_OR_DIR",
                   help="folders of protected outputs, protected images (PNG/DICOM) or sidecars, or files of image ids")
    p.add_argument("--out", required=True, metavar="GRANT", help="grant file to write (never overwritten)")
    add_passphrase_options(p, "unlocks the owner key")
    p.set_defaults(func=run)


def _ids_from_folder(folder: Path, key) -> tuple[list[str], int]:
    ids, skipped = [], 0
    for sidecar in sorted(folder.rglob(f"*{SIDECAR_SUFFIX}")):
        image_id = _id_from_sidecar(sidecar, key)
        if image_id is None:
            skipped += 1  # e.g. written before certificates existed, or without an owner key
        else:
            ids.append(image_id)
    return ids, skipped


def _id_from_sidecar(sidecar: Path, key) -> str | None:
    """The image id certified in a sidecar (``None``: it holds no certificate)."""
    from monai_medlocker.certify.certificate import CertificateError, SignedCertificate

    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{sidecar}: not a readable sidecar ({err})") from err
    if not isinstance(data, dict) or not isinstance(data.get("certificate"), dict):
        return None
    try:
        signed = SignedCertificate.from_dict(data, source=str(sidecar))
    except CertificateError as err:
        raise ValueError(f"{sidecar}: {err}") from err
    return _checked_id(sidecar, signed, key)


def _id_from_image(path: Path, key) -> str:
    """The image id certified in a protected image (embedded, or in the sidecar beside it)."""
    from monai_medlocker.certify.seal import read_protected

    pf = read_protected(path)
    if pf.problem:
        raise ValueError(pf.problem if str(path) in pf.problem else f"{path}: {pf.problem}")
    if pf.signed is None:
        raise ValueError(f"{path}: no MedLocker certificate in the image or beside it (was it protected with --key?)")
    return _checked_id(path, pf.signed, key)


def _checked_id(where: Path, signed, key) -> str:
    """The image id of a certificate signed by ``key``."""
    from monai_medlocker.certify.certificate import verify_certificate

    cert = signed.certificate
    if cert.get("key_id") != key.key_id:
        raise ValueError(f"{where}: its certificate belongs to key {cert.get('key_id')}, not to {key.key_id}")
    # A tampered image_id would make the owner hand out the key of some other image.
    status = verify_certificate(signed, key.public)
    if status != "valid":
        raise ValueError(f"{where}: the certificate's signature is not valid ({status})")
    image_id = cert.get("image_id")
    if not isinstance(image_id, str) or not image_id:
        raise ValueError(f"{where}: the certificate has no image_id")
    return image_id


def _is_protected_image(path: Path) -> bool:
    from monai_medlocker.io.dicom import is_dicom_file
    from monai_medlocker.io.image import SUPPORTED_SUFFIXES

    return path.suffix.lower() in SUPPORTED_SUFFIXES or is_dicom_file(path)


def _ids_from_list(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read the image id list ({err})") from err
    return [s for s in (line.strip() for line in lines) if s and not s.startswith("#")]


def image_ids_from(sources: str | Path | list, key) -> tuple[list[str], int]:
    """The image ids named by folders of sidecars, protected images or sidecars, and list files, without
    duplicates, and the number of skipped sidecars (in a folder, those without a certificate).

    Raises:
        FileNotFoundError: a source does not exist.
        ValueError: an unreadable image, sidecar or list, a file without a certificate, a certificate of
            another owner or with a bad signature.
    """
    ids, skipped = [], 0
    for source in [sources] if isinstance(sources, (str, Path)) else sources:
        source = Path(source)
        if source.is_dir():
            found, n = _ids_from_folder(source, key)
            ids += found
            skipped += n
        elif source.is_file() and source.name.endswith(SIDECAR_SUFFIX):
            image_id = _id_from_sidecar(source, key)
            if image_id is None:
                raise ValueError(f"{source}: the sidecar holds no certificate (was its image protected with --key?)")
            ids.append(image_id)
        elif source.is_file() and _is_protected_image(source):
            ids.append(_id_from_image(source, key))
        elif source.is_file():
            ids += _ids_from_list(source)
        else:
            raise FileNotFoundError(f"--images: {source} is neither a folder nor a file")
    return list(dict.fromkeys(ids)), skipped


def run(args: argparse.Namespace) -> int:
    """Write the grant and print how many images it covers."""
    from monai_medlocker.certify.grant import make_grant, save_grant
    from monai_medlocker.certify.keys import load_owner_key
    from monai_medlocker.cli import CLIError

    key = load_owner_key(args.key, passphrase=read_passphrase(args))
    ids, skipped = image_ids_from(args.images, key)
    if not ids:
        raise CLIError(f"no image ids found in {', '.join(args.images)}"
                       + (f" ({skipped} sidecars without a certificate)" if skipped else ""))
    try:
        path = save_grant(args.out, make_grant(key, ids))
    except FileExistsError as err:
        raise CLIError(str(err)) from err
    note = f"; skipped {skipped} sidecar{'s' if skipped != 1 else ''} without a certificate" if skipped else ""
    print(f"medlocker grant: {path} covers {len(ids)} image{'s' if len(ids) != 1 else ''} of key {key.key_id}{note}")
    return 0
