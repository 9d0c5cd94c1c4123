"""``contactmatch rotate``: re-derive every stored token under a new OPRF key, resumably."""

from __future__ import annotations

import argparse
import sys

from contactmatch.cli._args import add_cluster_argument

__all__ = ["add_parser", "run"]


def run(args: argparse.Namespace) -> int:
    """Rotate with a progress bar; an interrupted run resumes from the store's checkpoint."""
    from contactmatch.bulk import rotate_on_cluster
    from contactmatch.cli._output import Bar
    from contactmatch.keys import ServerKey

    new_key = ServerKey.load(args.new_key)
    with Bar("rotate") as bar:
        done = rotate_on_cluster(
            args.store,
            args.data_key,
            args.new_key,
            cluster=args.cluster,
            batch_size=args.batch_size,
            progress=lambda d, t: bar.update("rekey", d, t),
        )
    report = done.report
    sys.stdout.write(
        f"rotated to key {new_key.key_id}: {report.rekeyed} rekeyed, {report.skipped} skipped, "
        f"{report.passes} passes, {report.contacts_purged} uploaded tokens purged "
        f"({done.seconds:.1f} s on {done.workers} worker(s))\n"
    )
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the command and its options."""
    p = sub.add_parser(
        "rotate",
        help="re-derive every stored token under a new OPRF key (resumable; optionally on Dask)",
        description="Re-derive every registration's token under NEW_KEY from the encrypted "
        "numbers, in batches, with a checkpoint in the store so an interrupted run resumes. "
        "Serve the old and new keys side by side until clients have refreshed.",
    )
    p.add_argument("--store", required=True, help="store URL, e.g. sqlite:///registry.db")
    p.add_argument("--data-key", required=True, help="the data key file (decrypts numbers)")
    p.add_argument("--new-key", required=True, help="the new OPRF key file")
    p.add_argument("--batch-size", type=int, default=1000, help="users per batch (1000)")
    add_cluster_argument(p)
    p.set_defaults(handler=run, resumable=True)
