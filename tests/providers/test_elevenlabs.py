"""The voice provider against the spec-checked ElevenLabs mock."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.mocks import elevenlabs as mock
from tests.mocks.base import Reply
from tests.mocks.media import speech_mp3
from tests.providers.conftest import Mocks, Sleeps
from videoq.errors import PermanentError, RetryableError
from videoq.providers import ProviderPool
from videoq.providers.elevenlabs import ElevenLabsVoiceProvider
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
