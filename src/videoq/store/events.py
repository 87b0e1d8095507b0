"""The archive of every job's events in PostgreSQL (``job_events``): copied from a job's Redis
stream at the end of each attempt, read back when Redis no longer holds them.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from videoq.store.tables import JobEvent
from videoq.types import StoredEvent

#: Run by the API (:func:`store_events`) and by a worker's grouped writes alike.
ARCHIVE_SQL = """
    INSERT INTO job_events (job_id, seq, event)
    SELECT * FROM unnest($1::uuid[], $2::int[], $3::jsonb[])
    ON CONFLICT DO NOTHING
"""


def archive_args(events: list[StoredEvent]) -> tuple[list[Any], ...]:
    return ([uuid.UUID(e[0]) for e in events], [e[1] for e in events], [e[2] for e in events])


async def store_events(engine: AsyncEngine, events: list[StoredEvent]) -> None:
    """Keep events (numbered, from a job's Redis stream) in ``job_events``; ones already kept
    are skipped. The API's way in (through its SQLAlchemy engine); a worker's goes through its
    :class:`~videoq.store.grouped.GroupedWriter`."""
    if not events:
        return
    async with engine.connect() as conn:
        await conn.exec_driver_sql(ARCHIVE_SQL, archive_args(events))
        await conn.commit()


class EventArchive:
    """The archived events of jobs, read through ``sessions``: what the broker's replay falls
    back to when Redis lost a job's stream or counter (:class:`videoq.broker.events.Archive`)."""

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
