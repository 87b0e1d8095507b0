"""The distributed semaphore on the real (embedded) Redis: one limit across processes, leases
that come back by themselves, slots given back on cancellation. Time is an injected clock."""

from __future__ import annotations

import asyncio
import uuid

from redis.asyncio import Redis

from videoq.broker.limits import RedisSemaphore
from videoq.providers.limits import LocalLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _name() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


async def test_limit_is_shared_by_every_instance(redis: Redis) -> None:
    name = _name()
    # Two semaphores on one name stand for two worker processes.
    first, second = RedisSemaphore(redis, name, 2), RedisSemaphore(redis, name, 2)
    a = await first.try_acquire()
    b = await second.try_acquire()
    assert a and b
    assert await first.try_acquire() is None and await second.try_acquire() is None
    assert await first.holders() == 2
    await first.release(a)
    c = await second.try_acquire()
    assert c is not None and await second.try_acquire() is None


async def test_a_dead_holders_slot_comes_back_when_its_lease_expires(redis: Redis) -> None:
    clock = Clock()
    name = _name()
    crashed = RedisSemaphore(redis, name, 1, lease_s=30, clock=clock)
    survivor = RedisSemaphore(redis, name, 1, lease_s=30, clock=clock)
    assert await crashed.try_acquire() is not None  # and then it never releases nor renews
    clock.now += 29
    assert await survivor.try_acquire() is None
    clock.now += 2
    assert await survivor.try_acquire() is not None


async def test_renewal_keeps_a_slot_past_its_first_lease(redis: Redis) -> None:
    clock = Clock()
    name = _name()
    holder = RedisSemaphore(redis, name, 1, lease_s=30, clock=clock)
    other = RedisSemaphore(redis, name, 1, lease_s=30, clock=clock)
    token = await holder.try_acquire()
    assert token is not None
    clock.now += 20
    assert await holder.renew(token)
    clock.now += 20  # 40 s after taking it, 20 s after the renewal
    assert await other.try_acquire() is None
    clock.now += 11
    assert await other.try_acquire() is not None
    assert not await holder.renew(token)  # lost, and it says so


async def test_a_process_renews_every_lease_it_holds_in_one_call(redis: Redis) -> None:
    # 1,200 slots held at once (three script calls' worth): each round renews them all, in
    # batches, and none is lost although each outlives its first lease.
    semaphore = RedisSemaphore(redis, _name(), 2000, lease_s=1.5)
    rounds: list[int] = []
    renew_all = semaphore.renew_all

    async def counted(tokens: list[str]) -> set[str]:
        rounds.append(len(tokens))
        return await renew_all(tokens)

    semaphore.renew_all = counted  # type: ignore[method-assign]
    release, held = asyncio.Event(), asyncio.Event()
    holding = 0

    async def hold() -> None:
        nonlocal holding
        async with semaphore.slot():
            holding += 1
            if holding == 1200:
                held.set()
            await release.wait()

    holders = [asyncio.create_task(hold()) for _ in range(1200)]
    await asyncio.wait_for(held.wait(), 60)
    taken = len(rounds)
    await asyncio.sleep(2.0)  # past a lease: only the renewals keep the slots
    assert await semaphore.holders() == 1200
    # A round each half second (a third of the lease), each renewing every slot held.
    assert 2 <= len(rounds) - taken <= 8 and set(rounds[taken:]) == {1200}
    release.set()
    await asyncio.gather(*holders)
    assert await semaphore.holders() == 0


async def test_waiters_get_the_slot_when_it_is_released(redis: Redis) -> None:
    semaphore = RedisSemaphore(redis, _name(), 1)
    order: list[str] = []
    release_first = asyncio.Event()
    first_in = asyncio.Event()

    async def hold(label: str, until: asyncio.Event | None) -> None:
        async with semaphore.slot():
            order.append(f"{label} in")
            first_in.set()
            if until is not None:
                await until.wait()
            order.append(f"{label} out")

    first = asyncio.create_task(hold("first", release_first))
    await first_in.wait()
    second = asyncio.create_task(hold("second", None))
    for _ in range(20):  # the second one polls, and must not get in
        await asyncio.sleep(0)
    assert order == ["first in"]
    release_first.set()
    await asyncio.gather(first, second)
    assert order == ["first in", "first out", "second in", "second out"]
    assert await semaphore.holders() == 0


async def test_a_cancelled_holder_gives_its_slot_back(redis: Redis) -> None:
    semaphore = RedisSemaphore(redis, _name(), 1)
    entered = asyncio.Event()

    async def hold() -> None:
        async with semaphore.slot():
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(hold())
    await entered.wait()
    assert await semaphore.holders() == 1
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert await semaphore.holders() == 0
    assert await semaphore.try_acquire() is not None


async def test_local_limiter_bounds_one_process() -> None:
    limiter = LocalLimiter(2)
    inside = 0
    peak = 0

    async def work() -> None:
        nonlocal inside, peak
        async with limiter.slot():
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0)
            inside -= 1

    await asyncio.gather(*(work() for _ in range(6)))
    assert peak == 2
