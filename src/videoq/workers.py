"""arq workers: ``arq videoq.workers.WorkerSettings`` or ``videoq worker``.

The task is thin: it takes a job id, claims the job in PostgreSQL, runs the pipeline with
checkpoints and progress events, and records the outcome. Errors become retry-or-fail here and
only here (:func:`_settle`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import socket
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from arq import ArqRedis, Retry, func
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from videoq import db, events, jobs, queue
from videoq.embedded import resolve
from videoq.errors import JobCancelled, RetryableError, VideoqError
from videoq.logging import configure_logging
from videoq.pipeline import Brief, run_pipeline
from videoq.settings import Settings

log = structlog.get_logger(__name__)

HEARTBEAT_S = 5.0
RECONCILE_S = 10.0


@dataclass
class WorkerState:
    """What one worker process opens at startup and every job shares."""

    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[Any]
    redis: ArqRedis
    worker_id: str
    background: list[asyncio.Task[None]] = field(default_factory=list)


class EventReporter:
    """The pipeline's :class:`~videoq.pipeline.Reporter` for one attempt: publishes ``stage`` and
    ``progress`` events (never backwards) and keeps the job row's stage and progress current."""

    def __init__(self, state: WorkerState, job: db.Job) -> None:
        self.state = state
        self.job_id = job.id
        self.tenant = job.tenant
        self.attempt = job.attempts
        self.stage: str | None = None
        self.progress = 0.0
        self.stored_progress = -1.0

    async def emit(self, type_: str, status: str, message: str | None = None) -> None:
        event = events.make_event(
            str(self.job_id), type_, status=status, stage=self.stage, progress=self.progress,
            worker_id=self.state.worker_id, message=message,
        )  # fmt: skip
        try:
            await events.publish(self.state.redis, self.tenant, event)
        except (RedisError, OSError) as exc:  # progress is best effort; PostgreSQL has the state
            log.warning("event_publish_failed", error=str(exc))

    async def __call__(self, stage: str, progress: float, message: str | None = None) -> None:
        progress = min(100.0, max(self.progress, progress))
        if stage != self.stage:
            self.stage, self.progress = stage, progress
            structlog.contextvars.bind_contextvars(stage=stage)
            await self._store()
            await self.emit("stage", "running", message or f"{stage} started")
            log.info("stage_started")
            return
        if progress - self.progress < 0.5 and message is None:
            return  # sub-percent steps are noise for every client
        self.progress = progress
        if progress - self.stored_progress >= 5.0:
            await self._store()
        await self.emit("progress", "running", message)

    async def _store(self) -> None:
        async with self.state.sessions() as session:
            await jobs.record_progress(
                session, self.job_id, self.attempt, self.stage or "", self.progress
            )
        self.stored_progress = self.progress


async def run_job(ctx: dict[str, Any], job_id: str) -> None:
    """The arq task: run one videoq job by id."""
    state: WorkerState = ctx["videoq"]
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(job_id=job_id, worker_id=state.worker_id)
    await execute(state, uuid.UUID(job_id))


async def _claim(state: WorkerState, job_id: uuid.UUID) -> db.Job | None:
    async with state.sessions() as session:
        job = await jobs.start_attempt(session, job_id, state.worker_id)
        if job is not None:
            return job
        current = await session.get(db.Job, job_id)
        if current is None or current.status != "running":
            return None
        # Running under a worker that stopped heartbeating (killed): take it over.
        alive = await state.redis.zscore(queue.WORKERS_KEY, current.worker_id or "")
        if alive is not None and alive > datetime.now(UTC).timestamp() - queue.WORKER_STALE_S:
            return None
        job = await jobs.take_over(
            session, job_id, current.attempts, current.worker_id, state.worker_id
        )
        if job is not None:
            log.warning("job_taken_over", dead_worker=current.worker_id)
        return job


async def execute(state: WorkerState, job_id: uuid.UUID) -> None:
    """Claim the job and run it to an outcome recorded in PostgreSQL."""
    job = await _claim(state, job_id)
    if job is None:
        log.info("job_skipped", reason="not runnable")
        return
    structlog.contextvars.bind_contextvars(attempt=job.attempts)
    reporter = EventReporter(state, job)
    await reporter.emit("status", "running", f"attempt {job.attempts} started")
    log.info("job_started")
    settings = state.settings.for_job(job.options)
    workdir = settings.artifacts / str(job.id)
    try:
        async with asyncio.timeout(settings.job_timeout_s):
            result = await run_pipeline(
                Brief(**job.brief),
                settings=settings,
                workdir=workdir,
                checkpoints=jobs.DbCheckpoints(state.sessions, job.id, job.attempts),
                report=reporter,
            )
    except asyncio.CancelledError:
        # arq cancels on shutdown and requeues the job; hand it back in PostgreSQL too.
        await _finish(state, reporter, "queued", "worker stopped; job requeued", worker_id=None)
        raise
    except Exception as exc:
        await _settle(state, job, reporter, exc)
        return
    for child in workdir.iterdir():  # keep the video, drop the intermediates
        if child.name != result.video_path.name:
            shutil.rmtree(child) if child.is_dir() else child.unlink(missing_ok=True)
    reporter.progress = 100.0
    await _finish(
        state, reporter, "succeeded", "video ready",
        progress=100.0, finished_at=datetime.now(UTC),
        result={"duration_s": result.duration_s, "size_bytes": result.size_bytes, **result.cost},
    )  # fmt: skip
    log.info("job_succeeded", duration_s=result.duration_s, size_bytes=result.size_bytes)


async def _finish(
    state: WorkerState, reporter: EventReporter, status: str, message: str, **values: Any
) -> bool:
    async with state.sessions() as session:
        job = await jobs.transition(
            session, reporter.job_id, status, attempt=reporter.attempt, **values
        )
    if job is None:
        log.warning("job_transition_refused", to=status)
        return False
    await reporter.emit("status", status, message)
    return True


def _error(exc: Exception) -> dict[str, Any]:
    if isinstance(exc, VideoqError):
        retryable = isinstance(exc, RetryableError)
        return {"code": exc.code, "message": exc.message[:2000], "retryable": retryable}
    if isinstance(exc, TimeoutError):
        return {
            "code": "job_timeout",
            "message": "the job ran past its timeout",
            "retryable": False,
        }
    if isinstance(exc, SQLAlchemyError | RedisError | OSError):
        return {"code": "infrastructure_error", "message": type(exc).__name__, "retryable": True}
    return {"code": "internal_error", "message": "unexpected worker error", "retryable": False}


async def _settle(state: WorkerState, job: db.Job, reporter: EventReporter, exc: Exception) -> None:
    """Map a failed attempt to ``retrying`` (raising arq's Retry) or ``failed``."""
    error = _error(exc)
    if isinstance(exc, JobCancelled):
        await _finish(state, reporter, "cancelled", "cancelled", finished_at=datetime.now(UTC))
        return
    if error["code"] == "internal_error":
        log.error("job_crashed", exc_info=exc)
    if error["retryable"] and job.attempts <= job.max_retries:
        delays = state.settings.retry_delays_s
        delay = delays[min(job.attempts - 1, len(delays) - 1)] * random.uniform(0.8, 1.2)
        hint = getattr(exc, "retry_after_s", None)
        delay = max(delay, hint or 0.0)
        if await _finish(state, reporter, "retrying", f"retrying in {delay:.1f}s", error=error):
            log.warning("job_retry_scheduled", delay_s=round(delay, 2), error=error["code"])
            raise Retry(defer=delay) from exc
        return
    await _finish(
        state, reporter, "failed", error["message"], error=error, finished_at=datetime.now(UTC)
    )
    log.warning("job_failed", error=error["code"], message=error["message"])


async def _heartbeat(state: WorkerState) -> None:
    while True:
        with contextlib.suppress(RedisError, OSError):
            await queue.heartbeat(state.redis, state.worker_id)
        await asyncio.sleep(HEARTBEAT_S)


async def _reconcile(state: WorkerState) -> None:
    """Enqueue jobs PostgreSQL says are waiting but Redis does not know (Redis was down when
    they were created, or restarted empty). arq dedupes by job id, so this is idempotent."""
    while True:
        try:
            async with state.sessions() as session:
                rows = (
                    await session.execute(
                        select(db.Job.id, db.Job.run_at)
                        .where(db.Job.status.in_(("queued", "scheduled")))
                        .order_by(db.Job.created_at)
                        .limit(1000)
                    )
                ).all()
            for job_id, run_at in rows:
                if await queue.enqueue(state.redis, state.settings, str(job_id), run_at=run_at):
                    log.info("job_reenqueued", job_id=str(job_id))
        except (SQLAlchemyError, RedisError, OSError) as exc:
            log.warning("reconcile_failed", error=str(exc))
        await asyncio.sleep(RECONCILE_S)


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    configure_logging(settings)
    assert settings.database_url
    engine = db.create_engine(settings.database_url)
    await db.check_migrated(engine)
    worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    state = WorkerState(settings, engine, db.sessionmaker(engine), ctx["redis"], worker_id)
    state.background = [
        asyncio.create_task(_heartbeat(state), name="heartbeat"),
        asyncio.create_task(_reconcile(state), name="reconcile"),
    ]
    ctx["videoq"] = state
    log.info("worker_started", worker_id=worker_id, queue=settings.queue_name)


async def shutdown(ctx: dict[str, Any]) -> None:
    state: WorkerState | None = ctx.get("videoq")
    if state is None:
        return
    for task in state.background:
        task.cancel()
    await asyncio.gather(*state.background, return_exceptions=True)
    with contextlib.suppress(RedisError, OSError):
        await queue.forget_worker(state.redis, state.worker_id)
    await state.engine.dispose()
    log.info("worker_shutdown_complete", worker_id=state.worker_id)


def worker_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for :class:`arq.worker.Worker`, from settings."""
    # Our own retry accounting lives in PostgreSQL; arq's limits must never fire first.
    arq_timeout = settings.job_timeout_s + 60
    return {
        "functions": [func(run_job, name=queue.TASK, max_tries=1000, timeout=arq_timeout)],
        "redis_settings": queue.redis_settings(settings),
        "queue_name": settings.queue_name,
        "max_jobs": settings.max_jobs,
        "poll_delay": settings.poll_delay_s,
        "job_timeout": arq_timeout,
        "keep_result": 0,
        "max_tries": 1000,
        "retry_jobs": True,
        "allow_abort_jobs": True,
        "ctx": {"settings": settings},
        "on_startup": startup,
        "on_shutdown": shutdown,
        **queue.serializers(),
    }


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
