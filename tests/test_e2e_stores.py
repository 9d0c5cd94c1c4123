"""The product end to end on every store adapter: in-process and over real HTTP on 127.0.0.1."""

from __future__ import annotations

import pytest

from contactmatch import (
    AuthenticationFailed,
    DataKey,
    DiscoveryClient,
    DiscoveryServer,
    Mode,
    ServerKey,
    ServiceSettings,
)
from contactmatch.schemes import get_scheme
from contactmatch.server import HttpClient, ServerThread, SignedTokens, create_app
from contactmatch.stores import BaseStore

KEY = ServerKey.derive(b"\x02" * 32, b"e2e", Mode.OPRF)


def n(i: int) -> str:
    return f"+98935{i:07d}"


@pytest.fixture
def service(store: BaseStore) -> DiscoveryServer:
    settings = ServiceSettings(region="IR", schemes=SCHEMES)
    srv = DiscoveryServer(store, KEY, DataKey.generate(), settings=settings)
    srv.register_many([(f"u{i}", n(i)) for i in range(300)])
    return srv


SCHEMES = ("oprf+filter", "oprf+bucket", "oprf+pir", "oprf+localfilter")
BOOK = [f"0935 {i:03d} {j:04d}" for i, j in ((0, 5), (0, 250), (0, 9999), (1, 1))]
EXPECTED = {n(5): "u5", n(250): "u250"}


def _client(service: DiscoveryServer, scheme: str) -> DiscoveryClient:
    s = get_scheme(scheme)
    return DiscoveryClient(
        service.info(scheme),
        filter_blob=service.published_filter(scheme) if s.publishes_filter else None,
        hint_blob=service.published_hint(scheme) if s.retrieves_privately else None,
        region="IR",
    )


def _expected(scheme: str, expected: dict[str, str]) -> dict[str, str]:
    # localfilter is for apps whose users are their numbers: the number is the answer.
    return {k: k for k in expected} if get_scheme(scheme).decides_locally else expected


@pytest.mark.parametrize("scheme", SCHEMES)
def test_in_process(service: DiscoveryServer, scheme: str) -> None:
    client = _client(service, scheme)
    res = client.discover(BOOK, lambda r: service.discover("u1", r))
    assert res.matches == _expected(scheme, EXPECTED)
    assert sorted(res.unregistered) == ["+989350009999", "+989350010001"]
    service.delete_account("u5")
    client = _client(service, scheme)
    res = client.discover(BOOK, lambda r: service.discover("u1", r))
    assert res.matches == _expected(scheme, {n(250): "u250"})
    assert service.store.get_users(["u5"]) == [None]


def test_over_http(service: DiscoveryServer) -> None:
    tokens = SignedTokens.from_server_key(KEY)

    def sms(user: str, e164: str, proof: str | None) -> bool:
        return (user, e164, proof) == ("me", "+989357777777", "123456")

    app = create_app(service, authenticate=tokens.verify, verify_number=sms)
    with ServerThread(app) as url:
        me = HttpClient(url, tokens.issue("me"))
        try:
            with pytest.raises(AuthenticationFailed):  # 403: no proof of possession
                me.register("me", "0935 777 7777", region="IR")
            assert me.register("me", "0935 777 7777", region="IR", proof="123456") == (
                "+989357777777"
            )
            for scheme in SCHEMES:
                got = me.sync(BOOK, scheme=scheme, region="IR").matches
                assert got == _expected(scheme, EXPECTED)
            me.set_discoverability("me", "nobody")
            other = HttpClient(url, tokens.issue("u1"))
            try:
                assert other.sync(["+989357777777"], scheme="oprf+bucket").matches == {}
            finally:
                other.close()
            me.delete_account("me")
            with pytest.raises(AuthenticationFailed):  # a deleted account's token is dead
                me.delete_account("me")
        finally:
            me.close()
    assert service.store.get_users(["me"]) == [None]
