"""The worker's grouped writes: calls made while a write is in flight share the next one, and
writes of an attempt that no longer owns its job are refused."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from sqlalchemy import select

from tests.providers.conftest import new_attempt
from videoq import store
from videoq.errors import AttemptSuperseded
from videoq.groupcommit import GroupCommit
from videoq.schemas import JobCreate
from videoq.store import grouped, jobs
from videoq.store.grouped import AttemptOutcome, GroupedWriter


class Recorder:
    """A write that doubles its items and remembers each batch; it can be held in flight, and
    any batch holding a ``poison`` item fails."""

    def __init__(self, poison: frozenset[int] = frozenset()) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.in_flight = asyncio.Event()
        self.poison = poison

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        self.in_flight.set()
        await self.release.wait()
        if self.poison & set(items):
            raise OSError("invalid input")
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


async def test_a_bad_item_fails_alone_and_its_batch_mates_are_written_one_by_one() -> None:
    """One item PostgreSQL rejects (or a deadlock, or a dead pooled connection) must not fail
    the other jobs' writes that happened to share its batch."""
    write = Recorder(poison=frozenset({13}))
    group = GroupCommit(write)
    outcomes = await asyncio.gather(*(group(i) for i in (1, 2, 13, 4)), return_exceptions=True)
    assert outcomes[:2] == [2, 4] and outcomes[3] == 8
    assert isinstance(outcomes[2], OSError)
    assert write.batches == [[1, 2, 13, 4], [1], [2], [13], [4]]


async def test_a_write_that_hangs_fails_instead_of_blocking_every_job() -> None:
    write = Recorder()
    write.release.clear()  # the connection hangs: no reply, ever
    group = GroupCommit(write, timeout_s=0.05)
    with pytest.raises(TimeoutError):
        await group(1)
    write.release.set()
    assert await group(2) == 4  # the next writes go through


async def test_a_cancelled_caller_harms_nobody_and_its_item_is_written() -> None:
    write = Recorder()
    group = GroupCommit(write)
    write.release.clear()
    gone = asyncio.ensure_future(group(1))
    stays = asyncio.ensure_future(group(2))
    await write.in_flight.wait()
    gone.cancel()
    write.release.set()
    assert await stays == 4
    await group.aclose()
    assert write.batches[-1] == [1, 2]


async def stages(sessions: Any, job_id: Any) -> dict[str, int]:
    async with sessions() as session:
        rows = await session.execute(
            select(store.StageCheckpoint.stage, store.StageCheckpoint.attempt).where(
                store.StageCheckpoint.job_id == job_id
            )
        )
        return dict(rows.all())


async def test_checkpoints_of_a_superseded_attempt_are_refused(sessions: Any) -> None:
    """A worker that stalled past its heartbeat lost the job to a new attempt: what it saves
    afterwards must not overwrite the new attempt's checkpoints."""
    old = await new_attempt(sessions)
    await old.save("script_gen", {"script": "first"})
    await old.landed()
    new = await new_attempt(sessions, old.job_id)
    assert new.attempt == old.attempt + 1
    assert await new.load("script_gen") == {"script": "first"}  # resumes from it
    await new.save("voice_gen", {"voice": "second"})
    await new.landed()
    await old.save("voice_gen", {"voice": "stale"})
    with pytest.raises(AttemptSuperseded):
        await old.landed()
    with pytest.raises(AttemptSuperseded):  # and told again at its next save
        await old.save("video_gen", {"video": "stale"})
    assert await stages(sessions, old.job_id) == {"script_gen": 1, "voice_gen": 2}


async def test_notes_of_a_superseded_attempt_still_land(sessions: Any) -> None:
    """A note records provider work already paid for (a prediction created just before the job
    was cancelled or taken over): whoever runs the job next must find it and reuse it."""
    old = await new_attempt(sessions)
    async with sessions() as session:
        assert await jobs.transition(session, old.job_id, "cancelled") is not None
    await old.note("video_gen", "scene_00", {"id": "paid-for"})
    new = await new_attempt(sessions, old.job_id)  # retried
    assert await new.notes("video_gen") == {"scene_00": {"id": "paid-for"}}


async def test_checkpoints_of_a_cancelled_job_are_refused(sessions: Any) -> None:
    attempt = await new_attempt(sessions)
    async with sessions() as session:
        assert await jobs.transition(session, attempt.job_id, "cancelled") is not None
    await attempt.save("script_gen", {"script": "late"})
    with pytest.raises(AttemptSuperseded):
        await attempt.landed()
    assert await stages(sessions, attempt.job_id) == {}


async def test_in_one_batch_only_the_current_attempt_is_told_it_ended_the_job(
    sessions: Any,
) -> None:
    """A stale attempt's outcome sharing a batch with the current one's must not be answered
    with the current attempt's row (it would emit a second terminal event and webhook)."""
    stale = await new_attempt(sessions)
    current = await new_attempt(sessions, stale.job_id)
    books = current.books
    ended = await asyncio.gather(
        books.finish(AttemptOutcome(stale.job_id, stale.attempt, "succeeded", {"attempt": 1})),
        books.finish(AttemptOutcome(current.job_id, current.attempt, "succeeded", {"attempt": 2})),
    )
    assert ended[0] is None
    assert ended[1] is not None and (ended[1].status, ended[1].attempts) == ("succeeded", 2)


async def test_a_job_claimed_twice_in_one_batch_runs_once(sessions: Any) -> None:
    attempt = await new_attempt(sessions)
    async with sessions() as session:
        assert await jobs.transition(session, attempt.job_id, "queued") is not None
    claims = await asyncio.gather(*(attempt.books.claim(attempt.job_id) for _ in range(2)))
    assert [c is not None for c in claims] == [True, False]


async def test_a_batch_locks_its_jobs_in_id_order_whatever_the_plan(sessions: Any) -> None:
    """Two batches sharing jobs must take their row locks in one order, or each can hold what
    the other waits for (PostgreSQL breaks such a cycle only after its 1 s deadlock timeout,
    failing a batch). Here the planner is made to join by hash over a table scan, which meets
    the rows in their physical order, the reverse of their ids: the batch must still lock the
    lower id first, and hold nothing else while it waits for it."""
    one, two = await new_attempt(sessions), await new_attempt(sessions)
    low, high = sorted((one, two), key=lambda a: a.job_id)
    url = sessions.kw["bind"].url.render_as_string(hide_password=False)
    holder = await asyncpg.connect(store.driver_dsn(url))
    watcher = await asyncpg.connect(store.driver_dsn(url))  # outside the holder's snapshot
    # A fresh row version of the lower id, stored after the higher one's.
    await holder.execute("UPDATE jobs SET updated_at = now() WHERE id = $1", low.job_id)
    hash_join_over_scan = {"enable_nestloop": "off", "enable_mergejoin": "off",
                           "enable_indexscan": "off", "enable_bitmapscan": "off"}  # fmt: skip
    books = GroupedWriter(url, "w-lock-order", server_settings=hash_join_over_scan)
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", low.job_id)
            saves = [
                books.save.submit((a.job_id, a.attempt, "script_gen", {"n": i}))
                for i, a in enumerate((high, low))
            ]
            waiting = (
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE application_name = 'videoq w-lock-order' AND wait_event_type = 'Lock'"
            )
            while not await watcher.fetchval(waiting):  # noqa: ASYNC110  PostgreSQL's state
                await asyncio.sleep(0.01)
            # The batch waits for the lower id; the higher one is not held yet.
            await holder.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE NOWAIT", high.job_id)
        assert await asyncio.gather(*saves) == [True, True]
    finally:
        await holder.close()
        await watcher.close()
        await books.aclose()


async def test_a_claim_reads_only_the_rows_it_claims_however_long_the_backlog(
    sessions: Any,
) -> None:
    """A claim must find its jobs by id. Checking their state on the rows being updated let
    the planner, on statistics taken before a burst of jobs arrived, find them through the
    index of waiting jobs instead: every claim read the whole backlog (3000 rows for 5 jobs,
    0.3 ms → 1 ms a statement, growing with the queue)."""
    url = sessions.kw["bind"].url.render_as_string(hide_password=False)
    conn = await asyncpg.connect(store.driver_dsn(url))
    try:
        await conn.execute("ANALYZE jobs")  # statistics from before the burst
        async with sessions() as session:
            burst = [
                (await jobs.create_job(
                    session, "t-backlog", JobCreate(product_name=f"Backlog {i}"),
                    default_max_retries=0, queue="parked:backlog",
                ))[0].id
                for i in range(400)
            ]  # fmt: skip
        mine = sorted(burst[:5])
        # As on a table of a production's size, where reading it whole is never the cheap way.
        await conn.execute("SET enable_seqscan = off")
        plan = await conn.fetchval(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + grouped._CLAIM,
            mine, "w-backlog", datetime.now(UTC),
        )  # fmt: skip
    finally:
        await conn.close()

    def scans(node: dict[str, Any]) -> list[dict[str, Any]]:
        found = [node] if "Scan" in node["Node Type"] else []
        return found + [s for child in node.get("Plans", []) for s in scans(child)]

    read = {
        (s.get("Relation Name") or s.get("Index Name"), s["Node Type"]): s["Actual Rows"]
        * s["Actual Loops"]
        for s in scans(json.loads(plan)[0]["Plan"])
        if s["Node Type"] != "CTE Scan"
    }
    assert read and max(read.values()) <= len(mine), read
