"""The discovery service in-process, end to end, on every store adapter."""

from __future__ import annotations

from pathlib import Path

import pytest

from contactmatch.atrest import DataKey
from contactmatch.errors import (
    InvalidInput,
    InvalidKey,
    InvalidNumber,
    MalformedMessage,
    ProtocolStateError,
    RateLimited,
    UnknownKeyId,
    UnknownScheme,
    UnknownUser,
)
from contactmatch.filters import GolombFilter
from contactmatch.keys import ServerKey
from contactmatch.oprf import Mode
from contactmatch.ratelimit import Quota, RateLimits
from contactmatch.service import (
    DEFAULT_SCHEMES,
    DiscoveryClient,
    DiscoveryResult,
    DiscoveryServer,
    ServiceSettings,
)
from contactmatch.stores import BaseStore, open_store

OPRF_KEY = ServerKey.derive(b"\x01" * 32, b"test", Mode.OPRF)
DATA_KEY = DataKey.generate("dk-test")


def n(i: int) -> str:
    return f"+98912{i:07d}"


@pytest.fixture
def server(store: BaseStore) -> DiscoveryServer:
    srv = DiscoveryServer(store, OPRF_KEY, DATA_KEY, settings=ServiceSettings(region="IR"))
    srv.register_many([(f"u{i}", n(i)) for i in range(200)])
    return srv


def sync(
    srv: DiscoveryServer,
    requester: str,
    book: list[str],
    scheme: str = "oprf+filter",
    cache: dict[tuple[str, str], bytes] | None = None,
) -> DiscoveryResult:
    blob = srv.published_filter(scheme) if scheme.endswith("filter") else None
    client = DiscoveryClient(srv.info(scheme), filter_blob=blob, region="IR", cache=cache)
    return client.discover(book, lambda req: srv.discover(requester, req))


@pytest.mark.parametrize("scheme", DEFAULT_SCHEMES)
def test_discovery_finds_registered_contacts(server: DiscoveryServer, scheme: str) -> None:
    book = ["0912 000 0005", "+98 912 000 0150", "00989120009999", "021 8877 6655", "nonsense"]
    res = sync(server, "u1", book, scheme)
    assert res.complete
    assert res.matches == {n(5): "u5", n(150): "u150"}
    assert res.unregistered == [n(9999)]
    assert res.rejected == {"not_mobile": 1, "not_a_number": 1}


def test_sans_io_steps(server: DiscoveryServer) -> None:
    client = DiscoveryClient(server.info("oprf+bucket"), region="IR")
    first = client.finalize(server.discover("u1", client.prepare([n(3), n(999)])))
    assert not first.complete  # keyed: the first round was the evaluation
    assert first.next_request is not None
    done = client.finalize(server.discover("u1", first.next_request))
    assert done.complete
    assert done.matches == {n(3): "u3"}
    with pytest.raises(ProtocolStateError):  # the discovery is over: prepare() another
        client.finalize(server.discover("u1", first.next_request))


def test_filter_of_another_key_is_refused_once_for_both_clients(server: DiscoveryServer) -> None:
    # The key-id check lives in schemes.client.filter_for; DiscoveryClient goes through it.
    foreign = GolombFilter.build([b"x" * 64], key_id="another-key").to_bytes()
    with pytest.raises(UnknownKeyId):
        DiscoveryClient(server.info("oprf+filter"), filter_blob=foreign)
    client = DiscoveryClient(
        server.info("oprf+filter"), filter_blob=server.published_filter("oprf+filter")
    )
    held = client.filter_version
    with pytest.raises(UnknownKeyId):
        client.update_filter(foreign)
    assert client.filter_version == held  # a refused filter is not installed


def test_resync_uses_the_token_cache(server: DiscoveryServer) -> None:
    cache: dict[tuple[str, str], bytes] = {}
    sync(server, "u1", [n(i) for i in range(0, 400, 2)], cache=cache)
    before = server.stats().get("evaluated", 0)
    res = sync(server, "u1", [n(i) for i in range(0, 400, 2)], cache=cache)
    assert server.stats().get("evaluated", 0) == before  # nothing evaluated again
    assert len(res.matches) == 100


def test_filter_delta_after_registration(server: DiscoveryServer) -> None:
    blob = server.published_filter("oprf+filter")
    client = DiscoveryClient(server.info("oprf+filter"), filter_blob=blob, region="IR")
    old = client.filter_version
    server.register("new", n(5000))
    res = client.discover([n(5000)], lambda r: server.discover("u1", r))
    assert res.filter_stale  # the server's filter moved on; this client's copy misses "new"
    delta = server.published_filter("oprf+filter", since=old)
    assert len(delta) < len(blob)
    client.update_filter(delta)
    assert client.filter_version == server.filter_version() != old  # versions name content
    assert client.discover([n(5000)], lambda r: server.discover("u1", r)).matches == {
        n(5000): "new"
    }


def test_settings_hide_users(server: DiscoveryServer) -> None:
    server.set_discoverability("u7", "nobody")
    server.set_discoverability("u8", "contacts")
    for scheme in DEFAULT_SCHEMES:
        res = sync(server, "u1", [n(7), n(8), n(9)], scheme)
        assert res.matches == {n(9): "u9"}, scheme
    # u8 (contacts only) uploads a book containing u1: now u1, and only u1, finds u8.
    up = DiscoveryClient(server.info(), filter_blob=server.published_filter(), region="IR")
    up.discover([n(1)], lambda r: server.discover("u8", r))
    assert server.upload_contacts("u8", up.upload_request()) == 1
    for scheme in DEFAULT_SCHEMES:
        assert sync(server, "u1", [n(8)], scheme).matches == {n(8): "u8"}, scheme
        assert sync(server, "u2", [n(8)], scheme).matches == {}, scheme
    server.set_discoverability("u7", "everyone")
    assert sync(server, "u1", [n(7)]).matches == {n(7): "u7"}


def test_change_number_and_device_transfer(server: DiscoveryServer) -> None:
    assert server.change_number("u3", "0912 111 2222") == "+989121112222"
    res = sync(server, "u1", [n(3), "+989121112222"])
    assert res.matches == {"+989121112222": "u3"}
    # Another account registers u4's number: it moves, and u4's registration is gone.
    server.register("u4-new-phone", n(4))
    assert sync(server, "u1", [n(4)]).matches == {n(4): "u4-new-phone"}
    assert server.store.get_users(["u4"]) == [None]
    with pytest.raises(UnknownUser):
        server.change_number("ghost", n(1))


def test_delete_account_removes_everywhere(server: DiscoveryServer) -> None:
    server.delete_account("u10")
    for scheme in DEFAULT_SCHEMES:
        assert sync(server, "u1", [n(10)], scheme).matches == {}
    assert server.store.get_users(["u10"]) == [None]
    with pytest.raises(UnknownUser):
        server.delete_account("u10")
    assert server.stats()["deletions"] == 1


def test_contacts_to_notify(server: DiscoveryServer) -> None:
    # u20 opts in and uploads a book holding a number not yet registered.
    up = DiscoveryClient(server.info(), filter_blob=server.published_filter(), region="IR")
    up.discover([n(7000), n(1)], lambda r: server.discover("u20", r))
    server.upload_contacts("u20", up.upload_request())
    server.register("joiner", n(7000))
    assert server.contacts_to_notify("joiner") == ["u20"]
    server.set_discoverability("joiner", "contacts")
    assert server.contacts_to_notify("joiner") == []  # joiner does not have u20 in its book
    server.set_discoverability("joiner", "nobody")
    assert server.contacts_to_notify("joiner") == []


def test_restart_reloads_the_index(store: BaseStore) -> None:
    first = DiscoveryServer(store, OPRF_KEY, DATA_KEY)
    first.register_many([(f"u{i}", n(i)) for i in range(50)])
    first.set_discoverability("u2", "nobody")
    again = DiscoveryServer(store, OPRF_KEY, DATA_KEY)
    assert sync(again, "u1", [n(1), n(2), n(3)]).matches == {n(1): "u1", n(3): "u3"}


def test_research_schemes_alongside(store: BaseStore) -> None:
    settings = ServiceSettings(schemes=("oprf+lookup", "sha256+lookup", "hmac+bucket"))
    srv = DiscoveryServer(store, OPRF_KEY, DATA_KEY, settings=settings)
    srv.register_many([(f"u{i}", n(i)) for i in range(30)])
    for scheme in settings.schemes:
        assert sync(srv, "u1", [n(5), n(500)], scheme).matches == {n(5): "u5"}


def test_rate_limits_and_sizes(store: BaseStore) -> None:
    now = [1_000_000.0]
    limits = RateLimits(
        evaluations=Quota(name="eval", capacity=100, period=100.0),
        max_items=150,
        max_account_share=1.0,  # a 100 s period refills far past 1% of the daily ceiling
    )
    srv = DiscoveryServer(
        store, OPRF_KEY, DATA_KEY, settings=ServiceSettings(limits=limits), _clock=lambda: now[0]
    )
    srv.register_many([(f"u{i}", n(i)) for i in range(10)])
    sync(srv, "u1", [n(i) for i in range(80)])
    with pytest.raises(RateLimited) as exc:
        sync(srv, "u1", [n(i) for i in range(1000, 1050)])
    assert 0 < exc.value.retry_after <= 100
    now[0] += exc.value.retry_after
    sync(srv, "u1", [n(i) for i in range(1000, 1050)])  # drained: allowed again
    with pytest.raises(InvalidInput):
        sync(srv, "u2", [n(i) for i in range(2000, 2200)])  # over the per-request size limit
    assert srv.stats()["rate_limited"] == 1


def test_bad_requests(server: DiscoveryServer) -> None:
    with pytest.raises(MalformedMessage):
        server.discover("u1", b"garbage")
    client = DiscoveryClient(server.info("oprf+bucket"), region="IR")
    req = client.prepare([n(1)])
    with pytest.raises(UnknownScheme):
        DiscoveryServer(server.store, OPRF_KEY, DATA_KEY, settings=ServiceSettings(
            schemes=("oprf+filter",))).discover("u1", req)  # fmt: skip
    with pytest.raises(InvalidInput):
        DiscoveryServer(server.store, OPRF_KEY, DATA_KEY,
                        settings=ServiceSettings(schemes=("voprf+filter",)))  # fmt: skip
    with pytest.raises(InvalidNumber):
        server.register("u9999", "021 8877 6655")
    other_key = ServerKey.generate(Mode.OPRF)
    with pytest.raises(InvalidKey, match=f"{server.key_id}.*{other_key.key_id}"):
        DiscoveryServer(server.store, other_key, DATA_KEY)  # would hide every user: refused
    with pytest.raises(InvalidKey, match="data key id"):
        DiscoveryServer(server.store, OPRF_KEY, DataKey.generate("dk-other"))
    rotated = DiscoveryServer(server.store, other_key, DATA_KEY, allow_foreign_keys=True)
    up = DiscoveryClient(server.info(), filter_blob=server.published_filter(), region="IR")
    up.discover([n(1)], lambda r: server.discover("u5", r))
    with pytest.raises(UnknownKeyId):
        rotated.upload_contacts("u5", up.upload_request())


def test_results_never_show_numbers(server: DiscoveryServer) -> None:
    res = sync(server, "u1", [n(5)])
    assert "+98912" not in repr(res)
    assert "+98912" not in repr(server)


def test_two_processes_converge_with_refresh(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/shared.db"
    with open_store(url) as s1, open_store(url) as s2:
        a = DiscoveryServer(s1, OPRF_KEY, DATA_KEY)
        b = DiscoveryServer(s2, OPRF_KEY, DATA_KEY)
        a.register_many([(f"u{i}", n(i)) for i in range(20)])
        assert sync(b, "u1", [n(3)]).matches == {}  # b indexed the store before a wrote
        assert b.refresh() == (20, 0)
        assert sync(b, "u1", [n(3)]).matches == {n(3): "u3"}
        a.delete_account("u3")
        a.set_discoverability("u4", "nobody")
        a.change_number("u5", n(555))
        assert b.refresh() == (1, 2)  # u5 re-indexed; u3 and u4 gone
        assert sync(b, "u1", [n(3), n(4), n(5), n(555)]).matches == {n(555): "u5"}
        assert b.refresh() == (0, 0)


def test_discovery_counters_are_written_once_a_second_and_read_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Discovery counters are batched per process (a store write less per request); a
    reader through stats() still sees every count, including this process's pending ones."""
    from contactmatch.service import _core
    from contactmatch.stores.memory import MemoryStore

    class Counting(MemoryStore):
        writes = 0

        def incr_stats(self, deltas: dict[str, int]) -> None:  # type: ignore[override]
            Counting.writes += 1
            super().incr_stats(deltas)

    now = [1000.0]
    monkeypatch.setattr(_core.time, "monotonic", lambda: now[0])
    store = Counting()
    srv = DiscoveryServer(store, OPRF_KEY, DATA_KEY, settings=ServiceSettings(region="IR"))
    srv.register_many([(f"u{i}", n(i)) for i in range(20)])
    base = Counting.writes
    for _ in range(5):
        sync(srv, "u1", [n(i) for i in range(40)])
    assert Counting.writes == base  # nothing written within the second
    assert store.get_stats().get("requests", 0) == 0
    assert srv.stats()["requests"] >= 5  # stats() flushes first
    assert Counting.writes == base + 1
    sync(srv, "u1", [n(1)])
    now[0] += _core.STATS_FLUSH_EVERY
    sync(srv, "u1", [n(2)])  # the second is over: the next request's counters are written
    assert Counting.writes == base + 2
    total = srv.stats()["requests"]  # flushes what came after
    assert store.get_stats()["requests"] == total
