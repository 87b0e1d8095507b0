"""Fair shares between tenants: the order looks take jobs in (weights, ``max_running``,
priorities within a tenant), queue positions, ``PUT /v1/tenants/{tenant}``, and the fair slots
inside a process (FFmpeg never runs more than ``ffmpeg_slots`` at once)."""

from __future__ import annotations

import asyncio
import stat
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from arq import ArqRedis
from arq.utils import timestamp_ms

from tests.conftest import auth, new_key
from videoq import fair, ffmpeg
from videoq.broker import keys, queue, shares
from videoq.settings import Settings
from videoq.workers import worker as worker_module

TOKEN = "videoq:test-worker"


@dataclass
class Queued:
    tenant: str
    priority: str = "normal"
    run_at: datetime | None = None
    id: str = field(default_factory=lambda: str(uuid.uuid4()))


@pytest.fixture
async def arq_redis(settings: Settings) -> AsyncIterator[ArqRedis]:
    assert settings.redis_url
    client = ArqRedis.from_url(settings.redis_url)
    await client.delete(keys.TENANT_WEIGHTS, keys.TENANT_MAX_RUNNING)
    yield client
    await client.delete(keys.TENANT_WEIGHTS, keys.TENANT_MAX_RUNNING)
    await client.aclose()


async def enqueue(redis: ArqRedis, settings: Settings, tenant: str, n: int, **kw: Any) -> list[str]:
    jobs = [Queued(tenant, **kw) for _ in range(n)]
    for job in jobs:
        assert await queue.enqueue_job(redis, settings, job)
        await asyncio.sleep(0.002)  # scores are in ms; within one, arq orders by id
    return [job.id for job in jobs]


async def take(redis: ArqRedis, settings: Settings, want: int = 1) -> list[str]:
    """What one look of a worker takes, in order."""
    args = (timestamp_ms(), 60_000, want, keys.in_progress_key_prefix, 10_000,
            keys.job_key_prefix, keys.retry_key_prefix, TOKEN)  # fmt: skip
    names = [settings.queue_name, keys.TENANT_WEIGHTS, keys.TENANT_MAX_RUNNING]
    taken = await worker_module._TAKE_JOBS(redis, names, args)
    return [taken[i].decode() for i in range(0, len(taken), 4)]


async def end(redis: ArqRedis, settings: Settings, job_id: str, how: str = "done") -> None:
    args = [keys.in_progress_key_prefix, keys.job_key_prefix, keys.retry_key_prefix, TOKEN]
    await worker_module._END_JOBS(redis, [settings.queue_name], [*args, job_id, how, 0])


async def take_each(redis: ArqRedis, settings: Settings, n: int) -> list[str]:
    order = []
    for _ in range(n):
        order += await take(redis, settings)
    return order


async def test_a_backlog_does_not_delay_another_tenants_first_job(
    arq_redis: ArqRedis, settings: Settings
) -> None:
    a = await enqueue(arq_redis, settings, "a", 6)
    b = await enqueue(arq_redis, settings, "b", 2)
    order = await take_each(arq_redis, settings, 8)
    tenant = {**dict.fromkeys(a, "a"), **dict.fromkeys(b, "b")}
    assert [tenant[j] for j in order] == list("ababaaaa")
    assert [j for j in order if tenant[j] == "a"] == a  # each tenant's own order kept
    assert await take(arq_redis, settings) == []


async def test_weights_give_shares_in_their_ratio(arq_redis: ArqRedis, settings: Settings) -> None:
    await shares.configure(arq_redis, "heavy", shares.TenantShare(weight=3))
    heavy = set(await enqueue(arq_redis, settings, "heavy", 40))
    await enqueue(arq_redis, settings, "light", 40)
    order = await take(arq_redis, settings, want=40)  # one look, many slots
    assert len(order) == 40
    assert sum(j in heavy for j in order) == 30


async def test_max_running_holds_a_tenant_until_its_jobs_end(
    arq_redis: ArqRedis, settings: Settings
) -> None:
    await shares.configure(arq_redis, "capped", shares.TenantShare(max_running=1))
    capped = await enqueue(arq_redis, settings, "capped", 3)
    free = await enqueue(arq_redis, settings, "free", 3)
    first = await take(arq_redis, settings, want=10)
    assert sorted(first) == sorted([capped[0], *free])
    assert await take(arq_redis, settings, want=10) == []
    await end(arq_redis, settings, capped[0])
    assert await take(arq_redis, settings, want=10) == [capped[1]]


async def test_priorities_keep_their_order_within_a_tenant(
    arq_redis: ArqRedis, settings: Settings
) -> None:
    low = await enqueue(arq_redis, settings, "a", 1, priority="low")
    normal = await enqueue(arq_redis, settings, "a", 1)
    high = await enqueue(arq_redis, settings, "a", 1, priority="high")
    assert await take(arq_redis, settings, want=3) == [*high, *normal, *low]


async def test_a_job_to_run_again_goes_back_among_its_tenants_jobs(
    arq_redis: ArqRedis, settings: Settings
) -> None:
    (job,) = await enqueue(arq_redis, settings, "a", 1)
    assert await take(arq_redis, settings) == [job]
    await end(arq_redis, settings, job, "again")
    assert await take(arq_redis, settings) == [job]
    await end(arq_redis, settings, job, "back")
    assert await take(arq_redis, settings) == [job]
    await end(arq_redis, settings, job, "done")
    assert await take(arq_redis, settings) == []
    assert not await arq_redis.hexists(keys.fair(settings.queue_name, "of"), job)  # type: ignore[misc]


async def test_jobs_enqueued_by_arq_alone_are_still_taken(
    arq_redis: ArqRedis, settings: Settings
) -> None:
    await arq_redis.enqueue_job(keys.TASK, "x", _job_id="plain", _queue_name=settings.queue_name)
    (indexed,) = await enqueue(arq_redis, settings, "a", 1)
    assert await take(arq_redis, settings, want=5) == [indexed, "plain"]


async def test_removed_and_released_jobs_leave_the_index_right(
    arq_redis: ArqRedis, settings: Settings
) -> None:
    gone, kept = await enqueue(arq_redis, settings, "a", 2)
    await queue.remove(arq_redis, settings, gone)
    assert await take(arq_redis, settings, want=5) == [kept]
    # Its worker died: released, it is taken again.
    await queue.release_orphan(arq_redis, settings, Queued("a", id=kept))
    assert await take(arq_redis, settings, want=5) == [kept]


async def test_queue_position_counts_what_goes_first_in_fair_order(
    arq_redis: ArqRedis, settings: Settings
) -> None:
    a = await enqueue(arq_redis, settings, "a", 5)
    (b,) = await enqueue(arq_redis, settings, "b", 1)
    now = timestamp_ms()
    name = settings.queue_name
    assert await shares.position(arq_redis, name, "b", b, now) == 1  # behind a's first
    assert await shares.position(arq_redis, name, "a", a[0], now) == 0
    assert await shares.position(arq_redis, name, "a", a[4], now) == 5
    order = await take_each(arq_redis, settings, 6)
    assert order.index(b) == 1 and order.index(a[4]) == 5
    assert await shares.position(arq_redis, name, "a", a[4], now) == -1  # taken


async def test_tenants_route_is_for_admins_and_names_bad_fields(
    asgi_client: httpx.AsyncClient, sessions: Any, arq_redis: ArqRedis
) -> None:
    admin = await new_key(sessions, admin=True)
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    own = await new_key(sessions, tenant)
    path = f"/v1/tenants/{tenant}"

    def share(answer: Any) -> dict[str, Any]:
        return {k: answer.json()[k] for k in ("tenant", "weight", "max_running")}

    got = await asgi_client.get(path, headers=auth(own))
    assert share(got) == {"tenant": tenant, "weight": 1.0, "max_running": None}
    refused = await asgi_client.put(path, json={"weight": 5}, headers=auth(own))
    assert refused.status_code == 403
    other = await asgi_client.get("/v1/tenants/someone-else", headers=auth(own))
    assert other.status_code == 403
    bad = await asgi_client.put(path, json={"weight": 0, "colour": "red"}, headers=auth(admin))
    assert bad.status_code == 422
    assert {e["field"] for e in bad.json()["error"]["details"]} == {"weight", "colour"}
    put = await asgi_client.put(path, json={"weight": 3, "max_running": 2}, headers=auth(admin))
    assert put.status_code == 200, put.text
    assert share(put) == {"tenant": tenant, "weight": 3.0, "max_running": 2}
    kept = await asgi_client.put(path, json={"weight": 2}, headers=auth(admin))
    assert kept.json()["max_running"] == 2  # left out: kept
    lifted = await asgi_client.put(path, json={"max_running": None}, headers=auth(admin))
    assert share(lifted) == {"tenant": tenant, "weight": 2.0, "max_running": None}
    assert float(await arq_redis.hget(keys.TENANT_WEIGHTS, tenant)) == 2.0  # type: ignore[misc]
    assert not await arq_redis.hexists(keys.TENANT_MAX_RUNNING, tenant)  # type: ignore[misc]
    assert (await asgi_client.get(path, headers=auth(own))).json()["weight"] == 2.0


# --- Inside a process ---


async def test_fair_slots_serve_a_newcomer_before_a_backlog() -> None:
    slots = fair.FairSlots(1)
    order: list[str] = []

    async def work(tenant: str, weight: float = 1.0) -> None:
        fair.share.set(fair.Share(tenant, weight))
        async with slots.slot():
            order.append(tenant)
            await asyncio.sleep(0)

    await slots.acquire()  # busy: everyone queues
    tasks = [asyncio.create_task(work("a")) for _ in range(5)]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(work("b")))
    await asyncio.sleep(0)
    slots.release()
    await asyncio.gather(*tasks)
    assert order.index("b") <= 1
    assert slots.busy == 0 and slots.waiting == 0


async def test_within_a_tenant_the_earlier_job_goes_first_whenever_it_asks() -> None:
    # A job's poster asks for a slot after its compositing, while the compositings of the
    # tenant's later jobs already wait: the poster goes first, so the job ends first.
    slots = fair.FairSlots(1)
    order: list[str] = []

    async def work(name: str, rank: float) -> None:
        fair.share.set(fair.Share("t", 1.0, rank))
        async with slots.slot():
            order.append(name)
            await asyncio.sleep(0)

    await slots.acquire()
    tasks = [asyncio.create_task(work(f"job{r}", r)) for r in (2, 3, 4)]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(work("job1 poster", 1)))
    tasks.append(asyncio.create_task(work("job3 poster", 3)))
    doomed = asyncio.create_task(work("job0", 0))
    await asyncio.sleep(0)
    doomed.cancel()
    slots.release()
    await asyncio.gather(*tasks)
    assert order == ["job1 poster", "job2", "job3", "job3 poster", "job4"]
    assert slots.busy == 0 and slots.waiting == 0


async def test_fair_slots_shares_follow_weights_and_survive_cancellation() -> None:
    slots = fair.FairSlots(1)
    order: list[str] = []

    async def work(tenant: str, weight: float) -> None:
        fair.share.set(fair.Share(tenant, weight))
        async with slots.slot():
            order.append(tenant)
            await asyncio.sleep(0)

    await slots.acquire()
    tasks = [asyncio.create_task(work("x", 3)) for _ in range(30)]
    tasks += [asyncio.create_task(work("y", 1)) for _ in range(30)]
    doomed = asyncio.create_task(work("z", 1))
    await asyncio.sleep(0)
    doomed.cancel()
    slots.release()
    await asyncio.gather(*tasks)
    assert order[:40].count("x") == 30
    assert "z" not in order and slots.busy == 0 and slots.waiting == 0


def counting_ffmpeg(directory: Path) -> Path:
    """An 'ffmpeg' that notes when it starts and ends (and succeeds)."""
    script = directory / "ffmpeg"
    log = directory / "runs.log"
    script.write_text(f"#!/bin/sh\necho start >> {log}\nsleep 0.1\necho end >> {log}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


@pytest.mark.parametrize("slots", [1, 2])
async def test_ffmpeg_never_runs_more_than_its_slots(
    settings: Settings, tmp_path: Path, slots: int
) -> None:
    limited = settings.model_copy(
        update={"ffmpeg_path": str(counting_ffmpeg(tmp_path)), "ffmpeg_slots": slots}
    )
    await asyncio.gather(*(ffmpeg.run_ffmpeg(["-version"], settings=limited) for _ in range(6)))
    running = peak = 0
    for line in (tmp_path / "runs.log").read_text().split():
        running += 1 if line == "start" else -1
        peak = max(peak, running)
    assert peak == slots
