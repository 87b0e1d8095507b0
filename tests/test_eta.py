"""ETAs: the estimate's arithmetic, and the whole loop — stages measured on a worker, the
figures shared through Redis, ``eta_s`` on the job and its stage events, its error measured
when the job succeeds (``/metrics``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.conftest import LiveApi, auth, new_key, running_worker
from videoq import eta, fair
from videoq.broker import estimates
from videoq.client import Client
from videoq.ffmpeg import cpu_slots
from videoq.settings import Settings
from videoq.workers import task

TIMES = {"script_gen": 1.0, "voice_gen": 2.0, "video_gen": 20.0, "compositing": 4.0}


def test_a_job_alone_takes_its_stages() -> None:
    # Voice and video run at once: the longer (video, 20 s) counts.
    assert eta.estimate(TIMES, stage=None) == pytest.approx(1.0 + 20.0 + 4.0)
    assert eta.estimate({**TIMES, "voice_gen": 30.0}, stage=None) == pytest.approx(35.0)
    assert eta.estimate(TIMES, stage="video_gen", elapsed_s=5.0) == pytest.approx(19.0)
    assert eta.estimate(TIMES, stage="compositing", elapsed_s=3.0) == pytest.approx(1.0)
    assert eta.estimate(TIMES, stage="compositing", elapsed_s=9.0) == 0.0


def test_jobs_ahead_queue_at_compositing_spread_over_workers() -> None:
    # 10 ahead: their compositing (4 s each) ends long after this job's own path.
    assert eta.estimate(TIMES, stage=None, ahead=10) == pytest.approx(21.0 + 44.0)
    assert eta.estimate(TIMES, stage=None, ahead=10, workers=2) == pytest.approx(21.0 + 22.0)
    # Few ahead: its own path is the longer.
    assert eta.estimate(TIMES, stage=None, ahead=0, workers=4) == pytest.approx(25.0)


def test_a_backlog_drains_at_the_measured_turn() -> None:
    # Two slots on two cores: one compositing ends every 3 s under a backlog, not every 4 s.
    times = {**TIMES, eta.TURN: 3.0}
    assert eta.estimate(times, stage=None, ahead=10) == pytest.approx(21.0 + 33.0)
    # A job's own compositing still takes its time alone.
    assert eta.estimate(times, stage=None, ahead=0) == pytest.approx(25.0)
    settings = Settings(providers="offline")
    known = {eta.stage_key(settings, stage): 1.0 for stage in TIMES}
    assert eta.TURN not in (eta.stage_times(settings, known) or {})
    assert (eta.stage_times(settings, {**known, eta.TURN: 0.5}) or {})[eta.TURN] == 0.5


async def test_slots_say_since_when_they_are_all_held() -> None:
    slots = fair.FairSlots(2)
    await slots.acquire()
    assert slots.full_since is None
    await slots.acquire()
    full = slots.full_since
    assert full is not None
    waiter = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)
    slots.release()  # handed straight to the waiter: still full, since the same moment
    await waiter
    assert slots.full_since == full
    slots.release()
    assert slots.full_since is None


async def test_a_worker_counts_its_turn_only_while_its_slots_stay_full() -> None:
    settings = Settings(providers="offline", ffmpeg_slots=1)
    state: Any = SimpleNamespace(stage_times=[], composited_at=None)
    slots = cpu_slots(settings)
    await slots.acquire()  # a backlog: the one slot is held from here on
    task._stage_done(state, settings, "compositing", 4.0)  # the first: no turn yet
    task._stage_done(state, settings, "compositing", 4.0)
    turns = [took for key, took in state.stage_times if key == eta.TURN]
    assert len(turns) == 1 and turns[0] >= 0.0
    slots.release()  # the slot is free: the next gap is not a turn
    task._stage_done(state, settings, "compositing", 4.0)
    assert [key for key, _ in state.stage_times].count(eta.TURN) == 1
    assert [key for key, _ in state.stage_times].count("compositing") == 3


def test_no_estimate_until_every_stage_was_measured() -> None:
    settings = Settings(providers="offline")
    known = {eta.stage_key(settings, stage): 1.0 for stage in TIMES}
    assert eta.stage_times(settings, known) == dict.fromkeys(TIMES, 1.0)
    del known[eta.stage_key(settings, "voice_gen")]
    assert eta.stage_times(settings, known) is None
    live = Settings(providers="auto", replicate_model="owner/model")
    assert eta.stage_key(live, "video_gen") == "video_gen:owner/model"


async def metric(client: Any, key: str, name: str) -> float:
    body = (await client.get("/metrics", headers=auth(key))).text
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def until(check: Callable[[], Awaitable[object]], timeout: float = 10.0) -> None:
    """Poll ``check`` until it returns something true (the worker's next heartbeat)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "never happened"
        await asyncio.sleep(0.05)


async def stages_measured(redis: Redis, settings: Settings) -> bool:
    durations = await estimates.durations(redis, settings.queue_name)
    return eta.stage_times(settings, durations) is not None


async def test_eta_is_given_updated_and_its_error_measured(
    live_api: LiveApi, settings: Settings, sessions: Any, redis: Redis
) -> None:
    quick = settings.model_copy(update={"heartbeat_s": 0.1, "worker_stale_s": 5.0})
    admin = await new_key(sessions, admin=True)
    async with (
        running_worker(quick),
        Client(live_api.url, admin) as client,
    ):
        first = await client.submit(product_name="First Measure", duration_s=5)
        assert first.eta_s is None  # nothing measured yet
        assert (await client.wait(first.id, timeout=60)).status == "succeeded"
        await until(lambda: stages_measured(redis, quick))  # sent with a heartbeat
        second = await client.submit(product_name="Second Measure", duration_s=5)
        assert second.eta_s is not None and second.eta_s > 0
        seen = [ev async for ev in client.events(second.id, after=0) if ev.type == "stage"]
        assert [ev.stage for ev in seen] == ["script_gen", "voice_gen", "video_gen", "compositing"]
        etas = [ev.eta_s for ev in seen if ev.eta_s is not None]
        assert len(etas) == 4 and min(etas) >= 0
        assert etas == sorted(etas, reverse=True)  # counts down as stages pass
        final = await client.wait(second.id, timeout=60)
        assert final.status == "succeeded" and final.eta_s is None
        http = client._http  # the SDK's own httpx client, already pointed at the API
        count = "videoq_eta_error_ratio_count"
        await until(lambda: metric(http, admin, count))  # sent with a heartbeat
        assert await metric(http, admin, count) == 1.0
        assert await metric(http, admin, "videoq_eta_error_ratio_sum") >= 0.0
