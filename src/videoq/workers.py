"""arq workers: ``arq videoq.workers.WorkerSettings`` or ``videoq worker``.

The task is thin: it takes a job id, claims the job in PostgreSQL, runs the pipeline with
checkpoints and progress events, and records the outcome. Errors become retry-or-fail here and
only here (:func:`_settle`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import os
import random
import shutil
import socket
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from arq import ArqRedis, Retry, func
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from videoq import db, events, jobs, queue, supervisor, webhooks
from videoq.batching import GroupCommit
from videoq.bookkeeping import LINGER_S, Bookkeeper, DbCheckpoints, Outcome
from videoq.embedded import resolve
from videoq.errors import AttemptSuperseded, RetryableError, VideoqError
from videoq.logging import configure_logging
from videoq.pickup import VideoqWorker
from videoq.pipeline import Brief, Result
from videoq.providers import ProviderPool
from videoq.reporting import EventReporter
from videoq.settings import Settings

log = structlog.get_logger(__name__)


@dataclass
class RunningJob:
    """An attempt running in this process. ``stop_reason`` is set before its task is cancelled
    on purpose (``cancelled`` by a user, ``lease_lost`` to another worker)."""

    task: asyncio.Task[Any]
    attempt: int
    stop_reason: str | None = None


@dataclass
class WorkerState:
    """What one worker process opens at startup and every job shares."""

    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[Any]
    redis: ArqRedis
    worker_id: str
    started_at: float = field(default_factory=time.time)
    running: dict[uuid.UUID, RunningJob] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    background: list[asyncio.Task[None]] = field(default_factory=list)
    #: What finished attempts still do after their job's task ends (recording a success,
    #: archiving its events); waited for at shutdown.
    wrapping_up: set[asyncio.Task[None]] = field(default_factory=set)
    #: Set to make the worker poll now (VideoqWorker); None under the plain arq CLI.
    wake: asyncio.Event | None = None
    #: Set once the worker listens for cancel signals and wake-ups.
    listening: asyncio.Event = field(default_factory=asyncio.Event)
    #: Live provider clients, opened once per process and shared by its jobs.
    providers: ProviderPool | None = None
    #: The worker's grouped writes to PostgreSQL (claims, checkpoints, progress, events).
    books: Bookkeeper = field(init=False)
    #: The worker's grouped event publishing.
    publish: events.Publisher = field(init=False)
    #: Finished attempts' events, copied to PostgreSQL together (job ids).
    archive: GroupCommit[str, None] = field(init=False)

    def __post_init__(self) -> None:
        self.books = Bookkeeper(self.settings.database_url or "", self.worker_id)
        self.publish = events.Publisher(self.redis)
        self.archive = GroupCommit(self._archive_batch, linger_s=LINGER_S)

    async def _archive_batch(self, job_ids: list[str]) -> list[None]:
        await events.archive(self.redis, self.books.store_events, job_ids)
        return [None] * len(job_ids)

    def wrap_up(self, work: Awaitable[None]) -> asyncio.Future[None]:
        task = asyncio.ensure_future(work)
        self.wrapping_up.add(task)
        task.add_done_callback(self.wrapping_up.discard)
        return task

    def stop(self, job_id: uuid.UUID, reason: str, attempt: int | None = None) -> bool:
        """Cancel a running attempt on purpose (only ``attempt``, when given); False if it does
        not run here."""
        running = self.running.get(job_id)
        if running is None or running.stop_reason is not None:
            return False
        if attempt is not None and running.attempt != attempt:
            return False
        running.stop_reason = reason
        running.task.cancel()
        return True


async def run_job(ctx: dict[str, Any], job_id: str) -> asyncio.Future[None] | None:
    """The arq task: run one videoq job by id. A job that succeeded returns the writing of its
    outcome, still in flight, to a worker that ends jobs behind their records
    (``ctx["write_behind"]``, :class:`~videoq.pickup.VideoqWorker`): its slot frees for the next
    job meanwhile. arq's own worker ends a job as its task returns, so there it is awaited."""
    state: WorkerState = ctx["videoq"]
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(job_id=job_id, worker_id=state.worker_id)
    try:
        behind = await execute(state, uuid.UUID(job_id))
        if behind is not None and not ctx.get("write_behind"):
            # Shielded: arq cancelling the task (its shutdown) must not cut the outcome short;
            # the worker's shutdown waits for it (WorkerState.wrapping_up).
            await asyncio.shield(behind)
            return None
    except db.DATABASE_ERRORS as exc:
        raise _deferred(state, exc) from exc
    return behind


def _deferred(state: WorkerState, exc: BaseException) -> Retry:
    """PostgreSQL is unreachable: nothing could be recorded, so arq tries again later."""
    delay = state.settings.retry_delays_s[-1]
    log.warning("job_deferred_database_unavailable", error=str(exc), delay_s=delay)
    return Retry(defer=delay)


async def _claim(state: WorkerState, job_id: uuid.UUID) -> db.Job | None:
    job = await state.books.claim(job_id)
    if job is not None:
        return job
    async with state.sessions() as session:
        current = await session.get(db.Job, job_id)
        if current is None or current.status != "running":
            return None
        # Running, but its worker stopped heartbeating (killed): take it over if that is so.
        job = await jobs.take_over(
            session, job_id, current.attempts, current.worker_id, state.worker_id,
            state.settings.worker_stale_s,
        )  # fmt: skip
        if job is not None:
            log.warning("job_taken_over", dead_worker=current.worker_id)
        return job


def _pipeline(settings: Settings) -> Callable[..., Awaitable[Result]]:
    module, _, name = settings.pipeline.partition(":")
    fn: Callable[..., Awaitable[Result]] = getattr(importlib.import_module(module), name)
    return fn


async def execute(state: WorkerState, job_id: uuid.UUID) -> asyncio.Future[None] | None:
    """Claim the job and run it to an outcome recorded in PostgreSQL: recorded on return, or,
    when it succeeded, being recorded by the future returned."""
    job = await _claim(state, job_id)
    if job is None:
        log.info("job_skipped", reason="not runnable")
        return None
    task = asyncio.current_task()
    assert task is not None
    running = RunningJob(task, job.attempts)
    structlog.contextvars.bind_contextvars(attempt=job.attempts)
    checkpoints = DbCheckpoints(state.books, job.id, job.attempts)
    reporter = EventReporter(state, job, checkpoints)
    settings = state.settings.for_job(job.options)
    workdir = settings.artifacts / str(job.id)
    try:
        state.running[job.id] = running
        try:
            if job.attempts > 1 or job.history:  # Redis may have lost the counter since
                with contextlib.suppress(RedisError, SQLAlchemyError, OSError):
                    await events.restore_seq(state.redis, state.sessions, str(job.id))
            reporter.emit("status", "running", f"attempt {job.attempts} started")
            log.info("job_started")
            async with asyncio.timeout(settings.job_timeout_s):
                result = await _pipeline(settings)(
                    Brief(**job.brief),
                    settings=settings,
                    workdir=workdir,
                    checkpoints=checkpoints,
                    report=reporter,
                    providers=state.providers,
                )
        finally:
            # Before any outcome is recorded: from here on nothing may cancel this attempt.
            state.running.pop(job.id, None)
    except asyncio.CancelledError:
        if running.stop_reason is None:
            # arq cancels on shutdown and requeues the job; hand it back in PostgreSQL too.
            await _finish(state, reporter, job, "queued", "worker stopped; job requeued")
            raise
        task.uncancel()  # stopped on purpose: this attempt ends here, normally
        if running.stop_reason == "cancelled":
            # Lease lost: the new owner may be writing in the same directory; leave it be.
            _remove_partial_files(workdir)
        log.info("job_stopped", reason=running.stop_reason)
        return None
    except AttemptSuperseded:
        # Cancelled or taken over before the signal arrived: the new state is not ours to touch.
        log.info("job_stopped", reason="superseded")
        return None
    except Exception as exc:
        await _settle(state, job, reporter, exc)
        return None
    reporter.progress = 100.0
    return state.wrap_up(_succeeded(state, reporter, job, result, workdir))


async def _succeeded(
    state: WorkerState, reporter: EventReporter, job: db.Job, result: Result, workdir: Path
) -> None:
    """What is left of a job whose pipeline finished: its checkpoints landed, its outcome, then
    only its video kept."""
    try:
        await reporter.checkpoints.landed()
    except AttemptSuperseded:
        # Cancelled or taken over before the signal arrived: the new state is not ours to touch.
        log.info("job_stopped", reason="superseded")
        return
    except db.DATABASE_ERRORS:
        pass  # the outcome's own write finds out whether PostgreSQL is back
    try:
        succeeded = await _finish(
            state, reporter, job, "succeeded", "video ready",
            progress=100.0,
            result={"duration_s": result.duration_s, "size_bytes": result.size_bytes,
                    **result.cost},
        )  # fmt: skip
    except db.DATABASE_ERRORS as exc:
        raise _deferred(state, exc) from exc
    if not succeeded:
        return  # cancelled or taken over meanwhile: its artifacts are not ours to clean
    _keep_only(workdir, result.video_path.name)
    state.counts["succeeded"] += 1
    log.info("job_succeeded", duration_s=result.duration_s, size_bytes=result.size_bytes)


def _keep_only(workdir: Path, video: str) -> None:
    """A finished job's work directory keeps only its video."""
    for child in workdir.iterdir() if workdir.is_dir() else ():
        if child.name != video:
            shutil.rmtree(child) if child.is_dir() else child.unlink(missing_ok=True)


def _remove_partial_files(workdir: Path) -> None:
    """Temporary outputs of interrupted steps; completed (checkpointed) artifacts stay, so a
    retried job resumes without paying again."""
    if workdir.is_dir():
        for partial in workdir.rglob(".*.tmp*"):
            partial.unlink(missing_ok=True)


async def _finish(
    state: WorkerState,
    reporter: EventReporter,
    job: db.Job,
    status: str,
    message: str,
    *,
    error: dict[str, Any] | None = None,
    progress: float | None = None,
    result: dict[str, Any] | None = None,
    run_at: datetime | None = None,
) -> bool:
    """End the attempt in PostgreSQL (guarded: still running, still this attempt, still this
    worker's, so a job cancelled meanwhile is never revived), then emit the status event and
    start the webhook. Shielded: an outcome being written is followed by its event, archive
    and webhook even if the job's task is cancelled meanwhile (arq's shutdown)."""
    record = jobs.attempt_record(job, {"queued": "requeued"}.get(status, status), error)
    outcome = Outcome(
        job.id, job.attempts, status, record, stage=reporter.stage,
        progress=reporter.progress if progress is None else progress,
        result=result, error=error, run_at=run_at,
    )  # fmt: skip
    return await asyncio.shield(_record(state, reporter, outcome, message))


async def _record(
    state: WorkerState, reporter: EventReporter, outcome: Outcome, message: str
) -> bool:
    # Checkpoints still in flight land first (or are refused): once the outcome is written,
    # the guard would refuse them, and the next attempt would redo their stages. (Here, in
    # the shielded part: a shutdown's cancel must not skip the outcome.)
    with contextlib.suppress(AttemptSuperseded, *db.DATABASE_ERRORS):
        await reporter.checkpoints.landed()
    updated = await state.books.finish(outcome)
    if updated is None:
        log.warning("job_transition_refused", to=outcome.status)
        return False
    reporter.status = outcome.status
    state.wrap_up(_archive(state, outcome.job_id, reporter.emit("status", outcome.status, message)))
    await webhooks.job_finished(state.sessions, state.settings, updated, state.background)
    return True


async def _archive(state: WorkerState, job_id: uuid.UUID, last: Awaitable[Any]) -> None:
    """Once the attempt's last event is out, keep its events in PostgreSQL beyond Redis's
    stream. Off the job's path: nothing waits for it but shutdown."""
    await last
    try:
        await state.archive(str(job_id))
    except (RedisError, *db.DATABASE_ERRORS) as exc:
        log.warning("events_archive_failed", job_id=str(job_id), error=str(exc))


def _error(exc: Exception) -> dict[str, Any]:
    if isinstance(exc, VideoqError):
        retryable = isinstance(exc, RetryableError)
        return {"code": exc.code, "message": exc.message[:2000], "retryable": retryable}
    if isinstance(exc, TimeoutError):
        message = "the job ran past its timeout"
        return {"code": "job_timeout", "message": message, "retryable": False}
    if isinstance(exc, (RedisError, *db.DATABASE_ERRORS)):
        return {"code": "infrastructure_error", "message": type(exc).__name__, "retryable": True}
    return {"code": "internal_error", "message": "unexpected worker error", "retryable": False}


async def _settle(state: WorkerState, job: db.Job, reporter: EventReporter, exc: Exception) -> None:
    """Map a failed attempt to ``retrying`` (raising arq's Retry) or ``failed``."""
    error = _error(exc)
    if error["code"] == "internal_error":
        log.error("job_crashed", exc_info=exc)
    if error["retryable"] and job.attempts - job.retry_base <= job.max_retries:
        delays = state.settings.retry_delays_s
        tries = job.attempts - job.retry_base
        delay = delays[min(tries - 1, len(delays) - 1)] * random.uniform(0.8, 1.2)
        delay = max(delay, getattr(exc, "retry_after_s", None) or 0.0)
        run_at = datetime.now(UTC) + timedelta(seconds=delay)
        message = f"retrying in {delay:.1f}s"
        if await _finish(state, reporter, job, "retrying", message, error=error, run_at=run_at):
            state.counts["retried"] += 1
            log.warning("job_retry_scheduled", delay_s=round(delay, 2), error=error["code"])
            raise Retry(defer=delay) from exc
        return
    failed = await _finish(state, reporter, job, "failed", error["message"], error=error)
    if failed:
        state.counts["failed"] += 1
        log.warning("job_failed", error=error["code"], message=error["message"])


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    configure_logging(settings)
    assert settings.database_url
    # The jobs' own writes go through the bookkeeper's asyncpg pool (WorkerState.books); this
    # engine serves the rest (take-overs, webhooks, the supervisor), pinged before each use.
    engine = db.create_engine(settings.database_url, pool_size=5, max_overflow=5)
    await db.check_migrated(engine)
    worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    state = WorkerState(settings, engine, db.sessionmaker(engine), ctx["redis"], worker_id)
    state.wake = ctx.get("wake")
    state.providers = ProviderPool(settings, redis=ctx["redis"])
    state.background = supervisor.start(state)
    ctx["videoq"] = state
    _settle_heap()
    log.info("worker_started", worker_id=worker_id, queue=settings.queue_name)


def _settle_heap() -> None:
    """What start-up built (modules, settings, pools: hundreds of thousands of objects) lives
    as long as the process: kept out of the garbage collector's passes, which would otherwise
    walk all of it every few thousand jobs and stall every job in flight (p90 of a 0.1 s job:
    150 ms against 113 ms; docs/decisions.md "Workers"). Young objects are collected less often
    too: a job makes a few hundred, mostly freed by reference counting."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, *gc.get_threshold()[1:])


async def shutdown(ctx: dict[str, Any]) -> None:
    state: WorkerState | None = ctx.get("videoq")
    if state is None:
        return
    if state.wrapping_up:
        await asyncio.wait(state.wrapping_up, timeout=state.settings.shutdown_grace_s)
    for task in state.background:
        task.cancel()
    await asyncio.gather(*state.background, return_exceptions=True)
    with contextlib.suppress(RedisError, OSError):
        await queue.forget_worker(state.redis, state.worker_id)
    if state.providers is not None:
        await state.providers.aclose()
    await state.publish.aclose()
    await state.archive.aclose()
    await state.books.aclose()
    await state.engine.dispose()
    log.info("worker_shutdown_complete", worker_id=state.worker_id)


def worker_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for :class:`arq.worker.Worker`, from settings."""
    # Our own retry accounting lives in PostgreSQL; arq's limits must never fire first.
    arq_timeout = queue.arq_timeout_s(settings)
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
        # Cancellation is ours (a pub/sub signal); arq's abort would add a Redis round trip
        # to every poll.
        "allow_abort_jobs": False,
        "job_completion_wait": settings.shutdown_grace_s,
        "ctx": {"settings": settings},
        "on_startup": startup,
        "on_shutdown": shutdown,
        **queue.serializers(),
    }


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The event loop ``videoq worker`` runs on: uvloop's where it is installed (a dependency
    everywhere but Windows), else asyncio's. A worker's CPU goes to the loop's own machinery
    (callbacks, timers, sockets) as much as to its jobs: on uvloop, 2000 jobs of 0.1 s I/O at
    concurrency 100 cost 0.63 ms of CPU each instead of 0.73 (docs/decisions.md "Workers")."""
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
