"""``medlocker grant --key OWNER_KEY --images LIST_OR_DIR --out GRANT``: unlock keys for chosen images."""

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
        "0600). A grant never holds the master secret: it opens exactly the images it lists. LIST_OR_DIR is "
        f"either a folder of protected outputs (every *{SIDECAR_SUFFIX} sidecar below it that holds a signed "
        "certificate; sidecars without one are skipped) or a text file with one image id per line (blank lines "
        "and lines starting with '#' are ignored).",
    )
    p.add_argument("--key", required=True, metavar="OWNER_KEY", help="the owner's private .key file")
    p.add_argument("--images", required=True, metavar="LIST_OR_DIR", help="folder of protected outputs, or a file of image ids")
    p.add_argument("--out", required=True, metavar="GRANT", help="grant file to write (never overwritten)")
    add_passphrase_options(p, "unlocks the owner key")
    p.set_defaults(func=run)


def _ids_from_folder(folder: Path, key) -> tuple[list[str], int]:
    from monai_medlocker.certify.certificate import CertificateError, SignedCertificate, verify_certificate

    ids, skipped = [], 0
    for sidecar in sorted(folder.rglob(f"*{SIDECAR_SUFFIX}")):
        try:
            data = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{sidecar}: not a readable sidecar ({err})") from err
        if not isinstance(data, dict) or not isinstance(data.get("certificate"), dict):
            skipped += 1  # e.g. written before certificates existed, or without an owner key
            continue
        cert = data["certificate"]
        if cert.get("key_id") != key.key_id:
            raise ValueError(f"{sidecar}: its certificate belongs to key {cert.get('key_id')}, not to {key.key_id}")
        try:
            status = verify_certificate(SignedCertificate.from_dict(data, source=str(sidecar)), key.public)
        except CertificateError as err:
            raise ValueError(f"{sidecar}: {err}") from err
        # A tampered image_id would make the owner hand out the key of some other image.
        if status != "valid":
            raise ValueError(f"{sidecar}: the certificate's signature is not valid ({status})")
        image_id = cert.get("image_id")
        if not isinstance(image_id, str) or not image_id:
            raise ValueError(f"{sidecar}: the certificate has no image_id")
        ids.append(image_id)
    return ids, skipped


def _ids_from_list(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read the image id list ({err})") from err
    return [s for s in (line.strip() for line in lines) if s and not s.startswith("#")]


def image_ids_from(source: str | Path, key) -> tuple[list[str], int]:
    """The image ids named by a folder of sidecars or a list file, without duplicates, and the skipped sidecars.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: an unreadable sidecar or list, a certificate of another owner or with a bad signature.
    """
    source = Path(source)
    if source.is_dir():
        ids, skipped = _ids_from_folder(source, key)
    elif source.is_file():
        ids, skipped = _ids_from_list(source), 0
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
        raise CLIError(f"no image ids found in {args.images}" + (f" ({skipped} sidecars without a certificate)" if skipped else ""))
    try:
        path = save_grant(args.out, make_grant(key, ids))
    except FileExistsError as err:
        raise CLIError(str(err)) from err
    note = f"; skipped {skipped} sidecar{'s' if skipped != 1 else ''} without a certificate" if skipped else ""
    print(f"medlocker grant: {path} covers {len(ids)} image{'s' if len(ids) != 1 else ''} of key {key.key_id}{note}")
    return 0
