"""``/healthz``, ``/readyz`` and ``/metrics``: what an orchestrator and a scraper ask.

Liveness says only that the process answers, so a restart is never triggered by a store
outage a restart cannot fix. Readiness reads the store (one feed-head read), so a load
balancer stops sending traffic to a process whose store is unreachable. Neither needs a token
and neither names a key, user or number: counts and feed positions only.
"""

from __future__ import annotations

from typing import Literal, cast

from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response

from contactmatch.errors import ApiError, ContactMatchError
from contactmatch.server.metrics import CONTENT_TYPE
from contactmatch.server.models import HealthAnswer, ReadyAnswer
from contactmatch.server.routing import Call, Context

__all__ = ["healthz", "metrics", "readyz"]

_NO_STORE = {"Cache-Control": "no-store"}


async def healthz(ctx: Context, call: Call[None, None]) -> Response:
    del ctx, call
    return JSONResponse(HealthAnswer(status="ok").model_dump(mode="json"), headers=_NO_STORE)


async def readyz(ctx: Context, call: Call[None, None]) -> Response:
    del call
    server = ctx.server

    def probe() -> ReadyAnswer:
        probe_store = ctx.metrics.probe_store if ctx.metrics else server.store.feed_head
        head = probe_store()
        return ReadyAnswer(
            status="ready",
            keys=len(server.keys.key_ids),
            users=server.registry_size,
            feed_sequence=server.feed_position,
            feed_lag=max(0, head - server.feed_position),
            started_from=cast("Literal['snapshot', 'store']", server.started_from),
        )

    try:
        answer = await run_in_threadpool(probe)
    except ContactMatchError as exc:
        # The error's type only: a driver message could name a host or a row.
        raise ApiError(
            503, "not_ready", f"the store is unreachable ({type(exc).__name__})"
        ) from None
    return JSONResponse(answer.model_dump(mode="json"), headers=_NO_STORE)


async def metrics(ctx: Context, call: Call[None, None]) -> Response:
    del call
    if ctx.metrics is None:  # create_app always builds one; kept for hand-built contexts
        raise ApiError(404, "not_found", "this server exports no metrics")
    body = await run_in_threadpool(ctx.metrics.exposition)
    return Response(body, media_type=CONTENT_TYPE, headers=_NO_STORE)
