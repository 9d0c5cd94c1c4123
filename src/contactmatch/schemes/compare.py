"""Compare scheme pairs on one synthetic workload (``contactmatch bench`` and the benchmark).

Registered users' tokens are computed once per token function and shared by its membership
methods, so what is compared is the discovery itself, not the registry build.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from contactmatch.schemes.base import get_scheme, scheme_names
from contactmatch.schemes.factory import make_server_tokens
from contactmatch.schemes.runner import RunReport, run_discovery
from contactmatch.schemes.server import SchemeServer
from contactmatch.schemes.tokens import ServerTokens

__all__ = ["Comparison", "compare", "compare_command", "workload"]

_PREFIXES = ("+98912", "+98935", "+98919", "+98901")


def workload(
    registry_size: int, book_size: int, *, hit_rate: float = 0.3, seed: int = 7
) -> tuple[list[str], list[str]]:
    """Synthetic registered numbers and a phone book with ``hit_rate`` of it registered."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible workload, not a secret
    numbers = list(
        dict.fromkeys(
            f"{_PREFIXES[i % 4]}{v:07d}"
            for i, v in enumerate(rng.sample(range(10**7), registry_size + book_size))
        )
    )
    registered = numbers[:registry_size]
    hits = rng.sample(registered, min(len(registered), int(book_size * hit_rate)))
    book = hits + numbers[registry_size : registry_size + book_size - len(hits)]
    rng.shuffle(book)
    return registered, book


@dataclass(frozen=True, slots=True, kw_only=True)
class Comparison:
    """One scheme's best run on the workload, and whether it agreed with the reference."""

    report: RunReport
    agrees: bool


def compare(
    schemes: Sequence[str],
    registered: Sequence[str],
    book: Sequence[str],
    *,
    anonymity: int = 64,
    repeat: int = 1,
    on_done: Callable[[], None] | None = None,
) -> Iterator[Comparison]:
    """Run each scheme on the same registry and book; yields as each finishes."""
    uids = [f"user-{i}" for i in range(len(registered))]
    expected = set(book) & set(registered)
    tokens_by_fn: dict[str, tuple[ServerTokens, list[bytes]]] = {}
    for name in schemes:
        scheme = get_scheme(name)
        if scheme.token not in tokens_by_fn:
            fn = make_server_tokens(scheme.token)
            tokens_by_fn[scheme.token] = (fn, fn.tokens(registered))
        fn, tokens = tokens_by_fn[scheme.token]
        server = SchemeServer(scheme, fn, anonymity=anonymity)
        server.add_tokens(uids, tokens)
        runs = [run_discovery(server, book) for _ in range(max(1, repeat))]
        best = min(runs, key=lambda r: r.client_cpu + r.server_cpu)
        if on_done is not None:
            on_done()
        yield Comparison(report=best, agrees=set(best.result.matches) == expected)


def compare_command(args: argparse.Namespace) -> int:
    """Body of ``contactmatch bench``: a rich table of every requested scheme."""
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    names = scheme_names() if args.schemes == "all" else args.schemes.split(",")
    for name in names:
        get_scheme(name)  # fail early on a typo
    registered, book = workload(args.registry, args.book)
    table = Table(title=f"{len(registered):,} registered, {len(book):,} contacts")
    for col in ("scheme", "rounds", "KiB up", "KiB down", "KiB setup", "client ms", "server ms"):
        table.add_column(col, justify="left" if col == "scheme" else "right")
    console = Console()
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("schemes", total=len(names))
        for c in compare(
            names,
            registered,
            book,
            anonymity=args.anonymity,
            on_done=lambda: bar.advance(task),
        ):
            r = c.report
            table.add_row(
                r.scheme + ("" if c.agrees else " [red](disagrees)[/]"),
                str(r.rounds),
                f"{r.bytes_up / 1024:,.1f}",
                f"{r.bytes_down / 1024:,.1f}",
                f"{r.bytes_setup / 1024:,.1f}",
                f"{r.client_cpu * 1000:,.1f}",
                f"{r.server_cpu * 1000:,.1f}",
            )
    console.print(table)
    return 0
