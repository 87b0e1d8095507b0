"""The tenant feed (``WS /v1/events``) replays exactly what a dashboard missed: every event
carries ``tenant_seq``, one higher per tenant, and ``?after=`` resumes with no gap and no
duplicate, from Redis or, once Redis lost it, from PostgreSQL; numbers are never given twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import Any

import jsonschema
from sqlalchemy import func, select
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import LiveApi, new_key, running_worker
from videoq.api.dashboard import STATIC
from videoq.client import Client
from videoq.settings import Settings
from videoq.store import JobEvent


def feed_url(api: LiveApi, after: int | None = None) -> str:
    url = api.url.replace("http", "ws", 1) + "/v1/events"
    return url if after is None else f"{url}?after={after}"


async def read_feed(
    url: str, key: str, *, limit: int | None = None, quiet_s: float = 1.0
) -> list[dict[str, Any]]:
    """The feed's messages: ``limit`` of them, or all until none came for ``quiet_s``."""
    out: list[dict[str, Any]] = []
    async with connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        while limit is None or len(out) < limit:
            try:
                out.append(json.loads(await asyncio.wait_for(ws.recv(), quiet_s)))
            except TimeoutError:
                break
    return out


async def archived_count(sessions: Any, tenant_jobs: list[str]) -> int:
    async with sessions() as session:
        query = select(func.count()).where(
            JobEvent.job_id.in_([uuid.UUID(j) for j in tenant_jobs]),
            JobEvent.tenant_seq.is_not(None),
        )
        return int((await session.execute(query)).scalar() or 0)


async def test_reconnect_with_after_gets_every_missed_event_once_and_other_tenants_none(
    live_api: LiveApi, client: Client, api_key: str, settings: Settings, sessions: Any
) -> None:
    other_key = await new_key(sessions)
    other = asyncio.create_task(read_feed(feed_url(live_api, 0), other_key, quiet_s=3))
    async with running_worker(settings.model_copy(update={"pipeline": "tests.fakes:chatty"})):
        listening = asyncio.create_task(read_feed(feed_url(live_api), api_key, limit=10))
        await asyncio.sleep(0.3)  # subscribed before the jobs start
        jobs = [await client.submit(product_name=f"Feed {i}") for i in range(2)]
        first = await listening  # then the dashboard drops
        for job in jobs:
            await client.wait(job.id, timeout=60)
    rest = await read_feed(feed_url(live_api, first[-1]["tenant_seq"]), api_key)
    full = await read_feed(feed_url(live_api, 0), api_key)
    numbers = [e["tenant_seq"] for e in full]
    assert numbers == list(range(1, len(full) + 1))
    assert first + rest == full  # no gap, no duplicate, the same events
    schema = jsonschema.Draft202012Validator(
        json.loads((STATIC / "events.schema.json").read_text())
    )
    for event in full:  # the messages clients get are the ones the published schema describes
        schema.validate(event)
    assert {e["job_id"] for e in full} == {job.id for job in jobs}
    assert sum(e["type"] == "status" and e["status"] == "succeeded" for e in full) == 2
    # The per-job streams carry the same numbers, so the two views agree.
    one = [e async for e in client.events(jobs[0].id, after=0)][1:]
    mine = [e for e in full if e["job_id"] == jobs[0].id]
    assert [e.seq for e in one] == [e["seq"] for e in mine]
    assert [e.model_dump()["tenant_seq"] for e in one] == [e["tenant_seq"] for e in mine]
    assert await other == []  # another tenant's feed: nothing of these


async def test_numbers_go_on_after_redis_lost_the_tenant_feed(
    live_api: LiveApi, client: Client, api_key: str, settings: Settings, sessions: Any, redis: Any
) -> None:
    """Redis restarted empty between two jobs: the second job's events number on after the
    first's (from the archive), and a replay from 0 joins the archive and Redis without a gap,
    a duplicate, or a number given twice."""
    worker_settings = settings.model_copy(update={"pipeline": "tests.fakes:quick"})
    async with running_worker(worker_settings):
        first = await client.submit(product_name="Before the loss")
        await client.wait(first.id, timeout=30)
        before = await read_feed(feed_url(live_api, 0), api_key)
        for _ in range(100):  # the worker archives within 50 ms of publishing
            if await archived_count(sessions, [first.id]) == len(before):
                break
            await asyncio.sleep(0.05)
        lost = [k async for k in redis.scan_iter("videoq:*")]
        await redis.delete(*[k for k in lost if b"tseq" in k or b"tstream" in k or
                             first.id.encode() in k])  # fmt: skip
        second = await client.submit(product_name="After the loss")
        await client.wait(second.id, timeout=30)
    full = await read_feed(feed_url(live_api, 0), api_key)
    assert [e["tenant_seq"] for e in full] == list(range(1, len(full) + 1))
    assert full[: len(before)] == before
    assert {e["job_id"] for e in full[len(before) :]} == {second.id}
    after_first = await read_feed(feed_url(live_api, len(before)), api_key)
    assert after_first == full[len(before) :]


async def test_a_bad_after_is_refused(live_api: LiveApi, api_key: str) -> None:
    for bad in ("-1", "x"):
        url = live_api.url.replace("http", "ws", 1) + f"/v1/events?after={bad}"
        async with connect(url, additional_headers={"Authorization": f"Bearer {api_key}"}) as ws:
            with contextlib.suppress(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            assert ws.close_code == 4400


async def test_stats_on_the_feed_are_scoped_like_the_key(
    live_api: LiveApi, client: Client, api_key: str, sessions: Any
) -> None:
    """``?stats=1``: a ``stats`` message first (then every few seconds, beside the events),
    with the key's own tenant's counts, as its job list has them; an admin key's are its
    tenant's too (another tenant's queued job is not in them), plus the queue and the
    workers."""
    await client.submit(product_name="Counted")
    url = feed_url(live_api).replace("/v1/events", "/v1/events?stats=1")
    (mine,) = await read_feed(url, api_key, limit=1)
    assert mine["type"] == "stats" and "tenant_seq" not in mine
    assert mine["counts"]["queued"] == 1 and sum(mine["counts"].values()) == 1
    assert "workers" not in mine and "queue_length" not in mine
    assert len(mine["last_hour"]["minutes"]) == 60
    schema = json.loads((STATIC / "events.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(mine)
    (admin,) = await read_feed(url, await new_key(sessions, admin=True), limit=1)
    assert sum(admin["counts"].values()) == 0 and admin["oldest_queued_age_s"] is None
    assert not any(sum(admin["last_hour"][s]) for s in ("succeeded", "failed", "cancelled"))
    assert "workers" in admin and isinstance(admin["queue_length"], int)
    jsonschema.Draft202012Validator(schema).validate(admin)
