"""A worker's writes to PostgreSQL, grouped across the jobs it runs.

Each job claims its row, saves a checkpoint per stage, keeps its stage and progress current,
and archives its events. One by one, that is dozens of round trips per job, and with a hundred
jobs in flight the worker spends its time waiting on them. So each kind of write goes through a
:class:`GroupCommit`: writes made while one is in flight wait for the next, and go together as
one statement (:class:`~videoq.batching.GroupCommit`). At low load a write goes at once; under
load the batches grow and the round trips stay few.

Every statement runs in autocommit (it is its own transaction: one round trip) and is guarded
like a state transition: a checkpoint or progress of an attempt that no longer owns its job
(cancelled, or taken over by another worker) is refused, and the attempt is told so.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from videoq.batching import GroupCommit
from videoq.db import Job, StageCheckpoint
from videoq.errors import AttemptSuperseded
from videoq.jobs import sources

log = structlog.get_logger(__name__)

_CLAIM = text(
    f"""
    UPDATE jobs SET status = 'running', attempts = attempts + 1, worker_id = :worker_id,
        started_at = :now, heartbeat_at = :now, updated_at = :now, error = NULL
    WHERE id = ANY(CAST(:job_ids AS uuid[]))
        AND status IN ({", ".join(f"'{s}'" for s in sources("running"))})
    RETURNING *
    """
)
_SAVE = text(
    """
    INSERT INTO job_stages (job_id, stage, attempt, output)
    SELECT u.job_id, u.stage, u.attempt, u.output
    FROM unnest(CAST(:job_ids AS uuid[]), CAST(:stages AS text[]), CAST(:attempts AS int[]),
                CAST(:outputs AS jsonb[])) AS u(job_id, stage, attempt, output)
    JOIN jobs ON jobs.id = u.job_id AND jobs.status = 'running' AND jobs.attempts = u.attempt
    FOR SHARE OF jobs
    ON CONFLICT (job_id, stage) DO UPDATE
    SET output = EXCLUDED.output, attempt = EXCLUDED.attempt, completed_at = now()
    RETURNING job_id, attempt, stage
    """
)
_PROGRESS = text(
    """
    UPDATE jobs SET stage = u.stage, progress = u.progress, updated_at = :now
    FROM unnest(CAST(:job_ids AS uuid[]), CAST(:attempts AS int[]), CAST(:stages AS text[]),
                CAST(:progress AS float8[])) AS u(job_id, attempt, stage, progress)
    WHERE jobs.id = u.job_id AND jobs.status = 'running' AND jobs.attempts = u.attempt
    """
)
_ARCHIVE = text(
    """
    INSERT INTO job_events (job_id, seq, event)
    SELECT * FROM unnest(CAST(:job_ids AS uuid[]), CAST(:seqs AS int[]),
                         CAST(:events AS jsonb[]))
    ON CONFLICT DO NOTHING
    """
)
_FINISH = text(
    """
    UPDATE jobs SET status = u.status, updated_at = :now,
        stage = COALESCE(u.stage, jobs.stage),
        progress = COALESCE(u.progress, jobs.progress),
        result = COALESCE(u.result, jobs.result),
        error = u.error,
        run_at = COALESCE(u.run_at, jobs.run_at),
        finished_at = CASE WHEN u.status IN ('succeeded', 'failed')
                           THEN CAST(:now AS timestamptz) END,
        worker_id = CASE WHEN u.status = 'queued' THEN NULL ELSE jobs.worker_id END,
        heartbeat_at = CASE WHEN u.status = 'queued' THEN NULL ELSE jobs.heartbeat_at END,
        history = jobs.history || jsonb_build_array(u.entry)
    FROM unnest(CAST(:job_ids AS uuid[]), CAST(:attempts AS int[]), CAST(:statuses AS text[]),
                CAST(:stages AS text[]), CAST(:progress AS float8[]), CAST(:results AS jsonb[]),
                CAST(:errors AS jsonb[]), CAST(:run_ats AS timestamptz[]),
                CAST(:entries AS jsonb[]))
        AS u(job_id, attempt, status, stage, progress, result, error, run_at, entry)
    WHERE jobs.id = u.job_id AND jobs.status = 'running' AND jobs.attempts = u.attempt
        AND jobs.worker_id = :worker_id
    RETURNING jobs.*
    """
)
_NOTE = text(
    """
    INSERT INTO job_stages (job_id, stage, attempt, output)
    VALUES (:job_id, :stage, :attempt, CAST(:patch AS jsonb))
    ON CONFLICT (job_id, stage) DO UPDATE
    SET output = job_stages.output || EXCLUDED.output, attempt = EXCLUDED.attempt
    """
)

#: How long writes nobody waits for (progress, event archives) gather before they go.
LINGER_S = 0.05

Checkpoint = tuple[uuid.UUID, int, str, dict[str, Any]]
Progress = tuple[uuid.UUID, int, str, float]


@dataclass(frozen=True)
class Outcome:
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


class Bookkeeper:
    """One worker's writes: claims, checkpoints, progress and event archives, each grouped."""

    def __init__(self, engine: AsyncEngine, worker_id: str) -> None:
        self.engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self.worker_id = worker_id
        self.claim = GroupCommit(self._claim)
        self.finish = GroupCommit(self._finish)
        self.save = GroupCommit(self._save)
        # Nobody waits for these two: they gather for a moment.
        self.archive = GroupCommit(self._archive, linger_s=LINGER_S)
        self._progress = GroupCommit(self._write_progress, linger_s=LINGER_S)

    async def _claim(self, job_ids: list[uuid.UUID]) -> list[Job | None]:
        """``queued``/``scheduled``/``retrying`` → ``running``, counting the attempt."""
        params = {"job_ids": sorted(job_ids), "worker_id": self.worker_id, "now": datetime.now(UTC)}
        async with self.sessions() as session:
            claimed = await session.scalars(select(Job).from_statement(_CLAIM), params)
            by_id = {job.id: job for job in claimed}
        # A job asked for twice in one batch is claimed once: only the first caller runs it.
        return [by_id.pop(job_id, None) for job_id in job_ids]

    async def _finish(self, items: list[Outcome]) -> list[Job | None]:
        """End running attempts: only this worker's, only the attempt still current."""

        def jsonb(value: dict[str, Any] | None) -> str | None:
            return None if value is None else json.dumps(value)

        rows = sorted(items, key=lambda o: o.job_id)  # rows locked in one order: no deadlock
        params = {
            "worker_id": self.worker_id,
            "now": datetime.now(UTC),
            "job_ids": [o.job_id for o in rows],
            "attempts": [o.attempt for o in rows],
            "statuses": [o.status for o in rows],
            "stages": [o.stage for o in rows],
            "progress": [o.progress for o in rows],
            "results": [jsonb(o.result) for o in rows],
            "errors": [jsonb(o.error) for o in rows],
            "run_ats": [o.run_at for o in rows],
            "entries": [json.dumps(o.entry) for o in rows],
        }
        async with self.sessions() as session:
            ended = await session.scalars(select(Job).from_statement(_FINISH), params)
            by_attempt = {(job.id, job.attempts): job for job in ended}
        # Matched by attempt too: a stale attempt's outcome in the same batch was refused.
        return [by_attempt.get((o.job_id, o.attempt)) for o in items]

    async def _save(self, items: list[Checkpoint]) -> list[bool]:
        # Two saves of one attempt's stage cannot share an upsert: the last one wins. (Two
        # attempts' saves can: only the running attempt's passes the guard.)
        rows = sorted({item[:3]: item for item in items}.values(), key=lambda r: r[0])
        params = {
            "job_ids": [r[0] for r in rows],
            "attempts": [r[1] for r in rows],
            "stages": [r[2] for r in rows],
            "outputs": [json.dumps(r[3]) for r in rows],
        }
        async with self.engine.connect() as conn:
            saved = {(row[0], row[1], row[2]) for row in await conn.execute(_SAVE, params)}
        return [item[:3] in saved for item in items]

    async def _write_progress(self, items: list[Progress]) -> list[None]:
        # An attempt's last word wins; rows in one order (job id), as every writer locks them.
        rows = sorted({item[:2]: item for item in items}.values(), key=lambda r: r[0])
        params = {
            "now": datetime.now(UTC),
            "job_ids": [r[0] for r in rows],
            "attempts": [r[1] for r in rows],
            "stages": [r[2] for r in rows],
            "progress": [r[3] for r in rows],
        }
        async with self.engine.connect() as conn:
            await conn.execute(_PROGRESS, params)
        return [None] * len(items)

    async def _archive(self, batches: list[list[dict[str, Any]]]) -> list[None]:
        await store_events(self.engine, [event for events in batches for event in events])
        return [None] * len(batches)

    def progress(self, job_id: uuid.UUID, attempt: int, stage: str, progress: float) -> None:
        """Keep the job row's stage and progress current, without waiting: the events carry
        progress live, the row is for readers who poll. Lost on a crash, never a state."""
        self._progress.submit((job_id, attempt, stage, progress)).add_done_callback(_logged)

    async def note(
        self, job_id: uuid.UUID, attempt: int, stage: str, patch: dict[str, Any]
    ) -> None:
        """Merge ``patch`` into the notes row ``stage`` (concurrent notes serialise on its row
        lock; one statement each, as two of one row cannot share an upsert).

        Not guarded by the attempt, unlike checkpoints: a note records work already paid for
        (a prediction just created), which whoever runs the job next must find and reuse."""
        params = {"job_id": job_id, "attempt": attempt, "stage": stage, "patch": json.dumps(patch)}
        async with self.engine.connect() as conn:
            await conn.execute(_NOTE, params)

    async def aclose(self) -> None:
        for group in (self.claim, self.finish, self.save, self.archive, self._progress):
            await group.aclose()


async def store_events(engine: AsyncEngine, events: list[dict[str, Any]]) -> None:
    """Keep events (numbered, from a job's Redis stream) in ``job_events``; ones already kept
    are skipped."""
    if not events:
        return
    async with engine.connect() as conn:
        await conn.execute(
            _ARCHIVE,
            {
                "job_ids": [uuid.UUID(e["job_id"]) for e in events],
                "seqs": [e["seq"] for e in events],
                "events": [json.dumps(e) for e in events],
            },
        )
        await conn.commit()


def _logged(future: asyncio.Future[None]) -> None:
    """Nobody awaits a progress write: its failure (best effort, like the events) is logged."""
    if not future.cancelled() and (exc := future.exception()) is not None:
        log.warning("progress_store_failed", error=str(exc))


class DbCheckpoints:
    """:class:`videoq.pipeline.Checkpoints` kept in the ``job_stages`` table, for one attempt.

    A stage's notes (paid work in progress, e.g. Replicate prediction ids) live in a row of
    their own, ``stage`` = ``"<stage>.notes"``, whose JSON object is merged key by key with
    ``||`` in one upsert: concurrent notes of one stage serialise on the row lock and never
    lose each other. Completed stages' rows are untouched by notes.

    Writes of an attempt that no longer owns its job raise :class:`AttemptSuperseded`.
    """

    NOTES_SUFFIX = ".notes"

    def __init__(self, books: Bookkeeper, job_id: uuid.UUID, attempt: int) -> None:
        self.books = books
        self.job_id = job_id
        self.attempt = attempt
        # The first attempt ever has nothing to resume from: no query needed.
        self._completed: dict[str, dict[str, Any]] | None = {} if attempt == 1 else None

    async def load(self, stage: str) -> dict[str, Any] | None:
        # One query for every stage at the attempt's start (stages are loaded in order, and
        # only this attempt writes them from then on).
        if self._completed is None:
            async with self.books.engine.connect() as conn:
                rows = await conn.execute(
                    select(StageCheckpoint.stage, StageCheckpoint.output).where(
                        StageCheckpoint.job_id == self.job_id
                    )
                )
                self._completed = {stage: output for stage, output in rows}
        return self._completed.get(stage)

    async def save(self, stage: str, output: dict[str, Any]) -> None:
        if not await self.books.save((self.job_id, self.attempt, stage, output)):
            raise AttemptSuperseded(f"attempt {self.attempt} of job {self.job_id} no longer runs")
        if self._completed is not None:
            self._completed[stage] = output

    async def note(self, stage: str, key: str, value: dict[str, Any] | None) -> None:
        await self.books.note(self.job_id, self.attempt, stage + self.NOTES_SUFFIX, {key: value})

    async def notes(self, stage: str) -> dict[str, dict[str, Any]]:
        async with self.books.engine.connect() as conn:
            entries = (
                await conn.execute(
                    select(StageCheckpoint.output).where(
                        StageCheckpoint.job_id == self.job_id,
                        StageCheckpoint.stage == stage + self.NOTES_SUFFIX,
                    )
                )
            ).scalar()
        return {k: v for k, v in (entries or {}).items() if isinstance(v, dict)}
