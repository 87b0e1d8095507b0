"""A dead worker is seen by its PostgreSQL session: the advisory lock it held for its life is let
go with its connection, and its running jobs go to another worker at once, resumed from their
checkpoints. The worker processes here run with a heartbeat timeout (``worker_stale_s``) far
longer than the tests wait, so the heartbeat path cannot be what hands a job over; the
spec-checked provider mocks count every output they would bill."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy import text

from tests.conftest import (
    Providers,
    bookkeeper,
    stage_rows,
    until_every_scene_noted,
    until_stage_kept,
)
from tests.processes import WorkerProcess
from videoq.client import Client
from videoq.pipeline import STAGES
from videoq.schemas import JobCreate
from videoq.settings import Settings
from videoq.store import jobs, liveness
from videoq.store.liveness import SessionLock
from videoq.types import scene_count

DURATION_S = 15
SCENES = scene_count(DURATION_S)
#: Longer than any test here waits: a job handed over was handed over by the death watch.
SLOW_HEARTBEAT_TIMEOUT = {"VIDEOQ_WORKER_STALE_S": "120"}


async def lock_holder(sessions: Any, worker_id: str) -> int | None:
    """The backend pid holding ``worker_id``'s session lock, if any."""
    async with sessions() as session:
        pid: int | None = await session.scalar(
            text(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1"
                " AND granted AND (classid::int8 << 32) | objid::int8"
                " = hashtextextended(:worker, 0)"
            ),
            {"worker": worker_id},
        )
        return pid


async def new_job(sessions: Any, queue: str) -> uuid.UUID:
    async with sessions() as session:
        job, _ = await jobs.create_job(
            session, "t-takeover", JobCreate(product_name="Nimbus"), default_max_retries=1,
            queue=queue,
        )  # fmt: skip
    return job.id


def lock(settings: Settings, worker_id: str) -> SessionLock:
    return SessionLock(settings.database_url or "", worker_id)


async def test_a_job_is_released_once_its_workers_lock_is_let_go(
    sessions: Any, settings: Settings
) -> None:
    queue = settings.queue_name
    watcher, owner = lock(settings, "watcher"), lock(settings, f"owner-{uuid.uuid4().hex[:8]}")
    await watcher.take()
    await owner.take()
    try:
        job_id = await new_job(sessions, queue)
        assert await bookkeeper(sessions, owner.worker_id).claim(job_id) is not None
        async with sessions() as session:
            assert await liveness.unlocked(session, queue, watcher.worker_id) == []
        await owner.aclose()
        async with sessions() as session:
            leases = await liveness.unlocked(session, queue, watcher.worker_id)
            assert leases == [(job_id, 1, owner.worker_id)]
            # A worker that does not hold its own lock judges nobody.
            assert await liveness.unlocked(session, queue, "holds-nothing") == []
            [released] = await liveness.release(session, leases)
        assert (released.status, released.worker_id, released.attempts) == ("queued", None, 1)
        assert released.history[-1]["outcome"] == "worker_lost"
        assert released.history[-1]["worker_id"] == owner.worker_id
        # Another worker's claim takes it as the next attempt; the old lease is spent.
        claimed = await bookkeeper(sessions, "next").claim(job_id)
        assert claimed is not None and (claimed.status, claimed.attempts) == ("running", 2)
        async with sessions() as session:
            assert await liveness.release(session, leases) == []
    finally:
        await watcher.aclose()
        await owner.aclose()


async def test_a_worker_that_takes_its_lock_again_keeps_its_jobs(
    sessions: Any, settings: Settings
) -> None:
    owner = lock(settings, f"owner-{uuid.uuid4().hex[:8]}")
    await owner.take()
    try:
        job_id = await new_job(sessions, settings.queue_name)
        assert await bookkeeper(sessions, owner.worker_id).claim(job_id) is not None
        pid = await lock_holder(sessions, owner.worker_id)
        async with sessions() as session:
            await session.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        await asyncio.wait_for(owner.lost(check_s=30), 5)  # noticed as it closes, not polled
        assert not owner.held
        await owner.take()
        assert await lock_holder(sessions, owner.worker_id) not in (None, pid)
        assert not owner.settled(grace_s=60) and owner.settled(grace_s=0)
        async with sessions() as session:
            assert await liveness.release(session, [(job_id, 1, owner.worker_id)]) == []
    finally:
        await owner.aclose()


def pair(settings: Settings, providers: Providers, tmp_path: Any) -> list[WorkerProcess]:
    env = {**providers.env, **SLOW_HEARTBEAT_TIMEOUT}
    return [WorkerProcess(settings, tmp_path / "logs", **env).start() for _ in range(2)]


def paid_once(providers: Providers) -> None:
    assert providers.anthropic.paid == 1
    assert providers.elevenlabs.paid == 1
    assert providers.replicate.paid == SCENES
    for mock in providers.all():
        assert mock.invalid == [], f"{type(mock).__name__} saw requests off the spec"


@contextlib.asynccontextmanager
async def mid_job(
    client: Client, settings: Settings, providers: Providers, redis: Redis, sessions: Any,
    tmp_path: Any, name: str,
) -> AsyncIterator[tuple[dict[str, WorkerProcess], Any, str]]:  # fmt: skip
    """Two workers, and a job one of them runs with every scene's prediction noted (the
    providers hold the renders): the workers by id, the job, its worker's id. Both workers
    are stopped at the end."""
    workers = pair(settings, providers, tmp_path)
    try:
        by_id = {await w.registered(redis): w for w in workers}
        job = await client.submit(product_name=name, duration_s=DURATION_S)
        await until_every_scene_noted(sessions, job.id, SCENES, workers[0])
        await until_stage_kept(sessions, job.id, "voice_gen")  # it runs beside video_gen
        owner = (await client.get(job.id)).worker_id
        assert owner is not None
        yield by_id, job, owner
    finally:
        for w in workers:
            w.stop()


@pytest.mark.timeout(180)
async def test_kill_9_hands_the_job_to_the_other_worker_without_the_heartbeat_timeout(
    live_api: Any, client: Client, settings: Settings, providers: Providers, redis: Redis,
    sessions: Any, tmp_path: Any,
) -> None:  # fmt: skip
    async with mid_job(client, settings, providers, redis, sessions, tmp_path, "Takeover") as (
        by_id, job, owner,
    ):  # fmt: skip
        [(other_id, survivor)] = [(i, w) for i, w in by_id.items() if i != owner]
        by_id[owner].signal(signal.SIGKILL)
        await by_id[owner].exited()
        providers.release()
        final = await client.wait(job.id, timeout=60)
    assert final.status == "succeeded", survivor.output()
    assert (final.attempts, final.worker_id) == (2, other_id)
    assert final.model_extra is not None
    assert [h["outcome"] for h in final.model_extra["history"]] == ["worker_lost", "succeeded"]
    assert "job_released_worker_dead" in survivor.output()
    rows = await stage_rows(sessions, job.id)
    assert {stage: rows[stage][0] for stage in STAGES} == {
        "script_gen": 1, "voice_gen": 1, "video_gen": 2, "compositing": 2,
    }  # fmt: skip
    paid_once(providers)


@pytest.mark.timeout(180)
async def test_a_live_worker_whose_lock_connection_is_severed_keeps_its_job(
    live_api: Any, client: Client, settings: Settings, providers: Providers, redis: Redis,
    sessions: Any, tmp_path: Any,
) -> None:  # fmt: skip
    async with mid_job(client, settings, providers, redis, sessions, tmp_path, "Severed") as (
        by_id, job, owner,
    ):  # fmt: skip
        severed = await lock_holder(sessions, owner)
        async with sessions() as session:
            await session.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": severed})
        deadline = time.monotonic() + 10
        while await lock_holder(sessions, owner) in (None, severed):
            assert time.monotonic() < deadline, by_id[owner].output()
            await asyncio.sleep(0.05)
        await asyncio.sleep(2)  # several death-watch periods, and heartbeats of the owner
        current = await client.get(job.id)
        assert (current.status, current.attempts, current.worker_id) == ("running", 1, owner)
        providers.release()
        final = await client.wait(job.id, timeout=60)
    assert final.status == "succeeded", by_id[owner].output()
    assert (final.attempts, final.worker_id) == (1, owner)
    assert "worker_lock_taken_again" in by_id[owner].output()
    assert not any("job_released_worker_dead" in w.output() for w in by_id.values())
    events = [e async for e in client.events(job.id, after=0)]
    assert [e.status for e in events if e.type == "status"].count("succeeded") == 1
    paid_once(providers)
