"""Group commit for round trips: calls made while a write is in flight wait for the next one,
and go together. At low load a call is written at once (one event-loop turn later); under load
the batches grow by themselves, with no timer to tune. PostgreSQL does the same for its WAL.

A worker uses it for its writes to PostgreSQL (:mod:`videoq.bookkeeping`) and its events to
Redis (:class:`videoq.events.Publisher`).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """Calls made while a write is in flight are written together by the next one.

    ``write`` takes the items of a batch and returns one result per item, in order. With
    ``linger_s``, each write first waits that long for more items: for writes nobody waits
    for, where fewer round trips matter more than latency.

    A write that fails (or takes longer than ``timeout_s``) is tried again item by item, so one
    bad item, a deadlock or a connection that died in the pool fails only the calls whose own
    write fails again. So ``write`` must be safe to repeat for items whose first try may have
    landed (guarded statements). A caller that is cancelled stops waiting, but its item is
    written with the others.
    """

    def __init__(
        self,
        write: Callable[[list[T]], Awaitable[Sequence[R]]],
        *,
        max_batch: int = 500,
        linger_s: float = 0.0,
        timeout_s: float = 30.0,
    ) -> None:
        self._write = write
        self._max_batch = max_batch
        self._linger_s = linger_s
        self._timeout_s = timeout_s
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None

    def submit(self, item: T) -> asyncio.Future[R]:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._task is None or self._task.done():
            # No caller's context: the writer serves every job alike.
            self._task = asyncio.create_task(
                self._drain(), name="videoq-group-commit", context=contextvars.Context()
            )
        return future

    async def __call__(self, item: T) -> R:
        return await self.submit(item)

    async def _drain(self) -> None:
        while self._pending:
            if self._linger_s:  # writes nobody waits for: gather more per round trip
                await asyncio.sleep(self._linger_s)
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            try:
                self._settle(batch, await self._write_within([item for item, _ in batch]))
            except Exception:
                for one in batch:  # again, alone: only what fails by itself fails
                    try:
                        self._settle([one], await self._write_within([one[0]]))
                    except Exception as exc:
                        if not one[1].done():
                            one[1].set_exception(exc)

    async def _write_within(self, items: list[T]) -> Sequence[R]:
        async with asyncio.timeout(self._timeout_s):
            return await self._write(items)

    @staticmethod
    def _settle(batch: list[tuple[T, asyncio.Future[R]]], results: Sequence[R]) -> None:
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def aclose(self, timeout_s: float = 30.0) -> None:
        """Wait (at most ``timeout_s``) for the writes already submitted."""
        if self._task is not None:
            await asyncio.wait([self._task], timeout=timeout_s)
