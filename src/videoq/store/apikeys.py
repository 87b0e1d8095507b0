"""API keys: random tokens shown once, stored as SHA-256 hashes, scoped to a tenant."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from videoq.errors import Conflict, NotFound, Unauthorized
from videoq.store.tables import ApiKey

KEY_PREFIX = "vq_"
# Writing last_used_at on every request would turn each read into a write; once a minute is enough.
_LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant every query is scoped by, and whether it may operate workers."""

    tenant: str
    is_admin: bool = False


def hash_key(key: str) -> str:
    # The keys are 256-bit random tokens, so a fast hash is safe (no dictionary to attack).
    return hashlib.sha256(key.encode()).hexdigest()


async def create_key(session: AsyncSession, tenant: str, *, admin: bool = False) -> str:
    """Create a key for ``tenant`` and return it; only its hash is stored."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(tenant=tenant, prefix=key[:10], key_hash=hash_key(key), is_admin=admin))
    await session.commit()
    return key


async def authenticate(session: AsyncSession, key: str | None) -> Principal:
    """The principal for ``key``, or :class:`Unauthorized`."""
    if not key:
        raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
    row = (
        await session.execute(
            select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
        )
    ).scalar_one_or_none()
    if row is None:
        raise Unauthorized("invalid API key")
    now = datetime.now(UTC)
    if row.last_used_at is None or now - row.last_used_at > _LAST_USED_RESOLUTION:
        await session.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=now))
        await session.commit()
    return Principal(tenant=row.tenant, is_admin=row.is_admin)


async def list_keys(session: AsyncSession, tenant: str | None = None) -> list[ApiKey]:
    """Every key (or one tenant's), newest first: ids, prefixes and times, never a key."""
    query = select(ApiKey).order_by(ApiKey.created_at.desc())
    if tenant is not None:
        query = query.where(ApiKey.tenant == tenant)
    return list((await session.execute(query)).scalars())


async def revoke_key(session: AsyncSession, prefix_or_id: str) -> ApiKey:
    """Revoke one key, named by its id or its prefix (the first 10 characters, ``vq_…``); it
    stops working at once. :class:`NotFound` when nothing matches, :class:`Conflict` when a
    prefix names several keys or the key is already revoked."""
    try:
        condition = ApiKey.id == uuid.UUID(prefix_or_id)
    except ValueError:
        if len(prefix_or_id) < 10:
            raise NotFound(
                f"give a key id or its full 10-character prefix, not {prefix_or_id!r}"
            ) from None
        condition = ApiKey.prefix == prefix_or_id[:10]
    rows = list((await session.execute(select(ApiKey).where(condition))).scalars())
    if not rows:
        raise NotFound(f"no API key {prefix_or_id!r}")
    if len(rows) > 1:
        raise Conflict(f"{len(rows)} keys share the prefix {prefix_or_id!r}; revoke by id")
    row = rows[0]
    if row.revoked_at is not None:
        raise Conflict(f"key {row.prefix}… was already revoked at {row.revoked_at.isoformat()}")
    await session.execute(
        update(ApiKey).where(ApiKey.id == row.id).values(revoked_at=datetime.now(UTC))
    )
    await session.commit()
    await session.refresh(row)
    return row
