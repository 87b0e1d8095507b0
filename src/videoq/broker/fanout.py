"""Fan-out of Redis pub/sub inside one process: one subscription, any number of local
subscribers (the API's WebSockets), each with a bounded queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

log = structlog.get_logger(__name__)

#: Put in a subscriber's queue when its channel is subscribed again after the connection broke
#: (Redis restarted, say): what was published meanwhile never reached it.
RESUBSCRIBED: dict[str, Any] = {"type": "_resubscribed"}


class Broadcaster:
    """One pub/sub connection per process, fanned out to any number of local subscribers.

    Each subscriber gets a bounded queue; one that falls behind is told so (``None`` in its queue)
    and dropped, so a slow client never slows the others or the publisher. When the connection
    breaks, redis-py subscribes again as it reconnects (inside its retries, or at the next read);
    when Redis confirms a channel it had confirmed before, the channel's subscribers get
    :data:`RESUBSCRIBED`: after what they received before the break, before anything published
    since.
    """

    def __init__(self, redis: Redis, *, queue_size: int = 1000) -> None:
        self._redis = redis
        self._queue_size = queue_size
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._subscribers: dict[str, set[asyncio.Queue[dict[str, Any] | None]]] = {}
        #: Channels whose subscription Redis confirmed (and has not confirmed ending).
        self._confirmed: set[str] = set()
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> Broadcaster:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._pubsub is not None:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    @contextlib.asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[asyncio.Queue[dict[str, Any] | None]]:
        """A queue receiving every message published on ``channel`` from now on."""
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(self._queue_size)
        async with self._lock:
            if self._pubsub is None:
                self._pubsub = self._redis.pubsub()
            if channel not in self._subscribers:
                await self._pubsub.subscribe(channel)  # first: a failure leaves no deaf entry
                self._subscribers[channel] = set()
            self._subscribers[channel].add(queue)
            if self._reader is None or self._reader.done():
                self._reader = asyncio.create_task(self._read(), name="broadcaster")
        try:
            yield queue
        finally:
            async with self._lock:
                subs = self._subscribers.get(channel)
                if subs is not None:
                    subs.discard(queue)
                    if not subs:
                        del self._subscribers[channel]
                        with contextlib.suppress(Exception):
                            await self._pubsub.unsubscribe(channel)

    async def _read(self) -> None:
        assert self._pubsub is not None
        while True:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a Redis hiccup must not kill fan-out for good
                log.warning("broadcast_read_failed", error=str(exc))
                await asyncio.sleep(0.5)
                continue
            if message is None:
                continue
            kind = message["type"]
            if kind not in ("message", "subscribe", "unsubscribe"):
                continue
            channel = message["channel"].decode()
            if kind == "subscribe":
                if channel in self._confirmed:  # again: the connection broke and came back
                    self._fan(channel, RESUBSCRIBED)
                self._confirmed.add(channel)
                continue
            if kind == "unsubscribe":
                self._confirmed.discard(channel)
                continue
            try:
                event = json.loads(message["data"])
            except ValueError:
                log.warning("broadcast_message_invalid", channel=channel)
                continue
            self._fan(channel, event)

    def _fan(self, channel: str, event: dict[str, Any]) -> None:
        for queue in list(self._subscribers.get(channel, ())):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                self._subscribers[channel].discard(queue)
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                queue.put_nowait(None)
