"""A job's life as both processes change it: submit (admission, record, queue), cancel and retry
on request, and what follows every transition (its status event, the webhook of an end).

The guarded UPDATE of each transition is the store's (:mod:`videoq.store.jobs`, and for a
worker's own claims and outcomes :mod:`videoq.store.grouped`); which transitions exist is
:data:`videoq.types.TRANSITIONS`. Routes and the worker call these functions and nothing else
to change a job's state, so each transition is recorded, announced, logged and followed up in
one place.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from videoq import eta, outbox, prices, tracing
from videoq.broker import BROKER_ERRORS, estimates, events, limits, queue, registry, shares
from videoq.broker import keys as redis_keys
from videoq.errors import Conflict, OverBudget, RateLimited
from videoq.schemas import JobCreate
from videoq.settings import Settings
from videoq.store import Job, spend, tenants, versions
from videoq.store import jobs as job_rows
from videoq.store.events import EventArchive
from videoq.types import STAGE_RANGES, TERMINAL, Brief, JobStatus, make_event

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

    from videoq.broker import ArqRedis

log = structlog.get_logger(__name__)

#: A full queue drains at the speed of the workers, which the API cannot predict; this is a hint.
QUEUE_FULL_RETRY_AFTER_S = 30


class Services(Protocol):
    """What a use case needs of the process calling it (the API's and the worker's state)."""

    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[Any]
    redis: ArqRedis
    #: Work started by a transition that outlives it (webhook deliveries); stopped with the
    #: process.
    background: list[asyncio.Task[None]]


async def admit(svc: Services, session: AsyncSession, tenant: str) -> None:
    """Let the tenant create one job now, or raise :class:`OverBudget` (a spent budget, when the
    tenant asked for creates to be refused then) or :class:`RateLimited`: a cap on its waiting
    jobs (PostgreSQL, the record of truth) and a token bucket shared by every API process
    (Redis). If Redis is unreachable the bucket lets requests through: job creation keeps
    working through a Redis outage, and the cap still bounds what a tenant can queue."""
    settings = svc.settings
    spent = await spend.over_budget(session, tenant)
    if spent is not None:
        log.info("job_refused_over_budget", tenant=tenant, budget=spent)
        raise OverBudget(
            f"the tenant's {spent} budget is spent, and it asked for new jobs to be refused "
            "meanwhile (reject_when_over_budget)"
        )
    if settings.max_queued_jobs:
        count = await job_rows.waiting_count(session, tenant)
        if count >= settings.max_queued_jobs:
            log.info("job_refused_queue_full", tenant=tenant, waiting=count)
            raise RateLimited(
                f"{count} jobs are already waiting (limit {settings.max_queued_jobs}); "
                "try again when some have started",
                retry_after_s=QUEUE_FULL_RETRY_AFTER_S,
            )
    if not settings.rate_limit_per_s:
        return
    try:
        allowed, wait = await limits.take(
            svc.redis, redis_keys.bucket(tenant), rate=settings.rate_limit_per_s,
            burst=settings.rate_limit_burst,
        )  # fmt: skip
    except BROKER_ERRORS as exc:
        log.warning("rate_limit_unavailable", tenant=tenant, error=str(exc))
        return
    if not allowed:
        log.info("job_refused_rate_limited", tenant=tenant, retry_after_s=round(wait, 3))
        raise RateLimited(
            f"too many jobs created; at most {settings.rate_limit_per_s:g} per second "
            f"(bursts of {settings.rate_limit_burst})",
            retry_after_s=wait,
        )


async def submit(
    svc: Services, tenant: str, body: JobCreate, *, idempotency_key: str | None = None
) -> tuple[Job, bool]:
    """Admit, record and enqueue a new job; returns ``(job, created)``. A repeated
    ``idempotency_key`` returns the tenant's original job and ``created=False``. If Redis is
    unreachable the row stays waiting and the workers' reconciler enqueues it later."""
    async with svc.sessions() as session:
        await admit(svc, session, tenant)
        settings = svc.settings.for_job(body.options.model_dump(exclude_none=True))
        eta_s = await estimate(svc, session, settings)
        if eta_s is not None and (run_at := body.scheduled_for(datetime.now(UTC))) is not None:
            eta_s += (run_at - datetime.now(UTC)).total_seconds()
        cost = prices.estimate(Brief(**body.brief()), settings).total
        job, created = await job_rows.create_job(
            session, tenant, body, default_max_retries=svc.settings.max_retries,
            idempotency_key=idempotency_key, queue=svc.settings.queue_name, eta_s=eta_s,
            cost_estimate_usd=cost,
            # Every attempt of the job continues the caller's trace, wherever it runs.
            traceparent=tracing.traceparent(),
        )  # fmt: skip
    if created:
        with tracing.span("job.enqueue", {"videoq.job_id": str(job.id)}, kind="producer"):
            await queue.announce_created(svc.redis, svc.settings, job)
    return job, created


async def estimate(
    svc: Services, session: AsyncSession, settings: Settings, job: Job | None = None
) -> float | None:
    """Seconds until ``job`` (run with ``settings``) should finish, or a job submitted now
    (:mod:`videoq.eta`); None while the stages' durations are unknown or Redis is away."""
    try:
        times = eta.stage_times(settings, await estimates.durations(svc.redis, settings.queue_name))
        workers = await registry.count_workers(svc.redis, settings.worker_stale_s)
    except BROKER_ERRORS:
        return None
    if times is None:
        return None
    created = job.created_at if job is not None else None
    ahead = await job_rows.unfinished_before(session, settings.queue_name, created)
    if job is None or job.status != JobStatus.RUNNING or job.stage is None:
        return eta.estimate(times, stage=None, ahead=ahead, workers=workers)
    # Time in the stage is not recorded; its progress says how far it is.
    low, high = STAGE_RANGES.get(job.stage, (0.0, 100.0))
    done = min(1.0, max(0.0, (job.progress - low) / (high - low)))
    elapsed = times.get(job.stage, 0.0) * done
    return eta.estimate(times, stage=job.stage, elapsed_s=elapsed, ahead=ahead, workers=workers)


async def position(svc: Services, job: Job) -> int | None:
    """How many jobs go before a waiting ``job`` in fair order (None: not waiting, or Redis is
    away)."""
    if job.status not in (JobStatus.QUEUED, JobStatus.RETRYING, JobStatus.SCHEDULED):
        return None
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    try:
        found = await shares.position(svc.redis, job.queue, job.tenant, str(job.id), now_ms)
    except BROKER_ERRORS:
        return None
    return found if found >= 0 else None


async def cancel(svc: Services, job_id: str, tenant: str) -> Job:
    """Cancel a job that has not finished (:class:`~videoq.errors.Conflict` when it has): the
    row first, then the signal to whichever worker runs it, the event and its webhook."""
    async with svc.sessions() as session:
        job, previous = await job_rows.cancel(session, job_id, tenant)
    log.info("job_cancel_requested", job_id=str(job.id), previous=previous)
    try:
        # Both, whatever the status was read as: a worker may have claimed it meanwhile.
        await queue.request_cancel(svc.redis, str(job.id))
        if previous != JobStatus.RUNNING:
            await queue.remove(svc.redis, svc.settings, str(job.id))
    except BROKER_ERRORS as exc:
        # The row says cancelled: workers skip it, and a running one stops at its next heartbeat.
        log.warning("cancel_signal_failed", job_id=str(job.id), error=str(exc))
    await announce(svc, job, f"cancelled while {previous}")
    await ended(svc, job)
    return job


async def retry(svc: Services, job_id: str, tenant: str) -> Job:
    """Requeue a ``failed`` or ``cancelled`` job with a fresh retry budget; it resumes after its
    last checkpoint. :class:`~videoq.errors.Conflict` in any other state."""
    async with svc.sessions() as session:
        job = await job_rows.retry(session, job_id, tenant)
    # The new attempts join the job's first trace; this request's span links to it.
    tracing.annotate({"videoq.job_id": str(job.id)}, link=job.traceparent)
    log.info("job_retry_requested", job_id=str(job.id))
    await announce(svc, job, "requeued by request")
    try:
        await queue.remove(svc.redis, svc.settings, str(job.id))  # a stale entry blocks enqueue
        await queue.enqueue_job(svc.redis, svc.settings, job)
    except BROKER_ERRORS as exc:
        log.warning("job_enqueue_deferred", job_id=str(job.id), error=str(exc))
    return job


async def rerender(svc: Services, job: Job, change: dict[str, Any]) -> Job:
    """Requeue a succeeded job to make the next version of its video, as ``change`` (the
    entry its ``versions`` list gets) asks; it resumes from its checkpoints, re-buying only
    what the change needs. :class:`~videoq.errors.Conflict` when the job changed meanwhile."""
    async with svc.sessions() as session:
        updated = await versions.requeue(session, job, change)
    if updated is None:
        raise Conflict(f"job {job.id} changed state; try again")
    log.info("job_rerender_requested", job_id=str(job.id), version=updated.version,
             scene=change.get("scene"), changed=change.get("changed"))  # fmt: skip
    await announce(svc, updated, f"re-rendering scene {change.get('scene')} as version "
                                 f"{updated.version}")  # fmt: skip
    try:
        await queue.remove(svc.redis, svc.settings, str(job.id))  # a stale entry blocks enqueue
        await queue.enqueue_job(svc.redis, svc.settings, updated)
    except BROKER_ERRORS as exc:
        log.warning("job_enqueue_deferred", job_id=str(job.id), error=str(exc))
    return updated


async def budget_changed(svc: Services, tenant: str) -> None:
    """The tenant's budget was raised or lifted: its jobs awaiting the budget look again now,
    not at their next recheck (best effort: they recheck by themselves)."""
    async with svc.sessions() as session:
        waiting = await tenants.awaiting_budget(session, tenant)
    try:
        await queue.run_now(svc.redis, svc.settings, [str(job.id) for job in waiting])
    except BROKER_ERRORS as exc:
        log.warning("budget_resume_deferred", tenant=tenant, error=str(exc))


async def announce(svc: Services, job: Job, message: str) -> None:
    """Publish and archive the status event of a transition made outside a worker's attempt
    (best effort: PostgreSQL holds the state). The job may have history already: numbering
    continues after its archived events, even if Redis lost its counter."""
    event = make_event(
        str(job.id), "status", status=job.status, stage=job.stage, progress=job.progress,
        worker_id=job.worker_id, message=message,
    )  # fmt: skip
    await events.publish_best_effort(svc.redis, job.tenant, event, archive=archive_of(svc))


async def ended(svc: Services, job: Job) -> None:
    """What follows a transition into a terminal state: the job's webhook, recorded and
    started (no-op for other states and for jobs without ``webhook_url``). Never raises."""
    if job.status in TERMINAL:
        await outbox.job_finished(svc.sessions, svc.settings, job, svc.background)


def archive_of(svc: Services) -> EventArchive:
    """The archive of the jobs' events in the process's PostgreSQL."""
    return EventArchive(svc.sessions)
