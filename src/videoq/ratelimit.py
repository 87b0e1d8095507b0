"""Per-tenant admission of new jobs: a Redis token bucket and a cap on waiting jobs.

Each job creation takes one token from the tenant's bucket (``rate_limit_burst`` tokens,
refilled at ``rate_limit_per_s``). The bucket is one Lua script on a Redis hash, so every API
process shares it and two requests can never both take the last token; time comes from Redis's
own clock, so API hosts' clocks need not agree. The cap counts the tenant's ``queued``,
``scheduled`` and ``retrying`` rows in PostgreSQL, the record of truth.

Refusals are :class:`RateLimited` (HTTP 429 with ``Retry-After``). If Redis is unreachable the
bucket lets requests through: job creation keeps working through a Redis outage (DESIGN.md),
and the cap, in PostgreSQL, still bounds what a tenant can queue.
"""

from __future__ import annotations

import math
from typing import Any

import structlog
from redis.exceptions import RedisError
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from videoq.db import Job
from videoq.errors import VideoqError
from videoq.settings import Settings

log = structlog.get_logger(__name__)

KEY_PREFIX = "videoq:ratelimit:"
WAITING = ("queued", "scheduled", "retrying")
#: A full queue drains at the speed of the workers, which the API cannot predict; this is a hint.
QUEUE_FULL_RETRY_AFTER_S = 30

# KEYS[1] the bucket; ARGV: rate (tokens/s), burst, now (s; negative: Redis TIME), cost.
# Returns {1|0, seconds until `cost` tokens are available} (as a string: Lua numbers become
# integers on the way out).
_TAKE = """
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
"""


class RateLimited(VideoqError):
    """Too many requests: the tenant's bucket is empty or its queue is full. The API answers
    429 with ``Retry-After: retry_after_s`` (rounded up)."""

    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


def bucket_key(tenant: str) -> str:
    return f"{KEY_PREFIX}{tenant}"


async def take(
    redis: Any, key: str, *, rate: float, burst: int, cost: int = 1, now: float | None = None
) -> tuple[bool, float]:
    """Take ``cost`` tokens from bucket ``key``: ``(allowed, seconds to wait if not)``.
    ``now`` (seconds) is for tests; by default Redis's clock is used."""
    allowed, wait = await redis.eval(
        _TAKE, 1, key, repr(float(rate)), str(burst), repr(-1.0 if now is None else now), str(cost)
    )
    return bool(int(allowed)), float(wait)


async def waiting_jobs(session: AsyncSession, tenant: str) -> int:
    """The tenant's jobs that wait to run (queued, scheduled, or between retries)."""
    query = select(func.count()).select_from(Job).where(Job.tenant == tenant)
    return int((await session.execute(query.where(Job.status.in_(WAITING)))).scalar_one())


async def admit(redis: Any, session: AsyncSession, settings: Settings, tenant: str) -> None:
    """Let the tenant create one job now, or raise :class:`RateLimited`."""
    if settings.max_queued_jobs:
        count = await waiting_jobs(session, tenant)
        if count >= settings.max_queued_jobs:
            log.info("job_refused_queue_full", tenant=tenant, waiting=count)
            raise RateLimited(
                f"{count} jobs are already waiting (limit {settings.max_queued_jobs}); "
                "try again when some have started",
                retry_after_s=QUEUE_FULL_RETRY_AFTER_S,
            )
    if not settings.rate_limit_per_s:
        return
    try:
        allowed, wait = await take(
            redis, bucket_key(tenant), rate=settings.rate_limit_per_s,
            burst=settings.rate_limit_burst,
        )  # fmt: skip
    except (RedisError, OSError) as exc:
        log.warning("rate_limit_unavailable", tenant=tenant, error=str(exc))
        return
    if not allowed:
        log.info("job_refused_rate_limited", tenant=tenant, retry_after_s=round(wait, 3))
        raise RateLimited(
            f"too many jobs created; at most {settings.rate_limit_per_s:g} per second "
            f"(bursts of {settings.rate_limit_burst})",
            retry_after_s=wait,
        )
