"""``medlocker keygen OUT_PREFIX``: create an owner key pair (``OUT_PREFIX.key`` and ``OUT_PREFIX.pub``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

__all__ = ["add_subparser", "run", "add_passphrase_options", "read_passphrase"]


def add_passphrase_options(p: argparse.ArgumentParser, purpose: str) -> None:
    """Add ``--passphrase-env VAR`` / ``--passphrase-file FILE``; the passphrase itself never appears in argv."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--passphrase-env", dest="passphrase_env", metavar="VAR",
                       help=f"read the passphrase that {purpose} from environment variable VAR")
    group.add_argument("--passphrase-file", dest="passphrase_file", metavar="FILE",
                       help=f"read the passphrase that {purpose} from FILE (its first line)")


def read_passphrase(args: argparse.Namespace) -> str | None:
    """The passphrase named by ``--passphrase-env`` or ``--passphrase-file``, or ``None`` when neither is given.

    Raises:
        ValueError: an unset variable, an unreadable file, or an empty passphrase.
    """
    if getattr(args, "passphrase_env", None):
        name = args.passphrase_env
        if name not in os.environ:
            raise ValueError(f"--passphrase-env: environment variable {name} is not set")
        value, source = os.environ[name], f"environment variable {name}"
    elif getattr(args, "passphrase_file", None):
        path = Path(args.passphrase_file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"--passphrase-file: cannot read {path}: {err}") from err
        # The first line, without its line ending: files written by `echo` end in a newline.
        value, source = (text.splitlines() or [""])[0], str(path)
    else:
        return None
    if not value:
        raise ValueError(f"the passphrase from {source} is empty")
    return value


def add_subparser(subparsers) -> None:
    """Register the ``keygen`` subcommand."""
    p = subparsers.add_parser(
        "keygen", help="create an owner key pair for signing certificates and granting unlock keys",
        description="Write OUT_PREFIX.key (private, mode 0600: an Ed25519 signing key and the master secret from "
        "which every image's unlock key is derived) and OUT_PREFIX.pub (the public key that verifies certificates). "
        "Existing files are never overwritten. Without --passphrase-env or --passphrase-file the private key file "
        "is not encrypted.",
    )
    p.add_argument("out_prefix", metavar="OUT_PREFIX", help="path prefix of the two key files")
    add_passphrase_options(p, "encrypts the private key")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Generate and save the key pair; print its key id and paths."""
    from monai_medlocker.certify.keys import generate_owner_key, save_owner_key
    from monai_medlocker.cli import CLIError

    passphrase = read_passphrase(args)
    key = generate_owner_key()
    Path(args.out_prefix).parent.mkdir(parents=True, exist_ok=True)
    try:
        key_path, pub_path = save_owner_key(args.out_prefix, key, passphrase=passphrase)
    except FileExistsError as err:
        raise CLIError(str(err)) from err
    print(f"medlocker keygen: key id {key.key_id}")
    print(f"  private key: {key_path}" + (" (passphrase-protected)" if passphrase else " (not encrypted)"))
    print(f"  public key:  {pub_path}")
    return 0
