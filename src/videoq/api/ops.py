"""Operations: workers, queue statistics, ``/metrics`` (admin keys) and ``/health`` (no key)."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from videoq import eta, store
from videoq.api import metrics
from videoq.api.deps import State, admin, state_of
from videoq.broker import estimates, queue, registry
from videoq.store import feed, jobs, spend

log = structlog.get_logger(__name__)

#: ``/health`` waits this long for PostgreSQL: a database that hangs rather than refuses must
#: not make the probe itself time out (an API that answers is alive; see deploy/k8s/api.yaml).
HEALTH_DATABASE_TIMEOUT_S = 2.0


async def list_workers(request: Request) -> Response:
    await admin(request)
    st = state_of(request)
    return JSONResponse({"data": await registry.list_workers(st.redis, st.settings.worker_stale_s)})


async def clear_stale_workers(request: Request) -> Response:
    await admin(request)
    st = state_of(request)
    removed = await registry.clear_stale(st.redis, st.settings.worker_stale_s)
    log.info("stale_workers_cleared", count=len(removed))
    return JSONResponse({"removed": removed})


async def _queue_figures(st: State) -> dict[str, Any]:
    """What ``/v1/queue/stats`` and ``/metrics`` both report: the jobs' counts and ages
    (:func:`videoq.store.jobs.stats`) and the arq queue's length."""
    async with st.sessions() as session:
        figures = await jobs.stats(session, None)
    figures["queue_length"] = await queue.length(st.redis, st.settings.queue_name)
    return figures


async def queue_stats(request: Request) -> Response:
    await admin(request)
    st = state_of(request)
    body = await _queue_figures(st)
    body["workers"] = await registry.count_workers(st.redis, st.settings.worker_stale_s)
    async with st.sessions() as session:
        body["feed"] = await feed.figures(session, st.settings.preference_update_threshold)
    return JSONResponse(body)


async def metrics_text(request: Request) -> Response:
    await admin(request)
    st = state_of(request)
    figures = await _queue_figures(st)
    workers = await registry.list_workers(st.redis, st.settings.worker_stale_s)
    families = metrics.service_families(figures, workers)
    errors = await estimates.errors(st.redis, st.settings.queue_name)
    families.append(metrics.eta_error_family(errors, eta.ERROR_BUCKETS))
    async with st.sessions() as session:
        families.append(metrics.spend_family(await spend.totals(session)))
    body = metrics.render(request.app.state.metrics, families)
    return Response(body, media_type=metrics.CONTENT_TYPE)


async def health(request: Request) -> Response:
    st = state_of(request)
    redis_ok = database_ok = False
    queue_length = workers = 0
    try:
        await st.redis.ping()
        redis_ok = True
        queue_length = await queue.length(st.redis, st.settings.queue_name)
        workers = await registry.count_workers(st.redis, st.settings.worker_stale_s)
    except Exception as exc:
        log.warning("health_redis_failed", error=str(exc))
    try:
        async with asyncio.timeout(HEALTH_DATABASE_TIMEOUT_S):
            await store.ping(st.engine)
        database_ok = True
    except Exception as exc:
        log.warning("health_database_failed", error=str(exc))
    # Degraded: jobs are taken (PostgreSQL is the record) but not run, for Redis is down or no
    # worker has heartbeated within worker_stale_s.
    healthy = redis_ok and database_ok and workers > 0
    status = "healthy" if healthy else "degraded" if database_ok else "unhealthy"
    body = {
        "status": status,
        "redis": redis_ok,
        "database": database_ok,
        "queue_length": queue_length,
        "workers": workers,
    }
    return JSONResponse(body, status_code=503 if status == "unhealthy" else 200)


ROUTES = [
    Route("/health", health),
    Route("/v1/workers", list_workers),
    Route("/v1/workers/clear-stale", clear_stale_workers, methods=["POST"]),
    Route("/v1/queue/stats", queue_stats),
    Route("/metrics", metrics_text),
]
