"""Two ``contactmatch serve`` processes on one store behind a round-robin client.

The setup docs/operations.md recommends: several server processes, each following the store's
change feed. In 0.1 each process numbered its filter versions from 1, so a client holding
"version 2" of one process got ``304 Not Modified`` from the other and reported a registered
contact as unregistered, sync after sync. Here every request alternates between the two
processes, one of them is restarted midway, and no registered contact may ever be missed.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from contactmatch.atrest import DataKey
from contactmatch.keys import ServerKey
from contactmatch.oprf import Mode
from contactmatch.server import HttpClient, SignedTokens
from contactmatch.service import DiscoveryServer
from contactmatch.stores import open_store

REFRESH = 0.2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RoundRobin(httpx.BaseTransport):
    """Sends each request to the next of several servers (a load balancer without affinity)."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.inner = httpx.HTTPTransport()
        self.turn = 0
        self.statuses: list[int] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        port = self.ports[self.turn % len(self.ports)]
        self.turn += 1
        request.url = request.url.copy_with(port=port)
        resp = self.inner.handle_request(request)
        self.statuses.append(resp.status_code)
        return resp

    def close(self) -> None:
        self.inner.close()


class Serve:
    def __init__(self, store: str, key: Path, data_key: Path, snaps: Path) -> None:
        self.args = [
            sys.executable, "-m", "contactmatch.cli", "serve", "--store", store,
            "--key", str(key), "--data-key", str(data_key), "--snapshot-dir", str(snaps),
            "--refresh-every", str(REFRESH),
        ]  # fmt: skip
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [*self.args, "--port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/v1/schemes").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise AssertionError("serve did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
            self.proc = None


@pytest.fixture(params=["sqlite", "postgres", "redis", "redis-cluster"])
def backend(request: pytest.FixtureRequest) -> str:
    """Every store several processes can share (memory:// is one process's own)."""
    name: str = request.param
    return name


@pytest.fixture
def world(
    tmp_path: Path, store_url: str
) -> Iterator[tuple[list[Serve], DiscoveryServer, ServerKey]]:
    key = ServerKey.generate(Mode.OPRF)
    key.save(tmp_path / "k")
    data_key = DataKey.generate()
    data_key.save(tmp_path / "k.data")
    url = store_url
    backend = DiscoveryServer(open_store(url), key, data_key)  # the messenger's own writes
    backend.register("me", "+989350000001")
    servers = [Serve(url, tmp_path / "k", tmp_path / "k.data", tmp_path / "snaps") for _ in "ab"]
    try:
        for s in servers:
            s.start()
        yield servers, backend, key
    finally:
        for s in servers:
            s.stop()
        backend.store.close()


def test_round_robin_client_never_misses_a_registered_contact(
    world: tuple[list[Serve], DiscoveryServer, ServerKey],
) -> None:
    servers, backend, key = world
    rr = RoundRobin([s.port for s in servers])
    book = [f"+98912{i:07d}" for i in range(40)]
    registered: dict[str, str] = {}
    with HttpClient("http://127.0.0.1:1", SignedTokens.from_server_key(key).issue("me"),
                    transport=rr) as me:  # fmt: skip
        for step in range(12):
            number = book[step * 3]
            backend.register(f"u{step}", number)
            registered[number] = f"u{step}"
            if step == 6:  # a restart midway: it starts from its snapshot and the feed
                servers[0].stop()
                servers[0].start()
            time.sleep(3 * REFRESH)  # within the refresh interval, every process has it
            for _ in range(2):  # twice: a full filter, then a delta or a 304
                result = me.sync(book)
                assert result.matches == registered, f"step {step}: missed a registered contact"
    assert all(s < 500 for s in rr.statuses)
    assert rr.turn >= 4 * 12  # info, filter and discovery requests, alternating
