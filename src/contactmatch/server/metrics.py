"""Prometheus metrics of one app: aggregates only, never a user id, number or token.

Every label takes values from a closed set the server chose (route names, status codes,
served scheme names, quota names, token function names), never from a request: a client
cannot mint label values, so it can neither inflate the series count nor see its input
echoed in a scrape.

Each app gets its own :class:`~prometheus_client.CollectorRegistry` (tests build many apps in
one process). With several worker processes (``serve --workers N``) the parent points
``PROMETHEUS_MULTIPROC_DIR`` at a private directory before the workers start; prometheus_client
then keeps every value in per-process files there, and a scrape answered by any worker adds up
all of them (``MultiProcessCollector``), as the prometheus_client documentation prescribes.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from contactmatch.errors import ContactMatchError

if TYPE_CHECKING:
    from contactmatch.service import DiscoveryServer

__all__ = ["CONTENT_TYPE", "MULTIPROC_ENV", "Metrics"]

#: The Prometheus text exposition format (version 0.0.4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: prometheus_client's switch to multiprocess mode (read when it is first imported).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_NS = "contactmatch"
# Discovery rounds take from a millisecond (a cached bucket) to seconds (a 25,000-element
# OPRF batch on one core).
_DISCOVERY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)


class Metrics:
    """The metrics one app exports, and the hooks that feed them.

    Args:
        server: the service whose registry, feed and filters the gauges read at scrape time.
    """

    def __init__(self, server: DiscoveryServer) -> None:
        self.server = server
        self.multiprocess_dir = os.environ.get(MULTIPROC_ENV) or None
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "requests", "HTTP requests by route and status", ["endpoint", "status"],
            namespace=_NS, subsystem="http", registry=r,
        )  # fmt: skip
        self.errors = Counter(
            "errors", "HTTP error answers (status >= 400) by route and status",
            ["endpoint", "status"], namespace=_NS, subsystem="http", registry=r,
        )  # fmt: skip
        self.rate_limited = Counter(
            "rate_limited", "requests refused by a quota", ["quota"], namespace=_NS, registry=r
        )
        self.discovery_seconds = Histogram(
            "discovery_seconds", "service time of one discovery round", ["scheme"],
            namespace=_NS, buckets=_DISCOVERY_BUCKETS, registry=r,
        )  # fmt: skip
        self.evaluations = Counter(
            "evaluations", "blinded elements evaluated", namespace=_NS, registry=r
        )
        self.lookups = Counter("lookups", "tokens looked up", namespace=_NS, registry=r)
        self.matches = Counter("matches", "lookup answers that matched", namespace=_NS, registry=r)
        # Gauges are set by whichever process answers a scrape or a readiness probe; with
        # several workers the freshest reading is the one that counts (ignored in one process).
        mode: Final = "mostrecent"
        self.registry_users = Gauge(
            "registry_users", "users in the served registry", namespace=_NS, registry=r,
            multiprocess_mode=mode,
        )  # fmt: skip
        self.filter_version = Gauge(
            "filter_version", "published filter version by scheme", ["scheme"], namespace=_NS,
            registry=r, multiprocess_mode=mode,
        )  # fmt: skip
        self.feed_sequence = Gauge(
            "feed_sequence", "store change-feed position the registry reflects",
            namespace=_NS, registry=r, multiprocess_mode=mode,
        )  # fmt: skip
        self.feed_lag = Gauge(
            "feed_lag", "changes in the store's feed not yet applied", namespace=_NS,
            registry=r, multiprocess_mode=mode,
        )  # fmt: skip
        self.store_up = Gauge(
            "store_up", "1 when the last store probe answered, else 0", namespace=_NS,
            registry=r, multiprocess_mode=mode,
        )  # fmt: skip
        self.store_seconds = Histogram(
            "store_seconds", "round trip of a store probe (feed head read)", namespace=_NS,
            buckets=_STORE_BUCKETS, registry=r,
        )  # fmt: skip

    def observe_discovery(self, scheme: str, counts: Mapping[str, int], seconds: float) -> None:
        """:attr:`DiscoveryServer.observer`: one discovery round's counters and latency."""
        self.discovery_seconds.labels(scheme=scheme or "unknown").observe(seconds)
        if counts.get("evaluated"):
            self.evaluations.inc(counts["evaluated"])
        if counts.get("looked_up"):
            self.lookups.inc(counts["looked_up"])
        if counts.get("matches"):
            self.matches.inc(counts["matches"])

    def observe_request(self, endpoint: str, status: int, quota: str | None = None) -> None:
        """One answered request (``endpoint`` is a route name of the table)."""
        code = str(status)
        self.requests.labels(endpoint=endpoint, status=code).inc()
        if status >= 400:
            self.errors.labels(endpoint=endpoint, status=code).inc()
        if quota is not None:
            self.rate_limited.labels(quota=quota or "unknown").inc()

    def probe_store(self) -> int:
        """Read the store's feed head, timing it; returns the head (raises if unreachable)."""
        started = time.perf_counter()
        try:
            head = self.server.store.feed_head()
        except BaseException:
            self.store_up.set(0)
            raise
        self.store_seconds.observe(time.perf_counter() - started)
        self.store_up.set(1)
        self.feed_lag.set(max(0, head - self.server.feed_position))
        return head

    def update(self) -> None:
        """Refresh the gauges from the service (blocking: run it off the event loop)."""
        s = self.server
        self.registry_users.set(s.registry_size)
        self.feed_sequence.set(s.feed_position)
        for name in s.schemes:
            if name.endswith("+filter"):
                self.filter_version.labels(scheme=name).set(s.filter_version(name))
        # A scrape must answer when the store does not: that is when it is most needed
        # (store_up says so).
        with contextlib.suppress(ContactMatchError):
            self.probe_store()

    def exposition(self) -> bytes:
        """The scrape body in the Prometheus text format (blocking: it reads the store)."""
        self.update()
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        # Every worker's values, added up from the shared directory.
        merged = CollectorRegistry()
        # prometheus_client leaves this constructor unannotated.
        MultiProcessCollector(merged, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(merged)
