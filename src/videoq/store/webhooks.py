"""Webhooks in PostgreSQL: each tenant's signing secret, outbound deliveries and their
attempts, and receipts of inbound webhooks (a replay finds its receipt).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from videoq.signing import new_secret
from videoq.store.tables import InboundWebhook, Job, WebhookAttempt, WebhookDelivery, WebhookSecret


async def tenant_secret(session: AsyncSession, tenant: str) -> str:
    """The tenant's signing secret, created on first use."""
    stmt = insert(WebhookSecret).values(tenant=tenant, secret=new_secret())
    await session.execute(stmt.on_conflict_do_nothing(index_elements=["tenant"]))
    await session.commit()
    row = await session.get(WebhookSecret, tenant)
    assert row is not None
    return row.secret


async def claim_delivery(
    sessions: async_sessionmaker[Any], delivery_id: uuid.UUID, lease_s: float
) -> WebhookDelivery | None:
    """Take a due pending delivery for one attempt (other processes skip it meanwhile)."""
    now = datetime.now(UTC)
    async with sessions() as session:
        row: WebhookDelivery | None = (
            await session.execute(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.id == delivery_id,
                    WebhookDelivery.status == "pending",
                    WebhookDelivery.next_attempt_at <= now + timedelta(milliseconds=50),
                )
                .values(next_attempt_at=now + timedelta(seconds=lease_s))
                .returning(WebhookDelivery)
                .execution_options(synchronize_session=False)
            )
        ).scalar_one_or_none()
        await session.commit()
        return row


async def record_attempt(
    sessions: async_sessionmaker[Any],
    row: WebhookDelivery,
    attempt: WebhookAttempt,
    values: dict[str, Any],
) -> None:
    """Store one attempt and the delivery's new state (``values``) together."""
    async with sessions() as session:
        session.add(attempt)
        await session.execute(
            update(WebhookDelivery).where(WebhookDelivery.id == row.id).values(**values)
        )
        await session.commit()


async def due_deliveries(sessions: async_sessionmaker[Any], limit: int = 20) -> list[uuid.UUID]:
    """Pending deliveries whose next attempt is due."""
    async with sessions() as session:
        return list(
            (
                await session.execute(
                    select(WebhookDelivery.id)
                    .where(
                        WebhookDelivery.status == "pending",
                        WebhookDelivery.next_attempt_at <= datetime.now(UTC),
                    )
                    .limit(limit)
                )
            ).scalars()
        )


async def add_delivery(
    sessions: async_sessionmaker[Any], job: Job, payload: dict[str, Any]
) -> uuid.UUID:
    """Record the delivery of a job's end, due now; returns its id."""
    async with sessions() as session:
        delivery = WebhookDelivery(
            id=uuid.uuid4(), job_id=job.id, tenant=job.tenant, event=f"job.{job.status}",
            url=job.webhook_url, payload=payload, status="pending", attempts=0,
            next_attempt_at=datetime.now(UTC),
        )  # fmt: skip
        session.add(delivery)
        await session.commit()
        return delivery.id


async def record_receipt(
    session: AsyncSession,
    source: str,
    delivery_id: str,
    *,
    subject: str | None = None,
    job_id: uuid.UUID | None = None,
) -> bool:
    """Keep the receipt of a verified inbound webhook; False when it was received before."""
    inserted = (
        await session.execute(
            insert(InboundWebhook)
            .values(source=source, delivery_id=delivery_id, subject=subject, job_id=job_id)
            .on_conflict_do_nothing()
            .returning(InboundWebhook.delivery_id)
        )
    ).scalar_one_or_none()
    await session.commit()
    return inserted is not None
