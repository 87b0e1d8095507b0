"""Tenants' fair shares as admins set them (``tenants``); Redis keeps the copy workers read
(:mod:`videoq.broker.shares`)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from videoq.store.tables import Tenant


async def get(session: AsyncSession, tenant: str) -> Tenant | None:
    return await session.get(Tenant, tenant)


async def put(
    session: AsyncSession, tenant: str, *, weight: float, max_running: int | None
) -> Tenant:
    """Set the tenant's share (creating its row), committed; the row as stored."""
    values = {"weight": weight, "max_running": max_running, "updated_at": datetime.now(UTC)}
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


async def every(session: AsyncSession) -> list[Tenant]:
    """Every configured tenant."""
    return list((await session.execute(select(Tenant).order_by(Tenant.tenant))).scalars())
