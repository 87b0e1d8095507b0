"""Checkpoint notes (paid work in progress) and scene timing from the voice's alignment."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.providers.conftest import new_attempt
from videoq.pipeline import MemoryCheckpoints
from videoq.pipeline.compositing import follow_narration
from videoq.store import DatabaseUnreachable
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


async def test_notes_and_saves_are_held_while_postgres_is_out_of_reach(
    sessions: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that meets a refused connection or a server starting up waits and lands; one
    PostgreSQL refuses for its content fails as before. (The real outage, a stopped server, is
    in ``make chaos``.)"""
    checkpoints = await new_attempt(sessions)
    books = checkpoints.books
    note, submit = books.note, books.save.submit
    refusals = {"note": 2, "save": 2}

    async def flaky_note(*args: Any) -> None:
        if refusals["note"]:
            refusals["note"] -= 1
            raise DatabaseUnreachable("cannot connect to PostgreSQL: Connection refused")
        await note(*args)

    def flaky_submit(item: Any) -> asyncio.Future[bool]:
        if refusals["save"]:
            refusals["save"] -= 1
            failed: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            failed.set_exception(
                asyncpg.CannotConnectNowError("the database system is starting up")
            )
            return failed
        return submit(item)

    monkeypatch.setattr(books, "note", flaky_note)
    monkeypatch.setattr(books.save, "submit", flaky_submit)
    await checkpoints.note("video_gen", "scene_00", {"id": "paid-for"})
    await checkpoints.save("script_gen", {"title": "t", "scenes": []})
    await checkpoints.landed()
    assert refusals == {"note": 0, "save": 0}
    assert await checkpoints.notes("video_gen") == {"scene_00": {"id": "paid-for"}}
    assert (await books.checkpoints(checkpoints.job_id))["script_gen"]["title"] == "t"

    async def refused(*args: Any) -> None:
        raise asyncpg.UniqueViolationError("duplicate key")

    monkeypatch.setattr(books, "note", refused)
    with pytest.raises(asyncpg.UniqueViolationError):
        await checkpoints.note("video_gen", "scene_01", {"id": "x"})


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
