"""Concurrency limits of the providers, as the providers see them: at most ``limit`` calls in
flight. The worker injects limiters shared through Redis
(:class:`videoq.broker.limits.RedisSemaphore`); one process with no Redis (``videoq render``,
tests) uses :class:`LocalLimiter`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Protocol


class Limiter(Protocol):
    """At most ``limit`` holders of :meth:`slot` at once."""

    limit: int

    def slot(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Wait for a free slot and hold it for the ``async with`` block."""
        ...


class LocalLimiter:
    """A :class:`Limiter` for one process: an :class:`asyncio.Semaphore`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._semaphore = asyncio.Semaphore(limit)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self._semaphore:
            yield
