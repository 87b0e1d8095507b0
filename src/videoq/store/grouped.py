"""A worker's writes to PostgreSQL, grouped across the jobs it runs.

Each job claims its row, saves a checkpoint per stage, keeps its stage and progress current,
and archives its events as they are published. One by one, that is dozens of round trips per
job, and with a hundred jobs in flight the worker spends its time waiting on them. So each
kind of write goes through a :class:`GroupCommit`: writes made while one is in flight wait for
the next, and go together as one statement (:class:`~videoq.groupcommit.GroupCommit`). At low
load a write goes at once; under load the batches grow and the round trips stay few.

Every statement runs in autocommit (it is its own transaction: one round trip) and is guarded
like a state transition: a checkpoint or progress of an attempt that no longer owns its job
(cancelled, or taken over by another worker) is refused, and the attempt is told so.

These statements are the worker's hot path, so they go to asyncpg directly, on a pool of their
own: SQLAlchemy's pool and execution layers cost several times their CPU (the figures are in
docs/decisions.md "Workers").
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import asyncpg
import structlog
from sqlalchemy.orm import class_mapper

from videoq.groupcommit import GroupCommit
from videoq.store.engine import DirectPool
from videoq.store.events import ARCHIVE_SQL, archive_args
from videoq.store.tables import Job
from videoq.types import TERMINAL, JobStatus, StoredEvent, sources

log = structlog.get_logger(__name__)

_JOB_COLUMNS = tuple(column.name for column in Job.__table__.columns)
#: The states as SQL literals: the guards below are the transitions of videoq.types.
_RUNNING = f"'{JobStatus.RUNNING}'"
_QUEUED = f"'{JobStatus.QUEUED}'"
_AWAITING = f"'{JobStatus.AWAITING_BUDGET}'"
_TERMINAL = ", ".join(f"'{s}'" for s in sorted(TERMINAL))
_TO_RUNNING = ", ".join(f"'{s}'" for s in sources(JobStatus.RUNNING))


def _locking(mode: str) -> str:
    """The row locks of the jobs in $1, taken in id order, as every multi-row statement on
    ``jobs`` here and in the supervisor takes them: whatever plan PostgreSQL picks for the
    statement itself (a hash join locks in the table's physical order), two batches that share
    rows never wait on each other in a cycle. (They did: PostgreSQL's deadlock check then broke
    the cycle after its 1 s ``deadlock_timeout``, failing one batch.)"""
    return f"""WITH locked AS MATERIALIZED (
        SELECT id, status, attempts, worker_id FROM jobs WHERE id = ANY($1::uuid[])
        ORDER BY id FOR {mode}
    )"""


_CLAIM = f"""
    {_locking("NO KEY UPDATE")}
    UPDATE jobs SET status = {_RUNNING}, attempts = jobs.attempts + 1, worker_id = $2,
        started_at = $3, heartbeat_at = $3, updated_at = $3, error = NULL
    FROM locked
    WHERE jobs.id = locked.id
        AND locked.status IN ({_TO_RUNNING})
    RETURNING {", ".join(f"jobs.{c}" for c in _JOB_COLUMNS)}
"""
_SAVE = f"""
    {_locking("SHARE")}
    INSERT INTO job_stages (job_id, stage, attempt, output)
    SELECT u.job_id, u.stage, u.attempt, u.output
    FROM unnest($1::uuid[], $2::text[], $3::int[], $4::jsonb[]) AS u(job_id, stage, attempt, output)
    JOIN locked ON locked.id = u.job_id AND locked.status = {_RUNNING}
        AND locked.attempts = u.attempt
    ON CONFLICT (job_id, stage) DO UPDATE
    SET output = EXCLUDED.output, attempt = EXCLUDED.attempt, completed_at = now()
    RETURNING job_id, attempt, stage
"""
_PROGRESS = f"""
    {_locking("NO KEY UPDATE")}
    UPDATE jobs SET stage = u.stage, progress = u.progress, updated_at = $5
    FROM unnest($1::uuid[], $2::int[], $3::text[], $4::float8[])
        AS u(job_id, attempt, stage, progress), locked
    WHERE jobs.id = locked.id AND locked.id = u.job_id
        AND locked.status = {_RUNNING} AND locked.attempts = u.attempt
"""
_FINISH = f"""
    {_locking("NO KEY UPDATE")}
    UPDATE jobs SET status = u.status, updated_at = $11::timestamptz,
        stage = COALESCE(u.stage, jobs.stage),
        progress = COALESCE(u.progress, jobs.progress),
        result = COALESCE(u.result, jobs.result),
        error = u.error,
        run_at = COALESCE(u.run_at, jobs.run_at),
        finished_at = CASE WHEN u.status IN ({_TERMINAL}) THEN $11::timestamptz END,
        worker_id = CASE WHEN u.status = {_QUEUED} THEN NULL ELSE jobs.worker_id END,
        heartbeat_at = CASE WHEN u.status = {_QUEUED} THEN NULL ELSE jobs.heartbeat_at END,
        history = jobs.history || jsonb_build_array(u.entry),
        retry_base = jobs.retry_base + CASE WHEN u.status = {_AWAITING} THEN 1 ELSE 0 END
    FROM unnest($1::uuid[], $2::int[], $3::text[], $4::text[], $5::float8[], $6::jsonb[],
                $7::jsonb[], $8::timestamptz[], $9::jsonb[])
        AS u(job_id, attempt, status, stage, progress, result, error, run_at, entry), locked
    WHERE jobs.id = locked.id AND locked.id = u.job_id
        AND locked.status = {_RUNNING} AND locked.attempts = u.attempt AND locked.worker_id = $10
    RETURNING {", ".join(f"jobs.{c}" for c in _JOB_COLUMNS)}
"""
_NOTE = """
    INSERT INTO job_stages (job_id, stage, attempt, output)
    VALUES ($1, $2, $3, $4::jsonb)
    ON CONFLICT (job_id, stage) DO UPDATE
    SET output = job_stages.output || EXCLUDED.output, attempt = EXCLUDED.attempt
"""
_CHECKPOINTS = "SELECT stage, output FROM job_stages WHERE job_id = $1"
_NOTES = "SELECT output FROM job_stages WHERE job_id = $1 AND stage = $2"

#: How long writes nobody waits for (progress, event archives) gather before they go.
LINGER_S = 0.05

Checkpoint = tuple[uuid.UUID, int, str, dict[str, Any]]
Progress = tuple[uuid.UUID, int, str, float]


@dataclass(frozen=True)
class AttemptOutcome:
    """How a running attempt ended: ``succeeded``, ``failed``, ``retrying`` (at ``run_at``) or
    ``queued`` (handed back: the worker stopped). ``entry`` is its record in the history;
    ``stage`` and ``progress`` where it got to (the row's own may lag behind)."""

    job_id: uuid.UUID
    attempt: int
    status: str
    entry: dict[str, Any]
    stage: str | None = None
    progress: float | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    run_at: datetime | None = None


class GroupedWriter:
    """One worker's writes: claims, checkpoints, progress and event archives, each grouped.

    Opens its connections (at most ``max_connections``) on first use; :meth:`aclose` closes
    them once the writes already submitted are done (and they open again if it is used again)."""

    def __init__(
        self,
        database_url: str,
        worker_id: str,
        *,
        max_connections: int = 10,
        server_settings: dict[str, str] | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.pool = DirectPool(
            database_url, max_size=max_connections, application_name=f"videoq {worker_id}",
            server_settings=server_settings, init=_codecs,
        )  # fmt: skip
        self.claim = GroupCommit(self._write_claims)
        self.finish = GroupCommit(self._write_outcomes)
        self.save = GroupCommit(self._write_checkpoints)
        # Nobody waits for these: they gather for a moment.
        self._progress = GroupCommit(self._write_progress, linger_s=LINGER_S)
        self._events = GroupCommit(self._write_events, linger_s=LINGER_S)

    async def _write_claims(self, job_ids: list[uuid.UUID]) -> list[Job | None]:
        """``queued``/``scheduled``/``retrying`` → ``running``, counting the attempt."""
        pool = await self.pool()
        rows = await pool.fetch(_CLAIM, sorted(job_ids), self.worker_id, datetime.now(UTC))
        by_id = {row["id"]: _job(row) for row in rows}
        # A job asked for twice in one batch is claimed once: only the first caller runs it.
        return [by_id.pop(job_id, None) for job_id in job_ids]

    async def _write_outcomes(self, items: list[AttemptOutcome]) -> list[Job | None]:
        """End running attempts: only this worker's, only the attempt still current."""
        rows = sorted(items, key=lambda o: o.job_id)  # rows locked in one order: no deadlock
        pool = await self.pool()
        ended = await pool.fetch(
            _FINISH,
            [o.job_id for o in rows],
            [o.attempt for o in rows],
            [o.status for o in rows],
            [o.stage for o in rows],
            [o.progress for o in rows],
            [_jsonb(o.result) for o in rows],
            [_jsonb(o.error) for o in rows],
            [o.run_at for o in rows],
            [json.dumps(o.entry) for o in rows],
            self.worker_id,
            datetime.now(UTC),
        )
        by_attempt = {(row["id"], row["attempts"]): _job(row) for row in ended}
        # Matched by attempt too: a stale attempt's outcome in the same batch was refused.
        return [by_attempt.get((o.job_id, o.attempt)) for o in items]

    async def _write_checkpoints(self, items: list[Checkpoint]) -> list[bool]:
        # Two saves of one attempt's stage cannot share an upsert: the last one wins. (Two
        # attempts' saves can: only the running attempt's passes the guard.)
        rows = sorted({item[:3]: item for item in items}.values(), key=lambda r: r[0])
        pool = await self.pool()
        saved = await pool.fetch(
            _SAVE,
            [r[0] for r in rows],
            [r[2] for r in rows],
            [r[1] for r in rows],
            [json.dumps(r[3]) for r in rows],
        )
        done = {(row["job_id"], row["attempt"], row["stage"]) for row in saved}
        return [item[:3] in done for item in items]

    async def _write_progress(self, items: list[Progress]) -> list[None]:
        # An attempt's last word wins; rows in one order (job id), as every writer locks them.
        rows = sorted({item[:2]: item for item in items}.values(), key=lambda r: r[0])
        pool = await self.pool()
        await pool.execute(
            _PROGRESS,
            [r[0] for r in rows],
            [r[1] for r in rows],
            [r[2] for r in rows],
            [r[3] for r in rows],
            datetime.now(UTC),
        )
        return [None] * len(items)

    async def _write_events(self, items: list[list[StoredEvent]]) -> list[None]:
        pool = await self.pool()
        await pool.execute(ARCHIVE_SQL, *archive_args([e for events in items for e in events]))
        return [None] * len(items)

    def progress(self, job_id: uuid.UUID, attempt: int, stage: str, progress: float) -> None:
        """Keep the job row's stage and progress current, without waiting: the events carry
        progress live, the row is for readers who poll. Lost on a crash, never a state."""
        done = partial(_logged, "progress_store_failed")
        self._progress.submit((job_id, attempt, stage, progress)).add_done_callback(done)

    def keep_events(self, events: list[StoredEvent]) -> None:
        """Archive events just published (ones already kept are skipped), without waiting:
        they go within :data:`LINGER_S`, grouped with other jobs'. A failure is logged; the
        events are still in their Redis stream."""
        self._events.submit(events).add_done_callback(partial(_logged, "events_store_failed"))

    async def note(
        self, job_id: uuid.UUID, attempt: int, stage: str, patch: dict[str, Any]
    ) -> None:
        """Merge ``patch`` into the notes row ``stage`` (concurrent notes serialise on its row
        lock; one statement each, as two of one row cannot share an upsert).

        Not guarded by the attempt, unlike checkpoints: a note records work already paid for
        (a prediction just created), which whoever runs the job next must find and reuse."""
        pool = await self.pool()
        await pool.execute(_NOTE, job_id, stage, attempt, json.dumps(patch))

    async def checkpoints(self, job_id: uuid.UUID) -> dict[str, dict[str, Any]]:
        """Every ``job_stages`` row of the job (completed stages and notes), by stage."""
        pool = await self.pool()
        return {row["stage"]: row["output"] for row in await pool.fetch(_CHECKPOINTS, job_id)}

    async def notes(self, job_id: uuid.UUID, stage: str) -> dict[str, Any] | None:
        pool = await self.pool()
        value: dict[str, Any] | None = await pool.fetchval(_NOTES, job_id, stage)
        return value

    async def aclose(self) -> None:
        for group in (self.claim, self.finish, self.save, self._progress, self._events):
            await group.aclose()
        await self.pool.aclose()


async def _codecs(conn: asyncpg.Connection) -> None:
    """JSON in as text (encoded once, by us), out as Python objects."""
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=str, decoder=json.loads, schema="pg_catalog")


def _jsonb(value: dict[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value)


_JOBS = class_mapper(Job).class_manager


def _job(row: asyncpg.Record) -> Job:
    """A :class:`~videoq.store.tables.Job` from a ``RETURNING`` row, for reading only (never
    added to a session). Filled in place, as SQLAlchemy's own loading does: its constructor's
    attribute events cost more than the statement, and a job makes two (claim and outcome)."""
    job = _JOBS.new_instance()
    job.__dict__.update(row.items())
    return job


def _logged(what: str, future: asyncio.Future[None]) -> None:
    """Nobody awaits a progress or event archive write: its failure (best effort, like the
    events) is logged as ``what``."""
    if not future.cancelled() and (exc := future.exception()) is not None:
        log.warning(what, error=str(exc))
