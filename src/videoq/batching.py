"""Group commit for round trips: calls made while a write is in flight wait for the next one,
and go together. At low load a call is written at once (one event-loop turn later); under load
the batches grow by themselves, with no timer to tune. PostgreSQL does the same for its WAL.

A worker uses it for its writes to PostgreSQL (:mod:`videoq.bookkeeping`) and its events to
Redis (:class:`videoq.events.Publisher`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """Calls made while a write is in flight are written together by the next one.

    ``write`` takes the items of a batch and returns one result per item, in order. With
    ``linger_s``, each write first waits that long for more items: for writes nobody waits
    for, where fewer round trips matter more than latency. A failed
    write fails every call of its batch. A caller that is cancelled stops waiting, but its item
    is written with the others (make the writes safe to land late, e.g. guarded statements).
    """

    def __init__(
        self,
        write: Callable[[list[T]], Awaitable[Sequence[R]]],
        *,
        max_batch: int = 500,
        linger_s: float = 0.0,
    ) -> None:
        self._write = write
        self._max_batch = max_batch
        self._linger_s = linger_s
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None

    def submit(self, item: T) -> asyncio.Future[R]:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(), name="videoq-group-commit")
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
                results = await self._write([item for item, _ in batch])
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def aclose(self) -> None:
        """Wait for the writes already submitted."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
