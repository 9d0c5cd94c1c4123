"""``contactmatch keygen``: a new OPRF server key file, written 0600; prints only its id."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_parser", "run"]


def run(args: argparse.Namespace) -> int:
    """Generate the key and save it; an existing file is kept unless ``--force``."""
    from contactmatch.keys import ServerKey
    from contactmatch.oprf import Mode

    key = ServerKey.generate(Mode[args.mode.upper()])
    key.save(args.path, overwrite=args.force)
    # The key id is public; the key itself is never printed.
    sys.stdout.write(f"wrote {args.mode.upper()} key {key.key_id} to {args.path} (mode 0600)\n")
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the command and its options."""
    p = sub.add_parser(
        "keygen",
        help="generate an OPRF server key file (0600)",
        description="Generate a ristretto255 OPRF server key and write it to PATH with 0600 "
        "permissions. Prints the public key id, never the key.",
    )
    p.add_argument("path", metavar="PATH", help="where to write the key file")
    p.add_argument(
        "--mode",
        choices=["oprf", "voprf"],
        default="oprf",
        help="protocol mode the key serves (default: oprf; voprf adds per-response proofs)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing key file")
    p.set_defaults(handler=run)
