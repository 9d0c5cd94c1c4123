"""The ASGI app: a thin HTTP layer over a sans-I/O :class:`~contactmatch.service.DiscoveryServer`.

:func:`create_app` mounts the route table of :mod:`contactmatch.server.routes`: each entry
becomes one Starlette route whose wrapper (:mod:`contactmatch.server.routing`) authenticates
through the injected :data:`~contactmatch.server.auth.Authenticator`, reads the body under a
size cap and validates it before the handler runs. Errors are JSON
``{"error": {"code", "message"}}`` with the stable codes of :mod:`contactmatch.server._codes`.
The OpenAPI document is generated from the entries actually mounted, so it cannot list a
route the app does not serve, nor miss one. Every app has its own metrics
(:mod:`contactmatch.server.metrics`), fed by the route wrapper and the service's observer hook,
and serves ``/healthz``, ``/readyz`` and ``/metrics`` (:mod:`contactmatch.server.health`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from contactmatch.errors import InvalidInput
from contactmatch.server.auth import Authenticator, NumberVerifier
from contactmatch.server.metrics import Metrics
from contactmatch.server.openapi import openapi_document
from contactmatch.server.routes import ENDPOINTS, PATH_PARAMETERS
from contactmatch.server.routing import MAX_JSON_BODY, Context, asgi_endpoint
from contactmatch.service import DiscoveryServer

__all__ = ["DEFAULT_MAX_BODY", "ENDPOINTS", "MAX_JSON_BODY", "create_app"]

DEFAULT_MAX_BODY = 4 * 1024 * 1024

logger = logging.getLogger("contactmatch.server")


async def _http_error(_request: Request, exc: Exception) -> Response:
    """Router errors (unknown path, wrong method) in the same JSON shape as ours."""
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse(
        {"error": {"code": code, "message": str(exc.detail)}},
        status_code=exc.status_code,
        headers=exc.headers,
    )


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
    metrics_auth: Authenticator | None = None,
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
        metrics_auth: authenticates scrapers of ``/metrics`` (e.g. :class:`StaticToken`);
            without it the endpoint is open, like ``/healthz``: it holds aggregates only,
            but a deployment that exposes the port publicly should protect it.

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
    endpoints = [
        dataclasses.replace(ep, auth="metrics")
        if ep.name == "metrics" and metrics_auth is not None
        else ep
        for ep in ENDPOINTS
        if numbers or not ep.claims_number
    ]
    metrics = Metrics(server)
    server.observer = metrics.observe_discovery
    ctx = Context(
        server=server,
        authenticate=authenticate,
        admin=admin,
        verify_number=verify_number,
        max_body=max_body,
        openapi=openapi_document(endpoints, PATH_PARAMETERS),
        metrics=metrics,
        metrics_auth=metrics_auth,
    )
    routes = [Route(ep.path, asgi_endpoint(ep, ctx), methods=[ep.method]) for ep in endpoints]

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
            try:
                await run_in_threadpool(server.flush_stats)
            except Exception as exc:  # shutting down: log, never mask the shutdown
                logger.error("final statistics flush failed: %s", type(exc).__name__)  # noqa: TRY400
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
