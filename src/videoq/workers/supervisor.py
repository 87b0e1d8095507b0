"""A worker's background duties, beside the jobs it runs:

- **heartbeats**: every ``heartbeat_s`` the worker marks its running attempts alive in
  PostgreSQL (and itself in the Redis registry). An attempt it no longer owns — cancelled, or
  taken over after this worker was presumed dead — is stopped at once.
- **the session lock**: the worker holds an advisory lock in PostgreSQL on a connection of its
  own (:class:`~videoq.store.liveness.SessionLock`), takes it again at once when that
  connection drops, and checks the connection every ``heartbeat_s``.
- **death watch**: every ``death_watch_s`` one worker (a Redis lock elects it) looks for
  running jobs whose worker's lock PostgreSQL let go of (the process died, and its connection
  with it), and hands them back to the queue for another worker to resume now.
- **cancel signals**: one pub/sub subscription; a cancel request stops the job's task within
  milliseconds, on whichever worker runs it (arq's own abort polls, and only on its own queue).
- **reconciliation**: every ``reconcile_s`` one worker (a Redis lock elects it) re-enqueues what
  PostgreSQL says should be queued but Redis does not hold (Redis restarted empty, or was down at
  submit), and releases running jobs whose worker stopped heartbeating, so another worker
  resumes them from their checkpoints instead of waiting for arq's in-progress key to expire
  (the slow path of the death watch, for deaths PostgreSQL did not see: a machine lost);
  it also deletes the stored files of jobs finished more than ``artifact_ttl_days`` ago.
- **the feed**: every ``feed_poll_s`` one worker (a Redis lock elects it) embeds finished
  videos, announces generated feed items whose jobs ended and refills the feeds of users with
  enough new interactions (:func:`videoq.feed.tick`).
- **schedules**: every ``schedule_poll_s`` each worker fires the recurring jobs of its queue
  that are due (:func:`fire_schedules`): one job per tick however many workers tick at once.
- **scratch space**: with each heartbeat the worker checks its scratch disk, and takes no new
  jobs while less than ``scratch_min_free_bytes`` is free (its heartbeat says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import ValidationError

from videoq import cron, eta, feed, lifecycle, outbox
from videoq.broker import BROKER_ERRORS, estimates, keys, queue, registry, shares
from videoq.errors import IdempotencyKeyReused, OverBudget, RateLimited
from videoq.providers.briefs import OfflineBriefWriter
from videoq.providers.embeddings import OfflineEmbedder
from videoq.schemas import JobCreate, field_errors, job_context
from videoq.store import DATABASE_ERRORS, liveness
from videoq.store import jobs as job_rows
from videoq.store import schedules as schedule_rows
from videoq.store import tenants as tenant_rows
from videoq.types import JobStatus

if TYPE_CHECKING:
    from videoq.store import Schedule
    from videoq.workers.state import WorkerState

log = structlog.get_logger(__name__)

#: The name of the feed loop's task (``videoq process-pending`` runs the feed itself).
FEED_TASK = "videoq-feed"

_INFRA_ERRORS = (*DATABASE_ERRORS, *BROKER_ERRORS)
#: How many due schedules one ticker pass fires (the rest wait for the next pass).
SCHEDULES_PER_PASS = 100


def start(state: WorkerState) -> list[asyncio.Task[None]]:
    tasks = [
        asyncio.create_task(_heartbeats(state), name="videoq-heartbeat"),
        asyncio.create_task(_keep_lock(state), name="videoq-session-lock"),
        asyncio.create_task(_cancel_signals(state), name="videoq-cancel-signals"),
        asyncio.create_task(_reconcile(state), name="videoq-reconcile"),
        asyncio.create_task(_feed(state), name=FEED_TASK),
        asyncio.create_task(_schedules(state), name="videoq-schedules"),
    ]
    if state.settings.death_watch_s > 0:
        tasks.append(asyncio.create_task(_death_watch(state), name="videoq-death-watch"))
    return tasks


def worker_info(state: WorkerState) -> dict[str, Any]:
    return {
        "id": state.worker_id,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "queue": state.settings.queue_name,
        "started_at": state.started_at,
        "jobs": [str(job_id) for job_id in state.running],
        "max_jobs": state.settings.max_jobs,
        "counts": dict(state.counts),
        "accepting_jobs": state.accepting,
        "scratch_free_bytes": state.scratch_free_bytes,
    }


def check_scratch(state: WorkerState) -> int:
    """Free bytes of the scratch disk; sets whether the worker takes new jobs."""
    scratch = state.settings.scratch
    scratch.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(scratch).free
    accepting = free >= state.settings.scratch_min_free_bytes
    if accepting != state.accepting:
        event = "worker_accepting_jobs" if accepting else "worker_refusing_jobs_scratch_full"
        log.warning(event, scratch_free_bytes=free)
    state.accepting = accepting
    return free


async def beat(state: WorkerState) -> None:
    """One heartbeat: keep owned attempts alive, stop the ones this worker lost."""
    running = {job_id: r.attempt for job_id, r in state.running.items()}
    try:
        async with state.sessions() as session:
            owned = await job_rows.heartbeat(session, state.worker_id, running)
            lost = [job_id for job_id in running if job_id not in owned]
            statuses = await job_rows.statuses(session, lost) if lost else {}
        for job_id in lost:
            reason = "cancelled" if statuses.get(job_id) == JobStatus.CANCELLED else "lease_lost"
            if state.stop(job_id, reason, attempt=running[job_id]):
                log.warning("job_stopped_by_heartbeat", job_id=str(job_id), reason=reason)
    except Exception as exc:  # the loop must outlive any one failure
        log.warning("heartbeat_failed", store="postgresql", error=str(exc))
    try:
        state.scratch_free_bytes = await asyncio.to_thread(check_scratch, state)
    except OSError as exc:
        log.warning("scratch_check_failed", error=str(exc))
    try:
        ttl = state.settings.worker_stale_s * 6
        await registry.heartbeat(state.redis, state.worker_id, worker_info(state), ttl)
        state.weights = await shares.weights(state.redis)
        await send_estimates(state)
    except Exception as exc:
        log.warning("heartbeat_failed", store="redis", error=str(exc))


async def send_estimates(state: WorkerState) -> None:
    """Send the stage durations and ETA errors measured since the last heartbeat; fetch
    everyone's."""
    queue_name = state.settings.queue_name
    measured, state.stage_times = state.stage_times, []
    errors, state.eta_errors = state.eta_errors, []
    await estimates.record(state.redis, queue_name, measured)
    for error in errors:
        await estimates.record_error(state.redis, queue_name, error, eta.ERROR_BUCKETS)
    state.durations = await estimates.durations(state.redis, queue_name)


async def _heartbeats(state: WorkerState) -> None:
    while True:
        await beat(state)
        await asyncio.sleep(state.settings.heartbeat_s)


async def _keep_lock(state: WorkerState) -> None:
    """Hold the worker's session lock (taken at start-up): take it again when its connection
    is gone, then heartbeat at once, so that an attempt another worker took over meanwhile
    stops now rather than at the next heartbeat."""
    settings = state.settings
    while True:
        await state.lock.lost(check_s=settings.heartbeat_s)
        log.warning("worker_lock_lost")
        failures = 0
        while not state.lock.held:
            try:
                await state.lock.take()
            except Exception as exc:  # the loop must outlive any one failure
                if not failures:  # (an outage would log one every try)
                    log.warning("worker_lock_failed", error=str(exc))
                failures += 1
                # As often as the death watch looks: the lock must be back before it is judged.
                await asyncio.sleep(settings.death_watch_s or settings.heartbeat_s)
        log.warning("worker_lock_taken_again", failed_tries=failures)
        await beat(state)


async def release_dead(state: WorkerState) -> int:
    """Hand the running jobs of workers whose session lock is free back to the queue, and wake
    workers to take them; returns how many."""
    settings = state.settings
    async with state.sessions() as session:
        leases = await liveness.unlocked(session, settings.queue_name, state.worker_id)
    if not leases:
        return 0
    # A live worker whose lock's connection dropped takes the lock again within milliseconds;
    # one still free a moment later is a dead worker's.
    await asyncio.sleep(settings.death_watch_s / 2)
    async with state.sessions() as session:
        released = await liveness.release(session, leases)
    dead = {job_id: worker_id for job_id, _, worker_id in leases}
    for job in released:
        await queue.release_orphan(state.redis, settings, job)
        log.warning("job_released_worker_dead", job_id=str(job.id), dead_worker=dead[job.id])
    return len(released)


async def _death_watch(state: WorkerState) -> None:
    settings = state.settings
    lock = keys.death_watch_lock(settings.queue_name)
    while True:
        try:
            # A worker that took its own lock again just now judges nobody yet (settled()).
            if state.lock.settled(settings.worker_stale_s) and await queue.take_turn(
                state.redis, lock, state.worker_id, settings.death_watch_s
            ):
                await release_dead(state)
        except Exception as exc:  # the loop must outlive any one failure
            log.warning("death_watch_failed", error=str(exc))
        await asyncio.sleep(settings.death_watch_s)


async def _cancel_signals(state: WorkerState) -> None:
    """Cancel requests (any worker may run the job) and wake-ups (a job was enqueued)."""
    while True:
        pubsub = state.redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(
                keys.CANCEL_CHANNEL, keys.wake_channel(state.settings.queue_name)
            )
            state.listening.set()
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                if message["channel"] != keys.CANCEL_CHANNEL.encode():
                    if state.wake is not None:
                        state.wake.set()
                    continue
                with contextlib.suppress(ValueError):
                    job_id = uuid.UUID(message["data"].decode())
                    if state.stop(job_id, "cancelled"):
                        log.info("job_cancel_signalled", job_id=str(job_id))
        except Exception as exc:
            # Missed signals are caught by the next heartbeat, which sees the cancelled row.
            log.warning("cancel_listener_failed", error=str(exc))
            await asyncio.sleep(state.settings.heartbeat_s)
        finally:
            with contextlib.suppress(*_INFRA_ERRORS):
                await pubsub.aclose()  # type: ignore[no-untyped-call]


async def reconcile_once(state: WorkerState) -> dict[str, int]:
    """Re-enqueue waiting jobs Redis lost; release orphaned running jobs. Returns counts."""
    settings = state.settings
    async with state.sessions() as session:
        waiting = await job_rows.waiting(session, settings.queue_name)
        orphans = await job_rows.orphans(session, settings.queue_name, settings.worker_stale_s)
        configured = await tenant_rows.every(session)
    await shares.sync(
        state.redis, {t.tenant: shares.TenantShare(t.weight, t.max_running) for t in configured}
    )
    requeued = 0
    if waiting:
        present = await queue.held(state.redis, [str(job.id) for job in waiting])
        stale = datetime.now(UTC) - timedelta(seconds=settings.worker_stale_s)
        held = []
        for job, exists in zip(waiting, present, strict=True):
            if not exists:
                if await queue.enqueue_job(state.redis, settings, job):
                    requeued += 1
                    log.info("job_reenqueued", job_id=str(job.id), status=job.status)
            elif job.updated_at < stale and (job.run_at is None or job.run_at < stale):
                held.append(str(job.id))
        # Held by arq but maybe not indexed under its tenant (enqueued by a release before
        # shares, or the index evicted): indexing again is harmless.
        await shares.index(
            state.redis,
            settings.queue_name,
            [
                (str(job.id), job.tenant)
                for job, exists in zip(waiting, present, strict=True)
                if exists
            ],
        )
        # Taken by a worker long ago, yet the row never became running: the worker died between
        # recording the outcome and arq clearing its in-progress key, which would block the job
        # until the key expires (the job timeout). A key set moments ago is a worker starting
        # the job from a backlog: left alone.
        for job_id in await queue.clear_stale_in_progress(state.redis, settings, held):
            log.warning("job_in_progress_key_cleared", job_id=job_id)
    for job in orphans:
        await queue.release_orphan(state.redis, settings, job)
        log.warning("job_orphan_released", job_id=str(job.id), dead_worker=job.worker_id)
    # Webhook deliveries whose process stopped between attempts.
    resumed = await outbox.resume_pending(state.sessions, settings, state.background)
    expired = await expire_artifacts(state)
    return {"requeued": requeued, "orphans": len(orphans), "webhooks": resumed, "expired": expired}


async def expire_artifacts(state: WorkerState) -> int:
    """Delete the stored files of jobs finished more than ``artifact_ttl_days`` ago (a batch
    per period); their rows stay, saying when. Returns how many jobs expired."""
    async with state.sessions() as session:
        due = await job_rows.expiring(session, state.settings.artifact_ttl_days * 86400)
    for job in due:
        removed = await state.artifacts.delete_prefix(f"{job.id}/")
        async with state.sessions() as session:
            await job_rows.mark_expired(session, job.id)
        log.info("job_artifacts_expired", job_id=str(job.id), objects=removed)
    return len(due)


async def _reconcile(state: WorkerState) -> None:
    while True:
        try:
            settings = state.settings
            lock = keys.reconcile_lock(settings.queue_name)
            if await queue.take_turn(state.redis, lock, state.worker_id, settings.reconcile_s):
                await reconcile_once(state)
        except Exception as exc:
            log.warning("reconcile_failed", error=str(exc))
        await asyncio.sleep(state.settings.reconcile_s)


async def _feed(state: WorkerState) -> None:
    settings = state.settings
    lock = keys.feed_lock(settings.queue_name)
    embedder = state.embedder or OfflineEmbedder()
    writer = state.providers.briefs(settings) if state.providers else OfflineBriefWriter()
    while True:
        try:
            if await queue.take_turn(state.redis, lock, state.worker_id, settings.feed_poll_s):
                await feed.tick(state, embedder, writer)
        except Exception as exc:  # the loop must outlive any one failure
            log.warning("feed_failed", error=f"{type(exc).__name__}: {exc}")
        await asyncio.sleep(settings.feed_poll_s)


def _invalid_fields(exc: ValidationError) -> str:
    return "; ".join(f"{e['field']}: {e['message']}" for e in field_errors(exc))


def tick_key(schedule_id: uuid.UUID, tick: datetime) -> str:
    """The idempotency key of a tick's job: whoever submits it, and however often, one job."""
    return f"schedule:{schedule_id}:{tick.astimezone(UTC):%Y-%m-%dT%H:%MZ}"


async def fire_schedules(state: WorkerState, now: datetime | None = None) -> int:
    """Submit the job of each schedule of this queue that is due, and move it on to its next
    tick; returns how many jobs were submitted. The rows are locked while this runs (other
    workers skip them), and each tick's job has a key of its own (:func:`tick_key`), so a
    pass that dies between submitting and moving on makes no second job when the tick is
    fired again. Of the ticks missed while no worker ran only the latest fires; the others
    are counted as skipped. A tick refused for now (rate limit, queue cap, budget) stays due
    and is tried again at the next pass; one whose job is no longer valid is skipped."""
    settings = state.settings
    now = now or datetime.now(UTC)
    submitted = 0
    async with schedule_rows.due(
        state.sessions, settings.queue_name, now, SCHEDULES_PER_PASS
    ) as rows:
        for row in rows:
            submitted += await _fire(state, row, now)
    return submitted


async def _fire(state: WorkerState, row: Schedule, now: datetime) -> bool:
    """Fire one due schedule (:func:`fire_schedules`); True when it made a new job."""
    bound = log.bind(schedule_id=str(row.id), tenant=row.tenant)
    try:
        # In a thread: after a long outage, counting the missed ticks takes a while.
        when = await asyncio.to_thread(cron.due, row.cron, row.timezone, row.next_run_at, now)
    except ValueError as exc:  # its zone left this machine's zone database
        schedule_rows.held(row, str(exc))
        bound.warning("schedule_tick_failed", error=str(exc))
        return False
    bound = bound.bind(tick=when.tick.isoformat(), skipped=when.skipped)
    try:
        body = JobCreate.model_validate(row.job, context=job_context(state.settings))
        job, created = await lifecycle.submit(
            state, row.tenant, body, idempotency_key=tick_key(row.id, when.tick)
        )
    except (RateLimited, OverBudget) as exc:
        schedule_rows.held(row, exc.message)
        bound.info("schedule_tick_deferred", reason=exc.code)
        return False
    except (ValidationError, IdempotencyKeyReused) as exc:
        error = exc.message if isinstance(exc, IdempotencyKeyReused) else _invalid_fields(exc)
        schedule_rows.fired(row, when, None, error=f"the tick's job was refused: {error}")
        bound.warning("schedule_tick_refused", error=error)
        return False
    schedule_rows.fired(row, when, job.id)
    bound.info("schedule_fired", job_id=str(job.id), created=created)
    return created


async def _schedules(state: WorkerState) -> None:
    while True:
        try:
            await fire_schedules(state)
        except Exception as exc:  # the loop must outlive any one failure
            log.warning("schedules_failed", error=f"{type(exc).__name__}: {exc}")
        await asyncio.sleep(state.settings.schedule_poll_s)
