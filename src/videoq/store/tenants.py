"""Tenants as admins set them (``tenants``): their fair shares, of which Redis keeps the copy
workers read (:mod:`videoq.broker.shares`), and their spend budgets."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from videoq.store.tables import Job, Tenant
from videoq.types import JobStatus


async def get(session: AsyncSession, tenant: str) -> Tenant | None:
    return await session.get(Tenant, tenant)


#: What an admin may set of a tenant.
SETTABLE = (
    "weight", "max_running", "daily_budget_usd", "monthly_budget_usd", "reject_when_over_budget"
)  # fmt: skip


async def put(session: AsyncSession, tenant: str, changes: dict[str, Any]) -> Tenant:
    """Set the tenant's ``changes`` (of :data:`SETTABLE`; creating its row, the others at their
    defaults), committed; the row as stored."""
    values = {
        **{k: v for k, v in changes.items() if k in SETTABLE},
        "updated_at": datetime.now(UTC),
    }
    statement = (
        insert(Tenant)
        .values(tenant=tenant, **values)
        .on_conflict_do_update(index_elements=[Tenant.tenant], set_=values)
        .returning(Tenant)
        .execution_options(populate_existing=True)
    )
    row = (await session.execute(statement)).scalar_one()
    await session.commit()
    return row


async def awaiting_budget(session: AsyncSession, tenant: str) -> list[Job]:
    """The tenant's jobs waiting for its budget."""
    query = select(Job).where(Job.tenant == tenant, Job.status == JobStatus.AWAITING_BUDGET)
    return list((await session.execute(query)).scalars())


async def every(session: AsyncSession) -> list[Tenant]:
    """Every configured tenant."""
    return list((await session.execute(select(Tenant).order_by(Tenant.tenant))).scalars())
