"""Redis: the only package that talks to it (redis-py and arq's queue). Redis holds only what
is transient; losing it loses no job (PostgreSQL can rebuild the queue).

    keys      every Redis name: keys, prefixes, channels, arq's names
    queue     the arq queue: settings, JSON serializers, enqueue with priorities, signals
    events    job events: numbered, streamed, published, replayed
    fanout    one pub/sub connection fanned out to local subscribers
    registry  worker heartbeats and documents
    limits    provider concurrency leases, job-creation token buckets
    inbound   inbound webhooks' replay check and announcement
    scripts   Lua scripts run by their hash
"""

from __future__ import annotations

from arq import ArqRedis, create_pool
from redis.exceptions import RedisError

from videoq.broker import queue
from videoq.settings import Settings

__all__ = ["BROKER_ERRORS", "ArqRedis", "connect"]

#: What a Redis call raises when Redis fails or is out of reach.
BROKER_ERRORS: tuple[type[Exception], ...] = (RedisError, OSError)


async def connect(settings: Settings, *, retries: int = 10) -> ArqRedis:
    """A pool on ``settings.redis_url`` that serializes jobs as JSON (never pickle)."""
    return await create_pool(queue.redis_settings(settings, retries=retries), **queue.serializers())
