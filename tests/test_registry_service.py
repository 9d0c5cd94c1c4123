"""The registry across processes and restarts: change feed, snapshots, store-derived versions.

Two ``DiscoveryServer`` objects on one store stand for two server processes (each has its own
store handle where the adapter allows it); a restart is a new object started from the
snapshot directory. Runs on every store adapter.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from contactmatch.atrest import DataKey
from contactmatch.filters import GolombFilter, load_filter
from contactmatch.keys import ServerKey
from contactmatch.oprf import Mode
from contactmatch.ratelimit import Quota, RateLimits
from contactmatch.service import DiscoveryClient, DiscoveryServer, ServiceSettings
from contactmatch.stores import BaseStore, open_store
from tests.services import drop_redis_prefix

KEY = ServerKey.derive(b"\x05" * 32, b"registry", Mode.OPRF)
DATA_KEY = DataKey.generate("dk-registry")
NUMBERS = [f"+98912{i:07d}" for i in range(12)]
USERS = [f"u{i}" for i in range(8)]
#: The watcher discovers after every step; quotas are not what this test is about.
GENEROUS = ServiceSettings(
    limits=RateLimits(requests=Quota(name="requests", capacity=100_000, period=3600))
)


def fresh_url(store_url: str, new_schema: Callable[[], str]) -> str:
    """Another isolated namespace of the same adapter (a new example needs a new store).

    PostgreSQL schemas come from the suite's one schema fixture (dropped after the test);
    Redis prefixes are deleted by the test that asked for them.
    """
    tag = "t" + uuid.uuid4().hex[:12]
    if store_url.startswith("sqlite:///"):
        return store_url.replace("registry.db", f"{tag}.db")
    if "schema=" in store_url:
        return store_url.split("schema=", maxsplit=1)[0] + f"schema={new_schema()}"
    if "prefix=" in store_url:
        return store_url.split("prefix=", maxsplit=1)[0] + f"prefix={tag}"
    return store_url


def two_handles(url: str) -> tuple[BaseStore, BaseStore]:
    first = open_store(url)
    # memory:// is one store per handle: the two "processes" share the object instead.
    second = first if url.startswith("memory:") else open_store(url)
    return first, second


def sync(
    srv: DiscoveryServer, user: str, book: list[str], client: DiscoveryClient
) -> dict[str, str]:
    return client.discover(book, lambda req: srv.discover(user, req)).matches


def filter_client(srv: DiscoveryServer) -> DiscoveryClient:
    return DiscoveryClient(srv.info("oprf+filter"), filter_blob=srv.published_filter("oprf+filter"))


# -- the reproduction -------------------------------------------------------------------


def test_filter_versions_survive_restarts_and_agree_across_processes(
    store_url: str, tmp_path: Path
) -> None:
    """0.1 counted versions per process from 1: a restarted process's "version 2" was other
    content, and a client holding it got 304 and missed a registered contact for good."""
    url = store_url
    a_store, b_store = two_handles(url)
    try:
        a = DiscoveryServer(a_store, KEY, DATA_KEY)
        a.register_many([("me", NUMBERS[0]), ("alice", NUMBERS[1])])
        client = filter_client(a)
        assert sync(a, "me", NUMBERS[1:4], client) == {NUMBERS[1]: "alice"}
        held = client.filter_version
        a.register("bob", NUMBERS[2])  # after the client's sync
        # "Restart": a new process on the same store, and another client triggers a
        # publication there.
        b = DiscoveryServer(b_store, KEY, DATA_KEY)
        filter_client(b)
        assert b.filter_version() == a.filter_version() != held
        # The first client updates from b: a delta or the whole filter, never "not modified".
        client.update_filter(b.published_filter("oprf+filter", since=held))
        assert client.filter_version == b.filter_version()
        assert sync(b, "me", NUMBERS[1:4], client) == {NUMBERS[1]: "alice", NUMBERS[2]: "bob"}
        # Same version, same bytes, in both processes.
        assert a.published_filter() == b.published_filter()
    finally:
        a_store.close()
        if b_store is not a_store:
            b_store.close()


def test_start_from_snapshot_then_feed(store_url: str, tmp_path: Path) -> None:
    snaps = tmp_path / "snaps"
    s1, s2 = two_handles(store_url)
    try:
        a = DiscoveryServer(s1, KEY, DATA_KEY, snapshot_dir=snaps)
        assert a.started_from == "store"
        a.register_many([(u, n) for u, n in zip(USERS, NUMBERS, strict=False)])
        path = a.save_snapshot()
        assert path is not None
        assert path.exists()
        a.delete_account("u1")
        a.register("late", NUMBERS[10])  # after the snapshot: only in the feed
        b = DiscoveryServer(s2, KEY, DATA_KEY, snapshot_dir=snaps)
        assert b.started_from == "snapshot"
        assert b.filter_version() == a.filter_version()
        assert b.published_filter() == a.published_filter()
        book = NUMBERS
        want = {n: u for u, n in zip(USERS, NUMBERS, strict=False) if u != "u1"}
        want[NUMBERS[10]] = "late"
        assert sync(b, "u0", book, filter_client(b)) == want
        # A corrupt snapshot is refused and the server starts from the store, correctly.
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x40
        for p in snaps.iterdir():
            p.write_bytes(bytes(data))
        c = DiscoveryServer(s2, KEY, DATA_KEY, snapshot_dir=snaps)
        assert c.started_from == "store"
        assert sync(c, "u0", book, filter_client(c)) == want
    finally:
        s1.close()
        if s2 is not s1:
            s2.close()


def test_refresh_reads_only_the_feed(store_url: str) -> None:
    s1, s2 = two_handles(store_url)
    try:
        a = DiscoveryServer(s1, KEY, DATA_KEY)
        b = DiscoveryServer(s2, KEY, DATA_KEY)
        a.register_many([(u, n) for u, n in zip(USERS, NUMBERS, strict=False)])
        assert b.refresh() == (len(USERS), 0)
        assert b.refresh() == (0, 0)  # nothing new: nothing read
        a.set_discoverability("u2", "nobody")
        a.change_number("u3", NUMBERS[11])
        assert b.refresh() == (1, 1)
        assert b.feed_position == a.feed_position == s1.feed_head()
        assert b.published_filter() == a.published_filter()
    finally:
        s1.close()
        if s2 is not s1:
            s2.close()


# -- random interleavings against a plain dict -------------------------------------------------


class TwoProcesses(RuleBasedStateMachine):
    """Random writes through either process, refreshes and restarts, against a dict."""

    make: Callable[[], tuple[BaseStore, BaseStore]]
    snaps: Path

    def __init__(self) -> None:
        super().__init__()
        self.stores = self.make()
        self.dir = self.snaps / uuid.uuid4().hex
        self.servers = [self._server(s) for s in self.stores]
        self.ref: dict[str, tuple[str, str]] = {}  # user -> (number, setting)
        self.servers[0].register("watcher", "+989350000001")
        self.client = filter_client(self.servers[0])

    def _server(self, store: BaseStore) -> DiscoveryServer:
        return DiscoveryServer(store, KEY, DATA_KEY, settings=GENEROUS, snapshot_dir=self.dir)

    def teardown(self) -> None:
        for s in {id(s): s for s in self.stores}.values():
            s.close()

    @initialize()
    def start(self) -> None:
        pass

    @rule(p=st.integers(0, 1), user=st.sampled_from(USERS), num=st.sampled_from(NUMBERS))
    def register(self, p: int, user: str, num: str) -> None:
        self.servers[p].register(user, num)
        for other, (n, _) in list(self.ref.items()):
            if n == num and other != user:
                del self.ref[other]  # device transfer
        setting = self.ref.get(user, ("", "everyone"))[1]
        self.ref[user] = (num, setting)

    @precondition(lambda self: bool(self.ref))
    @rule(p=st.integers(0, 1), data=st.data())
    def delete(self, p: int, data: st.DataObject) -> None:
        user = data.draw(st.sampled_from(sorted(self.ref)))
        self.servers[p].delete_account(user)
        del self.ref[user]

    @precondition(lambda self: bool(self.ref))
    @rule(p=st.integers(0, 1), data=st.data(), setting=st.sampled_from(["everyone", "nobody"]))
    def setting(self, p: int, data: st.DataObject, setting: str) -> None:
        user = data.draw(st.sampled_from(sorted(self.ref)))
        self.servers[p].set_discoverability(user, setting)
        self.ref[user] = (self.ref[user][0], setting)

    @rule(p=st.integers(0, 1))
    def refresh(self, p: int) -> None:
        self.servers[p].refresh()

    @rule(p=st.integers(0, 1))
    def restart(self, p: int) -> None:
        self.servers[1 - p].save_snapshot()
        self.servers[p] = self._server(self.stores[p])

    @rule(p=st.integers(0, 1))
    def client_updates_filter(self, p: int) -> None:
        srv = self.servers[p]
        self.client.update_filter(
            srv.published_filter("oprf+filter", since=self.client.filter_version)
        )
        # Whatever process answered, the client now holds exactly that process's filter.
        assert self.client.filter_version == srv.filter_version()
        whole = load_filter(srv.published_filter("oprf+filter"))
        assert isinstance(whole, GolombFilter)
        assert self.client._filter is not None
        assert self.client._filter.checksum == whole.checksum

    @invariant()
    def both_match_the_reference_once_refreshed(self) -> None:
        want = {n: u for u, (n, s) in self.ref.items() if s == "everyone"}
        for srv in self.servers:
            srv.refresh()
        assert self.servers[0].published_filter() == self.servers[1].published_filter()
        for srv in self.servers:
            client = filter_client(srv)
            got = client.discover(NUMBERS, lambda req, srv=srv: srv.discover("watcher", req))
            assert got.matches == want
            bucket = DiscoveryClient(srv.info("oprf+bucket"))
            got = bucket.discover(NUMBERS, lambda req, srv=srv: srv.discover("watcher", req))
            assert got.matches == want


def test_two_processes_agree_with_a_dict(
    store_url: str, tmp_path: Path, backend: str, pg_schemas: Callable[[], str]
) -> None:
    urls: list[str] = []

    def make() -> tuple[BaseStore, BaseStore]:
        url = fresh_url(store_url, pg_schemas)
        urls.append(url)
        return two_handles(url)

    TwoProcesses.make = staticmethod(make)  # type: ignore[assignment]
    TwoProcesses.snaps = tmp_path / "snaps"
    examples = 12 if backend in ("memory", "sqlite") else 4
    run_state_machine_as_test(
        TwoProcesses,
        settings=settings(
            max_examples=examples,
            stateful_step_count=12,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
    for url in urls:  # Redis prefixes (PostgreSQL schemas go with pg_schemas)
        if "prefix=" in url:
            drop_redis_prefix(url.split("prefix=", 1)[1], cluster="cluster" in url)


def test_snapshots_keep_nothing_of_a_deleted_user(tmp_path: Path) -> None:
    """After a deletion, the next two snapshots (the default ``keep=2``) leave no byte derived
    from the user's token or id in the snapshot directory."""
    from contactmatch._hashing import hash64
    from contactmatch.registry._derive import filter_salt
    from contactmatch.schemes.sealed import fingerprint_of, seal_user_id

    snaps = tmp_path / "snaps"
    store = open_store(f"sqlite:///{tmp_path}/r.db")
    try:
        srv = DiscoveryServer(store, KEY, DATA_KEY, snapshot_dir=snaps)
        srv.register_many([(u, n) for u, n in zip(USERS, NUMBERS, strict=False)])
        rec = store.get_users(["u3"])[0]
        assert rec is not None
        token = rec.token
        h = hash64([token], filter_salt(srv.key_id))[0]
        fp = fingerprint_of(token)
        derived = {  # as the columns store them (little-endian; see registry/_columns.py)
            "fingerprint bytes 4..7": fp[4:8][::-1],  # a little-endian uint32
            "sealed id": seal_user_id(token, "u3"),
            "hash": int(h).to_bytes(8, "little"),
        }
        srv.save_snapshot()
        held = b"".join(p.read_bytes() for p in snaps.iterdir())
        assert all(v in held for v in derived.values())  # the check can see them
        srv.delete_account("u3")
        srv.save_snapshot()
        srv.register("u9", NUMBERS[9])
        srv.save_snapshot()
        held = b"".join(p.read_bytes() for p in snaps.iterdir())
        assert [k for k, v in derived.items() if v in held] == []
    finally:
        store.close()
