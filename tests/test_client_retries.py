"""HttpClient retries: 429 Retry-After on any call, 503 on reads only, bounded, off-able.

Every test talks to an ``httpx.MockTransport`` and replaces ``time.sleep`` (which stamina's
retry loop ends up calling) with a recorder, so the stated waits are checked without waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest
import stamina

from contactmatch.errors import ApiError, InvalidInput, RateLimited, StoreUnavailable
from contactmatch.server.client import HttpClient

URL = "http://cm.test"
JITTER = 0.5  # the most the client adds to a wait


def limited(retry_after: str | None = "2", *, quota: str = "requests") -> httpx.Response:
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    body = {"error": {"code": "rate_limited", "message": "out", "retry_after": 1.5,
                      "quota": quota}}  # fmt: skip
    return httpx.Response(429, json=body, headers=headers)


def unavailable(retry_after: str | None = None) -> httpx.Response:
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    body = {"error": {"code": "store_unavailable", "message": "store down"}}
    return httpx.Response(503, json=body, headers=headers)


def ok() -> httpx.Response:
    return httpx.Response(200, json={"schemes": ["oprf+filter"], "kept": 1, "number": "+1"})


class Server:
    """A scripted server: answers in order, then repeats the last answer; records requests."""

    def __init__(self, *answers: Callable[[], httpx.Response]) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        index = min(len(self.requests), len(self.answers)) - 1
        return self.answers[index]()

    def client(self, **kwargs: object) -> HttpClient:
        return HttpClient(URL, "t", transport=httpx.MockTransport(self), **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    waits: list[float] = []
    monkeypatch.setattr(time, "sleep", waits.append)
    return waits


# -- 429: every call, after the stated wait -------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda http: http.schemes(),
        lambda http: http.discover("u", b"x"),  # refused by the rate limiter before any work
        lambda http: http.register("u", "+15555550100"),
    ],
    ids=["get", "discover", "register"],
)
def test_429_then_200_succeeds_after_the_stated_wait(
    slept: list[float], call: Callable[[HttpClient], object]
) -> None:
    server = Server(lambda: limited("2"), ok)
    with server.client() as http:
        call(http)
    assert len(server.requests) == 2
    assert len(slept) == 1
    assert 2.0 <= slept[0] <= 2.0 + JITTER  # never earlier than stated: jitter only adds
    assert server.requests[0].content == server.requests[1].content  # the same request again


def test_429_retries_run_out_with_the_typed_error(slept: list[float]) -> None:
    server = Server(lambda: limited("1", quota="eval"))
    with server.client(retries=2) as http, pytest.raises(RateLimited) as exc:
        http.discover("u", b"x")
    assert len(server.requests) == 3
    assert len(slept) == 2
    assert (exc.value.retry_after, exc.value.quota) == (1.5, "eval")


def test_a_retry_after_beyond_the_budget_is_raised_at_once(slept: list[float]) -> None:
    server = Server(lambda: limited("864"), ok)
    with server.client(retry_wait=30) as http, pytest.raises(RateLimited):
        http.info("oprf+filter")
    assert len(server.requests) == 1
    assert slept == []


def test_the_total_wait_is_bounded(slept: list[float]) -> None:
    server = Server(lambda: limited("2"))
    with server.client(retries=10, retry_wait=5) as http, pytest.raises(RateLimited):
        http.schemes()
    assert sum(slept) <= 5
    assert len(slept) == 2  # 2 s + jitter twice; a third 2 s would pass the 5 s budget
    assert len(server.requests) == 3


@pytest.mark.parametrize("header", [None, "Wed, 21 Oct 2026 07:28:00 GMT", "-1", "1e3", "nan"])
def test_a_429_that_states_no_delay_in_seconds_is_not_retried(
    slept: list[float], header: str | None
) -> None:
    server = Server(lambda: limited(header), ok)
    with server.client() as http, pytest.raises(RateLimited):
        http.schemes()
    assert len(server.requests) == 1
    assert slept == []


# -- 503: reads only ------------------------------------------------------------------------


def test_503_on_a_get_is_retried_with_backoff(slept: list[float]) -> None:
    server = Server(unavailable, unavailable, ok)
    with server.client() as http:
        assert http.schemes() == ["oprf+filter"]
    assert len(server.requests) == 3
    assert len(slept) == 2
    assert 0.2 <= slept[0] <= 0.2 + JITTER
    assert 0.4 <= slept[1] <= 0.4 + JITTER


def test_503_honours_its_retry_after(slept: list[float]) -> None:
    server = Server(lambda: unavailable("3"), ok)
    with server.client() as http:
        http.published_filter("oprf+filter")
    assert len(slept) == 1
    assert 3.0 <= slept[0] <= 3.0 + JITTER


def test_503_on_a_get_gives_up_after_the_bound(slept: list[float]) -> None:
    server = Server(unavailable)
    with server.client(retries=3) as http, pytest.raises(StoreUnavailable):
        http.stats()
    assert len(server.requests) == 4
    assert len(slept) == 3


@pytest.mark.parametrize(
    "call",
    [
        lambda http: http.discover("u", b"x"),
        lambda http: http.upload_contacts("u", b"x"),
        lambda http: http.register("u", "+15555550100"),
        lambda http: http.change_number("u", "+15555550100"),
        lambda http: http.set_discoverability("u", "nobody"),
        lambda http: http.delete_account("u"),
    ],
    ids=["discover", "upload", "register", "change_number", "settings", "delete"],
)
def test_503_on_a_non_idempotent_call_is_not_retried(
    slept: list[float], call: Callable[[HttpClient], object]
) -> None:
    server = Server(unavailable, ok)
    with server.client() as http, pytest.raises(StoreUnavailable):
        call(http)
    assert len(server.requests) == 1
    assert slept == []


def test_other_errors_and_transport_failures_are_not_retried(slept: list[float]) -> None:
    server = Server(lambda: httpx.Response(502, text="<html>bad gateway</html>"), ok)
    with server.client() as http, pytest.raises(ApiError):
        http.schemes()
    assert len(server.requests) == 1

    calls: list[httpx.Request] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ConnectError("refused", request=request)

    with (
        HttpClient(URL, transport=httpx.MockTransport(refuse)) as http,
        pytest.raises(StoreUnavailable),
    ):
        http.schemes()
    assert len(calls) == 1
    assert slept == []


# -- off ------------------------------------------------------------------------------------


@pytest.mark.parametrize("retries", [0, None])
def test_retries_off(slept: list[float], retries: int | None) -> None:
    for answer in (lambda: limited("1"), unavailable):
        server = Server(answer, ok)
        with server.client(retries=retries) as http, pytest.raises((RateLimited, StoreUnavailable)):
            http.schemes()
        assert len(server.requests) == 1
    assert slept == []


def test_stamina_switches_apply(slept: list[float]) -> None:
    server = Server(lambda: limited("2"), ok)
    stamina.set_active(False)
    try:
        with server.client() as http, pytest.raises(RateLimited):
            http.schemes()
    finally:
        stamina.set_active(True)
    assert len(server.requests) == 1

    server = Server(lambda: limited("2"), lambda: limited("2"), ok)
    with stamina.set_testing(True, attempts=3), server.client() as http:
        http.schemes()  # three attempts, no waiting
    assert len(server.requests) == 3
    assert all(wait == 0 for wait in slept)


def test_bad_retry_settings_are_refused() -> None:
    with pytest.raises(InvalidInput):
        HttpClient(URL, retries=-1)
    with pytest.raises(InvalidInput):
        HttpClient(URL, retry_wait=float("nan"))
