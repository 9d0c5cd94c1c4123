"""Run any scheme in-process on one workload, counting bytes and CPU on each side.

This is the researchers' harness: every scheme runs over the same registry and phone book
through the same bytes-in/bytes-out interface a network transport would use, so the
byte counts are the real wire sizes and the CPU split is honest (``time.process_time`` spans,
which include the worker threads of batched OPRF evaluation).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from contactmatch.keys import KeyRing, ServerKey
from contactmatch.schemes.base import MatchResult, Scheme, ServerInfo, get_scheme
from contactmatch.schemes.client import SchemeClient
from contactmatch.schemes.factory import make_client_tokens, make_server_tokens
from contactmatch.schemes.server import SchemeServer

__all__ = ["RunReport", "build_server", "run_discovery"]


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
    if server.scheme.method == "filter":
        filter_blob = server.published_filter()
        setup += len(filter_blob)

    def make_client() -> SchemeClient:
        info = ServerInfo.decode(info_bytes)
        return SchemeClient(
            server.scheme,
            info,
            make_client_tokens(server.scheme.token, info),
            filter_blob=filter_blob,
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
