"""The last hour of work, minute by minute, for the console's charts: jobs finished (by
outcome) and how long jobs waited before they started.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from videoq.store.tables import Job

MINUTES = 60


async def last_hour(
    session: AsyncSession, tenant: str, now: datetime | None = None
) -> dict[str, Any]:
    """Per minute of the last hour (oldest first, ending with the current minute, UTC):
    ``succeeded``, ``failed`` and ``cancelled`` (jobs that ended then), and ``wait_avg_s`` /
    ``wait_max_s`` of the jobs that started then (from when they could run, ``run_at`` or
    creation, to their latest start; None for a minute without one), of ``tenant``'s jobs."""
    now = (now or datetime.now(UTC)).replace(second=0, microsecond=0)
    since = now - timedelta(minutes=MINUTES - 1)
    scope = Job.tenant == tenant
    ended = func.date_trunc("minute", Job.finished_at)
    finished = await session.execute(
        select(ended, Job.status, func.count())
        .where(Job.finished_at >= since, scope)
        .group_by(ended, Job.status)
    )
    began = func.date_trunc("minute", Job.started_at)
    ready = func.greatest(Job.created_at, func.coalesce(Job.run_at, Job.created_at))
    wait = func.extract("epoch", Job.started_at - ready)
    waits = await session.execute(
        select(began, func.avg(wait), func.max(wait))
        .where(Job.started_at >= since, scope)
        .group_by(began)
    )
    minutes = [since + timedelta(minutes=i) for i in range(MINUTES)]
    index = {minute: i for i, minute in enumerate(minutes)}
    out: dict[str, Any] = {
        "minutes": [m.isoformat() for m in minutes],
        **{status: [0] * MINUTES for status in ("succeeded", "failed", "cancelled")},
        "wait_avg_s": [None] * MINUTES,
        "wait_max_s": [None] * MINUTES,
    }
    for minute, status, count in finished.all():
        if status in out and minute in index:
            out[status][index[minute]] = count
    for minute, average, longest in waits.all():
        if minute in index:
            out["wait_avg_s"][index[minute]] = max(0.0, round(float(average), 2))
            out["wait_max_s"][index[minute]] = max(0.0, round(float(longest), 2))
    return out
