"""The arq task, thin: it takes a job id, claims the job in PostgreSQL, runs the pipeline with
checkpoints and progress events, and records the outcome. Errors become retry-or-fail here and
only here (:func:`_retry_or_fail`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import random
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import structlog
from arq import Retry

from videoq import eta, fair, lifecycle, tracing
from videoq.artifacts import captions_name, video_name
from videoq.broker import BROKER_ERRORS, queue
from videoq.errors import AttemptSuperseded, OverBudget, RetryableError, VideoqError
from videoq.ffmpeg import cpu_slots
from videoq.pipeline import Rerender, video_gen
from videoq.providers import Providers, ResumableVideoProvider, offline_providers
from videoq.settings import Settings
from videoq.store import DATABASE_ERRORS, Job
from videoq.store import jobs as job_rows
from videoq.store.checkpoints import DbCheckpoints
from videoq.store.grouped import AttemptOutcome
from videoq.types import Brief, JobStatus, Result
from videoq.versions import checkpoint_name
from videoq.workers.budget import JobSpend
from videoq.workers.progress import EventReporter
from videoq.workers.state import RunningJob, WorkerState

log = structlog.get_logger(__name__)


async def run_job(ctx: dict[str, Any], job_id: str) -> asyncio.Future[None] | None:
    """The arq task: run one videoq job by id. A job that succeeded returns the writing of its
    outcome, still in flight, to a worker that ends jobs behind their records
    (``ctx["write_behind"]``, :class:`~videoq.workers.worker.VideoqWorker`): its slot frees for
    the next job meanwhile. arq's own worker ends a job as its task returns, so there it is
    awaited."""
    state: WorkerState = ctx["videoq"]
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(job_id=job_id, worker_id=state.worker_id)
    if not state.accepting:
        # Its scratch disk is nearly full (plain arq takes jobs regardless): another worker
        # takes the job; nothing was claimed.
        log.info("job_declined_scratch_full")
        raise Retry(defer=state.settings.heartbeat_s)
    try:
        behind = await execute(state, uuid.UUID(job_id))
        if behind is not None and not ctx.get("write_behind"):
            # Shielded: arq cancelling the task (its shutdown) must not cut the outcome short;
            # the worker's shutdown waits for it (WorkerState.wrapping_up).
            await asyncio.shield(behind)
            return None
    except DATABASE_ERRORS as exc:
        raise _deferred(state, exc) from exc
    return behind


def _deferred(state: WorkerState, exc: BaseException) -> Retry:
    """PostgreSQL is unreachable: nothing could be recorded, so arq tries again later."""
    delay = state.settings.retry_delays_s[-1]
    log.warning("job_deferred_database_unavailable", error=str(exc), delay_s=delay)
    return Retry(defer=delay)


async def _claim(state: WorkerState, job_id: uuid.UUID) -> Job | None:
    job = await state.books.claim(job_id)
    if job is not None:
        return job
    async with state.sessions() as session:
        current = await session.get(Job, job_id)
        if current is None or current.status != JobStatus.RUNNING:
            return None
        # Running, but its worker stopped heartbeating (killed): take it over if that is so.
        job = await job_rows.take_over(
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


def _providers(state: WorkerState, settings: Settings) -> Providers:
    """The job's providers: the process's live clients, chosen with the job's settings."""
    if state.providers is None:
        return offline_providers(settings)
    return state.providers.for_settings(settings)


async def execute(state: WorkerState, job_id: uuid.UUID) -> asyncio.Future[None] | None:
    """Claim the job and run it to an outcome recorded in PostgreSQL: recorded on return, or,
    when it succeeded, being recorded by the future returned."""
    picked_ns = time.time_ns()
    job = await _claim(state, job_id)
    if job is None:
        log.info("job_skipped", reason="not runnable")
        return None
    # Every attempt (retried, recovered, taken over) continues the trace the job was made in.
    attributes: tracing.Attributes = {"videoq.job_id": str(job.id), "videoq.attempt": job.attempts,
                  "videoq.tenant": job.tenant, "videoq.worker_id": state.worker_id}  # fmt: skip
    with tracing.span(
        "job.run", attributes, kind="consumer", parent=job.traceparent, start_ns=picked_ns
    ):
        return await _run(state, job)


async def _run(state: WorkerState, job: Job) -> asyncio.Future[None] | None:
    task = asyncio.current_task()
    assert task is not None
    running = RunningJob(task, job.attempts)
    structlog.contextvars.bind_contextvars(attempt=job.attempts)
    # Ranked as the queue ranks jobs: a job's work goes before that of its tenant's later jobs.
    rank = job.created_at.timestamp() + queue.PRIORITY_OFFSET_S.get(job.priority, 0.0)
    fair.share.set(fair.Share(job.tenant, state.weights.get(job.tenant, 1.0), rank))
    checkpoints = DbCheckpoints(state.books, job.id, job.attempts)
    settings = state.settings.for_job(job.options)
    reporter = EventReporter(
        state.publish, state.books, state.worker_id, job, checkpoints,
        eta=partial(_eta, state, settings, job.id),
        on_stage_done=partial(_stage_done, state, settings),
        public_url=settings.public_url,
    )  # fmt: skip
    fair.spent.set(reporter.spent)
    workdir = settings.scratch / str(job.id)
    artifacts = state.artifacts.for_job(job.id, workdir)
    try:
        state.running[job.id] = running
        try:
            if job.attempts > 1 or job.history:
                # Numbered after the earlier attempts' events, even if Redis lost the counter.
                with contextlib.suppress(*DATABASE_ERRORS):
                    archive = lifecycle.archive_of(state)
                    reporter.last_seq.value = await archive.last_seq(str(job.id))
            reporter.emit("status", JobStatus.RUNNING, f"attempt {job.attempts} started")
            log.info("job_started")
            async with asyncio.timeout(settings.job_timeout_s):
                result = await _pipeline(settings)(
                    Brief(**job.brief),
                    settings=settings,
                    workdir=workdir,
                    checkpoints=checkpoints,
                    report=reporter,
                    providers=_providers(state, settings),
                    artifacts=artifacts,
                    spend=JobSpend(state.sessions, job.id, job.tenant, settings),
                    previews=reporter,
                    rerender=Rerender.of(job.versions, job.version),
                )
                # The video is in the store before the job says it succeeded.
                await artifacts.keep(result.video_path, video_name(job.version))
                if result.captions_path is not None:
                    await artifacts.keep(result.captions_path, captions_name(job.version))
        finally:
            # Before any outcome is recorded: from here on nothing may cancel this attempt.
            state.running.pop(job.id, None)
    except asyncio.CancelledError:
        if running.stop_reason is None:
            # arq cancels on shutdown and requeues the job; hand it back in PostgreSQL too.
            await _finish(state, reporter, job, JobStatus.QUEUED, "worker stopped; job requeued")
            raise
        task.uncancel()  # stopped on purpose: this attempt ends here, normally
        if running.stop_reason == "cancelled":
            # (Lease lost: the new owner may be writing in the same directory, and may use
            # the work still running; left be.)
            state.wrap_up(_stop_paid_work(state, settings, checkpoints, job.version))
            await _clear_scratch(workdir)
        log.info("job_stopped", reason=running.stop_reason)
        return None
    except AttemptSuperseded:
        # Cancelled or taken over before the signal arrived: the new state is not ours to touch.
        log.info("job_stopped", reason="superseded")
        return None
    except OverBudget as exc:
        await _await_budget(state, job, reporter, exc)
        return None
    except Exception as exc:
        if not await _retry_or_fail(state, job, reporter, exc):
            state.wrap_up(_stop_paid_work(state, settings, checkpoints, job.version))
        return None
    reporter.progress = 100.0
    return state.wrap_up(_succeeded(state, reporter, job, result, workdir))


def _stage_done(state: WorkerState, settings: Settings, stage: str, took: float) -> None:
    """Count a stage's duration, and, for a compositing that ended while this worker's FFmpeg
    slots stayed full since the one before it, the turn between them (:data:`eta.TURN`)."""
    state.stage_times.append((eta.stage_key(settings, stage), took))
    if stage != "compositing":
        return
    now, full_since = time.monotonic(), cpu_slots(settings).full_since
    last, state.composited_at = state.composited_at, now
    if last is not None and full_since is not None and full_since <= last:
        state.stage_times.append((eta.TURN, now - last))


def _eta(state: WorkerState, settings: Settings, job_id: uuid.UUID, stage: str) -> float | None:
    """The job's ETA as ``stage`` starts: behind this worker's jobs that started before it
    (they composite first), from the stages' recent durations."""
    times = eta.stage_times(settings, state.durations)
    if times is None:
        return None
    ahead = next((i for i, other in enumerate(state.running) if other == job_id), 0)
    return eta.estimate(times, stage=stage, ahead=ahead)


async def _succeeded(
    state: WorkerState, reporter: EventReporter, job: Job, result: Result, workdir: Path
) -> None:
    """What is left of a job whose pipeline finished (its video in the store): its checkpoints
    landed, its outcome, then its scratch removed."""
    try:
        await reporter.checkpoints.landed()
    except AttemptSuperseded:
        # Cancelled or taken over before the signal arrived: the new state is not ours to touch.
        log.info("job_stopped", reason="superseded")
        return
    except DATABASE_ERRORS:
        pass  # the outcome's own write finds out whether PostgreSQL is back
    try:
        succeeded = await _finish(
            state, reporter, job, JobStatus.SUCCEEDED, "video ready",
            progress=100.0,
            result={"duration_s": result.duration_s, "size_bytes": result.size_bytes,
                    **result.cost, **({"captions": True} if result.captions_path else {})},
        )  # fmt: skip
    except DATABASE_ERRORS as exc:
        raise _deferred(state, exc) from exc
    if not succeeded:
        return  # cancelled or taken over meanwhile: its scratch is not ours to clean
    await _clear_scratch(workdir)
    state.counts["succeeded"] += 1
    if job.eta_at_submit_s is not None:
        took = (datetime.now(UTC) - job.created_at).total_seconds()
        state.eta_errors.append(eta.relative_error(job.eta_at_submit_s, took))
    log.info("job_succeeded", duration_s=result.duration_s, size_bytes=result.size_bytes)


async def _clear_scratch(workdir: Path) -> None:
    """Remove a job's work directory: whatever it kept is in the artifact store."""
    # One stat on the loop is cheaper than a thread's round trip, and a pipeline that made no
    # files leaves no directory.
    if os.path.isdir(workdir):  # noqa: ASYNC240
        await asyncio.to_thread(shutil.rmtree, workdir, True)


async def _finish(
    state: WorkerState,
    reporter: EventReporter,
    job: Job,
    status: JobStatus,
    message: str,
    *,
    error: dict[str, Any] | None = None,
    progress: float | None = None,
    result: dict[str, Any] | None = None,
    run_at: datetime | None = None,
) -> bool:
    """End the attempt in PostgreSQL (guarded: still running, still this attempt, still this
    worker's, so a job cancelled meanwhile is never revived), then emit the status event and
    start the webhook. Shielded: an outcome being written is followed by its event and webhook
    even if the job's task is cancelled meanwhile (arq's shutdown)."""
    record = job_rows.attempt_record(
        job, "requeued" if status == JobStatus.QUEUED else status, error
    )
    outcome = AttemptOutcome(
        job.id, job.attempts, status, record, stage=reporter.stage,
        progress=reporter.progress if progress is None else progress,
        result=result, error=error, run_at=run_at,
    )  # fmt: skip
    return await asyncio.shield(_record(state, reporter, outcome, message))


async def _record(
    state: WorkerState, reporter: EventReporter, outcome: AttemptOutcome, message: str
) -> bool:
    # Checkpoints still in flight land first (or are refused): once the outcome is written,
    # the guard would refuse them, and the next attempt would redo their stages. (Here, in
    # the shielded part: a shutdown's cancel must not skip the outcome.)
    with contextlib.suppress(AttemptSuperseded, *DATABASE_ERRORS):
        await reporter.checkpoints.landed()
    updated = await state.books.finish(outcome)
    if updated is None:
        log.warning("job_transition_refused", to=outcome.status)
        return False
    reporter.status = outcome.status
    reporter.emit("status", outcome.status, message)  # shutdown waits for the publisher
    await lifecycle.ended(state, updated)
    return True


def _error(exc: Exception) -> dict[str, Any]:
    if isinstance(exc, VideoqError):
        retryable = isinstance(exc, RetryableError)
        return {"code": exc.code, "message": exc.message[:2000], "retryable": retryable}
    if isinstance(exc, TimeoutError):
        message = "the job ran past its timeout"
        return {"code": "job_timeout", "message": message, "retryable": False}
    if isinstance(exc, (*BROKER_ERRORS, *DATABASE_ERRORS)):
        return {"code": "infrastructure_error", "message": type(exc).__name__, "retryable": True}
    return {"code": "internal_error", "message": "unexpected worker error", "retryable": False}


async def _stop_paid_work(
    state: WorkerState, settings: Settings, checkpoints: DbCheckpoints, version: int
) -> None:
    """The job failed or was cancelled: stop the paid work still running for it (the other
    scenes' predictions of a job whose one scene failed; those of the ``version`` it makes)
    at the provider, off the job's path."""
    video = _providers(state, settings).video
    if not isinstance(video, ResumableVideoProvider):
        return
    try:
        notes = await checkpoints.notes(checkpoint_name(video_gen.STAGE, version))
    except DATABASE_ERRORS as exc:
        log.warning("paid_work_not_stopped", error=str(exc))
        return
    running = [str(n["id"]) for n in notes.values() if n.get("id") and not n.get("clip")]
    if running:
        await video.cancel_work(running)


async def _await_budget(
    state: WorkerState, job: Job, reporter: EventReporter, exc: OverBudget
) -> None:
    """The tenant's budget cannot cover the job's next paid call: nothing of it was bought.
    The job waits in ``awaiting_budget``, its checkpoints and purchases kept, and looks again
    every ``budget_recheck_s`` (raising the budget wakes it at once). Waiting costs none of its
    retries."""
    delay = state.settings.budget_recheck_s
    run_at = datetime.now(UTC) + timedelta(seconds=delay)
    error = {"code": exc.code, "message": exc.message[:2000], "retryable": True}
    if await _finish(
        state, reporter, job, JobStatus.AWAITING_BUDGET, exc.message, error=error, run_at=run_at
    ):
        state.counts["awaiting_budget"] += 1
        log.info("job_awaiting_budget", recheck_s=delay, message=exc.message)
        raise Retry(defer=delay) from exc


async def _retry_or_fail(
    state: WorkerState, job: Job, reporter: EventReporter, exc: Exception
) -> bool:
    """Map a failed attempt to ``retrying`` (raising arq's Retry) or ``failed``. False when
    it failed here; True when it was left as it was (cancelled or taken over meanwhile)."""
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
        if await _finish(
            state, reporter, job, JobStatus.RETRYING, message, error=error, run_at=run_at
        ):
            state.counts["retried"] += 1
            log.warning("job_retry_scheduled", delay_s=round(delay, 2), error=error["code"])
            raise Retry(defer=delay) from exc
        return True
    failed = await _finish(state, reporter, job, JobStatus.FAILED, error["message"], error=error)
    if failed:
        state.counts["failed"] += 1
        log.warning("job_failed", error=error["code"], message=error["message"])
        await _clear_scratch(state.settings.scratch / str(job.id))
    return not failed
