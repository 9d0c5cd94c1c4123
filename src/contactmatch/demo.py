"""``contactmatch demo``: the whole product on one machine, over real HTTP on localhost.

An embedded SQLite registry of a synthetic population (100,000 Iranian mobile numbers by
default), a 1,000-contact phone book written the way phones store numbers (30% of it
registered), and discovery through each default flow over the real HTTP server: a first sync
and a re-sync from the token cache. Prints what each flow found and what it cost.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from contactmatch.atrest import DataKey
from contactmatch.keys import ServerKey
from contactmatch.oprf import Mode
from contactmatch.service import DiscoveryClient, DiscoveryServer, ServiceSettings
from contactmatch.stores import open_store

if TYPE_CHECKING:
    from contactmatch.server import HttpServer

__all__ = ["phone_book", "population", "run_demo", "sample_contacts_path"]

_OPERATORS = ("912", "935", "919", "901", "990", "913", "936", "921")
_PERSIAN = str.maketrans("0123456789", "۰۱۲۳۴۵۶۷۸۹")


def sample_contacts_path() -> Path:
    """Path of the bundled synthetic vCard phone book (names, photos, e-mails included)."""
    return Path(str(resources.files("contactmatch") / "data" / "sample_contacts.vcf"))


def population(size: int, seed: int = 1) -> list[str]:
    """``size`` distinct synthetic Iranian mobile numbers in E.164."""
    rng = random.Random(seed)  # noqa: S311 - synthetic data, reproducible on purpose
    picks = rng.sample(range(len(_OPERATORS) * 10**7), size)
    return [f"+98{_OPERATORS[p // 10**7]}{p % 10**7:07d}" for p in picks]


def _as_stored(e164: str, style: int) -> str:
    """How a phone book holds a number: national, spaced, 00-prefixed, Persian digits."""
    nsn = e164[3:]  # 9XXXXXXXXX
    if style == 0:
        return f"0{nsn[:3]} {nsn[3:6]} {nsn[6:]}"
    if style == 1:
        return f"+98 {nsn[:3]} {nsn[3:6]} {nsn[6:]}"
    if style == 2:
        return "0098" + nsn
    return f"0{nsn[:3]} {nsn[3:6]} {nsn[6:]}".translate(_PERSIAN)


def phone_book(
    registered: list[str], size: int, hit_rate: float = 0.3, seed: int = 2
) -> tuple[list[dict[str, object]], set[str]]:
    """Contact cards (with names, to be dropped) and the set of registered numbers among them."""
    rng = random.Random(seed)  # noqa: S311 - synthetic data, reproducible on purpose
    hits = rng.sample(registered, int(size * hit_rate))
    taken = set(registered)
    others: list[str] = []
    while len(others) < size - len(hits):
        cand = f"+98{rng.choice(_OPERATORS)}{rng.randrange(10**7):07d}"
        if cand not in taken:
            taken.add(cand)
            others.append(cand)
    numbers = hits + others
    rng.shuffle(numbers)
    cards: list[dict[str, object]] = [
        {"name": f"Contact {i}", "phones": [_as_stored(n, i % 4)], "emails": [f"c{i}@example.org"]}
        for i, n in enumerate(numbers)
    ]
    return cards, set(hits)


@dataclass
class _Meter:
    """Counts the bytes a transport carries in each direction."""

    up: int = 0
    down: int = 0
    rounds: int = 0


def _register(server: DiscoveryServer, numbers: list[str], console: Console) -> float:
    """Register the population in batches with a progress bar; returns the seconds taken."""
    t0 = time.perf_counter()
    with Progress(
        TextColumn("[bold]registering"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("register", total=len(numbers))
        step = 5_000
        for lo in range(0, len(numbers), step):
            chunk = numbers[lo : lo + step]
            server.register_many([(f"user{lo + i}", n) for i, n in enumerate(chunk)])
            bar.advance(task, len(chunk))
    return time.perf_counter() - t0


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


def _discover_all(
    http: HttpServer, schemes: list[str], cards: list[dict[str, object]], truth: set[str]
) -> tuple[Table, bool]:
    """Each flow over HTTP: a first sync, then a re-sync from the token cache."""
    table = Table(title=f"Discovery over HTTP: {len(cards):,} contacts, {len(truth):,} registered")
    for col in _COLUMNS:
        table.add_column(col, justify="left" if col in ("flow", "sync") else "right")
    ok = True
    for scheme in schemes:
        cache: dict[tuple[str, str], bytes] = {}
        blob = http.published_filter(scheme) if scheme.endswith("filter") else None
        for label in ("first", "re-sync"):
            meter = _Meter()

            def send(req: bytes, meter: _Meter = meter) -> bytes:
                meter.up += len(req)
                meter.rounds += 1
                resp = http.discover("me", req)
                meter.down += len(resp)
                return resp

            client = DiscoveryClient(http.info(scheme), filter_blob=blob, region="IR", cache=cache)
            t1 = time.perf_counter()
            result = client.discover(cards, send)
            ms = (time.perf_counter() - t1) * 1000
            correct = set(result.matches) == truth
            ok &= correct
            table.add_row(
                scheme,
                label,
                f"{len(result.matches):,}",
                f"{len(result.unregistered):,}",
                str(meter.rounds),
                f"{meter.up / 1024:,.1f}",
                f"{meter.down / 1024:,.1f}",
                f"{len(blob) / 1024:,.1f}" if blob is not None and label == "first" else "0",
                f"{ms:,.0f}",
                "yes" if correct else "[red]NO[/]",
            )
    return table, ok


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo; returns the exit status (1 if any flow disagrees with the ground truth)."""
    from contactmatch.server import HttpServer, ServerThread, SignedTokens, create_app

    # Piped output (logs, CI) keeps the whole table instead of an 80-column squeeze.
    console = Console(width=None if sys.stdout.isatty() else 120)
    with tempfile.TemporaryDirectory(prefix="contactmatch-demo-") as tmp:
        home = args.dir or Path(tmp)
        home.mkdir(parents=True, exist_ok=True)
        key = ServerKey.generate(Mode.OPRF)
        store = open_store(f"sqlite:///{home / 'registry.db'}")
        server = DiscoveryServer(
            store, key, DataKey.generate(), settings=ServiceSettings(region="IR")
        )
        numbers = population(args.users)
        secs = _register(server, numbers, console)
        console.print(
            f"registered {len(numbers):,} users in {secs:.1f} s ({len(numbers) / secs:,.0f}/s: "
            "normalise, OPRF-evaluate, encrypt, store, index)"
        )
        cards, truth = phone_book(numbers, args.contacts)
        server.register("me", "+989000000001")
        tokens = SignedTokens.from_server_key(key)
        with ServerThread(create_app(server, authenticate=tokens.verify)) as url:
            http = HttpServer(url, tokens.issue("me"))
            try:
                table, ok = _discover_all(http, server.schemes, cards, truth)
            finally:
                http.close()
        console.print(table)
        console.print(
            "Names and e-mails on the cards were dropped before anything was sent; the server "
            "saw blinded elements and tokens, never a number of the phone book.\n"
            f"Aggregate counters (no identifiers): {server.stats()}"
        )
        store.close()
    return 0 if ok else 1
