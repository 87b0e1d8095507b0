"""Jobs in PostgreSQL: creation, tenant-scoped reads, and every guarded state transition the
API and the supervisor make (a worker's own claims and outcomes, grouped, are
:mod:`videoq.store.grouped`; both guard by :data:`videoq.types.TRANSITIONS`).

Every transition is one guarded ``UPDATE … WHERE status IN (…) RETURNING``: a stale worker (an
older attempt) or a racing cancel cannot overwrite a newer state.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

from sqlalchemy import and_, cast, func, literal, or_, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from videoq.errors import Conflict, IdempotencyKeyReused, NotFound
from videoq.schemas import JobCreate
from videoq.store.tables import Job
from videoq.types import RETRYABLE, TERMINAL, TRANSITIONS, WAITING, JobStatus, sources


async def create_job(
    session: AsyncSession,
    tenant: str,
    body: JobCreate,
    *,
    default_max_retries: int,
    idempotency_key: str | None = None,
    queue: str = "videoq:queue",
    eta_s: float | None = None,
    cost_estimate_usd: Decimal | None = None,
    traceparent: str | None = None,
) -> tuple[Job, bool]:
    """Insert a job; returns ``(job, created)``. A repeated ``idempotency_key`` returns the
    tenant's original job and ``created=False`` when it comes with the same request, and raises
    :class:`IdempotencyKeyReused` when it comes with another (IETF
    draft-ietf-httpapi-idempotency-key-header: 422)."""
    now = datetime.now(UTC)
    fingerprint = body.fingerprint() if idempotency_key is not None else None
    run_at = body.scheduled_for(now)
    job = Job(
        id=uuid.uuid4(),
        tenant=tenant,
        queue=queue,
        status=JobStatus.SCHEDULED if run_at else JobStatus.QUEUED,
        progress=0.0,
        priority=body.priority,
        attempts=0,
        max_retries=default_max_retries if body.max_retries is None else body.max_retries,
        brief=body.brief(),
        options=body.options.model_dump(exclude_none=True),
        webhook_url=str(body.webhook_url) if body.webhook_url else None,
        idempotency_key=idempotency_key,
        idempotency_fingerprint=fingerprint,
        run_at=run_at,
        created_at=now,
        updated_at=now,
        eta_at_submit_s=eta_s,
        cost_estimate_usd=cost_estimate_usd,
        traceparent=traceparent,
    )
    session.add(job)
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        if idempotency_key is None:
            raise
        existing = (
            await session.execute(
                select(Job).where(Job.tenant == tenant, Job.idempotency_key == idempotency_key)
            )
        ).scalar_one()
        if existing.idempotency_fingerprint not in (None, fingerprint):
            raise IdempotencyKeyReused(
                "this Idempotency-Key was first sent with another request body; "
                "use a new key for a new job"
            ) from None
        return existing, False
    return job, True


async def get_job(session: AsyncSession, job_id: uuid.UUID | str, tenant: str | None) -> Job:
    """The job, scoped to ``tenant`` (``None`` only for workers): another tenant's job is
    :class:`NotFound`, never a hint that it exists."""
    try:
        key = job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(job_id)
    except ValueError:
        raise NotFound(f"no job {job_id!r}") from None
    query = select(Job).where(Job.id == key)
    if tenant is not None:
        query = query.where(Job.tenant == tenant)
    job = (await session.execute(query)).scalar_one_or_none()
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


def _encode_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


#: The longest cursor :func:`_encode_cursor` makes (with room to spare), and the span of the
#: creation times it can hold: anything else was not made here, and is refused before it
#: reaches PostgreSQL (which cannot compare a naive time with a ``timestamptz``, nor store one
#: outside its range).
_CURSOR_MAX_CHARS = 128
_CURSOR_SPAN = (datetime(2000, 1, 1, tzinfo=UTC), datetime(9000, 1, 1, tzinfo=UTC))


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        if len(cursor) > _CURSOR_MAX_CHARS:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_text, key = raw.split("|")
        created = datetime.fromisoformat(created_text)
        if created.tzinfo is None:
            raise ValueError("no time zone")
        created = created.astimezone(UTC)
        if not _CURSOR_SPAN[0] <= created < _CURSOR_SPAN[1]:
            raise ValueError("out of range")
        return created, uuid.UUID(key)
    except (ValueError, OverflowError, UnicodeDecodeError) as exc:
        raise ValueError("invalid cursor") from exc


async def list_jobs(
    session: AsyncSession, tenant: str, *, status: str | None, limit: int, cursor: str | None
) -> tuple[list[Job], str | None]:
    """Newest first, keyset-paginated; returns the page and the next page's cursor."""
    query = select(Job).where(Job.tenant == tenant)
    if status:
        query = query.where(Job.status == status)
    if cursor:
        created, key = _decode_cursor(cursor)
        query = query.where(
            or_(Job.created_at < created, and_(Job.created_at == created, Job.id < key))
        )
    query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    rows = list((await session.execute(query)).scalars())
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (_encode_cursor(rows[-1]) if more and rows else None)


async def transition(
    session: AsyncSession,
    job_id: uuid.UUID,
    to: JobStatus | str,
    *,
    attempt: int | None = None,
    owned_by: str | None = None,
    only_from: Iterable[str] | None = None,
    **values: Any,
) -> Job | None:
    """Move the job to ``to`` if its current state allows it — and, when given, only from
    ``only_from``, only if it is still ``attempt``, only if worker ``owned_by`` runs it. Returns the
    updated job, or None when the guard failed."""
    target = JobStatus(to)
    permitted = None if only_from is None else set(only_from)
    allowed = [s for s in sources(target) if permitted is None or s in permitted]
    guard = [Job.id == job_id, Job.status.in_(allowed)]
    if attempt is not None:
        guard.append(Job.attempts == attempt)
    if owned_by is not None:
        guard.append(Job.worker_id == owned_by)
    stmt = (
        update(Job)
        .where(*guard)
        .values(status=target, updated_at=datetime.now(UTC), **values)
        .returning(Job)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    job = (await session.execute(stmt)).scalar_one_or_none()
    await session.commit()
    return job


def _append_history(entry: dict[str, Any]) -> Any:
    return Job.history.op("||")(cast(literal(json.dumps([entry])), JSONB))


def attempt_record(job: Job, outcome: str, error: dict[str, Any] | None = None) -> dict[str, Any]:
    """One finished attempt, as the job's ``history`` keeps it."""
    return {
        "attempt": job.attempts,
        "worker_id": job.worker_id,
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": datetime.now(UTC).isoformat(),
        "outcome": outcome,
        "error": error,
    }


async def take_over(
    session: AsyncSession,
    job_id: uuid.UUID,
    attempt: int,
    dead_worker: str | None,
    worker_id: str,
    stale_s: float,
) -> Job | None:
    """Claim a job left ``running`` by a worker that died (no heartbeat for ``stale_s``), as a
    new attempt. Guarded by the attempt, the dead worker's id and the stale heartbeat, so a
    live attempt is never stolen."""
    now = datetime.now(UTC)
    stmt = (
        update(Job)
        .where(
            Job.id == job_id,
            Job.status == JobStatus.RUNNING,
            Job.attempts == attempt,
            Job.worker_id.is_(None) if dead_worker is None else Job.worker_id == dead_worker,
            or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < now - timedelta(seconds=stale_s)),
        )
        .values(
            attempts=attempt + 1,
            worker_id=worker_id,
            started_at=now,
            heartbeat_at=now,
            updated_at=now,
            history=_append_history(
                {
                    "attempt": attempt,
                    "worker_id": dead_worker,
                    "finished_at": now.isoformat(),
                    "outcome": "worker_lost",
                }
            ),
        )
        .returning(Job)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    job = (await session.execute(stmt)).scalar_one_or_none()
    await session.commit()
    return job


async def heartbeat(
    session: AsyncSession, worker_id: str, running: dict[uuid.UUID, int]
) -> set[uuid.UUID]:
    """Mark the worker's running attempts alive; returns the ones it still owns (the others
    were cancelled or taken over, and must stop)."""
    if not running:
        return set()
    # Rows locked in id order, as the worker's grouped writes lock them (grouped._locking).
    locked = (
        select(Job.id)
        .where(Job.id.in_(list(running)))
        .order_by(Job.id)
        .with_for_update(key_share=True)
        .cte("locked")
        .prefix_with("MATERIALIZED")
    )
    rows = await session.execute(
        update(Job)
        .where(
            Job.id.in_(select(locked.c.id)),
            Job.status == JobStatus.RUNNING,
            Job.worker_id == worker_id,
        )
        .values(heartbeat_at=datetime.now(UTC))
        .returning(Job.id, Job.attempts)
        .execution_options(synchronize_session=False)
    )
    owned = {job_id for job_id, attempt in rows if running.get(job_id) == attempt}
    await session.commit()
    return owned


async def orphans(session: AsyncSession, queue: str, stale_s: float, limit: int = 100) -> list[Job]:
    """Running jobs of ``queue`` whose worker stopped heartbeating: it died (kill -9, OOM)."""
    cutoff = datetime.now(UTC) - timedelta(seconds=stale_s)
    query = (
        select(Job)
        .where(
            Job.queue == queue,
            Job.status == JobStatus.RUNNING,
            or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff),
        )
        .limit(limit)
    )
    return list((await session.execute(query)).scalars())


async def waiting(session: AsyncSession, queue: str, limit: int = 1000) -> list[Job]:
    """Jobs that should be on arq's ``queue``: queued, scheduled, or waiting to retry."""
    query = (
        select(Job)
        .where(Job.queue == queue, Job.status.in_(WAITING))
        .order_by(Job.created_at)
        .limit(limit)
    )
    return list((await session.execute(query)).scalars())


async def cancel(session: AsyncSession, job_id: str, tenant: str) -> tuple[Job, str]:
    """Cancel a job that has not finished; returns the job and the status it had.
    :class:`Conflict` when it had already finished."""
    job = await get_job(session, job_id, tenant)
    previous = job.status
    updated = await transition(
        session,
        job.id,
        JobStatus.CANCELLED,
        finished_at=datetime.now(UTC),
        history=(
            _append_history(attempt_record(job, JobStatus.CANCELLED))
            if previous == JobStatus.RUNNING
            else Job.history
        ),
    )
    if updated is None:
        current = await get_job(session, job.id, tenant)
        raise Conflict(f"job {job.id} is already {current.status}")
    return updated, previous


#: What a job put back on the queue by hand (:func:`retry`, and a re-render,
#: :func:`videoq.store.versions.requeue`) starts from: a fresh retry budget, no error, not
#: finished, not scheduled, no worker.
REQUEUED: Final[Mapping[str, Any]] = {
    "retry_base": Job.attempts,
    "error": None,
    "finished_at": None,
    "run_at": None,
    "worker_id": None,
}


async def retry(session: AsyncSession, job_id: str, tenant: str) -> Job:
    """Requeue a ``failed`` or ``cancelled`` job with a fresh retry budget; it resumes after its
    last checkpoint. :class:`Conflict` in any other state."""
    job = await get_job(session, job_id, tenant)
    if job.status not in RETRYABLE:
        raise Conflict(
            f"job {job.id} is {job.status}; only failed or cancelled jobs can be retried"
        )
    updated = await transition(
        session,
        job.id,
        JobStatus.QUEUED,
        only_from=tuple(RETRYABLE),
        artifacts_expired_at=None,
        **REQUEUED,
    )
    if updated is None:
        raise Conflict(f"job {job.id} changed state; try again")
    return updated


async def stats(session: AsyncSession, tenant: str | None) -> dict[str, Any]:
    """Counts per status, the oldest queued job's age, and finished jobs per recent window."""
    scope = [] if tenant is None else [Job.tenant == tenant]
    counts = dict(
        (
            await session.execute(
                select(Job.status, func.count()).where(*scope).group_by(Job.status)
            )
        ).all()
    )
    oldest = (
        await session.execute(
            select(func.min(Job.created_at)).where(Job.status == JobStatus.QUEUED, *scope)
        )
    ).scalar()
    now = datetime.now(UTC)
    throughput = {}
    for minutes in (1, 5, 15):
        since = now - timedelta(minutes=minutes)
        rows = await session.execute(
            select(Job.status, func.count())
            .where(Job.finished_at >= since, *scope)
            .group_by(Job.status)
        )
        throughput[f"last_{minutes}m"] = dict(rows.all())
    return {
        "counts": {str(status): counts.get(status, 0) for status in TRANSITIONS},
        "oldest_queued_age_s": (now - oldest).total_seconds() if oldest else None,
        "finished": throughput,
    }


async def waiting_count(session: AsyncSession, tenant: str) -> int:
    """The tenant's jobs that wait to run (queued, scheduled, or between retries)."""
    query = select(func.count()).select_from(Job).where(Job.tenant == tenant)
    return int((await session.execute(query.where(Job.status.in_(WAITING)))).scalar_one())


async def unfinished_before(
    session: AsyncSession, queue: str, created_at: datetime | None = None
) -> int:
    """Jobs of ``queue`` that are queued, running or waiting to retry, created before
    ``created_at`` (all of them when None): those a new job's ETA waits behind."""
    query = (
        select(func.count())
        .select_from(Job)
        .where(
            Job.queue == queue,
            Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.RETRYING)),
        )
    )
    if created_at is not None:
        query = query.where(Job.created_at < created_at)
    return int((await session.execute(query)).scalar_one())


async def statuses(session: AsyncSession, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
    """The current status of each job."""
    rows = await session.execute(select(Job.id, Job.status).where(Job.id.in_(job_ids)))
    return {job_id: status for job_id, status in rows.all()}


async def expiring(session: AsyncSession, ttl_s: float, limit: int = 50) -> list[Job]:
    """Finished jobs whose artifacts are older than ``ttl_s`` and not yet deleted, oldest
    first."""
    cutoff = datetime.now(UTC) - timedelta(seconds=ttl_s)
    query = (
        select(Job)
        .where(
            Job.finished_at.is_not(None),
            Job.finished_at < cutoff,
            Job.artifacts_expired_at.is_(None),
            Job.status.in_(TERMINAL),
        )
        .order_by(Job.finished_at)
        .limit(limit)
    )
    return list((await session.execute(query)).scalars())


async def mark_expired(session: AsyncSession, job_id: uuid.UUID) -> None:
    """Record that the job's artifacts were deleted: its video answers 410 from now on."""
    await session.execute(
        update(Job).where(Job.id == job_id).values(artifacts_expired_at=datetime.now(UTC))
    )
    await session.commit()
