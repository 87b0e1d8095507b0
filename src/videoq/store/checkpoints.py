"""Checkpoints in PostgreSQL (``job_stages``) for one attempt: each completed stage's outputs,
and each stage's notes of paid work in progress. What makes a resumed job re-buy nothing.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from videoq.errors import AttemptSuperseded
from videoq.store.grouped import GroupedWriter


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
        (:meth:`landed`)."""
        self._check()
        self._saving.append(self.books.save.submit((self.job_id, self.attempt, stage, output)))
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
            if self._failed is None and (saved.exception() is not None or not saved.result()):
                self._failed = saved.exception() or AttemptSuperseded(
                    f"attempt {self.attempt} of job {self.job_id} no longer runs"
                )
        if self._failed is not None:
            raise self._failed

    async def note(self, stage: str, key: str, value: dict[str, Any] | None) -> None:
        await self.books.note(self.job_id, self.attempt, stage + self.NOTES_SUFFIX, {key: value})

    async def notes(self, stage: str) -> dict[str, dict[str, Any]]:
        entries = await self.books.notes(self.job_id, stage + self.NOTES_SUFFIX)
        return {k: v for k, v in (entries or {}).items() if isinstance(v, dict)}
