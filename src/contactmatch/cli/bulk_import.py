"""``contactmatch import``: register user_id,number lines in bulk, resumably."""

from __future__ import annotations

import argparse
import sys

from contactmatch.cli._args import add_cluster_argument

__all__ = ["add_parser", "run"]


def run(args: argparse.Namespace) -> int:
    """Import the file with a progress bar; an interrupted run resumes when run again."""
    from contactmatch.bulk import import_file
    from contactmatch.cli._output import Bar

    report_path = args.report or f"{args.file}.rejected.csv"
    with Bar("import") as bar:
        report = import_file(
            args.file,
            args.store,
            args.key,
            args.data_key,
            region=args.region,
            discoverability=args.discoverability,
            cluster=args.cluster,
            partition_size=args.partition_size,
            report_path=report_path,
            progress=bar.update,
        )
    rate = report.imported / report.seconds if report.seconds > 0 else 0.0
    reasons = ", ".join(f"{k} {v}" for k, v in report.reasons.items()) or "none"
    sys.stdout.write(
        f"imported {report.imported} of {report.lines} lines in {report.seconds:.1f} s "
        f"({rate:,.0f}/s on {report.workers} worker(s)); {report.resumed} of "
        f"{report.partitions} partitions were already done\n"
        f"rejected {report.rejected} ({reasons}); transferred {report.transferred}\n"
        f"rejected lines (masked): {report_path}\n"
    )
    if report.dashboard:
        sys.stdout.write(f"dask dashboard was at {report.dashboard}\n")
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the command and its options."""
    p = sub.add_parser(
        "import",
        help="register user_id,number lines in bulk (resumable; optionally on Dask)",
        description="Register every user_id,number line of FILE (CSV with a header, or plain "
        "lines; gzip accepted) in partitions, each written in one store transaction that "
        "records its completion: an interrupted import resumes when run again, and a "
        "finished one writes nothing. Rejected lines are listed, masked, in a report file.",
    )
    p.add_argument("file", metavar="FILE", help="the user_id,number file")
    p.add_argument("--store", required=True, help="store URL, e.g. postgresql://...")
    p.add_argument("--key", required=True, help="the OPRF server key file")
    p.add_argument("--data-key", required=True, help="the data key file (encrypts numbers)")
    p.add_argument("--region", default=None, help="region for numbers without +CC (e.g. IR)")
    p.add_argument(
        "--discoverability",
        choices=["everyone", "contacts", "nobody"],
        default="everyone",
        help="setting of the users created (default everyone)",
    )
    p.add_argument(
        "--partition-size",
        type=int,
        default=20_000,
        metavar="LINES",
        help="lines per partition and per store transaction (default 20000)",
    )
    p.add_argument(
        "--report", default=None, metavar="PATH", help="rejected lines (default FILE.rejected.csv)"
    )
    add_cluster_argument(p)
    # Ctrl-C says how to resume: every finished partition is recorded in the store.
    p.set_defaults(handler=run, resumable=True)
