"""The ASGI app: a thin HTTP layer over a sans-I/O :class:`~contactmatch.service.DiscoveryServer`.

Every endpoint authenticates (through the injected :data:`~contactmatch.server.auth.Authenticator`),
reads the body under a size cap, hands bytes to the discovery server in Starlette's threadpool
(its methods are synchronous and may block on the store) and returns bytes. Errors are JSON
``{"error": {"code", "message"}}`` with the stable codes of :mod:`contactmatch.server._codes`.
The route table below also generates the OpenAPI document, so the two cannot drift apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from contactmatch._json import load_json
from contactmatch._version import __version__
from contactmatch.errors import AuthenticationFailed, InvalidInput, UnknownUser, VerificationFailed
from contactmatch.filters import peek_version
from contactmatch.schemes.wire import ContactsUpload, decode, decode_json
from contactmatch.server._codes import (
    BINARY,
    JSON,
    USER_HEADER,
    ApiError,
    error_body,
)
from contactmatch.server.auth import Authenticator, NumberVerifier
from contactmatch.service import DiscoveryServer
from contactmatch.stores.base import Discoverability

__all__ = ["DEFAULT_MAX_BODY", "ENDPOINTS", "create_app"]

DEFAULT_MAX_BODY = 4 * 1024 * 1024
#: Account endpoints take a few short fields; they never need the discovery body size.
MAX_JSON_BODY = 64 * 1024
_SETTINGS = ", ".join(d.value for d in Discoverability)

logger = logging.getLogger("contactmatch.server")

Handler = Callable[[Request], Awaitable[Response]]
Auth = Literal["none", "user", "admin"]


# -- the route table ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Endpoint:
    path: str
    method: str
    handler: str
    summary: str
    auth: Auth
    body: tuple[str, ...] = ()
    body_doc: str = ""
    ok: tuple[int, str, str] = (200, JSON, "")
    params: tuple[dict[str, Any], ...] = ()
    errors: tuple[int, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


_SCHEME = {
    "name": "scheme",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "example": "oprf+filter",
}
_SINCE = {
    "name": "since",
    "in": "query",
    "required": False,
    "schema": {"type": "integer", "minimum": 0},
    "description": "filter version the client holds; answered with a delta when the "
    "server still has the history, else with the whole filter",
}
_ACCOUNT = {
    "number": {"type": "string", "description": "phone number (E.164 or local)"},
    "region": {"type": "string", "description": "ISO 3166 region for local numbers"},
}
_DISC = {"type": "string", "enum": [d.value for d in Discoverability]}
_PROOF = {
    "type": "string",
    "description": "proof of possession of the number (e.g. the SMS code the messenger sent), "
    "checked by the server's number verifier against the normalised E.164 number; needed for "
    "every registration and number change",
}
#: Endpoints that put a number on an account: mounted only with a number verifier (or the
#: explicit development flag), because without one they answer "is this number registered?".
NUMBER_ENDPOINTS = frozenset({"register", "number"})

ENDPOINTS: tuple[_Endpoint, ...] = (
    _Endpoint(
        path="/v1/schemes",
        method="GET",
        handler="schemes",
        auth="none",
        summary="List the schemes this server serves",
    ),
    _Endpoint(
        path="/v1/info/{scheme}",
        method="GET",
        handler="info",
        auth="none",
        summary="Published parameters of a scheme (key id, public key, filter version)",
        params=(_SCHEME,),
        errors=(404,),
    ),
    _Endpoint(
        path="/v1/filter/{scheme}",
        method="GET",
        handler="filter",
        auth="none",
        summary="The published filter of a filter scheme, whole or as a delta",
        ok=(
            200,
            BINARY,
            "filter or delta; X-Filter-Version names the version it "
            "brings the client to, X-Filter-Since is set on deltas",
        ),
        params=(_SCHEME, _SINCE),
        errors=(304, 400, 404),
    ),
    _Endpoint(
        path="/v1/discover",
        method="POST",
        handler="discover",
        auth="user",
        summary="One discovery round: a wire request in, a ServiceResponse out, in the "
        "request's encoding",
        body=(BINARY, JSON),
        ok=(200, BINARY, "ServiceResponse (binary or JSON, like the request)"),
        errors=(400, 401, 403, 404, 409, 413, 415, 429),
    ),
    _Endpoint(
        path="/v1/contacts",
        method="POST",
        handler="contacts",
        auth="user",
        summary="Opt-in upload of the caller's contact tokens (wire ContactsUpload; metered)",
        body=(BINARY, JSON),
        errors=(400, 401, 403, 409, 413, 415, 429),
        extra={"kept": {"type": "integer"}},
    ),
    _Endpoint(
        path="/v1/register",
        method="POST",
        handler="register",
        auth="user",
        summary="Register the token's user with a number it proves to possess (metered per "
        "account, per number and globally)",
        body=(JSON,),
        body_doc="register",
        errors=(400, 401, 403, 409, 413, 429),
        extra={"user_id": {"type": "string"}, "number": {"type": "string"}},
    ),
    _Endpoint(
        path="/v1/number",
        method="PUT",
        handler="number",
        auth="user",
        summary="Move the caller's account to a new number it proves to possess (metered)",
        body=(JSON,),
        body_doc="number",
        errors=(400, 401, 403, 409, 413, 429),
        extra={"user_id": {"type": "string"}, "number": {"type": "string"}},
    ),
    _Endpoint(
        path="/v1/settings",
        method="PUT",
        handler="settings",
        auth="user",
        summary="Who may discover the caller: everyone, contacts or nobody (metered)",
        body=(JSON,),
        body_doc="settings",
        errors=(400, 401, 403, 413, 429),
        extra={"discoverability": _DISC},
    ),
    _Endpoint(
        path="/v1/account",
        method="DELETE",
        handler="account",
        auth="user",
        summary="Erase the caller everywhere (never metered: erasure is always possible)",
        ok=(204, "", "deleted"),
        errors=(401, 403),
    ),
    _Endpoint(
        path="/v1/stats",
        method="GET",
        handler="stats",
        auth="admin",
        summary="Aggregate counters (admin token only)",
        errors=(401, 403),
        extra={"additionalProperties": {"type": "integer"}},
    ),
    _Endpoint(
        path="/openapi.json", method="GET", handler="openapi", auth="none", summary="This document"
    ),
)

_BODIES: dict[str, dict[str, Any]] = {
    "register": {
        "type": "object",
        "required": ["number"],
        "additionalProperties": False,
        "properties": {**_ACCOUNT, "discoverability": _DISC, "proof": _PROOF},
    },
    "number": {
        "type": "object",
        "required": ["number"],
        "additionalProperties": False,
        "properties": {**_ACCOUNT, "proof": _PROOF},
    },
    "settings": {
        "type": "object",
        "required": ["discoverability"],
        "additionalProperties": False,
        "properties": {"discoverability": _DISC},
    },
}
_STATUS_TEXT = {
    304: "the filter named by If-None-Match is current",
    400: "malformed_message, invalid_input, invalid_number or verification_failed",
    401: "authentication_failed: missing, forged or expired bearer token, or its account is "
    "not registered (deleted)",
    403: "forbidden: possession of the number was not proven, the token names another user, "
    "or no admin authenticator",
    404: "unknown_scheme or unknown_user",
    409: "unknown_key_id (refresh /v1/info and retry) or conflict (development servers "
    "without a number verifier only: the number belongs to another account)",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited: see Retry-After",
    503: "store_unavailable",
}


def _openapi(endpoints: tuple[_Endpoint, ...] | list[_Endpoint]) -> dict[str, Any]:
    """Build the OpenAPI 3.1 document from the route table."""
    error_ref = {"$ref": "#/components/schemas/Error"}
    paths: dict[str, dict[str, Any]] = {}
    for ep in endpoints:
        status, media, text = ep.ok
        ok: dict[str, Any] = {"description": text or "OK"}
        if media == JSON:
            schema: dict[str, Any] = {"type": "object"}
            if ep.extra:
                schema.update(
                    ep.extra if "additionalProperties" in ep.extra else {"properties": ep.extra}
                )
            ok["content"] = {JSON: {"schema": schema}}
        elif media:
            ok["content"] = {media: {"schema": {"type": "string", "format": "binary"}}}
        responses: dict[str, Any] = {str(status): ok}
        for code in (*ep.errors, 500, 503):
            entry: dict[str, Any] = {"description": _STATUS_TEXT.get(code, "error")}
            if code != 304:
                entry["content"] = {JSON: {"schema": error_ref}}
            responses[str(code)] = entry
        op: dict[str, Any] = {
            "operationId": ep.handler,
            "summary": ep.summary,
            "parameters": list(ep.params),
            "responses": responses,
        }
        if ep.auth != "none":
            op["security"] = [{"bearer": []}]
            op["parameters"].append(
                {
                    "name": USER_HEADER,
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "user id the client expects "
                    "the token to name; a mismatch is refused with 403",
                }
            )
        if ep.body:
            content: dict[str, Any] = {}
            for media_type in ep.body:
                if media_type == JSON and ep.body_doc:
                    content[JSON] = {"schema": _BODIES[ep.body_doc]}
                elif media_type == JSON:
                    content[JSON] = {
                        "schema": {
                            "type": "object",
                            "description": "wire message in its JSON form (bytes as base64)",
                        }
                    }
                else:
                    content[media_type] = {"schema": {"type": "string", "format": "binary"}}
            op["requestBody"] = {"required": True, "content": content}
        paths.setdefault(ep.path, {})[ep.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "contactmatch discovery API", "version": __version__},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                                "retry_after": {"type": "number"},
                                "quota": {"type": "string"},
                                "reason": {"type": "string"},
                            },
                        }
                    },
                }
            },
        },
    }


# -- request helpers ------------------------------------------------------------------------


def _bearer(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationFailed("missing bearer token")
    return token


def _media_type(request: Request) -> str:
    """``BINARY`` or ``JSON`` from Content-Type (binary when absent); 415 otherwise."""
    raw = request.headers.get("content-type")
    if raw is None:
        return BINARY
    media = raw.split(";", 1)[0].strip().lower()
    if media not in (BINARY, JSON):
        raise ApiError(415, "unsupported_media_type", f"send {BINARY} or {JSON}")
    return media


async def _read_body(request: Request, limit: int) -> bytes:
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


def _json_object(
    body: bytes, required: Mapping[str, type], optional: Mapping[str, type]
) -> dict[str, Any]:
    """Parse a small JSON object with known fields of known types.

    The strict loader (the one the wire's JSON form uses too) turns every hostile body (deep
    nesting, huge integers, lone surrogates, NaN, repeated keys) into InvalidInput, so each
    one is a 400, never a 500.
    """
    obj = load_json(body)
    if not isinstance(obj, dict):
        raise InvalidInput("body must be a JSON object")
    if set(obj) - set(required) - set(optional):
        # Not echoed: a stray key may be anything the client had at hand, even a number.
        raise InvalidInput(f"unknown field in body (expected {', '.join([*required, *optional])})")
    for name in required:
        if name not in obj:
            raise InvalidInput(f"missing field {name!r}")
    for name, value in obj.items():
        kind = required.get(name) or optional[name]
        if not (value is None and name in optional) and not isinstance(value, kind):
            raise InvalidInput(f"field {name!r} must be a {kind.__name__}")
    return obj


def _setting(value: str) -> Discoverability:
    try:
        return Discoverability(value)
    except ValueError:
        raise InvalidInput(f"discoverability must be one of: {_SETTINGS}") from None


def _error_response(exc: Exception, request: Request) -> Response:
    status, body, headers = error_body(exc)
    if status == 500:
        # Type and frames only: an unexpected exception's message may quote anything, numbers
        # or tokens included, and must not reach the log any more than the client.
        logger.error(
            "unexpected %s in %s %s\n%s",
            type(exc).__name__,
            request.method,
            request.scope.get("route_path", request.url.path),
            "".join(traceback.format_tb(exc.__traceback__)),
        )
    return JSONResponse(body, status_code=status, headers=headers)


def _guard(fn: Handler, path: str) -> Handler:
    async def endpoint(request: Request) -> Response:
        request.scope["route_path"] = path
        try:
            return await fn(request)
        except Exception as exc:  # every failure becomes a JSON error
            return _error_response(exc, request)

    endpoint.__name__ = getattr(fn, "__name__", "endpoint")
    return endpoint


async def _http_error(_request: Request, exc: Exception) -> Response:
    """Router errors (unknown path, wrong method) in the same JSON shape as ours."""
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse(
        {"error": {"code": code, "message": str(exc.detail)}},
        status_code=exc.status_code,
        headers=exc.headers,
    )


# -- the endpoints --------------------------------------------------------------------------


class _Api:
    """Endpoint handlers bound to one discovery server and its authenticators."""

    def __init__(
        self,
        server: DiscoveryServer,
        authenticate: Authenticator,
        admin: Authenticator | None,
        max_body: int,
        *,
        verify_number: NumberVerifier | None = None,
        endpoints: tuple[_Endpoint, ...] | list[_Endpoint] = ENDPOINTS,
    ) -> None:
        self.server = server
        self.verify_number = verify_number
        self.authenticate = authenticate
        self.admin = admin
        self.max_body = max_body
        self.max_json = min(max_body, MAX_JSON_BODY)
        self.document = _openapi(endpoints)

    async def _user(self, request: Request, authenticate: Authenticator | None = None) -> str:
        """Authenticate the bearer token; check the optional user header against it."""
        token = _bearer(request)
        user = await run_in_threadpool(authenticate or self.authenticate, token)
        if not isinstance(user, str) or not user:
            raise AuthenticationFailed("the token does not name a user")
        claimed = request.headers.get(USER_HEADER)
        if claimed is not None and unquote(claimed) != user:
            raise ApiError(403, "forbidden", "the token authenticates another user")
        return user

    @staticmethod
    async def _as_caller(fn: Callable[[], Any]) -> Any:
        """Run a server call on behalf of the caller's own account: if the account does not
        exist (never registered, or deleted), its token authenticates nothing here (401)."""
        try:
            return await run_in_threadpool(fn)
        except UnknownUser:
            raise AuthenticationFailed("the token's account is not registered") from None

    async def schemes(self, _request: Request) -> Response:
        return JSONResponse({"schemes": self.server.schemes})

    async def info(self, request: Request) -> Response:
        blob = await run_in_threadpool(self.server.info, request.path_params["scheme"])
        return Response(blob, media_type=JSON)

    async def filter(self, request: Request) -> Response:
        scheme: str = request.path_params["scheme"]
        raw_since = request.query_params.get("since")
        if raw_since is not None and not (
            raw_since.isascii() and raw_since.isdigit() and len(raw_since) <= 20
        ):
            raise InvalidInput("since must be a non-negative integer")
        since = int(raw_since) if raw_since is not None else None
        wanted = request.headers.get("if-none-match")

        def work() -> tuple[bytes | None, int, int | None]:
            if wanted is not None:
                current = self.server.filter_version(scheme)
                if current and f'"{current}"' in wanted:
                    return None, current, None
            blob = self.server.published_filter(scheme, since)
            return blob, *peek_version(blob)

        blob, version, base = await run_in_threadpool(work)
        headers = {"X-Filter-Version": str(version), "Cache-Control": "no-cache"}
        if blob is None:
            return Response(status_code=304, headers={**headers, "ETag": f'"{version}"'})
        if base is None:
            # Only the whole filter gets the ETag: a delta is a different representation.
            headers["ETag"] = f'"{version}"'
        else:
            headers["X-Filter-Since"] = str(base)
        return Response(blob, media_type=BINARY, headers=headers)

    async def discover(self, request: Request) -> Response:
        user = await self._user(request)
        media = _media_type(request)
        body = await _read_body(request, self.max_body)

        def work() -> bytes:
            wire = decode_json(body).encode() if media == JSON else body
            answer = self.server.discover(user, wire)
            return decode(answer).to_json().encode() if media == JSON else answer

        out = await self._as_caller(work)
        return Response(out, media_type=media, headers={"Cache-Control": "no-store"})

    async def contacts(self, request: Request) -> Response:
        user = await self._user(request)
        media = _media_type(request)
        body = await _read_body(request, self.max_body)

        def work() -> int:
            wire = decode_json(body, ContactsUpload).encode() if media == JSON else body
            return self.server.upload_contacts(user, wire)

        kept = await self._as_caller(work)
        return JSONResponse({"kept": kept})

    async def _claim(self, request: Request, *, existing: bool) -> Response:
        """Register or move the caller's number: metered, then possession of the normalised
        number proven (see :meth:`DiscoveryServer.claim_number`)."""
        user = await self._user(request)
        optional: dict[str, type] = {"region": str, "proof": str}
        if not existing:
            optional["discoverability"] = str
        obj = _json_object(await _read_body(request, self.max_json), {"number": str}, optional)
        raw = obj.get("discoverability")
        setting = None if raw is None else _setting(raw)
        call = partial(
            self.server.claim_number,
            user,
            obj["number"],
            obj.get("proof"),
            self.verify_number,
            region=obj.get("region"),
            discoverability=setting,
            existing=existing,
        )
        try:
            e164 = await self._as_caller(call)
        except VerificationFailed:
            raise ApiError(403, "forbidden", "possession of the number was not proven") from None
        return JSONResponse(
            {"user_id": user, "number": e164}, headers={"Cache-Control": "no-store"}
        )

    async def register(self, request: Request) -> Response:
        return await self._claim(request, existing=False)

    async def number(self, request: Request) -> Response:
        return await self._claim(request, existing=True)

    async def settings(self, request: Request) -> Response:
        user = await self._user(request)
        obj = _json_object(await _read_body(request, self.max_json), {"discoverability": str}, {})
        setting = _setting(obj["discoverability"])

        def work() -> None:
            self.server.charge_write(user)
            self.server.set_discoverability(user, setting)

        await self._as_caller(work)
        return JSONResponse({"discoverability": setting.value})

    async def account(self, request: Request) -> Response:
        user = await self._user(request)
        await self._as_caller(partial(self.server.delete_account, user))
        return Response(status_code=204)

    async def stats(self, request: Request) -> Response:
        if self.admin is None:
            raise ApiError(403, "forbidden", "statistics need an admin authenticator")
        await self._user(request, self.admin)
        return JSONResponse(await run_in_threadpool(self.server.stats))

    async def openapi(self, _request: Request) -> Response:
        return JSONResponse(self.document)


def create_app(
    server: DiscoveryServer,
    *,
    authenticate: Authenticator,
    max_body: int = DEFAULT_MAX_BODY,
    admin: Authenticator | None = None,
    refresh_every: float = 0.0,
    verify_number: NumberVerifier | None = None,
    allow_unverified_numbers: bool = False,
    expire_every: float = 3600.0,
    snapshot_every: float = 0.0,
) -> Starlette:
    """Build the ASGI app serving ``server`` over HTTP.

    Args:
        server: the discovery service the endpoints call.
        authenticate: maps a bearer token to a user id, raising AuthenticationFailed; in a
            messenger, the token comes from its own login.
        max_body: largest request body in bytes (discovery and upload requests).
        admin: authenticates operators for ``/v1/stats``; without it the endpoint is 403.
        verify_number: ``(user_id, e164, proof) -> bool``, the messenger's proof of
            possession (its SMS check), given the normalised E.164 number the server will
            register and the request's ``proof``. Every registration and number change needs
            it to return True; an unverified caller gets the same 403 whether or not the
            number is registered.
        allow_unverified_numbers: **development only**: without ``verify_number``, mount the
            number endpoints anyway (they then refuse numbers other accounts hold with 409,
            which tells any caller that the number is registered). Logged as a warning.
            Without a verifier and without this flag, ``/v1/register`` and ``/v1/number``
            are not served at all (404).
        refresh_every: seconds between :meth:`DiscoveryServer.refresh` calls in the
            background, so several server processes sharing one store see each other's
            registrations and deletions; 0 (the default) for a single process.
        expire_every: seconds between background sweeps of drained quota state
            (:meth:`DiscoveryServer.expire_rate_state`), which bound how long rate state
            outlives an account; 0 turns them off (run ``contactmatch vacuum`` instead).
        snapshot_every: seconds between registry snapshot writes
            (:meth:`DiscoveryServer.save_snapshot`), and one more at shutdown; 0: none.

    Returns:
        A Starlette application (run it with uvicorn, or :class:`ServerThread` in tests).

    Raises:
        InvalidInput: ``max_body`` is not positive, or an interval is negative.
    """
    if max_body <= 0:
        raise InvalidInput("max_body must be positive")
    if refresh_every < 0 or expire_every < 0 or snapshot_every < 0:
        raise InvalidInput("refresh_every, expire_every and snapshot_every must not be negative")
    numbers = verify_number is not None or allow_unverified_numbers
    if verify_number is None and allow_unverified_numbers:
        logger.warning(
            "DEVELOPMENT MODE: /v1/register and /v1/number are served WITHOUT proof of "
            "possession; they answer whether a number is registered (an enumeration oracle, "
            "metered) and let any token claim any free number. Never expose this server."
        )
    endpoints = [ep for ep in ENDPOINTS if numbers or ep.handler not in NUMBER_ENDPOINTS]
    api = _Api(
        server, authenticate, admin, max_body, verify_number=verify_number, endpoints=endpoints
    )
    routes = [
        Route(ep.path, _guard(getattr(api, ep.handler), ep.path), methods=[ep.method])
        for ep in endpoints
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        del app
        tasks = []
        if refresh_every:
            tasks.append(asyncio.create_task(_every(server.refresh, refresh_every, "refresh")))
        if expire_every:
            tasks.append(
                asyncio.create_task(_every(server.expire_rate_state, expire_every, "expiry"))
            )
        if snapshot_every:
            tasks.append(
                asyncio.create_task(_every(server.save_snapshot, snapshot_every, "snapshot"))
            )
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if snapshot_every:
                try:
                    await run_in_threadpool(server.save_snapshot)
                except Exception as exc:  # shutting down: log, never mask the shutdown
                    logger.error("final snapshot failed: %s", type(exc).__name__)  # noqa: TRY400

    return Starlette(
        routes=routes, exception_handlers={HTTPException: _http_error}, lifespan=lifespan
    )


async def _every(job: Callable[[], object], every: float, what: str) -> None:
    """Run ``job`` off the event loop every ``every`` seconds until cancelled."""
    while True:
        await asyncio.sleep(every)
        try:
            await run_in_threadpool(job)
        except Exception as exc:  # a store hiccup must not kill the loop; the next round retries
            # Only the type: a driver message could quote a row.
            logger.error("background %s failed: %s", what, type(exc).__name__)  # noqa: TRY400
