"""The archive of every job's events in PostgreSQL (``job_events``): written as the events are
published (a worker's through its grouped writes, :mod:`videoq.store.grouped`; the API's here),
read back when Redis no longer holds them, and where numbering goes on after Redis lost a job's
counter. Each row also keeps the job's tenant and the event's ``tenant_seq``, so the tenant feed
(``WS /v1/events``) replays and numbers on from here the same way.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import async_sessionmaker

from videoq.store.tables import JobEvent
from videoq.types import StoredEvent

#: Run by the API (:meth:`EventArchive.keep`) and by a worker's grouped writes alike. A seq
#: names one event, so one already kept is the same event again (a write repeated). The tenant
#: comes from the job's row, the ``tenant_seq`` from the event itself.
ARCHIVE_SQL = """
    INSERT INTO job_events (job_id, seq, event, tenant, tenant_seq)
    SELECT e.job_id, e.seq, e.event, j.tenant, (e.event->>'tenant_seq')::int
    FROM unnest($1::uuid[], $2::int[], $3::jsonb[]) AS e(job_id, seq, event)
    JOIN jobs j ON j.id = e.job_id
    ON CONFLICT DO NOTHING
"""


def archive_args(events: list[StoredEvent]) -> tuple[list[Any], ...]:
    return ([uuid.UUID(e[0]) for e in events], [e[1] for e in events], [e[2] for e in events])


class EventArchive:
    """The archived events of jobs, through ``sessions``: what the broker's replay falls back
    to when Redis lost a job's stream, and numbers continue after when it lost the counter
    (:class:`videoq.broker.events.Archive`)."""

    def __init__(self, sessions: async_sessionmaker[Any]) -> None:
        self.sessions = sessions

    async def last_seq(self, job_id: str) -> int:
        """The highest archived ``seq`` of the job (0 when none)."""
        async with self.sessions() as session:
            query = select(func.max(JobEvent.seq)).where(JobEvent.job_id == uuid.UUID(job_id))
            return int((await session.execute(query)).scalar() or 0)

    async def between(
        self, job_id: str, after: int, before: int | None = None, upto: int | None = None
    ) -> list[dict[str, Any]]:
        """Archived events with ``after < seq``, ``seq < before`` and ``seq <= upto`` (when
        given), in order."""
        query = select(JobEvent.event).where(
            JobEvent.job_id == uuid.UUID(job_id), JobEvent.seq > after
        )
        if before is not None:
            query = query.where(JobEvent.seq < before)
        if upto is not None:
            query = query.where(JobEvent.seq <= upto)
        async with self.sessions() as session:
            return list((await session.execute(query.order_by(JobEvent.seq))).scalars())

    async def tenant_last_seq(self, tenant: str) -> int:
        """The highest archived ``tenant_seq`` of the tenant's events (0 when none)."""
        async with self.sessions() as session:
            query = select(func.max(JobEvent.tenant_seq)).where(JobEvent.tenant == tenant)
            return int((await session.execute(query)).scalar() or 0)

    async def tenant_between(
        self, tenant: str, after: int, before: int | None = None, upto: int | None = None
    ) -> list[dict[str, Any]]:
        """The tenant's archived events with ``after < tenant_seq``, ``tenant_seq < before``
        and ``tenant_seq <= upto`` (when given), in ``tenant_seq`` order."""
        query = select(JobEvent.event).where(JobEvent.tenant == tenant, JobEvent.tenant_seq > after)
        if before is not None:
            query = query.where(JobEvent.tenant_seq < before)
        if upto is not None:
            query = query.where(JobEvent.tenant_seq <= upto)
        async with self.sessions() as session:
            return list((await session.execute(query.order_by(JobEvent.tenant_seq))).scalars())

    async def keep(self, events: list[StoredEvent]) -> None:
        """Archive events just published (ones already kept are skipped): the API's way in; a
        worker's goes through its :class:`~videoq.store.grouped.GroupedWriter`."""
        async with self.sessions() as session:
            conn = await session.connection()
            await conn.exec_driver_sql(ARCHIVE_SQL, archive_args(events))
            await session.commit()
