"""Checkpoint notes (paid work in progress) and scene timing from the voice's alignment."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.providers.conftest import new_attempt
from videoq.pipeline import MemoryCheckpoints
from videoq.pipeline.compositing import follow_narration
from videoq.types import Scene, Script, VoiceTrack


@pytest.mark.parametrize("store", ["memory", "postgres"])
async def test_concurrent_notes_never_lose_each_other(sessions: Any, store: str) -> None:
    checkpoints: Any
    if store == "memory":
        checkpoints = MemoryCheckpoints()
    else:
        checkpoints = await new_attempt(sessions)
    await asyncio.gather(
        *(checkpoints.note("video_gen", f"scene_{i:02d}", {"id": f"p{i}"}) for i in range(12))
    )
    notes = await checkpoints.notes("video_gen")
    assert notes == {f"scene_{i:02d}": {"id": f"p{i}"} for i in range(12)}
    await checkpoints.note("video_gen", "scene_03", None)
    assert "scene_03" not in await checkpoints.notes("video_gen")
    # Notes are not a completed stage, and another stage's notes are its own.
    assert await checkpoints.load("video_gen") is None
    assert await checkpoints.notes("voice_gen") == {}


SCRIPT = Script("t", [Scene("a", "x", 5.0), Scene("b", "y", 5.0), Scene("c", "z", 5.0)])


def test_scenes_are_cut_where_the_narration_moves_on() -> None:
    voice = VoiceTrack(Path("v.mp3"), 12.0, scene_starts_s=(0.0, 3.2, 8.5))
    timed = follow_narration(SCRIPT, voice, 15.0)
    assert [s.duration_s for s in timed.scenes] == [3.2, 5.3, 6.5]
    assert timed.duration_s == pytest.approx(15.0)
    assert [s.narration for s in timed.scenes] == ["a", "b", "c"]


@pytest.mark.parametrize(
    "starts",
    [None, (0.0, 3.0), (0.0, 0.2, 8.0), (0.0, 9.0, 16.0)],
    ids=["offline", "count-mismatch", "too-short", "past-the-end"],
)
def test_unusable_timings_keep_the_scripts_lengths(starts: tuple[float, ...] | None) -> None:
    voice = VoiceTrack(Path("v.mp3"), 12.0, scene_starts_s=starts)
    assert follow_narration(SCRIPT, voice, 15.0) == SCRIPT


def test_voice_track_round_trips_its_timing_and_cost() -> None:
    voice = VoiceTrack(Path("v.mp3"), 4.0, scene_starts_s=(0.0, 1.5), cost={"characters": 9})
    assert VoiceTrack.from_dict(voice.to_dict()) == voice
    assert VoiceTrack.from_dict({"path": "v.m4a", "duration_s": 3}).scene_starts_s is None
