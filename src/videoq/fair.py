"""Fair shares of a limited resource between tenants, inside one process.

A job's tenant and weight travel with its task (:data:`share`, a context variable the worker
sets when it starts the job). :class:`FairSlots` hands out at most ``limit`` slots at once; when
tenants wait, the next free slot goes to the waiting tenant with the smallest virtual finish
time (start-time fair queueing: each grant moves the tenant's clock by ``1 / weight``, and a
tenant that was idle starts from the current clock, so idleness earns no credit). Within a
tenant, waiters are served by their job's rank (the order the queue hands jobs out: priority,
then age), arrival order breaking ties. So a job's later runs (a poster after its
compositing) go before those of the tenant's jobs behind it, and jobs finish one after another
in queue order instead of all together at the end of a burst.

The worker uses it for FFmpeg (CPU-bound: at most ``ffmpeg_slots`` encodes at once) and in
front of the providers' shared concurrency limits, so that one tenant's hundred jobs in
flight cannot take every encode or every provider call while another tenant's job waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections.abc import AsyncIterator
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class Share:
    """Whose work this is, its weight against other tenants' work, and its job's rank among
    the tenant's (lower goes first)."""

    tenant: str
    weight: float = 1.0
    rank: float = 0.0


#: The share of the job the current task works for (unset outside jobs: one anonymous share).
share: ContextVar[Share] = ContextVar("videoq_share", default=Share(""))  # noqa: B039  frozen


@dataclass
class Spent:
    """What a job's limited work took so far (the worker sets one per job in :data:`spent`):
    ``waited_s`` waiting for slots, ``ran_s`` holding them, and ``alone_s``, the holding time
    as if alone (each run's time divided by the slots busy when it started: on a machine whose
    FFmpeg runs share the cores, what the run would have taken by itself)."""

    waited_s: float = 0.0
    ran_s: float = 0.0
    alone_s: float = 0.0


#: The current job's :class:`Spent` (None outside jobs: nothing is counted).
spent: ContextVar[Spent | None] = ContextVar("videoq_spent", default=None)


class FairSlots:
    """At most ``limit`` holders at once, granted fairly between tenants (see the module)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.busy = 0
        #: Since when every slot has been held without a break (None: one is free).
        self.full_since: float | None = None
        #: Per tenant, a heap of (rank, arrival, future, weight).
        self._waiting: dict[str, list[tuple[float, int, asyncio.Future[None], float]]] = {}
        self._arrivals = itertools.count()
        self._finish: dict[str, float] = {}  # each tenant's virtual finish time
        self._clock = 0.0  # the virtual start time of the last grant

    @property
    def waiting(self) -> int:
        return sum(len(queue) for queue in self._waiting.values())

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self.acquire()
        try:
            yield
        finally:
            self.release()

    async def acquire(self) -> None:
        who = share.get()
        if self.busy < self.limit and not self._waiting:
            self.busy += 1
            self._charge(who.tenant, who.weight)
            if self.busy == self.limit:
                self.full_since = time.monotonic()
            return
        future = asyncio.get_running_loop().create_future()
        entry = (who.rank, next(self._arrivals), future, who.weight)
        heapq.heappush(self._waiting.setdefault(who.tenant, []), entry)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # granted, then cancelled before it could run: pass it on
            else:
                self._forget(who.tenant, future)
            raise

    def release(self) -> None:
        self.busy -= 1
        while self._waiting and self.busy < self.limit:
            tenant = min(self._waiting, key=self._start)
            queue = self._waiting[tenant]
            _, _, future, weight = heapq.heappop(queue)
            if not queue:
                del self._waiting[tenant]
            if future.done():  # cancelled while it waited
                continue
            self.busy += 1
            self._charge(tenant, weight)
            future.set_result(None)
        if self.busy < self.limit:
            self.full_since = None
        elif self.full_since is None:
            self.full_since = time.monotonic()

    def _start(self, tenant: str) -> float:
        return max(self._finish.get(tenant, 0.0), self._clock)

    def _charge(self, tenant: str, weight: float) -> None:
        start = self._start(tenant)
        self._clock = start
        self._finish[tenant] = start + 1.0 / max(weight, 1e-6)
        if len(self._finish) > 4 * self.limit + 1000:  # forget tenants long gone
            self._finish = {t: f for t, f in self._finish.items() if f > self._clock}

    def _forget(self, tenant: str, future: asyncio.Future[None]) -> None:
        queue = self._waiting.get(tenant)
        if queue is None:
            return
        for i, entry in enumerate(queue):
            if entry[2] is future:
                queue[i] = queue[-1]
                queue.pop()
                heapq.heapify(queue)
                break
        if not queue:
            del self._waiting[tenant]
