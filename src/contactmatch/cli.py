"""The ``contactmatch`` command line.

Each subcommand imports what it needs inside its handler, so that ``contactmatch --help`` and
``contactmatch normalize`` stay fast and never load optional extras they do not use.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from contactmatch._version import __version__
from contactmatch.errors import ContactMatchError, mask_number

if TYPE_CHECKING:
    from rich.progress import TaskID

__all__ = ["main"]


def _read_source(path: str) -> bytes:
    # Bytes: read_contacts decodes them and refuses non-UTF-8 input with a typed error
    # (read_text would raise a bare UnicodeDecodeError, i.e. a traceback).
    if path == "-":
        return sys.stdin.buffer.read()
    return Path(path).read_bytes()


def _cmd_normalize(args: argparse.Namespace) -> int:
    from contactmatch.contacts import read_contacts
    from contactmatch.phone import normalize_many

    raws = read_contacts(_read_source(args.file))
    batch = normalize_many(raws, args.region, mobile_only=not args.all_types)
    seen: set[str] = set()
    out = sys.stdout
    for number in batch.numbers:
        if number is None or (args.unique and number in seen):
            continue
        seen.add(number)
        out.write(number + "\n")
    for index, reason in batch.rejected:
        # Rejects go to stderr masked (digits only: a CSV line may hold a name too), as they
        # may be typos of real numbers.
        masked = mask_number(raws[index])
        shown = f" ({masked})" if masked else ""
        sys.stderr.write(f"entry {index + 1}{shown}: {reason}\n")
    accepted = len(raws) - len(batch.rejected)
    sys.stderr.write(
        f"{accepted} of {len(raws)} entries normalised, {len(batch.rejected)} rejected\n"
    )
    return 0


def _cmd_keygen(args: argparse.Namespace) -> int:
    from contactmatch.keys import keygen_main

    key_id = keygen_main(args.path, force=args.force, mode=args.mode)
    # The key id is public; the key itself is never printed.
    sys.stdout.write(f"wrote {args.mode.upper()} key {key_id} to {args.path} (mode 0600)\n")
    return 0


class _Bar:
    """A rich progress bar on stderr for the bulk commands (the library only calls back)."""

    def __init__(self, label: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self.label = label
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> _Bar:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def update(self, stage: str, done: int, total: int | None) -> None:
        task = self.tasks.get(stage)
        if task is None:
            task = self.tasks[stage] = self.progress.add_task(f"{self.label}: {stage}", total=total)
        self.progress.update(task, completed=done, total=total)


def _interrupted() -> int:
    sys.stderr.write("contactmatch: interrupted; run again to resume\n")
    return 130


def _cmd_import(args: argparse.Namespace) -> int:
    from contactmatch.bulk import import_file

    report_path = args.report or f"{args.file}.rejected.csv"
    try:
        with _Bar("import") as bar:
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
    except KeyboardInterrupt:
        return _interrupted()
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


def _cmd_rotate(args: argparse.Namespace) -> int:
    from contactmatch.bulk import rotate_on_cluster
    from contactmatch.keys import ServerKey

    new_key = ServerKey.load(args.new_key)
    try:
        with _Bar("rotate") as bar:
            done = rotate_on_cluster(
                args.store,
                args.data_key,
                args.new_key,
                cluster=args.cluster,
                batch_size=args.batch_size,
                progress=lambda d, t: bar.update("rekey", d, t),
            )
    except KeyboardInterrupt:
        return _interrupted()
    report = done.report
    sys.stdout.write(
        f"rotated to key {new_key.key_id}: {report.rekeyed} rekeyed, {report.skipped} skipped, "
        f"{report.passes} passes, {report.contacts_purged} uploaded tokens purged "
        f"({done.seconds:.1f} s on {done.workers} worker(s))\n"
    )
    return 0


def _add_cluster_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cluster",
        default=None,
        metavar="ADDRESS|local:N",
        help="run on a Dask distributed cluster: a scheduler address (tcp://host:8786) or "
        "local:N for N local worker processes (needs contactmatch[cluster]); default: this "
        "process, every core",
    )


def _cmd_vacuum(args: argparse.Namespace) -> int:
    import json

    from contactmatch.maintenance import vacuum

    report = vacuum(args.store, seen_ttl=args.seen_ttl, keys_only=args.keys_only)
    sys.stdout.write(json.dumps(report, sort_keys=True) + "\n")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from contactmatch.schemes.compare import compare_command

    return compare_command(args)


def _cmd_serve(args: argparse.Namespace) -> int:
    from contactmatch.server.serve import serve_command

    return serve_command(args)


def _cmd_audit(args: argparse.Namespace) -> int:
    from contactmatch.audit import audit_command

    return audit_command(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from contactmatch.demo import run_demo

    return run_demo(args)


def add_audit_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``contactmatch audit`` options (here, so building the parser stays light)."""
    parser.add_argument("--enumeration", action="store_true", help="simulate many-account scrapers")
    parser.add_argument(
        "--hash-reversal", action="store_true", help="reverse unsalted sha256 tokens"
    )
    parser.add_argument("--leakage", action="store_true", help="print the what-leaks table")
    parser.add_argument(
        "--normal-user", action="store_true", help="check a person's syncs stay under quota"
    )
    g = parser.add_argument_group("enumeration")
    g.add_argument("--accounts", type=int, nargs="+", default=[10, 100], help="(10 100)")
    g.add_argument("--days", type=int, default=5, help="simulated days (5)")
    g.add_argument("--scheme", default="hmac+lookup", help="scheme attacked (hmac+lookup)")
    g.add_argument("--registry", type=int, default=5_000, help="registered users (5000)")
    g.add_argument("--plan", type=int, default=500_000, help="numbers in the plan (500000)")
    g.add_argument(
        "--quota-scale",
        type=float,
        default=0.05,
        help="multiply the default quotas by this (0.05: a 1/20-scale world that runs in "
        "seconds; 1 for the real quotas)",
    )
    g.add_argument("--store", default="memory://", help="store URL (memory://)")
    g.add_argument("--book", type=int, default=5_000, help="normal user's contacts (5000)")
    g.add_argument("--resyncs", type=int, default=10, help="normal user's daily re-syncs (10)")
    h = parser.add_argument_group("hash reversal")
    h.add_argument("--prefix", default="+98912", help="E.164 prefix of the range (+98912)")
    h.add_argument("--digits", type=int, default=6, help="digits after the prefix (6)")
    parser.add_argument("--seed", type=int, default=0, help="workload seed (0)")


def _add_bulk_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    _add_cluster_argument(p)
    p.set_defaults(handler=_cmd_import)

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
    _add_cluster_argument(p)
    p.set_defaults(handler=_cmd_rotate)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="contactmatch",
        description=(
            "Privacy-first contact discovery: normalise phone books to E.164, "
            "and match them against a registry without revealing them."
        ),
        epilog="Run 'contactmatch COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"contactmatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "normalize",
        help="turn a list of numbers or a vCard file into E.164 numbers",
        description=(
            "Read FILE (one number per line, vCard 3.0/4.0, or a JSON list of contacts; '-' "
            "for stdin) and write one E.164 number per accepted entry to stdout. Rejected "
            "entries go to stderr, masked, with a reason code. Names, photos and every other "
            "contact field are discarded."
        ),
    )
    p.add_argument("file", metavar="FILE", help="input file, or '-' for standard input")
    p.add_argument(
        "--region",
        type=str.upper,
        default=None,
        help="ISO 3166 region for numbers written without +CC (e.g. IR, DE)",
    )
    p.add_argument(
        "--all-types",
        action="store_true",
        help="accept every valid number type, not only mobile numbers",
    )
    p.add_argument("--unique", action="store_true", help="write each number once")
    p.set_defaults(handler=_cmd_normalize)

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
    p.set_defaults(handler=_cmd_keygen)

    _add_bulk_commands(sub)

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
    p.set_defaults(handler=_cmd_vacuum)

    p = sub.add_parser(
        "serve",
        help="serve the HTTP API with uvicorn (needs contactmatch[server])",
        description="Serve registration, discovery, filter downloads, settings and deletion "
        "over HTTP; see docs/http.md.",
    )
    # Without the [server] extra the options cannot be added; the handler then names the
    # pip install that fixes it.
    with contextlib.suppress(ImportError):
        from contactmatch.server.serve import add_serve_arguments

        add_serve_arguments(p)
    p.set_defaults(handler=_cmd_serve)

    p = sub.add_parser(
        "bench",
        help="compare matching schemes on a synthetic workload",
        description="Run scheme pairs in-process on one synthetic registry and phone book and "
        "print bytes up/down, round trips and CPU on each side.",
    )
    p.add_argument("--registry", type=int, default=20_000, help="registered users (20,000)")
    p.add_argument("--book", type=int, default=1_000, help="contacts in the phone book (1,000)")
    p.add_argument("--anonymity", type=int, default=64, help="target bucket size (64)")
    p.add_argument("--schemes", default="all", help="comma-separated scheme names, or 'all'")
    p.set_defaults(handler=_cmd_bench)

    p = sub.add_parser(
        "audit",
        help="attack lab: many-account enumeration, sha256 reversal, what leaks",
        description="Run the attack lab against the real service: scrapers with many accounts "
        "under a simulated clock (--enumeration), a normal user's syncs (--normal-user), "
        "brute-force reversal of unsalted sha256 tokens (--hash-reversal) and the what-leaks "
        "table with the quota bounds (--leakage); all of them by default.",
    )
    add_audit_arguments(p)
    p.set_defaults(handler=_cmd_audit)

    p = sub.add_parser(
        "demo",
        help="run the end-to-end demo on an embedded store",
        description="Register a synthetic population in an embedded SQLite store, start the "
        "HTTP server on localhost, and run discovery of a 1,000-contact phone book through "
        "each default flow; print matches, invitations, bytes and timings.",
    )
    p.add_argument("--users", type=int, default=100_000, help="registered users (100,000)")
    p.add_argument("--contacts", type=int, default=1_000, help="phone book size (1,000)")
    p.add_argument("--dir", type=Path, default=None, help="keep the store here")
    p.set_defaults(handler=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``contactmatch`` console script; returns the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except ContactMatchError as exc:
        # Library errors are user-facing and already masked; no traceback for them.
        sys.stderr.write(f"contactmatch: error: {exc}\n")
        return 2
    except OSError as exc:
        where = f": {Path(exc.filename).name}" if exc.filename else ""
        sys.stderr.write(f"contactmatch: error: {exc.strerror or exc}{where}\n")
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
