"""End users' interactions with finished videos (``interactions``), recorded in one round trip
each: the video checked (a succeeded job of the tenant), the row inserted (once per
``Idempotency-Key``) and the user's counters raised (``feed_users``: every interaction, and
those since the preference was last computed), so the workers know whose feed is due."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from videoq.errors import IdempotencyKeyReused, VideoNotFinished
from videoq.store.tables import Interaction
from videoq.types import JobStatus


@dataclass(frozen=True)
class NewInteraction:
    """What ``POST /v1/interactions`` asks to record (validated by the API)."""

    user_id: str
    video_id: uuid.UUID
    type: str
    watched_s: float | None = None

    def fingerprint(self) -> str:
        """A digest of the request: what an ``Idempotency-Key`` is bound to."""
        canonical = json.dumps(
            [self.user_id, str(self.video_id), self.type, self.watched_s], separators=(",", ":")
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


_RECORD = text(
    f"""
    WITH video AS (
        SELECT id FROM jobs
        WHERE id = :video_id AND tenant = :tenant AND status = '{JobStatus.SUCCEEDED}'
    ), added AS (
        INSERT INTO interactions
            (tenant, user_id, video_id, type, watched_s, idempotency_key, fingerprint, created_at)
        SELECT :tenant, :user_id, video.id, :type, :watched_s, :key, :fingerprint, :now
        FROM video
        ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
        RETURNING id
    ), counted AS (
        INSERT INTO feed_users (tenant, user_id, interactions, pending)
        SELECT :tenant, :user_id, 1, 1 FROM added
        ON CONFLICT (tenant, user_id) DO UPDATE
        SET interactions = feed_users.interactions + 1, pending = feed_users.pending + 1
    )
    SELECT EXISTS (SELECT 1 FROM video) AS found, (SELECT id FROM added) AS id
    """
)


async def record(
    session: AsyncSession, tenant: str, new: NewInteraction, *, idempotency_key: str | None
) -> tuple[Interaction, bool]:
    """Record the interaction (committed); returns ``(interaction, created)``.
    :class:`VideoNotFinished` when its video is not a succeeded job of ``tenant``. A repeated
    ``idempotency_key`` returns the interaction it first recorded and ``created=False`` (the
    user's counters unchanged) when it comes with the same request, and raises
    :class:`IdempotencyKeyReused` with another."""
    now = datetime.now(UTC)
    fingerprint = new.fingerprint() if idempotency_key is not None else None
    values: dict[str, Any] = {
        "tenant": tenant, "user_id": new.user_id, "video_id": new.video_id, "type": new.type,
        "watched_s": new.watched_s, "key": idempotency_key, "fingerprint": fingerprint,
        "now": now,
    }  # fmt: skip
    row = (await session.execute(_RECORD, values)).one()
    await session.commit()
    if not row.found:
        raise VideoNotFinished(f"video_id {new.video_id} is no finished video of this tenant")
    if row.id is not None:
        interaction = Interaction(
            id=row.id, tenant=tenant, user_id=new.user_id, video_id=new.video_id,
            type=new.type, watched_s=new.watched_s, idempotency_key=idempotency_key,
            fingerprint=fingerprint, created_at=now,
        )  # fmt: skip
        return interaction, True
    existing = (
        await session.execute(
            select(Interaction).where(
                Interaction.tenant == tenant, Interaction.idempotency_key == idempotency_key
            )
        )
    ).scalar_one()
    if existing.fingerprint != fingerprint:
        raise IdempotencyKeyReused(
            "this Idempotency-Key was first sent with another interaction; use a new key"
        )
    return existing, False
