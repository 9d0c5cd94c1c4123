"""``contactmatch vacuum``: expire drained rate state and remove erased rows' residue."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["add_parser", "run"]


def run(args: argparse.Namespace) -> int:
    """Run the maintenance step and print its JSON report."""
    from contactmatch.maintenance import vacuum

    report = vacuum(args.store, seen_ttl=args.seen_ttl, keys_only=args.keys_only)
    sys.stdout.write(json.dumps(report, sort_keys=True) + "\n")
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the command and its options."""
    p = sub.add_parser(
        "vacuum",
        help="expire drained rate state and remove the residue of erased rows (scheduled)",
        description="Drop quota state that no longer affects a decision and rewrite what a "
        "store leaves behind after deletions (PostgreSQL: VACUUM FULL of the tables holding "
        "personal data; SQLite: checkpoint and VACUUM). Run --keys-only hourly and the full "
        "step daily; docs/storage.md (Erasure) states the deadline this gives. Prints JSON.",
    )
    p.add_argument("--store", required=True, help="store URL, e.g. postgresql://...")
    p.add_argument(
        "--keys-only",
        action="store_true",
        help="PostgreSQL: rewrite only the per-user key table (quick; makes residue undecryptable)",
    )
    p.add_argument(
        "--seen-ttl",
        type=float,
        default=10 * 86_400.0,
        metavar="SECONDS",
        help="seen-set lifetime: the longest 'new items' quota period (default 864000)",
    )
    p.set_defaults(handler=run)
