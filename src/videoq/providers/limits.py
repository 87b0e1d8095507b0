"""Concurrency limits of the providers, as the providers see them: at most ``limit`` calls in
flight. The worker injects limiters shared through Redis
(:class:`videoq.broker.limits.RedisSemaphore`); one process with no Redis (``videoq render``,
tests) uses :class:`LocalLimiter`.
"""

from __future__ import annotations

import contextlib
from typing import Protocol

from videoq.fair import FairSlots


class Limiter(Protocol):
    """At most ``limit`` holders of :meth:`slot` at once."""

    limit: int

    def slot(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Wait for a free slot and hold it for the ``async with`` block."""
        ...


class LocalLimiter(FairSlots):
    """A :class:`Limiter` for one process, its slots granted fairly between tenants
    (:class:`videoq.fair.FairSlots`)."""
