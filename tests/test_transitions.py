"""The guarded state transitions of :mod:`videoq.jobs` on the real PostgreSQL: every move is one
``UPDATE … WHERE status IN (…) [AND attempts = n]``, so a stale worker or a racing cancel cannot
overwrite a newer state."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from arq import create_pool
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix
from redis.asyncio import Redis
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.conftest import bookkeeper
from videoq import store
from videoq.broker import queue
from videoq.schemas import JobCreate
from videoq.settings import Settings
from videoq.store import jobs
from videoq.types import JobStatus
from videoq.workers import supervisor, task
from videoq.workers.state import WorkerState


async def new_job(sessions: Any) -> uuid.UUID:
    async with sessions() as session:
        job, created = await jobs.create_job(
            session, f"t-{uuid.uuid4().hex[:8]}", JobCreate(product_name="Nimbus"),
            default_max_retries=3,
        )  # fmt: skip
    assert created and job.status == "queued" and job.attempts == 0
    return job.id


async def row(sessions: async_sessionmaker[AsyncSession], job_id: uuid.UUID) -> store.Job:
    async with sessions() as session:
        job = await session.get(store.Job, job_id)
        assert job is not None
        return job


async def start_attempt(sessions: Any, job_id: uuid.UUID, worker_id: str) -> store.Job | None:
    """A worker's claim: ``queued``/``scheduled``/``retrying`` → ``running``, a new attempt."""
    return await bookkeeper(sessions, worker_id).claim(job_id)


async def force(sessions: Any, job_id: uuid.UUID, status: str, **values: Any) -> None:
    """Put a job in a state directly (test setup, bypassing the guards)."""
    async with sessions() as session:
        stmt = update(store.Job).where(store.Job.id == job_id).values(status=status, **values)
        await session.execute(stmt)
        await session.commit()


async def test_start_attempt_claims_and_counts_attempts(sessions: Any) -> None:
    job_id = await new_job(sessions)
    async with sessions() as session:
        first = await start_attempt(sessions, job_id, "w1")
    assert first is not None
    assert (first.status, first.attempts, first.worker_id) == ("running", 1, "w1")
    assert first.started_at is not None
    async with sessions() as session:
        assert await jobs.transition(session, job_id, "retrying", attempt=1) is not None
        second = await start_attempt(sessions, job_id, "w2")
    assert second is not None and (second.attempts, second.worker_id) == (2, "w2")
    assert (await row(sessions, job_id)).attempts == 2


async def test_start_attempt_refuses_a_job_already_running(sessions: Any) -> None:
    """A duplicate delivery of the same job does not start a second attempt."""
    job_id = await new_job(sessions)
    assert await start_attempt(sessions, job_id, "w1") is not None
    assert await start_attempt(sessions, job_id, "w2") is None
    current = await row(sessions, job_id)
    assert (current.status, current.attempts, current.worker_id) == ("running", 1, "w1")


@pytest.mark.parametrize("to", ["succeeded", "failed", "retrying", "cancelled", "queued"])
async def test_a_stale_attempt_cannot_move_the_job(sessions: Any, to: str) -> None:
    job_id = await new_job(sessions)
    async with sessions() as session:
        await start_attempt(sessions, job_id, "old")
        await jobs.transition(session, job_id, "retrying", attempt=1)
        await start_attempt(sessions, job_id, "new")
        # The first attempt's worker wakes up late and reports an outcome.
        assert await jobs.transition(session, job_id, to, attempt=1, worker_id="old") is None
    current = await row(sessions, job_id)
    assert (current.status, current.attempts, current.worker_id) == ("running", 2, "new")
    async with sessions() as session:  # the current attempt still can
        moved = await jobs.transition(session, job_id, to, attempt=2)
    assert moved is not None and moved.status == to


@pytest.mark.parametrize("to", list(JobStatus))
async def test_succeeded_is_final(sessions: Any, to: str) -> None:
    job_id = await new_job(sessions)
    async with sessions() as session:
        await start_attempt(sessions, job_id, "w1")
        assert await jobs.transition(session, job_id, "succeeded", attempt=1) is not None
        assert await jobs.transition(session, job_id, to) is None
        assert await jobs.transition(session, job_id, to, attempt=1) is None
        assert await start_attempt(sessions, job_id, "w2") is None
    current = await row(sessions, job_id)
    assert (current.status, current.attempts) == ("succeeded", 1)


async def test_a_cancelled_job_cannot_become_running(sessions: Any) -> None:
    job_id = await new_job(sessions)
    async with sessions() as session:
        assert await jobs.transition(session, job_id, "cancelled") is not None
        assert await start_attempt(sessions, job_id, "w1") is None
        assert await jobs.transition(session, job_id, "running", attempt=0) is None
        assert await jobs.transition(session, job_id, "succeeded") is None
    current = await row(sessions, job_id)
    assert (current.status, current.attempts, current.worker_id) == ("cancelled", 0, None)
    # Retrying a cancelled job requeues it; only then may it run.
    async with sessions() as session:
        assert await jobs.transition(session, job_id, "queued") is not None
        again = await start_attempt(sessions, job_id, "w1")
    assert again is not None and again.attempts == 1


async def test_cancelling_a_running_job_stops_its_attempt_from_finishing(sessions: Any) -> None:
    job_id = await new_job(sessions)
    async with sessions() as session:
        await start_attempt(sessions, job_id, "w1")
        assert await jobs.transition(session, job_id, "cancelled") is not None
        for to in ("succeeded", "retrying", "running"):
            assert await jobs.transition(session, job_id, to, attempt=1) is None
    assert (await row(sessions, job_id)).status == "cancelled"


@pytest.mark.parametrize(
    ("start", "to"),
    [
        ("queued", "succeeded"),  # a job must run before it succeeds
        ("scheduled", "succeeded"),
        ("failed", "running"),  # the dead-letter list is left only through a retry (queued)
        ("failed", "succeeded"),
        ("cancelled", "failed"),
    ],
)
async def test_transitions_outside_the_state_machine_are_refused(
    sessions: Any, start: str, to: str
) -> None:
    job_id = await new_job(sessions)
    await force(sessions, job_id, start)
    async with sessions() as session:
        assert await jobs.transition(session, job_id, to) is None
    assert (await row(sessions, job_id)).status == start


async def test_progress_is_recorded_only_for_the_current_running_attempt(sessions: Any) -> None:
    job_id = await new_job(sessions)
    await start_attempt(sessions, job_id, "w1")
    books = bookkeeper(sessions, "w1")
    books.progress(job_id, 1, "voice_gen", 40.0)
    books.progress(job_id, 0, "compositing", 90.0)  # a stale attempt, in the same batch
    await books.aclose()
    current = await row(sessions, job_id)
    assert (current.stage, current.progress) == ("voice_gen", 40.0)
    async with sessions() as session:
        await jobs.transition(session, job_id, "cancelled")
    books.progress(job_id, 1, "video_gen", 60.0)  # no longer running
    await books.aclose()
    assert (await row(sessions, job_id)).progress == 40.0


@pytest.fixture
async def worker_state(base_settings: Settings, redis: Redis) -> AsyncIterator[WorkerState]:
    assert base_settings.database_url
    engine = store.create_engine(base_settings.database_url)
    arq_redis = ArqRedis(redis.connection_pool)  # a worker's client type, on the same pool
    yield WorkerState(
        base_settings, engine, store.sessionmaker(engine), arq_redis, f"w-{uuid.uuid4().hex[:8]}"
    )
    await engine.dispose()


async def test_a_job_of_a_dead_worker_is_taken_over(sessions: Any, worker_state: Any) -> None:
    job_id = await new_job(sessions)
    async with sessions() as session:
        await start_attempt(sessions, job_id, "dead-worker")
        # Its last heartbeat is older than worker_stale_s: the worker is gone.
        stale = datetime.now(UTC) - timedelta(seconds=worker_state.settings.worker_stale_s + 1)
        await session.execute(
            update(store.Job).where(store.Job.id == job_id).values(heartbeat_at=stale)
        )
        await session.commit()
    claimed = await task._claim(worker_state, job_id)
    assert claimed is not None
    assert (claimed.status, claimed.attempts) == ("running", 2)
    assert claimed.worker_id == worker_state.worker_id


async def test_a_job_of_a_live_worker_is_not_taken_over(
    sessions: Any, redis: Redis, worker_state: Any
) -> None:
    """A heartbeating worker keeps its job (start_attempt records a fresh heartbeat)."""
    job_id = await new_job(sessions)
    live = f"live-{uuid.uuid4().hex[:8]}"
    await start_attempt(sessions, job_id, live)
    assert await task._claim(worker_state, job_id) is None
    current = await row(sessions, job_id)
    assert (current.status, current.attempts, current.worker_id) == ("running", 1, live)


async def test_a_stopping_worker_cannot_revive_a_job_cancelled_meanwhile(sessions: Any) -> None:
    """SIGTERM's requeue is guarded like every worker outcome: still running, still its own."""
    job_id = await new_job(sessions)
    async with sessions() as session:
        await start_attempt(sessions, job_id, "w1")
        assert await jobs.transition(session, job_id, "cancelled") is not None
        requeued = await jobs.transition(
            session, job_id, "queued", attempt=1, owned_by="w1", only_from=("running",)
        )
    assert requeued is None
    assert (await row(sessions, job_id)).status == "cancelled"


async def test_worker_outcomes_need_the_worker_to_still_own_the_attempt(sessions: Any) -> None:
    job_id = await new_job(sessions)
    async with sessions() as session:
        await start_attempt(sessions, job_id, "w1")
        stranger = await jobs.transition(
            session, job_id, "succeeded", attempt=1, owned_by="w2", only_from=("running",)
        )
        owner = await jobs.transition(
            session, job_id, "succeeded", attempt=1, owned_by="w1", only_from=("running",)
        )
    assert stranger is None and owner is not None and owner.status == "succeeded"


async def test_manual_retry_never_requeues_a_running_job(sessions: Any) -> None:
    """The retry's UPDATE itself is limited to failed/cancelled, whatever was read before."""
    job_id = await new_job(sessions)
    async with sessions() as session:
        await start_attempt(sessions, job_id, "w1")
        moved = await jobs.transition(
            session, job_id, "queued", only_from=("failed", "cancelled"), worker_id=None
        )
    assert moved is None
    current = await row(sessions, job_id)
    assert (current.status, current.worker_id) == ("running", "w1")


async def test_reconciler_clears_only_in_progress_keys_set_long_ago(
    sessions: Any, base_settings: Settings
) -> None:
    """A worker that died after recording an outcome leaves arq's in-progress key behind; it is
    cleared. A key set moments ago is a worker starting the job out of a long backlog (the row
    is still queued, and old): clearing it would let a second worker start the same job."""
    assert base_settings.redis_url
    name = f"reconcile:{uuid.uuid4().hex[:6]}"
    settings = base_settings.model_copy(update={"queue_name": name})
    redis = await create_pool(queue.redis_settings(settings))
    engine = store.create_engine(settings.database_url or "")
    state = WorkerState(settings, engine, store.sessionmaker(engine), redis, "w-reconcile")
    old = datetime.now(UTC) - timedelta(seconds=settings.worker_stale_s + 5)
    ids = []
    for _ in range(2):
        async with sessions() as session:
            job, _ = await jobs.create_job(
                session, "t-reconcile", JobCreate(product_name="Nimbus"), default_max_retries=0,
                queue=name,
            )  # fmt: skip
            await session.execute(
                update(store.Job).where(store.Job.id == job.id).values(updated_at=old)
            )
            await session.commit()
        assert await queue.enqueue_job(redis, settings, job)
        ids.append(str(job.id))
    full_ttl_ms = int((queue.arq_timeout_s(settings) + 10) * 1000)
    starting, abandoned = (in_progress_key_prefix + i for i in ids)
    await redis.psetex(starting, full_ttl_ms - 50, b"1")
    await redis.psetex(abandoned, full_ttl_ms - int((settings.worker_stale_s + 5) * 1000), b"1")
    try:
        await supervisor.reconcile_once(state)
        assert await redis.exists(starting) == 1
        assert await redis.exists(abandoned) == 0
    finally:
        await redis.delete(name, starting, *(job_key_prefix + i for i in ids))
        await redis.aclose()
        await engine.dispose()


async def test_a_stale_in_progress_key_is_checked_and_cleared_in_one_step(
    base_settings: Settings, redis: Redis
) -> None:
    """The reconciler read the key's age a while ago; if a worker took the job again since,
    the fresh key must survive the clearing."""
    job_id = f"retaken-{uuid.uuid4().hex[:8]}"
    full_ttl_ms = int((queue.arq_timeout_s(base_settings) + 10) * 1000)
    key = in_progress_key_prefix + job_id
    await redis.psetex(key, full_ttl_ms - 100, b"1")  # set again just now
    assert not await queue.clear_stale_in_progress(redis, base_settings, [job_id])
    assert await redis.exists(key) == 1
    await redis.psetex(key, full_ttl_ms - int((base_settings.worker_stale_s + 1) * 1000), b"1")
    assert await queue.clear_stale_in_progress(redis, base_settings, [job_id])
    assert await redis.exists(key) == 0
