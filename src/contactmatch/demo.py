"""The whole product on one machine, over real HTTP on localhost (``contactmatch demo``).

An embedded SQLite registry of a synthetic population (100,000 Iranian mobile numbers by
default, drawn from the numbering plan in ``contactmatch/data``), a 1,000-contact phone book
written the way phones store numbers (30% of it registered), and discovery through each
default flow over the real HTTP server: a first sync and a re-sync from the token cache.
:func:`run_demo` returns what each flow found and what it cost; the command renders it.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contactmatch.atrest import DataKey
from contactmatch.errors import InvalidInput
from contactmatch.keys import ServerKey
from contactmatch.lab.plan import load_plan
from contactmatch.oprf import Mode
from contactmatch.schemes.base import get_scheme
from contactmatch.service import DiscoveryClient, DiscoveryServer, ServiceSettings
from contactmatch.stores import open_store

if TYPE_CHECKING:
    from contactmatch.server import HttpClient

__all__ = [
    "DemoReport",
    "FlowRun",
    "phone_book",
    "population",
    "run_demo",
    "sample_contacts_path",
]

_PERSIAN = str.maketrans("0123456789", "۰۱۲۳۴۵۶۷۸۹")
#: Share of the demo's phone book that is registered.
_HIT_RATE = 0.3
#: The demo's own account: outside every mobile range of the plan, so never in the book.
_ME = "+989000000001"


def sample_contacts_path() -> Path:
    """Path of the bundled synthetic vCard phone book (names, photos, e-mails included)."""
    return Path(str(resources.files("contactmatch") / "data" / "sample_contacts.vcf"))


def population(size: int, seed: int = 1) -> list[str]:
    """``size`` distinct synthetic mobile numbers in E.164, over every range of the plan."""
    plan = load_plan()
    prefixes = plan.prefixes()
    space = plan.range_size
    rng = random.Random(seed)  # noqa: S311 - synthetic data, reproducible on purpose
    picks = rng.sample(range(len(prefixes) * space), size)
    return [plan.number(prefixes[p // space], p % space) for p in picks]


def _as_stored(e164: str, style: int) -> str:
    """How a phone book holds a number: national, spaced, 00-prefixed, Persian digits."""
    code = load_plan().calling_code
    nsn = e164[1 + len(code) :]  # 9XXXXXXXXX
    if style == 0:
        return f"0{nsn[:3]} {nsn[3:6]} {nsn[6:]}"
    if style == 1:
        return f"+{code} {nsn[:3]} {nsn[3:6]} {nsn[6:]}"
    if style == 2:
        return f"00{code}{nsn}"
    return f"0{nsn[:3]} {nsn[3:6]} {nsn[6:]}".translate(_PERSIAN)


def _registered_in_book(size: int, hit_rate: float, users: int) -> int:
    in_book = int(size * hit_rate)
    if in_book > users:
        raise InvalidInput(
            f"a {size:,}-contact book holds {in_book:,} registered users; only {users:,} "
            "are registered"
        )
    return in_book


def phone_book(
    registered: list[str], size: int, hit_rate: float = _HIT_RATE, seed: int = 2
) -> tuple[list[dict[str, object]], set[str]]:
    """Contact cards (with names, to be dropped) and the set of registered numbers among them.

    Raises:
        InvalidInput: fewer registered numbers than the book's registered share.
    """
    plan = load_plan()
    in_book = _registered_in_book(size, hit_rate, len(registered))
    rng = random.Random(seed)  # noqa: S311 - synthetic data, reproducible on purpose
    hits = rng.sample(registered, in_book)
    taken = set(registered)
    others: list[str] = []
    while len(others) < size - len(hits):
        prefix = plan.e164(rng.choice(plan.mobile_prefixes))
        cand = plan.number(prefix, rng.randrange(plan.range_size))
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


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowRun:
    """One sync of one flow over HTTP: what it found and what it cost (counts only)."""

    flow: str
    #: ``"first"`` or ``"re-sync"`` (from the token cache).
    sync: str
    matches: int
    to_invite: int
    rounds: int
    bytes_up: int
    bytes_down: int
    #: The published filter downloaded before the first sync (0 for a re-sync or buckets).
    bytes_filter: int
    ms: float
    #: The matches equal the registered numbers of the book.
    correct: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoReport:
    """What the demo did: the population registered, and each flow's syncs."""

    users: int
    contacts: int
    registered_in_book: int
    register_seconds: float
    runs: tuple[FlowRun, ...]
    #: The server's aggregate counters (no identifiers).
    stats: dict[str, int]

    @property
    def ok(self) -> bool:
        """Every flow found exactly the registered contacts."""
        return all(r.correct for r in self.runs)

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values (``contactmatch demo --json``)."""
        return {
            "users": self.users,
            "contacts": self.contacts,
            "registered_in_book": self.registered_in_book,
            "register_seconds": self.register_seconds,
            "ok": self.ok,
            "runs": [
                {
                    "flow": r.flow,
                    "sync": r.sync,
                    "matches": r.matches,
                    "to_invite": r.to_invite,
                    "rounds": r.rounds,
                    "bytes_up": r.bytes_up,
                    "bytes_down": r.bytes_down,
                    "bytes_filter": r.bytes_filter,
                    "ms": r.ms,
                    "correct": r.correct,
                }
                for r in self.runs
            ],
            "stats": dict(self.stats),
        }


@dataclass
class _Meter:
    """Counts the bytes a transport carries in each direction."""

    up: int = 0
    down: int = 0
    rounds: int = 0


def _register(
    server: DiscoveryServer,
    numbers: list[str],
    progress: Callable[[int, int], None] | None,
) -> float:
    """Register the population in batches; returns the seconds taken."""
    t0 = time.perf_counter()
    step = 5_000
    for lo in range(0, len(numbers), step):
        chunk = numbers[lo : lo + step]
        server.register_many([(f"user{lo + i}", n) for i, n in enumerate(chunk)])
        if progress is not None:
            progress(lo + len(chunk), len(numbers))
    return time.perf_counter() - t0


def _discover_all(
    http: HttpClient, schemes: list[str], cards: list[dict[str, object]], truth: set[str]
) -> list[FlowRun]:
    """Each flow over HTTP: a first sync, then a re-sync from the token cache."""
    runs: list[FlowRun] = []
    for scheme in schemes:
        cache: dict[tuple[str, str], bytes] = {}
        blob = http.published_filter(scheme) if get_scheme(scheme).publishes_filter else None
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
            runs.append(
                FlowRun(
                    flow=scheme,
                    sync=label,
                    matches=len(result.matches),
                    to_invite=len(result.unregistered),
                    rounds=meter.rounds,
                    bytes_up=meter.up,
                    bytes_down=meter.down,
                    bytes_filter=len(blob) if blob is not None and label == "first" else 0,
                    ms=(time.perf_counter() - t1) * 1000,
                    correct=set(result.matches) == truth,
                )
            )
    return runs


def run_demo(
    *,
    users: int = 100_000,
    contacts: int = 1_000,
    home: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> DemoReport:
    """Register a synthetic population and discover a phone book through each default flow.

    Args:
        users: registered users.
        contacts: contacts in the phone book (30% of them registered).
        home: keep the SQLite store here (default: a temporary directory, removed after).
        progress: called with (registered so far, users) after each registration batch.

    Raises:
        MissingDependency: the ``[server]`` extra is not installed.
        InvalidInput: fewer users than the book's registered contacts.
    """
    from contactmatch.server import HttpClient, ServerThread, SignedTokens, create_app

    _registered_in_book(contacts, _HIT_RATE, users)  # refuse before registering anyone
    with tempfile.TemporaryDirectory(prefix="contactmatch-demo-") as tmp:
        where = home or Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        key = ServerKey.generate(Mode.OPRF)
        store = open_store(f"sqlite:///{where / 'registry.db'}")
        try:
            server = DiscoveryServer(
                store, key, DataKey.generate(), settings=ServiceSettings(region="IR")
            )
            numbers = population(users)
            secs = _register(server, numbers, progress)
            cards, truth = phone_book(numbers, contacts, _HIT_RATE)
            server.register("me", _ME)
            tokens = SignedTokens.from_server_key(key)
            with ServerThread(create_app(server, authenticate=tokens.verify)) as url:
                http = HttpClient(url, tokens.issue("me"))
                try:
                    runs = _discover_all(http, server.schemes, cards, truth)
                finally:
                    http.close()
            stats = server.stats()
        finally:
            store.close()
    return DemoReport(
        users=len(numbers),
        contacts=len(cards),
        registered_in_book=len(truth),
        register_seconds=secs,
        runs=tuple(runs),
        stats=dict(stats),
    )
