"""The Python client of the HTTP API: the in-process service's methods, over the wire.

:class:`HttpClient` and :class:`~contactmatch.service.DiscoveryServer` both satisfy
:class:`~contactmatch.backend.DiscoveryBackend`, and the client turns JSON error codes back
into the library's typed exceptions, so code written against the in-process server runs
unchanged over HTTP::

    http = HttpClient("http://127.0.0.1:8080", token)
    client = DiscoveryClient(http.info("oprf+bucket"))
    result = client.discover(contacts, lambda b: http.discover(user_id, b))

or, in one call that also keeps the filter up to date with deltas, ``http.sync(contacts)``.

Calls are retried, a bounded number of times, when the server says so: a ``429`` with a
``Retry-After`` header on any call (the rate limiter refuses before any work is done, so the
request had no effect), and a ``503`` on the idempotent reads only (``GET``: ``schemes``,
``info``, ``published_filter``, ``stats`` and the filter fetches of ``sync``); a ``503`` on a
write or a discovery may come after work was done, so it is raised at once. See
:class:`HttpClient` for the bounds and how to turn retries off.

This module needs httpx and stamina only (``pip install 'contactmatch[client]'``): an app or
a test harness talking to a server does not install Starlette, uvicorn or pydantic.
"""

from __future__ import annotations

import json
import random
import warnings
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from contactmatch._json import load_json
from contactmatch.errors import (
    AuthenticationFailed,
    InvalidInput,
    MalformedMessage,
    MissingDependency,
    RateLimited,
    StoreUnavailable,
    UnknownKeyId,
)
from contactmatch.filters import Filter, load_filter
from contactmatch.schemes.base import ServerInfo, get_scheme
from contactmatch.schemes.pirclient import PirHint
from contactmatch.server._codes import BINARY, JSON, USER_HEADER, exception_for
from contactmatch.service import DiscoveryClient, DiscoveryResult
from contactmatch.stores.base import Discoverability

try:
    import httpx
except ImportError as exc:  # name the extra that fixes it, as every optional import does
    raise MissingDependency("client", "httpx") from exc
try:
    import stamina
except ImportError as exc:
    raise MissingDependency("client", "stamina") from exc

__all__ = ["HttpClient"]

Contacts = Iterable[str] | Iterable[Mapping[str, Any]] | str | bytes


#: Backoff of a 503 that states no ``Retry-After``: 0.2 s, 0.4 s, ... up to 5 s, plus jitter.
_BACKOFF_INITIAL = 0.2
_BACKOFF_MAX = 5.0
#: Up to this many seconds are added to every wait, so clients refused together do not all
#: come back in the same instant (never subtracted: a stated ``Retry-After`` is a minimum).
_JITTER = 0.5


def _retry_after(resp: httpx.Response) -> float | None:
    """The ``Retry-After`` of a response in seconds, or None when absent or a date.

    Only the delay-seconds form is read (the server sends whole seconds); an HTTP-date, which
    would need a clock shared with the server, counts as absent.
    """
    value = resp.headers.get("Retry-After", "").strip()
    if not value.isdigit() or len(value) > 9:  # isdigit: no sign, no exponent, no "nan"
        return None
    return float(value)


class _Retry:
    """The retry decision of one call: which answers to retry, and how long to wait.

    It is the backoff hook of :func:`stamina.retry_context`, which runs the attempts; the
    waits are decided here, so that a ``Retry-After`` is honoured and the total is bounded.
    """

    __slots__ = ("budget", "idempotent", "response", "retries")

    def __init__(self, *, idempotent: bool, budget: float) -> None:
        self.idempotent = idempotent
        self.budget = budget  # seconds this call may still spend waiting
        self.response: httpx.Response | None = None  # the last error response
        self.retries = 0

    def __call__(self, exc: Exception) -> bool | float:
        resp = self.response
        if resp is None:  # a transport failure: no answer at all, so nothing says "retry"
            return False
        stated = _retry_after(resp)
        if resp.status_code == 429 and isinstance(exc, RateLimited):
            if stated is None:  # a 429 that does not say when (a proxy's, say): raise it
                return False
        elif not (resp.status_code == 503 and self.idempotent):
            return False
        self.retries += 1
        if stated is None:
            stated = min(_BACKOFF_MAX, _BACKOFF_INITIAL * 2 ** (self.retries - 1))
        if stated > self.budget:
            return False  # sleeping less than stated would only earn another refusal
        wait = stated + random.uniform(0.0, min(_JITTER, self.budget - stated))  # noqa: S311
        self.budget -= wait
        self.response = None
        return wait


def _scheme_path(scheme: str) -> str:
    # Scheme names hold "+"; quote everything so no name can reach another route.
    return quote(scheme, safe="")


class HttpClient:
    """Client of a remote :class:`~contactmatch.service.DiscoveryServer`, served over HTTP.

    Args:
        base_url: where the app is served, e.g. ``http://127.0.0.1:8080``.
        token: bearer token of the user (or admin) this client acts for.
        transport: an httpx transport (``httpx.MockTransport`` in tests, or a custom one).
        timeout: seconds to wait for the server per request.
        retries: how many times one call may be sent again after a ``429`` with
            ``Retry-After`` (any call) or a ``503`` (reads only); 0 or None turns retries off.
        retry_wait: the most seconds one call spends waiting between its attempts, in all. A
            ``Retry-After`` longer than what is left is not waited for: the error is raised
            at once, with its ``retry_after``.

    Errors come back as the exceptions the in-process server raises (``RateLimited`` with
    ``retry_after``, ``UnknownKeyId``, ...); an unreachable server is ``StoreUnavailable``.
    The error of the last attempt is the one raised when the retries are used up.

    Retries run under :mod:`stamina`, so its switches apply: ``stamina.set_active(False)``
    turns them off process-wide and ``stamina.set_testing(True)`` makes them instant in tests;
    its instrumentation (logging, Prometheus, structlog) sees each retry.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
        retries: int | None = 3,
        retry_wait: float = 30.0,
    ) -> None:
        if retries is not None and retries < 0:
            raise InvalidInput("retries must be 0 or more (or None for no retries)")
        if not retry_wait >= 0:  # also refuses NaN
            raise InvalidInput("retry_wait must be 0 or more seconds")
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.retries = retries or 0
        self.retry_wait = float(retry_wait)
        self._http = httpx.Client(base_url=self.base_url, transport=transport, timeout=timeout)
        self._filters: dict[str, Filter] = {}
        self._caches: dict[str, dict[tuple[str, str], bytes]] = {}
        self._hints: dict[str, PirHint] = {}

    def __repr__(self) -> str:
        # The token is never shown, not even in part.
        token = "set" if self.token else "none"
        return f"<{type(self).__name__} {self.base_url} token={token}>"

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- transport --------------------------------------------------------------------------
    def _request(
        self,
        method: str,
        path: str,
        *,
        auth: bool = True,
        user: str | None = None,
        content: bytes | None = None,
        media: str | None = None,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, int] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send one request, retried as the class says; errors become library errors."""
        hdrs = dict(headers or {})
        if auth:
            if not self.token:
                raise AuthenticationFailed("this client has no token")
            hdrs["Authorization"] = f"Bearer {self.token}"
        if user is not None:
            hdrs[USER_HEADER] = quote(user, safe="")
        if body is not None:
            content, media = json.dumps(body).encode(), JSON
        if media is not None:
            hdrs["Content-Type"] = media
        request = self._http.build_request(
            method, path, content=content, params=params, headers=hdrs
        )
        if not self.retries:
            return self._checked(self._send(request))
        retry = _Retry(idempotent=method == "GET", budget=self.retry_wait)
        attempts = stamina.retry_context(
            on=retry, attempts=self.retries + 1, timeout=None, wait_jitter=0.0
        )
        for attempt in attempts:
            with attempt:
                resp = self._send(request)
                if resp.status_code >= 400:
                    retry.response = resp
                return self._checked(resp)
        raise AssertionError("unreachable: stamina re-raises the last error")  # pragma: no cover

    def _send(self, request: httpx.Request) -> httpx.Response:
        """One attempt; a transport failure is ``StoreUnavailable``."""
        try:
            return self._http.send(request)
        except httpx.TimeoutException as exc:
            raise StoreUnavailable("the discovery server did not answer in time") from exc
        except httpx.TransportError as exc:
            raise StoreUnavailable("cannot reach the discovery server") from exc

    @staticmethod
    def _checked(resp: httpx.Response) -> httpx.Response:
        """The response itself, or its error as the library's typed exception."""
        if resp.status_code < 400:
            return resp
        try:
            payload: Any = resp.json()
        except ValueError:
            payload = None
        raise exception_for(resp.status_code, payload)

    def _json(self, resp: httpx.Response) -> Any:
        try:
            return load_json(resp.content, error=MalformedMessage)
        except MalformedMessage:
            raise MalformedMessage("the server's answer is not (acceptable) JSON") from None

    # -- the DiscoveryBackend protocol ------------------------------------------------------
    def schemes(self) -> list[str]:
        """Schemes the server serves, the default first (a property on the in-process server,
        where reading it costs no round trip)."""
        answer = self._json(self._request("GET", "/v1/schemes", auth=False))
        return [str(s) for s in answer["schemes"]]

    def info(self, scheme: str | None = None) -> bytes:
        """Published parameters of a scheme, as :meth:`DiscoveryServer.info` returns them;
        the server's default scheme (its first) when ``scheme`` is None."""
        name = self.schemes()[0] if scheme is None else scheme
        return self._request("GET", f"/v1/info/{_scheme_path(name)}", auth=False).content

    def published_filter(self, scheme: str | None = None, since: int | None = None) -> bytes:
        """The filter of a filter scheme, whole or as a delta from version ``since``; the
        server's default scheme when ``scheme`` is None."""
        name = self.schemes()[0] if scheme is None else scheme
        params = {"since": since} if since is not None else None
        path = f"/v1/filter/{_scheme_path(name)}"
        return self._request("GET", path, auth=False, params=params).content

    def published_hint(self, scheme: str | None = None, since: int | None = None) -> bytes:
        """The PIR hint of a ``pir`` scheme, whole or as a delta from version ``since``."""
        name = self.schemes()[0] if scheme is None else scheme
        params = {"since": since} if since is not None else None
        path = f"/v1/hint/{_scheme_path(name)}"
        return self._request("GET", path, auth=False, params=params).content

    def hint_version(self, scheme: str | None = None) -> int:
        """Version of a ``pir`` scheme's database, from its info (0 for other schemes)."""
        info = ServerInfo.decode(self.info(scheme))
        return int(info.extra.get("pir", {}).get("version", 0))

    def discover(self, requester_id: str, request: bytes) -> bytes:
        """Send one discovery request; ``requester_id`` must be the token's user (else 403)."""
        return self._discover(request, requester_id)

    def _discover(self, request: bytes, user: str | None) -> bytes:
        resp = self._request("POST", "/v1/discover", user=user, content=request, media=BINARY)
        return resp.content

    def upload_contacts(self, owner_id: str, request: bytes) -> int:
        """Opt-in upload of a ContactsUpload message; returns how many tokens were kept."""
        resp = self._request("POST", "/v1/contacts", user=owner_id, content=request, media=BINARY)
        return int(self._json(resp)["kept"])

    def register(
        self,
        user_id: str,
        number: str,
        *,
        region: str | None = None,
        discoverability: Discoverability | str = Discoverability.EVERYONE,
        proof: str | None = None,
    ) -> str:
        """Register the token's user (``user_id``) with ``number``; returns the E.164 number.

        ``proof`` (e.g. the SMS code) lets the server's number verifier move a number that
        another account holds; without it such a number is refused (``Conflict``).
        """
        body = {
            "number": number,
            "region": region,
            "discoverability": str(discoverability),
            "proof": proof,
        }
        resp = self._request("POST", "/v1/register", user=user_id, body=body)
        return str(self._json(resp)["number"])

    def change_number(
        self, user_id: str, new_number: str, *, region: str | None = None, proof: str | None = None
    ) -> str:
        """Move the account to a new number; returns the new E.164 number."""
        body = {"number": new_number, "region": region, "proof": proof}
        resp = self._request("PUT", "/v1/number", user=user_id, body=body)
        return str(self._json(resp)["number"])

    def set_discoverability(self, user_id: str, setting: Discoverability | str) -> None:
        """Who may find the user: ``everyone``, ``contacts`` or ``nobody``."""
        body = {"discoverability": str(setting)}
        self._request("PUT", "/v1/settings", user=user_id, body=body)

    def delete_account(self, user_id: str) -> None:
        """Erase the user everywhere."""
        self._request("DELETE", "/v1/account", user=user_id)

    def stats(self) -> dict[str, int]:
        """Aggregate counters; this client's token must be an admin token."""
        answer = self._json(self._request("GET", "/v1/stats"))
        return {str(k): int(v) for k, v in answer.items()}

    # -- convenience ------------------------------------------------------------------------
    def sync(
        self,
        contacts: Contacts,
        *,
        scheme: str = "oprf+filter",
        region: str | None = None,
        cache: dict[tuple[str, str], bytes] | None = None,
    ) -> DiscoveryResult:
        """Fetch info (and the filter, as a delta when one is held) and run a whole discovery.

        Args:
            contacts: the phone book (numbers, contact dicts or vCard text).
            scheme: the scheme to discover with.
            region: default region of the phone book's numbers.
            cache: token cache to use and fill; by default one kept by this object per token
                function, so re-syncs evaluate only new numbers.

        Returns:
            The result; ``filter_stale`` says the registry changed during the run (sync again).
        """
        info = ServerInfo.decode(self.info(scheme))
        method = get_scheme(scheme)
        blob = self._current_filter(scheme, info) if method.publishes_filter else None
        if cache is None:
            cache = self._caches.setdefault(method.token, {})
        hint = self._current_hint(scheme, info) if method.retrieves_privately else None
        client = DiscoveryClient(info, filter_blob=blob, hint_blob=hint, region=region, cache=cache)
        try:
            return client.discover(contacts, lambda request: self._discover(request, None))
        except UnknownKeyId:
            if hint is None:
                raise
            # The server could not patch our hint (it never held that version): start over
            # from its whole hint, once.
            self._hints.pop(scheme, None)
            hint = self._current_hint(scheme, info)
            client = DiscoveryClient(
                info, filter_blob=blob, hint_blob=hint, region=region, cache=cache
            )
            return client.discover(contacts, lambda request: self._discover(request, None))

    def _current_hint(self, scheme: str, info: ServerInfo) -> PirHint:
        """The server's current PIR hint, patched from the one held when possible.

        The hint object is kept and shared with the discoveries that use it: each answer's
        delta patches it in place, so the next sync starts from the version last answered.
        """
        held = self._hints.get(scheme)
        version = int(info.extra.get("pir", {}).get("version", 0))
        if held is not None and held.key_id == info.key_id:
            if held.version == version:
                return held
            try:
                held.update(self.published_hint(scheme, since=held.version))
            except InvalidInput:
                pass  # a delta from elsewhere: start over from the whole hint
            else:
                return held
        hint = PirHint(self.published_hint(scheme))
        self._hints[scheme] = hint
        return hint

    def _current_filter(self, scheme: str, info: ServerInfo) -> bytes:
        """The server's current filter, patched from the one held when possible."""
        held = self._filters.get(scheme)
        if held is not None and held.key_id == info.key_id:
            path = f"/v1/filter/{_scheme_path(scheme)}"
            resp = self._request(
                "GET",
                path,
                auth=False,
                params={"since": held.version},
                headers={"If-None-Match": f'"{held.version}"'},
            )
            if resp.status_code == 304:
                return held.to_bytes()
            if resp.content[:4] != b"CMFD":
                return self._keep(scheme, resp.content)
            try:
                held.apply_delta(resp.content)
            except InvalidInput:
                pass  # a delta from elsewhere or a corrupt one: start over from the whole filter
            else:
                return held.to_bytes()
        return self._keep(scheme, self.published_filter(scheme))

    def _keep(self, scheme: str, blob: bytes) -> bytes:
        self._filters[scheme] = load_filter(blob)
        return blob


if TYPE_CHECKING:
    HttpServer = HttpClient  # the deprecated alias, for type checkers (at run time: below)


def __getattr__(name: str) -> Any:
    """``HttpServer``, the old name of :class:`HttpClient`, with a DeprecationWarning (PEP 562).

    The old name read as if the object served something; it is the same class.
    """
    if name == "HttpServer":
        warnings.warn(
            "HttpServer is deprecated; use HttpClient (the same class)",
            DeprecationWarning,
            stacklevel=2,
        )
        return HttpClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
