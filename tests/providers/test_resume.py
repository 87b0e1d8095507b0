"""Never pay twice: the whole pipeline on the live providers (spec-checked mocks), stopped
after or during video_gen and run again, must not call the script, voice or video endpoints
for work already paid for. Also: scenes overlap in time, limits hold, selection per stage."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.providers.conftest import Mocks, Sleeps, new_attempt
from videoq.broker import limits
from videoq.pipeline import MemoryCheckpoints, run_pipeline, video_gen
from videoq.providers import ProviderPool
from videoq.providers.anthropic import AnthropicScriptProvider
from videoq.providers.elevenlabs import ElevenLabsVoiceProvider
from videoq.providers.offline import (
    OfflineScriptProvider,
    OfflineVideoProvider,
    OfflineVoiceProvider,
)
from videoq.providers.replicate import ReplicateVideoProvider
from videoq.settings import Settings
from videoq.types import Brief

BRIEF = Brief(product_name="Solar Kettle", duration_s=10, aspect_ratio="1:1", cta_text="Buy")


class Crash(Exception):
    """Stands for the worker dying."""


async def quiet(stage: str, progress: float, message: str | None = None) -> None:
    return None


async def die_before_compositing(stage: str, progress: float, message: str | None = None) -> None:
    if stage == "compositing" and message == "started":
        raise Crash


class BlockingSleep:
    """Polls never come back: once ``expected`` scenes are waiting on their predictions, the
    test kills the run, as kill -9 would mid-stage."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.waiting = 0
        self.all_waiting = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        self.waiting += 1
        if self.waiting >= self.expected:
            self.all_waiting.set()
        await asyncio.Event().wait()


@pytest.mark.parametrize("store", ["memory", "postgres"])
async def test_job_stopped_after_video_gen_resumes_without_paying_again(
    pool: ProviderPool, mocks: Mocks, live_settings: Settings, sessions: Any, tmp_path: Path,
    store: str,
) -> None:  # fmt: skip
    first: Any = MemoryCheckpoints() if store == "memory" else await new_attempt(sessions)
    with pytest.raises(Crash):
        await run_pipeline(
            BRIEF, settings=live_settings, workdir=tmp_path / "job", checkpoints=first,
            report=die_before_compositing, providers=pool.for_settings(live_settings),
        )  # fmt: skip
    paid = mocks.calls()
    assert paid["script"] == 1 and paid["voice"] == 1 and paid["create"] == 2
    if store == "postgres":  # as the worker does before it records the crashed attempt
        await first.landed()

    # A new attempt (another worker, after a redeploy) with the same checkpoints.
    second: Any = first if store == "memory" else await new_attempt(sessions, first.job_id)
    result = await run_pipeline(
        BRIEF, settings=live_settings, workdir=tmp_path / "job", checkpoints=second,
        report=quiet, providers=pool.for_settings(live_settings),
    )  # fmt: skip
    assert mocks.calls() == paid
    assert result.video_path.exists() and abs(result.duration_s - 10) < 0.5
    assert result.cost["script_gen"]["output_tokens"] > 0
    assert result.cost["voice_gen"]["characters"] > 0
    assert result.cost["video_gen"]["clips"] == 2
    assert result.cost["video_gen"]["predict_time_s"] == 3.0


async def test_crash_during_video_gen_re_attaches_to_the_same_predictions(
    mocks: Mocks, live_settings: Settings, sessions: Any, tmp_path: Path
) -> None:
    mocks.replicate.polls = 2
    checkpoints = await new_attempt(sessions)
    blocking = BlockingSleep(expected=2)
    async with ProviderPool(live_settings, transports=mocks.transports(), sleep=blocking) as pool:
        run = asyncio.create_task(
            run_pipeline(
                BRIEF,
                settings=live_settings,
                workdir=tmp_path / "job",
                checkpoints=checkpoints,
                report=quiet,
                providers=pool.for_settings(live_settings),
            )
        )
        await asyncio.wait_for(blocking.all_waiting.wait(), 60)
        run.cancel()  # the worker dies while both predictions run
        with pytest.raises(asyncio.CancelledError):
            await run
    # Stages finished seconds before a real crash; here, milliseconds: let their saves land.
    await checkpoints.landed()
    created = set(mocks.replicate.predictions)
    noted = await checkpoints.notes("video_gen")
    assert {note["id"] for note in noted.values()} == created and len(created) == 2
    paid = mocks.calls()

    # Redeployed: a new process, a new pool, a new attempt of the same job.
    retry = await new_attempt(sessions, checkpoints.job_id)
    async with ProviderPool(live_settings, transports=mocks.transports(), sleep=Sleeps()) as pool:
        result = await run_pipeline(
            BRIEF, settings=live_settings, workdir=tmp_path / "job", checkpoints=retry,
            report=quiet, providers=pool.for_settings(live_settings),
        )  # fmt: skip
    after = mocks.calls()
    assert after["create"] == paid["create"] == 2
    assert after["script"] == paid["script"] == 1 and after["voice"] == paid["voice"] == 1
    assert set(mocks.replicate.predictions) == created
    saved = await retry.load("video_gen")
    assert saved is not None and set(saved["work_ids"]) == created
    assert result.video_path.exists()


async def test_a_rewritten_script_does_not_reuse_old_predictions(
    pool: ProviderPool, mocks: Mocks, live_settings: Settings, tmp_path: Path
) -> None:
    checkpoints = MemoryCheckpoints()
    await checkpoints.note("video_gen", "scene_00", {"id": "old", "fingerprint": "stale"})
    provider = pool.for_settings(live_settings).video
    script = await pool.for_settings(live_settings).script.write_script(BRIEF)

    async def progress(fraction: float) -> None:
        return None

    clips = await video_gen.run(
        BRIEF, script, provider=provider, workdir=tmp_path, on_progress=progress,
        checkpoints=checkpoints,
    )  # fmt: skip
    assert "old" not in {clip.work_id for clip in clips}
    assert mocks.replicate.calls["create"] == 2
    notes = await checkpoints.notes("video_gen")
    assert {n["id"] for n in notes.values()} == {clip.work_id for clip in clips}


async def test_scenes_overlap_in_time(
    live_settings: Settings, mocks: Mocks, tmp_path: Path
) -> None:
    mocks.replicate.latency = 0.2
    mocks.replicate.polls = 0
    brief = Brief(product_name="Kettle", duration_s=20, aspect_ratio="1:1")
    async with ProviderPool(live_settings, transports=mocks.transports(), sleep=Sleeps()) as pool:
        providers = pool.for_settings(live_settings)
        script = await providers.script.write_script(brief)

        async def progress(fraction: float) -> None:
            return None

        clips = await video_gen.run(
            brief, script, provider=providers.video, workdir=tmp_path, on_progress=progress
        )
    assert len(clips) == 4
    creates = [start for name, start, _ in mocks.replicate.intervals if name == "create"]
    assert len(creates) == 4
    # Every prediction was bought before any finished running: the stage takes about L,
    # not 4 × L.
    assert max(creates) < min(p.ready_at for p in mocks.replicate.predictions.values())


async def test_the_shared_limit_caps_predictions_in_flight(
    live_settings: Settings, mocks: Mocks, redis: Redis, tmp_path: Path
) -> None:
    mocks.replicate.latency = 0.05
    mocks.replicate.polls = 0
    settings = live_settings.model_copy(update={"replicate_concurrency": 2})
    brief = Brief(product_name="Kettle", duration_s=20, aspect_ratio="1:1")
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    # Two pools on one Redis: two worker processes sharing the provider's limit.
    async with (
        ProviderPool(
            settings, limiters=limits.shared(settings, redis), transports=mocks.transports()
        ) as one,
        ProviderPool(
            settings, limiters=limits.shared(settings, redis), transports=mocks.transports()
        ) as two,
    ):
        script = await one.for_settings(settings).script.write_script(brief)

        async def progress(fraction: float) -> None:
            return None

        await asyncio.gather(
            *(
                video_gen.run(
                    brief,
                    script,
                    provider=p.for_settings(settings).video,
                    workdir=tmp_path / name,
                    on_progress=progress,
                )
                for p, name in ((one, "a"), (two, "b"))
            )
        )
    assert mocks.replicate.calls["create"] == 8
    # Predictions (create until done) never exceed the limit; downloads come after.
    assert mocks.replicate.peak_running == 2


def test_providers_are_chosen_per_stage(live_settings: Settings, mocks: Mocks) -> None:
    no_voice_key = live_settings.model_copy(update={"elevenlabs_api_key": None})
    pool = ProviderPool(no_voice_key, transports=mocks.transports(), rng=random.Random(1))
    chosen = pool.for_settings(no_voice_key)
    assert isinstance(chosen.script, AnthropicScriptProvider)
    assert isinstance(chosen.voice, OfflineVoiceProvider)
    assert isinstance(chosen.video, ReplicateVideoProvider)
    assert pool.live == ("anthropic", "replicate")
    # A job's options may force offline for every stage, with the same live pool.
    offline = pool.for_settings(no_voice_key.for_job({"providers": "offline"}))
    assert isinstance(offline.script, OfflineScriptProvider)
    assert isinstance(offline.video, OfflineVideoProvider)
    # And a process configured offline opens no client at all.
    assert ProviderPool(live_settings.model_copy(update={"providers": "offline"})).live == ()
    full = ProviderPool(live_settings, transports=mocks.transports())
    assert isinstance(full.for_settings(live_settings).voice, ElevenLabsVoiceProvider)
