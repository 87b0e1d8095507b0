"""Inbound webhooks in Redis: the fast replay check (PostgreSQL's receipt is the durable one),
the announcement of a verified Replicate webhook, and a worker's one subscription to those
announcements (:class:`PredictionWatcher`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from videoq.broker import keys

log = structlog.get_logger(__name__)


async def first_receipt(redis: Redis, source: str, webhook_id: str, *, ttl_s: int) -> bool:
    """True the first time ``webhook_id`` of ``source`` is seen within ``ttl_s``."""
    return bool(await redis.set(keys.webhook_seen(source, webhook_id), "1", nx=True, ex=ttl_s))


async def announce_prediction(redis: Redis, prediction_id: str) -> None:
    """Publish that a verified webhook reported on ``prediction_id``."""
    await redis.publish(keys.REPLICATE_CHANNEL, prediction_id)


class PredictionWatcher:
    """A :class:`videoq.providers.PredictionWatch` for one process: one subscription to
    :data:`~videoq.broker.keys.REPLICATE_CHANNEL`, however many predictions are awaited, and
    each announced id wakes that id's waiters here (if any).

    :meth:`run` keeps the subscription, subscribing again ``retry_s`` after it fails (Redis
    restarted, or out of reach). What is announced while it is down reaches no waiter: their
    own slow polls find those predictions.
    """

    def __init__(self, redis: Redis, *, retry_s: float) -> None:
        self._redis = redis
        self._retry_s = retry_s
        self._waiters: dict[str, set[asyncio.Event]] = {}
        #: Set while subscribed.
        self.listening = asyncio.Event()

    @contextlib.contextmanager
    def expect(self, prediction_id: str) -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        waiters = self._waiters.setdefault(prediction_id, set())
        waiters.add(event)
        try:
            yield event
        finally:
            waiters.discard(event)
            if not waiters:
                del self._waiters[prediction_id]

    def wake(self, prediction_id: str) -> None:
        """Set the events of ``prediction_id``'s waiters in this process."""
        for event in self._waiters.get(prediction_id, ()):
            event.set()

    async def run(self) -> None:
        """Listen until cancelled."""
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(keys.REPLICATE_CHANNEL)
                self.listening.set()
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self.wake(message["data"].decode(errors="replace"))
            except Exception as exc:  # the loop must outlive any one failure
                log.warning("prediction_listener_failed", error=str(exc))
            finally:
                self.listening.clear()
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(self._retry_s)
