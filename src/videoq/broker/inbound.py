"""Inbound webhooks in Redis: the fast replay check (PostgreSQL's receipt is the durable one)
and the announcement of a verified Replicate webhook on its prediction's channel.
"""

from __future__ import annotations

from redis.asyncio import Redis

from videoq.broker import keys


async def first_receipt(redis: Redis, source: str, webhook_id: str, *, ttl_s: int) -> bool:
    """True the first time ``webhook_id`` of ``source`` is seen within ``ttl_s``."""
    return bool(await redis.set(keys.webhook_seen(source, webhook_id), "1", nx=True, ex=ttl_s))


async def announce_prediction(redis: Redis, prediction_id: str) -> None:
    """Publish that a verified webhook reported on ``prediction_id``."""
    await redis.publish(keys.replicate_channel(prediction_id), prediction_id)
