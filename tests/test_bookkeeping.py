"""The worker's grouped writes: calls made while a write is in flight share the next one, and
writes of an attempt that no longer owns its job are refused."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import select

from tests.providers.conftest import new_attempt
from videoq import db, jobs
from videoq.batching import GroupCommit
from videoq.errors import AttemptSuperseded


class Recorder:
    """A write that doubles its items and remembers each batch; it can be held in flight."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.in_flight = asyncio.Event()
        self.fail_next = False

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        self.in_flight.set()
        await self.release.wait()
        if self.fail_next:
            self.fail_next = False
            raise OSError("connection lost")
        return [i * 2 for i in items]


async def test_concurrent_calls_share_one_write_and_get_their_own_results() -> None:
    write = Recorder()
    group = GroupCommit(write)
    results = await asyncio.gather(*(group(i) for i in range(50)))
    assert results == [i * 2 for i in range(50)]
    assert len(write.batches) == 1 and sorted(write.batches[0]) == list(range(50))


async def test_calls_made_during_a_write_go_together_in_the_next() -> None:
    write = Recorder()
    write.release.clear()
    group = GroupCommit(write)
    first = asyncio.ensure_future(group(0))
    await write.in_flight.wait()
    later = [asyncio.ensure_future(group(i)) for i in range(1, 11)]
    write.release.set()
    assert await first == 0
    assert await asyncio.gather(*later) == [i * 2 for i in range(1, 11)]
    assert write.batches == [[0], list(range(1, 11))]


async def test_a_failed_write_fails_its_batch_only_and_a_cancelled_caller_harms_nobody() -> None:
    write = Recorder()
    write.fail_next = True
    group = GroupCommit(write, max_batch=3)
    outcomes = await asyncio.gather(*(group(i) for i in range(6)), return_exceptions=True)
    assert [type(o) for o in outcomes[:3]] == [OSError] * 3
    assert outcomes[3:] == [6, 8, 10]

    write.release.clear()
    write.in_flight.clear()
    gone = asyncio.ensure_future(group(1))
    stays = asyncio.ensure_future(group(2))
    await write.in_flight.wait()
    gone.cancel()
    write.release.set()
    assert await stays == 4
    await group.aclose()
    assert write.batches[-1] == [1, 2]  # the cancelled caller's item was written all the same


async def stages(sessions: Any, job_id: Any) -> dict[str, int]:
    async with sessions() as session:
        rows = await session.execute(
            select(db.StageCheckpoint.stage, db.StageCheckpoint.attempt).where(
                db.StageCheckpoint.job_id == job_id
            )
        )
        return dict(rows.all())


async def test_checkpoints_of_a_superseded_attempt_are_refused(sessions: Any) -> None:
    """A worker that stalled past its heartbeat lost the job to a new attempt: what it saves
    afterwards must not overwrite the new attempt's checkpoints."""
    old = await new_attempt(sessions)
    await old.save("script_gen", {"script": "first"})
    new = await new_attempt(sessions, old.job_id)
    assert new.attempt == old.attempt + 1
    assert await new.load("script_gen") == {"script": "first"}  # resumes from it
    await new.save("voice_gen", {"voice": "second"})
    with pytest.raises(AttemptSuperseded):
        await old.save("voice_gen", {"voice": "stale"})
    with pytest.raises(AttemptSuperseded):
        await old.note("video_gen", "scene_00", {"id": "stale"})
    assert await stages(sessions, old.job_id) == {"script_gen": 1, "voice_gen": 2}


async def test_checkpoints_of_a_cancelled_job_are_refused(sessions: Any) -> None:
    attempt = await new_attempt(sessions)
    async with sessions() as session:
        assert await jobs.transition(session, attempt.job_id, "cancelled") is not None
    with pytest.raises(AttemptSuperseded):
        await attempt.save("script_gen", {"script": "late"})
    assert await stages(sessions, attempt.job_id) == {}
