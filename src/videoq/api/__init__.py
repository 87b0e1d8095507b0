"""The HTTP and WebSocket API (Starlette): the only package that imports Starlette.
``create_app(settings)`` is the factory uvicorn runs.

    deps        the process's state, the caller (API key), request bodies
    errors      one error shape, the error tree's statuses
    jobs        the job routes
    scenes      a job's scenes, thumbnails and poster
    events      the WebSockets: one job's events, a tenant's
    webhooks    inbound webhooks (GitHub, Replicate) and the tenant's signing secret
    tenants     a tenant's fair share of the workers (admins set it)
    spend       estimates and a tenant's usage
    feed        end users' interactions, their feeds and preferences
    keys        API keys, managed by admins
    schedules   recurring jobs: a job's body, a cron expression and a time zone
    ops         workers, queue stats, /metrics, /health
    dashboard   the operator console: its page, static files, the events' JSON Schema
    session     the console's sign-in: an API key for a session cookie
    middleware  request ids, security headers, CORS, body limits
    metrics     Prometheus figures; openapi: /openapi.json

Every route except ``/health`` checks the API key and scopes its queries by the key's tenant.
While PostgreSQL is unavailable every route that needs it answers 503 ``database_unavailable``
with ``Retry-After`` (:mod:`videoq.api.errors`); ``/health`` answers 503 ``unhealthy``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Route, WebSocketRoute

from videoq import broker, outbox, store, tracing
from videoq.api import (
    dashboard,
    errors,
    events,
    feed,
    jobs,
    keys,
    metrics,
    middleware,
    openapi,
    ops,
    scenes,
    schedules,
    session,
    spend,
    tenants,
    webhooks,
)
from videoq.api.deps import State
from videoq.artifacts import open_store
from videoq.broker.fanout import Broadcaster
from videoq.errors import VideoqError
from videoq.settings import Settings

__all__ = ["create_app"]


def create_app(settings: Settings) -> Starlette:
    """The API application. Opens the database engine and Redis pool for its lifetime; refuses
    to start on a database that is not migrated."""
    traced = tracing.configure(settings, service="videoq-api")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        assert settings.database_url and settings.redis_url, "database_url and redis_url are needed"
        artifacts = open_store(settings)
        await artifacts.check()  # a store it cannot use fails the start, naming the setting
        engine = store.create_engine(settings.database_url)
        try:
            await store.check_migrated(engine)
            # Few retries: the API answers (degraded) at once while Redis is away.
            redis = await broker.connect(settings, retries=1)
            async with Broadcaster(redis, queue_size=settings.ws_buffer_events) as broadcaster:
                app.state.videoq = State(
                    settings, engine, store.sessionmaker(engine), redis, broadcaster, artifacts
                )
                yield
                await outbox.stop(app.state.videoq.background)
                await app.state.videoq.intake.aclose()
            await redis.aclose()
        finally:
            await engine.dispose()
            if traced:
                tracing.shutdown()

    # Keyed by class; videoq_error and database_error answer WebSockets too (by closing them).
    handlers: dict[Any, Any] = {
        VideoqError: errors.videoq_error,
        HTTPException: errors.http_error,
        ClientDisconnect: errors.client_gone,
        **dict.fromkeys(store.OUTAGE_SOURCES, errors.database_error),
        Exception: errors.internal_error,
    }
    routes = [
        # The router tries routes in order: the interaction intake, the hot path, first.
        *feed.ROUTES,
        Route("/openapi.json", openapi.route),
        *webhooks.ROUTES,
        *jobs.ROUTES,
        *scenes.ROUTES,
        *tenants.ROUTES,
        *spend.ROUTES,
        *keys.ROUTES,
        *schedules.ROUTES,
        *ops.ROUTES,
        *session.ROUTES,
        *dashboard.ROUTES,
        WebSocketRoute("/v1/jobs/{job_id}/events", events.job_events_socket),
        WebSocketRoute("/v1/events", events.tenant_events_socket),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
    middleware.install(app, settings)
    app.state.metrics = CollectorRegistry()  # this process's own: its requests
    app.add_middleware(metrics.RequestMetrics, registry=app.state.metrics)  # outermost
    return app
