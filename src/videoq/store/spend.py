"""Tenants' spend: each paid call of a job reserved against its tenant's budgets before it is
made, and settled with what it cost after (``purchases``).

A reservation takes the tenant's row lock (``SELECT … FOR UPDATE`` on ``tenants``), sums what
the tenant has spent today and this month (settled calls at their cost, reserved ones at
their reservation) and inserts the purchase only if both budgets still cover it: any number of
workers on any number of machines reserve one after another, so a budget is overshot by no
more than what calls cost beyond their reservations. A purchase is keyed by job and call
(``video_gen:3``): the attempt that retries or resumes the job finds its reservation and goes
on, and settling is done once. A released call reserved again (on another model, when a scene
switched) is reserved at that model's price, under its name. Days and months are UTC.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from videoq.store.tables import Purchase, Tenant

_EXISTING = text("SELECT state FROM purchases WHERE job_id = :job_id AND key = :key")
_BUDGETS = text(
    "SELECT daily_budget_usd, monthly_budget_usd FROM tenants WHERE tenant = :tenant FOR UPDATE"
)
_SPENT = text(
    """
    SELECT COALESCE(SUM(COALESCE(actual_usd, reserved_usd))
                    FILTER (WHERE created_at >= :day), 0) AS day,
           COALESCE(SUM(COALESCE(actual_usd, reserved_usd)), 0) AS month
    FROM purchases
    WHERE tenant = :tenant AND state <> 'released' AND created_at >= :month
    """
)
_RESERVE = text(
    """
    INSERT INTO purchases (job_id, key, tenant, stage, provider, model, state, reserved_usd,
                           created_at)
    VALUES (:job_id, :key, :tenant, :stage, :provider, :model, 'reserved', :amount, :now)
    ON CONFLICT (job_id, key) DO UPDATE
    SET state = 'reserved', reserved_usd = EXCLUDED.reserved_usd, actual_usd = NULL,
        provider = EXCLUDED.provider, model = EXCLUDED.model,
        created_at = EXCLUDED.created_at, settled_at = NULL
    WHERE purchases.state = 'released'
    """
)
_SETTLE = text(
    """
    UPDATE purchases SET state = 'settled', actual_usd = :actual, settled_at = :now
    WHERE job_id = :job_id AND key = :key AND state = 'reserved'
    """
)
_RELEASE = text(
    "UPDATE purchases SET state = 'released' WHERE job_id = :job_id AND key = :key"
    " AND state = 'reserved'"
)


def periods(now: datetime) -> tuple[datetime, datetime]:
    """The starts of ``now``'s UTC day and month."""
    now = now.astimezone(UTC)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return day, day.replace(day=1)


@dataclass(frozen=True)
class Call:
    """One paid call of a job, as reserved."""

    job_id: uuid.UUID
    key: str
    tenant: str
    stage: str
    provider: str
    model: str


async def reserve(
    session: AsyncSession, call: Call, amount: Decimal, *, now: datetime | None = None
) -> bool:
    """Reserve ``amount`` for ``call`` (committed); False when a budget cannot cover it. A call
    already reserved or settled (an earlier attempt's) is True at once."""
    now = now or datetime.now(UTC)
    ids = {"job_id": call.job_id, "key": call.key}
    async with session.begin():
        state = (await session.execute(_EXISTING, ids)).scalar_one_or_none()
        if state in ("reserved", "settled"):
            return True
        budgets = (await session.execute(_BUDGETS, {"tenant": call.tenant})).one_or_none()
        if budgets is not None and (budgets[0] is not None or budgets[1] is not None):
            day, month = periods(now)
            spent = (
                await session.execute(_SPENT, {"tenant": call.tenant, "day": day, "month": month})
            ).one()
            daily, monthly = budgets
            if (daily is not None and spent.day + amount > daily) or (
                monthly is not None and spent.month + amount > monthly
            ):
                return False
        await session.execute(
            _RESERVE,
            {
                **ids, "tenant": call.tenant, "stage": call.stage, "provider": call.provider,
                "model": call.model, "amount": amount, "now": now,
            },
        )  # fmt: skip
    return True


async def settle(
    session: AsyncSession, job_id: uuid.UUID, key: str, actual: Decimal, *, now: datetime | None
) -> None:
    """Record what the call cost (once: a settled call stays as it was settled)."""
    async with session.begin():
        await session.execute(
            _SETTLE,
            {"job_id": job_id, "key": key, "actual": actual, "now": now or datetime.now(UTC)},
        )


async def release(session: AsyncSession, job_id: uuid.UUID, key: str) -> None:
    """Give back a reservation whose call bought nothing."""
    async with session.begin():
        await session.execute(_RELEASE, {"job_id": job_id, "key": key})


async def of_job(session: AsyncSession, job_id: uuid.UUID) -> list[Purchase]:
    """A job's purchases, in the order they were reserved."""
    query = (
        select(Purchase)
        .where(Purchase.job_id == job_id)
        .order_by(Purchase.created_at, Purchase.key)
    )
    return list((await session.execute(query)).scalars())


_USAGE = text(
    """
    SELECT stage, provider,
           COALESCE(SUM(COALESCE(actual_usd, reserved_usd))
                    FILTER (WHERE created_at >= :day), 0) AS day,
           COALESCE(SUM(COALESCE(actual_usd, reserved_usd)), 0) AS month,
           COALESCE(SUM(reserved_usd) FILTER (WHERE state = 'reserved'), 0) AS reserved
    FROM purchases
    WHERE tenant = :tenant AND state <> 'released' AND created_at >= :month
    GROUP BY stage, provider ORDER BY stage, provider
    """
)


async def usage(
    session: AsyncSession, tenant: str, *, now: datetime | None = None
) -> dict[str, Any]:
    """A tenant's spend today and this month, by stage and provider (calls still running
    count at their reservation, also shown apart as ``reserved_usd``)."""
    day, month = periods(now or datetime.now(UTC))
    rows = list(await session.execute(_USAGE, {"tenant": tenant, "day": day, "month": month}))
    return {
        "currency": "USD",
        "day_start": day.isoformat(),
        "month_start": month.isoformat(),
        "today_usd": float(sum((r.day for r in rows), Decimal(0))),
        "month_usd": float(sum((r.month for r in rows), Decimal(0))),
        "reserved_usd": float(sum((r.reserved for r in rows), Decimal(0))),
        "by_stage": [
            {
                "stage": r.stage,
                "provider": r.provider,
                "today_usd": float(r.day),
                "month_usd": float(r.month),
            }
            for r in rows
        ],
    }


_TOTALS = text(
    """
    SELECT tenant, stage, provider, SUM(actual_usd) AS usd
    FROM purchases WHERE state = 'settled'
    GROUP BY tenant, stage, provider ORDER BY tenant, stage, provider
    """
)


async def totals(session: AsyncSession) -> list[tuple[str, str, str, float]]:
    """Every settled dollar, by tenant, stage and provider (for ``/metrics``)."""
    return [(r.tenant, r.stage, r.provider, float(r.usd)) for r in await session.execute(_TOTALS)]


async def over_budget(
    session: AsyncSession, tenant: str, *, now: datetime | None = None
) -> str | None:
    """Which budget the tenant has spent, if it asked to have creates refused then
    (``reject_when_over_budget``): ``"daily"`` or ``"monthly"``; None when neither is spent or
    it did not ask."""
    row = await session.get(Tenant, tenant)
    if row is None or not row.reject_when_over_budget:
        return None
    if row.daily_budget_usd is None and row.monthly_budget_usd is None:
        return None
    day, month = periods(now or datetime.now(UTC))
    spent = (await session.execute(_SPENT, {"tenant": tenant, "day": day, "month": month})).one()
    if row.daily_budget_usd is not None and spent.day >= row.daily_budget_usd:
        return "daily"
    if row.monthly_budget_usd is not None and spent.month >= row.monthly_budget_usd:
        return "monthly"
    return None
