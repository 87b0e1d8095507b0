"""The HTTP and WebSocket API (Starlette). ``create_app(settings)`` is the factory uvicorn runs.

Every route except ``/health`` checks the API key and scopes its queries by the key's tenant;
errors share one JSON shape, mapped from the error tree in :data:`STATUS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import structlog
from arq import ArqRedis, create_pool
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

from videoq import (
    dashboard,
    db,
    events,
    jobs,
    metrics,
    openapi,
    queue,
    ratelimit,
    security,
    webhooks,
)
from videoq.auth import Principal, authenticate, bearer
from videoq.bookkeeping import store_events
from videoq.errors import (
    Conflict,
    Forbidden,
    NotFound,
    NotMigrated,
    Unauthorized,
    VideoqError,
)
from videoq.schemas import JobCreate, field_errors
from videoq.settings import Settings
from videoq.streaming import job_events_socket, tenant_events_socket

log = structlog.get_logger(__name__)

#: Error class → HTTP status; anything else is a 500 with a generic message.
STATUS: dict[type[VideoqError], int] = {
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    NotMigrated: 503,
    ratelimit.RateLimited: 429,
}


@dataclass
class State:
    """What the lifespan opens and every request shares."""

    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[Any]
    redis: ArqRedis
    broadcaster: events.Broadcaster
    #: Webhook deliveries this process started (cancelled jobs); stopped with the app.
    background: list[asyncio.Task[None]] = field(default_factory=list)


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details}}
    return JSONResponse(body, status_code=status, headers=headers)


def state_of(conn: HTTPConnection) -> State:
    st: State = conn.app.state.videoq
    return st


async def principal(conn: HTTPConnection, *, token_in_query: bool = False) -> Principal:
    key = bearer(conn.headers.get("authorization"))
    # Browsers cannot set headers on a WebSocket, nor on a page they navigate to.
    if key is None and (token_in_query or conn.scope["type"] == "websocket"):
        key = conn.query_params.get("token")
    async with state_of(conn).sessions() as session:
        return await authenticate(session, key)


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


async def read_json(request: Request) -> Any:
    limit = state_of(request).settings.max_body_bytes
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"request body over {limit} bytes")
    try:
        return json.loads(body or b"null")
    except (ValueError, RecursionError):
        raise HTTPException(400, "request body is not valid JSON") from None


async def create_job(request: Request) -> Response:
    who = await principal(request)
    st = state_of(request)
    payload = await read_json(request)
    if not isinstance(payload, dict):
        return error_response(
            422, "validation_error", "the body must be a JSON object",
            [{"field": "body", "message": "must be a JSON object", "type": "object_type"}],
        )  # fmt: skip
    try:
        context = {"webhook_allowed_networks": st.settings.webhook_allowed_networks}
        body = JobCreate.model_validate(payload, context=context)
    except ValidationError as exc:
        errors = field_errors(exc)
        names = ", ".join(e["field"] for e in errors)
        return error_response(422, "validation_error", f"invalid fields: {names}", errors)
    key = request.headers.get("idempotency-key")
    if key is not None and not 1 <= len(key) <= 200:
        return error_response(
            422, "validation_error", "Idempotency-Key must be 1-200 characters",
            [{"field": "Idempotency-Key", "message": "must be 1-200 characters"}],
        )  # fmt: skip
    async with st.sessions() as session:
        await ratelimit.admit(st.redis, session, st.settings, who.tenant)
        job, created = await jobs.create_job(
            session, who.tenant, body, default_max_retries=st.settings.max_retries,
            idempotency_key=key, queue=st.settings.queue_name,
        )  # fmt: skip
    if created:
        await queue.announce_created(st.redis, st.settings, job)
    return JSONResponse(jobs.job_view(job, base_url(request)), status_code=202 if created else 200)


async def get_job(request: Request) -> Response:
    who = await principal(request)
    async with state_of(request).sessions() as session:
        job = await jobs.get_job(session, request.path_params["job_id"], who.tenant)
    return JSONResponse(jobs.job_view(job, base_url(request)))


async def list_jobs(request: Request) -> Response:
    who = await principal(request)
    params = request.query_params
    status = params.get("status")
    if status is not None and status not in db.STATUSES:
        return error_response(
            422, "validation_error", f"status must be one of {', '.join(db.STATUSES)}",
            [{"field": "status", "message": "unknown status"}],
        )  # fmt: skip
    try:
        limit = int(params.get("limit", "50"))
        if not 1 <= limit <= 100:
            raise ValueError
    except ValueError:
        return error_response(
            422, "validation_error", "limit must be an integer from 1 to 100",
            [{"field": "limit", "message": "must be an integer from 1 to 100"}],
        )  # fmt: skip
    async with state_of(request).sessions() as session:
        try:
            page, cursor = await jobs.list_jobs(
                session, who.tenant, status=status, limit=limit, cursor=params.get("cursor")
            )
        except ValueError:
            return error_response(
                422, "validation_error", "invalid cursor",
                [{"field": "cursor", "message": "invalid cursor"}],
            )  # fmt: skip
    url = base_url(request)
    return JSONResponse({"data": [jobs.job_view(j, url) for j in page], "next_cursor": cursor})


async def get_video(request: Request) -> Response:
    who = await principal(request)
    st = state_of(request)
    async with st.sessions() as session:
        job = await jobs.get_job(session, request.path_params["job_id"], who.tenant)
    if job.status != "succeeded":
        raise Conflict(f"job {job.id} is {job.status}; the video exists once it has succeeded")
    # The path comes from the job's UUID only, never from anything the caller sent.
    path = st.settings.artifacts / str(uuid.UUID(str(job.id))) / "video.mp4"
    if not path.is_file():
        raise NotFound(f"the video of job {job.id} is no longer stored")
    return FileResponse(path, media_type="video/mp4", filename=f"{job.id}.mp4")


async def _announce(st: State, job: db.Job, message: str) -> None:
    """Publish a status event for a transition the API made (best effort: PostgreSQL holds it)."""
    event = events.make_event(
        str(job.id), "status", status=job.status, stage=job.stage, progress=job.progress,
        worker_id=job.worker_id, message=message,
    )  # fmt: skip
    # The job may have history already: if Redis lost its counter, continue after it.
    await events.publish_best_effort(st.redis, job.tenant, event, restore_from=st.sessions)


async def cancel_job(request: Request) -> Response:
    who = await principal(request)
    st = state_of(request)
    async with st.sessions() as session:
        job, previous = await jobs.cancel(session, request.path_params["job_id"], who.tenant)
    log.info("job_cancel_requested", job_id=str(job.id), previous=previous)
    try:
        # Both, whatever the status was read as: a worker may have claimed it meanwhile.
        await queue.request_cancel(st.redis, str(job.id))
        if previous != "running":
            await queue.remove(st.redis, st.settings, str(job.id))
    except (RedisError, OSError) as exc:
        # The row says cancelled: workers skip it, and a running one stops at its next heartbeat.
        log.warning("cancel_signal_failed", job_id=str(job.id), error=str(exc))
    await _announce(st, job, f"cancelled while {previous}")
    with contextlib.suppress(RedisError, OSError, SQLAlchemyError):
        await events.archive(st.redis, partial(store_events, st.engine), [str(job.id)])
    await webhooks.job_finished(st.sessions, st.settings, job, st.background)
    return JSONResponse(jobs.job_view(job, base_url(request)), status_code=202)


async def retry_job(request: Request) -> Response:
    who = await principal(request)
    st = state_of(request)
    async with st.sessions() as session:
        job = await jobs.retry(session, request.path_params["job_id"], who.tenant)
    log.info("job_retry_requested", job_id=str(job.id))
    await _announce(st, job, "requeued by request")
    try:
        await queue.remove(st.redis, st.settings, str(job.id))  # a stale arq entry blocks enqueue
        await queue.enqueue_job(st.redis, st.settings, job)
    except (RedisError, OSError) as exc:
        log.warning("job_enqueue_deferred", job_id=str(job.id), error=str(exc))
    return JSONResponse(jobs.job_view(job, base_url(request)), status_code=202)


async def admin(request: Request) -> Principal:
    who = await principal(request)
    if not who.is_admin:
        raise Forbidden("this route needs an admin key (videoq keys create --admin)")
    return who


async def list_workers(request: Request) -> Response:
    await admin(request)
    st = state_of(request)
    return JSONResponse({"data": await queue.list_workers(st.redis, st.settings.worker_stale_s)})


async def clear_stale_workers(request: Request) -> Response:
    await admin(request)
    st = state_of(request)
    removed = await queue.clear_stale(st.redis, st.settings.worker_stale_s)
    log.info("stale_workers_cleared", count=len(removed))
    return JSONResponse({"removed": removed})


async def _queue_figures(st: State) -> dict[str, Any]:
    """What ``/v1/queue/stats`` and ``/metrics`` both report: the jobs' counts and ages
    (:func:`videoq.jobs.stats`) and the arq queue's length."""
    async with st.sessions() as session:
        figures = await jobs.stats(session, None)
    figures["queue_length"] = await st.redis.zcard(st.settings.queue_name)
    return figures


async def queue_stats(request: Request) -> Response:
    await admin(request)
    st = state_of(request)
    body = await _queue_figures(st)
    body["workers"] = await queue.count_workers(st.redis, st.settings.worker_stale_s)
    return JSONResponse(body)


async def metrics_text(request: Request) -> Response:
    await admin(request)
    st = state_of(request)
    figures = await _queue_figures(st)
    workers = await queue.list_workers(st.redis, st.settings.worker_stale_s)
    families = metrics.service_families(figures, workers)
    body = metrics.render(request.app.state.metrics, families)
    return Response(body, media_type=metrics.CONTENT_TYPE)


async def dashboard_page(request: Request) -> Response:
    who = await principal(request, token_in_query=True)
    return HTMLResponse(dashboard.render(request.state.csp_nonce, who.tenant))


async def health(request: Request) -> Response:
    st = state_of(request)
    redis_ok = database_ok = False
    queue_length = workers = 0
    try:
        await st.redis.ping()
        redis_ok = True
        queue_length = await st.redis.zcard(st.settings.queue_name)
        workers = await queue.count_workers(st.redis, st.settings.worker_stale_s)
    except Exception as exc:
        log.warning("health_redis_failed", error=str(exc))
    try:
        async with st.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        database_ok = True
    except Exception as exc:
        log.warning("health_database_failed", error=str(exc))
    status = "healthy" if redis_ok and database_ok else "degraded" if database_ok else "unhealthy"
    body = {
        "status": status,
        "redis": redis_ok,
        "database": database_ok,
        "queue_length": queue_length,
        "workers": workers,
    }
    return JSONResponse(body, status_code=503 if status == "unhealthy" else 200)


async def _videoq_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, VideoqError)
    headers = getattr(exc, "headers", None)  # e.g. Retry-After of a 429
    return error_response(STATUS.get(type(exc), 500), exc.code, exc.message, None, headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}
    return error_response(
        exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail), None,
        dict(exc.headers or {}),
    )  # fmt: skip


async def _internal_error(request: Request, exc: Exception) -> Response:
    request_id = security.request_id_of(request.scope) or uuid.uuid4().hex[:12]
    log.error("request_failed", request_id=request_id, path=request.url.path, exc_info=exc)
    return error_response(500, "internal_error", f"internal error (request id {request_id})")


def create_app(settings: Settings) -> Starlette:
    """The API application. Opens the database engine and Redis pool for its lifetime; refuses
    to start on a database that is not migrated."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        assert settings.database_url and settings.redis_url, "database_url and redis_url are needed"
        engine = db.create_engine(settings.database_url)
        try:
            await db.check_migrated(engine)
            redis = await create_pool(
                queue.redis_settings(settings, retries=1), **queue.serializers()
            )
            async with events.Broadcaster(
                redis, queue_size=settings.ws_buffer_events
            ) as broadcaster:
                app.state.videoq = State(
                    settings, engine, db.sessionmaker(engine), redis, broadcaster
                )
                yield
                await webhooks.stop(app.state.videoq.background)
            await redis.aclose()
        finally:
            await engine.dispose()

    handler = Callable[[Request, Exception], Awaitable[Response]]
    handlers: dict[Any, handler] = {
        VideoqError: _videoq_error,
        HTTPException: _http_error,
        Exception: _internal_error,
    }
    routes = [
        Route("/health", health),
        Route("/openapi.json", openapi.route),
        *webhooks.ROUTES,
        Route("/v1/jobs", create_job, methods=["POST"]),
        Route("/v1/jobs", list_jobs, methods=["GET"]),
        Route("/v1/jobs/{job_id}", get_job),
        Route("/v1/jobs/{job_id}/video", get_video),
        Route("/v1/jobs/{job_id}/cancel", cancel_job, methods=["POST"]),
        Route("/v1/jobs/{job_id}/retry", retry_job, methods=["POST"]),
        Route("/v1/workers", list_workers),
        Route("/v1/workers/clear-stale", clear_stale_workers, methods=["POST"]),
        Route("/v1/queue/stats", queue_stats),
        Route("/metrics", metrics_text),
        Route("/dashboard", dashboard_page),
        WebSocketRoute("/v1/jobs/{job_id}/events", job_events_socket),
        WebSocketRoute("/v1/events", tenant_events_socket),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
    security.install(app, settings)
    app.state.metrics = CollectorRegistry()  # this process's own: its requests
    app.add_middleware(metrics.RequestMetrics, registry=app.state.metrics)  # outermost
    return app
