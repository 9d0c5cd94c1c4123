"""The route table of the HTTP API and its handlers.

Each :class:`~contactmatch.server.routing.Endpoint` below is all there is to a route: the
wrapper built from it authenticates and validates before the handler runs, and the OpenAPI
document is generated from the same entries. Handlers only move bytes: they run the
synchronous :class:`~contactmatch.service.DiscoveryServer` in Starlette's threadpool (it may
block on the store) and build their answer from a model, so they cannot answer a field the
document does not declare.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response

from contactmatch.errors import ApiError, VerificationFailed
from contactmatch.filters import peek_version
from contactmatch.schemes.wire import (
    BucketRequest,
    ContactsUpload,
    EvalRequest,
    LookupRequest,
    PirRequest,
    ServiceResponse,
    decode,
)
from contactmatch.server._codes import BINARY, JSON
from contactmatch.server.health import healthz, metrics, readyz
from contactmatch.server.models import (
    WIRE_JSON,
    ClaimAnswer,
    FilterQuery,
    HealthAnswer,
    KeptAnswer,
    NumberBody,
    OpenApiAnswer,
    ReadyAnswer,
    RegisterBody,
    SchemesAnswer,
    ServerInfoAnswer,
    SettingsAnswer,
    SettingsBody,
    StatsAnswer,
)
from contactmatch.server.routing import (
    NO_BODY,
    NO_QUERY,
    Answer,
    Call,
    Context,
    Endpoint,
    JsonBody,
    QueryModel,
    Wire,
    WireBody,
)

__all__ = ["ENDPOINTS", "PATH_PARAMETERS"]

_NO_STORE = {"Cache-Control": "no-store"}


def _json(answer: BaseModel, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer from its model (validated when it was built)."""
    return JSONResponse(answer.model_dump(mode="json"), headers=headers)


# -- handlers ----------------------------------------------------------------------------------


async def schemes(ctx: Context, call: Call[None, None]) -> Response:
    del call
    return _json(SchemesAnswer(schemes=ctx.server.schemes))


async def info(ctx: Context, call: Call[None, None]) -> Response:
    blob = await run_in_threadpool(ctx.server.info, call.request.path_params["scheme"])
    return Response(blob, media_type=JSON)


async def published_filter(ctx: Context, call: Call[None, FilterQuery]) -> Response:
    scheme: str = call.request.path_params["scheme"]
    since = call.query.since
    wanted = call.request.headers.get("if-none-match")

    def work() -> tuple[bytes | None, int, int | None]:
        if wanted is not None:
            current = ctx.server.filter_version(scheme)
            if current and f'"{current}"' in wanted:
                return None, current, None
        blob = ctx.server.published_filter(scheme, since)
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


async def published_hint(ctx: Context, call: Call[None, FilterQuery]) -> Response:
    scheme: str = call.request.path_params["scheme"]
    since = call.query.since
    wanted = call.request.headers.get("if-none-match")

    def work() -> tuple[bytes | None, int]:
        current = ctx.server.hint_version(scheme)
        if wanted is not None and current and f'"{current}"' in wanted:
            return None, current
        return ctx.server.published_hint(scheme, since), current

    blob, version = await run_in_threadpool(work)
    headers = {"X-Hint-Version": str(version), "Cache-Control": "no-cache"}
    if blob is None:
        return Response(status_code=304, headers={**headers, "ETag": f'"{version}"'})
    return Response(blob, media_type=BINARY, headers=headers)


async def discover(ctx: Context, call: Call[Wire, None]) -> Response:
    media = call.body.media

    def work() -> bytes:
        answer = ctx.server.discover(call.user, call.body.data)
        return decode(answer).to_json().encode() if media == JSON else answer

    return Response(await run_in_threadpool(work), media_type=media, headers=_NO_STORE)


async def contacts(ctx: Context, call: Call[Wire, None]) -> Response:
    kept = await run_in_threadpool(ctx.server.upload_contacts, call.user, call.body.data)
    return _json(KeptAnswer(kept=kept))


async def register(ctx: Context, call: Call[RegisterBody, None]) -> Response:
    return await _claim(ctx, call.user, call.body)


async def change_number(ctx: Context, call: Call[NumberBody, None]) -> Response:
    return await _claim(ctx, call.user, call.body)


async def _claim(ctx: Context, user: str, body: RegisterBody | NumberBody) -> Response:
    """Register or move the caller's number: metered, then possession of the normalised
    number proven (see :meth:`DiscoveryServer.claim_number`)."""
    new = isinstance(body, RegisterBody)
    claim = partial(
        ctx.server.claim_number,
        user,
        body.number,
        body.proof,
        ctx.verify_number,
        region=body.region,
        discoverability=body.discoverability if isinstance(body, RegisterBody) else None,
        existing=not new,
    )
    try:
        e164 = await run_in_threadpool(claim)
    except VerificationFailed:
        # The same answer whether the number is free, registered or hidden.
        raise ApiError(403, "forbidden", "possession of the number was not proven") from None
    return _json(ClaimAnswer(user_id=user, number=e164), _NO_STORE)


async def settings(ctx: Context, call: Call[SettingsBody, None]) -> Response:
    setting = call.body.discoverability

    def work() -> None:
        ctx.server.charge_write(call.user)
        ctx.server.set_discoverability(call.user, setting)

    await run_in_threadpool(work)
    return _json(SettingsAnswer(discoverability=setting))


async def delete_account(ctx: Context, call: Call[None, None]) -> Response:
    # Never metered: erasure must always be possible.
    await run_in_threadpool(ctx.server.delete_account, call.user)
    return Response(status_code=204)


async def stats(ctx: Context, call: Call[None, None]) -> Response:
    del call
    return _json(StatsAnswer(await run_in_threadpool(ctx.server.stats)))


async def openapi(ctx: Context, call: Call[None, None]) -> Response:
    del call
    # Built once per app (create_app) from the routes actually mounted.
    return _json(OpenApiAnswer(ctx.openapi))


# -- the table ---------------------------------------------------------------------------------

#: Documentation of the path parameters the routes use.
PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "scheme": {
        "schema": {"type": "string"},
        "example": "oprf+filter",
        "description": "a scheme this server serves (GET /v1/schemes)",
    },
}
_DISCOVERY_REQUESTS = (EvalRequest, LookupRequest, BucketRequest, PirRequest)

ENDPOINTS: tuple[Endpoint[Any, Any], ...] = (
    Endpoint(
        method="GET",
        path="/v1/schemes",
        name="schemes",
        summary="List the schemes this server serves",
        auth="none",
        query=NO_QUERY,
        body=NO_BODY,
        handler=schemes,
        answer=Answer(content={JSON: (SchemesAnswer,)}),
    ),
    Endpoint(
        method="GET",
        path="/v1/info/{scheme}",
        name="info",
        summary="Published parameters of a scheme (key id, public key, filter version)",
        auth="none",
        query=NO_QUERY,
        body=NO_BODY,
        handler=info,
        answer=Answer(content={JSON: (ServerInfoAnswer,)}),
        errors=(404,),
    ),
    Endpoint(
        method="GET",
        path="/v1/filter/{scheme}",
        name="filter",
        summary="The published filter of a filter scheme, whole or as a delta",
        auth="none",
        query=QueryModel(FilterQuery),
        body=NO_BODY,
        handler=published_filter,
        answer=Answer(
            content={BINARY: ()},
            description="the filter, or a delta from `since`",
            headers={
                "X-Filter-Version": "the version the body brings the client to",
                "X-Filter-Since": "on deltas: the version the delta applies to",
                "ETag": 'on whole filters: "N", for If-None-Match',
            },
        ),
        errors=(304, 400, 404),
        headers={"If-None-Match": 'the held version, "N": 304 when nothing changed'},
    ),
    Endpoint(
        method="GET",
        path="/v1/hint/{scheme}",
        name="hint",
        summary="The PIR hint of a pir scheme, whole or as a delta from `since`",
        auth="none",
        query=QueryModel(FilterQuery),
        body=NO_BODY,
        handler=published_hint,
        answer=Answer(
            content={BINARY: ()},
            description="the hint (DB·A, docs/pir.md), or a delta from `since`",
            headers={"X-Hint-Version": "the version of the database answered now"},
        ),
        errors=(304, 400, 404),
        headers={"If-None-Match": 'the held version, "N": 304 when nothing changed'},
    ),
    Endpoint(
        method="POST",
        path="/v1/discover",
        name="discover",
        summary="One discovery round: a wire request in, a ServiceResponse out, in the "
        "request's encoding",
        auth="user",
        query=NO_QUERY,
        body=WireBody(_DISCOVERY_REQUESTS),
        handler=discover,
        answer=Answer(
            content={BINARY: (), JSON: (WIRE_JSON[ServiceResponse],)},
            description="ServiceResponse, binary or JSON like the request",
        ),
        errors=(400, 401, 403, 404, 409, 413, 415, 429),
    ),
    Endpoint(
        method="POST",
        path="/v1/contacts",
        name="contacts",
        summary="Opt-in upload of the caller's contact tokens (wire ContactsUpload; metered)",
        auth="user",
        query=NO_QUERY,
        body=WireBody((ContactsUpload,), ContactsUpload),
        handler=contacts,
        answer=Answer(content={JSON: (KeptAnswer,)}),
        errors=(400, 401, 403, 409, 413, 415, 429),
    ),
    Endpoint(
        method="POST",
        path="/v1/register",
        name="register",
        summary="Register the token's user with a number it proves to possess (metered per "
        "account, per number and globally)",
        auth="user",
        query=NO_QUERY,
        body=JsonBody(RegisterBody),
        handler=register,
        answer=Answer(content={JSON: (ClaimAnswer,)}),
        errors=(400, 401, 403, 409, 413, 429),
        claims_number=True,
    ),
    Endpoint(
        method="PUT",
        path="/v1/number",
        name="number",
        summary="Move the caller's account to a new number it proves to possess (metered)",
        auth="user",
        query=NO_QUERY,
        body=JsonBody(NumberBody),
        handler=change_number,
        answer=Answer(content={JSON: (ClaimAnswer,)}),
        errors=(400, 401, 403, 409, 413, 429),
        claims_number=True,
    ),
    Endpoint(
        method="PUT",
        path="/v1/settings",
        name="settings",
        summary="Who may discover the caller: everyone, contacts or nobody (metered)",
        auth="user",
        query=NO_QUERY,
        body=JsonBody(SettingsBody),
        handler=settings,
        answer=Answer(content={JSON: (SettingsAnswer,)}),
        errors=(400, 401, 403, 413, 429),
    ),
    Endpoint(
        method="DELETE",
        path="/v1/account",
        name="account",
        summary="Erase the caller everywhere (never metered: erasure is always possible)",
        auth="user",
        query=NO_QUERY,
        body=NO_BODY,
        handler=delete_account,
        answer=Answer(status=204, content={}, description="deleted"),
        errors=(401, 403),
    ),
    Endpoint(
        method="GET",
        path="/v1/stats",
        name="stats",
        summary="Aggregate counters (admin token only)",
        auth="admin",
        query=NO_QUERY,
        body=NO_BODY,
        handler=stats,
        answer=Answer(content={JSON: (StatsAnswer,)}),
        errors=(401, 403),
    ),
    Endpoint(
        method="GET",
        path="/healthz",
        name="healthz",
        summary="Liveness: the process answers (nothing else is checked)",
        auth="none",
        query=NO_QUERY,
        body=NO_BODY,
        handler=healthz,
        answer=Answer(content={JSON: (HealthAnswer,)}),
    ),
    Endpoint(
        method="GET",
        path="/readyz",
        name="readyz",
        summary="Readiness: the store answers, keys and registry are loaded (503 otherwise)",
        auth="none",
        query=NO_QUERY,
        body=NO_BODY,
        handler=readyz,
        answer=Answer(content={JSON: (ReadyAnswer,)}),
    ),
    Endpoint(
        method="GET",
        path="/metrics",
        name="metrics",
        summary="Aggregate metrics in the Prometheus text format (a token when the server "
        "has one: serve --metrics-token-file)",
        # create_app makes it "metrics" when a metrics token is configured.
        auth="none",
        query=NO_QUERY,
        body=NO_BODY,
        handler=metrics,
        answer=Answer(content={"text/plain": ()}, description="Prometheus text format 0.0.4"),
    ),
    Endpoint(
        method="GET",
        path="/openapi.json",
        name="openapi",
        summary="This document",
        auth="none",
        query=NO_QUERY,
        body=NO_BODY,
        handler=openapi,
        answer=Answer(content={JSON: (OpenApiAnswer,)}),
    ),
)
