"""arq workers: ``arq videoq.workers.WorkerSettings`` or ``videoq worker``.

state       what one worker process holds
task        the arq task: claim, run the pipeline, record the outcome
worker      VideoqWorker, arq's worker woken by enqueues, taking and ending jobs in groups
progress    the pipeline's events and progress, behind its checkpoints
supervisor  heartbeats, the session lock, death watch, cancel signals, reconciliation
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from typing import Any

import structlog
from arq import func

from videoq import heap, store, tracing
from videoq.broker import BROKER_ERRORS, inbound, keys, limits, queue, registry
from videoq.embedded import resolve
from videoq.logs import configure_logging
from videoq.providers import ProviderPool
from videoq.providers.embeddings import open_embedder
from videoq.settings import Settings
from videoq.workers import supervisor
from videoq.workers.state import WorkerState
from videoq.workers.task import run_job
from videoq.workers.worker import VideoqWorker

__all__ = ["WorkerSettings", "create_worker", "new_event_loop", "worker_options"]

log = structlog.get_logger(__name__)


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    configure_logging(settings)
    ctx["traced"] = tracing.configure(settings, service="videoq-worker")
    assert settings.database_url
    # The jobs' own writes go through the bookkeeper's asyncpg pool (WorkerState.books); this
    # engine serves the rest (take-overs, webhooks, the supervisor), pinged before each use.
    engine = store.create_engine(settings.database_url, pool_size=5, max_overflow=5)
    await store.check_migrated(engine)
    worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    state = WorkerState(settings, engine, store.sessionmaker(engine), ctx["redis"], worker_id)
    await state.artifacts.check()  # a store it cannot use fails the start, not the first job
    state.wake = ctx.get("wake")
    watch = None
    if settings.replicate_webhook_url is not None:
        watch = inbound.PredictionWatcher(ctx["redis"], retry_s=settings.heartbeat_s)
    state.providers = ProviderPool(
        settings, limiters=limits.shared(settings, ctx["redis"]), watch=watch
    )
    state.embedder = open_embedder(settings)
    # Before the first job is claimed: a worker running jobs without its lock looks dead.
    await state.lock.take()
    state.background = supervisor.start(state)
    if watch is not None:
        state.background.append(asyncio.create_task(watch.run(), name="videoq-predictions"))
    ctx["videoq"] = state
    heap.settle(YOUNG_GENERATION)
    log.info("worker_started", worker_id=worker_id, queue=settings.queue_name)


#: A worker's youngest generation, in objects: a job makes a few hundred (figures in
#: docs/decisions.md "Workers").
YOUNG_GENERATION = 10_000


async def shutdown(ctx: dict[str, Any]) -> None:
    state: WorkerState | None = ctx.get("videoq")
    if state is None:
        return
    if state.wrapping_up:
        await asyncio.wait(state.wrapping_up, timeout=state.settings.shutdown_grace_s)
    for task in state.background:
        task.cancel()
    await asyncio.gather(*state.background, return_exceptions=True)
    with contextlib.suppress(*BROKER_ERRORS):
        await supervisor.send_estimates(state)  # what was measured since the last heartbeat
    with contextlib.suppress(*BROKER_ERRORS):
        await registry.forget_worker(state.redis, state.worker_id)
    if state.providers is not None:
        await state.providers.aclose()
    if state.embedder is not None:
        await state.embedder.aclose()
    await state.publish.aclose()  # before the books: what it published is archived there
    await state.books.aclose()
    await state.lock.aclose()  # last: what is still running now is handed to others at once
    await state.engine.dispose()
    if ctx.get("traced"):
        tracing.shutdown()
    log.info("worker_shutdown_complete", worker_id=state.worker_id)


def worker_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for :class:`arq.worker.Worker`, from settings."""
    # Our own retry accounting lives in PostgreSQL; arq's limits must never fire first.
    arq_timeout = queue.arq_timeout_s(settings)
    return {
        "functions": [func(run_job, name=keys.TASK, max_tries=1000, timeout=arq_timeout)],
        "redis_settings": queue.redis_settings(settings),
        "queue_name": settings.queue_name,
        "max_jobs": settings.max_jobs,
        "poll_delay": settings.poll_delay_s,
        "job_timeout": arq_timeout,
        "keep_result": 0,
        "max_tries": 1000,
        "retry_jobs": True,
        # Cancellation is ours (a pub/sub signal); arq's abort would add a Redis round trip
        # to every poll.
        "allow_abort_jobs": False,
        "job_completion_wait": settings.shutdown_grace_s,
        # arq's health key (`arq --check`), shared by every worker of the queue: renewed this
        # often, it outlives no worker by long, and comes back this soon after another
        # worker's shutdown deletes it (docs/deploy.md, "Health").
        "health_check_interval": settings.worker_stale_s,
        "ctx": {"settings": settings},
        "on_startup": startup,
        "on_shutdown": shutdown,
        **queue.serializers(),
    }


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The event loop ``videoq worker`` runs on: uvloop's where it is installed (a dependency
    everywhere but Windows), else asyncio's. A worker's CPU goes to the loop's own machinery
    (callbacks, timers, sockets) as much as to its jobs, and uvloop's costs less (figures in
    docs/decisions.md "Workers")."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def create_worker(settings: Settings, **overrides: Any) -> VideoqWorker:
    """The worker ``videoq worker`` runs."""
    return VideoqWorker(**{**worker_options(settings), **overrides})


class _LazyWorkerSettings(dict[str, Any]):
    """arq reads a settings mapping through ``.items()`` when it builds the worker, so the
    settings are read then, at start-up, not when this module is imported."""

    def items(self) -> Any:
        settings = resolve(Settings())
        if not (settings.database_url and settings.redis_url):
            raise SystemExit(
                "videoq worker: set VIDEOQ_DATABASE_URL and VIDEOQ_REDIS_URL, "
                "or run `videoq dev` in this directory first"
            )
        return worker_options(settings).items()


WorkerSettings = _LazyWorkerSettings()
