"""``contactmatch demo``: run :func:`contactmatch.demo.run_demo` and render its report."""

from __future__ import annotations

import argparse
from pathlib import Path

from contactmatch.cli._args import positive_int

__all__ = ["add_parser", "run"]

_COLUMNS = (
    "flow",
    "sync",
    "matches",
    "to invite",
    "round trips",
    "KiB up",
    "KiB down",
    "KiB filter",
    "ms",
    "correct",
)


def run(args: argparse.Namespace) -> int:
    """Run the demo; exit status 1 if any flow disagrees with the ground truth."""
    from contactmatch.cli._output import (
        new_table,
        print_table,
        progress_bar,
        stdout_console,
        write_json,
    )
    from contactmatch.demo import run_demo

    with progress_bar("registering", args.users) as advance:
        done = 0

        def registered(now: int, total: int) -> None:
            nonlocal done
            del total
            advance(now - done)
            done = now

        report = run_demo(
            users=args.users, contacts=args.contacts, home=args.dir, progress=registered
        )
    status = 0 if report.ok else 1
    if args.json:
        write_json(report.as_dict())
        return status
    console = stdout_console()
    secs = report.register_seconds
    rate = report.users / secs if secs > 0 else 0.0
    console.print(
        f"registered {report.users:,} users in {secs:.1f} s ({rate:,.0f}/s: "
        "normalise, OPRF-evaluate, encrypt, store, index)"
    )
    table = new_table(
        f"Discovery over HTTP: {report.contacts:,} contacts, "
        f"{report.registered_in_book:,} registered",
        _COLUMNS,
        left=("flow", "sync"),
    )
    for r in report.runs:
        table.add_row(
            r.flow,
            r.sync,
            f"{r.matches:,}",
            f"{r.to_invite:,}",
            str(r.rounds),
            f"{r.bytes_up / 1024:,.1f}",
            f"{r.bytes_down / 1024:,.1f}",
            f"{r.bytes_filter / 1024:,.1f}" if r.bytes_filter else "0",
            f"{r.ms:,.0f}",
            "yes" if r.correct else "[red]NO[/]",
        )
    print_table(console, table)
    console.print(
        "Names and e-mails on the cards were dropped before anything was sent; the server "
        "saw blinded elements and tokens, never a number of the phone book.\n"
        f"Aggregate counters (no identifiers): {report.stats}"
    )
    return status


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the command and its options."""
    p = sub.add_parser(
        "demo",
        help="run the end-to-end demo on an embedded store",
        description="Register a synthetic population in an embedded SQLite store, start the "
        "HTTP server on localhost, and run discovery of a 1,000-contact phone book through "
        "each default flow; print matches, invitations, bytes and timings.",
    )
    p.add_argument("--users", type=positive_int, default=100_000, help="registered users (100,000)")
    p.add_argument("--contacts", type=positive_int, default=1_000, help="phone book size (1,000)")
    p.add_argument("--dir", type=Path, default=None, help="keep the store here")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=run)
