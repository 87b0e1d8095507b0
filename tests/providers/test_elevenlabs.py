"""The voice provider against the spec-checked ElevenLabs mock."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.mocks import elevenlabs as mock
from tests.mocks.base import Reply
from tests.mocks.media import speech_mp3
from tests.providers.conftest import Mocks, Sleeps
from videoq.errors import PermanentError, RetryableError
from videoq.providers import PaidWork, ProviderPool, Transports
from videoq.providers.elevenlabs import ElevenLabsVoiceProvider
from videoq.settings import Settings
from videoq.types import Brief, Scene, Script

SCRIPT = Script(
    title="Kettle",
    scenes=[
        Scene("Meet the Solar Kettle.", "hero shot", 2.5),
        Scene("It boils with sunshine.", "close-up", 2.5),
        Scene("Buy it today.", "end card", 2.5),
    ],
)


def voice_provider(pool: ProviderPool) -> ElevenLabsVoiceProvider:
    provider = pool.for_settings(pool.settings).voice
    assert isinstance(provider, ElevenLabsVoiceProvider)
    return provider


async def test_speaks_the_whole_script_and_finds_each_scene(
    pool: ProviderPool, mocks: Mocks, tmp_path: Path
) -> None:
    track = await voice_provider(pool).speak(SCRIPT, Brief(product_name="Kettle"), tmp_path)
    assert track.path == tmp_path / "voice.mp3"
    assert track.path.read_bytes() == speech_mp3()
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]  # noqa: ASYNC240
    body = mocks.elevenlabs.bodies[0]
    assert body == {
        "text": "Meet the Solar Kettle. It boils with sunshine. Buy it today.",
        "model_id": pool.settings.elevenlabs_model_id,
    }
    assert mocks.elevenlabs.voices == [pool.settings.elevenlabs_voice_id]
    assert track.scene_starts_s is not None and len(track.scene_starts_s) == 3
    assert track.scene_starts_s[0] == 0.0
    assert track.scene_starts_s == tuple(sorted(track.scene_starts_s))
    # The words the captions follow, from the character alignment.
    assert track.words is not None and [w.text for w in track.words] == body["text"].split()
    assert track.words[0].start_s == 0.0 and track.words[-1].end_s == track.duration_s
    assert 0 < track.duration_s <= 4.0
    assert track.cost["characters"] == len(body["text"]) and track.cost["request_id"]


async def test_the_briefs_voice_is_used_and_kept_in_the_path(
    pool: ProviderPool, mocks: Mocks, tmp_path: Path
) -> None:
    await voice_provider(pool).speak(
        SCRIPT, Brief(product_name="K", voice="my voice?x=1"), tmp_path
    )
    assert mocks.elevenlabs.voices == ["my voice?x=1"]


async def test_concurrency_limit_retries_steadily_and_system_busy_backs_off(
    pool: ProviderPool, mocks: Mocks, sleeps: Sleeps, tmp_path: Path
) -> None:
    brief = Brief(product_name="Kettle")
    mocks.elevenlabs.fail_next(*[mock.too_many_concurrent()] * 3)
    await voice_provider(pool).speak(SCRIPT, brief, tmp_path)
    steady = list(sleeps.delays)
    sleeps.delays.clear()
    mocks.elevenlabs.fail_next(*[mock.system_busy()] * 3)
    await voice_provider(pool).speak(SCRIPT, brief, tmp_path)
    backoff = list(sleeps.delays)
    assert len(steady) == len(backoff) == 3
    assert max(steady) <= pool.settings.provider_backoff_s  # never grows
    assert backoff[2] > pool.settings.provider_backoff_s * 2  # 4 s × jitter ≥ 2 s
    assert mocks.elevenlabs.calls["tts"] == 8


async def test_system_busy_gives_up_with_its_own_code(
    pool: ProviderPool, mocks: Mocks, tmp_path: Path
) -> None:
    mocks.elevenlabs.fail_next(*[mock.system_busy(retry_after="1")] * 10)
    with pytest.raises(RetryableError) as raised:
        await voice_provider(pool).speak(SCRIPT, Brief(product_name="K"), tmp_path)
    assert raised.value.code == "provider_busy" and raised.value.retry_after_s == 1.0


@pytest.mark.parametrize(
    ("fault", "code", "text"),
    [
        (mock.validation_error("text", "Field required"), "invalid_request", "body.text"),
        (mock.invalid_key(), "provider_auth_failed", "invalid_api_key"),
        (mock.quota_exceeded(), "quota_exceeded", "quota"),
    ],
)
async def test_permanent_failures_fail_at_once_with_both_detail_shapes(
    pool: ProviderPool,
    mocks: Mocks,
    sleeps: Sleeps,
    tmp_path: Path,
    fault: Reply,
    code: str,
    text: str,
) -> None:
    mocks.elevenlabs.fail_next(fault)
    with pytest.raises(PermanentError) as raised:
        await voice_provider(pool).speak(SCRIPT, Brief(product_name="K"), tmp_path)
    assert raised.value.code == code and text in str(raised.value)
    assert mocks.elevenlabs.calls["tts"] == 1 and sleeps.delays == []


async def test_server_errors_are_retried(
    pool: ProviderPool, mocks: Mocks, sleeps: Sleeps, tmp_path: Path
) -> None:
    mocks.elevenlabs.fail_next(mock.server_error(), mock.server_error())
    track = await voice_provider(pool).speak(SCRIPT, Brief(product_name="K"), tmp_path)
    assert track.path.exists() and mocks.elevenlabs.calls["tts"] == 3 and len(sleeps.delays) == 2


class LoseFirstAnswer(httpx.AsyncBaseTransport):
    """The first text-to-speech answer is lost on the way back: ElevenLabs made (and billed)
    the track, the worker never heard of it."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.lost = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method == "POST" and not self.lost:
            self.lost = True
            await response.aread()
            raise httpx.ReadError("connection reset by peer", request=request)
        return response


def paid_work(previous: dict[str, Any], notes: list[dict[str, Any]]) -> PaidWork:
    async def note(update: dict[str, Any]) -> None:
        notes.append(dict(update))

    return PaidWork(previous=previous, claimed=frozenset(), note=note)


async def test_a_track_whose_answer_was_lost_is_found_in_history_not_bought_again(
    live_settings: Settings, mocks: Mocks, tmp_path: Path
) -> None:
    transports = Transports(
        elevenlabs=LoseFirstAnswer(httpx.ASGITransport(app=mocks.elevenlabs.app))
    )
    notes: list[dict[str, Any]] = []
    async with ProviderPool(live_settings, transports=transports, sleep=Sleeps()) as lossy:
        track = await voice_provider(lossy).speak_once(
            SCRIPT, Brief(product_name="Kettle"), tmp_path, work=paid_work({}, notes)
        )
    assert mocks.elevenlabs.paid == 1 and mocks.elevenlabs.calls["tts"] == 1
    item = mocks.elevenlabs.history[0]
    assert track.cost["history_item_id"] == item["history_item_id"]
    assert track.path.read_bytes() == speech_mp3()
    assert track.scene_starts_s is not None and len(track.scene_starts_s) == 3
    assert track.words is not None and len(track.words) == 11  # from the item's alignment
    assert [set(n) for n in notes] == [{"since"}]  # noted before the request left


async def test_a_purchase_noted_as_under_way_is_found_and_others_are_not_taken(
    pool: ProviderPool, mocks: Mocks, tmp_path: Path
) -> None:
    provider = voice_provider(pool)
    brief = Brief(product_name="Kettle")
    for name in ("earlier", "other", "resumed"):
        (tmp_path / name).mkdir()
    since = time.time()
    await provider.speak(SCRIPT, brief, tmp_path / "earlier")  # the attempt that died
    other = Script("Other", [Scene("Something else.", "x", 7.5)])
    await provider.speak(other, brief, tmp_path / "other")  # another job's track
    mocks.elevenlabs.calls.clear()
    track = await provider.speak_once(
        SCRIPT, brief, tmp_path / "resumed", work=paid_work({"since": since}, [])
    )
    assert mocks.elevenlabs.calls["tts"] == 0 and mocks.elevenlabs.calls["history"] == 1
    assert track.cost["history_item_id"] == mocks.elevenlabs.history[0]["history_item_id"]


async def test_with_logging_off_a_lost_track_is_bought_again(
    pool: ProviderPool, mocks: Mocks, tmp_path: Path
) -> None:
    mocks.elevenlabs.logging = False  # zero retention: no history to find it in
    notes: list[dict[str, Any]] = []
    await voice_provider(pool).speak_once(
        SCRIPT, Brief(product_name="Kettle"), tmp_path, work=paid_work({"since": 0.0}, notes)
    )
    assert mocks.elevenlabs.calls["tts"] == 1 and mocks.elevenlabs.calls["history"] == 1
    assert len(notes) == 1 and notes[0]["since"] > 0


async def test_a_refused_request_is_retried_without_searching_history(
    pool: ProviderPool, mocks: Mocks, tmp_path: Path
) -> None:
    mocks.elevenlabs.fail_next(mock.too_many_concurrent())  # refused: nothing was made
    await voice_provider(pool).speak_once(
        SCRIPT, Brief(product_name="Kettle"), tmp_path, work=paid_work({}, [])
    )
    assert mocks.elevenlabs.calls["tts"] == 2 and mocks.elevenlabs.calls["history"] == 0
