"""Workers' liveness as PostgreSQL's sessions tell it. Each worker holds a session-level
advisory lock, on a connection of its own, for as long as it lives (:class:`SessionLock`);
PostgreSQL lets go of it the moment that connection closes, and a killed process's socket
closes with it. ``running`` jobs whose worker's lock nobody holds are a dead worker's
(:func:`unlocked`), and are handed back to the queue (:func:`release`).

A worker's key is ``hashtextextended(worker_id, 0)``, PostgreSQL's own 64-bit hash of its id, so
SQL finds it from ``jobs.worker_id``; ``pg_locks`` shows such a key (``objsubid = 1``) as its
high half in ``classid`` and its low half in ``objid``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from datetime import UTC, datetime

import asyncpg
from sqlalchemy import bindparam, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.types import Integer, String, Uuid

from videoq.store.engine import DATABASE_ERRORS, connect, driver_dsn
from videoq.store.tables import Job
from videoq.types import JobStatus

#: A running attempt, as :func:`unlocked` finds it: job id, attempt, worker id.
Lease = tuple[uuid.UUID, int, str]

_LOCK = "SELECT pg_advisory_lock(hashtextextended($1, 0))"

#: The advisory keys held in this database right now.
_HELD = """held AS MATERIALIZED (
    SELECT (classid::int8 << 32) | objid::int8 AS key FROM pg_locks
    WHERE locktype = 'advisory' AND objsubid = 1 AND granted
        AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
)"""

_UNLOCKED = text(f"""
    WITH {_HELD}
    SELECT id, attempts, worker_id FROM jobs
    WHERE queue = :queue AND status = '{JobStatus.RUNNING}' AND worker_id IS NOT NULL
        AND hashtextextended(worker_id, 0) NOT IN (SELECT key FROM held)
        AND hashtextextended(:watcher, 0) IN (SELECT key FROM held)
    LIMIT :limit
""")

# Rows locked in id order, as every multi-row statement on jobs locks them (grouped._locking).
_RELEASE = text(f"""
    WITH {_HELD}, locked AS MATERIALIZED (
        SELECT id, status, attempts, worker_id FROM jobs WHERE id = ANY(:ids)
        ORDER BY id FOR NO KEY UPDATE
    )
    UPDATE jobs SET status = '{JobStatus.QUEUED}', worker_id = NULL, heartbeat_at = NULL,
        updated_at = :now,
        history = jobs.history || jsonb_build_array(jsonb_build_object(
            'attempt', locked.attempts, 'worker_id', locked.worker_id,
            'finished_at', CAST(:finished AS text), 'outcome', 'worker_lost'))
    FROM unnest(:ids, :attempts, :workers) AS u(id, attempt, worker_id), locked
    WHERE jobs.id = locked.id AND locked.id = u.id AND locked.status = '{JobStatus.RUNNING}'
        AND locked.attempts = u.attempt AND locked.worker_id = u.worker_id
        AND hashtextextended(u.worker_id, 0) NOT IN (SELECT key FROM held)
    RETURNING jobs.*
""").bindparams(
    bindparam("ids", type_=ARRAY(Uuid())),
    bindparam("attempts", type_=ARRAY(Integer())),
    bindparam("workers", type_=ARRAY(String())),
)


class SessionLock:
    """One worker's advisory lock, held on a connection of its own.

    :meth:`take` connects and waits for the lock: taken again after a drop while PostgreSQL
    still keeps the previous session (it has not seen that one's socket close), it waits for
    that session to end, and the lock is held all along."""

    def __init__(self, database_url: str, worker_id: str) -> None:
        self.dsn = driver_dsn(database_url)
        self.worker_id = worker_id
        #: How often the lock was taken, and when last (``time.monotonic()``).
        self.takes = 0
        self.taken_at = 0.0
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()

    @property
    def held(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def take(self) -> None:
        await self.aclose()
        name = f"videoq lock {self.worker_id}"[:63]
        conn = await connect(self.dsn, server_settings={"application_name": name})
        try:
            await conn.execute(_LOCK, self.worker_id)
        except BaseException:
            conn.terminate()
            raise
        lost = self._lost = asyncio.Event()
        conn.add_termination_listener(lambda _: lost.set())
        self._conn = conn
        self.takes += 1
        self.taken_at = time.monotonic()

    def settled(self, grace_s: float) -> bool:
        """Whether the lock is held, and was either never lost or taken again at least
        ``grace_s`` ago. (When PostgreSQL restarts, every worker takes its lock again, and the
        first to do so must not take the others for dead.)"""
        return self.held and (self.takes == 1 or time.monotonic() - self.taken_at >= grace_s)

    async def lost(self, check_s: float) -> None:
        """Return once the lock's connection is gone: closed, or failing the round trip made
        on it every ``check_s`` (or not answering it within ``check_s``: it broke without
        closing), which closes it."""
        while self._conn is not None and not self._conn.is_closed():
            conn = self._conn
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), check_s)
                return
            try:
                await conn.fetchval("SELECT 1", timeout=check_s)
            except DATABASE_ERRORS:
                conn.terminate()

    async def aclose(self) -> None:
        """Let go of the lock (its connection closed)."""
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(*DATABASE_ERRORS):
                await conn.close(timeout=2)


async def unlocked(
    session: AsyncSession, queue: str, watcher: str, limit: int = 100
) -> list[Lease]:
    """Running jobs of ``queue`` whose worker's lock nobody holds. None at all unless
    ``watcher`` holds its own: without it, this worker cannot tell its view is current."""
    rows = await session.execute(_UNLOCKED, {"queue": queue, "watcher": watcher, "limit": limit})
    return [(job_id, attempt, worker_id) for job_id, attempt, worker_id in rows.all()]


async def release(session: AsyncSession, leases: list[Lease]) -> list[Job]:
    """Hand the jobs of ``leases`` back to the queue (``queued``, their attempt recorded as
    ``worker_lost``): only those still at that attempt on that worker, whose lock is still
    free. Returns the jobs released."""
    if not leases:
        return []
    now = datetime.now(UTC)
    ids, attempts, workers = (list(column) for column in zip(*leases, strict=True))
    values = {"ids": ids, "attempts": attempts, "workers": workers, "now": now,
              "finished": now.isoformat()}  # fmt: skip
    stmt = select(Job).from_statement(_RELEASE).execution_options(populate_existing=True)
    jobs = list((await session.execute(stmt, values)).scalars())
    await session.commit()
    return jobs
