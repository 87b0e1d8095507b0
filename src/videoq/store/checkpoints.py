"""Checkpoints in PostgreSQL (``job_stages``) for one attempt: each completed stage's outputs,
and each stage's notes of paid work in progress. What makes a resumed job re-buy nothing.

A write that finds PostgreSQL out of reach is held and tried again until it lands, never
dropped and never turned into an error: what it records was paid for, and an attempt that
failed over it would be retried and buy it again.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog

from videoq.errors import AttemptSuperseded
from videoq.store.engine import outage
from videoq.store.grouped import GroupedWriter

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: Waits between tries of a write while PostgreSQL is out of reach (the last one repeats).
HOLD_DELAYS_S = (0.2, 0.5, 1.0, 2.0, 5.0)


async def held(write: Callable[[], Awaitable[T]], what: str) -> T:
    """``write()``, tried again for as long as PostgreSQL is out of reach; any other error
    propagates. Ends only when the write lands or the caller is cancelled."""
    tries = 0
    while True:
        try:
            return await write()
        except Exception as exc:
            if outage(exc) is None:
                raise
            delay = HOLD_DELAYS_S[min(tries, len(HOLD_DELAYS_S) - 1)]
            if tries == 0:
                log.warning("write_held_database_unavailable", write=what, error=str(exc))
            tries += 1
            await asyncio.sleep(delay)


class DbCheckpoints:
    """:class:`videoq.pipeline.Checkpoints` kept in the ``job_stages`` table, for one attempt.

    A stage's notes (paid work in progress, e.g. Replicate prediction ids) live in a row of
    their own, ``stage`` = ``"<stage>.notes"``, whose JSON object is merged key by key with
    ``||`` in one upsert: concurrent notes of one stage serialise on the row lock and never
    lose each other. Completed stages' rows are untouched by notes.

    Writes of an attempt that no longer owns its job raise :class:`AttemptSuperseded`.
    """

    NOTES_SUFFIX = ".notes"

    def __init__(self, books: GroupedWriter, job_id: uuid.UUID, attempt: int) -> None:
        self.books = books
        self.job_id = job_id
        self.attempt = attempt
        # The first attempt ever has nothing to resume from: no query needed.
        self._completed: dict[str, dict[str, Any]] | None = {} if attempt == 1 else None
        self._saving: list[asyncio.Future[bool]] = []
        #: Why an earlier save did not land (refused, or failed): raised at every later check.
        self._failed: BaseException | None = None

    async def load(self, stage: str) -> dict[str, Any] | None:
        # One query for every stage at the attempt's start (stages are loaded in order, and
        # only this attempt writes them from then on).
        if self._completed is None:
            self._completed = await self.books.checkpoints(self.job_id)
        return self._completed.get(stage)

    async def save(self, stage: str, output: dict[str, Any]) -> None:
        """Write the checkpoint while the next stage starts; raises if an earlier save of this
        attempt was refused or failed. What a crash can lose is the same as if the save were
        waited for (a stage whose save has not landed yet); events that follow wait for it
        (:meth:`pending`), and the attempt waits for every save before its outcome
        (:meth:`landed`). A save is held while PostgreSQL is out of reach (:func:`held`)."""
        self._check()
        item = (self.job_id, self.attempt, stage, output)
        saving = asyncio.ensure_future(held(lambda: self.books.save.submit(item), "checkpoint"))
        self._saving.append(saving)
        if self._completed is not None:
            self._completed[stage] = output

    def pending(self) -> asyncio.Future[bool] | None:
        """The last save not yet in PostgreSQL, if any."""
        return self._saving[-1] if self._saving and not self._saving[-1].done() else None

    async def landed(self) -> None:
        """Wait until every save so far is in PostgreSQL; raises as :meth:`save` does."""
        if self._saving:
            await asyncio.wait(self._saving)
        self._check()

    def _check(self) -> None:
        while self._saving and self._saving[0].done():
            saved = self._saving.pop(0)
            if self._failed is not None:
                continue
            if saved.cancelled():
                self._failed = asyncio.CancelledError()
            elif saved.exception() is not None or not saved.result():
                self._failed = saved.exception() or AttemptSuperseded(
                    f"attempt {self.attempt} of job {self.job_id} no longer runs"
                )
        if self._failed is not None:
            raise self._failed

    async def note(self, stage: str, key: str, value: dict[str, Any] | None) -> None:
        """Durable on return (held while PostgreSQL is out of reach: a note records a purchase,
        and the purchase must not go on unrecorded)."""
        row = stage + self.NOTES_SUFFIX
        await held(lambda: self.books.note(self.job_id, self.attempt, row, {key: value}), "note")

    async def notes(self, stage: str) -> dict[str, dict[str, Any]]:
        entries = await self.books.notes(self.job_id, stage + self.NOTES_SUFFIX)
        return {k: v for k, v in (entries or {}).items() if isinstance(v, dict)}
