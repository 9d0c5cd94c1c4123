"""What a route-table entry is, and the one wrapper that enforces it.

An :class:`Endpoint` declares its authentication, its query and body (as readers that parse
and validate) and its answer; :func:`asgi_endpoint` turns it into the Starlette endpoint that
authenticates, reads and validates *before* the handler runs, so a handler receives a
:class:`Call` with the caller's id and typed, checked values, and cannot forget a check the
OpenAPI document promises. The same entries generate that document
(:mod:`contactmatch.server.openapi`).

Order, for every request: the bearer token (before any body byte is read), the query, the
media type (415), the body under its size cap (413, counted while streaming), its parsing
and validation (400), the handler. Every failure becomes the JSON error of
:mod:`contactmatch.server._codes`.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar
from urllib.parse import unquote

from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from contactmatch.errors import (
    ApiError,
    AuthenticationFailed,
    InvalidInput,
    RateLimited,
    UnknownUser,
)
from contactmatch.schemes.wire import Message, decode_json
from contactmatch.server._codes import BINARY, JSON, USER_HEADER, error_body
from contactmatch.server.auth import Authenticator, NumberVerifier
from contactmatch.server.models import WIRE_JSON, parse_body, validate
from contactmatch.service import DiscoveryServer

if TYPE_CHECKING:
    from contactmatch.server.metrics import Metrics

__all__ = [
    "MAX_JSON_BODY",
    "NO_BODY",
    "NO_QUERY",
    "Answer",
    "Auth",
    "Body",
    "Call",
    "Context",
    "Endpoint",
    "JsonBody",
    "Query",
    "QueryModel",
    "Wire",
    "WireBody",
    "asgi_endpoint",
    "error_response",
]

#: Account endpoints take a few short fields; they never need the discovery body size.
MAX_JSON_BODY = 64 * 1024

logger = logging.getLogger("contactmatch.server")

#: Who may call: anyone, a user (bearer token -> user id), an operator (admin token), or a
#: metrics scraper (the metrics token).
Auth = Literal["none", "user", "admin", "metrics"]
B = TypeVar("B")
Q = TypeVar("Q")
B_co = TypeVar("B_co", covariant=True)
Q_co = TypeVar("Q_co", covariant=True)
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Context:
    """What handlers work with: the service and the hooks the app was built with."""

    server: DiscoveryServer
    authenticate: Authenticator
    admin: Authenticator | None
    verify_number: NumberVerifier | None
    max_body: int
    #: The OpenAPI document of the routes mounted with this context.
    openapi: dict[str, Any] = field(default_factory=dict)
    #: The app's metrics (None: nothing is counted).
    metrics: Metrics | None = None
    #: Authenticates scrapers of ``/metrics`` when it is protected (``auth="metrics"``).
    metrics_auth: Authenticator | None = None


@dataclass(frozen=True, slots=True)
class Call(Generic[B, Q]):
    """One authenticated, parsed request as a handler sees it."""

    request: Request
    #: The authenticated user id ("" for ``auth="none"``; the operator's id for admin).
    user: str
    body: B
    query: Q


@dataclass(frozen=True, slots=True)
class Wire:
    """A wire-message body: always the binary form, plus the encoding the client used (the
    answer goes back in the same one)."""

    media: str
    data: bytes


# -- readers: parse and validate, and say what they accept for the document ------------------


class Body(Protocol[B_co]):
    """Reads and validates a request body; documents it."""

    async def read(self, request: Request, ctx: Context) -> B_co:
        """The parsed body; raises a library error (400, 413, 415) when it is not one."""
        ...

    def content(self) -> dict[str, tuple[type[BaseModel], ...]]:
        """Media types accepted -> the models the body may be (none: binary)."""
        ...


class Query(Protocol[Q_co]):
    """Reads and validates the query string; documents its parameters."""

    def read(self, request: Request) -> Q_co:
        """The parsed query; raises InvalidInput when it is not one."""
        ...

    @property
    def model(self) -> type[BaseModel] | None:
        """The model whose fields are the documented parameters."""
        ...


class _NoBody:
    async def read(self, request: Request, ctx: Context) -> None:
        # The body, if any, is not read: nothing here would look at it.
        del request, ctx

    def content(self) -> dict[str, tuple[type[BaseModel], ...]]:
        return {}


class _NoQuery:
    model = None

    def read(self, request: Request) -> None:
        del request


NO_BODY: Body[None] = _NoBody()
NO_QUERY: Query[None] = _NoQuery()


@dataclass(frozen=True, slots=True)
class JsonBody(Generic[M]):
    """A small JSON object validated by ``model``, capped at :data:`MAX_JSON_BODY`.

    The media type is not checked: the strict parse decides (``curl -d`` sends a form type).
    """

    model: type[M]

    async def read(self, request: Request, ctx: Context) -> M:
        raw = await read_body(request, min(ctx.max_body, MAX_JSON_BODY))
        return parse_body(self.model, raw)

    def content(self) -> dict[str, tuple[type[BaseModel], ...]]:
        return {JSON: (self.model,)}


@dataclass(frozen=True, slots=True)
class WireBody:
    """A wire message, binary or in its JSON form, capped at the app's ``max_body``.

    ``accepts`` are the message types documented (and, when ``expect`` is set, the one the
    JSON form must be; otherwise the service decides, as it does for binary bodies).
    """

    accepts: tuple[type[Message], ...]
    expect: type[Message] | None = None

    async def read(self, request: Request, ctx: Context) -> Wire:
        media = media_type(request)
        raw = await read_body(request, ctx.max_body)
        if media == JSON:
            # decode_json refuses hostile JSON as malformed_message; the rest of the stack
            # sees only the binary form.
            raw = await run_in_threadpool(_to_binary, raw, self.expect)
        return Wire(media, raw)

    def content(self) -> dict[str, tuple[type[BaseModel], ...]]:
        return {BINARY: (), JSON: tuple(WIRE_JSON[m] for m in self.accepts)}


def _to_binary(text: bytes, expect: type[Message] | None) -> bytes:
    return decode_json(text, expect).encode()


@dataclass(frozen=True, slots=True)
class QueryModel(Generic[M]):
    """Query parameters validated by ``model`` (unknown ones ignored, as HTTP caches add)."""

    model: type[M]

    def read(self, request: Request) -> M:
        return validate(self.model, dict(request.query_params), "query")


# -- the entry -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    """The documented success answer: its status, and per media type the models it may be
    (none: binary; an empty mapping: no body)."""

    content: dict[str, tuple[type[BaseModel], ...]]
    status: int = 200
    description: str = "OK"
    #: Response headers the client may rely on, with what they mean.
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Context, Call[B, Q]], Awaitable[Response]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint(Generic[B, Q]):
    """One route: what it needs (auth, query, body), what it does, what it answers."""

    method: str
    path: str
    name: str
    summary: str
    auth: Auth
    query: Query[Q]
    body: Body[B]
    handler: Handler[B, Q]
    answer: Answer
    #: Error statuses besides the 500 and 503 every route may answer.
    errors: tuple[int, ...] = ()
    #: Request headers the route reads, besides Authorization and the user header.
    headers: dict[str, str] = field(default_factory=dict)
    #: Puts a number on an account: mounted only with a number verifier (or the explicit
    #: development flag), because without one it answers "is this number registered?".
    claims_number: bool = False


def asgi_endpoint(ep: Endpoint[B, Q], ctx: Context) -> Callable[[Request], Awaitable[Response]]:
    """The Starlette endpoint of ``ep``: authenticate, parse, validate, call, map errors."""

    async def endpoint(request: Request) -> Response:
        request.scope["route_path"] = ep.path
        quota: str | None = None
        try:
            response = await answer(request)
        except RateLimited as exc:
            quota = exc.quota
            response = error_response(exc, request)
        except Exception as exc:  # every failure becomes a JSON error
            response = error_response(exc, request)
        if ctx.metrics is not None:
            ctx.metrics.observe_request(ep.name, response.status_code, quota)
        logger.debug("%s %s -> %d", ep.method, ep.path, response.status_code)
        return response

    async def answer(request: Request) -> Response:
        user = await _caller(ep.auth, request, ctx)
        query = ep.query.read(request)
        body = await ep.body.read(request, ctx)
        call = Call(request=request, user=user, body=body, query=query)
        try:
            return await ep.handler(ctx, call)
        except UnknownUser:
            if ep.auth != "user":
                raise
            # Acting on one's own account needs a live one: a never-registered or
            # deleted account's token authenticates nothing here.
            raise AuthenticationFailed("the token's account is not registered") from None

    endpoint.__name__ = ep.name
    return endpoint


async def _caller(auth: Auth, request: Request, ctx: Context) -> str:
    """The user (or operator) id the request's bearer token authenticates ("" if none needed).

    The optional user header must name the same user: a client holding a mixed-up token gets
    403 instead of acting on another account.
    """
    if auth == "none":
        return ""
    check = ctx.authenticate
    if auth == "admin":
        if ctx.admin is None:
            raise ApiError(403, "forbidden", "this server has no admin authenticator")
        check = ctx.admin
    elif auth == "metrics":
        if ctx.metrics_auth is None:
            raise ApiError(403, "forbidden", "this server has no metrics authenticator")
        check = ctx.metrics_auth
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationFailed("missing bearer token")
    # The authenticator may be a database or network call: keep it off the event loop.
    user = await run_in_threadpool(check, token)
    if not isinstance(user, str) or not user:
        raise AuthenticationFailed("the token does not name a user")
    claimed = request.headers.get(USER_HEADER)
    if claimed is not None and unquote(claimed) != user:
        raise ApiError(403, "forbidden", "the token authenticates another user")
    return user


def media_type(request: Request) -> str:
    """``BINARY`` or ``JSON`` from Content-Type (binary when absent); 415 otherwise."""
    raw = request.headers.get("content-type")
    if raw is None:
        return BINARY
    media = raw.split(";", 1)[0].strip().lower()
    if media not in (BINARY, JSON):
        raise ApiError(415, "unsupported_media_type", f"send {BINARY} or {JSON}")
    return media


async def read_body(request: Request, limit: int) -> bytes:
    """Read the body, refusing it as soon as it passes ``limit`` bytes.

    Content-Length is checked first to refuse early, but the stream is counted too: the
    header may be absent (chunked) or lie.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        # isascii: str.isdigit accepts "²", which int() then refuses.
        if not (declared.isascii() and declared.isdigit()):
            raise InvalidInput("malformed Content-Length")
        if int(declared) > limit:
            raise ApiError(413, "payload_too_large", f"request body exceeds {limit} bytes")
    buf = bytearray()
    try:
        async for chunk in request.stream():
            buf += chunk
            if len(buf) > limit:
                raise ApiError(413, "payload_too_large", f"request body exceeds {limit} bytes")
    except ClientDisconnect:
        raise InvalidInput("the client disconnected before sending the whole body") from None
    return bytes(buf)


def error_response(exc: Exception, request: Request) -> Response:
    """The JSON error answer for ``exc``; an unexpected one is logged by type and frames only
    (its message may quote anything, numbers or tokens included)."""
    status, body, headers = error_body(exc)
    if status == 500:
        logger.error(
            "unexpected %s in %s %s\n%s",
            type(exc).__name__,
            request.method,
            request.scope.get("route_path", request.url.path),
            "".join(traceback.format_tb(exc.__traceback__)),
        )
    return JSONResponse(body, status_code=status, headers=headers)
