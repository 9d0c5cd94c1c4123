"""``contactmatch serve --workers N``: uvicorn workers on one port, one shared store.

Each worker is a fresh process following the store's change feed; the tests check what a
client behind a load balancer without affinity relies on: a registration made through one
connection is seen through fresh connections (landing on either worker) within the refresh
interval, every worker publishes the same filter version, one account's quota holds exactly
across the workers, and SIGTERM lets an in-flight request finish. Which worker answered a
connection is read from ``/proc`` (the worker holding the server side of its socket), so the
server exposes nothing new for the tests. Also ``--limits`` files, accepted and refused.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from contactmatch.atrest import DataKey
from contactmatch.cli import main
from contactmatch.errors import InvalidInput
from contactmatch.hazmat._pool import available_cores
from contactmatch.keys import ServerKey
from contactmatch.oprf import Mode
from contactmatch.ratelimit import Quota, RateLimits
from contactmatch.schemes.tokens import OprfServerTokens
from contactmatch.schemes.wire import ServiceResponse, decode
from contactmatch.server import HttpClient, SignedTokens
from contactmatch.server._codes import BINARY
from contactmatch.server._workers import WorkerConfig
from contactmatch.server.serve import limits_from_json, limits_to_json
from contactmatch.service import DiscoveryClient, DiscoveryServer
from contactmatch.stores import open_store

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="tells workers apart through /proc"
)

ROOT = Path(__file__).resolve().parent.parent
REFRESH = 0.3
WRITES = 8  # the quota the workers race for
#: Generous quotas (a test makes many discoveries), but an exact, small write quota.
LIMITS: dict[str, Any] = {
    "requests": {"capacity": 100_000, "period": 3600},
    "evaluations": {"capacity": 1_000_000},
    "global_evaluations": {"capacity": 1_000_000_000},
    "new_tokens": {"capacity": 1_000_000},
    "global_new_tokens": {"capacity": 1_000_000_000},
    "writes": {"capacity": WRITES, "period": 86_400},
}
ME = "+989350000001"
RACER = "+989350000002"
NEWCOMER = "+989121234567"


if multiprocessing.parent_process() is None:
    # Defined in the serve process (so its start-up check passes) but not in the workers it
    # spawns: each worker then fails to start, as when the store goes away between the two.
    def only_in_parent(user_id: str, e164: str, proof: str | None) -> bool:
        del user_id, e164, proof
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- which worker holds a connection (Linux /proc) ------------------------------------------


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the fields follow the last ")".
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry))
    return out


def _server_side_inode(server_port: int, client_port: int) -> str | None:
    local = f"0100007F:{server_port:04X}"
    remote = f"0100007F:{client_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[2] == remote:
            return fields[9]
    return None


def _holds(pid: int, inode: str) -> bool:
    target = f"socket:[{inode}]"
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                return True
        except OSError:
            continue
    return False


# -- the server under test ------------------------------------------------------------------


@dataclass
class World:
    tmp: Path
    store_url: str
    key: ServerKey

    def token(self, user: str) -> str:
        return SignedTokens.from_server_key(self.key).issue(user)

    def limits_file(self, limits: dict[str, Any] | str = LIMITS) -> Path:
        path = self.tmp / "limits.json"
        path.write_text(limits if isinstance(limits, str) else json.dumps(limits))
        return path


class Workers:
    """``contactmatch serve --workers N`` as a subprocess (stderr kept for inspection)."""

    def __init__(self, world: World, *extra: str, workers: int = 2) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.err_path = world.tmp / f"serve-{self.port}.err"
        self.args = [
            sys.executable, "-m", "contactmatch.cli", "serve", "--store", world.store_url,
            "--key", str(world.tmp / "k"), "--data-key", str(world.tmp / "k.data"),
            "--snapshot-dir", str(world.tmp / "snaps"), "--refresh-every", str(REFRESH),
            "--port", str(self.port), "--workers", str(workers), *extra,
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, wait: bool = True) -> Workers:
        with self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(self.args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        if wait:
            self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}: {self.stderr()}")
            try:
                if httpx.get(f"{self.url}/v1/schemes").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise AssertionError("serve did not start")

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def workers(self) -> list[int]:
        assert self.proc is not None
        return _children(self.proc.pid)

    def worker_of(self, client_port: int) -> int | None:
        """The worker process holding the server side of the connection from ``client_port``."""
        inode = _server_side_inode(self.port, client_port)
        if inode is None:
            return None
        return next((pid for pid in self.workers() if _holds(pid, inode)), None)

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes, int | None]:
        """One request on a fresh connection: (status, headers, body, worker pid)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            assert conn.sock is not None
            pid = self.worker_of(conn.sock.getsockname()[1])
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data, pid
        finally:
            conn.close()

    def wait_for_both_workers(self) -> None:
        """Until two workers have each answered a connection (both finished starting)."""
        seen: set[int] = set()
        deadline = time.monotonic() + 30
        while len(seen) < 2 and time.monotonic() < deadline:
            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(lambda _: self.request("GET", "/v1/schemes"), range(8)))
            seen |= {pid for status, _, _, pid in answers if status == 200 and pid is not None}
        assert len(seen) == 2, f"only workers {seen} answered"

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # The workers too: killing only the supervisor would leave them running.
            for pid in self.workers():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.proc.kill()
            self.proc.wait()


class FreshConnections(httpx.BaseTransport):
    """Every request on a new connection (a load balancer without affinity), and who answered."""

    def __init__(self, serve: Workers) -> None:
        self.serve = serve
        self.answered: list[tuple[str, int, int | None]] = []  # (path, status, worker)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        transport = httpx.HTTPTransport()
        try:
            resp = transport.handle_request(request)
            resp.read()
            stream = resp.extensions["network_stream"]
            pid = self.serve.worker_of(stream.get_extra_info("client_addr")[1])
            self.answered.append((request.url.path, resp.status_code, pid))
            return resp
        finally:
            transport.close()


@pytest.fixture
def world(tmp_path: Path, store_url: str) -> World:
    key = ServerKey.generate(Mode.OPRF)
    key.save(tmp_path / "k")
    data_key = DataKey.generate()
    data_key.save(tmp_path / "k.data")
    backend = DiscoveryServer(open_store(store_url), key, data_key)  # the messenger's own writes
    try:
        backend.register("me", ME)
        backend.register("racer", RACER)
    finally:
        backend.store.close()
    return World(tmp_path, store_url, key)


@pytest.fixture
def start(world: World) -> Iterator[Callable[..., Workers]]:
    """Start ``serve`` processes; any left running at the end are killed."""
    started: list[Workers] = []

    def _start(*extra: str, workers: int = 2, wait: bool = True) -> Workers:
        s = Workers(world, *extra, workers=workers)
        started.append(s)
        return s.start(wait=wait)

    yield _start
    for s in started:
        s.kill()


# -- (a) and (b): every shared store --------------------------------------------------------


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
        pytest.param("redis", id="redis", marks=pytest.mark.redis),
    ],
)
def test_two_workers_share_registrations_filter_versions_and_quotas(
    world: World, start: Callable[..., Workers]
) -> None:
    limits = world.limits_file()
    serve = start("--allow-unverified-numbers", "--limits", str(limits))
    serve.wait_for_both_workers()

    # (a) A registration through one connection (one worker) ...
    t = FreshConnections(serve)
    with HttpClient(serve.url, world.token("newcomer"), transport=t) as newcomer:
        assert newcomer.register("newcomer", NEWCOMER) == NEWCOMER
    time.sleep(3 * REFRESH)
    # ... is seen by discoveries through fresh connections, on whichever worker they land.
    book = [NEWCOMER, ME, "+989121111111", "+989122222222"]
    discovered_on: set[int] = set()
    for round_ in range(40):
        t = FreshConnections(serve)
        with HttpClient(serve.url, world.token("me"), transport=t) as me:
            result = me.sync(book)
        assert result.matches == {NEWCOMER: "newcomer", ME: "me"}, f"round {round_}"
        assert all(status == 200 for _, status, _ in t.answered)
        discovered_on |= {pid for path, _, pid in t.answered if path == "/v1/discover" and pid}
        if round_ >= 9 and len(discovered_on) == 2:
            break
    assert len(discovered_on) == 2, "every discovery landed on one worker"

    # Every worker publishes the same filter under the same version.
    versions: dict[int, set[str]] = {}
    deadline = time.monotonic() + 20
    while len(versions) < 2 and time.monotonic() < deadline:
        with ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(lambda _: serve.request("GET", "/v1/filter/oprf%2Bfilter"), range(8))
            )
        for status, headers, blob, pid in answers:
            assert status == 200
            if pid is not None:
                versions.setdefault(pid, set()).add(f"{headers['x-filter-version']}:{hash(blob)}")
    assert len(versions) == 2
    assert len(set().union(*versions.values())) == 1, versions

    # (b) Both workers racing one account's write quota: exactly the quota succeeds.
    headers = {
        "Authorization": f"Bearer {world.token('racer')}",
        "Content-Type": "application/json",
    }
    body = json.dumps({"discoverability": "everyone"}).encode()
    with ThreadPoolExecutor(16) as pool:
        answers = list(
            pool.map(
                lambda _: serve.request("PUT", "/v1/settings", body=body, headers=headers),
                range(4 * WRITES),
            )
        )
    statuses = sorted(status for status, _, _, _ in answers)
    assert statuses == [200] * WRITES + [429] * (3 * WRITES)
    assert len({pid for _, _, _, pid in answers if pid is not None}) == 2

    # Metrics add up over both workers (prometheus_client's multiprocess mode in the run's
    # private directory), whichever worker answers the scrape.
    from prometheus_client.parser import text_string_to_metric_families

    scraped: dict[int, float] = {}
    deadline = time.monotonic() + 20
    while len(scraped) < 2 and time.monotonic() < deadline:
        status, _, text, pid = serve.request("GET", "/metrics")
        assert status == 200
        if pid is not None:
            scraped[pid] = sum(
                sample.value
                for family in text_string_to_metric_families(text.decode())
                for sample in family.samples
                if sample.name == "contactmatch_http_requests_total"
                and sample.labels["endpoint"] == "settings"
            )
    assert scraped == dict.fromkeys(scraped, 4 * WRITES)
    assert len(scraped) == 2

    # SIGINT (Ctrl-C) stops the parent and its workers cleanly.
    assert serve.stop(signal.SIGINT) == 0
    assert "Traceback" not in serve.stderr()


# -- (c) graceful shutdown ------------------------------------------------------------------


@pytest.fixture
def backend() -> str:
    """SQLite for the tests below (the parametrised test above chooses its own)."""
    return "sqlite"


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ],
)
def test_pir_over_two_workers_patches_one_hint_across_processes(
    world: World, start: Callable[..., Workers]
) -> None:
    # `serve --scheme oprf+pir`: both workers lay the registry out identically (the PIR
    # database is a function of the membership), so a hint patched by one worker's answer is
    # valid on the other's, and registrations reach it as deltas.
    serve = start("--allow-unverified-numbers", "--scheme", "oprf+pir", "--scheme", "oprf+filter")
    serve.wait_for_both_workers()
    t = FreshConnections(serve)
    book = [NEWCOMER, ME, "+989121111111", "+989122222222"]
    with HttpClient(serve.url, world.token("me"), transport=t) as me:
        assert me.sync(book, scheme="oprf+pir").matches == {ME: "me"}
        with HttpClient(serve.url, world.token("newcomer")) as newcomer:
            assert newcomer.register("newcomer", NEWCOMER) == NEWCOMER
        time.sleep(3 * REFRESH)
        for round_ in range(12):
            assert me.sync(book, scheme="oprf+pir").matches == {NEWCOMER: "newcomer", ME: "me"}
            answered = {pid for path, _, pid in t.answered if path == "/v1/discover" and pid}
            if round_ >= 3 and len(answered) == 2:
                break
        # The hint held, patched by answers from both workers, is the servers' current one.
        assert me._hints["oprf+pir"].version == me.hint_version("oprf+pir")
    assert {status for _, status, _ in t.answered} <= {200, 304}  # 304: filter unchanged
    assert len(answered) == 2, "every discovery landed on one worker"
    assert serve.stop() == 0


def test_sigterm_lets_an_in_flight_discovery_finish(
    world: World, start: Callable[..., Workers]
) -> None:
    serve = start("--limits", str(world.limits_file()))
    with HttpClient(serve.url, world.token("me")) as me:
        client = DiscoveryClient(me.info("oprf+bucket"))
    body = client.prepare([f"+98912{i:07d}" for i in range(5_000)])
    head = (
        f"POST /v1/discover HTTP/1.1\r\nHost: 127.0.0.1:{serve.port}\r\n"
        f"Authorization: Bearer {world.token('me')}\r\nContent-Type: {BINARY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    half = len(body) // 2
    assert serve.proc is not None
    with socket.create_connection(("127.0.0.1", serve.port), timeout=30) as sock:
        # A slow client: the headers and half the body, and the request is in flight ...
        sock.sendall(head + body[:half])
        deadline = time.monotonic() + 10
        while serve.worker_of(sock.getsockname()[1]) is None:
            assert time.monotonic() < deadline, "no worker took the connection"
            time.sleep(0.02)
        time.sleep(0.2)  # the worker reads the headers as soon as it accepts
        serve.proc.send_signal(signal.SIGTERM)
        # ... when both workers have begun shutting down (they stop accepting) ...
        while serve.stderr().count("Shutting down") < 2:
            assert time.monotonic() < deadline + 10, "the workers did not begin shutting down"
            time.sleep(0.02)
        # ... and it still gets its whole answer.
        sock.sendall(body[half:])
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        answer = resp.read()
        assert resp.status == 200, answer[:200]
    assert isinstance(decode(answer, ServiceResponse), ServiceResponse)
    assert serve.proc.wait(timeout=30) == 0
    assert "Traceback" not in serve.stderr()
    with pytest.raises(httpx.TransportError):  # the port is closed
        httpx.get(f"{serve.url}/v1/schemes")


def test_single_process_exits_zero_on_sigterm(start: Callable[..., Workers]) -> None:
    serve = start(workers=1)
    assert serve.stop(signal.SIGTERM) == 0
    assert "Traceback" not in serve.stderr()


def test_a_worker_that_cannot_start_stops_the_server_with_its_error(
    start: Callable[..., Workers],
) -> None:
    serve = start("--verify-number", f"{__name__}:only_in_parent", wait=False)
    assert serve.proc is not None
    assert serve.proc.wait(timeout=40) == 2  # no restart loop
    err = serve.stderr()
    assert "contactmatch: error: a worker process failed to start: InvalidInput" in err
    assert "only_in_parent" in err
    assert "Traceback" not in err


# -- (d) --limits ---------------------------------------------------------------------------


def _serve_cli(world: World, *extra: str) -> list[str]:
    return [
        "serve", "--store", world.store_url, "--key", str(world.tmp / "k"),
        "--data-key", str(world.tmp / "k.data"), *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("{not json", "limits file"),
        ("[1, 2]", "expected a JSON object"),
        ('{"request": {"capacity": 1}}', "unknown field(s) 'request'"),
        ('{"requests": 5}', "requests must be an object"),
        ('{"requests": {"capacity": "5"}}', "requests.capacity must be a number"),
        ('{"requests": {"capacity": true}}', "requests.capacity must be a number"),
        ('{"requests": {"capacity": 5, "name": "x"}}', "unknown key(s) 'name'"),
        ('{"requests": {"capacity": 0}}', "positive capacity"),
        ('{"max_items": 2.5}', "max_items must be a positive integer"),
        ('{"max_items": false}', "max_items must be a positive integer"),
        ('{"reserve_share": 1.5}', "reserve_share must be in"),
        ('{"evaluations": {"capacity": 1e9}}', "ceiling"),
        ('{"requests": {"capacity": 5}, "requests": {"capacity": 6}}', "limits file"),
    ],
)
def test_limits_file_refused_with_a_typed_error(
    world: World, capsys: pytest.CaptureFixture[str], document: str, message: str
) -> None:
    path = world.limits_file(document)
    assert main(_serve_cli(world, "--limits", str(path))) == 2
    err = capsys.readouterr().err
    assert err.startswith("contactmatch: error: limits file")
    assert message in err
    assert "Traceback" not in err


def test_limits_file_missing_and_bad_worker_options_are_refused(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_serve_cli(world, "--limits", str(world.tmp / "absent.json"))) == 2
    assert "cannot read limits file" in capsys.readouterr().err
    assert main(_serve_cli(world, "--workers", "0")) == 2
    assert "workers must be a positive integer" in capsys.readouterr().err
    memory = ["serve", "--store", "memory://", "--key", str(world.tmp / "k"), "--workers", "2"]
    assert main(memory) == 2
    assert "memory:// is one process's own store" in capsys.readouterr().err


def test_limits_json_round_trip_and_partial_quotas() -> None:
    defaults = RateLimits()
    assert limits_from_json(limits_to_json(defaults)) == defaults
    limits = limits_from_json(LIMITS)
    assert limits.writes == Quota(name="writes", capacity=WRITES, period=86_400)
    # A quota given in part keeps the rest of its default (and always its name).
    assert limits.evaluations == Quota(
        name="eval", capacity=1_000_000, period=defaults.evaluations.period
    )
    assert limits.registrations == defaults.registrations
    with pytest.raises(InvalidInput, match="renamed"):
        limits_to_json(RateLimits(writes=Quota(name="w2", capacity=1, period=1)))


def sms_check(user_id: str, e164: str, proof: str | None) -> bool:
    """A verifier workers import by name."""
    del user_id, e164
    return proof == "123456"


def test_worker_config_holds_no_key_material_and_sizes_oprf_threads(world: World) -> None:
    config = WorkerConfig.build(**{**_build_args(world), "verify_number": sms_check})
    raw = config.dumps()
    assert WorkerConfig.loads(raw) == config
    assert config.verify_number == f"{__name__}:sms_check"
    assert config.oprf_threads == max(1, available_cores() // 2)
    for secret in (world.tmp / "k").read_bytes(), (world.tmp / "k.data").read_bytes():
        assert secret not in raw
    assert world.key.private_bytes().hex().encode() not in raw
    with pytest.raises(InvalidInput, match="not a worker configuration"):
        WorkerConfig.loads(b'{"store_url": "sqlite:///x"}')
    with pytest.raises(InvalidInput, match="module-level callable"):
        WorkerConfig.build(**{**_build_args(world), "verify_number": lambda u, e, p: True})

    server = config.server()
    try:
        oprf = [
            server._scheme(name).token_fn
            for name in server.schemes
            if isinstance(server._scheme(name).token_fn, OprfServerTokens)
        ]
        assert oprf
        threads = config.oprf_threads
        assert all(t.oprf._workers == threads for t in oprf if isinstance(t, OprfServerTokens))
    finally:
        server.store.close()


def _build_args(world: World) -> dict[str, Any]:
    return {
        "store_url": world.store_url,
        "key_path": str(world.tmp / "k"),
        "data_key_path": str(world.tmp / "k.data"),
        "settings": None,
        "max_body": 1024,
        "token_ttl": 60.0,
        "authenticate": None,
        "admin": None,
        "refresh_every": 1.0,
        "verify_number": None,
        "allow_unverified_numbers": False,
        "snapshot_dir": None,
        "snapshot_every": 600.0,
        "allow_foreign_keys": False,
        "workers": 2,
    }
