"""Job lifecycle with in-process arq workers and injected fake pipelines: cancel, scheduling,
retries and dead letters, manual retry from checkpoints, timeouts, operations routes."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from arq import Retry, create_pool, func
from arq.constants import in_progress_key_prefix, retry_key_prefix
from redis.asyncio import Redis

from tests.conftest import LiveApi, auth, new_key, running_worker
from tests.fakes import runs
from videoq import store
from videoq.broker import keys, queue, registry
from videoq.client import ApiError, Client, Event
from videoq.pipeline import STAGES
from videoq.settings import Settings
from videoq.workers import supervisor
from videoq.workers.worker import VideoqWorker, _End


def fake(settings: Settings, name: str) -> Settings:
    return settings.model_copy(update={"pipeline": f"tests.fakes:{name}"})


def holding(settings: Settings, product_name: str) -> tuple[Settings, Path]:
    """Settings running the ``held`` fake, and the file that holds ``product_name``'s job at
    the end of its pipeline until it is removed (created here)."""
    held = fake(settings, "held")
    hold = held.scratch / f"{product_name}.hold"
    hold.parent.mkdir(parents=True, exist_ok=True)
    hold.touch()
    return held, hold


async def until(event_stream: AsyncIterator[Event], predicate: Callable[[Event], bool]) -> Event:
    async for event in event_stream:
        if predicate(event):
            return event
    raise AssertionError("the stream ended first")


async def test_cancelling_a_queued_job_means_it_never_starts(
    live_api: LiveApi, client: Client, settings: Settings, redis: Redis
) -> None:
    job = await client.submit(product_name="Never Runs")
    cancelled = await client.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert await redis.zscore(settings.queue_name, job.id) is None  # off the arq queue
    async with running_worker(fake(settings, "quick")):
        other = await client.submit(product_name="Runs")
        assert (await client.wait(other.id, timeout=30)).status == "succeeded"
    final = await client.get(job.id)
    assert final.status == "cancelled" and final.attempts == 0
    assert job.id not in {r[0] for r in runs(settings.scratch)}
    events = [e async for e in client.events(job.id, after=0)]
    assert [e.status for e in events if e.type == "status"] == ["cancelled"]


async def test_cancel_of_a_finished_or_foreign_job_is_refused(
    live_api: LiveApi, client: Client, settings: Settings, sessions: Any
) -> None:
    async with running_worker(fake(settings, "quick")):
        job = await client.submit(product_name="Done")
        await client.wait(job.id, timeout=30)
    with pytest.raises(ApiError) as finished:
        await client.cancel(job.id)
    assert finished.value.status == 409 and finished.value.code == "conflict"
    async with Client(live_api.url, await new_key(sessions)) as stranger:
        with pytest.raises(ApiError) as foreign:
            await stranger.cancel(job.id)
    assert foreign.value.status == 404


async def test_cancelling_a_running_job_stops_it_on_its_worker(
    live_api: LiveApi, client: Client, settings: Settings
) -> None:
    # Heartbeats a minute apart: only the pub/sub cancel signal can stop it within the wait.
    slow = fake(settings, "slow").model_copy(update={"heartbeat_s": 60.0, "worker_stale_s": 180.0})
    async with running_worker(slow) as worker:
        job = await client.submit(product_name="Stop Me")
        await until(client.events(job.id), lambda e: e.stage == "script_gen")
        state = worker.ctx["videoq"]
        task = state.running[uuid.UUID(job.id)].task
        cancelled = await client.cancel(job.id)
        assert cancelled.status == "cancelled"
        done, _ = await asyncio.wait({task}, timeout=5)  # the attempt ends, well before 30 s
        assert done == {task} and not task.cancelled()  # ended normally, not as a crash
        assert state.running == {}
    final = await client.get(job.id)
    assert final.status == "cancelled"
    assert final.model_extra is not None
    assert [h["outcome"] for h in final.model_extra["history"]] == ["cancelled"]


async def test_scheduled_job_waits_for_run_at_and_can_be_cancelled(
    live_api: LiveApi, client: Client, settings: Settings
) -> None:
    async with running_worker(fake(settings, "quick")):
        job = await client.submit(product_name="Later", delay_s=1.0)
        doomed = await client.submit(product_name="Never", delay_s=1.0)
        assert job.status == "scheduled" and doomed.status == "scheduled"
        await client.cancel(doomed.id)
        final = await client.wait(job.id, timeout=30)
    assert final.status == "succeeded"
    assert final.model_extra is not None
    run_at = datetime.fromisoformat(final.model_extra["run_at"])
    assert final.started_at is not None and final.started_at >= run_at
    assert (await client.get(doomed.id)).status == "cancelled"
    assert doomed.id not in {r[0] for r in runs(settings.scratch)}


async def test_retries_then_dead_letter_then_manual_retry_resumes_from_checkpoints(
    live_api: LiveApi, client: Client, settings: Settings
) -> None:
    async with running_worker(fake(settings, "flaky")):
        marker = settings.scratch / "Flaky.fail"
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        job = await client.submit(product_name="Flaky", max_retries=2)
        statuses = [e.status async for e in client.events(job.id, after=0) if e.type == "status"]
        failed = await client.get(job.id)
        assert failed.status == "failed" and failed.attempts == 3
        assert failed.stage == "voice_gen"  # where it failed (the row's own writes lag behind)
        assert failed.error is not None and failed.error.code == "provider_unavailable"
        assert statuses.count("retrying") == 2 and statuses[-1] == "failed"
        assert failed.model_extra is not None
        outcomes = [h["outcome"] for h in failed.model_extra["history"]]
        assert outcomes == ["retrying", "retrying", "failed"]

        marker.unlink()
        requeued = await client.retry(job.id)
        assert requeued.status == "queued" and requeued.error is None
        final = await client.wait(job.id, timeout=30)
    assert final.status == "succeeded" and final.attempts == 4
    stages = Counter(stage for job_id, stage, _, _ in runs(settings.scratch) if job_id == job.id)
    # script_gen was checkpointed on the first attempt and never paid for again.
    assert stages == {"script_gen": 1, "voice_gen": 4, "video_gen": 1, "compositing": 1}
    with pytest.raises(ApiError) as again:
        await client.retry(job.id)
    assert again.value.status == 409


async def test_job_timeout_from_options_fails_the_job(
    live_api: LiveApi, client: Client, settings: Settings
) -> None:
    async with running_worker(fake(settings, "slow")):
        job = await client.submit(product_name="Too Slow", options={"job_timeout_s": 0.3})
        final = await client.wait(job.id, timeout=30)
    assert final.status == "failed"
    assert final.error is not None and final.error.code == "job_timeout"


async def test_operations_routes_show_workers_and_queue(
    asgi_client: httpx.AsyncClient, settings: Settings, sessions: Any, api_key: str
) -> None:
    admin, tenant = auth(await new_key(sessions, admin=True)), auth(api_key)
    async with running_worker(fake(settings, "quick")) as worker:
        state = worker.ctx["videoq"]
        await supervisor.beat(state)  # registers now rather than at the next interval
        listed = (await asgi_client.get("/v1/workers", headers=admin)).json()["data"]
        mine = [w for w in listed if w["id"] == state.worker_id]
        assert mine and mine[0]["alive"] and mine[0]["queue"] == settings.queue_name
        assert (await asgi_client.get("/v1/workers", headers=tenant)).status_code == 403
        stats = await asgi_client.get("/v1/queue/stats", headers=admin)
        assert stats.status_code == 200
        body = stats.json()
        assert set(body["counts"]) >= {"queued", "running", "succeeded", "failed"}
        assert body["workers"] >= 1 and "last_5m" in body["finished"]
    await registry.heartbeat(state.redis, "ghost:1:abc", {"id": "ghost:1:abc"}, ttl_s=60)
    await state.redis.zadd(keys.WORKERS, {"ghost:1:abc": 1.0})  # heartbeat long ago
    cleared = await asgi_client.post("/v1/workers/clear-stale", headers=admin)
    assert "ghost:1:abc" in cleared.json()["removed"]
    assert (await asgi_client.post("/v1/workers/clear-stale", headers=tenant)).status_code == 403


def test_priority_scores_order_high_normal_low_and_keep_schedules() -> None:
    now = datetime.now().astimezone()
    high, normal, low = (queue.score_time(p, None) for p in ("high", "normal", "low"))
    assert high < normal < low
    later = now.replace(year=now.year + 1)
    assert queue.score_time("high", later) == later  # scheduled jobs never start early


async def test_new_jobs_wake_an_idle_worker_instead_of_waiting_for_its_poll(
    live_api: LiveApi, client: Client, settings: Settings
) -> None:
    """With a 60 s idle poll, only the enqueue wake-up can start these jobs within the wait."""
    lazy = fake(settings, "quick").model_copy(update={"poll_delay_s": 60.0})
    async with running_worker(lazy) as worker:
        assert worker.idle_poll_s == 60.0
        for name in ("Wake Up", "Again"):  # the second arrives when the worker is idle again
            job = await client.submit(product_name=name)
            assert (await client.wait(job.id, timeout=20)).status == "succeeded"


async def test_a_backlog_keeps_freed_slots_busy_without_waiting_for_the_poll(
    live_api: LiveApi, client: Client, settings: Settings
) -> None:
    """Jobs queued before the worker starts, one slot, and a 60 s idle poll: only looking
    again as each slot frees up gets through the backlog within the wait."""
    lazy = fake(settings, "quick").model_copy(update={"poll_delay_s": 60.0})
    submitted = [await client.submit(product_name=f"Backlog {i}") for i in range(3)]
    async with running_worker(lazy, max_jobs=1):
        for job in submitted:
            assert (await client.wait(job.id, timeout=20)).status == "succeeded"


async def test_jobs_are_taken_and_ended_without_arqs_per_job_transactions(
    live_api: LiveApi, client: Client, settings: Settings, redis: Redis
) -> None:
    """arq takes, starts and ends each job with WATCH/MULTI/EXEC round trips of its own; the
    worker takes due jobs with one Lua call and ends finished ones with another, shared."""
    submitted = [await client.submit(product_name=f"Grouped {i}") for i in range(6)]

    async def transactions() -> int:
        stats = await redis.info("commandstats")
        return sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("watch", "multi"))

    before = await transactions()
    async with running_worker(fake(settings, "quick"), max_jobs=3):
        for job in submitted:
            assert (await client.wait(job.id, timeout=20)).status == "succeeded"
    assert await transactions() == before
    assert not await redis.zcard(settings.queue_name)  # every job ended off the queue


async def test_a_queue_entry_whose_job_data_expired_is_dropped(
    live_api: LiveApi, client: Client, settings: Settings, redis: Redis
) -> None:
    """As arq does: an entry it cannot run leaves the queue, and the jobs behind it run."""
    await redis.zadd(settings.queue_name, {"expired-entry": 1})
    async with running_worker(fake(settings, "quick"), max_jobs=1):
        job = await client.submit(product_name="After The Expired One")
        assert (await client.wait(job.id, timeout=20)).status == "succeeded"
    assert await redis.zscore(settings.queue_name, "expired-entry") is None
    assert not await redis.exists(in_progress_key_prefix + "expired-entry")


async def test_a_job_behind_more_running_jobs_than_one_read_still_starts(
    live_api: LiveApi, client: Client, settings: Settings, redis: Redis
) -> None:
    """Running jobs stay at the head of arq's queue until they finish. A worker must look past
    all of them (other workers' too), not only past ``queue_read_limit`` entries, or it idles
    while a job waits."""
    ahead = [f"elsewhere-{i}" for i in range(300)]
    await redis.zadd(settings.queue_name, {job_id: 1000 + i for i, job_id in enumerate(ahead)})
    for job_id in ahead:  # each held by some other worker
        await redis.set(in_progress_key_prefix + job_id, b"1", ex=120)
    try:
        async with running_worker(fake(settings, "quick"), max_jobs=1, queue_read_limit=10):
            job = await client.submit(product_name="Behind The Crowd")
            assert (await client.wait(job.id, timeout=20)).status == "succeeded"
    finally:
        await redis.zrem(settings.queue_name, *ahead)
        await redis.delete(*(in_progress_key_prefix + job_id for job_id in ahead))


async def test_a_finished_jobs_slot_frees_while_its_outcome_is_still_written(
    live_api: LiveApi, client: Client, settings: Settings, sessions: Any, redis: Redis
) -> None:
    """Write-behind: once a job's pipeline returns, its slot takes the next job while the job's
    checkpoints and outcome are still on their way to PostgreSQL; the job leaves arq's queue
    only once they are in."""
    held, hold = holding(settings, "Written Behind")
    first = await client.submit(product_name="Written Behind")
    second = await client.submit(product_name="Next In Line")
    dsn = store.driver_dsn(settings.database_url or "")
    locker = await asyncpg.connect(dsn)
    try:
        async with running_worker(held, max_jobs=1):
            await until_status(sessions, first.id, "running")
            async with locker.transaction():  # the first job's last writes wait on its row
                await locker.execute(
                    "SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", uuid.UUID(first.id)
                )
                hold.unlink()
                await until_status(sessions, second.id, "running")  # in the one slot
                assert await status_of(sessions, first.id) == "running"
                assert await redis.zscore(settings.queue_name, first.id) is not None
            for job in (first, second):
                assert (await client.wait(job.id, timeout=20)).status == "succeeded"
    finally:
        await locker.close()
    assert not await redis.zcard(settings.queue_name)


async def status_of(sessions: Any, job_id: str) -> str:
    async with sessions() as session:
        job = await session.get(store.Job, uuid.UUID(job_id), populate_existing=True)
        return str(job.status)


async def until_status(sessions: Any, job_id: str, status: str, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while await status_of(sessions, job_id) != status:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_a_job_taken_ahead_of_a_free_slot_goes_back_to_the_queue_at_shutdown(
    live_api: LiveApi, client: Client, settings: Settings, sessions: Any, redis: Redis
) -> None:
    """A busy worker takes a job ahead of its next free slot (here: whenever a slot freed in
    the last hour); at shutdown that job, never started, goes back untouched: not claimed,
    its try uncounted, and the next worker runs it."""
    held, hold = holding(settings, "Holding The Slot")
    ahead = dict(max_jobs=1, prefetch=1, ahead_window_s=3600, ahead_hold_s=3600)
    async with running_worker(held, **ahead):
        warm = await client.submit(product_name="Frees A Slot")
        assert (await client.wait(warm.id, timeout=20)).status == "succeeded"
        busy = await client.submit(product_name="Holding The Slot")
        await until_status(sessions, busy.id, "running")
        waiting = await client.submit(product_name="Taken Ahead")
        async with asyncio.timeout(10):  # taken at the worker's next look
            while not await redis.exists(in_progress_key_prefix + waiting.id):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        assert await status_of(sessions, waiting.id) == "queued"
        assert await redis.get(retry_key_prefix + waiting.id) == b"1"
    assert not await redis.exists(in_progress_key_prefix + waiting.id)
    assert await redis.get(retry_key_prefix + waiting.id) == b"0"
    assert await redis.zscore(settings.queue_name, waiting.id) is not None
    hold.unlink()
    async with running_worker(held):
        assert (await client.wait(waiting.id, timeout=20)).status == "succeeded"
        assert (await client.wait(busy.id, timeout=20)).status == "succeeded"


async def _asks_to_run_later(ctx: dict[str, Any]) -> None:
    raise Retry(defer=60)


@contextlib.asynccontextmanager
async def bare_worker(
    settings: Settings, **options: Any
) -> AsyncIterator[tuple[VideoqWorker, str]]:
    """A VideoqWorker, not started, of one plain arq function (``later``: asks to run again in
    a minute) on a Redis pool of its own, and the id of one such job queued."""
    pool = await create_pool(queue.redis_settings(settings), **queue.serializers())
    worker = VideoqWorker(
        functions=[func(_asks_to_run_later, name="later")],
        redis_settings=queue.redis_settings(settings), queue_name=settings.queue_name,
        handle_signals=False, **queue.serializers(), **options,
    )  # fmt: skip
    worker._pool = pool
    try:
        job = await pool.enqueue_job("later", _queue_name=settings.queue_name)
        assert job is not None
        yield worker, job.job_id
    finally:
        await pool.aclose()


@pytest.mark.parametrize("retry_jobs", [True, False])
async def test_arqs_retry_jobs_setting_is_honoured(
    settings: Settings, redis: Redis, retry_jobs: bool
) -> None:
    """As arq's own worker: a job that asks to run later is deferred, unless ``retry_jobs`` is
    off, when it fails and leaves the queue."""
    options = {"burst": True, "max_burst_jobs": 1, "retry_jobs": retry_jobs}
    async with bare_worker(settings, **options) as (worker, job_id):
        await worker.async_run()
        await worker.close()
    waiting = await redis.zscore(settings.queue_name, job_id)
    assert (waiting is not None) == retry_jobs
    assert (worker.jobs_retried, worker.jobs_failed) == ((1, 0) if retry_jobs else (0, 1))


async def test_a_job_is_ended_only_by_the_worker_that_holds_it_and_only_once(
    settings: Settings, redis: Redis
) -> None:
    """Ends are written in batches, and a batch whose reply was lost is written again, one end
    at a time; a job's in-progress key may also have expired and another worker taken it.
    Either way an end whose worker no longer holds the job changes nothing."""
    async with bare_worker(settings) as (worker, job_id):
        held, tries = in_progress_key_prefix + job_id, retry_key_prefix + job_id
        await redis.set(held, "another-worker")
        await worker._end_jobs([_End(job_id, "done")])
        assert await redis.zscore(settings.queue_name, job_id) is not None
        assert await redis.get(held) == b"another-worker"
        await redis.set(held, worker.token)
        await redis.set(tries, 1)
        for _ in range(2):  # the second time as a batch written again
            await worker._end_jobs([_End(job_id, "back")])
        assert await redis.get(tries) == b"0" and not await redis.exists(held)
        assert await redis.zscore(settings.queue_name, job_id) is not None


async def test_a_job_survives_its_workers_database_connections_dying_mid_run(
    live_api: LiveApi, client: Client, settings: Settings, sessions: Any
) -> None:
    """PostgreSQL restarted under a running job: the connection writing the job's outcome is
    ended by the server while the statement runs (held on the job's row lock meanwhile). The
    write is tried again on a new connection, and the job succeeds, each stage run once."""
    held, hold = holding(settings, "Outlives A Restart")
    job = await client.submit(product_name="Outlives A Restart")
    dsn = store.driver_dsn(settings.database_url or "")
    locker, admin = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        async with running_worker(held) as worker:
            await until_status(sessions, job.id, "running")
            name = f"videoq {worker.ctx['videoq'].worker_id}"[:63]
            waiting = (
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE application_name = $1 AND wait_event_type = 'Lock'"
            )
            async with locker.transaction():
                await locker.execute(
                    "SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", uuid.UUID(job.id)
                )
                hold.unlink()
                async with asyncio.timeout(10):
                    while not await admin.fetchval(waiting, name):  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
                ended = await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name = $1",
                    name,
                )
                assert ended >= 1
            done = await client.wait(job.id, timeout=20)
            # Recorded by the attempt that ran it, not recovered later by another attempt.
            assert (done.status, done.attempts) == ("succeeded", 1)
    finally:
        await locker.close()
        await admin.close()
    stages = Counter(stage for job_id, stage, _, _ in runs(held.scratch) if job_id == job.id)
    assert stages == {stage: 1 for stage in STAGES}


async def test_a_job_cancelled_before_its_first_step_is_let_go_at_shutdown(
    settings: Settings, redis: Redis
) -> None:
    """A stop signal right after a look took a job cancels its task before it ever ran: the
    worker still shuts down cleanly, and the job is let go, to run again at once."""
    async with bare_worker(settings) as (worker, job_id):
        await worker._take_jobs(1)
        assert list(worker.tasks) == [job_id]
        worker.tasks[job_id].cancel()  # before the loop ever ran it
        await worker.close()
    assert not await redis.exists(in_progress_key_prefix + job_id)
    assert await redis.zscore(settings.queue_name, job_id) is not None
