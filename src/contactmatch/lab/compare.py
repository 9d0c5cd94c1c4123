"""The researchers' harness: run any scheme in-process on one workload, counting its costs.

Every scheme runs over the same registry and phone book through the same bytes-in/bytes-out
interface a network transport would use, so the byte counts are the real wire sizes and the
CPU split is honest (``time.process_time`` spans, which include the worker threads of batched
OPRF evaluation). Registered users' tokens are computed once per token function and shared
by its membership methods, so what :func:`compare` compares is the discovery itself, not
the registry build. ``contactmatch bench`` and ``benchmarks/bench_schemes.py`` run this.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from contactmatch.keys import KeyRing, ServerKey
from contactmatch.lab.plan import load_plan
from contactmatch.schemes.base import MatchResult, Scheme, ServerInfo, get_scheme
from contactmatch.schemes.client import SchemeClient
from contactmatch.schemes.server import SchemeServer
from contactmatch.schemes.tokens import ServerTokens, make_client_tokens, make_server_tokens

__all__ = ["Comparison", "RunReport", "build_server", "compare", "run_discovery", "workload"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunReport:
    """Costs of one discovery: wire bytes, round trips and CPU seconds on each side."""

    scheme: str
    result: MatchResult
    rounds: int
    bytes_up: int
    bytes_down: int
    #: The published filter or server info fetched before discovery (counted apart).
    bytes_setup: int
    client_cpu: float
    server_cpu: float


def build_server(
    scheme: Scheme | str,
    registrations: Sequence[tuple[str, str]],
    *,
    key: ServerKey | KeyRing | bytes | None = None,
    anonymity: int = 64,
    filter_fpr: float = 2.0**-20,
) -> SchemeServer:
    """A server for ``scheme`` with ``(user_id, e164)`` registrations indexed."""
    s = get_scheme(scheme) if isinstance(scheme, str) else scheme
    server = SchemeServer(
        s, make_server_tokens(s.token, key), anonymity=anonymity, filter_fpr=filter_fpr
    )
    if registrations:
        uids, numbers = zip(*registrations, strict=True)
        server.register(list(uids), list(numbers))
    return server


def run_discovery(
    server: SchemeServer,
    numbers: Sequence[str],
    *,
    cache: dict[tuple[str, str], bytes] | None = None,
    transport: Callable[[bytes], bytes] | None = None,
) -> RunReport:
    """One discovery of ``numbers`` (E.164) against ``server``; ``transport`` defaults to
    calling ``server.handle`` directly."""
    send = transport or server.handle
    cpu = {"client": 0.0, "server": 0.0}

    def timed(side: str, fn: Callable[[], object]) -> object:
        t0 = time.process_time()
        try:
            return fn()
        finally:
            cpu[side] += time.process_time() - t0

    info_bytes = server.info().encode()
    setup = len(info_bytes)
    filter_blob = None
    if server.scheme.publishes_filter:
        filter_blob = server.published_filter()
        setup += len(filter_blob)
    hint = None
    if server.scheme.retrieves_privately:
        hint = server.published_hint()
        setup += len(hint)

    def make_client() -> SchemeClient:
        info = ServerInfo.decode(info_bytes)
        return SchemeClient(
            server.scheme,
            info,
            make_client_tokens(server.scheme.token, info),
            filter_blob=filter_blob,
            hint=hint,
            cache=cache,
        )

    client = timed("client", make_client)
    assert isinstance(client, SchemeClient)
    up = down = 0
    request = timed("client", lambda: client.start(numbers))
    while request is not None:
        assert isinstance(request, bytes)
        up += len(request)
        response = timed("server", functools.partial(send, request))
        assert isinstance(response, bytes)
        down += len(response)
        request = timed("client", functools.partial(client.receive, response))
    return RunReport(
        scheme=server.scheme.name,
        result=client.result,
        rounds=client.rounds,
        bytes_up=up,
        bytes_down=down,
        bytes_setup=setup,
        client_cpu=cpu["client"],
        server_cpu=cpu["server"],
    )


def workload(
    registry_size: int, book_size: int, *, hit_rate: float = 0.3, seed: int = 7
) -> tuple[list[str], list[str]]:
    """Synthetic registered numbers and a phone book with ``hit_rate`` of it registered.

    Numbers are spread over the first four mobile ranges of the plan file.
    """
    plan = load_plan()
    prefixes = plan.prefixes()[:4]
    rng = random.Random(seed)  # noqa: S311 - a reproducible workload, not a secret
    numbers = list(
        dict.fromkeys(
            plan.number(prefixes[i % len(prefixes)], v)
            for i, v in enumerate(rng.sample(range(plan.range_size), registry_size + book_size))
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

    def as_dict(self) -> dict[str, Any]:
        """The costs as JSON-ready values (``contactmatch bench --json``); no numbers."""
        r = self.report
        return {
            "scheme": r.scheme,
            "agrees": self.agrees,
            "matches": len(r.result.matches),
            "rounds": r.rounds,
            "bytes_up": r.bytes_up,
            "bytes_down": r.bytes_down,
            "bytes_setup": r.bytes_setup,
            "client_cpu_s": r.client_cpu,
            "server_cpu_s": r.server_cpu,
        }


def compare(
    schemes: Sequence[str],
    registered: Sequence[str],
    book: Sequence[str],
    *,
    anonymity: int = 64,
    repeat: int = 1,
    on_done: Callable[[], None] | None = None,
) -> Iterator[Comparison]:
    """Run each scheme on the same registry and book; yields as each finishes.

    Raises:
        UnknownScheme: a name is not a scheme (before anything runs).
    """
    chosen = [get_scheme(name) for name in schemes]  # fail early on a typo
    uids = [f"user-{i}" for i in range(len(registered))]
    expected = set(book) & set(registered)
    tokens_by_fn: dict[str, tuple[ServerTokens, list[bytes]]] = {}
    for scheme in chosen:
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
