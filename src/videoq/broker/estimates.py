"""What ETAs are made from, and how good they were, shared through Redis by every process: the
recent duration of each stage per provider/model (an exponentially weighted mean, updated as
stages end on any worker), and a histogram of the ETAs' errors (:mod:`videoq.eta`)."""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

from videoq.broker import keys
from videoq.broker.scripts import LuaScript

#: How much one new duration moves the mean: the last ~10 jobs count.
ALPHA = 0.2

#: KEYS[1] the hash; ARGV[1] alpha, then field, seconds pairs: each field's mean moved.
_RECORD = LuaScript("""
local alpha = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  local value = tonumber(ARGV[i + 1])
  local old = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '')
  if old then value = old + alpha * (value - old) end
  redis.call('HSET', KEYS[1], ARGV[i], tostring(value))
end
return 1
""")


async def record(redis: Redis, queue_name: str, durations: Sequence[tuple[str, float]]) -> None:
    """Fold stage durations (stage key, seconds), in order, into the means."""
    args: list[object] = [ALPHA]
    for key, seconds in durations:
        args += (key, repr(float(seconds)))
    if len(args) > 1:
        await _RECORD(redis, [keys.estimates(queue_name)], args)


async def durations(redis: Redis, queue_name: str) -> dict[str, float]:
    """The mean recent duration of each stage key."""
    raw = await redis.hgetall(keys.estimates(queue_name))  # type: ignore[misc]
    return {key.decode(): float(value) for key, value in raw.items()}


async def record_error(
    redis: Redis, queue_name: str, error: float, buckets: Sequence[float]
) -> None:
    """Count one ETA's relative error in the first bucket (upper bound) it fits."""
    bucket = next((f"{b:g}" for b in buckets if error <= b), "+Inf")
    async with redis.pipeline(transaction=False) as pipe:  # counters: no MULTI needed
        name = keys.estimate_errors(queue_name)
        pipe.hincrby(name, bucket, 1)
        pipe.hincrbyfloat(name, "sum", error)
        pipe.hincrby(name, "count", 1)
        await pipe.execute()


async def errors(redis: Redis, queue_name: str) -> dict[str, float]:
    """The histogram's counts by bucket (``"0.1"``, …, ``"+Inf"``), its ``sum`` and ``count``."""
    raw = await redis.hgetall(keys.estimate_errors(queue_name))  # type: ignore[misc]
    return {key.decode(): float(value) for key, value in raw.items()}
