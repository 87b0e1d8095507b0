"""Limits kept in Redis, shared by every process: concurrency per provider
(:class:`RedisSemaphore`) and the token bucket of job creation per tenant (:func:`take`).

A :class:`RedisSemaphore` is a sorted set ``videoq:limit:<name>`` of leases, scored by when
each one expires. Taking a slot is one Lua script (drop expired leases, count, add), so two
workers can never both take the last slot. A process renews the leases it holds while they
work, all in one script call a round; a worker that dies (kill -9, lost network) stops
renewing, and its slots come back by themselves once the lease runs out. No janitor, no
shutdown hook needed.

Lease times come from an injectable clock (wall-clock seconds by default), so tests can move
time instead of sleeping. Workers' clocks need only agree to well within ``lease_s``.

:class:`RedisSemaphore` is a :class:`videoq.providers.limits.Limiter`, as is
:class:`~videoq.providers.limits.LocalLimiter` for one process with no Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog

from videoq.broker import keys
from videoq.broker.scripts import LuaScript
from videoq.fair import FairSlots
from videoq.settings import Settings

log = structlog.get_logger(__name__)

# KEYS[1] the lease set; ARGV: now, expiry, limit, token. Returns 1 when the slot was taken.
_ACQUIRE = """
local key = KEYS[1]
local now = tonumber(ARGV[1])
local expiry = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
if redis.call('ZCARD', key) < tonumber(ARGV[3]) then
  redis.call('ZADD', key, expiry, ARGV[4])
  redis.call('PEXPIRE', key, math.ceil((expiry - now) * 1000) + 1000)
  return 1
end
return 0
"""

# KEYS[1] the lease set; ARGV: now, expiry, then the tokens. Extends each lease still held;
# returns the tokens whose lease was already gone.
_RENEW = """
local key = KEYS[1]
local lost = {}
for i = 3, #ARGV do
  if redis.call('ZSCORE', key, ARGV[i]) then
    redis.call('ZADD', key, 'XX', ARGV[2], ARGV[i])
  else
    table.insert(lost, ARGV[i])
  end
end
redis.call('PEXPIRE', key, math.ceil((tonumber(ARGV[2]) - tonumber(ARGV[1])) * 1000) + 1000)
return lost
"""
#: Leases renewed by one script call at most (a worker may hold thousands).
RENEW_BATCH = 500


#: The providers whose calls are limited (``settings.<name>_concurrency``).
PROVIDERS = ("anthropic", "elevenlabs", "replicate")


def shared(settings: Settings, redis: Any) -> dict[str, RedisSemaphore]:
    """Each live provider's concurrency limit, shared by every worker through Redis leases
    (for :class:`videoq.providers.ProviderPool`)."""
    return {
        name: RedisSemaphore(
            redis, name, getattr(settings, f"{name}_concurrency"), lease_s=settings.limit_lease_s
        )
        for name in PROVIDERS
    }


class RedisSemaphore:
    """A limiter shared through Redis by every process that uses the same ``name``.

    ``redis`` is a ``redis.asyncio.Redis`` (arq's ``ArqRedis`` is one). In each process one
    waiter at a time asks Redis, polling from ``poll_s`` backing off to ``poll_max_s`` (a
    release in this process wakes it at once); the others wait their turn, which goes to the
    tenants fairly (:class:`videoq.fair.FairSlots`). So a worker holding hundreds of jobs sends
    one poll at a time, not hundreds, and one tenant's calls cannot crowd out another's.
    """

    def __init__(
        self,
        redis: Any,
        name: str,
        limit: int,
        *,
        lease_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        poll_s: float = 0.02,
        poll_max_s: float = 0.5,
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.redis = redis
        self.name = name
        self.key = keys.lease_set(name)
        self.limit = limit
        self.lease_s = lease_s
        self._clock = clock
        self._poll_s = poll_s
        self._poll_max_s = poll_max_s
        self._released = asyncio.Event()
        self._turn = FairSlots(1)  # which of this process's waiters asks Redis next
        self._held: set[str] = set()  # this process's leases, renewed together
        self._keeper: asyncio.Task[None] | None = None

    async def try_acquire(self) -> str | None:
        """Take a slot if one is free now: its lease token, or None."""
        token = uuid.uuid4().hex
        now = self._clock()
        taken = await self.redis.eval(
            _ACQUIRE, 1, self.key, repr(now), repr(now + self.lease_s), self.limit, token
        )
        return token if int(taken) == 1 else None

    async def acquire(self) -> str:
        """Wait for a slot; its lease token."""
        async with self._turn.slot():
            delay = self._poll_s
            while True:
                self._released.clear()
                token = await self.try_acquire()
                if token is not None:
                    return token
                # Wake on a release in this process, or poll again (a release in another one).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._released.wait()
                delay = min(self._poll_max_s, delay * 2)

    async def renew(self, token: str) -> bool:
        """Extend the lease by ``lease_s`` from now; False if it had already been lost."""
        return not await self.renew_all([token])

    async def renew_all(self, tokens: list[str]) -> set[str]:
        """Extend these leases by ``lease_s`` from now (:data:`RENEW_BATCH` a script call);
        the tokens whose lease had already been lost."""
        lost: set[str] = set()
        for start in range(0, len(tokens), RENEW_BATCH):
            now = self._clock()
            batch = tokens[start : start + RENEW_BATCH]
            gone = await self.redis.eval(
                _RENEW, 1, self.key, repr(now), repr(now + self.lease_s), *batch
            )
            lost.update(t.decode() if isinstance(t, bytes) else str(t) for t in gone)
        return lost

    async def release(self, token: str) -> None:
        """Give the slot back (a lost lease is fine: it is simply gone)."""
        await self.redis.zrem(self.key, token)
        self._released.set()

    async def holders(self) -> int:
        """Leases that have not expired."""
        return int(await self.redis.zcount(self.key, f"({self._clock()!r}", "+inf"))

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        token = await self.acquire()
        self._held.add(token)
        if self._keeper is None or self._keeper.done():
            self._keeper = asyncio.create_task(self._keep(), name=f"leases:{self.name}")
        try:
            yield
        finally:
            self._held.discard(token)
            # Shielded: a cancelled holder must still give its slot back rather than wait
            # out the lease.
            await asyncio.shield(self.release(token))

    async def _keep(self) -> None:
        """Renew every lease this process holds, every third of their length, in batches (not
        a call per slot: a worker waiting on thousands of predictions holds thousands), until
        none is held."""
        interval = max(self.lease_s / 3, 0.01)
        while self._held:
            await asyncio.sleep(interval)
            held = list(self._held)
            if not held:
                break
            try:
                lost = await self.renew_all(held)
            except Exception as exc:  # a Redis hiccup: the next renewal may still make it
                log.warning("limit_lease_renewal_failed", limit=self.name, error=str(exc))
                continue
            if lost:
                log.warning("limit_lease_lost", limit=self.name, leases=len(lost))
                self._held.difference_update(lost)


# --- Token buckets ---

# KEYS[1] the bucket; ARGV: rate (tokens/s), burst, now (s; negative: Redis TIME), cost.
# Returns {1|0, seconds until `cost` tokens are available} (as a string: Lua numbers become
# integers on the way out).
_TAKE = LuaScript("""
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate)
  ts = now
end
local allowed = 0
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(ts))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(wait)}
""")


async def take(
    redis: Any, key: str, *, rate: float, burst: int, cost: int = 1, now: float | None = None
) -> tuple[bool, float]:
    """Take ``cost`` tokens from bucket ``key``: ``(allowed, seconds to wait if not)``.
    ``now`` (seconds) is for tests; by default Redis's clock is used."""
    args = (repr(float(rate)), str(burst), repr(-1.0 if now is None else now), str(cost))
    allowed, wait = await _TAKE(redis, [key], args)
    return bool(int(allowed)), float(wait)
