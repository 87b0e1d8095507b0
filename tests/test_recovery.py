"""Crash, shutdown, cancel and scale behaviour with real `videoq worker` processes on the real
embedded PostgreSQL and Redis (a private Redis where the test restarts it)."""

from __future__ import annotations

import asyncio
import random
import signal
import time
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis
from sqlalchemy import select

from tests.conftest import LiveApi, until_stage_kept
from tests.fakes import runs
from tests.processes import WorkerProcess, processes_mentioning
from videoq import store
from videoq.api import create_app
from videoq.client import Client, Event
from videoq.embedded import start_redis
from videoq.pipeline import STAGES
from videoq.settings import Settings


async def until(client: Client, job_id: str, stage: str) -> Event:
    async for event in client.events(job_id):
        if event.stage == stage:
            return event
    raise AssertionError(f"job {job_id} ended before {stage}: {await client.get(job_id)}")


async def checkpoint_attempts(sessions: Any, job_id: str) -> dict[str, int]:
    async with sessions() as session:
        rows = await session.execute(
            select(store.StageCheckpoint.stage, store.StageCheckpoint.attempt).where(
                store.StageCheckpoint.job_id == uuid.UUID(job_id)
            )
        )
        return {stage: attempt for stage, attempt in rows.all() if stage in STAGES}


async def test_kill_9_mid_video_gen_resumes_on_another_worker_from_checkpoint(
    live_api: LiveApi, client: Client, settings: Settings, redis: Redis, sessions: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    first = WorkerProcess(settings, tmp_path).start()
    second = WorkerProcess(settings, tmp_path)
    try:
        await first.registered(redis)
        job = await client.submit(product_name="Crash Test", duration_s=15)
        await until(client, job.id, "video_gen")
        await until_stage_kept(sessions, job.id, "voice_gen", first)  # it runs beside video
        first.signal(signal.SIGKILL)
        await first.exited()
        killed = time.monotonic()
        second.start()
        final = await client.wait(job.id, timeout=60)
        recovered_in = time.monotonic() - killed
    finally:
        first.stop()
        second.stop()
    assert final.status == "succeeded", second.output()
    assert recovered_in < 30
    assert final.attempts == 2
    assert final.model_extra is not None
    outcomes = [h["outcome"] for h in final.model_extra["history"]]
    assert outcomes == ["worker_lost", "succeeded"]
    # Stages finished before the crash were not redone: their checkpoints are attempt 1's.
    assert await checkpoint_attempts(sessions, job.id) == {
        "script_gen": 1, "voice_gen": 1, "video_gen": 2, "compositing": 2,
    }  # fmt: skip
    events = [e async for e in client.events(job.id, after=0)]
    assert [e.status for e in events if e.type == "status"].count("succeeded") == 1


async def test_sigterm_during_compositing_requeues_and_leaves_no_ffmpeg(
    live_api: LiveApi, client: Client, settings: Settings, redis: Redis, sessions: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    first = WorkerProcess(settings, tmp_path, VIDEOQ_SHUTDOWN_GRACE_S="0").start()
    second = WorkerProcess(settings, tmp_path)
    try:
        await first.registered(redis)
        job = await client.submit(product_name="Shutdown Test", duration_s=15)
        await until(client, job.id, "compositing")
        first.signal(signal.SIGTERM)
        assert await first.exited() == 0
        assert "worker_shutdown_complete" in first.output()
        assert processes_mentioning(str(settings.scratch / job.id)) == []
        requeued = await client.get(job.id)
        assert requeued.status == "queued", first.output()
        assert requeued.model_extra is not None
        assert requeued.model_extra["history"][-1]["outcome"] == "requeued"
        second.start()
        final = await client.wait(job.id, timeout=60)
    finally:
        first.stop()
        second.stop()
    assert final.status == "succeeded" and final.attempts == 2
    attempts = await checkpoint_attempts(sessions, job.id)
    assert attempts["compositing"] == 2 and attempts["video_gen"] == 1


async def test_cancel_while_ffmpeg_runs_stops_it_within_a_second(
    live_api: LiveApi, client: Client, settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    # Heartbeats a minute apart: only the pub/sub cancel signal can stop it within a second.
    worker = WorkerProcess(
        settings, tmp_path, VIDEOQ_HEARTBEAT_S="60", VIDEOQ_WORKER_STALE_S="180"
    ).start()
    try:
        await worker.registered(redis)
        job = await client.submit(product_name="Cancel Test", duration_s=30)
        await until(client, job.id, "compositing")
        workdir = str(settings.scratch / job.id)
        deadline = time.monotonic() + 10
        while not processes_mentioning(workdir):
            assert time.monotonic() < deadline, "compositing FFmpeg never appeared"
            await asyncio.sleep(0.01)
        started = time.monotonic()
        cancelled = await client.cancel(job.id)
        while processes_mentioning(workdir):
            assert time.monotonic() - started < 1.0, "FFmpeg still running 1 s after cancel"
            await asyncio.sleep(0.01)
        assert cancelled.status == "cancelled"
        assert (await client.get(job.id)).status == "cancelled"
        deadline = time.monotonic() + 10  # then the attempt removes its partial outputs
        while list(Path(workdir).glob(".*.tmp*")):  # noqa: ASYNC240
            assert time.monotonic() < deadline, "partial outputs left behind"
            await asyncio.sleep(0.01)
    finally:
        worker.stop()


async def test_three_workers_run_sixty_jobs_once_each_high_before_low(
    live_api: LiveApi, client: Client, settings: Settings, redis: Redis, sessions: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    quick = settings.model_copy(update={"pipeline": "tests.fakes:quick"})
    priorities = ["high"] * 20 + ["normal"] * 20 + ["low"] * 20
    random.Random(7).shuffle(priorities)
    jobs = {}
    for i, priority in enumerate(priorities):
        job = await client.submit(product_name=f"Scale {i}", priority=priority)
        jobs[job.id] = priority
    workers = [WorkerProcess(quick, tmp_path, VIDEOQ_MAX_JOBS="2") for _ in range(3)]
    try:
        for worker in workers:
            worker.start()
        finals = await asyncio.gather(*(client.wait(j, timeout=120) for j in jobs))
    finally:
        for worker in workers:
            worker.stop()
    assert {f.status for f in finals} == {"succeeded"}
    assert {f.attempts for f in finals} == {1}
    started = Counter(job for job, stage, _, _ in runs(settings.scratch) if stage == "script_gen")
    assert started == dict.fromkeys(jobs, 1)  # every job ran, exactly once
    assert len({f.worker_id for f in finals}) >= 2  # shared out (a slow starter may miss it)
    start = {}
    for f in finals:
        assert f.started_at is not None
        start[f.id] = f.started_at
    high = [start[j] for j, p in jobs.items() if p == "high"]
    low = [start[j] for j, p in jobs.items() if p == "low"]
    # Claims on different workers commit a few ms apart: compare with that much slack.
    assert max(high) <= min(low) + timedelta(milliseconds=100)


async def test_redis_restarted_empty_loses_no_job(
    settings: Settings, sessions: Any, api_key: str, tmp_path: Path
) -> None:
    redis_dir = tmp_path / "private-redis"
    proc, url = start_redis(redis_dir)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    private = settings.model_copy(update={"redis_url": url, "pipeline": "tests.fakes:quick"})
    headers = {"Authorization": f"Bearer {api_key}"}
    app = create_app(private)
    worker = WorkerProcess(private, tmp_path)
    try:
        async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://videoq", headers=headers
        ) as http:  # fmt: skip
            ids = []
            for i in range(5):
                created = await http.post("/v1/jobs", json={"product_name": f"Before {i}"})
                ids.append(created.json()["id"])
            proc.kill()
            proc.wait()
            # Redis is down: the API still takes jobs (PostgreSQL first) and says it is degraded.
            during = await http.post("/v1/jobs", json={"product_name": "During outage"})
            assert during.status_code == 202
            ids.append(during.json()["id"])
            health = await http.get("/health")
            assert health.status_code == 200 and health.json()["status"] == "degraded"
            proc, _ = start_redis(redis_dir, port)  # back, and empty
            assert await Redis.from_url(url).dbsize() == 0
            worker.start()
            deadline = time.monotonic() + 60
            while True:
                statuses = [(await http.get(f"/v1/jobs/{i}")).json()["status"] for i in ids]
                if set(statuses) == {"succeeded"}:
                    break
                assert time.monotonic() < deadline, (statuses, worker.output())
                await asyncio.sleep(0.1)
            assert (await http.get("/health")).json()["status"] == "healthy"
    finally:
        worker.stop()
        proc.kill()
    assert Counter(
        job for job, stage, _, _ in runs(settings.scratch) if stage == "script_gen"
    ) == dict.fromkeys(ids, 1)
