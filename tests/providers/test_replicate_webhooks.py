"""Predictions awaited on their webhook: the create asks for it only when the API is reachable
and can verify it; the mock's signed webhook goes through the real API route and Redis to the
waiting stage; a lost one costs a sweep of the prediction list, or a read of its own while the
sweep fails; the worker keeps one subscription, across a Redis
restart."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from tests.conftest import running_worker, serving
from tests.mocks.replicate import ReplicateMock
from tests.providers.conftest import Mocks, Sleeps
from tests.providers.test_replicate import BRIEF, SCENE, render, video_provider
from videoq.broker import inbound
from videoq.embedded import start_redis
from videoq.errors import RetryableError
from videoq.providers import PaidWork, ProviderPool, Transports
from videoq.providers.replicate import PredictionSweep, ReplicateVideoProvider
from videoq.settings import Settings
from videoq.types import Clip, Scene

SECRET = "whsec_" + base64.b64encode(b"replicate-webhooks-test-key-32b!").decode()


class RecordingWatch:
    """A :class:`~videoq.providers.PredictionWatch` that never fires: it records the ids
    awaited."""

    def __init__(self) -> None:
        self.expected: list[str] = []

    @contextlib.contextmanager
    def expect(self, prediction_id: str) -> Iterator[asyncio.Event]:
        self.expected.append(prediction_id)
        yield asyncio.Event()


@pytest.mark.parametrize(
    ("public_url", "secret"),
    [
        ("https://videoq.example.com", SECRET),
        ("https://videoq.example.com", None),
        (None, SECRET),
        (None, None),
    ],
)
async def test_creates_ask_for_the_webhook_only_with_public_url_and_secret(
    live_settings: Settings,
    mocks: Mocks,
    sleeps: Sleeps,
    tmp_path: Path,
    public_url: str | None,
    secret: str | None,
) -> None:
    mocks.replicate.send_webhooks = False  # nothing listens on the example URL
    settings = live_settings.model_copy(
        update={
            "public_url": public_url,
            "replicate_webhook_secret": SecretStr(secret) if secret else None,
            "replicate_webhook_poll_s": 0.01,
        }
    )
    watch = RecordingWatch()
    async with ProviderPool(
        settings, transports=mocks.transports(), watch=watch, sleep=sleeps, rng=random.Random(7)
    ) as pool:
        provider = video_provider(pool)
        clip, _ = await render(provider, tmp_path)
        async with ProviderPool(live_settings, transports=mocks.transports()) as plain:
            # The webhook is no part of the work: a prediction bought before it was
            # configured is still re-attached to.
            assert provider.work_fingerprint(SCENE, 0, BRIEF) == video_provider(
                plain
            ).work_fingerprint(SCENE, 0, BRIEF)
    await mocks.replicate.aclose()
    body = mocks.replicate.bodies[0]
    if public_url and secret:
        assert body["webhook"] == "https://videoq.example.com/v1/webhooks/replicate"
        assert body["webhook_events_filter"] == ["completed"]
        assert watch.expected == [clip.work_id] and sleeps.delays == []
    else:
        assert "webhook" not in body and "webhook_events_filter" not in body
        assert watch.expected == [] and sleeps.delays == [1.0, 1.5]  # polled, as before


@dataclass
class Hooked:
    """A pool whose Replicate waits on webhooks: the mock sends them to the real API, which
    announces them through Redis to the watcher."""

    mock: ReplicateMock
    pool: ProviderPool
    sleeps: Sleeps


@contextlib.asynccontextmanager
async def hooked(
    settings: Settings, live_settings: Settings, redis: Redis, *, latency: float, poll_s: float
) -> AsyncIterator[Hooked]:
    api_settings = settings.model_copy(update={"replicate_webhook_secret": SecretStr(SECRET)})
    mock = ReplicateMock(latency=latency, webhook_secret=SECRET)
    watcher = inbound.PredictionWatcher(redis, retry_s=0.1)
    listening = asyncio.create_task(watcher.run())
    sleeps = Sleeps()
    try:
        await asyncio.wait_for(watcher.listening.wait(), 10)
        async with serving(api_settings) as api:
            stage_settings = live_settings.model_copy(
                update={
                    "public_url": api.url,
                    "replicate_webhook_secret": SecretStr(SECRET),
                    "replicate_webhook_poll_s": poll_s,
                }
            )
            transports = Transports(replicate=httpx.ASGITransport(app=mock.app))
            async with ProviderPool(
                stage_settings, transports=transports, watch=watcher, sleep=sleeps
            ) as pool:
                yield Hooked(mock, pool, sleeps)
    finally:
        await mock.aclose()
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening
    assert mock.invalid == []


async def until(predicate: Callable[[], bool], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110  the mock's counters offer no event
            await asyncio.sleep(0.01)


async def test_a_prediction_completes_on_its_webhook_without_polling(
    settings: Settings, live_settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    # The prediction never ends by itself, and the slow poll would come after the test's
    # timeout: only the webhook can end the wait.
    async with hooked(settings, live_settings, redis, latency=3600, poll_s=3600) as h:
        stage = asyncio.create_task(render(video_provider(h.pool), tmp_path))
        await until(lambda: h.mock.calls["get"] == 1)  # the waiter's first read: running
        (prediction_id,) = h.mock.predictions
        await h.mock.complete(prediction_id)
        clip, _ = await asyncio.wait_for(stage, 30)
    assert h.mock.deliveries == [200]  # through the real route: verified, announced
    assert clip.work_id == prediction_id and clip.path.exists()
    # One read after the waiter was in place, one when the webhook came; no poll at all.
    assert h.mock.calls["get"] == 2 and h.sleeps.delays == []


async def test_a_webhook_sent_before_the_create_answered_is_not_missed(
    settings: Settings, live_settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    async with hooked(settings, live_settings, redis, latency=3600, poll_s=3600) as h:
        h.mock.webhook_before_answer = True  # announced while no waiter knew the id
        clip, _ = await asyncio.wait_for(render(video_provider(h.pool), tmp_path), 30)
    assert h.mock.deliveries == [200] and clip.path.exists()
    assert h.mock.calls["get"] == 1  # the read after the waiter was in place found it ended


async def test_without_its_webhook_a_prediction_completes_on_the_slow_poll(
    settings: Settings, live_settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    async with hooked(settings, live_settings, redis, latency=0.2, poll_s=0.05) as h:
        h.mock.send_webhooks = False
        clip, _ = await asyncio.wait_for(render(video_provider(h.pool), tmp_path), 30)
    assert h.mock.deliveries == [] and clip.path.exists()
    assert h.mock.calls["get"] >= 2 and h.sleeps.delays == []  # the slow poll, not the fast


async def render_many(provider: ReplicateVideoProvider, out: Path, count: int) -> list[Clip]:
    """``count`` scenes (each its own shot) rendered at once, as video_gen would."""

    async def one(index: int) -> Clip:
        scene = Scene(SCENE.narration, f"{SCENE.visual_prompt}, take {index}", SCENE.duration_s)
        (out / str(index)).mkdir()
        work = PaidWork(previous={}, claimed=frozenset(), note=ignore_note)
        return await provider.render_clip(scene, index, BRIEF, out / str(index), work=work)

    return list(await asyncio.gather(*(one(index) for index in range(count))))


async def ignore_note(_: dict[str, object]) -> None:
    return None


async def test_one_sweep_reads_for_every_waiter_whose_webhook_is_lost(
    settings: Settings, live_settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    # 150 predictions (two list pages) end with no webhook: the sweep finds them, and each is
    # read only twice (once when its waiter is in place, once when the sweep found it ended).
    count = 150
    async with hooked(settings, live_settings, redis, latency=3600, poll_s=0.2) as h:
        h.mock.send_webhooks = False
        stage = asyncio.create_task(render_many(video_provider(h.pool), tmp_path, count))
        await until(lambda: h.mock.calls["get"] == count)
        lists_while_running = h.mock.calls["list"]
        await asyncio.sleep(1.0)  # a few periods: passes, no reads of single predictions
        assert h.mock.calls["get"] == count and h.mock.calls["list"] > lists_while_running
        for prediction_id in list(h.mock.predictions):
            await h.mock.complete(prediction_id)
        clips = await asyncio.wait_for(stage, 30)
    assert len({clip.work_id for clip in clips}) == count
    assert h.mock.deliveries == [] and h.mock.calls["get"] == 2 * count
    assert h.sleeps.delays == []


async def test_while_the_sweep_fails_each_waiter_reads_its_own_prediction(
    settings: Settings,
    live_settings: Settings,
    redis: Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def failing(self: PredictionSweep) -> None:
        raise RetryableError("list endpoint down", code="server_error")

    monkeypatch.setattr(PredictionSweep, "sweep", failing)
    async with hooked(settings, live_settings, redis, latency=0.3, poll_s=0.05) as h:
        h.mock.send_webhooks = False
        clips = await asyncio.wait_for(render_many(video_provider(h.pool), tmp_path, 3), 30)
    assert all(clip.path.exists() for clip in clips)
    assert h.mock.calls["list"] == 0 and h.mock.calls["get"] > 2 * 3


async def test_the_watcher_subscribes_again_after_a_redis_restart(tmp_path: Path) -> None:
    proc, url = start_redis(tmp_path / "redis")
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    client = Redis.from_url(url)
    watcher = inbound.PredictionWatcher(client, retry_s=0.05)
    listening = asyncio.create_task(watcher.run())
    try:
        await asyncio.wait_for(watcher.listening.wait(), 10)
        proc.kill()
        proc.wait()
        proc, _ = await asyncio.to_thread(start_redis, tmp_path / "redis", port)
        with watcher.expect("p-after-restart") as announced:
            async with asyncio.timeout(20):
                # Announced until heard: the watcher may still be finding out Redis went away.
                while not announced.is_set():
                    with contextlib.suppress(OSError, ConnectionError):
                        await inbound.announce_prediction(client, "p-after-restart")
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.1):
                            await announced.wait()
    finally:
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening
        await client.aclose()
        proc.kill()
        proc.wait()


async def test_a_worker_with_public_url_and_secret_listens_for_predictions(
    settings: Settings, redis: Redis
) -> None:
    configured = settings.model_copy(
        update={
            "public_url": "https://videoq.example.com",
            "replicate_webhook_secret": SecretStr(SECRET),
        }
    )
    async with running_worker(configured) as worker:
        watch = worker.ctx["videoq"].providers.watch
        assert isinstance(watch, inbound.PredictionWatcher)
        await asyncio.wait_for(watch.listening.wait(), 10)
        with watch.expect("p-worker") as announced:
            await inbound.announce_prediction(redis, "p-worker")
            await asyncio.wait_for(announced.wait(), 10)
    async with running_worker(settings) as worker:
        assert worker.ctx["videoq"].providers.watch is None  # polls, subscribes to nothing
