"""The HTTP API end to end: the app through httpx's ASGI transport (no socket), a few tests
over a real uvicorn server on 127.0.0.1, and the Python client over both."""

from __future__ import annotations

import argparse
import base64
import importlib
import json
import logging
import re
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from starlette.applications import Starlette
from starlette.routing import Route

from contactmatch._json import MAX_INT_DIGITS
from contactmatch.atrest import DataKey
from contactmatch.cli.serve import add_serve_arguments, serve_command
from contactmatch.errors import (
    ApiError,
    AuthenticationFailed,
    Conflict,
    InvalidInput,
    InvalidKey,
    InvalidNumber,
    MalformedMessage,
    MissingDependency,
    RateLimited,
    StoreUnavailable,
    UnknownKeyId,
    UnknownScheme,
    UnknownUser,
    VerificationFailed,
)
from contactmatch.filters import load_filter
from contactmatch.filters import peek_version as filter_version_of
from contactmatch.keys import ServerKey
from contactmatch.oprf import Mode
from contactmatch.ratelimit import Quota, RateLimits
from contactmatch.schemes.base import ServerInfo
from contactmatch.schemes.wire import LookupRequest, ServiceResponse, decode, decode_json
from contactmatch.server import HttpClient, ServerThread, SignedTokens, create_app
from contactmatch.server.auth import derive_token_secret
from contactmatch.server.serve import load_or_create_data_key
from contactmatch.service import DiscoveryClient, DiscoveryServer, ServiceSettings
from contactmatch.stores import open_store

ALICE = "+989123456789"
BOB = "+989121112233"
CAROL = "+989351234567"
DAVE = "+989198765432"
STRANGER = "+989131119999"


@pytest.fixture(scope="module")
def key() -> ServerKey:
    return ServerKey.generate(Mode.OPRF)


class _AsyncChunks(httpx.AsyncByteStream):
    """A sync request stream (a generator body) handed to the async ASGI transport."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk


class AppTransport(httpx.BaseTransport):
    """httpx's ASGI transport for the synchronous client: the app runs on an event loop in a
    helper thread (an anyio blocking portal), requests go straight to it, no socket."""

    def __init__(self, app: Starlette, portal: BlockingPortal) -> None:
        self.asgi = httpx.ASGITransport(app=app)
        self.portal = portal

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.portal.call(self._send, request)

    async def _send(self, request: httpx.Request) -> httpx.Response:
        if not isinstance(request.stream, httpx.AsyncByteStream):
            request.stream = _AsyncChunks(request.stream)
        resp = await self.asgi.handle_async_request(request)
        body = await resp.aread()
        return httpx.Response(resp.status_code, headers=resp.headers, content=body)

    def close(self) -> None:
        """Shared by every client of a test; the portal closes with the test."""


@dataclass
class Served:
    """A served app and what the tests need to talk to it."""

    url: str
    app: Starlette
    service: DiscoveryServer
    tokens: SignedTokens
    stack: ExitStack
    #: None over a real server (uvicorn on a socket).
    transport: httpx.BaseTransport | None = None
    clients: dict[str, HttpClient] = field(default_factory=dict)

    def as_user(self, user_id: str) -> HttpClient:
        """A client holding ``user_id``'s token (one per user, closed with the server)."""
        if user_id not in self.clients:
            http = self.client(self.tokens.issue(user_id))
            self.clients[user_id] = self.stack.enter_context(http)
        return self.clients[user_id]

    def client(self, token: str | None = None) -> HttpClient:
        return self.stack.enter_context(HttpClient(self.url, token, transport=self.transport))

    def raw(self) -> httpx.Client:
        return self.stack.enter_context(httpx.Client(base_url=self.url, transport=self.transport))


Serve = Callable[..., Served]


@pytest.fixture(params=["memory", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], str]:
    """A fresh store URL per call (each server in a test gets its own registry)."""
    count = iter(range(1000))
    if request.param == "memory":
        return lambda: "memory://"
    return lambda: f"sqlite:///{tmp_path}/x{next(count)}.db"


@pytest.fixture
def serve(key: ServerKey, store_url: Callable[[], str]) -> Iterator[Serve]:
    """Factory: build a DiscoveryServer and serve it until the test ends, through the ASGI
    transport, or with ``real=True`` over a real uvicorn server."""
    with ExitStack() as stack:

        def start(
            settings: ServiceSettings | None = None,
            *,
            admin: Callable[[str], str] | None = None,
            max_body: int = 4 * 1024 * 1024,
            authenticate: Callable[[str], str] | None = None,
            verify_number: Callable[[str, str, str | None], bool] | None = None,
            allow_unverified_numbers: bool = True,
            real: bool = False,
        ) -> Served:
            store = open_store(store_url())
            stack.callback(store.close)
            service = DiscoveryServer(store, key, DataKey.generate(), settings=settings)
            tokens = SignedTokens.from_server_key(key)
            app = create_app(
                service,
                authenticate=authenticate or tokens,
                admin=admin,
                max_body=max_body,
                verify_number=verify_number,
                allow_unverified_numbers=allow_unverified_numbers,
            )
            if real:
                url = stack.enter_context(ServerThread(app))
                return Served(url=url, app=app, service=service, tokens=tokens, stack=stack)
            portal = stack.enter_context(start_blocking_portal())
            return Served(
                url="http://cm.test",
                app=app,
                service=service,
                tokens=tokens,
                stack=stack,
                transport=AppTransport(app, portal),
            )

        yield start


def register_all(s: Served, users: dict[str, str]) -> None:
    for uid, number in users.items():
        assert s.as_user(uid).register(uid, number) == number


# -- tokens ---------------------------------------------------------------------------------


def test_signed_tokens_verify_and_refuse(key: ServerKey) -> None:
    now = [1_000_000.0]
    tokens = SignedTokens(derive_token_secret(key), ttl=60, _clock=lambda: now[0])
    tok = tokens.issue("user.with-dots_1")
    assert tokens.verify(tok) == "user.with-dots_1"
    assert tokens(tok) == "user.with-dots_1"  # an instance is an Authenticator
    user, expiry, sig = tok.split(".")
    forged = [
        f"{user}.{int(expiry) + 1000}.{sig}",  # extended expiry
        f"{tokens.issue('mallory').split('.')[0]}.{expiry}.{sig}",  # other user
        f"{user}.{expiry}.{sig[:-2]}AA",  # bad signature
        SignedTokens(b"x" * 32, ttl=60, _clock=lambda: now[0]).issue("user.with-dots_1"),
        "",
        "a.b",
        "a.b.c.d",
        "ünïcode.1.x",
        "x" * 2000,
    ]
    for bad in forged:
        with pytest.raises(AuthenticationFailed, match="invalid token"):
            tokens.verify(bad)
    now[0] += 61
    with pytest.raises(AuthenticationFailed, match="expired"):
        tokens.verify(tok)
    with pytest.raises(InvalidKey):
        SignedTokens(b"short")
    with pytest.raises(InvalidInput):
        SignedTokens(b"k" * 32, ttl=0)
    with pytest.raises(InvalidInput):
        tokens.issue("")
    assert "ttl" in repr(tokens)
    assert derive_token_secret(key) == derive_token_secret(key)
    assert derive_token_secret(key) != derive_token_secret(key, b"admin")


# -- discovery over HTTP --------------------------------------------------------------------


@pytest.mark.parametrize("real", [False, True], ids=["asgi", "uvicorn"])
def test_register_and_discover_filter_and_bucket(serve: Serve, real: bool) -> None:
    s = serve(real=real)
    register_all(s, {"alice": ALICE, "bob": BOB})
    dave = s.as_user("dave")
    assert dave.register("dave", "0919 876 5432", region="IR") == DAVE
    assert dave.schemes() == ["oprf+filter", "oprf+bucket"]

    result = dave.sync([ALICE, BOB, STRANGER, "not a number"])
    assert result.complete
    assert result.matches == {ALICE: "alice", BOB: "bob"}
    assert result.unregistered == [STRANGER]
    assert result.rejected  # the unparsable entry, reported by index

    # The in-process client code, unchanged, over the HTTP proxy.
    client = DiscoveryClient(dave.info("oprf+bucket"))
    found = client.discover([ALICE, STRANGER], lambda b: dave.discover("dave", b))
    assert found.matches == {ALICE: "alice"}
    assert found.unregistered == [STRANGER]


def test_non_default_scheme(serve: Serve) -> None:
    s = serve(ServiceSettings(schemes=("oprf+filter", "oprf+bucket", "hmac+lookup")))
    register_all(s, {"alice": ALICE, "bob": BOB})
    bob = s.as_user("bob")
    assert "hmac+lookup" in bob.schemes()
    assert bob.sync([ALICE, CAROL], scheme="hmac+lookup").matches == {ALICE: "alice"}


def test_filter_full_then_delta(serve: Serve) -> None:
    s = serve()
    register_all(s, {"alice": ALICE})
    dave = s.as_user("dave")
    full = dave.published_filter("oprf+filter")
    held = load_filter(full)
    assert filter_version_of(full) == (held.version, None)

    register_all(s, {"bob": BOB, "carol": CAROL})
    delta = dave.published_filter("oprf+filter", since=held.version)
    assert delta[:4] == b"CMFD"
    new_version, base = filter_version_of(delta)
    assert base == held.version
    held.apply_delta(delta)
    current = load_filter(dave.published_filter("oprf+filter"))
    assert held.version == new_version == current.version
    assert held.checksum == current.checksum

    raw = s.raw()
    resp = raw.get("/v1/filter/oprf+filter", params={"since": base})
    assert resp.headers["X-Filter-Version"] == str(new_version)
    assert resp.headers["X-Filter-Since"] == str(base)
    resp = raw.get("/v1/filter/oprf%2Bfilter")
    assert resp.headers["content-type"] == "application/octet-stream"
    assert resp.headers["ETag"] == f'"{new_version}"'
    assert raw.get("/v1/filter/oprf+filter", headers={"If-None-Match": resp.headers["ETag"]})\
        .status_code == 304  # fmt: skip
    for since in ("-1", "²", "x"):
        assert raw.get("/v1/filter/oprf+filter", params={"since": since}).status_code == 400
    assert raw.get("/v1/filter/oprf+bucket").json()["error"]["code"] == "malformed_message"


class Recording(httpx.BaseTransport):
    """A transport that remembers each request's URL and the response headers."""

    def __init__(self, inner: httpx.BaseTransport | None) -> None:
        self.inner = inner or httpx.HTTPTransport()
        self.seen: list[tuple[httpx.URL, int, httpx.Headers]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        resp = self.inner.handle_request(request)
        self.seen.append((request.url, resp.status_code, resp.headers))
        return resp

    def close(self) -> None:
        self.inner.close()


def test_sync_uses_deltas_and_304(serve: Serve) -> None:
    s = serve()
    register_all(s, {"alice": ALICE, "dave": DAVE})
    rec = Recording(s.transport)
    dave = s.stack.enter_context(HttpClient(s.url, s.tokens.issue("dave"), transport=rec))

    def filter_requests() -> list[tuple[httpx.URL, int, httpx.Headers]]:
        out = [r for r in rec.seen if r[0].path.startswith("/v1/filter/")]
        rec.seen.clear()
        return out

    assert dave.sync([ALICE, BOB]).matches == {ALICE: "alice"}
    [(url, status, _)] = filter_requests()
    assert "since" not in url.params
    assert status == 200

    register_all(s, {"bob": BOB})
    assert dave.sync([ALICE, BOB]).matches == {ALICE: "alice", BOB: "bob"}
    [(url, status, headers)] = filter_requests()
    assert "since" in url.params
    assert "X-Filter-Since" in headers

    assert dave.sync([ALICE, BOB]).matches == {ALICE: "alice", BOB: "bob"}
    [(_, status, _)] = filter_requests()
    assert status == 304


def test_settings_hide_users_and_contacts_upload(serve: Serve) -> None:
    s = serve()
    register_all(s, {"alice": ALICE, "carol": CAROL})
    dave = s.as_user("dave")
    dave.register("dave", DAVE)
    carol = s.as_user("carol")

    carol.set_discoverability("carol", "contacts")
    assert dave.sync([ALICE, CAROL]).matches == {ALICE: "alice"}
    assert dave.sync([ALICE, CAROL], scheme="oprf+bucket").matches == {ALICE: "alice"}

    # Carol opts in to upload her book, which holds Dave: now Dave finds her.
    client = DiscoveryClient(carol.info("oprf+filter"), filter_blob=carol.published_filter())
    client.discover([DAVE], lambda b: carol.discover("carol", b))
    assert carol.upload_contacts("carol", client.upload_request()) == 1
    assert dave.sync([ALICE, CAROL]).matches == {ALICE: "alice", CAROL: "carol"}

    carol.set_discoverability("carol", "nobody")
    assert dave.sync([ALICE, CAROL]).matches == {ALICE: "alice"}
    carol.set_discoverability("carol", "everyone")
    assert dave.sync([ALICE, CAROL]).matches == {ALICE: "alice", CAROL: "carol"}
    with pytest.raises(InvalidInput, match="discoverability"):
        carol.set_discoverability("carol", "friends")
    with pytest.raises(AuthenticationFailed):  # a token without a live account
        s.as_user("ghost").set_discoverability("ghost", "nobody")


def test_number_change_and_deletion(serve: Serve) -> None:
    s = serve()
    register_all(s, {"alice": ALICE, "bob": BOB, "dave": DAVE})
    dave = s.as_user("dave")
    alice = s.as_user("alice")

    assert alice.change_number("alice", CAROL) == CAROL
    assert dave.sync([ALICE, CAROL, BOB]).matches == {CAROL: "alice", BOB: "bob"}
    with pytest.raises(AuthenticationFailed):
        s.as_user("erin").change_number("erin", STRANGER)  # erin never registered
    with pytest.raises(InvalidNumber) as exc:
        alice.change_number("alice", "12")
    assert exc.value.reason

    s.as_user("bob").delete_account("bob")
    result = dave.sync([CAROL, BOB], scheme="oprf+bucket")
    assert result.matches == {CAROL: "alice"}
    assert result.unregistered == [BOB]
    assert dave.sync([CAROL, BOB]).matches == {CAROL: "alice"}
    with pytest.raises(AuthenticationFailed):  # a deleted account's token is dead
        s.as_user("bob").delete_account("bob")


def test_json_encoded_discovery(serve: Serve) -> None:
    s = serve()
    register_all(s, {"alice": ALICE, "dave": DAVE})
    raw = s.raw()
    headers = {
        "Authorization": f"Bearer {s.tokens.issue('dave')}",
        "Content-Type": "application/json",
    }
    client = DiscoveryClient(raw.get("/v1/info/oprf+bucket").content)

    def send(request: bytes) -> bytes:
        resp = raw.post("/v1/discover", content=decode(request).to_json(), headers=headers)
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"].startswith("application/json")
        assert resp.json()["type"] == "service_response"
        return decode_json(resp.content, ServiceResponse).encode()

    assert client.discover([ALICE, BOB], send).matches == {ALICE: "alice"}
    bad = raw.post("/v1/discover", content=b'{"v": 1, "type": "nope"}', headers=headers)
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "malformed_message")


# -- failures -------------------------------------------------------------------------------


def test_authentication_failures(serve: Serve) -> None:
    s = serve()
    raw = s.raw()
    request = b"CMW\x01\x03"
    resp = raw.post("/v1/discover", content=request)
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "authentication_failed"
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")

    good = s.tokens.issue("alice")
    user, expiry, sig = good.split(".")
    for token in (f"{user}.{int(expiry) + 99}.{sig}", s.tokens.issue("alice", ttl=-5), "x"):
        with pytest.raises(AuthenticationFailed):
            s.client(token).register("alice", ALICE)
    with pytest.raises(AuthenticationFailed, match="expired"):
        s.client(s.tokens.issue("a", ttl=-5)).register("a", ALICE)
    with pytest.raises(AuthenticationFailed, match="no token"):
        s.client().register("alice", ALICE)
    # A token for one user cannot act for another, even through the same-signature API.
    alice = s.as_user("alice")
    with pytest.raises(AuthenticationFailed, match="another user"):
        alice.register("bob", BOB)
    assert s.service.store.get_users(["alice", "bob"]) == [None, None]


@pytest.mark.parametrize("real", [False, True], ids=["asgi", "uvicorn"])
def test_body_limits_and_malformed_bodies(serve: Serve, real: bool) -> None:
    s = serve(max_body=1024, real=real)
    raw = s.raw()
    auth = {"Authorization": f"Bearer {s.tokens.issue('alice')}"}

    too_big = raw.post("/v1/discover", content=b"\0" * 2048, headers=auth)
    assert (too_big.status_code, too_big.json()["error"]["code"]) == (413, "payload_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the stream itself is counted
        for _ in range(4):
            yield b"\0" * 512

    chunked = raw.post("/v1/discover", content=chunks(), headers=auth)
    assert "content-length" not in chunked.request.headers
    assert chunked.status_code == 413
    with pytest.raises(InvalidInput, match="exceeds 1024"):
        s.as_user("alice").discover("alice", b"\0" * 2048)

    garbage = raw.post("/v1/discover", content=b"garbage", headers=auth)
    assert (garbage.status_code, garbage.json()["error"]["code"]) == (400, "malformed_message")
    with pytest.raises(MalformedMessage):
        s.as_user("alice").discover("alice", b"CMW\x01\x63")
    wrong_type = raw.post(
        "/v1/discover", content=b"x", headers={**auth, "Content-Type": "text/plain"}
    )
    assert (wrong_type.status_code, wrong_type.json()["error"]["code"]) == (
        415,
        "unsupported_media_type",
    )
    for body in (b"{", b"[]", b'{"number": 5}', b'{"region": "IR"}', b'{"number": "1", "x": 1}'):
        resp = raw.post("/v1/register", content=body, headers=auth)
        assert (resp.status_code, resp.json()["error"]["code"]) == (400, "invalid_input"), body
    bad_number = raw.post("/v1/register", json={"number": "0912"}, headers=auth)
    error = bad_number.json()["error"]
    assert (error["code"], bad_number.status_code) == ("invalid_number", 400)
    assert error["reason"]
    assert "0912" not in error["message"]


def test_rate_limited(serve: Serve) -> None:
    limits = RateLimits(requests=Quota(name="requests", capacity=2, period=3600))
    s = serve(ServiceSettings(limits=limits))
    register_all(s, {"alice": ALICE, "dave": DAVE})
    dave = s.as_user("dave")
    client = DiscoveryClient(dave.info("oprf+bucket"))
    send = lambda b: dave.discover("dave", b)  # noqa: E731
    client.discover([ALICE], send)  # two requests: evaluate, then buckets
    with pytest.raises(RateLimited) as exc:
        client.discover([ALICE], send)
    assert exc.value.retry_after > 0
    assert exc.value.quota == "requests"

    resp = s.raw().post(
        "/v1/discover",
        content=client.prepare([ALICE]),
        headers={"Authorization": f"Bearer {s.tokens.issue('dave')}"},
    )
    assert resp.status_code == 429
    error = resp.json()["error"]
    assert error["code"] == "rate_limited"
    assert int(resp.headers["Retry-After"]) >= error["retry_after"] > 0


def test_unknown_scheme_key_and_routes(serve: Serve) -> None:
    s = serve()
    register_all(s, {"alice": ALICE})
    alice = s.as_user("alice")
    with pytest.raises(UnknownScheme):
        alice.info("oprf+nothing")
    with pytest.raises(UnknownScheme):
        alice.published_filter("plain+filter")  # exists, but is not served here
    stale = LookupRequest(scheme="oprf+filter", key_id="rotated-out", tokens=[b"t" * 32])
    with pytest.raises(UnknownKeyId):
        alice.discover("alice", stale.encode())
    raw = s.raw()
    resp = raw.post("/v1/discover", content=stale.encode(), headers={
        "Authorization": f"Bearer {s.tokens.issue('alice')}"})  # fmt: skip
    assert (resp.status_code, resp.json()["error"]["code"]) == (409, "unknown_key_id")
    assert raw.get("/v1/info/oprf+nothing").status_code == 404
    assert raw.get("/v1/nowhere").json()["error"]["code"] == "not_found"
    assert raw.delete("/v1/schemes").json()["error"]["code"] == "method_not_allowed"


def test_stats_need_admin(serve: Serve, key: ServerKey) -> None:
    s = serve()
    register_all(s, {"alice": ALICE})
    with pytest.raises(AuthenticationFailed, match="admin"):
        s.as_user("alice").stats()

    admin = SignedTokens(derive_token_secret(key, b"contactmatch/admin/v1"))
    t = serve(admin=admin)
    register_all(t, {"alice": ALICE, "bob": BOB})
    ops = t.client(admin.issue("ops"))
    assert ops.stats()["registrations"] == 2
    with pytest.raises(AuthenticationFailed):
        t.as_user("alice").stats()  # a user token is not an admin token


def test_unexpected_errors_stay_opaque(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    def broken(token: str) -> str:
        raise RuntimeError(f"lookup failed for {ALICE} with {token}")

    s = serve(authenticate=broken)
    with caplog.at_level(logging.ERROR, logger="contactmatch.server"):
        resp = s.raw().post("/v1/register", json={"number": ALICE},
                            headers={"Authorization": "Bearer sekrit-token"})  # fmt: skip
    assert resp.status_code == 500
    assert resp.json() == {"error": {"code": "internal", "message": "internal server error"}}
    assert "RuntimeError" in caplog.text
    assert ALICE not in caplog.text
    assert "sekrit-token" not in caplog.text


# -- the OpenAPI document against the app -------------------------------------------------


def mounted(app: Starlette) -> set[tuple[str, str]]:
    """(path, method) of every route the app really serves."""
    return {
        (r.path, m.lower())
        for r in app.routes
        if isinstance(r, Route)
        for m in (r.methods or ())
        if m != "HEAD"
    }


_ANNOTATIONS = {"title", "description", "default", "format", "examples", "example"}


def conform(value: Any, schema: dict[str, Any], doc: dict[str, Any], at: str = "$") -> None:
    """Assert that ``value`` satisfies a JSON Schema of the document (the keywords pydantic
    generates; an unknown keyword fails, so nothing passes unchecked)."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/components/schemas/")
        conform(value, doc["components"]["schemas"][name], doc, at)
        return
    for word, rule in schema.items():
        if word in _ANNOTATIONS:
            continue
        if word == "type":
            kinds = {
                "object": dict, "array": list, "string": str, "boolean": bool,
                "null": type(None), "integer": int, "number": (int, float),
            }  # fmt: skip
            ok = isinstance(value, kinds[rule]) and not (
                rule in ("integer", "number") and isinstance(value, bool)
            )
            assert ok, f"{at}: {type(value).__name__} is not {rule}"
        elif word == "properties":
            for key, sub in rule.items():
                if key in value:
                    conform(value[key], sub, doc, f"{at}.{key}")
        elif word == "required":
            assert not set(rule) - set(value), f"{at}: missing {set(rule) - set(value)}"
        elif word == "additionalProperties":
            extra = set(value) - set(schema.get("properties", {}))
            if rule is False:
                assert not extra, f"{at}: undocumented {extra}"
            elif isinstance(rule, dict):
                for key in extra:
                    conform(value[key], rule, doc, f"{at}.{key}")
        elif word == "items":
            for i, item in enumerate(value):
                conform(item, rule, doc, f"{at}[{i}]")
        elif word in ("anyOf", "oneOf"):
            passed = 0
            for sub in rule:
                try:
                    conform(value, sub, doc, at)
                except AssertionError:
                    continue
                passed += 1
            assert passed == 1 if word == "oneOf" else passed >= 1, f"{at}: {word} ({passed})"
        elif word == "const":
            assert value == rule, f"{at}: {value!r} != {rule!r}"
        elif word == "enum":
            assert value in rule, f"{at}: not in {rule}"
        elif word == "minimum":
            assert value >= rule, at
        elif word == "maximum":
            assert value <= rule, at
        elif word == "exclusiveMaximum":
            assert value < rule, at
        elif word == "pattern":
            assert re.search(rule, value), f"{at}: does not match {rule}"
        elif word == "contentEncoding":
            assert rule == "base64"
            base64.b64decode(value, validate=True)
        else:
            raise AssertionError(f"{at}: the test does not know the keyword {word!r}")


def check_answer(doc: dict[str, Any], path: str, resp: httpx.Response) -> None:
    """Assert that a real answer is one the document lists for its route, status and media
    type, and that a JSON body satisfies the documented schema."""
    method = resp.request.method.lower()
    op = doc["paths"][path][method]
    documented = op["responses"].get(str(resp.status_code))
    assert documented is not None, f"{method} {path}: {resp.status_code} is not documented"
    content = documented.get("content", {})
    media = resp.headers.get("content-type", "").split(";")[0]
    if not content:
        assert not resp.content, f"{method} {path}: undocumented body"
        return
    assert media in content, f"{method} {path}: {media} is not documented"
    if media == "application/json":
        conform(resp.json(), content[media]["schema"], doc)
    for header in documented.get("headers", {}):
        if header in {"X-Filter-Since", "ETag"}:
            continue  # one or the other, on deltas or whole filters
        assert header in resp.headers, f"{method} {path}: {header} missing"


@pytest.mark.parametrize("numbers", [True, False], ids=["with-number-routes", "without"])
def test_openapi_documents_exactly_the_mounted_routes(serve: Serve, numbers: bool) -> None:
    s = serve(allow_unverified_numbers=numbers)
    raw = s.raw()
    doc = raw.get("/openapi.json").json()
    assert doc["openapi"] == "3.1.0"
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert documented == mounted(s.app)
    assert (("/v1/register", "post") in documented) is numbers
    schemas = doc["components"]["schemas"]
    for ref in re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(doc)):
        assert ref in schemas
    for path, method in documented:
        op = doc["paths"][path][method]
        assert op["summary"]
        in_path = {p["name"] for p in op["parameters"] if p["in"] == "path"}
        assert in_path == set(re.findall(r"{(\w+)}", path))
        # What the document says about authentication is what the route does.
        concrete = path.replace("{scheme}", "oprf+filter")
        status = raw.request(method, concrete).status_code
        if "security" in op:
            assert status in (401, 403), (method, path)
        else:
            assert status not in (401, 403), (method, path)


def test_real_answers_match_the_documented_schemas(serve: Serve, key: ServerKey) -> None:
    admin = SignedTokens(derive_token_secret(key, b"contactmatch/admin/v1"))
    limits = RateLimits(requests=Quota(name="requests", capacity=4, period=3600))
    schemes = ("oprf+filter", "oprf+bucket", "oprf+pir")
    s = serve(ServiceSettings(limits=limits, schemes=schemes), admin=admin, max_body=4096)
    register_all(s, {"alice": ALICE})
    raw = s.raw()
    doc = raw.get("/openapi.json").json()
    seen: set[tuple[str, str]] = set()
    dave = {"Authorization": f"Bearer {s.tokens.issue('dave')}"}

    def check(path: str, resp: httpx.Response) -> httpx.Response:
        check_answer(doc, path, resp)
        if resp.status_code < 300:
            seen.add((path, resp.request.method.lower()))
        return resp

    def body_schema(path: str, method: str, media: str) -> dict[str, Any]:
        return doc["paths"][path][method]["requestBody"]["content"][media]["schema"]

    check("/openapi.json", raw.get("/openapi.json"))
    check("/v1/schemes", raw.get("/v1/schemes"))
    check("/v1/info/{scheme}", raw.get("/v1/info/oprf+filter"))
    check("/v1/info/{scheme}", raw.get("/v1/info/nope+nothing"))
    whole = check("/v1/filter/{scheme}", raw.get("/v1/filter/oprf+filter"))
    check("/v1/filter/{scheme}", raw.get("/v1/filter/oprf+filter", params={"since": "x"}))
    etag = {"If-None-Match": whole.headers["ETag"]}
    assert check("/v1/filter/{scheme}", raw.get("/v1/filter/oprf+filter", headers=etag))\
        .status_code == 304  # fmt: skip

    hint = check("/v1/hint/{scheme}", raw.get("/v1/hint/oprf+pir"))
    assert hint.content[:3] == b"CMH"
    held = {"If-None-Match": f'"{hint.headers["X-Hint-Version"]}"'}
    assert check("/v1/hint/{scheme}", raw.get("/v1/hint/oprf+pir", headers=held))\
        .status_code == 304  # fmt: skip
    check("/v1/hint/{scheme}", raw.get("/v1/hint/oprf+filter"))  # 400: no hint
    check("/v1/hint/{scheme}", raw.get("/v1/hint/oprf+pir", params={"since": "x"}))

    body = {"number": DAVE, "region": "IR"}
    conform(body, body_schema("/v1/register", "post", "application/json"), doc)
    check("/v1/register", raw.post("/v1/register", json=body, headers=dave))
    check("/v1/register", raw.post("/v1/register", json={"number": 5}, headers=dave))
    check("/v1/register", raw.post("/v1/register", json={"number": "12"}, headers=dave))
    check("/v1/register", raw.post("/v1/register", json=body))  # 401
    check("/v1/number", raw.put("/v1/number", json={"number": DAVE}, headers=dave))
    check("/v1/settings", raw.put("/v1/settings", json={"discoverability": "contacts"},
                                  headers=dave))  # fmt: skip
    check("/v1/settings", raw.put("/v1/settings", json={"discoverability": "x"}, headers=dave))

    # Discovery in the JSON form: the requests sent satisfy the documented request schema.
    # (oprf+bucket: see test_json_discovery_with_a_filter_scheme for oprf+filter.)
    client = DiscoveryClient(raw.get("/v1/info/oprf+bucket").content)
    json_headers = {**dave, "Content-Type": "application/json"}

    def send(request: bytes) -> bytes:
        form = json.loads(decode(request).to_json())
        conform(form, body_schema("/v1/discover", "post", "application/json"), doc)
        resp = check("/v1/discover", raw.post("/v1/discover", json=form, headers=json_headers))
        return decode_json(resp.content, ServiceResponse).encode()

    assert client.discover([ALICE, STRANGER], send).matches == {ALICE: "alice"}
    upload = json.loads(decode(client.upload_request()).to_json())
    conform(upload, body_schema("/v1/contacts", "post", "application/json"), doc)
    check("/v1/contacts", raw.post("/v1/contacts", json=upload, headers=json_headers))
    check("/v1/discover", raw.post("/v1/discover", content=client.prepare([ALICE]),
                                   headers=dave))  # fmt: skip
    check("/v1/discover", raw.post("/v1/discover", content=b"x" * 5000, headers=dave))  # 413
    check("/v1/discover", raw.post("/v1/discover", content=b"x", headers={
        **dave, "Content-Type": "text/plain"}))  # fmt: skip
    for _ in range(3):  # over the request quota: 429
        last = check("/v1/discover", raw.post("/v1/discover", content=client.prepare([ALICE]),
                                              headers=dave))  # fmt: skip
    assert last.status_code == 429

    check("/v1/stats", raw.get("/v1/stats", headers={
        "Authorization": f"Bearer {admin.issue('ops')}"}))  # fmt: skip
    check("/v1/stats", raw.get("/v1/stats", headers=dave))
    check("/v1/account", raw.delete("/v1/account", headers=dave))
    check("/v1/account", raw.delete("/v1/account", headers=dave))  # 401: gone
    check("/healthz", raw.get("/healthz"))
    check("/readyz", raw.get("/readyz"))
    check("/metrics", raw.get("/metrics"))
    assert seen == mounted(s.app)  # every route answered with success at least once


def test_json_discovery_with_a_filter_scheme(serve: Serve) -> None:
    s = serve()
    register_all(s, {"alice": ALICE, "dave": DAVE})
    raw = s.raw()
    headers = {
        "Authorization": f"Bearer {s.tokens.issue('dave')}",
        "Content-Type": "application/json",
    }
    blob = raw.get("/v1/filter/oprf+filter").content
    client = DiscoveryClient(raw.get("/v1/info/oprf+filter").content, filter_blob=blob)

    def send(request: bytes) -> bytes:
        resp = raw.post("/v1/discover", content=decode(request).to_json(), headers=headers)
        assert resp.status_code == 200, resp.text
        return decode_json(resp.content, ServiceResponse).encode()

    assert client.discover([ALICE, STRANGER], send).matches == {ALICE: "alice"}


@pytest.mark.parametrize(
    "body",
    [
        "[" * 1000 + "]" * 1000,
        '{"discoverability": ' + "9" * 5000 + "}",
        '{"discoverability": ' + "9" * (MAX_INT_DIGITS + 1) + "}",
        '{"discoverability": "\\ud800"}',
        '{"\\ud800": "everyone"}',
        b'{"discoverability": "\xed\xa0\x80"}',
        '{"discoverability": NaN}',
        '{"discoverability": 1e999}',
        '{"discoverability": "nobody", "discoverability": "everyone"}',
        b'{"discoverability": "\xff"}',
        '{"discoverability": "everyone"}'.encode("utf-16"),
        '{"discoverability": ["everyone"]}',
        '{"discoverability": {"$ne": 1}}',
        '{"discoverability": "everyone", "+989123456789": 1}',
        "null",
    ],
)
def test_hostile_json_bodies_are_400_never_500(serve: Serve, body: str | bytes) -> None:
    s = serve()
    register_all(s, {"alice": ALICE})
    raw = s.raw()
    auth = {"Authorization": f"Bearer {s.tokens.issue('alice')}"}
    for method, path in (("PUT", "/v1/settings"), ("POST", "/v1/register")):
        resp = raw.request(method, path, content=body, headers=auth)
        assert resp.status_code == 400, (path, resp.text)
        error = resp.json()["error"]
        assert error["code"] == "invalid_input"
        assert "989123456789" not in error["message"]  # an unknown key is never echoed
        assert "999" not in error["message"]


def test_validation_messages_name_declared_fields_only(serve: Serve) -> None:
    s = serve()
    raw = s.raw()
    auth = {"Authorization": f"Bearer {s.tokens.issue('alice')}"}

    def message(body: dict[str, Any]) -> str:
        resp = raw.post("/v1/register", json=body, headers=auth)
        assert resp.status_code == 400
        return str(resp.json()["error"]["message"])

    assert message({"region": "IR"}) == "missing field 'number'"
    assert message({"number": 989123456789}) == "field 'number' must be a string"
    assert "everyone" in message({"number": ALICE, "discoverability": "friends"})
    assert "989123456789" not in message({"number": ALICE, "+989123456789": "x"})


# -- extras: the client needs httpx only --------------------------------------------------


def test_client_imports_and_works_without_the_server_stack() -> None:
    code = (
        "import sys\n"
        "for name in ('starlette', 'uvicorn', 'pydantic'):\n"
        "    sys.modules[name] = None  # as if not installed\n"
        "import httpx\n"
        "from contactmatch.server.client import HttpClient\n"
        "from contactmatch.server import HttpClient as exported\n"
        "assert exported is HttpClient\n"
        "answer = httpx.Response(200, json={'schemes': ['oprf+filter']})\n"
        "mock = httpx.MockTransport(lambda request: answer)\n"
        "with HttpClient('http://cm.test', 't', transport=mock) as http:\n"
        "    print(http.schemes())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "['oprf+filter']"


def test_missing_extras_name_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(sys.modules):
        if name == "contactmatch.server" or name.startswith("contactmatch.server."):
            monkeypatch.delitem(sys.modules, name)
    cases = [("starlette", "create_app", "server"), ("pydantic", "create_app", "server"),
             ("uvicorn", "ServerThread", "server"), ("httpx", "HttpClient", "client")]  # fmt: skip
    for module, name, extra in cases:
        monkeypatch.setitem(sys.modules, module, None)
        package = importlib.import_module("contactmatch.server")  # the package itself loads
        with pytest.raises(MissingDependency) as exc:
            getattr(package, name)
        assert f"{module} is not installed" in str(exc.value)
        assert f"pip install 'contactmatch[{extra}]'" in str(exc.value)
        assert exc.value.extra == extra
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "httpx", None)
    monkeypatch.delitem(sys.modules, "contactmatch.server.client", raising=False)
    with pytest.raises(MissingDependency, match=r"contactmatch\[client\]"):
        importlib.import_module("contactmatch.server.client")


def test_old_client_name_is_a_deprecated_alias() -> None:
    import contactmatch.server as package
    from contactmatch.server import client as module

    for where in (package, module):
        with pytest.warns(DeprecationWarning, match="use HttpClient"):
            assert where.HttpServer is HttpClient


# -- client error mapping and transport -----------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (400, "malformed_message", MalformedMessage),
        (400, "invalid_input", InvalidInput),
        (400, "verification_failed", VerificationFailed),
        (401, "authentication_failed", AuthenticationFailed),
        (403, "forbidden", AuthenticationFailed),
        (404, "unknown_user", UnknownUser),
        (404, "unknown_scheme", UnknownScheme),
        (409, "unknown_key_id", UnknownKeyId),
        (409, "conflict", Conflict),
        (413, "payload_too_large", InvalidInput),
        (503, "store_unavailable", StoreUnavailable),
        (500, "internal", ApiError),
        (418, "teapot", ApiError),
    ],
)
def test_client_maps_error_codes(status: int, code: str, expected: type[Exception]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"error": {"code": code, "message": "m"}})

    transport = httpx.MockTransport(handler)
    with (
        HttpClient("http://cm.test", "t", transport=transport) as http,
        pytest.raises(expected) as exc,
    ):
        http.discover("u", b"x")
    assert type(exc.value) is expected
    if isinstance(exc.value, ApiError):
        assert (exc.value.status, exc.value.code) == (status, code)


def test_client_maps_rate_limit_and_non_json() -> None:
    answers = iter(
        [
            httpx.Response(429, json={"error": {"code": "rate_limited", "message": "out",
                                                "retry_after": 7.5, "quota": "eval"}}),
            httpx.Response(502, text="<html>bad gateway</html>"),
        ]
    )  # fmt: skip
    transport = httpx.MockTransport(lambda request: next(answers))
    with HttpClient("http://cm.test", "t", transport=transport) as http:
        with pytest.raises(RateLimited) as exc:
            http.discover("u", b"x")
        assert (exc.value.retry_after, exc.value.quota) == (7.5, "eval")
        with pytest.raises(ApiError) as api:
            http.discover("u", b"x")
        assert api.value.status == 502
    assert repr(http) == "<HttpClient http://cm.test token=set>"  # never the token itself


def test_unreachable_server_is_store_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port any more.
    http = HttpClient(f"http://127.0.0.1:{port}", "t", timeout=2)
    with http, pytest.raises(StoreUnavailable):
        http.schemes()


# -- serving --------------------------------------------------------------------------------


def sms_code_123456(user_id: str, e164: str, proof: str | None) -> bool:
    """A verifier ``contactmatch serve --verify-number tests.test_http:sms_code_123456`` loads."""
    del user_id, e164
    return proof == "123456"


def test_serve_command_wires_store_keys_and_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    key = ServerKey.generate(Mode.OPRF)
    key_path = tmp_path / "server.key"
    key.save(key_path)
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    args = parser.parse_args(
        ["--store", f"sqlite:///{tmp_path}/reg.db", "--key", str(key_path), "--region", "IR",
         "--scheme", "oprf+bucket", "--port", "8080",
         "--verify-number", "tests.test_http:sms_code_123456"]
    )  # fmt: skip
    served: list[Any] = []

    def fake_run(app: Any, **options: Any) -> None:
        # Serve the app `run` built, for real, and use it like a client would.
        assert options["host"] == "127.0.0.1"
        with ServerThread(app) as url:
            tokens = SignedTokens.from_server_key(key)
            with HttpClient(url, tokens.issue("alice")) as alice:
                served.append(alice.schemes())
                with pytest.raises(AuthenticationFailed):  # 403: no proof
                    alice.register("alice", "0912 345 6789")
                # region IR applies
                served.append(alice.register("alice", "0912 345 6789", proof="123456"))
                served.append(alice.sync([ALICE], scheme="oprf+bucket").matches)

    import uvicorn

    monkeypatch.setattr(uvicorn, "run", fake_run)
    assert serve_command(args) == 0
    assert served == [["oprf+bucket"], ALICE, {ALICE: "alice"}]
    data_key = tmp_path / "server.key.data"
    assert stat.S_IMODE(data_key.stat().st_mode) == 0o600
    err = capsys.readouterr().err
    assert "created data key" in err
    assert str(data_key) in err
    # The second start reuses the key (and says nothing): the numbers stay readable.
    assert isinstance(load_or_create_data_key(data_key), DataKey)
    assert capsys.readouterr().err == ""


def test_server_thread_reports_a_failed_start(serve: Serve) -> None:
    s = serve(real=True)
    port = int(s.url.rsplit(":", 1)[1])
    app = create_app(s.service, authenticate=s.tokens)
    with pytest.raises(OSError, match="failed to start"):
        ServerThread(app, port=port).start()  # the port is taken


def test_importing_contactmatch_loads_no_server_stack() -> None:
    code = (
        "import sys, contactmatch, contactmatch.service, contactmatch.server.serve\n"
        "import contactmatch.backend\n"
        "stack = ('starlette', 'uvicorn', 'httpx', 'pydantic')\n"
        "loaded = sorted(m for m in stack if m in sys.modules)\n"
        "print(','.join(loaded))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""


def test_info_is_server_info(serve: Serve) -> None:
    s = serve()
    info = ServerInfo.decode(s.as_user("x").info("oprf+bucket"))
    assert info.key_id == s.service.key_id
    resp = s.raw().get("/v1/schemes")
    assert json.loads(resp.content) == {"schemes": ["oprf+filter", "oprf+bucket"]}


def test_serve_command_defaults_to_voprf_schemes_for_a_voprf_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_path = tmp_path / "v.key"
    ServerKey.generate(Mode.VOPRF).save(key_path)
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    args = parser.parse_args(["--store", "memory://", "--key", str(key_path)])
    seen: list[list[str]] = []

    def fake_run(app: Any, **options: Any) -> None:
        with ServerThread(app) as url, HttpClient(url) as http:
            seen.append(http.schemes())

    import uvicorn

    monkeypatch.setattr(uvicorn, "run", fake_run)
    assert serve_command(args) == 0
    assert seen == [["voprf+filter", "voprf+bucket"]]


def test_public_exports_are_pinned() -> None:
    import contactmatch.server as server_pkg

    assert server_pkg.__all__ == sorted(server_pkg.__all__)
    assert server_pkg.__all__ == [
        "ApiError",
        "Authenticator",
        "HttpClient",
        "ServerThread",
        "SignedTokens",
        "StaticToken",
        "create_app",
        "derive_token_secret",
        "run",
    ]
    for name in server_pkg.__all__:
        assert getattr(server_pkg, name) is not None
    with pytest.raises(AttributeError):
        _ = server_pkg.nothing_here


def test_background_refresh_picks_up_other_processes(tmp_path: Path) -> None:
    """Two servers on one store: the HTTP one sees the other's registrations via refresh."""
    import time as _time

    url = f"sqlite:///{tmp_path}/shared.db"
    key = ServerKey.generate(Mode.OPRF)
    data = DataKey.generate()
    with open_store(url) as s1, open_store(url) as s2:
        writer = DiscoveryServer(s1, key, data)
        served = DiscoveryServer(s2, key, data)
        tokens = SignedTokens.from_server_key(key)
        app = create_app(served, authenticate=tokens.verify, refresh_every=0.05)
        writer.register("me", "+989120000001")
        with ServerThread(app, lifespan="on") as base:
            http = HttpClient(base, tokens.issue("me"))
            try:
                writer.register("late", "+989120000002")
                deadline = _time.monotonic() + 10
                found: dict[str, str] = {}
                while _time.monotonic() < deadline and not found:
                    found = http.sync(["+989120000002"], scheme="oprf+bucket").matches
                    _time.sleep(0.05)
                assert found == {"+989120000002": "late"}
            finally:
                http.close()


def test_a_bearer_token_alone_cannot_take_a_number(serve: Serve) -> None:
    s = serve()
    assert s.as_user("victim").register("victim", "+989121234567") == "+989121234567"
    with pytest.raises(Conflict):
        s.as_user("attacker").register("attacker", "+989121234567")
    s.as_user("bystander").register("bystander", "+989121234568")
    with pytest.raises(Conflict):
        s.as_user("bystander").change_number("bystander", "+989121234567")
    assert s.service.store.get_users(["victim"])[0] is not None  # untouched


def test_verified_possession_moves_a_number(serve: Serve) -> None:
    def sms(user: str, number: str, proof: str | None) -> bool:
        return proof == f"code-for-{user}"

    s = serve(verify_number=sms)
    s.as_user("old-phone").register("old-phone", "+989121234567", proof="code-for-old-phone")
    with pytest.raises(AuthenticationFailed):  # 403: a wrong code proves nothing
        s.as_user("new-phone").register("new-phone", "+989121234567", proof="guess")
    s.as_user("new-phone").register("new-phone", "+989121234567", proof="code-for-new-phone")
    assert s.service.store.get_users(["old-phone"]) == [None]


def test_oversized_since_is_a_clean_400(serve: Serve) -> None:
    s = serve()
    resp = s.raw().get("/v1/filter/oprf+filter", params={"since": "9" * 5000})
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "invalid_input"


def test_serve_without_a_verifier_serves_no_number_endpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    key_path = tmp_path / "server.key"
    ServerKey.generate(Mode.OPRF).save(key_path)
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    statuses: list[int] = []

    def fake_run(app: Any, **options: Any) -> None:
        del options
        with ServerThread(app) as url, httpx.Client(base_url=url) as http:
            statuses.append(http.post("/v1/register", json={"number": ALICE}).status_code)

    import uvicorn

    monkeypatch.setattr(uvicorn, "run", fake_run)
    base = ["--store", f"sqlite:///{tmp_path}/reg.db", "--key", str(key_path)]
    assert serve_command(parser.parse_args(base)) == 0
    assert "are not served" in capsys.readouterr().err
    assert serve_command(parser.parse_args([*base, "--allow-unverified-numbers"])) == 0
    assert "Development only" in capsys.readouterr().err
    assert statuses == [404, 401]  # absent, then served (and the token is missing)
    with pytest.raises(InvalidInput, match="MODULE:CALLABLE"):
        serve_command(parser.parse_args([*base, "--verify-number", "nocolon"]))
    with pytest.raises(InvalidInput, match="cannot import"):
        serve_command(parser.parse_args([*base, "--verify-number", "no_such_mod_x:f"]))
