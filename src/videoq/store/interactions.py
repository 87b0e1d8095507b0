"""End users' interactions with finished videos (``interactions``). Each is the video checked
(a succeeded job of the tenant), the row inserted (once per ``Idempotency-Key``) and the
user's counters raised (``feed_users``: every interaction, and those since the preference was
last computed), so the workers know whose feed is due.

The API records them through an :class:`Intake`: the interactions that arrive while one batch
is being written go together in the next, as one statement and one commit
(:class:`~videoq.groupcommit.GroupCommit`), so under load a request costs a fraction of a
round trip and of a WAL flush."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from videoq.errors import IdempotencyKeyReused, VideoNotFinished
from videoq.groupcommit import GroupCommit
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


#: A batch (arrays, one element per interaction, ``n`` its place): the interactions whose video
#: is a succeeded job of their tenant get an id and are inserted (a repeated idempotency key:
#: not), and their users' counters are raised, each user once, in a fixed order (two batches
#: never wait on each other's users in a cycle). One row per found interaction: its place, its
#: id, and whether it was inserted.
_RECORD = text(
    f"""
    WITH input AS (
        SELECT * FROM unnest(
            CAST(:tenants AS text[]), CAST(:users AS text[]), CAST(:videos AS uuid[]),
            CAST(:types AS text[]), CAST(:watched AS float8[]), CAST(:keys AS text[]),
            CAST(:fingerprints AS text[])
        ) WITH ORDINALITY AS t(tenant, user_id, video_id, type, watched_s, key, fingerprint, n)
    ), found AS (
        SELECT input.*, nextval(pg_get_serial_sequence('interactions', 'id')) AS id
        FROM input JOIN jobs ON jobs.id = input.video_id AND jobs.tenant = input.tenant
        WHERE jobs.status = '{JobStatus.SUCCEEDED}'
    ), added AS (
        INSERT INTO interactions
            (id, tenant, user_id, video_id, type, watched_s, idempotency_key, fingerprint,
             created_at)
        SELECT id, tenant, user_id, video_id, type, watched_s, key, fingerprint, :now
        FROM found ORDER BY n
        ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
        RETURNING id, tenant, user_id
    ), counted AS (
        INSERT INTO feed_users (tenant, user_id, interactions, pending)
        SELECT tenant, user_id, count(*), count(*) FROM added
        GROUP BY tenant, user_id ORDER BY tenant, user_id
        ON CONFLICT (tenant, user_id) DO UPDATE
        SET interactions = feed_users.interactions + EXCLUDED.interactions,
            pending = feed_users.pending + EXCLUDED.pending
    )
    SELECT found.n, found.id, added.id IS NOT NULL AS created
    FROM found LEFT JOIN added ON added.id = found.id
    """
)


@dataclass(frozen=True)
class _Item:
    tenant: str
    new: NewInteraction
    key: str | None
    fingerprint: str | None


@dataclass(frozen=True)
class _Written:
    id: int | None  # None: its video is no succeeded job of the tenant
    created: bool
    at: datetime


class Intake:
    """The API process's writer of interactions, in batches (see the module)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._group: GroupCommit[_Item, _Written] = GroupCommit(self._write)

    async def _write(self, items: list[_Item]) -> list[_Written]:
        now = datetime.now(UTC)
        values: dict[str, Any] = {
            "tenants": [i.tenant for i in items], "users": [i.new.user_id for i in items],
            "videos": [i.new.video_id for i in items], "types": [i.new.type for i in items],
            "watched": [i.new.watched_s for i in items], "keys": [i.key for i in items],
            "fingerprints": [i.fingerprint for i in items], "now": now,
        }  # fmt: skip
        async with self._sessions() as session:
            rows = (await session.execute(_RECORD, values)).all()
            await session.commit()
        written = {row.n: _Written(row.id, row.created, now) for row in rows}
        return [written.get(n, _Written(None, False, now)) for n in range(1, len(items) + 1)]

    async def record(
        self, tenant: str, new: NewInteraction, *, idempotency_key: str | None
    ) -> tuple[Interaction, bool]:
        """Record the interaction (committed); returns ``(interaction, created)``.
        :class:`VideoNotFinished` when its video is not a succeeded job of ``tenant``. A
        repeated ``idempotency_key`` returns the interaction it first recorded and
        ``created=False`` (the user's counters unchanged) when it comes with the same request,
        and raises :class:`IdempotencyKeyReused` with another."""
        fingerprint = new.fingerprint() if idempotency_key is not None else None
        done = await self._group(_Item(tenant, new, idempotency_key, fingerprint))
        if done.id is None:
            raise VideoNotFinished(f"video_id {new.video_id} is no finished video of this tenant")
        if done.created:
            interaction = Interaction(
                id=done.id, tenant=tenant, user_id=new.user_id, video_id=new.video_id,
                type=new.type, watched_s=new.watched_s, idempotency_key=idempotency_key,
                fingerprint=fingerprint, created_at=done.at,
            )  # fmt: skip
            return interaction, True
        async with self._sessions() as session:
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

    async def aclose(self) -> None:
        """Wait for the interactions already taken."""
        await self._group.aclose()
