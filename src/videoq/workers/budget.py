"""A job's paid calls held against its tenant's budgets, for the pipeline on a worker."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from videoq import prices, tracing
from videoq.errors import OverBudget
from videoq.settings import Settings
from videoq.store import spend
from videoq.store.checkpoints import held

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker


class JobSpend:
    """The :class:`videoq.pipeline.Spend` of one job: its paid calls reserved against its
    tenant's budgets in ``purchases``, priced with ``settings.prices``. Writes that meet a
    PostgreSQL outage are held until it ends (:func:`~videoq.store.checkpoints.held`): a
    call is never made unreserved, nor a settlement dropped."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        job_id: uuid.UUID,
        tenant: str,
        settings: Settings,
    ) -> None:
        self._sessions = sessions
        self._job_id = job_id
        self._tenant = tenant
        self._settings = settings
        self._reserved: dict[str, Decimal] = {}

    async def reserve(self, stage: str, key: str, usage: dict[str, Any]) -> None:
        amount = prices.reservation(self._settings, usage)
        call = spend.Call(
            self._job_id, key, self._tenant, stage, str(usage.get("provider")),
            str(usage.get("model")),
        )  # fmt: skip

        async def write() -> bool:
            async with self._sessions() as session:
                return await spend.reserve(session, call, amount)

        if not await held(write, "reservation"):
            raise OverBudget(
                f"tenant {self._tenant!r}'s budget cannot cover {key} (${amount:.6f}); the job "
                "waits for the budget"
            )
        self._reserved[key] = amount

    async def settle(self, key: str, cost: dict[str, Any]) -> None:
        actual = prices.cost_usd(self._settings, cost)
        if actual is None:  # a record with no price: what was reserved
            actual = self._reserved.get(key, Decimal(0))
        tracing.annotate({"videoq.cost_usd": float(actual)})  # on the call's span

        async def write() -> None:
            async with self._sessions() as session:
                await spend.settle(session, self._job_id, key, actual, now=None)

        await held(write, "settlement")

    async def release(self, key: str) -> None:
        async def write() -> None:
            async with self._sessions() as session:
                await spend.release(session, self._job_id, key)

        await held(write, "release")
