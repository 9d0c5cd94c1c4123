"""The adversarial review's enumeration findings (issue 9), each reproduced and closed.

Service-level tests run on every store adapter (the ``store`` fixture); the HTTP ones run a
real server on localhost.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest

from contactmatch import InvalidInput, RateLimited, UnknownUser, VerificationFailed
from contactmatch.atrest import DataKey
from contactmatch.errors import AuthenticationFailed, Conflict
from contactmatch.keys import ServerKey
from contactmatch.oprf import Mode
from contactmatch.ratelimit import DAY, GLOBAL_SUBJECT, Quota, RateLimits
from contactmatch.schemes.wire import EvalRequest
from contactmatch.server import HttpClient, ServerThread, SignedTokens, create_app
from contactmatch.service import DiscoveryClient, DiscoveryServer, ServiceSettings
from contactmatch.stores import BaseStore, open_store

KEY = ServerKey.derive(b"\x02" * 32, b"holes", Mode.OPRF)
DATA_KEY = DataKey.generate("dk-holes")
T0 = 1_700_000_000.0


def n(i: int) -> str:
    return f"+98912{i:07d}"


def sms(user: str, e164: str, proof: str | None) -> bool:
    """A stand-in for the messenger's SMS check: the code is bound to user and exact number."""
    return proof == f"{user}/{e164}"


def first_sync(srv: DiscoveryServer, user: str, book: list[str]) -> dict[str, str]:
    client = DiscoveryClient(srv.info(), filter_blob=srv.published_filter(), region="IR")
    return client.discover(book, lambda req: srv.discover(user, req)).matches


def junk_eval(srv: DiscoveryServer, count: int) -> bytes:
    """An evaluation request of ``count`` invalid elements: cheap to make, cheap to refuse."""
    return EvalRequest(scheme="oprf+filter", elements=[b"\xff" * 32] * count).encode()


# -- item 2: discovery needs a live registration; quotas follow the number --------------------


def test_discovery_needs_a_live_registration(store: BaseStore) -> None:
    srv = DiscoveryServer(store, KEY, DATA_KEY)
    srv.register_many([(f"u{i}", n(i)) for i in range(5)])
    with pytest.raises(UnknownUser):
        first_sync(srv, "never-registered", [n(1)])
    srv.delete_account("u2")
    with pytest.raises(UnknownUser):
        first_sync(srv, "u2", [n(1)])
    assert first_sync(srv, "u3", [n(1)]) == {n(1): "u1"}


def test_deleting_and_re_registering_does_not_reset_a_quota(store: BaseStore) -> None:
    now = [T0]
    limits = RateLimits(evaluations=Quota(name="eval", capacity=20, period=10 * DAY))
    srv = DiscoveryServer(
        store, KEY, DATA_KEY, settings=ServiceSettings(limits=limits), _clock=lambda: now[0]
    )
    srv.register_many([(f"u{i}", n(i)) for i in range(40)])
    srv.register("scraper", n(9_000))
    assert first_sync(srv, "scraper", [n(i) for i in range(20)])  # spends the whole quota
    with pytest.raises(RateLimited):
        first_sync(srv, "scraper", [n(i) for i in range(20, 25)])
    # The old attack: erase the account, register the same number again (under the same or a
    # new id) and start over with a full quota. The quota is the number's, so it stays spent.
    for again in ("scraper", "scraper-2"):
        srv.delete_account(again if again != "scraper-2" else "scraper")
        srv.register(again, n(9_000))
        with pytest.raises(RateLimited):
            first_sync(srv, again, [n(i) for i in range(20, 25)])
    # A different number is a different subject.
    srv.register("someone", n(9_001))
    assert first_sync(srv, "someone", [n(21)]) == {n(21): "u21"}


def test_invalid_elements_are_charged_before_they_are_refused(store: BaseStore) -> None:
    limits = RateLimits(evaluations=Quota(name="eval", capacity=100, period=10 * DAY))
    srv = DiscoveryServer(store, KEY, DATA_KEY, settings=ServiceSettings(limits=limits))
    srv.register("mallory", n(1))
    with pytest.raises(VerificationFailed):
        srv.discover("mallory", junk_eval(srv, 100))
    with pytest.raises(RateLimited):  # the junk used up the quota
        srv.discover("mallory", junk_eval(srv, 1))


def test_global_state_lives_where_no_user_id_reaches(store: BaseStore) -> None:
    limits = RateLimits(
        evaluations=Quota(name="eval", capacity=10, period=10 * DAY),
        global_evaluations=Quota(name="global-eval", capacity=50, period=DAY),
        reserve_share=0.0,
        max_account_share=1.0,
    )
    srv = DiscoveryServer(store, KEY, DATA_KEY, settings=ServiceSettings(limits=limits))
    srv.register_many([(uid, n(i)) for i, uid in enumerate(["all", "g", "a1", "a2", "a3"])])
    srv.register_many([(f"b{i}", n(100 + i)) for i in range(3)])
    for uid in ("all", "g", "a1", "a2", "a3"):
        with pytest.raises(VerificationFailed):
            srv.discover(uid, junk_eval(srv, 10))
    with pytest.raises(RateLimited) as exc:  # the ceiling of 50 is spent
        srv.discover("b0", junk_eval(srv, 1))
    assert exc.value.quota == "global-eval"
    srv.delete_account("all")  # used to erase the global subject "all" with it
    srv.delete_account("g")
    with pytest.raises(RateLimited):
        srv.discover("b1", junk_eval(srv, 1))
    with pytest.raises(InvalidInput):  # the namespace cannot be named by a user id
        srv.register(GLOBAL_SUBJECT, n(99))


def test_a_hundred_flat_out_accounts_leave_a_first_sync_standing(store: BaseStore) -> None:
    """The issue's measurement: 100 attacking accounts send invalid elements as fast as their
    quotas let them, and cycle delete/re-register; a new user's 1,000-contact first sync works.

    The quotas are the defaults at a quarter scale, except a light allowance of a first sync:
    100 accounts x 5,000 overflow the shared ceiling (440,000), and what they may then draw
    from the reserve (100 x 1,000) leaves room for the newcomer.
    """
    limits = RateLimits(
        evaluations=Quota(name="eval", capacity=5_000, period=10 * DAY),
        global_evaluations=Quota(name="global-eval", capacity=550_000, period=DAY),
        light_allowance=Quota(name="light", capacity=1_000, period=10 * DAY),
    )
    assert RateLimits.account_share(limits.evaluations, limits.global_evaluations) <= 0.01
    srv = DiscoveryServer(store, KEY, DATA_KEY, settings=ServiceSettings(limits=limits))
    registered = [(f"u{i}", n(i)) for i in range(300)]
    srv.register_many(registered)
    attackers = [(f"evil{i}", n(50_000 + i)) for i in range(100)]
    srv.register_many(attackers)
    batch = junk_eval(srv, 5_000)
    refused = 0
    for uid, number in attackers:
        for _ in range(3):  # flat out: keep sending until refused, then reset and retry
            try:
                srv.discover(uid, batch)
            except VerificationFailed:
                continue
            except RateLimited:
                refused += 1
                srv.delete_account(uid)
                srv.register(uid, number)
    assert refused >= 100
    stats = srv.stats()
    assert stats["evaluated"] >= 440_000  # the shared ceiling really was flooded
    srv.register("newcomer", n(70_000))
    book = [n(i) for i in range(300)] + [n(80_000 + i) for i in range(700)]
    matches = first_sync(srv, "newcomer", book)
    assert matches == {num: uid for uid, num in registered}


# -- items 1, 3, 4, 8, 11 over HTTP ----------------------------------------------------------


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as s:
        yield s


def _serve(stack: ExitStack, srv: DiscoveryServer, **kwargs: object) -> tuple[str, SignedTokens]:
    tokens = SignedTokens.from_server_key(KEY)
    app = create_app(srv, authenticate=tokens, **kwargs)  # type: ignore[arg-type]
    return stack.enter_context(ServerThread(app)), tokens


def _post(url: str, tokens: SignedTokens, user: str, path: str, body: object) -> httpx.Response:
    headers = {"Authorization": f"Bearer {tokens.issue(user)}"}
    method = "PUT" if path in ("/v1/number", "/v1/settings") else "POST"
    return httpx.request(method, url + path, json=body, headers=headers)


def test_number_endpoints_need_a_verifier_or_the_dev_flag(
    stack: ExitStack, caplog: pytest.LogCaptureFixture
) -> None:
    srv = DiscoveryServer(open_store("memory://"), KEY, DATA_KEY)
    url, tokens = _serve(stack, srv)
    assert _post(url, tokens, "a", "/v1/register", {"number": n(1)}).status_code == 404
    assert _post(url, tokens, "a", "/v1/number", {"number": n(1)}).status_code == 404
    doc = httpx.get(url + "/openapi.json").json()
    assert "/v1/register" not in doc["paths"]
    with caplog.at_level(logging.WARNING, logger="contactmatch.server"):
        dev_url, _ = _serve(stack, srv, allow_unverified_numbers=True)
    assert "DEVELOPMENT MODE" in caplog.text
    assert _post(dev_url, tokens, "a", "/v1/register", {"number": n(1)}).status_code == 200


def test_unverified_callers_learn_nothing_and_are_metered(stack: ExitStack) -> None:
    srv = DiscoveryServer(open_store("memory://"), KEY, DATA_KEY)
    srv.register_many([("held", n(1)), ("nobody-user", n(2))])
    srv.set_discoverability("nobody-user", "nobody")
    url, tokens = _serve(stack, srv, verify_number=sms)
    answers = set()
    for number in (n(1), n(2), n(3)):  # held, held by a hidden user, free
        r = _post(url, tokens, "prober", "/v1/register", {"number": number, "proof": "000000"})
        answers.add((r.status_code, r.json()["error"]["code"], r.json()["error"]["message"]))
    assert answers == {(403, "forbidden", "possession of the number was not proven")}
    # Attempts are metered per account (10 a day by default) before the verifier is asked.
    codes = [
        _post(url, tokens, "prober", "/v1/register", {"number": n(10 + i)}).status_code
        for i in range(10)
    ]
    assert codes.count(403) == 7
    assert codes[7:] == [429, 429, 429]
    # ... and per target number, so many accounts cannot grind one victim's SMS code.
    codes = [
        _post(url, tokens, f"p{i}", "/v1/register", {"number": n(1), "proof": f"{i}"}).status_code
        for i in range(11)
    ]
    assert codes[:9] == [403] * 9
    assert codes[-1] == 429
    assert srv.store.get_users(["held"])[0] is not None


def test_every_registration_needs_proof_even_of_a_free_number(stack: ExitStack) -> None:
    srv = DiscoveryServer(open_store("memory://"), KEY, DATA_KEY)
    url, tokens = _serve(stack, srv, verify_number=sms)
    assert _post(url, tokens, "a", "/v1/register", {"number": n(5)}).status_code == 403
    ok = _post(url, tokens, "a", "/v1/register", {"number": n(5), "proof": f"a/{n(5)}"})
    assert ok.status_code == 200
    # Registering the same number again, or changing number, needs proof again.
    assert _post(url, tokens, "a", "/v1/register", {"number": n(5)}).status_code == 403
    assert _post(url, tokens, "a", "/v1/number", {"number": n(6)}).status_code == 403
    moved = _post(url, tokens, "a", "/v1/number", {"number": n(6), "proof": f"a/{n(6)}"})
    assert moved.json() == {"user_id": "a", "number": n(6)}


def test_the_verifier_sees_the_exact_number_that_is_registered(stack: ExitStack) -> None:
    seen: list[tuple[str, str, str | None]] = []

    def verifier(user: str, e164: str, proof: str | None) -> bool:
        seen.append((user, e164, proof))
        return proof == "123456" and e164 == "+31612345678"  # the code was sent to NL

    srv = DiscoveryServer(open_store("memory://"), KEY, DATA_KEY)
    srv.register("owner", "+33612345678")  # the French number's owner
    url, tokens = _serve(stack, srv, verify_number=verifier)
    # The attacker proves the Dutch number but asks for the local digits under region FR.
    body = {"number": "0612345678", "region": "FR", "proof": "123456"}
    assert _post(url, tokens, "attacker", "/v1/register", body).status_code == 403
    assert seen == [("attacker", "+33612345678", "123456")]
    assert srv.store.get_users(["owner"])[0] is not None  # not erased


def test_a_contacts_only_user_cannot_be_reached_by_claiming_a_contact(stack: ExitStack) -> None:
    srv = DiscoveryServer(open_store("memory://"), KEY, DATA_KEY)
    srv.register("victim", n(1), discoverability="contacts")
    friend = n(2)  # in the victim's book, not registered
    client = DiscoveryClient(srv.info(), filter_blob=srv.published_filter())
    client.discover([friend], lambda req: srv.discover("victim", req))
    srv.upload_contacts("victim", client.upload_request())
    url, tokens = _serve(stack, srv, verify_number=sms)
    claim = _post(url, tokens, "attacker", "/v1/register", {"number": friend})
    assert claim.status_code == 403
    assert srv.store.get_users(["attacker"]) == [None]
    with pytest.raises(UnknownUser):
        first_sync(srv, "attacker", [n(1)])
    # The friend, proving the number, does find the victim.
    ok = _post(
        url, tokens, "friend", "/v1/register", {"number": friend, "proof": f"friend/{friend}"}
    )
    assert ok.status_code == 200
    assert first_sync(srv, "friend", [n(1)]) == {n(1): "victim"}


def test_library_claim_without_verifier_refuses_held_numbers(store: BaseStore) -> None:
    srv = DiscoveryServer(store, KEY, DATA_KEY)
    srv.register("a", n(1))
    with pytest.raises(Conflict):
        srv.claim_number("b", n(1), None, None)
    assert srv.claim_number("b", n(2), None, None) == n(2)
    with pytest.raises(VerificationFailed):
        srv.claim_number("c", n(3), "wrong", sms)
    with pytest.raises(UnknownUser):
        srv.claim_number("d", n(4), f"d/{n(4)}", sms, existing=True)


def test_writes_are_metered(stack: ExitStack) -> None:
    limits = RateLimits(writes=Quota(name="writes", capacity=5, period=3600))
    srv = DiscoveryServer(open_store("memory://"), KEY, DATA_KEY, settings=ServiceSettings(
        limits=limits))  # fmt: skip
    srv.register("toggler", n(1))
    url, tokens = _serve(stack, srv, verify_number=sms)
    codes = [
        _post(url, tokens, "toggler", "/v1/settings", {"discoverability": d}).status_code
        for d in ["nobody", "everyone"] * 4
    ]
    assert codes[:5] == [200] * 5
    assert set(codes[5:]) == {429}
    client = DiscoveryClient(srv.info(), filter_blob=srv.published_filter())
    client.discover([n(7)], lambda req: srv.discover("toggler", req))
    with pytest.raises(RateLimited):  # uploads share the write quota
        srv.upload_contacts("toggler", client.upload_request())
    # Erasure is never metered.
    auth = {"Authorization": f"Bearer {tokens.issue('toggler')}"}
    assert httpx.delete(url + "/v1/account", headers=auth).status_code == 204


def test_a_deleted_accounts_token_authenticates_nothing(stack: ExitStack) -> None:
    srv = DiscoveryServer(open_store("memory://"), KEY, DATA_KEY)
    srv.register("gone", n(1))
    url, tokens = _serve(stack, srv, verify_number=sms)
    http = stack.enter_context(HttpClient(url, tokens.issue("gone")))
    assert http.sync([n(2)]).matches == {}
    http.delete_account("gone")
    with pytest.raises(AuthenticationFailed):
        http.sync([n(3)])
    with pytest.raises(AuthenticationFailed):
        http.set_discoverability("gone", "nobody")
    with pytest.raises(AuthenticationFailed):
        http.delete_account("gone")
