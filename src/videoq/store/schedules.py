"""Recurring jobs' rows. Each holds its next tick (``next_run_at``); a ticker takes the due
rows of its queue with ``FOR UPDATE SKIP LOCKED`` (:func:`due`), so however many workers tick
at once each row is fired by one of them, and moves each on before it lets go of it.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from videoq.cron import Due
from videoq.errors import Conflict, NotFound
from videoq.store.tables import Schedule

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import async_sessionmaker

#: How many schedules one tenant may have.
MAX_PER_TENANT = 1000


async def create(
    session: AsyncSession,
    tenant: str,
    *,
    queue: str,
    cron: str,
    timezone: str,
    job: dict[str, Any],
    next_run_at: datetime,
    name: str | None = None,
) -> Schedule:
    """Record a schedule whose first tick is ``next_run_at``; :class:`Conflict` when the
    tenant has :data:`MAX_PER_TENANT` already."""
    count = await session.scalar(
        select(func.count()).select_from(Schedule).where(Schedule.tenant == tenant)
    )
    if (count or 0) >= MAX_PER_TENANT:
        raise Conflict(f"a tenant has at most {MAX_PER_TENANT} schedules; delete some first")
    row = Schedule(
        id=uuid.uuid4(), tenant=tenant, queue=queue, name=name, cron=cron, timezone=timezone,
        job=job, next_run_at=next_run_at, skipped_ticks=0,
    )  # fmt: skip
    session.add(row)
    await session.commit()
    await session.refresh(row)
    return row


def _key(schedule_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(schedule_id)
    except ValueError:
        raise NotFound(f"no schedule {schedule_id!r}") from None


async def get(session: AsyncSession, schedule_id: str, tenant: str) -> Schedule:
    """The tenant's schedule; another tenant's is :class:`NotFound`, as one that never was."""
    row = await session.scalar(
        select(Schedule).where(Schedule.id == _key(schedule_id), Schedule.tenant == tenant)
    )
    if row is None:
        raise NotFound(f"no schedule {schedule_id}")
    return row


async def remove(session: AsyncSession, schedule_id: str, tenant: str) -> None:
    """Delete the tenant's schedule (:class:`NotFound` as :func:`get`); jobs it made stay. A
    ticker firing it at this moment finishes first (the row is locked), so no tick is half
    done."""
    removed = await session.execute(
        delete(Schedule)
        .where(Schedule.id == _key(schedule_id), Schedule.tenant == tenant)
        .returning(Schedule.id)
    )
    if removed.first() is None:
        raise NotFound(f"no schedule {schedule_id}")
    await session.commit()


def _cursor(row: Schedule) -> str:
    raw = f"{row.created_at.isoformat()}|{row.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _after(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The position a cursor names; :class:`ValueError` for one :func:`_cursor` did not make."""
    if len(cursor) > 200:
        raise ValueError("cursor too long")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, _, key = raw.partition("|")
        return datetime.fromisoformat(created), uuid.UUID(key)
    except (ValueError, UnicodeDecodeError, OverflowError):
        raise ValueError("invalid cursor") from None


async def page(
    session: AsyncSession, tenant: str, *, limit: int, cursor: str | None = None
) -> tuple[list[Schedule], str | None]:
    """The tenant's schedules, newest first, and the cursor of the next page (None at the
    end); :class:`ValueError` for a cursor this function did not hand out."""
    query = select(Schedule).where(Schedule.tenant == tenant)
    if cursor is not None:
        created, key = _after(cursor)
        query = query.where(
            or_(
                Schedule.created_at < created,
                and_(Schedule.created_at == created, Schedule.id < key),
            )
        )
    order = (Schedule.created_at.desc(), Schedule.id.desc())
    rows = list((await session.scalars(query.order_by(*order).limit(limit + 1))).all())
    more = len(rows) > limit
    return rows[:limit], _cursor(rows[limit - 1]) if more else None


@asynccontextmanager
async def due(
    sessions: async_sessionmaker[Any], queue: str, now: datetime, limit: int
) -> AsyncIterator[list[Schedule]]:
    """The schedules of ``queue`` due at ``now`` (oldest tick first, at most ``limit``),
    locked for this caller alone: another ticker skips them, and sees them moved on once
    this block ends. Changes made with :func:`fired` and :func:`held` are committed when it
    ends; an error rolls them back (the rows stay due)."""
    async with sessions() as session:
        query = (
            select(Schedule)
            .where(Schedule.queue == queue, Schedule.next_run_at <= now)
            .order_by(Schedule.next_run_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        yield list((await session.scalars(query)).all())
        await session.commit()


def fired(row: Schedule, due: Due, job_id: uuid.UUID | None, *, error: str | None = None) -> None:
    """Record that ``due.tick`` fired (``job_id`` its job; None when the job was refused for
    good, ``error`` saying why, and the tick counts as skipped) and move on to ``due.next``."""
    row.next_run_at = due.next
    row.skipped_ticks += due.skipped + (job_id is None)
    row.last_error = error
    if job_id is not None:
        row.last_tick_at, row.last_job_id = due.tick, job_id


def held(row: Schedule, error: str) -> None:
    """Record why the due tick could not fire now; it stays due and is tried again."""
    row.last_error = error
